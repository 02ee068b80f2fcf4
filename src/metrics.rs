//! The layer's figures for the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`, on by default): whatever recorder the application
//! installs (Prometheus, StatsD…) receives them; without one they cost a
//! branch. Labels carry only the policy's name and fixed words, never a
//! client's value, so there are as many series as policies.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ratelimit_decisions_total` | counter | `policy`, `outcome` ([`Outcome::as_str`]) |
//! | `ratelimit_store_duration_seconds` | histogram | `policy` |
//! | `ratelimit_store_errors_total` | counter | `policy` |
//! | `ratelimit_breaker_open` | gauge, 1 while open | `policy` |
//! | `ratelimit_breaker_transitions_total` | counter | `policy`, `to` (`open`, `closed`) |
//! | `ratelimit_block_cache_entries` | gauge | `policy` |
//! | `ratelimit_memory_store_counters` | gauge, all memory stores of the process | |
//! | `ratelimit_lease_local_total` | counter: lease mode's requests admitted from a slice, without the store | `policy` |
//! | `ratelimit_lease_calls_total` | counter: lease mode's store calls | `policy`, `call` (`grant`, `return`) |
//! | `ratelimit_lease_units_total` | counter: lease mode's units | `policy`, `kind` (`granted`, `returned`, `dropped`) |
//!
//! The lease series are registered at a policy's first grant, so a policy
//! without leases has none.
//!
//! A layer registers its series at its first request, so install the
//! recorder before serving.

use crate::outcome::Outcome;

/// Names of the metrics, for recorders that take per-metric settings (such
/// as histogram buckets).
pub mod names {
    /// Counter: requests by `policy` and `outcome`.
    pub const DECISIONS: &str = "ratelimit_decisions_total";
    /// Histogram: store calls' time to answer or fail, in seconds.
    pub const STORE_DURATION: &str = "ratelimit_store_duration_seconds";
    /// Counter: store calls that failed or timed out.
    pub const STORE_ERRORS: &str = "ratelimit_store_errors_total";
    /// Gauge: 1 while the policy's circuit breaker is open, else 0.
    pub const BREAKER_OPEN: &str = "ratelimit_breaker_open";
    /// Counter: the breaker opening (`to="open"`) and closing.
    pub const BREAKER_TRANSITIONS: &str = "ratelimit_breaker_transitions_total";
    /// Gauge: keys the policy's block cache holds, as of its last new
    /// denial (expired ones included until evicted).
    pub const BLOCK_CACHE_ENTRIES: &str = "ratelimit_block_cache_entries";
    /// Gauge: counters held by the process's memory stores (main or
    /// fallback).
    pub const MEMORY_STORE_COUNTERS: &str = "ratelimit_memory_store_counters";
    /// Counter: lease mode's requests admitted from a slice held in
    /// process, without the store.
    pub const LEASE_LOCAL: &str = "ratelimit_lease_local_total";
    /// Counter: lease mode's store calls, by `call`: `grant` (a slice
    /// asked for) or `return` (unspent units given back).
    pub const LEASE_CALLS: &str = "ratelimit_lease_calls_total";
    /// Counter: lease mode's units by `kind`: `granted` by the store,
    /// `returned` (given back and credited), `dropped` (unspent and lost:
    /// their window ended first, or the give-back came after it or failed).
    pub const LEASE_UNITS: &str = "ratelimit_lease_units_total";
}

/// Histogram buckets for [`names::STORE_DURATION`] that resolve 100 µs to
/// 100 ms, the range between a healthy LAN Redis and the default timeout.
pub const STORE_DURATION_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[cfg(feature = "metrics")]
pub(crate) use self::on::{Metrics, memory_store_counters};

#[cfg(not(feature = "metrics"))]
pub(crate) use self::off::{Metrics, memory_store_counters};

#[cfg(feature = "metrics")]
mod on {
    use std::{sync::OnceLock, time::Duration};

    use ::metrics::{Counter, Gauge, Histogram, Unit};

    use super::{Outcome, names};

    /// One policy's series, registered with the recorder at first use.
    pub(crate) struct Metrics {
        policy: String,
        handles: OnceLock<Handles>,
        lease: OnceLock<LeaseHandles>,
    }

    /// Lease mode's series, registered at its first use.
    struct LeaseHandles {
        local: Counter,
        grants: Counter,
        returns: Counter,
        granted: Counter,
        returned: Counter,
        dropped: Counter,
    }

    struct Handles {
        decisions: [Counter; Outcome::ALL.len()],
        store_duration: Histogram,
        store_errors: Counter,
        breaker_open: Gauge,
        opened: Counter,
        closed: Counter,
        block_cache_entries: Gauge,
    }

    impl std::fmt::Debug for Metrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Metrics")
                .field("registered", &self.handles.get().is_some())
                .finish()
        }
    }

    impl Metrics {
        pub(crate) fn new(policy: &str) -> Self {
            Self {
                policy: policy.to_owned(),
                handles: OnceLock::new(),
                lease: OnceLock::new(),
            }
        }

        fn lease(&self) -> &LeaseHandles {
            self.lease.get_or_init(|| {
                describe_lease();
                let policy = &self.policy;
                let with = |name: &'static str, label: &'static str, value: &'static str| {
                    ::metrics::counter!(name, "policy" => policy.clone(), label => value)
                };
                LeaseHandles {
                    local: ::metrics::counter!(names::LEASE_LOCAL, "policy" => policy.clone()),
                    grants: with(names::LEASE_CALLS, "call", "grant"),
                    returns: with(names::LEASE_CALLS, "call", "return"),
                    granted: with(names::LEASE_UNITS, "kind", "granted"),
                    returned: with(names::LEASE_UNITS, "kind", "returned"),
                    dropped: with(names::LEASE_UNITS, "kind", "dropped"),
                }
            })
        }

        pub(crate) fn lease_local(&self) {
            self.lease().local.increment(1);
        }

        pub(crate) fn lease_call(&self, give_back: bool) {
            let lease = self.lease();
            match give_back {
                true => lease.returns.increment(1),
                false => lease.grants.increment(1),
            }
        }

        pub(crate) fn lease_units(&self, granted: u64, returned: u64, dropped: u64) {
            let lease = self.lease();
            lease.granted.increment(granted);
            lease.returned.increment(returned);
            lease.dropped.increment(dropped);
        }

        fn handles(&self) -> &Handles {
            self.handles.get_or_init(|| {
                describe();
                let policy = self.policy.clone();
                let with = |name: &'static str, label: &'static str, value: &'static str| {
                    ::metrics::counter!(name, "policy" => policy.clone(), label => value)
                };
                Handles {
                    decisions: Outcome::ALL
                        .map(|outcome| with(names::DECISIONS, "outcome", outcome.as_str())),
                    store_duration: ::metrics::histogram!(names::STORE_DURATION, "policy" => policy.clone()),
                    store_errors: ::metrics::counter!(names::STORE_ERRORS, "policy" => policy.clone()),
                    breaker_open: ::metrics::gauge!(names::BREAKER_OPEN, "policy" => policy.clone()),
                    opened: with(names::BREAKER_TRANSITIONS, "to", "open"),
                    closed: with(names::BREAKER_TRANSITIONS, "to", "closed"),
                    block_cache_entries: ::metrics::gauge!(names::BLOCK_CACHE_ENTRIES, "policy" => policy.clone()),
                }
            })
        }

        pub(crate) fn decision(&self, outcome: Outcome) {
            self.handles().decisions[outcome.index()].increment(1);
        }

        pub(crate) fn store_latency(&self, latency: Duration) {
            self.handles().store_duration.record(latency.as_secs_f64());
        }

        pub(crate) fn store_error(&self) {
            self.handles().store_errors.increment(1);
        }

        pub(crate) fn breaker(&self, open: bool) {
            let handles = self.handles();
            handles.breaker_open.set(if open { 1.0 } else { 0.0 });
            match open {
                true => handles.opened.increment(1),
                false => handles.closed.increment(1),
            }
        }

        pub(crate) fn block_cache_len(&self, entries: usize) {
            self.handles().block_cache_entries.set(entries as f64);
        }
    }

    /// Counters a memory store added (positive) or dropped.
    pub(crate) fn memory_store_counters(change: isize) {
        let gauge = ::metrics::gauge!(names::MEMORY_STORE_COUNTERS);
        match change {
            n if n >= 0 => gauge.increment(n as f64),
            n => gauge.decrement(n.unsigned_abs() as f64),
        }
    }

    fn describe_lease() {
        use ::metrics::describe_counter;
        describe_counter!(
            names::LEASE_LOCAL,
            "Lease mode: requests admitted from a slice held in process"
        );
        describe_counter!(names::LEASE_CALLS, "Lease mode: store calls, by call");
        describe_counter!(names::LEASE_UNITS, "Lease mode: units, by kind");
    }

    fn describe() {
        use ::metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            names::DECISIONS,
            "Requests a rate-limit policy looked at, by outcome"
        );
        describe_histogram!(
            names::STORE_DURATION,
            Unit::Seconds,
            "Time a rate-limit store call took to answer or fail"
        );
        describe_counter!(
            names::STORE_ERRORS,
            "Rate-limit store calls that failed or timed out"
        );
        describe_gauge!(
            names::BREAKER_OPEN,
            "1 while the policy's circuit breaker is open"
        );
        describe_counter!(
            names::BREAKER_TRANSITIONS,
            "Circuit breaker state changes, by the state entered"
        );
        describe_gauge!(
            names::BLOCK_CACHE_ENTRIES,
            "Denied keys the block cache holds"
        );
        describe_gauge!(
            names::MEMORY_STORE_COUNTERS,
            "Counters held by the process's memory stores"
        );
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    use super::Outcome;

    /// Without the `metrics` feature: nothing to record.
    #[derive(Debug)]
    pub(crate) struct Metrics;

    impl Metrics {
        pub(crate) fn new(_: &str) -> Self {
            Self
        }
        pub(crate) fn decision(&self, _: Outcome) {}
        pub(crate) fn store_latency(&self, _: Duration) {}
        pub(crate) fn store_error(&self) {}
        pub(crate) fn breaker(&self, _: bool) {}
        pub(crate) fn block_cache_len(&self, _: usize) {}
        pub(crate) fn lease_local(&self) {}
        pub(crate) fn lease_call(&self, _: bool) {}
        pub(crate) fn lease_units(&self, _: u64, _: u64, _: u64) {}
    }

    pub(crate) fn memory_store_counters(_: isize) {}
}
