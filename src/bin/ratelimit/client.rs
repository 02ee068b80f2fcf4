//! `inspect` and `reset`: one client of one policy, named by the raw value
//! the layer reads from its requests.

use std::fmt::Write as _;

use axum_redis_ratelimit::{
    Clock, Error, Limit, LimitState, Policy, RedisStore, config::PolicyFile,
};
use serde_json::json;

use crate::{ClientArgs, Failure, output, policies};

/// A client of a policy: its key in Redis, encoded by the crate as the
/// layer encodes it.
pub struct Target {
    pub policy: Policy,
    pub client: String,
}

impl Target {
    pub fn new(file: &PolicyFile, args: &ClientArgs) -> Result<Self, Failure> {
        let policy = policies::find(file, &args.policy)?;
        // The bytes as given: a token or an address, or bytes that are not
        // UTF-8, hashed as the layer hashes a header's raw bytes.
        let value = args.value.as_deref().map(|v| v.as_encoded_bytes());
        let client = policy
            .client_key(args.key.as_deref(), value.unwrap_or_default())
            .map_err(|error| match error.config_path().as_deref() {
                Some("value") if value.is_none() => {
                    Failure::Usage("no VALUE: give the client's key value".into())
                }
                _ => Failure::from(error),
            })?;
        Ok(Self { policy, client })
    }
}

/// Every limit of `policy` for `client`, read by a peek that counts
/// nothing; on the application's clock for a policy on `Clock::App`.
pub async fn peek(
    store: &RedisStore,
    policy: &Policy,
    client: &str,
) -> Result<Vec<LimitState>, Error> {
    let limits: Vec<Limit> = policy.limits().collect();
    let settings = policy.settings();
    let now_us = match settings.clock {
        Clock::App => Some(unix_now_us()),
        _ => None,
    };
    store
        .peek(client, &limits, settings.algorithm, now_us)
        .await
}

fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `inspect`: the client's limits.
pub async fn inspect(store: &RedisStore, target: &Target, json: bool) -> Result<String, Failure> {
    let states = peek(store, &target.policy, &target.client).await?;
    Ok(output::client(
        &target.policy,
        &target.client,
        &states,
        json,
    ))
}

/// `reset`: deletes the client's counters (`--dry-run`: shows them).
pub async fn reset(
    store: &RedisStore,
    target: &Target,
    dry_run: bool,
    json: bool,
) -> Result<String, Failure> {
    let (policy, client) = (&target.policy, target.client.as_str());
    let tag = output::client_tag(policy, client);
    if dry_run {
        let states = peek(store, policy, client).await?;
        if json {
            return Ok(output::document(&json!({
                "policy": policy.name(),
                "client": tag,
                "redis_key": client,
                "dry_run": true,
                "deleted": 0,
                "limits": states.iter().map(output::limit_json).collect::<Vec<_>>(),
            })));
        }
        let mut out = output::client(policy, client, &states, false);
        out.push_str("\ndry run: nothing deleted; without --dry-run these counters start afresh\n");
        return Ok(out);
    }
    let limits: Vec<Limit> = policy.limits().collect();
    let deleted = store
        .reset(client, &limits, policy.settings().algorithm)
        .await?;
    if json {
        return Ok(output::document(&json!({
            "policy": policy.name(),
            "client": tag,
            "redis_key": client,
            "dry_run": false,
            "deleted": deleted,
        })));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reset policy {} client {tag}: {deleted} of {} counters existed and were deleted",
        policy.name(),
        limits.len()
    );
    Ok(out)
}
