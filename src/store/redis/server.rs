//! One server's connection, as every topology makes it: a client that
//! speaks RESP3, and a manager that reports its own drops.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use redis::{
    Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::tls::TlsCertificates;
use crate::Error;

/// What a connection reports: the connection dropped since the last
/// decision that reached Redis (set by the manager's push of a
/// disconnection, over RESP3, or by a failed call).
pub(super) type Dropped = Arc<AtomicBool>;

/// A client for one server at `url`, with the TLS files if any, speaking
/// RESP3 whatever the URL's `protocol`: over RESP3 a connection reports its
/// own drop as it happens, so the manager reconnects at once and the store
/// knows to check the connection before the next decision.
pub(super) fn client(
    url: impl IntoConnectionInfo,
    field: &str,
    certs: Option<TlsCertificates>,
) -> Result<Client, Error> {
    let bad_url =
        |e: redis::RedisError| Error::config(field, format!("{e}; expected redis://host:6379/db"));
    let info = url.into_connection_info().map_err(bad_url)?;
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(resp3);
    match certs {
        #[cfg(feature = "tls")]
        Some(certs) => Client::build_with_tls(info, certs).map_err(bad_url),
        _ => Client::open(info).map_err(bad_url),
    }
}

/// A lazily connecting manager for `client` that flags `dropped`, whose
/// commands wait `response` at most for their reply (`None`: as long as the
/// caller waits).
///
/// One connection attempt per reconnect, without backoff, so that no
/// decision waits on a backoff's sleep while Redis is already back; while
/// it is down, the policy's breaker paces the attempts.
pub(super) fn manager(
    client: Client,
    timeout: Duration,
    response: Option<Duration>,
    dropped: &Dropped,
) -> RedisResult<ConnectionManager> {
    let on_drop = dropped.clone();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(response)
        .set_number_of_retries(0)
        .set_push_sender(move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                on_drop.store(true, Relaxed);
            }
            Ok::<_, ()>(())
        });
    ConnectionManager::new_lazy_with_config(client, config)
}
