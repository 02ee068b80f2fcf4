//! Counters in Redis, shared by every app server.

use std::{future::Future, pin::Pin, sync::LazyLock, time::Duration};

use redis::{
    Client, ErrorKind, Script, ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{Check, Store};
use crate::{
    Algorithm, Decision, Error,
    algorithm::{Reply, fixed_window},
};

static FIXED_WINDOW: LazyLock<Script> = LazyLock::new(|| Script::new(fixed_window::SCRIPT));

/// Counters in Redis: one `EVALSHA` per decision over one multiplexed
/// connection that all requests share (so concurrent decisions are
/// pipelined) and that reconnects on its own after Redis restarts.
///
/// The URL selects the database, as in `redis://127.0.0.1:6379/1`; `rediss://`
/// needs the `redis` crate's TLS features.
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
        let client = Client::open(url).map_err(|e| {
            Error::config("redis.url", format!("{e}; expected redis://host:6379/db"))
        })?;
        let connection = ConnectionManager::new_lazy_with_config(client, Self::manager_config())?;
        Ok(Self::from_connection(connection))
    }

    /// Uses a connection the application already has.
    pub fn from_connection(connection: ConnectionManager) -> Self {
        Self { connection }
    }

    /// Reconnect fast and keep trying: a rate limiter wants Redis back
    /// within about a second of it returning. Each request has its own
    /// timeout in the policy, so the connection needs none.
    fn manager_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(3)
    }
}

impl Store for RedisStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

    fn check(&self, check: Check<'_>) -> Self::Future {
        let script: &'static Script = match check.algorithm {
            Algorithm::FixedWindow => &FIXED_WINDOW,
        };
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script.get_hash())
            .arg(1)
            .arg(check.key)
            .arg(check.rate.limit())
            .arg(check.rate.window_ms())
            .arg(check.cost);
        let mut connection = self.connection.clone();
        let limit = check.rate.limit();
        Box::pin(async move {
            let reply = match evalsha.query_async(&mut connection).await {
                // Redis restarted or its script cache was flushed.
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script.load_async(&mut connection).await?;
                    evalsha.query_async(&mut connection).await
                }
                reply => reply,
            };
            let (allowed, count, ttl_ms): (i64, i64, i64) = reply?;
            let reply = Reply {
                allowed: allowed == 1,
                count: u64::try_from(count).map_err(|_| unexpected(count))?,
                ttl_ms: u64::try_from(ttl_ms).map_err(|_| unexpected(ttl_ms))?,
            };
            Ok(reply.into_decision(limit))
        })
    }
}

fn unexpected(value: i64) -> Error {
    Error::UnexpectedReply(format!("negative count or TTL {value}"))
}
