//! Lease mode's invariant, by property: 2 to 8 app servers (each its own
//! layer, lease table and Redis connection) share one real Redis; random
//! sequences of requests of random costs to random servers, idle gaps that
//! let slices go back or windows roll over (windows of 1 or 2 s), crashes
//! (a server dropped without giving anything back, then started afresh) and
//! graceful restarts. Checked on every case:
//!
//! - in every window, the requests admitted across all servers never exceed
//!   the limit;
//! - a denial leaves at most what the servers may hold unspent unclaimed:
//!   under the fixed window, `limit − admitted − cost` is below the servers'
//!   slices (each server at most one slice and one give-back under way, each
//!   under `max_slice`, crashed servers included); under the sliding window
//!   the same over the current and the previous window (the previous one is
//!   weighted);
//! - after every server has released its leases, the counter of the last
//!   window holds the units admitted in it, plus at most what crashed
//!   servers stranded (their slices, lost for the window) and what
//!   admissions straddling its start took.
//!
//! Windows are placed by the clock (Redis runs on this machine, on the same
//! clock), never by what the limiter says of them: a request sent at
//! `before` and answered at `after` was decided in the window that ran all
//! that time. A window is named by its counter's expiry, which the test
//! reads from Redis (`PEXPIRETIME`) after every request: a fixed window runs
//! for its length up to it, a sliding window's counter expires one window
//! after its window ends. A request that straddles a
//! boundary is left out of the counts (rare: a request takes about a
//! millisecond, a window a second or two); an admission in no window at all
//! fails the test.

mod common;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{body::Body, response::Response};
use axum_redis_ratelimit::{
    Algorithm, Cost, Decision, Key, Limit, Mode, Policy, Rate, RateLimitLayer, RateLimitStatus,
    RedisStore,
};
use common::{EVENT_COUNT, RedisServer, TOKEN, check, counter_key, unique_prefix};
use http::Request;
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};

const AGENTS: [&str; 2] = ["agent-a", "agent-b"];

#[derive(Clone, Debug)]
enum Op {
    /// A request of `cost` from `agent` to `server`.
    Send {
        server: usize,
        agent: usize,
        cost: u64,
    },
    /// Nothing for this long: slices go idle, windows roll over.
    Idle(u64),
    /// `server` dies with whatever it holds, and a fresh one takes its place.
    Crash(usize),
    /// `server` releases its leases and restarts.
    Restart(usize),
}

#[derive(Clone, Debug)]
struct Case {
    algorithm: Algorithm,
    limit: u64,
    window_s: u64,
    max_slice: u64,
    instances: u64,
    idle_ms: u64,
    capacity: usize,
    servers: usize,
    ops: Vec<Op>,
}

fn op(servers: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        // Mostly one hot agent, so that windows fill up.
        12 => (0..servers, prop_oneof![4 => Just(0usize), 1 => Just(1usize)], 1..=3u64)
            .prop_map(|(server, agent, cost)| Op::Send { server, agent, cost }),
        // Short gaps spread the requests over the windows' boundaries;
        // long ones let slices go idle.
        6 => prop_oneof![8 => 2..40u64, 1 => 100..450u64].prop_map(Op::Idle),
        1 => (0..servers).prop_map(Op::Crash),
        2 => (0..servers).prop_map(Op::Restart),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (2..=8usize).prop_flat_map(|servers| {
        (
            prop_oneof![Just(Algorithm::FixedWindow), Just(Algorithm::SlidingWindow)],
            // From a limit the load exhausts early in each window to one it
            // barely reaches, where slices are left over at the boundaries.
            prop_oneof![5..=40u64, 40..=300u64],
            1..=2u64,
            1..=12u64,
            1..=4u64,
            prop_oneof![Just(30u64), Just(120), Just(400)],
            prop_oneof![Just(1usize), Just(100)],
            prop::collection::vec(op(servers), 60..220),
        )
            .prop_map(
                move |(
                    algorithm,
                    limit,
                    window_s,
                    max_slice,
                    instances,
                    idle_ms,
                    capacity,
                    ops,
                )| {
                    Case {
                        algorithm,
                        limit,
                        window_s,
                        max_slice,
                        instances,
                        idle_ms,
                        capacity,
                        servers,
                        ops,
                    }
                },
            )
    })
}

type Server = RateLimitLayer<RedisStore>;

/// What became of one request, and when.
#[derive(Clone, Copy, Debug)]
struct Seen {
    agent: usize,
    cost: u64,
    allowed: bool,
    /// Microseconds since the epoch, before it was sent and once answered.
    before: u64,
    after: u64,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Which window a request was decided in, if one ran all the while.
enum Placed {
    In(u64),
    /// Across a boundary: left out.
    Straddling,
    /// No window ran: no request may have been admitted then.
    Nowhere,
}

impl Case {
    fn policy(&self, prefix: &str) -> Policy {
        let rate = Rate::new(
            std::num::NonZeroU64::new(self.limit).unwrap(),
            Duration::from_secs(self.window_s),
        )
        .unwrap();
        Policy::new("telemetry")
            .rate(rate)
            .algorithm(self.algorithm)
            .key(Key::header(TOKEN))
            .cost(Cost::header(EVENT_COUNT))
            .prefix(prefix)
            // Every decision reaches the handler, which reads it.
            .mode(Mode::Annotate)
            .lease(self.max_slice)
            .lease_instances(self.instances)
            .lease_idle_return(Duration::from_millis(self.idle_ms))
            .lease_capacity(self.capacity)
    }

    fn window_us(&self) -> u64 {
        self.window_s * 1_000_000
    }

    fn counter(&self, policy: &Policy, agent: usize) -> String {
        let client = policy.client_key(None, AGENTS[agent].as_bytes()).unwrap();
        let limits: Vec<Limit> = policy.limits().collect();
        counter_key(&check(&client, &limits, self.algorithm))
    }

    /// The window of a request, named by its counter's expiry (ms, as
    /// `PEXPIRETIME` gave it) among `ends` seen.
    fn place(&self, seen: &Seen, ends: &[u64]) -> Placed {
        let w = self.window_us();
        // A fixed window's counter expiring at `end` (ms) was opened in the
        // millisecond `end − window` and expires once Redis's clock, in
        // whole ms, is past `end`: it runs over [end − window, end + 1 ms).
        // A sliding window's counter outlives its window by one more.
        let after = match self.algorithm {
            Algorithm::SlidingWindow => w,
            _ => 0,
        };
        let start = |end: u64| end * 1000 - w - after;
        let stop = |end: u64| (end + 1) * 1000 - after;
        let overlapping: Vec<u64> = ends
            .iter()
            .copied()
            .filter(|&end| seen.before < stop(end) && start(end) < seen.after)
            .collect();
        let within = overlapping
            .iter()
            .copied()
            .find(|&end| start(end) <= seen.before && seen.after < stop(end));
        match (within, overlapping.len()) {
            (_, 0) => Placed::Nowhere,
            (Some(end), 1) => Placed::In(end),
            _ => Placed::Straddling,
        }
    }

    async fn run(&self) -> Result<(), TestCaseError> {
        let prefix = unique_prefix();
        let policy = self.policy(&prefix);
        let new_server = || async {
            let store = RedisStore::connect(RedisServer::shared().url())
                .await
                .unwrap();
            RateLimitLayer::new(policy.clone(), store).unwrap()
        };
        let mut servers: Vec<Server> = Vec::new();
        for _ in 0..self.servers {
            servers.push(new_server().await);
        }
        let mut conn = RedisServer::shared().connection().await;
        let mut seen: Vec<Seen> = Vec::new();
        // Per agent, the counters' expiries seen.
        let mut ends: [Vec<u64>; AGENTS.len()] = Default::default();
        let mut crashes = 0u64;
        for op in &self.ops {
            match *op {
                Op::Send {
                    server,
                    agent,
                    cost,
                } => {
                    let before = unix_us();
                    let decision = send(&servers[server], AGENTS[agent], cost).await;
                    let after = unix_us();
                    seen.push(Seen {
                        agent,
                        cost,
                        allowed: decision.allowed,
                        before,
                        after,
                    });
                    let end: i64 = redis::cmd("PEXPIRETIME")
                        .arg(self.counter(&policy, agent))
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    if let Ok(end) = u64::try_from(end)
                        && !ends[agent].contains(&end)
                    {
                        ends[agent].push(end);
                    }
                }
                Op::Idle(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Op::Crash(server) => {
                    // Dropped, its lease table with it: nothing goes back.
                    servers[server] = new_server().await;
                    crashes += 1;
                }
                Op::Restart(server) => {
                    let released = servers[server].release_leases().await;
                    prop_assert_eq!(released.failed, 0);
                    servers[server] = new_server().await;
                }
            }
        }
        for server in &servers {
            let released = server.release_leases().await;
            prop_assert_eq!(released.failed, 0);
        }
        // Each server holds at most one slice and one give-back under way
        // per key, each under max_slice; crashed servers held as much.
        let held = (self.servers as u64 + crashes) * 2 * self.max_slice;
        for (agent, ends) in ends.iter().enumerate() {
            let mine: Vec<Seen> = seen.iter().copied().filter(|s| s.agent == agent).collect();
            let mut admitted: BTreeMap<u64, u64> = BTreeMap::new();
            let (mut straddling, mut straddling_units) = (0, 0);
            for s in mine.iter().filter(|s| s.allowed) {
                match self.place(s, ends) {
                    Placed::In(window) => *admitted.entry(window).or_default() += s.cost,
                    Placed::Straddling => {
                        straddling += 1;
                        straddling_units += s.cost;
                    }
                    Placed::Nowhere => {
                        return Err(TestCaseError::fail(format!(
                            "admitted while no window ran: {s:?}, windows ending {ends:?}"
                        )));
                    }
                }
            }
            prop_assert!(
                straddling <= 4,
                "{} admissions straddle a boundary",
                straddling
            );
            for (&window, &admitted) in &admitted {
                prop_assert!(
                    admitted <= self.limit,
                    "{} admitted in window {} of {}",
                    admitted,
                    window,
                    self.limit
                );
            }
            for denial in mine.iter().filter(|s| !s.allowed) {
                let Placed::In(window) = self.place(denial, ends) else {
                    continue;
                };
                let (mut before, slack) = (admitted.get(&window).copied().unwrap_or(0), held);
                let slack = match self.algorithm {
                    // The previous window counts too, weighted by at most 1:
                    // its counter expired a window earlier (to the ms).
                    Algorithm::SlidingWindow => {
                        let previous = window - self.window_s * 1000;
                        before += admitted
                            .range(previous - 1..=previous + 1)
                            .map(|(_, &n)| n)
                            .sum::<u64>();
                        2 * slack
                    }
                    _ => slack,
                };
                prop_assert!(
                    before + denial.cost + slack > self.limit,
                    "denied with {} admitted in window {}, limit {}",
                    before,
                    window,
                    self.limit
                );
            }
            // After every release, the window still running holds what it
            // admitted, plus at most what crashed servers stranded and what
            // admissions placed in no one window (they straddled its start)
            // took.
            let stranded = crashes * 2 * self.max_slice + straddling_units;
            let counted = self.counted(&policy, agent, &mut conn).await;
            if let Some((window, count)) = counted {
                let admitted = admitted.get(&window).copied().unwrap_or(0);
                prop_assert!(
                    admitted <= count && count <= admitted + stranded,
                    "window {}: counted {}, admitted {}, {} crashes, {} units straddling",
                    window,
                    count,
                    admitted,
                    crashes,
                    straddling_units
                );
            }
        }
        Ok(())
    }

    /// The window still running and its count, if any.
    async fn counted(
        &self,
        policy: &Policy,
        agent: usize,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> Option<(u64, u64)> {
        let key = self.counter(policy, agent);
        let (count, end, ttl): (Option<u64>, i64, i64) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("PEXPIRETIME")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        // A sliding window's counter past its window holds the previous
        // count: no window of it still runs.
        let running = match self.algorithm {
            Algorithm::SlidingWindow => ttl > (self.window_s * 1000) as i64,
            _ => true,
        };
        running.then_some(())?;
        Some((u64::try_from(end).ok()?, count?))
    }
}

/// A request through `server`: the decision its handler saw.
async fn send(server: &Server, agent: &str, cost: u64) -> Decision {
    let handler = service_fn(|request: Request<Body>| async move {
        let status = request.extensions().get::<RateLimitStatus>().cloned();
        let decision = status.and_then(|s| s.get("telemetry").map(|info| info.decision));
        let mut response = Response::new(Body::empty());
        response.extensions_mut().insert(decision);
        Ok::<_, Infallible>(response)
    });
    let request = Request::builder()
        .method("POST")
        .header(TOKEN, agent)
        .header(EVENT_COUNT, cost.to_string())
        .body(Body::empty())
        .unwrap();
    let response = server.layer(handler).oneshot(request).await.unwrap();
    let decision = response.extensions().get::<Option<Decision>>().copied();
    decision
        .flatten()
        .expect("annotate mode records every decision")
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case runs in real time (windows of 1 or 2 s, Redis's own
        // expiry): a few seconds each.
        cases: 24,
        max_shrink_iters: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_window_admits_more_than_its_limit_across_app_servers(case in case()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(case.run())?;
    }
}
