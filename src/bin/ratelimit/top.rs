//! `top`: the clients of a policy nearest their limits.
//!
//! A bounded `SCAN MATCH <prefix><policy>:{*` finds the policy's counters;
//! each client (its key up to the hash tag's closing brace) is then peeked
//! once, a few at a time, and the clients are ranked by the share used of
//! their most-used limit. Clients are shown as they are stored: a secret
//! key's value stays hashed.

use std::{cmp::Ordering, fmt::Write as _};

use axum_redis_ratelimit::{LimitState, Policy, RedisStore, store::KeyScan};
use serde_json::json;
use tokio::task::JoinSet;

use crate::{Failure, client, output};

/// Peeks in flight at once: pipelined on the store's one connection.
const CONCURRENT_PEEKS: usize = 32;

/// A client and its limits.
struct Row {
    client: String,
    states: Vec<LimitState>,
}

impl Row {
    /// Its most-used limit, by the share of its capacity used.
    fn most_used(&self) -> Option<&LimitState> {
        self.states.iter().max_by(|a, b| {
            a.fraction_used()
                .partial_cmp(&b.fraction_used())
                .unwrap_or(Ordering::Equal)
        })
    }

    fn fraction(&self) -> f64 {
        self.most_used().map_or(0.0, LimitState::fraction_used)
    }
}

pub async fn run(
    store: &RedisStore,
    policy: &Policy,
    limit: u64,
    scan_max: u64,
    json: bool,
) -> Result<String, Failure> {
    let scan = store.scan(&policy.counter_pattern(), scan_max).await?;
    let mut clients: Vec<&str> = scan
        .keys
        .iter()
        .filter_map(|key| policy.client_of_counter(key))
        .collect();
    clients.sort_unstable();
    clients.dedup();
    let found = clients.len();
    let mut rows = peek_all(store, policy, &clients).await?;
    // Counters that expired since the scan, or were refunded to nothing.
    rows.retain(|row| row.states.iter().any(|s| s.used > 0));
    rows.sort_by(|a, b| {
        b.fraction()
            .partial_cmp(&a.fraction())
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.client.cmp(&b.client))
    });
    let in_use = rows.len();
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(match json {
        true => to_json(policy, &scan, found, in_use, &rows),
        false => to_table(policy, &scan, found, in_use, &rows),
    })
}

/// Every client's limits, [`CONCURRENT_PEEKS`] at a time.
async fn peek_all(
    store: &RedisStore,
    policy: &Policy,
    clients: &[&str],
) -> Result<Vec<Row>, Failure> {
    let mut rows = Vec::with_capacity(clients.len());
    let mut peeks = JoinSet::new();
    let mut pending = clients.iter();
    loop {
        while peeks.len() < CONCURRENT_PEEKS {
            let Some(&client) = pending.next() else {
                break;
            };
            let (store, policy, client) = (store.clone(), policy.clone(), client.to_owned());
            peeks.spawn(async move {
                let states = client::peek(&store, &policy, &client).await;
                states.map(|states| Row { client, states })
            });
        }
        let Some(done) = peeks.join_next().await else {
            return Ok(rows);
        };
        let row = done.map_err(|e| Failure::Redis(format!("a peek failed: {e}")))??;
        rows.push(row);
    }
}

fn to_json(policy: &Policy, scan: &KeyScan, found: usize, in_use: usize, rows: &[Row]) -> String {
    let clients: Vec<_> = rows
        .iter()
        .map(|row| {
            json!({
                "client": output::client_tag(policy, &row.client),
                "redis_key": row.client,
                "fraction_used": row.fraction(),
                "limits": row.states.iter().map(output::limit_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    output::document(&json!({
        "policy": policy.name(),
        "algorithm": policy.settings().algorithm.name(),
        "scan_calls": scan.calls,
        "scanned": scan.scanned,
        "complete": scan.complete,
        "clients_found": found,
        "clients_in_use": in_use,
        "clients": clients,
    }))
}

fn to_table(policy: &Policy, scan: &KeyScan, found: usize, in_use: usize, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy {} ({}): {in_use} clients with counters in use, {found} found; top {}",
        policy.name(),
        policy.settings().algorithm,
        rows.len()
    );
    let calls = match scan.calls {
        1 => "1 SCAN call".to_owned(),
        n => format!("{n} SCAN calls"),
    };
    let _ = match scan.complete {
        true => writeln!(out, "scanned the whole keyspace in {calls}"),
        false => writeln!(
            out,
            "stopped early after {calls} (about {} keys, --scan-max): more clients may exist",
            scan.scanned
        ),
    };
    if rows.is_empty() {
        return out;
    }
    // One column per limit, `used/capacity`, named by its rate.
    let mut columns = vec![
        ("#".to_owned(), true),
        ("CLIENT".to_owned(), false),
        ("USED".to_owned(), true),
    ];
    columns.extend(policy.limits().map(|l| (l.rate().to_string(), true)));
    columns.push(("RESET".to_owned(), true));
    let mut table = output::Table::new(columns);
    for (rank, row) in rows.iter().enumerate() {
        let mut cells = vec![
            (rank + 1).to_string(),
            output::client_tag(policy, &row.client).to_owned(),
            format!("{:.0}%", row.fraction() * 100.0),
        ];
        cells.extend(
            row.states
                .iter()
                .map(|s| format!("{}/{}", s.used, s.capacity)),
        );
        cells.push(output::duration(
            row.most_used().map(|s| s.reset_after).unwrap_or_default(),
        ));
        table.row(cells);
    }
    out.push('\n');
    out.push_str(&table.render());
    out
}
