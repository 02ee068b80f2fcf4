//! Production Redis topologies for tests: a 6-node Redis Cluster (3
//! primaries, 3 replicas), a Sentinel set (primary, replica, 3 sentinels), a
//! TLS server with generated certificates, ACL users, and Valkey when its
//! server is installed.
//!
//! Every process is a child of the test binary, spawned with
//! [`spawn_reaped`] on free ports, so nothing outlives the tests; every
//! topology keeps its files (configuration, logs, RDB) in a directory of its
//! own under the system temp directory, named after this process, removed
//! when the topology is dropped (a shared one lives in a static and is
//! removed by the next test run instead).
//!
//! The API is blocking: the waits poll plain synchronous connections every
//! 20 ms. From an async test, call the slow ones (start, failover, waits)
//! through `tokio::task::spawn_blocking` or from a multi-thread runtime, so
//! that they do not stall the runtime the code under test runs on.
//!
//! Admin commands go to single nodes (`redis::Client::open(url)
//! .get_connection()`), or to `redis-cli` where Redis's own tooling does it
//! best (`--cluster create`, the TLS probe).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex, Once, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{FromRedisValue, RedisResult, Value};

use super::{RedisServer, spawn_reaped};

/// How often a wait asks again.
pub const POLL: Duration = Duration::from_millis(20);

/// How long a topology may take to form or settle before the test fails.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// How long a failover (manual, automatic or by the sentinels) may take
/// before the test fails: a guard against a hang, not a measurement. The
/// sentinels' election can fail and go again after their
/// `failover-timeout` (3 s here), more than once on a loaded machine.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// Calls `probe` every [`POLL`] until it returns `Ok`, and returns that
/// value; fails the test after `limit`, with `what` and the last reason.
pub fn poll<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(why) if start.elapsed() >= limit => {
                panic!("{what}: not within {limit:?}; last: {why}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

// ---------------------------------------------------------------------------
// Plain connections to single nodes

/// `redis://127.0.0.1:<port>`.
pub fn node_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A synchronous connection to the node on `port` (database 0), with 1 s
/// to connect and 5 s per reply.
pub fn connection(port: u16) -> RedisResult<redis::Connection> {
    let client = redis::Client::open(node_url(port))?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Sends one command (`args[0]` and its arguments) to the node on `port`.
pub fn query<T: FromRedisValue>(port: u16, args: &[&str]) -> RedisResult<T> {
    let (name, rest) = args.split_first().expect("a command");
    let mut conn = connection(port)?;
    redis::cmd(name).arg(rest).query(&mut conn)
}

/// The `field` of an `INFO` reply (`role`, `master_link_status`…).
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(field)?
            .strip_prefix(':')
            .map(str::trim)
    })
}

/// What `ROLE` answers on `port`: `"master"`, `"slave"` (with the port of
/// its primary and its link state, `"connected"` once synced) or
/// `"sentinel"`.
pub fn role(port: u16) -> RedisResult<Role> {
    let reply: Vec<Value> = query(port, &["ROLE"])?;
    let text = |i: usize| {
        reply
            .get(i)
            .map(String::from_redis_value_ref)
            .transpose()
            .ok()
            .flatten()
    };
    Ok(match text(0).as_deref() {
        Some("master") => Role::Primary,
        Some("slave") => Role::Replica {
            primary_port: reply
                .get(2)
                .and_then(|v| u16::from_redis_value_ref(v).ok())
                .unwrap_or(0),
            connected: text(3).as_deref() == Some("connected"),
        },
        other => Role::Other(other.unwrap_or_default().to_owned()),
    })
}

/// A node's answer to `ROLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica {
        primary_port: u16,
        connected: bool,
    },
    /// `sentinel`, or a reply this harness does not know.
    Other(String),
}

/// `INFO replication` on `port` says `master_link_status:up`.
pub fn replica_link_up(port: u16) -> Result<(), String> {
    let info: String = query(port, &["INFO", "replication"]).map_err(|e| e.to_string())?;
    match info_field(&info, "master_link_status") {
        Some("up") => Ok(()),
        other => Err(format!("{port}: master_link_status {other:?}")),
    }
}

// ---------------------------------------------------------------------------
// Ports, directories, processes

/// `n` distinct ports nothing listens on right now: see [`super::free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| super::free_port()).collect()
}

const TEMP_PREFIX: &str = "axum-rl-topology-";

/// A directory of its own under the system temp directory,
/// `axum-rl-topology-<kind>-<pid>-<n>`, removed on drop. The first one a
/// process makes removes those of processes that are gone.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(kind: &str) -> TempDir {
        static SWEEP: Once = Once::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        SWEEP.call_once(sweep_stale_dirs);
        let path = std::env::temp_dir().join(format!(
            "{TEMP_PREFIX}{kind}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A subdirectory, created.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the directories of earlier test processes that no longer run
/// (the shared topologies live in statics, which are never dropped).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        // <kind>-<pid>-<n>
        let mut fields = rest.rsplit('-');
        let (Some(_n), Some(pid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(pid) = pid.parse::<u32>()
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How a [`Node`] is known to be ready.
pub enum Probe {
    /// `PING` over plain TCP answers `PONG`.
    Ping,
    /// `redis-cli <args> PING` prints `PONG` (for a TLS-only server).
    Cli(Vec<String>),
}

/// One server process (`redis-server`, a sentinel, `valkey-server`) on a
/// fixed port, which can be killed and started again with the same
/// arguments. Its stderr goes to `<dir>/<port>.stderr`.
pub struct Node {
    binary: PathBuf,
    port: u16,
    args: Vec<String>,
    stderr: PathBuf,
    probe: Probe,
    child: Mutex<Option<Child>>,
}

impl Node {
    pub fn start(binary: &Path, port: u16, args: Vec<String>, dir: &Path, probe: Probe) -> Node {
        let node = Node {
            binary: binary.to_owned(),
            port,
            args,
            stderr: dir.join(format!("{port}.stderr")),
            probe,
            child: Mutex::new(None),
        };
        node.restart();
        node
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Starts the process with its arguments (killing it first if it runs)
    /// and waits until it answers.
    pub fn restart(&self) {
        self.kill();
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = spawn_reaped(command)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        *self.child.lock().unwrap() = Some(child);
        poll(
            SETTLE_LIMIT,
            &format!("{} on port {} answering", self.binary.display(), self.port),
            || {
                if let Some(status) = self.exited() {
                    panic!(
                        "{} on port {} exited ({status}); stderr: {}",
                        self.binary.display(),
                        self.port,
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    );
                }
                self.answers()
            },
        );
    }

    fn exited(&self) -> Option<ExitStatus> {
        let mut guard = self.child.lock().unwrap();
        let status = guard.as_mut()?.try_wait().ok().flatten()?;
        *guard = None;
        Some(status)
    }

    fn answers(&self) -> Result<(), String> {
        match &self.probe {
            Probe::Ping => match query::<String>(self.port, &["PING"]) {
                Ok(pong) if pong == "PONG" => Ok(()),
                Ok(other) => Err(other),
                Err(e) => Err(e.to_string()),
            },
            Probe::Cli(args) => {
                let out = redis_cli(args.iter().map(String::as_str).chain(["PING"]))
                    .map_err(|e| e.to_string())?;
                if out.status.success() && out.stdout.trim_ascii() == b"PONG" {
                    Ok(())
                } else {
                    Err(format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            }
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the socket stays open, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("node is running");
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long one `redis-cli` run may take: `--cluster create` waits for the
/// nodes to agree without a limit of its own.
const REDIS_CLI_LIMIT: Duration = Duration::from_secs(60);

/// Runs `redis-cli` with `args` to its end (a child of this binary, like
/// the servers), killed after [`REDIS_CLI_LIMIT`] (coreutils `timeout`: exit
/// status 124, with what it printed so far).
pub fn redis_cli<'a>(
    args: impl IntoIterator<Item = &'a str>,
) -> std::io::Result<std::process::Output> {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5"])
        .arg(REDIS_CLI_LIMIT.as_secs().to_string())
        .arg("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_reaped(command)?.wait_with_output()
}

/// The arguments every data node gets: loopback only, nothing persisted,
/// replication without waiting for a disk.
pub fn data_args(port: u16, dir: &Path) -> Vec<String> {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        node_dir.to_str().unwrap(),
        "--logfile",
        dir.join(format!("{port}.log")).to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn redis_server() -> &'static Path {
    Path::new("redis-server")
}

// ---------------------------------------------------------------------------
// Redis Cluster

/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

/// One line of `CLUSTER NODES`: a node as some node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`…
    pub flags: Vec<String>,
    /// The id of its primary, for a replica.
    pub primary_id: Option<String>,
    /// The slot ranges it serves (importing/migrating marks left out).
    pub slots: Vec<RangeInclusive<u16>>,
    pub connected: bool,
}

impl ClusterNode {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn is_primary(&self) -> bool {
        self.has_flag("master")
    }

    pub fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    pub fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }

    /// Not suspected, failed, in handshake or without address.
    pub fn is_healthy(&self) -> bool {
        !["fail?", "fail", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has_flag(f))
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|r| r.contains(&slot))
    }
}

/// `CLUSTER NODES` of the node on `port`, parsed.
pub fn cluster_nodes(port: u16) -> RedisResult<Vec<ClusterNode>> {
    let text: String = query(port, &["CLUSTER", "NODES"])?;
    Ok(text.lines().filter_map(parse_cluster_node).collect())
}

fn parse_cluster_node(line: &str) -> Option<ClusterNode> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    // ip:port@cport[,hostname]
    let address = fields[1].split('@').next()?;
    let port = address.rsplit(':').next()?.parse().ok()?;
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
            None => {
                let slot = s.parse().ok()?;
                Some(slot..=slot)
            }
        })
        .collect();
    Some(ClusterNode {
        id: fields[0].to_owned(),
        port,
        flags: fields[2].split(',').map(String::from).collect(),
        primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
        connected: fields[7] == "connected",
    })
}

/// A Redis Cluster of 6 `redis-server` processes on free ports: 3
/// primaries with a replica each, formed with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl RedisCluster {
    /// The cluster shared by the tests of this binary. Tests that kill nodes,
    /// fail over or migrate slots start their own ([`RedisCluster::start`]).
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(RedisCluster::start)
    }

    /// A cluster of the caller's own, formed and settled
    /// ([`RedisCluster::wait_until_ok`]).
    pub fn start() -> RedisCluster {
        let started = Instant::now();
        let dir = TempDir::new("cluster");
        // A data port and a bus port each (`--cluster-port`, so the bus is
        // not port + 10000, which may be taken or above 65535).
        let ports = free_ports(12);
        let nodes: Vec<Node> = ports
            .chunks(2)
            .map(|pair| {
                let (port, bus) = (pair[0], pair[1]);
                let mut args = data_args(port, dir.path());
                let config = dir.path().join(format!("nodes-{port}.conf"));
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        config.to_str().unwrap(),
                        "--cluster-port",
                        &bus.to_string(),
                        "--cluster-node-timeout",
                        "1000",
                    ]
                    .map(String::from),
                );
                Node::start(redis_server(), port, args, dir.path(), Probe::Ping)
            })
            .collect();
        let cluster = RedisCluster { nodes, _dir: dir };
        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = redis_cli(
            ["--cluster", "create"]
                .into_iter()
                .chain(addresses.iter().map(String::as_str))
                .chain(["--cluster-replicas", "1", "--cluster-yes"]),
        )
        .expect("redis-cli must be installed (Debian package redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_until_ok();
        eprintln!(
            "redis cluster on {:?} formed in {:?}",
            cluster.ports(),
            started.elapsed()
        );
        cluster
    }

    /// The ports of all 6 nodes, running or not, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Node::port).collect()
    }

    /// The ports of the nodes that run.
    pub fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(Node::port)
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of every node: a cluster client's seeds.
    pub fn seed_urls(&self) -> Vec<String> {
        self.ports().into_iter().map(node_url).collect()
    }

    /// A cluster client of the redis crate over [`RedisCluster::seed_urls`].
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.seed_urls()).unwrap()
    }

    /// The node process on `port`.
    pub fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// The cluster as a running node sees it (`CLUSTER NODES`).
    pub fn view(&self) -> Vec<ClusterNode> {
        let mut last = String::new();
        for port in self.running_ports() {
            match cluster_nodes(port) {
                Ok(view) => return view,
                Err(e) => last = e.to_string(),
            }
        }
        panic!("no cluster node answers CLUSTER NODES: {last}")
    }

    /// The ports of the primaries that serve slots, in slot order.
    pub fn primaries(&self) -> Vec<u16> {
        let mut primaries: Vec<(u16, u16)> = self
            .view()
            .iter()
            .filter(|n| n.is_primary() && n.is_healthy() && !n.slots.is_empty())
            .map(|n| (*n.slots.iter().map(|r| r.start()).min().unwrap(), n.port))
            .collect();
        primaries.sort();
        primaries.into_iter().map(|(_, port)| port).collect()
    }

    /// The ports of the healthy replicas.
    pub fn replicas(&self) -> Vec<u16> {
        let mut replicas: Vec<u16> = self
            .view()
            .iter()
            .filter(|n| n.is_replica() && n.is_healthy())
            .map(|n| n.port)
            .collect();
        replicas.sort();
        replicas
    }

    /// A healthy replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> u16 {
        let view = self.view();
        let id = &view
            .iter()
            .find(|n| n.port == primary)
            .unwrap_or_else(|| panic!("no node on port {primary} in {view:?}"))
            .id;
        view.iter()
            .find(|n| n.is_healthy() && n.primary_id.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("the node on {primary} has no healthy replica: {view:?}"))
            .port
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        query(port, &["CLUSTER", "MYID"]).unwrap()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.running_ports()[0];
        query(port, &["CLUSTER", "KEYSLOT", key]).unwrap()
    }

    /// The port of the primary serving `slot`.
    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        let view = self.view();
        view.iter()
            .find(|n| n.is_primary() && n.serves(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}: {view:?}"))
            .port
    }

    /// The port of the primary serving `key`.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        self.owner_of_slot(self.slot_of(key))
    }

    /// A hash tag (`{a}`, `{b}`… `{aa}`…) whose slot the primary on
    /// `primary` serves: keys containing it live there.
    pub fn tag_on(&self, primary: u16) -> String {
        (0..10_000)
            .map(|i| format!("{{{}}}", letters(i)))
            .find(|tag| self.primary_for_key(tag) == primary)
            .unwrap_or_else(|| panic!("no hash tag lands on {primary}"))
    }

    /// Kills the node on `port` (SIGKILL) and waits for the process to be
    /// gone; the cluster notices after `cluster-node-timeout` (1 s) and, for
    /// a primary, its replica takes over ([`RedisCluster::wait_until_ok`]
    /// waits for that).
    pub fn kill(&self, port: u16) {
        self.node(port).kill();
    }

    /// Starts the node on `port` again, same port and cluster config file, so
    /// it rejoins (an old primary whose slots moved comes back as a replica);
    /// waits until it answers, not until the cluster took it back
    /// ([`RedisCluster::wait_until_ok`]). Nothing is persisted (`--save ""`,
    /// no AOF): a primary restarted before its replica took over comes back
    /// empty, and its replica empties too when it resyncs.
    pub fn restart(&self, port: u16) {
        self.node(port).restart();
    }

    /// Waits until every running node marks `port` as failed (`fail`).
    pub fn wait_until_failed(&self, port: u16) {
        poll(SETTLE_LIMIT, &format!("node {port} marked failed"), || {
            for other in self.running_ports() {
                let view = cluster_nodes(other).map_err(|e| e.to_string())?;
                let node = view.iter().find(|n| n.port == port);
                if !node.is_some_and(|n| n.has_flag("fail")) {
                    return Err(format!("{other} sees {node:?}"));
                }
            }
            Ok(())
        });
    }

    /// `CLUSTER FAILOVER` on the replica on `replica`: it and its primary
    /// swap roles once the replica caught up. Waits until it serves slots and
    /// the cluster is ok ([`RedisCluster::wait_until_ok`]).
    pub fn failover(&self, replica: u16) {
        self.failover_with(replica, &[]);
    }

    /// `CLUSTER FAILOVER FORCE`: for a replica whose primary is unreachable
    /// (no agreement with it), still with the other primaries' votes.
    pub fn force_failover(&self, replica: u16) {
        self.failover_with(replica, &["FORCE"]);
    }

    fn failover_with(&self, replica: u16, options: &[&str]) {
        let role = role(replica).unwrap();
        assert!(
            matches!(role, Role::Replica { .. }),
            "{replica} is not a replica: {role:?}"
        );
        let mut args = vec!["CLUSTER", "FAILOVER"];
        args.extend_from_slice(options);
        let () = query(replica, &args).unwrap();
        poll(FAILOVER_LIMIT, &format!("{replica} promoted"), || {
            let view = cluster_nodes(replica).map_err(|e| e.to_string())?;
            match view.iter().find(|n| n.is_myself()) {
                Some(me) if me.is_primary() && !me.slots.is_empty() => Ok(()),
                me => Err(format!("{me:?}")),
            }
        });
        self.wait_until_ok();
    }

    /// Waits (up to [`SETTLE_LIMIT`]) until the running nodes agree the
    /// cluster is whole: each says `cluster_state:ok` with all 16384 slots
    /// ok, sees every running node healthy, has the same slot map and the
    /// same replica-to-primary map as the others; every slot is served by a
    /// running primary (so after [`RedisCluster::kill`] of a primary this
    /// waits for its replica to take over); every running replica's link to
    /// its primary is up.
    pub fn wait_until_ok(&self) {
        poll(SETTLE_LIMIT, "cluster ok", || self.health());
    }

    fn health(&self) -> Result<(), String> {
        let running = self.running_ports();
        // (first slot, last slot, owner), replica → primary.
        type Layout = (Vec<(u16, u16, u16)>, BTreeMap<u16, u16>);
        let mut agreed: Option<Layout> = None;
        for &port in &running {
            let info: String =
                query(port, &["CLUSTER", "INFO"]).map_err(|e| format!("{port}: {e}"))?;
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_slots_ok", "16384"),
            ] {
                let got = info_field(&info, field);
                if got != Some(want) {
                    return Err(format!("{port}: {field} {got:?}"));
                }
            }
            let view = cluster_nodes(port).map_err(|e| format!("{port}: {e}"))?;
            for other in &running {
                if !view.iter().any(|n| n.port == *other && n.is_healthy()) {
                    return Err(format!("{port} does not see {other} healthy: {view:?}"));
                }
            }
            let port_of = |id: &str| view.iter().find(|n| n.id == id).map(|n| n.port);
            let mut slots: Vec<(u16, u16, u16)> = view
                .iter()
                .filter(|n| n.is_primary())
                .flat_map(|n| n.slots.iter().map(|r| (*r.start(), *r.end(), n.port)))
                .collect();
            slots.sort();
            if let Some(&(_, _, owner)) = slots.iter().find(|(_, _, o)| !running.contains(o)) {
                return Err(format!("{port}: slots served by {owner}, which is down"));
            }
            let replicas: BTreeMap<u16, u16> = view
                .iter()
                .filter(|n| n.is_replica() && running.contains(&n.port))
                .map(|n| {
                    let primary = n.primary_id.as_deref().and_then(port_of).unwrap_or(0);
                    (n.port, primary)
                })
                .collect();
            if view.iter().any(|n| n.is_myself() && n.is_replica()) {
                replica_link_up(port)?;
            }
            match &agreed {
                None => agreed = Some((slots, replicas)),
                Some(first) if *first == (slots.clone(), replicas.clone()) => {}
                Some(first) => {
                    return Err(format!(
                        "{port} sees {slots:?} {replicas:?}, {} saw {first:?}",
                        running[0]
                    ));
                }
            }
        }
        Ok(())
    }

    /// `SCRIPT FLUSH` on every running node (replicas too).
    pub fn script_flush_all(&self) {
        for port in self.running_ports() {
            let () = query(port, &["SCRIPT", "FLUSH"]).unwrap();
        }
    }

    /// `FLUSHALL` on every running primary.
    pub fn flush_all(&self) {
        for port in self.primaries() {
            let () = query(port, &["FLUSHALL"]).unwrap();
        }
    }

    /// Starts moving `slot` from its primary to the primary on `to`:
    /// `CLUSTER SETSLOT <slot> IMPORTING` on the target, then `MIGRATING` on
    /// the source. Until [`Migration::finish`], the source answers `ASK` for
    /// keys of the slot it no longer holds.
    pub fn begin_migration(&self, slot: u16, to: u16) -> Migration<'_> {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is on {to} already");
        assert!(
            self.primaries().contains(&to),
            "{to} is not a primary serving slots"
        );
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot_arg = slot.to_string();
        let () = query(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        )
        .unwrap();
        let () = query(
            from,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        )
        .unwrap();
        Migration {
            cluster: self,
            slot,
            from,
            to,
            to_id,
        }
    }

    /// Moves `slot` to the primary on `to` in one go.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        self.begin_migration(slot, to).finish();
    }
}

/// `0 → a`, `25 → z`, `26 → aa`…
fn letters(mut i: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// A slot on its way from one primary to another
/// ([`RedisCluster::begin_migration`]).
pub struct Migration<'a> {
    cluster: &'a RedisCluster,
    pub slot: u16,
    /// The port of the primary that served the slot.
    pub from: u16,
    /// The port of the primary that will.
    pub to: u16,
    to_id: String,
}

impl Migration<'_> {
    /// `MIGRATE`s the given keys (of this slot) from the source to the
    /// target; returns whether any was there to move.
    pub fn move_keys_named(&self, keys: &[&str]) -> bool {
        if keys.is_empty() {
            return false;
        }
        let to = self.to.to_string();
        let mut args = vec![
            "MIGRATE",
            "127.0.0.1",
            &to,
            "",
            "0",
            "5000",
            "REPLACE",
            "KEYS",
        ];
        args.extend_from_slice(keys);
        let reply: String = query(self.from, &args).unwrap();
        reply == "OK"
    }

    /// Moves every key of the slot still on the source (`CLUSTER
    /// GETKEYSINSLOT` and `MIGRATE … KEYS …`, 100 at a time); returns how
    /// many moved.
    pub fn move_keys(&self) -> usize {
        let slot = self.slot.to_string();
        let mut moved = 0;
        loop {
            let keys: Vec<String> =
                query(self.from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).unwrap();
            if keys.is_empty() {
                return moved;
            }
            let names: Vec<&str> = keys.iter().map(String::as_str).collect();
            self.move_keys_named(&names);
            moved += keys.len();
        }
    }

    /// Moves what keys are left, then `CLUSTER SETSLOT <slot> NODE <target>`
    /// on the target, the source and the other primaries; waits until every
    /// running node sees the target serve the slot and the cluster is ok.
    pub fn finish(self) {
        self.move_keys();
        let slot = self.slot.to_string();
        let setslot = ["CLUSTER", "SETSLOT", &slot, "NODE", &self.to_id];
        let () = query(self.to, &setslot).unwrap();
        let () = query(self.from, &setslot).unwrap();
        for primary in self.cluster.primaries() {
            if primary != self.to && primary != self.from {
                let () = query(primary, &setslot).unwrap();
            }
        }
        poll(
            SETTLE_LIMIT,
            &format!("slot {} on {}", self.slot, self.to),
            || {
                for port in self.cluster.running_ports() {
                    let view = cluster_nodes(port).map_err(|e| e.to_string())?;
                    if !view
                        .iter()
                        .any(|n| n.port == self.to && n.serves(self.slot))
                    {
                        return Err(format!("{port} does not see it yet"));
                    }
                }
                Ok(())
            },
        );
        self.cluster.wait_until_ok();
    }
}

// ---------------------------------------------------------------------------
// Sentinel

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "mymaster";

/// A primary, its replica (`--replicaof`) and 3 sentinels (quorum 2,
/// `down-after-milliseconds` 1000, `failover-timeout` 3000), each sentinel
/// with a configuration file of its own, which it rewrites.
pub struct RedisSentinels {
    /// The primary and the replica as started.
    data: Vec<Node>,
    sentinels: Vec<Node>,
    _dir: TempDir,
}

impl RedisSentinels {
    /// Starts the set and waits until every sentinel knows the master, the
    /// replica and the 2 other sentinels, and the replica's link is up.
    pub fn start() -> RedisSentinels {
        let started = Instant::now();
        let dir = TempDir::new("sentinel");
        let ports = free_ports(5);
        let primary = Node::start(
            redis_server(),
            ports[0],
            data_args(ports[0], dir.path()),
            dir.path(),
            Probe::Ping,
        );
        let mut replica_args = data_args(ports[1], dir.path());
        replica_args.extend(["--replicaof", "127.0.0.1", &ports[0].to_string()].map(String::from));
        let replica = Node::start(
            redis_server(),
            ports[1],
            replica_args,
            dir.path(),
            Probe::Ping,
        );
        // A sentinel learns the replicas from the master's INFO, which it
        // asks when it connects and then every 10 s: start the sentinels
        // once the master lists the replica.
        poll(SETTLE_LIMIT, "replica synced", || {
            replica_link_up(ports[1])?;
            let info: String =
                query(ports[0], &["INFO", "replication"]).map_err(|e| e.to_string())?;
            match info_field(&info, "slave0") {
                Some(s) if s.contains("state=online") => Ok(()),
                other => Err(format!("master lists {other:?}")),
            }
        });
        let sentinels = ports[2..]
            .iter()
            .map(|&port| {
                let conf = dir.path().join(format!("sentinel-{port}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\n\
                         bind 127.0.0.1\n\
                         dir {dir}\n\
                         logfile {dir}/sentinel-{port}.log\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 3000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir = dir.path().display(),
                        master = ports[0],
                    ),
                )
                .unwrap();
                let args = vec![conf.to_str().unwrap().to_owned(), "--sentinel".to_owned()];
                Node::start(redis_server(), port, args, dir.path(), Probe::Ping)
            })
            .collect();
        let set = RedisSentinels {
            data: vec![primary, replica],
            sentinels,
            _dir: dir,
        };
        set.wait_until_settled();
        eprintln!(
            "sentinel set (data {:?}, sentinels {:?}) settled in {:?}",
            set.data_ports(),
            set.sentinel_ports(),
            started.elapsed()
        );
        set
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_ports().into_iter().map(node_url).collect()
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(Node::port).collect()
    }

    /// The ports of the primary and the replica as started.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(Node::port).collect()
    }

    /// `"mymaster"`.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// A sentinel client of the redis crate for the master.
    pub fn client(&self) -> redis::sentinel::SentinelClient {
        redis::sentinel::SentinelClient::build(
            self.sentinel_urls(),
            MASTER_NAME,
            None,
            redis::sentinel::SentinelServerType::Master,
        )
        .unwrap()
    }

    fn node(&self, port: u16) -> &Node {
        self.data
            .iter()
            .chain(&self.sentinels)
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node of the sentinel set on port {port}"))
    }

    fn running_sentinels(&self) -> Vec<u16> {
        self.sentinels
            .iter()
            .filter(|n| n.is_running())
            .map(Node::port)
            .collect()
    }

    /// The master's port as one sentinel says
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    fn master_port_by(sentinel: u16) -> RedisResult<u16> {
        let (_host, port): (String, u16) = query(
            sentinel,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        )?;
        Ok(port)
    }

    /// The master's port, as the first sentinel that answers says.
    pub fn master_port(&self) -> u16 {
        let mut last = String::new();
        for sentinel in self.running_sentinels() {
            match Self::master_port_by(sentinel) {
                Ok(port) => return port,
                Err(e) => last = e.to_string(),
            }
        }
        panic!("no sentinel answers: {last}")
    }

    /// The master port every running sentinel reports, if they agree.
    fn agreed_master(&self) -> Result<u16, String> {
        let ports: BTreeSet<u16> = self
            .running_sentinels()
            .into_iter()
            .map(|s| Self::master_port_by(s).map_err(|e| format!("{s}: {e}")))
            .collect::<Result<_, _>>()?;
        match ports.iter().collect::<Vec<_>>()[..] {
            [&port] => Ok(port),
            _ => Err(format!("sentinels disagree: {ports:?}")),
        }
    }

    /// SIGKILLs the current master's process; returns its port.
    pub fn kill_master(&self) -> u16 {
        let port = self.master_port();
        self.node(port).kill();
        port
    }

    /// Kills the node (data node or sentinel) on `port`.
    pub fn kill(&self, port: u16) {
        self.node(port).kill();
    }

    /// Starts the node on `port` again as it was first started (the
    /// sentinels reconfigure an old master as a replica some 8 s after they
    /// see it again: [`RedisSentinels::wait_until_replica`]; until then it is
    /// a master, and an empty one, as nothing is persisted).
    pub fn restart(&self, port: u16) {
        self.node(port).restart();
    }

    /// Waits (up to [`FAILOVER_LIMIT`]) until every running sentinel reports
    /// a master other than `old` and that node answers `ROLE` as master;
    /// returns its port.
    pub fn wait_for_new_master(&self, old: u16) -> u16 {
        poll(FAILOVER_LIMIT, "a new master", || {
            let port = self.agreed_master()?;
            if port == old {
                return Err(format!("still {old}"));
            }
            match role(port) {
                Ok(Role::Primary) => Ok(port),
                other => Err(format!("{port}: {other:?}")),
            }
        })
    }

    /// Waits (up to [`SETTLE_LIMIT`]) until the node on `port` is a replica
    /// of the master the sentinels report, its link is up, and every running
    /// sentinel lists it as a replica that is not down.
    pub fn wait_until_replica(&self, port: u16) {
        poll(SETTLE_LIMIT, &format!("{port} a replica"), || {
            let master = self.agreed_master()?;
            match role(port).map_err(|e| e.to_string())? {
                Role::Replica {
                    primary_port,
                    connected: true,
                } if primary_port == master => {}
                other => return Err(format!("{port}: {other:?}, master {master}")),
            }
            replica_link_up(port)?;
            for sentinel in self.running_sentinels() {
                let replicas = Self::replicas_by(sentinel)?;
                let listed = replicas
                    .iter()
                    .find(|r| r.get("port").map(String::as_str) == Some(&port.to_string()));
                match listed.and_then(|r| r.get("flags")) {
                    Some(flags) if flags == "slave" => {}
                    other => return Err(format!("sentinel {sentinel}: flags {other:?}")),
                }
            }
            Ok(())
        });
    }

    /// `SENTINEL REPLICAS mymaster` of one sentinel, as field maps.
    fn replicas_by(sentinel: u16) -> Result<Vec<HashMap<String, String>>, String> {
        let replicas: Vec<Vec<String>> = query(sentinel, &["SENTINEL", "REPLICAS", MASTER_NAME])
            .map_err(|e| format!("{sentinel}: {e}"))?;
        Ok(replicas.into_iter().map(pairs).collect())
    }

    /// Waits until every running sentinel agrees on the master, which
    /// answers `ROLE` as master; knows the 2 other sentinels
    /// (`num-other-sentinels`) and every running data node besides the
    /// master as a replica that is not down; and every running replica's
    /// link is up.
    pub fn wait_until_settled(&self) {
        poll(SETTLE_LIMIT, "sentinels settled", || {
            let master = self.agreed_master()?;
            if role(master).map_err(|e| e.to_string())? != Role::Primary {
                return Err(format!("{master} is not a master"));
            }
            let sentinels = self.running_sentinels();
            let replicas: Vec<u16> = self
                .data
                .iter()
                .filter(|n| n.is_running() && n.port() != master)
                .map(Node::port)
                .collect();
            for &sentinel in &sentinels {
                let fields: Vec<String> = query(sentinel, &["SENTINEL", "MASTER", MASTER_NAME])
                    .map_err(|e| format!("{sentinel}: {e}"))?;
                let fields = pairs(fields);
                // Sentinels never forget one another: count the killed too.
                let others = (self.sentinels.len() - 1).to_string();
                if fields.get("num-other-sentinels") != Some(&others)
                    || fields.get("flags").map(String::as_str) != Some("master")
                {
                    return Err(format!("sentinel {sentinel}: {fields:?}"));
                }
                let known = Self::replicas_by(sentinel)?;
                for replica in &replicas {
                    let ok = known.iter().any(|r| {
                        r.get("port") == Some(&replica.to_string())
                            && r.get("flags").map(String::as_str) == Some("slave")
                    });
                    if !ok {
                        return Err(format!("sentinel {sentinel} lacks {replica}: {known:?}"));
                    }
                }
            }
            for replica in replicas {
                replica_link_up(replica)?;
            }
            Ok(())
        });
    }
}

/// `[k1, v1, k2, v2…]` as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut items = flat.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        map.insert(k, v);
    }
    map
}

// ---------------------------------------------------------------------------
// TLS

/// Whether a [`TlsRedis`] asks clients for a certificate
/// (`--tls-auth-clients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `yes`: a client certificate signed by the CA is required.
    Required,
    /// `optional`: one is checked if given.
    Optional,
    /// `no`.
    Off,
}

/// PEM files made at test time with rcgen: a CA, a server certificate for
/// 127.0.0.1 and localhost, a client certificate; a second CA, unrelated,
/// and a client certificate it signed.
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// Generates the files into `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>,
                    names: &[&str],
                    common_name: &str,
                    usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };

        let (ca_pem, issuer) = ca("axum-redis-ratelimit test CA");
        write("ca.pem", ca_pem);
        let (cert, key) = leaf(
            &issuer,
            &["127.0.0.1", "localhost"],
            "redis-server",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", cert);
        write("server-key.pem", key);
        let (cert, key) = leaf(
            &issuer,
            &[],
            "rate-limiter",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("client.pem", cert);
        write("client-key.pem", key);

        let (wrong_ca_pem, wrong_issuer) = ca("an unrelated CA");
        write("wrong-ca.pem", wrong_ca_pem);
        let (cert, key) = leaf(
            &wrong_issuer,
            &[],
            "rate-limiter",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("wrong-client.pem", cert);
        write("wrong-client-key.pem", key);
        TlsFiles {
            dir: dir.to_owned(),
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }
    pub fn wrong_ca_path(&self) -> PathBuf {
        self.dir.join("wrong-ca.pem")
    }
    pub fn wrong_client_cert_path(&self) -> PathBuf {
        self.dir.join("wrong-client.pem")
    }
    pub fn wrong_client_key_path(&self) -> PathBuf {
        self.dir.join("wrong-client-key.pem")
    }
}

/// Installs rustls's ring provider as the process default (the redis
/// crate's rustls needs one); a second call does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `redis-server` that speaks TLS only (`--port 0 --tls-port <free>`),
/// with certificates of [`TlsFiles`].
pub struct TlsRedis {
    node: Node,
    files: TlsFiles,
    auth: ClientAuth,
    _dir: TempDir,
}

impl TlsRedis {
    /// A server that requires a client certificate
    /// (`--tls-auth-clients yes`).
    pub fn start() -> TlsRedis {
        TlsRedis::start_with(ClientAuth::Required)
    }

    /// A server with the given `--tls-auth-clients`; waits until
    /// `redis-cli --tls` PINGs it.
    pub fn start_with(auth: ClientAuth) -> TlsRedis {
        let dir = TempDir::new("tls");
        let files = TlsFiles::generate(dir.path());
        let port = free_ports(1)[0];
        let path = |p: PathBuf| p.to_str().unwrap().to_owned();
        let args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &path(files.server_cert_path()),
            "--tls-key-file",
            &path(files.server_key_path()),
            "--tls-ca-cert-file",
            &path(files.ca_path()),
            "--tls-auth-clients",
            match auth {
                ClientAuth::Required => "yes",
                ClientAuth::Optional => "optional",
                ClientAuth::Off => "no",
            },
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
            "--logfile",
            &path(dir.path().join(format!("{port}.log"))),
        ]
        .map(String::from)
        .to_vec();
        let probe = Probe::Cli(
            [
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--tls",
                "--cacert",
                &path(files.ca_path()),
                "--cert",
                &path(files.client_cert_path()),
                "--key",
                &path(files.client_key_path()),
            ]
            .map(String::from)
            .to_vec(),
        );
        let node = Node::start(redis_server(), port, args, dir.path(), probe);
        TlsRedis {
            node,
            files,
            auth,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port())
    }

    pub fn client_auth(&self) -> ClientAuth {
        self.auth
    }

    /// All the certificate files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub fn ca_path(&self) -> PathBuf {
        self.files.ca_path()
    }
    pub fn client_cert_path(&self) -> PathBuf {
        self.files.client_cert_path()
    }
    pub fn client_key_path(&self) -> PathBuf {
        self.files.client_key_path()
    }
    pub fn wrong_ca_path(&self) -> PathBuf {
        self.files.wrong_ca_path()
    }
    pub fn wrong_client_cert_path(&self) -> PathBuf {
        self.files.wrong_client_cert_path()
    }
    pub fn wrong_client_key_path(&self) -> PathBuf {
        self.files.wrong_client_key_path()
    }

    /// The redis crate's TLS material: the CA as the only root, and the
    /// client certificate and key given (`None`: no client certificate).
    pub fn certificates(
        &self,
        ca: &Path,
        client: Option<(&Path, &Path)>,
    ) -> redis::TlsCertificates {
        let read = |p: &Path| std::fs::read(p).unwrap();
        redis::TlsCertificates {
            client_tls: client.map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: read(cert),
                client_key: read(key),
            }),
            root_cert: Some(read(ca)),
        }
    }

    /// The right CA and client certificate.
    pub fn right_certificates(&self) -> redis::TlsCertificates {
        self.certificates(
            &self.ca_path(),
            Some((&self.client_cert_path(), &self.client_key_path())),
        )
    }

    /// A redis crate client of this server with `certificates`
    /// (installs the crypto provider first).
    pub fn client_with(&self, certificates: redis::TlsCertificates) -> redis::Client {
        install_crypto_provider();
        redis::Client::build_with_tls(self.url(), certificates).unwrap()
    }

    /// A client with the right certificates.
    pub fn client(&self) -> redis::Client {
        self.client_with(self.right_certificates())
    }

    pub fn kill(&self) {
        self.node.kill();
    }

    pub fn restart(&self) {
        self.node.restart();
    }
}

// ---------------------------------------------------------------------------
// ACL

/// The ACL the README documents for the limiter's user: the connection's
/// own commands, the scripts, what they run inside (Redis checks a script's
/// commands against the user too), and keys under the limiter's prefix only.
pub const LIMITER_ACL: &[&str] = &[
    "resetkeys",
    "~rl:*",
    "resetchannels",
    "-@all",
    "+ping",
    "+hello",
    "+select",
    "+evalsha",
    "+eval",
    "+get",
    "+psetex",
    "+incrby",
    "+decrby",
    "+del",
    "+pttl",
    "+pexpire",
    "+hmget",
    "+hset",
    "+hincrby",
];

/// `ACL SETUSER <name> on ><password> <rules…>` on the server at `url`.
///
/// A `+`/`-` rule naming a command this server does not have (Redis 7.0
/// has no `CLIENT SETINFO`) is left out, since it could not change what the
/// user may run there, and reported on stderr; the rules left out are
/// returned.
pub fn create_user(url: &str, name: &str, password: &str, rules: &[&str]) -> Vec<String> {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let mut rules: Vec<&str> = rules.to_vec();
    let mut skipped = Vec::new();
    let password = format!(">{password}");
    loop {
        let result: RedisResult<()> = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg("on")
            .arg(&password)
            .arg(&rules)
            .query(&mut conn);
        let Err(error) = result else { break };
        let message = error.to_string();
        let unknown = message
            .contains("Unknown command")
            .then(|| message.split('\'').nth(1))
            .flatten()
            .filter(|rule| rule.starts_with(['+', '-']))
            .and_then(|rule| rules.iter().position(|r| *r == rule));
        match unknown {
            Some(i) => skipped.push(rules.remove(i).to_owned()),
            None => panic!("ACL SETUSER {name} {rules:?}: {message}"),
        }
    }
    if !skipped.is_empty() {
        eprintln!("ACL user {name}: this server does not know {skipped:?}; left out");
    }
    skipped
}

/// `url` with `name:password@` before the host
/// (`redis://127.0.0.1:6390/1` → `redis://name:password@127.0.0.1:6390/1`).
pub fn url_with_user(url: &str, name: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    assert!(!rest.contains('@'), "{url} has a user already");
    format!("{scheme}://{name}:{password}@{rest}")
}

// ---------------------------------------------------------------------------
// Valkey

/// The `valkey-server` binary: `VALKEY_SERVER` if set, else the first on
/// `PATH`; `None` when there is none.
pub fn valkey_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VALKEY_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
        eprintln!(
            "VALKEY_SERVER={} is not a file; looking on PATH",
            path.display()
        );
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("valkey-server"))
        .find(|path| path.is_file())
}

/// `valkey-server` on a free port, as a [`RedisServer`]; `None` (printing
/// "skipped: valkey-server not on PATH") without the binary.
pub fn start_valkey() -> Option<RedisServer> {
    let Some(binary) = valkey_server() else {
        eprintln!("skipped: valkey-server not on PATH");
        return None;
    };
    Some(RedisServer::start_binary(&binary, "valkey"))
}
