//! [`RedisConfig`]: where the Redis store connects — one server, a Redis
//! Cluster, or the master a set of Sentinels names — and with which TLS
//! files.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where [`RedisStore`](super::RedisStore) connects, as a configuration file
/// or the builder methods write it. Exactly one topology: `url`,
/// `cluster_nodes`, or `sentinels` with `master_name`.
///
/// ```
/// use axum_redis_ratelimit::store::{RedisConfig, TlsFiles};
///
/// let one = RedisConfig::from("redis://127.0.0.1:6379/1");
/// let cluster = RedisConfig::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]);
/// let sentinel = RedisConfig::sentinel(["redis://10.0.0.1:26379"], "mymaster")
///     .db(1)
///     .tls(TlsFiles::ca("/etc/redis/ca.pem"));
/// # let file: RedisConfig = toml::from_str(r#"
/// # cluster_nodes = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]
/// # "#).unwrap();
/// # assert_eq!(file, cluster);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// One server: `redis://[user:password@]host:port/db`, or `rediss://`
    /// for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Redis Cluster: some of its nodes' URLs (the rest are discovered);
    /// database 0 only, which is all a cluster has.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_nodes: Vec<String>,
    /// Sentinel: the sentinels' URLs, each with the sentinels' own password
    /// if they have one. `rediss://` sentinels mean a TLS master too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sentinels: Vec<String>,
    /// Sentinel: the name the sentinels monitor the master by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// Sentinel: the master's ACL user (a URL carries its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Sentinel: the master's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Sentinel: the master's database (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<i64>,
    /// A certificate authority and a client certificate for `rediss://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// The longest one connection attempt may take, in milliseconds
    /// (default 500). A decision never waits longer than its policy's
    /// timeout, whatever this says.
    pub connect_timeout_ms: Option<u64>,
}

/// PEM files for TLS: the certificate authority that signed the servers'
/// certificates (default: the system's roots) and, for mutual TLS, the
/// client's certificate and key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsFiles {
    /// The CA certificate(s), PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The client certificate, PEM; needs `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key, PEM; needs `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Trust the servers' certificates signed by this CA.
    pub fn ca(path: impl Into<PathBuf>) -> Self {
        Self {
            ca: Some(path.into()),
            ..Self::default()
        }
    }

    /// Also present this client certificate (mutual TLS).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }
}

/// Default bound on one connection attempt.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The topology a checked configuration names.
#[cfg_attr(
    not(all(feature = "cluster", feature = "sentinel")),
    allow(dead_code, reason = "read only with the topology's feature")
)]
pub(super) enum Topology<'a> {
    Standalone(&'a str),
    Cluster(&'a [String]),
    Sentinel {
        sentinels: &'a [String],
        master_name: &'a str,
    },
}

impl RedisConfig {
    /// Redis Cluster, reached through any of these nodes.
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self {
            cluster_nodes: nodes.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The master the `sentinels` know as `master_name`, followed through
    /// failovers.
    pub fn sentinel<S: Into<String>>(
        sentinels: impl IntoIterator<Item = S>,
        master_name: impl Into<String>,
    ) -> Self {
        Self {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: Some(master_name.into()),
            ..Self::default()
        }
    }

    /// With Sentinel: the master's database.
    pub fn db(mut self, db: i64) -> Self {
        self.db = Some(db);
        self
    }

    /// With Sentinel: the master's ACL user and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// TLS files for `rediss://` servers.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// The longest one connection attempt may take (default 500 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    pub(super) fn connect_timeout_or_default(&self) -> Duration {
        self.connect_timeout_ms
            .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_millis)
    }

    /// The setting of a topology reached without TLS, if it is.
    pub(super) fn plain_field(&self) -> Option<&'static str> {
        let urls = self
            .url
            .iter()
            .chain(&self.cluster_nodes)
            .chain(&self.sentinels);
        match self.topology() {
            Ok(_) if urls.clone().any(|url| url.starts_with("rediss://")) => None,
            Ok(Topology::Standalone(_)) => Some("redis.url"),
            Ok(Topology::Cluster(_)) => Some("redis.cluster_nodes"),
            Ok(Topology::Sentinel { .. }) => Some("redis.sentinels"),
            Err(_) => None,
        }
    }

    /// The one topology named, or an error naming the setting at fault.
    pub(super) fn topology(&self) -> Result<Topology<'_>, Error> {
        let named = [
            ("redis.url", self.url.is_some()),
            ("redis.cluster_nodes", !self.cluster_nodes.is_empty()),
            ("redis.sentinels", !self.sentinels.is_empty()),
        ];
        let mut set = named.iter().filter(|(_, on)| *on).map(|(name, _)| *name);
        let first = set.next().ok_or_else(|| {
            Error::config(
                "redis",
                "names no server: set url, cluster_nodes, or sentinels and master_name",
            )
        })?;
        if let Some(second) = set.next() {
            return Err(Error::config(
                second,
                format!("is set and so is {first}; choose one topology"),
            ));
        }
        let sentinel_only = [
            ("redis.master_name", self.master_name.is_some()),
            ("redis.username", self.username.is_some()),
            ("redis.password", self.password.is_some()),
            ("redis.db", self.db.is_some()),
        ];
        if first != "redis.sentinels"
            && let Some((field, _)) = sentinel_only.iter().find(|(_, on)| *on)
        {
            return Err(Error::config(
                *field,
                format!("applies only to Sentinel; with {first} the URL carries it"),
            ));
        }
        if self.connect_timeout_ms == Some(0) {
            return Err(Error::config(
                "redis.connect_timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(match first {
            "redis.url" => Topology::Standalone(self.url.as_deref().unwrap_or_default()),
            "redis.cluster_nodes" => Topology::Cluster(&self.cluster_nodes),
            _ => Topology::Sentinel {
                sentinels: &self.sentinels,
                master_name: self.master_name.as_deref().ok_or_else(|| {
                    Error::config("redis.master_name", "is required with sentinels")
                })?,
            },
        })
    }
}

impl From<&str> for RedisConfig {
    /// One server at this URL.
    fn from(url: &str) -> Self {
        Self::from(url.to_owned())
    }
}

impl From<&String> for RedisConfig {
    /// One server at this URL.
    fn from(url: &String) -> Self {
        Self::from(url.clone())
    }
}

impl From<String> for RedisConfig {
    /// One server at this URL.
    fn from(url: String) -> Self {
        Self {
            url: Some(url),
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    /// URLs and the password may hold secrets: only the shape is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_ref().map(|_| "…"))
            .field("cluster_nodes", &self.cluster_nodes.len())
            .field("sentinels", &self.sentinels.len())
            .field("master_name", &self.master_name)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(config: RedisConfig) -> String {
        config.topology().err().unwrap().config_path().unwrap()
    }

    #[test]
    fn one_topology_exactly() {
        assert!(matches!(
            RedisConfig::from("redis://h").topology(),
            Ok(Topology::Standalone("redis://h"))
        ));
        assert!(matches!(
            RedisConfig::cluster(["redis://a"]).topology(),
            Ok(Topology::Cluster(_))
        ));
        assert!(matches!(
            RedisConfig::sentinel(["redis://s"], "m").topology(),
            Ok(Topology::Sentinel {
                master_name: "m",
                ..
            })
        ));
        assert_eq!(field(RedisConfig::default()), "redis");
        let both = RedisConfig {
            url: Some("redis://h".into()),
            ..RedisConfig::cluster(["redis://a"])
        };
        assert_eq!(field(both), "redis.cluster_nodes");
        let no_master = RedisConfig {
            master_name: None,
            ..RedisConfig::sentinel(["redis://s"], "m")
        };
        assert_eq!(field(no_master), "redis.master_name");
        assert_eq!(field(RedisConfig::from("redis://h").db(1)), "redis.db");
        let zero = RedisConfig::from("redis://h").connect_timeout(Duration::ZERO);
        assert_eq!(field(zero), "redis.connect_timeout_ms");
    }

    #[test]
    fn builders_set_what_they_name() {
        let sentinel = RedisConfig::sentinel(["redis://s"], "m")
            .db(2)
            .credentials("limiter", "pw")
            .connect_timeout(Duration::from_millis(250));
        assert_eq!(sentinel.username.as_deref(), Some("limiter"));
        assert_eq!(sentinel.password.as_deref(), Some("pw"));
        assert_eq!(sentinel.db, Some(2));
        assert_eq!(
            sentinel.connect_timeout_or_default(),
            Duration::from_millis(250)
        );
        assert_eq!(
            RedisConfig::from("redis://h").connect_timeout_or_default(),
            DEFAULT_CONNECT_TIMEOUT
        );
        let files = TlsFiles::ca("ca.pem").client_cert("c.pem", "k.pem");
        assert_eq!(files.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(files.cert.as_deref(), Some(std::path::Path::new("c.pem")));
        assert_eq!(files.key.as_deref(), Some(std::path::Path::new("k.pem")));
    }

    #[test]
    fn only_a_plaintext_topology_is_told_to_use_tls() {
        assert_eq!(
            RedisConfig::from("redis://h").plain_field(),
            Some("redis.url")
        );
        assert_eq!(RedisConfig::from("rediss://h").plain_field(), None);
        let cluster = RedisConfig::cluster(["redis://a"]);
        assert_eq!(cluster.plain_field(), Some("redis.cluster_nodes"));
        assert_eq!(RedisConfig::cluster(["rediss://a"]).plain_field(), None);
        let sentinel = RedisConfig::sentinel(["redis://s"], "m");
        assert_eq!(sentinel.plain_field(), Some("redis.sentinels"));
        assert_eq!(RedisConfig::default().plain_field(), None);
    }

    #[test]
    fn debug_shows_no_secret() {
        let config =
            RedisConfig::from(&"redis://user:hunter2@h/1".to_owned()).credentials("u", "hunter3");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(
            shown.starts_with("RedisConfig { url: Some(\"…\")"),
            "{shown}"
        );
    }
}
