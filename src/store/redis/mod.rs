//! Counters in Redis, shared by every app server: one server, a Redis
//! Cluster, or the master a set of Sentinels names.

mod config;
mod connection;
mod lease;
#[cfg(feature = "sentinel")]
mod sentinel;
mod server;
mod tls;

use std::{
    future::Future,
    pin::Pin,
    sync::{LazyLock, atomic::Ordering::Relaxed},
};

use redis::{ErrorKind, ServerErrorKind, aio::ConnectionManager};

pub use self::config::{RedisConfig, TlsFiles};
pub use self::connection::{KeyScan, RedisConnection};
use self::{connection::bounded, server::Dropped};
use super::{Charge, MAX_LIMITS, Store};
use crate::{
    Algorithm, Decision, Error, Limit, LimitState,
    algorithm::{Script, Verdict},
    key::{KeyBuffer, layout},
};

const SCRIPT_COMMANDS: &str = "PING, HELLO, SELECT (for a database other than 0), EVALSHA, EVAL, \
     and within the scripts GET, PSETEX, INCRBY, DECRBY, DEL, PTTL, PEXPIRE, HMGET, HSET \
     and HINCRBY";

/// One script per algorithm, hashed once.
static SCRIPTS: LazyLock<[redis::Script; Script::ALL.len()]> =
    LazyLock::new(|| Script::ALL.map(|script| redis::Script::new(script.source())));

fn loaded(script: Script) -> &'static redis::Script {
    &SCRIPTS[Script::ALL.iter().position(|s| *s == script).unwrap_or(0)]
}

/// Counters in Redis: one `EVALSHA` per decision, whatever the number of
/// limits, over multiplexed connections that all requests share (so
/// concurrent decisions are pipelined) and that reconnect on their own.
/// Needs Redis 7 or later, or Valkey.
///
/// Where it connects is a [`RedisConfig`]: one server (a URL, which selects
/// the database as in `redis://127.0.0.1:6379/1`), a Redis Cluster (each
/// script goes to its key's primary; the keys' hash tags keep a client's
/// limits on one node), or the master a set of Sentinels names, followed
/// through failovers. `rediss://` and [`TlsFiles`] need the `tls` feature.
///
/// After the connection has dropped, the next decision first sends a `PING`,
/// twice if the first fails, so that a Redis that is back answers it; the
/// script itself is never sent twice by this store, since Redis may have run
/// it. (A Cluster connection retries a call cut by a node's failure once,
/// so such a call may be counted twice, never zero times.) A server that
/// lacks the script (restarted, flushed, a new primary) gets it by `EVAL`.
///
/// ```no_run
/// use axum_redis_ratelimit::{RedisStore, store::RedisConfig};
///
/// # async fn run() -> Result<(), axum_redis_ratelimit::Error> {
/// let one = RedisStore::connect("redis://127.0.0.1:6379/1").await?;
/// let cluster = RedisStore::connect(RedisConfig::cluster([
///     "redis://10.0.0.1:6379",
///     "redis://10.0.0.2:6379",
/// ]))
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    /// The connection dropped since the last decision that reached Redis.
    dropped: Dropped,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's Debug would print the URL, password included.
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to what `config` names (a URL, or a [`RedisConfig`]) and
    /// checks that Redis answers and lets this user run the limiter's
    /// scripts, so that a wrong address, password or ACL fails at startup.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting (`redis.url`, `redis.tls.ca`…)
    /// for a configuration that cannot work, or `redis` for a user without
    /// the permissions the scripts need (the README lists them);
    /// [`Error::Redis`] when Redis cannot be reached.
    pub async fn connect(config: impl Into<RedisConfig>) -> Result<Self, Error> {
        let config = config.into();
        let store = Self::connect_lazy(config.clone())?;
        let mut connection = store.connection.clone();
        // The PING's own error, kept for what it tells of a TLS port.
        let ping = async { Ok(connection.query::<()>(&redis::cmd("PING")).await) };
        if let Err(e) = bounded(ping).await? {
            return Err(match config.plain_field() {
                // A TLS port drops a plaintext client at once; a closed
                // port is just unreachable.
                Some(field)
                    if e.kind() == ErrorKind::Io
                        && e.is_connection_dropped()
                        && !e.is_connection_refusal() =>
                {
                    Error::config(
                        field,
                        format!(
                            "the server closed the connection at once ({e}); if it speaks TLS, use rediss://"
                        ),
                    )
                }
                _ => e.into(),
            });
        }
        for script in Script::ALL {
            bounded(store.probe(script)).await?;
        }
        Ok(store)
    }

    /// Like [`connect`](Self::connect) but connects on the first decision,
    /// so the application can start while Redis is down (each policy's fail
    /// mode then applies). Call it within a Tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that cannot work, or `redis`
    /// outside a Tokio runtime.
    pub fn connect_lazy(config: impl Into<RedisConfig>) -> Result<Self, Error> {
        let dropped = Dropped::default();
        // A decision's call waits as long as its policy's timeout allows,
        // whatever that is; the store's own calls are bounded one by one.
        let connection = RedisConnection::with_drops(&config.into(), None, &dropped)?;
        Ok(Self {
            connection,
            dropped,
        })
    }

    /// Uses a connection the application already has. Such a connection
    /// tells the store of a drop only through a decision that fails, and
    /// its own response timeout (redis-rs's default: 500 ms) cuts short a
    /// decision whose policy's timeout is longer: set it to `None` or
    /// above the longest.
    pub fn from_connection(connection: ConnectionManager) -> Self {
        Self {
            connection: RedisConnection::from_manager(connection),
            dropped: Dropped::default(),
        }
    }

    /// Runs `script` on no key at all, a refund of nothing: it proves the
    /// user may run the script (and loads it). What a script runs on keys
    /// shows at the first decision, as a store error.
    async fn probe(&self, script: Script) -> Result<(), Error> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(loaded(script).get_hash())
            .arg(0)
            .arg(-1)
            .arg(-1);
        let reply = self.call(script.source(), evalsha).send();
        let denied = |e: &redis::RedisError| {
            e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
                || e.to_string().contains("can't run this command")
        };
        match reply.await {
            Err(Error::Redis(e)) if denied(&e) => Err(Error::config(
                "redis",
                format!(
                    "the Redis user may not run the limiter's scripts ({e}); it needs \
                     {SCRIPT_COMMANDS} on the keys under the policies' prefixes (the \
                     README's Deployments section has the ACL)"
                ),
            )),
            reply => reply.map(drop),
        }
    }

    /// Reads the counters of the client `key` (as
    /// [`Policy::client_key`](crate::Policy::client_key) names it) under
    /// each of `limits`, counting nothing: one `EVALSHA` of the algorithm's
    /// script with a cost of 0, which decides every limit and commits
    /// nothing, so each limit reports its own remaining requests and time to
    /// reset, and a peek never changes what the next check answers. A
    /// counter that lost its expiry gets one back, as from any check.
    /// `now_us` is the time in microseconds since the Unix epoch for a
    /// policy on [`Clock::App`](crate::Clock::App), else `None` (Redis's
    /// clock).
    ///
    /// ```no_run
    /// use axum_redis_ratelimit::{Algorithm, Rate, RedisStore};
    ///
    /// # async fn run() -> Result<(), axum_redis_ratelimit::Error> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/1").await?;
    /// let limits = [Rate::per_second(10).into(), Rate::per_minute(1000).into()];
    /// let client = "rl:telemetry:{x-agent-token:AGENT-1}";
    /// for state in store.peek(client, &limits, Algorithm::Gcra, None).await? {
    ///     println!("{}: {} left", state.limit.rate(), state.remaining);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for no limits, more than [`MAX_LIMITS`] or a limit
    /// beyond exact arithmetic; [`Error::Redis`] when Redis fails.
    pub async fn peek(
        &self,
        key: &str,
        limits: &[Limit],
        algorithm: Algorithm,
        now_us: Option<u64>,
    ) -> Result<Vec<LimitState>, Error> {
        let charge = Charge::peek(key, limits, algorithm, now_us);
        let reply = bounded(self.script_call(&charge, 0)?.send()).await?;
        Ok(verdicts(&charge, &reply, 0)?
            .into_iter()
            .flatten()
            .zip(limits)
            .map(|(verdict, limit)| LimitState::new(limit, algorithm, verdict))
            .collect())
    }

    /// Deletes the counters of the client `key` under each of `limits` (one
    /// `DEL`: they share the client's hash tag, so one Cluster slot), so
    /// that its next request starts afresh; how many existed.
    ///
    /// # Errors
    /// As [`peek`](Self::peek).
    pub async fn reset(
        &self,
        key: &str,
        limits: &[Limit],
        algorithm: Algorithm,
    ) -> Result<u64, Error> {
        let charge = Charge {
            key,
            limits,
            algorithm,
            cost: 1,
            now_us: None,
        };
        charge.validate()?;
        let mut del = redis::cmd("DEL");
        for limit in limits {
            charge.each_counter_on_any_clock(limit, |counter| {
                del.arg(counter);
            });
        }
        bounded(async { Ok(self.connection.clone().query(&del).await?) }).await
    }

    /// The keys matching `pattern` (a `SCAN MATCH` glob, such as
    /// [`Policy::counter_pattern`](crate::Policy::counter_pattern)), by
    /// `SCAN` with `COUNT` 1000 on the one server, the Sentinel master, or
    /// each primary of a Cluster in turn, stopping once about `max_scanned`
    /// keys have been examined (each call's `COUNT` added up): a bounded
    /// cost on a production Redis, never a `KEYS`.
    ///
    /// # Errors
    /// [`Error::Redis`] when Redis fails or refuses `SCAN` (the user needs
    /// it, and `CLUSTER SLOTS` on a Cluster).
    pub async fn scan(&self, pattern: &str, max_scanned: u64) -> Result<KeyScan, Error> {
        self.connection.scan(pattern, max_scanned).await
    }

    /// The script call for `check` with `cost` (negative: a refund), or the
    /// check's validation error.
    fn script_call(&self, check: &Charge<'_>, cost: i64) -> Result<ScriptCall, Error> {
        Ok(self.call(check.script().source(), Self::evalsha(check, cost)?))
    }

    /// The `EVALSHA` of `check` with `cost` (negative: a refund), or the
    /// check's validation error.
    fn evalsha(check: &Charge<'_>, cost: i64) -> Result<redis::Cmd, Error> {
        check.validate()?;
        let script = check.script();
        // Sized once, so that its buffers do not grow (and reallocate) as
        // the arguments come: the name, the sha, the key count, the time and
        // the cost, then the keys (the client's key and at most 29 bytes:
        // `:<window>:sliding:prev`) and per limit two numbers of at most 20
        // digits.
        let n = check.limits.len();
        let keys = n * keys_per_limit(script);
        let data = 7 + 40 + 3 * 20 + keys * (check.key.len() + 29) + n * 2 * 20;
        let mut evalsha = redis::Cmd::with_capacity(5 + keys + 2 * n, data);
        evalsha.arg("EVALSHA").arg(loaded(script).get_hash());
        push_keys(check, &mut evalsha);
        for arg in script.args(check.now_us, cost, check.limits) {
            evalsha.arg(arg);
        }
        Ok(evalsha)
    }

    /// A call of `evalsha` (its script's `source` for a reload), ready to
    /// send.
    fn call(&self, source: &'static str, evalsha: redis::Cmd) -> ScriptCall {
        ScriptCall {
            connection: self.connection.clone(),
            dropped: self.dropped.clone(),
            source,
            evalsha,
        }
    }
}

/// A script call, made before its future: small, so that the future that
/// sends it is built in place, where it is awaited (a future built first
/// and awaited inside another is copied, and sized, twice).
struct ScriptCall {
    connection: RedisConnection,
    dropped: Dropped,
    source: &'static str,
    evalsha: redis::Cmd,
}

impl ScriptCall {
    async fn send(self) -> Result<Reply, Error> {
        let Self {
            connection,
            dropped,
            source,
            evalsha,
        } = self;
        // A call the policy's timeout abandons, or that fails, may mean the
        // master moved.
        let mut watch = Watch {
            connection,
            answered: false,
        };
        let connection = &mut watch.connection;
        if dropped.load(Relaxed) {
            // Boxed, as the reload below: rare paths, whose futures would
            // otherwise size every call's.
            Box::pin(reconnected(connection)).await?;
            dropped.store(false, Relaxed);
        }
        match connection.query(&evalsha).await {
            Ok(reply) => {
                watch.answered = true;
                return Ok(reply);
            }
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {}
            Err(e) => {
                if e.is_connection_dropped() {
                    dropped.store(true, Relaxed);
                }
                return Err(e.into());
            }
        }
        // Reloaded out of the match, whose reply would otherwise be kept
        // (and sized into every call's future) while this runs.
        let reply = Box::pin(connection.query(&eval(&evalsha, source))).await;
        watch.answered = reply.is_ok();
        Ok(reply?)
    }
}

/// After a dropped connection: the script must not run twice, and once
/// sent it cannot be known not to have run; a PING can be sent twice. The
/// first one fails if the reconnection was refused or cut short, and has
/// the manager connect again for the second.
async fn reconnected(connection: &mut RedisConnection) -> redis::RedisResult<()> {
    let ping = redis::cmd("PING");
    if connection.query::<()>(&ping).await.is_err() {
        connection.query::<()>(&ping).await?;
    }
    Ok(())
}

/// How many keys `script` names per limit: the sliding window on Redis's
/// clock keeps the previous count beside its counter.
fn keys_per_limit(script: Script) -> usize {
    if script == Script::SlidingWindow {
        2
    } else {
        1
    }
}

/// The key count and the keys of `check`'s script (the plain one, or the
/// lease script beside it, which shares its counters).
fn push_keys(check: &Charge<'_>, evalsha: &mut redis::Cmd) {
    let script = check.script();
    evalsha.arg(check.limits.len() * keys_per_limit(script));
    let mut key = KeyBuffer::take();
    // Only the sliding window on Redis's clock names a second key.
    let mut previous = (keys_per_limit(script) == 2).then(KeyBuffer::take);
    for limit in check.limits {
        check.counter_key(limit, &mut key);
        evalsha.arg(key.as_str());
        if let Some(previous) = previous.as_mut() {
            layout::previous_count_key(&key, previous);
            evalsha.arg(previous.as_str());
        }
    }
}

/// The verdicts of a script's reply to a check or a peek of `count` limits.
/// A script's reply: one integer, or an array of at most
/// [`Reply::CAPACITY`] of them, kept on the stack (no `Vec` per decision).
#[derive(Clone, Copy)]
struct Reply {
    values: [i64; Reply::CAPACITY],
    len: usize,
}

impl Reply {
    /// The largest reply: the sliding window's lease script's, the grant
    /// and five numbers per limit.
    const CAPACITY: usize = 1 + 5 * MAX_LIMITS;
}

impl std::ops::Deref for Reply {
    type Target = [i64];

    fn deref(&self) -> &[i64] {
        &self.values[..self.len]
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl redis::FromRedisValue for Reply {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let mut reply = Reply {
            values: [0; Reply::CAPACITY],
            len: 0,
        };
        let one = std::slice::from_ref(&value);
        let items = match &value {
            redis::Value::Array(items) => items.as_slice(),
            _ => one,
        };
        if items.len() > Reply::CAPACITY {
            return Err(format!("a reply of {} values", items.len()).into());
        }
        for (slot, item) in reply.values.iter_mut().zip(items) {
            *slot = i64::from_redis_value_ref(item)?;
        }
        reply.len = items.len();
        Ok(reply)
    }
}

/// Each limit's verdict on `check` at `cost` from its script's reply.
fn verdicts(
    check: &Charge<'_>,
    reply: &[i64],
    cost: u64,
) -> Result<[Option<Verdict>; MAX_LIMITS], Error> {
    check
        .script()
        .verdicts(reply, check.limits, cost)
        .ok_or_else(|| Error::UnexpectedReply(format!("{reply:?}")))
}

fn eval(evalsha: &redis::Cmd, source: &str) -> redis::Cmd {
    let mut eval = redis::cmd("EVAL");
    eval.arg(source);
    for arg in evalsha.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            eval.arg(bytes);
        }
    }
    eval
}

/// A call's connection, told when the call ended without an answer, by
/// error or by being dropped.
struct Watch {
    connection: RedisConnection,
    answered: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.answered {
            self.connection.suspect();
        }
    }
}

impl Store for RedisStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

    fn check(&self, check: Charge<'_>) -> Self::Future {
        let call = match self.script_call(&check, check.counted_cost() as i64) {
            Ok(call) => call,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Copied onto the future's stack rather than into a Vec (the call
        // exists, so the check is valid: 1 to MAX_LIMITS limits).
        let (script, cost, n) = (check.script(), check.counted_cost(), check.limits.len());
        let mut limits = [check.limits[0]; MAX_LIMITS];
        limits[..n].copy_from_slice(check.limits);
        Box::pin(async move {
            let reply = call.send().await?;
            let limits = &limits[..n];
            let verdicts = script
                .verdicts(&reply, limits, cost)
                .ok_or_else(|| Error::UnexpectedReply(format!("{reply:?}")))?;
            Decision::combine(limits.iter().zip(verdicts.into_iter().flatten()))
                .ok_or_else(|| Error::UnexpectedReply(format!("{reply:?}")))
        })
    }

    type Refund = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn refund(&self, check: Charge<'_>) -> Self::Refund {
        let call = match self.script_call(&check, -(check.counted_cost() as i64)) {
            Ok(call) => call,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        Box::pin(async move {
            match call.send().await?[..] {
                [1] => Ok(()),
                ref reply => Err(Error::UnexpectedReply(format!("{reply:?}"))),
            }
        })
    }

    fn can_lease(&self) -> bool {
        true
    }

    fn lease(&self, call: crate::lease::LeaseCall<'_>) -> crate::lease::LeaseFuture {
        self.lease_call(call)
    }
}
