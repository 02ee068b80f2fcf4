//! A connection to the master a set of Sentinels names, that follows it
//! through failovers.
//!
//! redis-rs resolves the master once per client: a connection manager built
//! from it keeps dialling a dead master, and one still connected to a
//! demoted master gets `READONLY` on every script. Here any failed or
//! abandoned call asks the sentinels again (one question at a time, at most
//! every [`MIN_INTERVAL`]), and a new master's connection replaces the old
//! one without any request waiting for the question.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use redis::{
    ConnectionAddr, IntoConnectionInfo, ProtocolVersion, RedisResult, TlsMode,
    aio::ConnectionManager,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use super::{
    RedisConfig,
    server::{self, Dropped},
    tls,
};
use crate::Error;

/// Questions to the sentinels are at least this far apart, however many
/// calls fail meanwhile.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

pub(crate) struct Following {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    master: RwLock<Option<Master>>,
    asking: AtomicBool,
    last_asked: Mutex<Option<Instant>>,
    connect_timeout: Duration,
    /// How long a command waits for its reply (`None`: as its caller).
    response_timeout: Option<Duration>,
    db: i64,
    dropped: Dropped,
}

struct Master {
    /// `host:port`, to tell a new master from the one already connected.
    address: String,
    connection: ConnectionManager,
}

impl Following {
    pub(super) fn new(
        config: &RedisConfig,
        sentinels: &[String],
        master_name: &str,
        response_timeout: Option<Duration>,
        dropped: Dropped,
    ) -> Result<Self, Error> {
        let field = "redis.sentinels";
        let bad = |e: redis::RedisError| {
            Error::config(
                field,
                format!("{e}; expected redis://[:password@]host:26379"),
            )
        };
        let infos = sentinels
            .iter()
            .map(|url| url.as_str().into_connection_info().map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let certs = tls::certificates(config.tls.as_ref(), sentinels.iter().map(String::as_str))?;
        let tls = matches!(infos[0].addr(), ConnectionAddr::TcpTls { .. });
        let mut builder = SentinelClientBuilder::new(
            infos.iter().map(|info| info.addr().clone()),
            master_name,
            SentinelServerType::Master,
        )
        .map_err(bad)?
        .set_client_to_redis_protocol(ProtocolVersion::RESP3)
        .set_client_to_redis_db(config.db.unwrap_or(0));
        // The sentinels' own credentials come with their URLs.
        let auth = infos[0].redis_settings();
        if let Some(username) = auth.username() {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = auth.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some(username) = &config.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &config.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        }
        #[cfg(feature = "tls")]
        if let Some(certs) = certs {
            builder = builder
                .set_client_to_sentinel_certificates(certs.clone())
                .set_client_to_redis_certificates(certs);
        }
        #[cfg(not(feature = "tls"))]
        let _ = certs;
        Ok(Self {
            sentinels: tokio::sync::Mutex::new(builder.build().map_err(bad)?),
            master: RwLock::new(None),
            asking: AtomicBool::new(false),
            last_asked: Mutex::new(None),
            connect_timeout: config.connect_timeout_or_default(),
            response_timeout,
            db: config.db.unwrap_or(0),
            dropped,
        })
    }

    /// The master's connection, asking the sentinels first if no master
    /// is known yet.
    pub(super) async fn master(&self) -> RedisResult<ConnectionManager> {
        match self.known() {
            Some(connection) => Ok(connection),
            // Boxed: asking the sentinels is rare, and its future would
            // otherwise size every call's.
            None => Box::pin(self.ask(false)).await,
        }
    }

    fn known(&self) -> Option<ConnectionManager> {
        let master = self.master.read().unwrap();
        master.as_ref().map(|m| m.connection.clone())
    }

    /// The master's database.
    pub(super) fn db(&self) -> i64 {
        self.db
    }

    /// Asks the sentinels again in the background, unless a question is
    /// under way or was asked less than [`MIN_INTERVAL`] ago.
    pub(super) fn suspect(self: &Arc<Self>) {
        // A call dropped where no runtime is left (at shutdown) asks nothing.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut last = self.last_asked.lock().unwrap();
            if last.is_some_and(|at| at.elapsed() < MIN_INTERVAL) || self.asking.swap(true, Relaxed)
            {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = self.clone();
        runtime.spawn(async move {
            let _ = this.ask(true).await;
            this.asking.store(false, Relaxed);
        });
    }

    /// The master's connection: the one known unless `again`, else the
    /// sentinels' current answer, connected anew only if it moved.
    async fn ask(&self, again: bool) -> RedisResult<ConnectionManager> {
        let mut sentinels = self.sentinels.lock().await;
        if let (false, Some(known)) = (again, self.known()) {
            return Ok(known);
        }
        let client = sentinels.async_get_client().await?;
        let address = client.get_connection_info().addr().to_string();
        if let Some(master) = &*self.master.read().unwrap()
            && master.address == address
        {
            return Ok(master.connection.clone());
        }
        let connection = server::manager(
            client,
            self.connect_timeout,
            self.response_timeout,
            &self.dropped,
        )?;
        *self.master.write().unwrap() = Some(Master {
            address,
            connection: connection.clone(),
        });
        Ok(connection)
    }
}
