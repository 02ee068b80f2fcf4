//! Counters in Redis, shared by every app server.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use redis::{
    Client, ErrorKind, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script,
    ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{Charge, MAX_LIMITS, Store};
use crate::{Algorithm, Decision, Error, algorithm::Verdict, key::KeyBuffer};

/// One script per algorithm, hashed once.
static SCRIPTS: LazyLock<[Script; 3]> = LazyLock::new(|| {
    [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ]
    .map(|algorithm| Script::new(algorithm.script()))
});

fn script(algorithm: Algorithm) -> &'static Script {
    &SCRIPTS[match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::Gcra => 2,
    }]
}

/// Counters in Redis: one `EVALSHA` per decision, whatever the number of
/// limits, over one multiplexed connection that all requests share (so
/// concurrent decisions are pipelined) and that reconnects on its own after
/// Redis restarts. Needs Redis 7 or later.
///
/// After the connection has dropped, the next decision first sends a `PING`,
/// twice if the first fails, so that a Redis that is back answers it; the
/// script itself is never sent twice, since Redis may have run it.
///
/// The URL selects the database, as in `redis://127.0.0.1:6379/1`; `rediss://`
/// needs the `redis` crate's TLS features. The connection speaks RESP3
/// whatever the URL's `protocol`, so that it learns of a drop as it happens.
///
/// ```no_run
/// use axum_redis_ratelimit::RedisStore;
///
/// # async fn run() -> Result<(), axum_redis_ratelimit::Error> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    /// The connection dropped since the last decision that reached Redis.
    dropped: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's Debug would print the URL, password included.
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` and checks that Redis answers, so that a wrong
    /// address or password fails at startup.
    ///
    /// # Errors
    /// [`Error::Config`] naming `redis.url` for a malformed URL,
    /// [`Error::Redis`] when Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let store = Self::connect_lazy(url)?;
        let mut connection = store.connection.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await?;
        Ok(store)
    }

    /// Like [`connect`](Self::connect) but connects on the first decision,
    /// so the application can start while Redis is down (each policy's fail
    /// mode then applies).
    ///
    /// # Errors
    /// [`Error::Config`] naming `redis.url` for a malformed URL.
    pub fn connect_lazy(url: &str) -> Result<Self, Error> {
        let bad_url = |e: redis::RedisError| {
            Error::config("redis.url", format!("{e}; expected redis://host:6379/db"))
        };
        let info = url.into_connection_info().map_err(bad_url)?;
        // Over RESP3 the connection reports its own drop as it happens, so
        // the manager reconnects at once and the store knows to check the
        // connection before the next decision.
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(resp3)).map_err(bad_url)?;
        let dropped = Arc::new(AtomicBool::new(false));
        let on_drop = dropped.clone();
        let config = Self::manager_config().set_push_sender(move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                on_drop.store(true, Relaxed);
            }
            Ok::<_, ()>(())
        });
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            dropped,
        })
    }

    /// Uses a connection the application already has. Such a connection
    /// tells the store of a drop only through a decision that fails.
    pub fn from_connection(connection: ConnectionManager) -> Self {
        Self {
            connection,
            dropped: Arc::default(),
        }
    }

    /// One connection attempt per reconnect, without backoff, so that no
    /// decision waits on a backoff's sleep while Redis is already back; while
    /// it is down, the policy's breaker paces the attempts. Each request has
    /// its own timeout in the policy, so the connection needs none.
    fn manager_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(0)
    }

    /// The script call for `check` with `cost` (negative: a refund), to be
    /// awaited; or the check's validation error.
    fn script_call(
        &self,
        check: &Charge<'_>,
        cost: i64,
    ) -> Result<impl Future<Output = Result<Vec<i64>, Error>> + Send + 'static, Error> {
        let evalsha = Self::evalsha(check, cost)?;
        let (connection, dropped) = (self.connection.clone(), self.dropped.clone());
        Ok(Self::run(connection, dropped, check.algorithm, evalsha))
    }

    /// The `EVALSHA` of `check` with `cost` (negative: a refund), or the
    /// check's validation error.
    fn evalsha(check: &Charge<'_>, cost: i64) -> Result<redis::Cmd, Error> {
        check.validate()?;
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script(check.algorithm).get_hash())
            .arg(check.limits.len());
        let mut key = KeyBuffer::take();
        for limit in check.limits {
            check.counter_key(limit, &mut key);
            evalsha.arg(key.as_str());
        }
        evalsha
            .arg(check.now_us.map_or(-1, |now| now as i64))
            .arg(cost);
        for limit in check.limits {
            evalsha
                .arg(limit.rate.limit())
                .arg(limit.rate.window_ms())
                .arg(limit.burst());
        }
        Ok(evalsha)
    }

    /// Runs `evalsha`, loading the script when Redis does not have it.
    async fn run(
        mut connection: ConnectionManager,
        dropped: Arc<AtomicBool>,
        algorithm: Algorithm,
        evalsha: redis::Cmd,
    ) -> Result<Vec<i64>, Error> {
        if dropped.load(Relaxed) {
            // The script must not run twice, and once sent it cannot be
            // known not to have run; a PING can be sent twice. The first
            // one fails if the reconnection was refused or cut short, and
            // has the manager connect again for the second.
            let ping = redis::cmd("PING");
            if ping.query_async::<()>(&mut connection).await.is_err() {
                ping.query_async::<()>(&mut connection).await?;
            }
            dropped.store(false, Relaxed);
        }
        let reply = match evalsha.query_async(&mut connection).await {
            Err(e) if e.is_connection_dropped() => {
                dropped.store(true, Relaxed);
                Err(e)
            }
            // Redis restarted or its script cache was flushed.
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script(algorithm).load_async(&mut connection).await?;
                evalsha.query_async(&mut connection).await
            }
            reply => reply,
        };
        Ok(reply?)
    }
}

impl Store for RedisStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

    fn check(&self, check: Charge<'_>) -> Self::Future {
        let call = match self.script_call(&check, check.counted_cost() as i64) {
            Ok(call) => call,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Copied onto the future's stack rather than into a Vec.
        let mut limits = [None; MAX_LIMITS];
        for (slot, limit) in limits.iter_mut().zip(check.limits) {
            *slot = Some(*limit);
        }
        Box::pin(async move {
            let reply = call.await?;
            let limits = limits.iter().flatten();
            let verdicts = reply.get(1..).unwrap_or_default().chunks(4);
            if verdicts.len() != limits.clone().count() || verdicts.clone().any(|v| v.len() != 4) {
                return Err(Error::UnexpectedReply(format!("{reply:?}")));
            }
            let verdicts = verdicts.map(|v| {
                let n = |i: usize| u64::try_from(v[i]).unwrap_or(0);
                Verdict {
                    allowed: v[0] == 1,
                    remaining: n(1),
                    reset_us: n(2),
                    retry_us: n(3),
                }
            });
            Decision::combine(limits.zip(verdicts))
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
            match call.await?[..] {
                [1] => Ok(()),
                ref reply => Err(Error::UnexpectedReply(format!("{reply:?}"))),
            }
        })
    }
}
