//! The policy file, read and checked as the application reads it.

use std::path::Path;

use axum_redis_ratelimit::{
    Key, Policy,
    config::{KeyConfig, KeySource, PolicyFile},
};

use crate::Failure;

/// The file at `path`, parsed; serde's and toml's message names the field
/// and shows the line.
pub fn read(path: &Path) -> Result<PolicyFile, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read the policy file {path:?}: {e}")))?;
    toml::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{path:?} is not a valid policy file: {e}")))
}

/// The policy called `name`, checked as the layer checks it at startup.
pub fn find(file: &PolicyFile, name: &str) -> Result<Policy, Failure> {
    let Some(config) = file.get(name) else {
        let names: Vec<&str> = file.policies.iter().map(|p| p.name.as_str()).collect();
        return Err(Failure::Usage(format!(
            "no policy {name:?} in the policy file; it defines {}",
            match names.is_empty() {
                true => "none".to_owned(),
                false => names.join(", "),
            }
        )));
    };
    if let Some(twice) = defined_twice(file) {
        return Err(Failure::Usage(twice));
    }
    let policy = Policy::from(config.clone());
    policy.validate()?;
    Ok(policy)
}

/// A name the file gives two policies: the application cannot tell which
/// one a route means, so neither can this tool.
pub fn defined_twice(file: &PolicyFile) -> Option<String> {
    let names = file.policies.iter().map(|p| p.name.as_str());
    names.enumerate().find_map(|(i, name)| {
        file.policies[..i]
            .iter()
            .any(|p| p.name == name)
            .then(|| format!("invalid `policies.{name}.name`: policy {name:?} is defined twice"))
    })
}

/// A key as people read it, each key of the chain by the label `--key`
/// takes: `x-agent-token (header, secret) or ip (IPv6 /64)`.
pub fn describe_key(key: Option<&KeyConfig>) -> String {
    let mut parts = Vec::new();
    let mut next = key;
    while let Some(key) = next {
        let (label, mut notes) = match &key.source {
            // The label the layer gives a header: its name in lower case.
            KeySource::Header { name } => (
                Key::header(name).label().to_owned(),
                vec!["header".to_owned()],
            ),
            KeySource::ClientIp {
                trusted_proxies,
                ipv6_prefix,
                ..
            } => {
                let mut notes = Vec::new();
                if let Some(prefix) = ipv6_prefix {
                    notes.push(format!("IPv6 /{prefix}"));
                }
                if !trusted_proxies.is_empty() {
                    notes.push(format!("behind {}", trusted_proxies.join(" ")));
                }
                (Key::client_ip().label().to_owned(), notes)
            }
            KeySource::User => (Key::user().label().to_owned(), Vec::new()),
            KeySource::Global => (Key::global().label().to_owned(), Vec::new()),
            other => (format!("{other:?}"), Vec::new()),
        };
        if key.secret {
            notes.push("secret".to_owned());
        }
        parts.push(match notes.is_empty() {
            true => label,
            false => format!("{label} ({})", notes.join(", ")),
        });
        next = key.or.as_deref();
    }
    match parts.is_empty() {
        true => "none".to_owned(),
        false => parts.join(" or "),
    }
}
