//! The TLS files of a [`RedisConfig`](super::RedisConfig), read once at
//! startup so that a missing or malformed file fails there, by name.

use super::config::TlsFiles;
use crate::Error;

#[cfg(feature = "tls")]
pub(super) use redis::TlsCertificates;

/// Without the `tls` feature there is nothing to read, only a mistake to
/// report.
#[cfg(not(feature = "tls"))]
pub(super) struct TlsCertificates;

/// The certificates to connect with, `None` for the system's roots and no
/// client certificate; checks that `url`s that need TLS can have it.
pub(super) fn certificates<'a>(
    files: Option<&TlsFiles>,
    mut urls: impl Iterator<Item = &'a str>,
) -> Result<Option<TlsCertificates>, Error> {
    let any_tls = urls.any(|url| url.starts_with("rediss://"));
    if !cfg!(feature = "tls") && (any_tls || files.is_some()) {
        return Err(Error::config(
            if files.is_some() {
                "redis.tls"
            } else {
                "redis"
            },
            "TLS needs the crate's `tls` feature: axum-redis-ratelimit = { features = [\"tls\"] }",
        ));
    }
    let Some(files) = files else {
        return Ok(None);
    };
    if !any_tls {
        return Err(Error::config(
            "redis.tls",
            "is set but no URL is rediss://; use rediss:// to connect with TLS",
        ));
    }
    read(files).map(Some)
}

#[cfg(feature = "tls")]
fn read(files: &TlsFiles) -> Result<TlsCertificates, Error> {
    use redis::ClientTlsConfig;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

    install_crypto_provider();
    let file = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                format!("redis.tls.{field}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let certs = |field: &str, path: &std::path::Path| {
        let pem = file(field, path)?;
        let found = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
        match found {
            Ok(certs) if !certs.is_empty() => Ok(pem),
            _ => Err(Error::config(
                format!("redis.tls.{field}"),
                format!("{} holds no PEM certificate", path.display()),
            )),
        }
    };
    let root_cert = files.ca.as_deref().map(|ca| certs("ca", ca)).transpose()?;
    let client_tls = match (&files.cert, &files.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let client_cert = certs("cert", cert)?;
            let client_key = file("key", key)?;
            if PrivateKeyDer::from_pem_slice(&client_key).is_err() {
                return Err(Error::config(
                    "redis.tls.key",
                    format!("{} holds no PEM private key", key.display()),
                ));
            }
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        (Some(_), None) => return Err(Error::config("redis.tls.key", "is required with cert")),
        (None, Some(_)) => return Err(Error::config("redis.tls.cert", "is required with key")),
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

#[cfg(not(feature = "tls"))]
fn read(_: &TlsFiles) -> Result<TlsCertificates, Error> {
    Ok(TlsCertificates)
}

/// rustls needs a process-wide crypto provider. It picks one by itself only
/// when exactly one provider feature is on in the whole build, so an
/// application that also enables `aws-lc-rs` would have none: ring is
/// installed unless the application installed one, whose choice stands.
#[cfg(feature = "tls")]
pub(super) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have won the race; either provider serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
