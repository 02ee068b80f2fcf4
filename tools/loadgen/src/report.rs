//! What the requests got: counts, latencies, and the summary printed on
//! stdout and written as JSON.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::options::Options;

/// What became of one request.
pub enum Outcome {
    /// A complete response, `latency` after the request was handed over.
    Answered { status: u16, latency: Duration },
    /// No answer, and a short name for why (`connect`, `timeout`, …).
    Failed(&'static str),
}

/// Counts over a set of requests.
#[derive(Clone)]
pub struct Stats {
    sent: u64,
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    /// Answers (any status) only, in microseconds: a request without one
    /// has no latency.
    latency: Histogram<u64>,
    slow: u64,
    slow_by_status: BTreeMap<u16, u64>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            sent: 0,
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            // Three significant digits; it grows to whatever it records.
            latency: Histogram::new(3).expect("3 significant digits are supported"),
            slow: 0,
            slow_by_status: BTreeMap::new(),
        }
    }

    /// Counts `outcome`, as slow if its answer took more than `slow`.
    pub fn record(&mut self, outcome: &Outcome, slow: Duration) {
        self.sent += 1;
        match *outcome {
            Outcome::Answered { status, latency } => {
                *self.status.entry(status).or_default() += 1;
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(us);
                if latency > slow {
                    self.slow += 1;
                    *self.slow_by_status.entry(status).or_default() += 1;
                }
            }
            Outcome::Failed(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn answered(&self) -> u64 {
        self.status.values().sum()
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at quantile `q`, in milliseconds (0 without answers).
    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// One progress line, for the requests since the last one.
    pub fn progress_line(&self, elapsed: Duration) -> String {
        format!(
            "loadgen: t={:>4.0}s sent={:<6} {} errors={} slow={} p99={:.1}ms max={:.1}ms",
            elapsed.as_secs_f64(),
            self.sent,
            statuses(&self.status),
            if self.errors.is_empty() {
                "0".to_owned()
            } else {
                format!("{:?}", self.errors)
            },
            self.slow,
            self.ms(0.99),
            self.max_ms(),
        )
    }

    /// The summary as JSON, for scripts.
    pub fn json(&self, options: &Options, elapsed: Duration) -> Value {
        let map = |m: &BTreeMap<u16, u64>| -> serde_json::Map<String, Value> {
            m.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
        };
        json!({
            "target": options.url.to_string(),
            "concurrency": options.concurrency,
            "duration_s": options.duration.as_secs_f64(),
            "rate_limit_rps": options.rate,
            "elapsed_s": elapsed.as_secs_f64(),
            "tokens": options.tokens,
            "flood_fraction": options.flood,
            "event_count": options.event_count.map(|(lo, hi)| json!([lo, hi])),
            "timeout_ms": options.timeout.as_millis() as u64,
            "slow_ms": options.slow.as_millis() as u64,
            "sent": self.sent,
            "answered": self.answered(),
            "status": map(&self.status),
            "no_answer": self.failed(),
            "errors": self.errors,
            "slow": self.slow,
            "slow_by_status": map(&self.slow_by_status),
            "throughput_rps": self.sent as f64 / elapsed.as_secs_f64().max(1e-9),
            "latency_ms": {
                "p50": self.ms(0.50),
                "p90": self.ms(0.90),
                "p99": self.ms(0.99),
                "p999": self.ms(0.999),
                "max": self.max_ms(),
            },
        })
    }

    /// The summary for people, on stdout.
    pub fn print(&self, options: &Options, elapsed: Duration) {
        let in_parens = |text: String| {
            if text.is_empty() {
                text
            } else {
                format!(" ({text})")
            }
        };
        let errors: Vec<String> = (self.errors.iter())
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!("loadgen summary");
        println!("  target:            POST {}", options.url);
        println!(
            "  elapsed:           {:.1} s ({:.0} requests/s, {} in flight)",
            elapsed.as_secs_f64(),
            self.sent as f64 / elapsed.as_secs_f64().max(1e-9),
            options.concurrency
        );
        println!("  requests sent:     {}", self.sent);
        println!(
            "  answered:          {}{}",
            self.answered(),
            in_parens(joined(&self.status))
        );
        println!(
            "  no answer:         {}{}",
            self.failed(),
            in_parens(errors.join(" "))
        );
        println!(
            "  latency:           p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.ms(0.50),
            self.ms(0.90),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms(),
        );
        println!(
            "  answered after {} ms: {}{}",
            options.slow.as_millis(),
            self.slow,
            in_parens(joined(&self.slow_by_status))
        );
    }
}

/// `202=10 429=3`, or nothing.
fn joined(status: &BTreeMap<u16, u64>) -> String {
    let parts: Vec<String> = status.iter().map(|(s, n)| format!("{s}={n}")).collect();
    parts.join(" ")
}

/// `202=10 429=3`, or `(no answers)`.
fn statuses(status: &BTreeMap<u16, u64>) -> String {
    if status.is_empty() {
        return "(no answers)".to_owned();
    }
    joined(status)
}
