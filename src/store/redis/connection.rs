//! The connection behind a [`RedisStore`](super::RedisStore), whatever the
//! topology: one multiplexed connection to one server, a Cluster
//! connection that routes each script to its key's primary, or a
//! connection to the master the Sentinels name, followed through failovers.

use std::time::Duration;

use redis::{
    Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager},
};

use super::{
    RedisConfig,
    config::Topology,
    server::{Dropped, client, manager},
    tls,
};
use crate::Error;

/// A connection to what a [`RedisConfig`] names, for the store and for an
/// application's own commands on the same servers: one server, a Cluster
/// (each command routed by its first key), or the master the Sentinels
/// name, followed through failovers. Cheap to clone: clones share the
/// multiplexed connections. It connects on its first command, and a
/// command waits 500 ms at most for its reply (redis-rs's default).
///
/// ```no_run
/// use axum_redis_ratelimit::store::{RedisConfig, RedisConnection};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = RedisConfig::sentinel(["redis://10.0.0.1:26379"], "mymaster");
/// let mut queue = RedisConnection::open(config)?;
/// let _: () = redis::cmd("RPUSH").arg("jobs").arg("job").query_async(&mut queue).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
    #[cfg(feature = "sentinel")]
    Sentinel(std::sync::Arc<super::sentinel::Following>),
}

impl RedisConnection {
    /// A connection to what `config` names; it connects on its first
    /// command (Sentinel: asks the sentinels then). Call it within a Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that cannot work, or `redis`
    /// outside a Tokio runtime.
    pub fn open(config: impl Into<RedisConfig>) -> Result<Self, Error> {
        Self::with_drops(&config.into(), Some(COMMAND_TIMEOUT), &Dropped::default())
    }

    /// As [`open`](Self::open), each command waiting `response` at most for
    /// its reply (`None`: as long as its caller waits), flagging `dropped`
    /// when a connection drops.
    pub(super) fn with_drops(
        config: &RedisConfig,
        response: Option<Duration>,
        dropped: &Dropped,
    ) -> Result<Self, Error> {
        let timeout = config.connect_timeout_or_default();

        let inner = match config.topology()? {
            Topology::Standalone(url) => {
                let certs = tls::certificates(config.tls.as_ref(), std::iter::once(url))?;
                let client = client(url, "redis.url", certs)?;
                in_runtime()?;
                Inner::Standalone(manager(client, timeout, response, dropped)?)
            }
            #[cfg(feature = "cluster")]
            Topology::Cluster(nodes) => cluster(config, nodes, timeout, response)?,
            #[cfg(feature = "sentinel")]
            Topology::Sentinel {
                sentinels,
                master_name,
            } => Inner::Sentinel(std::sync::Arc::new(super::sentinel::Following::new(
                config,
                sentinels,
                master_name,
                response,
                dropped.clone(),
            )?)),
            #[cfg(not(feature = "cluster"))]
            Topology::Cluster(_) => return Err(missing_feature("redis.cluster_nodes", "cluster")),
            #[cfg(not(feature = "sentinel"))]
            Topology::Sentinel { .. } => {
                return Err(missing_feature("redis.sentinels", "sentinel"));
            }
        };
        Ok(Self { inner })
    }

    pub(super) fn from_manager(manager: ConnectionManager) -> Self {
        Self {
            inner: Inner::Standalone(manager),
        }
    }

    /// Sends `cmd` and reads its reply, straight to the inner connection
    /// (no second boxed future per call, as through [`ConnectionLike`]), on
    /// this handle: a caller that owns one spares a clone of the shared
    /// connection's counters.
    pub(super) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match &mut self.inner {
            Inner::Standalone(manager) => cmd.query_async(manager).await,
            #[cfg(feature = "cluster")]
            Inner::Cluster(cluster) => {
                let ask = match cmd.query_async(cluster).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask) => {
                        e
                    }
                    reply => return reply,
                };
                // Boxed, and out of the match (whose reply it would keep):
                // the rare redirect's future would otherwise size every
                // call's.
                Box::pin(asked(cluster.clone(), cmd, ask)).await
            }
            #[cfg(feature = "sentinel")]
            Inner::Sentinel(following) => cmd.query_async(&mut following.master().await?).await,
        }
    }

    /// `SCAN … MATCH pattern COUNT 1000` over the one server, the Sentinel
    /// master, or each Cluster primary in turn, until about `budget` keys
    /// have been examined.
    pub(super) async fn scan(&self, pattern: &str, budget: u64) -> Result<KeyScan, Error> {
        let count = budget.clamp(1, SCAN_COUNT);
        let mut scan = KeyScan {
            keys: Vec::new(),
            calls: 0,
            scanned: 0,
            complete: true,
        };
        match &self.inner {
            #[cfg(feature = "cluster")]
            Inner::Cluster(cluster) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

                for (host, port) in primaries(cluster).await? {
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let node = |cmd: Cmd| {
                        let (mut cluster, route) = (cluster.clone(), route.clone());
                        async move { cluster.route_command(cmd, route).await }
                    };
                    scan_node(node, pattern, count, budget, &mut scan).await?;
                }
            }
            _ => {
                let server = |cmd: Cmd| {
                    let mut this = self.clone();
                    async move { this.query::<Value>(&cmd).await }
                };
                scan_node(server, pattern, count, budget, &mut scan).await?;
            }
        }
        // SCAN may return a key more than once.
        scan.keys.sort_unstable();
        scan.keys.dedup();
        Ok(scan)
    }

    /// Told of a failed or abandoned call: Sentinel asks again who the
    /// master is (at most a few times a second); the others reconnect on
    /// their own.
    pub(super) fn suspect(&self) {
        #[cfg(feature = "sentinel")]
        if let Inner::Sentinel(following) = &self.inner {
            following.suspect();
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        // The store's own way, a Cluster's ASK included.
        Box::pin(async move {
            let reply = self.query(cmd).await;
            if reply.is_err() {
                self.suspect();
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let replies = match &mut self.inner {
                Inner::Standalone(manager) => {
                    manager.req_packed_commands(pipeline, offset, count).await
                }
                #[cfg(feature = "cluster")]
                Inner::Cluster(cluster) => {
                    cluster.req_packed_commands(pipeline, offset, count).await
                }
                #[cfg(feature = "sentinel")]
                Inner::Sentinel(following) => {
                    let mut master = following.master().await?;
                    master.req_packed_commands(pipeline, offset, count).await
                }
            };
            if replies.is_err() {
                self.suspect();
            }
            replies
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Standalone(manager) => manager.get_db(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => 0,
            #[cfg(feature = "sentinel")]
            Inner::Sentinel(following) => following.db(),
        }
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inner connections' Debug would print URLs, passwords included.
        let topology = match &self.inner {
            Inner::Standalone(_) => "standalone",
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => "cluster",
            #[cfg(feature = "sentinel")]
            Inner::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisConnection")
            .field("topology", &topology)
            .finish_non_exhaustive()
    }
}

/// How long a command waits for its reply (redis-rs's default) on a
/// [`RedisConnection`] an application opens, and among the store's own
/// commands outside a decision: the checks of
/// [`connect`](super::RedisStore::connect), a peek, a reset, each `SCAN`
/// call. A decision's call has no such bound: its policy's timeout bounds
/// it, shorter or longer than this.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// `call`, one of the store's own outside a decision (which its policy's
/// timeout bounds), given up after [`COMMAND_TIMEOUT`].
pub(super) async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(COMMAND_TIMEOUT, call)
        .await
        .unwrap_or(Err(Error::Timeout(COMMAND_TIMEOUT)))
}

/// The `COUNT` of each `SCAN` call: about as many keys examined per call.
const SCAN_COUNT: u64 = 1000;

/// What a bounded [`RedisStore::scan`](super::RedisStore::scan) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyScan {
    /// The keys that match, sorted, each once (keys that are not UTF-8 are
    /// left out: the limiter writes none).
    pub keys: Vec<String>,
    /// The `SCAN` calls made, over every node.
    pub calls: u64,
    /// The budget spent: the `COUNT` of every call, added up. Redis
    /// examines about that many keys, fewer when a node holds fewer.
    pub scanned: u64,
    /// Whether the whole keyspace was scanned; `false` when the budget ran
    /// out first, so that more keys may match.
    pub complete: bool,
}

/// One node's `SCAN` through `call`, from cursor 0 until it is done or
/// `scan` has examined `budget` keys.
async fn scan_node<F, Fut>(
    mut call: F,
    pattern: &str,
    count: u64,
    budget: u64,
    scan: &mut KeyScan,
) -> Result<(), Error>
where
    F: FnMut(Cmd) -> Fut,
    Fut: std::future::Future<Output = RedisResult<Value>>,
{
    let mut cursor = 0u64;
    loop {
        if scan.scanned >= budget {
            scan.complete = false;
            return Ok(());
        }
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let reply = bounded(async { Ok(call(cmd).await?) }).await?;
        let (next, keys) =
            <(u64, Vec<Vec<u8>>)>::from_redis_value(reply).map_err(redis::RedisError::from)?;
        scan.calls += 1;
        scan.scanned += count;
        scan.keys.extend(
            keys.into_iter()
                .filter_map(|key| String::from_utf8(key).ok()),
        );
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The address of each primary of a Cluster, as `CLUSTER SLOTS` gives
/// them: `[[start, end, [host, port, id, …], replicas…], …]`.
#[cfg(feature = "cluster")]
async fn primaries(
    cluster: &redis::cluster_async::ClusterConnection,
) -> RedisResult<Vec<(String, u16)>> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

    let mut slots = redis::cmd("CLUSTER");
    slots.arg("SLOTS");
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
    let ranges = cluster.clone().route_command(slots, route).await?;
    let unexpected =
        || redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"));
    let Value::Array(ranges) = ranges else {
        return Err(unexpected());
    };
    let mut primaries = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(unexpected());
        };
        let Some(Value::Array(node)) = range.get(2) else {
            return Err(unexpected());
        };
        let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
            return Err(unexpected());
        };
        let address = (
            String::from_redis_value_ref(host)?,
            u16::from_redis_value_ref(port)?,
        );
        if !primaries.contains(&address) {
            primaries.push(address);
        }
    }
    Ok(primaries)
}

#[cfg(not(all(feature = "cluster", feature = "sentinel")))]
fn missing_feature(field: &str, feature: &str) -> Error {
    Error::config(
        field,
        format!("needs the crate's `{feature}` feature (on by default)"),
    )
}

/// The connections run on tasks of their own, which need a Tokio runtime
/// (redis-rs would panic without one); checked after the configuration, so
/// that its mistakes are reported first.
fn in_runtime() -> Result<(), Error> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::config(
            "redis",
            "a Redis connection needs a Tokio runtime: open it from async code or \
             inside Runtime::enter",
        )),
    }
}

/// Follows the `ASK` of a slot being migrated: the command, preceded by
/// `ASKING`, to the node the slot is moving to. redis-rs sends the two as
/// separate requests on a connection other requests share, so under load
/// another request can come between them and be refused; as one pipeline
/// they reach the node together.
#[cfg(feature = "cluster")]
async fn asked<T: FromRedisValue>(
    mut cluster: redis::cluster_async::ClusterConnection,
    cmd: &Cmd,
    ask: redis::RedisError,
) -> RedisResult<T> {
    use redis::cluster_routing::SingleNodeRoutingInfo;

    let target = ask.redirect_node().and_then(|(address, _slot)| {
        let (host, port) = address.rsplit_once(':')?;
        Some((host.to_owned(), port.parse().ok()?))
    });
    let Some((host, port)) = target else {
        return Err(ask);
    };
    let mut pipeline = redis::pipe();
    pipeline.cmd("ASKING").add_command(cmd.clone());
    let route = SingleNodeRoutingInfo::ByAddress { host, port };
    let reply = cluster.route_pipeline(pipeline, 1, 1, route).await?;
    let reply = reply
        .into_iter()
        .next()
        .unwrap_or(Value::Nil)
        .extract_error()?;
    Ok(T::from_redis_value(reply)?)
}

/// A Cluster connection sized for a limiter: a decision follows a `MOVED`
/// or `ASK` redirect (and survives one reconnect) but never waits out the
/// default retry schedule of seconds; the policy's timeout bounds it anyway.
#[cfg(feature = "cluster")]
fn cluster(
    config: &RedisConfig,
    nodes: &[String],
    timeout: Duration,
    response: Option<Duration>,
) -> Result<Inner, Error> {
    use redis::{
        IntoConnectionInfo, ProtocolVersion,
        cluster::{ClusterClientBuilder, ClusterConfig},
    };

    let field = "redis.cluster_nodes";
    let mut infos = Vec::with_capacity(nodes.len());
    for node in nodes {
        let info = node
            .as_str()
            .into_connection_info()
            .map_err(|e| Error::config(field, format!("{e}; expected redis://host:6379")))?;
        if info.redis_settings().db() != 0 {
            return Err(Error::config(
                field,
                "a cluster has only database 0: drop the /db from the URL and give each \
                 use its own key prefix instead",
            ));
        }
        infos.push(info);
    }
    let certs = tls::certificates(config.tls.as_ref(), nodes.iter().map(String::as_str))?;
    let builder = ClusterClientBuilder::new(infos)
        .use_protocol(ProtocolVersion::RESP3)
        .retries(2)
        .min_retry_wait(5)
        .max_retry_wait(50)
        .connection_timeout(timeout);
    let builder = match response {
        Some(response) => builder.response_timeout(response),
        None => builder,
    };
    let builder = match certs {
        #[cfg(feature = "tls")]
        Some(certs) => builder.certs(certs),
        _ => builder,
    };
    let client = builder
        .build()
        .map_err(|e| Error::config(field, e.to_string()))?;
    in_runtime()?;
    Ok(Inner::Cluster(
        client.get_pending_async_connection_with_config(ClusterConfig::new()),
    ))
}
