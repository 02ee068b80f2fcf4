//! `check`: the policy file checked as the application checks it at
//! startup (every setting, by the crate's own [`Policy::validate`]), and
//! the limits it defines.

use std::{fmt::Write as _, path::Path};

use axum_redis_ratelimit::{
    Algorithm, Policy,
    config::{CostConfig, LeaseConfig, PolicyConfig, PolicyFile},
};
use serde_json::{Value, json};

use crate::{Failure, output, policies};

pub fn run(path: &Path, file: &PolicyFile, json: bool) -> Result<String, Failure> {
    let mut errors: Vec<(Option<String>, String)> = Vec::new();
    for config in &file.policies {
        if let Err(error) = Policy::from(config.clone()).validate() {
            errors.push((error.config_path(), error.to_string()));
        }
    }
    if let Some(twice) = policies::defined_twice(file) {
        errors.push((None, twice));
    }
    if file.policies.is_empty() {
        errors.push((Some("policies".into()), "the file defines no policy".into()));
    }
    let shown = path.display();
    if !errors.is_empty() {
        let messages: Vec<String> = errors
            .iter()
            .map(|(_, m)| format!("{shown}: {m}"))
            .collect();
        let stdout = match json {
            true => output::document(&json!({
                "file": shown.to_string(),
                "valid": false,
                "errors": errors
                    .iter()
                    .map(|(field, message)| json!({ "field": field, "message": message }))
                    .collect::<Vec<_>>(),
            })),
            false => String::new(),
        };
        return Err(Failure::Rejected {
            stdout,
            message: messages.join("\n"),
        });
    }
    if json {
        return Ok(output::document(&json!({
            "file": shown.to_string(),
            "valid": true,
            "policies": file.policies.iter().map(policy_json).collect::<Vec<_>>(),
        })));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{shown}: {} policies, all valid\n",
        file.policies.len()
    );
    let mut table = output::Table::new([
        ("POLICY", false),
        ("ALGORITHM", false),
        ("LIMITS", false),
        ("KEY", false),
        ("COST", false),
        ("ON STORE ERROR", false),
        ("MODE", false),
        ("LEASE", false),
    ]);
    for config in &file.policies {
        let policy = Policy::from(config.clone());
        let mut name = config.name.clone();
        if !config.enabled {
            name.push_str(" (disabled)");
        }
        table.row(vec![
            name,
            config.algorithm.to_string(),
            limits(&policy, config).join(", "),
            policies::describe_key(config.key.as_ref()),
            cost(config.cost.as_ref()),
            json_name(&config.on_store_error),
            json_name(&config.mode),
            lease(config.lease.as_ref()),
        ]);
    }
    out.push_str(&table.render());
    Ok(out)
}

/// Each limit as `10/s` or, for GCRA, `10/s burst 20`.
fn limits(policy: &Policy, config: &PolicyConfig) -> Vec<String> {
    policy
        .limits()
        .map(|limit| match config.algorithm {
            Algorithm::Gcra => format!("{} burst {}", limit.rate(), limit.burst()),
            _ => limit.rate().to_string(),
        })
        .collect()
}

/// `off`, or the largest slice and the app servers it is shared by, as
/// `64 / 4 servers, back after 250ms`.
fn lease(lease: Option<&LeaseConfig>) -> String {
    match lease {
        None => "off".to_owned(),
        Some(l) => format!(
            "{} / {} servers, back after {:?}",
            l.max_slice, l.instances, l.idle_return
        ),
    }
}

fn cost(cost: Option<&CostConfig>) -> String {
    match cost {
        None => "1".to_owned(),
        Some(CostConfig::Fixed(n)) => n.to_string(),
        Some(CostConfig::Header { header }) => format!("header {header}"),
        Some(other) => format!("{other:?}"),
    }
}

/// A setting as the file writes it: `"fallback"`, `"block"`.
fn json_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

fn policy_json(config: &PolicyConfig) -> Value {
    let policy = Policy::from(config.clone());
    let limits: Vec<Value> = policy
        .limits()
        .map(|limit| {
            let rate = limit.rate();
            json!({
                "rate": rate.to_string(),
                "limit": rate.limit(),
                "window_secs": rate.window().as_secs(),
                "burst": limit.burst(),
                "capacity": limit.capacity(config.algorithm),
            })
        })
        .collect();
    json!({
        "name": config.name,
        "enabled": config.enabled,
        "algorithm": config.algorithm.name(),
        "limits": limits,
        "key": policies::describe_key(config.key.as_ref()),
        "prefix": config.prefix,
        "counter_pattern": policy.counter_pattern(),
        "settings": serde_json::to_value(config).unwrap_or(Value::Null),
    })
}
