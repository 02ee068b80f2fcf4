//! What the commands print: aligned tables for people, JSON for scripts.

use std::{fmt::Write as _, time::Duration};

use axum_redis_ratelimit::{LimitState, Policy};
use serde_json::{Value, json};

/// Columns aligned by their widest cell: text to the left, numbers to the
/// right; two spaces between columns.
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns, each `(name, right-aligned)`.
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = (S, bool)>) -> Self {
        let (header, right) = columns
            .into_iter()
            .map(|(name, right)| (name.into(), right))
            .unzip();
        Self {
            header,
            right,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table, one line per row after the header.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = std::iter::once(&self.header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                if c > 0 {
                    text.push_str("  ");
                }
                let pad = widths[c] - cell.chars().count();
                if self.right[c] {
                    text.extend(std::iter::repeat_n(' ', pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A duration as people read it: `0s`, `250ms`, `1.5s`, `42s`, `3m20s`,
/// `2h05m`; rounded up to the millisecond, so never shorter than it is.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 if d.is_zero() => "0s".to_owned(),
        0 => format!("{}ms", millis(d)),
        1..10 => {
            let text = format!("{:.2}", d.as_secs_f64());
            format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
        }
        10..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Whole milliseconds, rounded up: a script that waits this long is never
/// early.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// One limit's state as JSON.
pub fn limit_json(state: &LimitState) -> Value {
    let rate = state.limit.rate();
    json!({
        "rate": rate.to_string(),
        "limit": rate.limit(),
        "window_secs": rate.window().as_secs(),
        "burst": state.limit.burst(),
        "capacity": state.capacity,
        "used": state.used,
        "remaining": state.remaining,
        "reset_after_ms": millis(state.reset_after),
    })
}

/// The part of a client key people need: the hash tag's content,
/// `x-agent-token:#88281f…` of `rl:telemetry:{x-agent-token:#88281f…}`.
pub fn client_tag<'a>(policy: &Policy, client: &'a str) -> &'a str {
    let pattern = policy.counter_pattern();
    let head = pattern.trim_end_matches('*');
    client
        .strip_prefix(head)
        .and_then(|tag| tag.strip_suffix('}'))
        .unwrap_or(client)
}

/// `inspect`'s report: the client, then a row per limit.
pub fn client(policy: &Policy, client: &str, states: &[LimitState], json: bool) -> String {
    let settings = policy.settings();
    if json {
        return document(&json!({
            "policy": policy.name(),
            "algorithm": settings.algorithm.name(),
            "client": client_tag(policy, client),
            "redis_key": client,
            "limited": states.iter().any(|s| s.remaining == 0),
            "limits": states.iter().map(limit_json).collect::<Vec<_>>(),
        }));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy {} ({}), client {}",
        policy.name(),
        settings.algorithm,
        client_tag(policy, client)
    );
    let _ = writeln!(out, "redis key {client}");
    let mut table = Table::new([
        ("LIMIT", false),
        ("USED", true),
        ("REMAINING", true),
        ("CAPACITY", true),
        ("RESET", true),
    ]);
    for state in states {
        table.row(vec![
            state.limit.rate().to_string(),
            state.used.to_string(),
            state.remaining.to_string(),
            state.capacity.to_string(),
            duration(state.reset_after),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    if states.iter().any(|s| s.remaining == 0) {
        out.push_str("\nlimited: its next request is denied until the limit at 0 resets\n");
    }
    out
}

/// `value` as one JSON document and a newline.
pub fn document(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        for (ms, text) in [
            (0, "0s"),
            (1, "1ms"),
            (250, "250ms"),
            (1_500, "1.5s"),
            (1_000, "1s"),
            (9_990, "9.99s"),
            (42_000, "42s"),
            (200_000, "3m20s"),
            (7_500_000, "2h05m"),
        ] {
            assert_eq!(duration(Duration::from_millis(ms)), text, "{ms}");
        }
        assert_eq!(millis(Duration::from_micros(1_001)), 2);
    }

    #[test]
    fn columns_align() {
        let mut table = Table::new([("NAME", false), ("N", true)]);
        table.row(vec!["a".into(), "100".into()]);
        table.row(vec!["long name".into(), "2".into()]);
        assert_eq!(
            table.render(),
            "NAME         N\na          100\nlong name    2\n"
        );
    }
}
