//! Lease mode: an app server takes a slice of a key's remaining quota from
//! the store in one call, then admits requests of that key locally until
//! the slice is spent or its window ends.
//!
//! For hot keys (an agent posting hundreds of batches a minute), where
//! asking Redis for every request makes Redis the bottleneck: with slices of
//! 64, a key at its pace costs Redis about one call per 64 requests. Not for
//! keys that see a few requests per window (a login limit of `10/h`): a
//! slice would be the whole quota, and a one-off request costs a call
//! anyway. Turn it on per policy with [`Policy::lease`](crate::Policy::lease)
//! (or `[policies.lease]` in a file, see
//! [`LeaseConfig`](crate::config::LeaseConfig)).
//!
//! # The rules
//!
//! - **The counter in the store counts units granted**, in the counters
//!   the policy has without leases (`<client>:<window s>:fixed`,
//!   `…:sliding`), so app servers with and without leases share them. A
//!   grant takes `min(want, left / instances)` units, at least the
//!   request's cost, never more than what every limit of the policy has
//!   left, all or nothing: a counter never exceeds its limit, so **no
//!   window ever admits more than its limit across all app servers**,
//!   whatever their number, interleaving, crashes or restarts.
//! - **The slice adapts** to the key's pace: a key new to this process gets
//!   just the request's cost until it has spent 4 units here (a one-off
//!   request leaves nothing to give back); after that, a slice is what the
//!   key spends in half an idle period at its pace, at most four times the
//!   last and `max_slice` (a busy key takes 1, 1, 1, 1, 4, 16, 64; a key at a
//!   few requests a second keeps asking for its cost alone, as without
//!   leases); and never
//!   more than what the key has left divided by `instances`, so a key near
//!   its limit hands out small slices. A request
//!   costing more than the slice holds asks the store, handing in what is
//!   left of the slice in the same call: nothing is admitted on credit.
//! - **A slice ends with its window**, measured from when it was asked for:
//!   the store says how long its window still runs (from the counter's
//!   `PTTL`), and the app server stops
//!   using the slice that long after it sent the call, 1 ms earlier, so
//!   before the store's window ends whatever the round trip, with no clock
//!   shared between them.
//! - **Unspent units go back** when the slice has not been used for
//!   `idle_return` (250 ms by default), when its key is evicted from the
//!   table, and at [`release_leases`](crate::RateLimitLayer::release_leases)
//!   (graceful shutdown), **only into the window they were granted in**:
//!   each give-back names its window (the counter's expiry as
//!   `PEXPIRETIME` gave it at the grant), and the store credits a limit
//!   only if its counter is still in that window. A give-back that arrives after its
//!   window rolled over is dropped, never credited to the next.
//! - **Headers stay honest**: `remaining` reports what this app server's
//!   slice still holds, never more than the key has across the fleet;
//!   a denial comes from the store, with the store's `Retry-After`.
//!
//! # What it costs in accuracy
//!
//! | | bound |
//! |---|---|
//! | admitted per window, all app servers | never above the limit |
//! | a denial while the key still has quota | only when fewer than the request's cost is left unclaimed: the rest is held unspent by the app servers, at most `max_slice` per server and key (twice that for the round trip of a give-back under way) |
//! | an app server that crashes (or is dropped without `release_leases`) | its unspent slices are lost for their window: at most `max_slice` per key (twice that if a give-back was under way) |
//! | a failover that loses unreplicated writes | the grants among them: at most the units granted within the replication lag, which is what the plain mode loses (the requests admitted in that time) plus at most `instances × max_slice` per key |
//!
//! # Graceful shutdown
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use axum_redis_ratelimit::{Key, Policy, Rate, RateLimitLayer, RedisStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379/1").await?;
//! let telemetry = Policy::new("telemetry")
//!     .rate(Rate::per_minute(1000))
//!     .key(Key::header("X-Agent-Token").secret())
//!     .lease(64)
//!     .lease_instances(4);
//! let layer = RateLimitLayer::new(telemetry, store)?;
//! let leases = layer.lease_handle();
//! let app = Router::new()
//!     .route("/api/v1/telemetry/", post(|| async { "queued" }))
//!     .route_layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! // Requests are finished: give every unspent unit back to its window.
//! let released = leases.release().await;
//! println!("gave back {} units of {} slices", released.units, released.slices);
//! # Ok(()) }
//! ```

mod table;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

pub(crate) use self::table::{Table, Taken};
use crate::{
    Algorithm, Decision, Error,
    algorithm::{Limit, MAX_LIMITS},
};

/// What [`Store::lease`](crate::store::Store::lease) answers.
pub type LeaseFuture = Pin<Box<dyn Future<Output = Result<LeaseReply, Error>> + Send>>;

/// One call of lease mode to a store: give back `give_back` units granted
/// in `windows`, then (for a `cost` above 0) grant a slice of `key`'s
/// quota under every one of `limits`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct LeaseCall<'a> {
    /// The client's key, as in [`Charge::key`](crate::store::Charge::key).
    pub key: &'a str,
    /// The limits, all counted at once.
    pub limits: &'a [Limit],
    /// How to count: [`Algorithm::FixedWindow`] or
    /// [`Algorithm::SlidingWindow`].
    pub algorithm: Algorithm,
    /// The units the request needs now: nothing is granted unless every
    /// limit has at least this much left. 0: a give-back only.
    pub cost: u64,
    /// The slice asked for, at least `cost`.
    pub want: u64,
    /// App servers sharing the key: a grant is at most what is left
    /// divided by this (but at least `cost`).
    pub instances: u64,
    /// Units given back (0: none).
    pub give_back: u64,
    /// Per limit, the window the given-back units were granted in, as a
    /// [`LeaseReply`] named it (0: none).
    pub windows: &'a [u64],
}

/// What the store answered a [`LeaseCall`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseReply {
    /// Units granted: 0 (denied, or a give-back only), or at least the
    /// call's cost.
    pub granted: u64,
    /// For a call with a cost: allowed, with the figures of the reported
    /// limit after the grant (`remaining` is what the store has left); or
    /// the denial, with its `Retry-After`. `None` for a give-back only.
    pub decision: Option<Decision>,
    /// Per limit, the window the grant counts in: what a give-back of its
    /// units must name (0 when nothing was granted).
    pub windows: [u64; MAX_LIMITS],
    /// Per limit, how long that window still ran when the store decided.
    pub window_left: [Duration; MAX_LIMITS],
    /// Per limit, how many of the given-back units were credited (0 where
    /// the window had rolled over).
    pub credited: [u64; MAX_LIMITS],
}

impl LeaseReply {
    /// A reply granting `granted` units, deciding `decision`, in `windows`
    /// that still run for `window_left`, having credited `credited` of the
    /// units given back (each per limit, in the order of the call's limits).
    pub fn new(
        granted: u64,
        decision: Option<Decision>,
        windows: [u64; MAX_LIMITS],
        window_left: [Duration; MAX_LIMITS],
        credited: [u64; MAX_LIMITS],
    ) -> Self {
        Self {
            granted,
            decision,
            windows,
            window_left,
            credited,
        }
    }
}

/// What [`release_leases`](crate::RateLimitLayer::release_leases) gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseRelease {
    /// Slices given back.
    pub slices: u64,
    /// Units they held.
    pub units: u64,
    /// Of those, the units every limit credited (the others' windows had
    /// rolled over, so they were dropped, as they must be).
    pub credited: u64,
    /// Units whose give-back failed (the store down or slow): lost for
    /// their window.
    pub failed: u64,
}

/// Gives back a layer's unspent slices, whatever the layer's store type:
/// what an application keeps to call at shutdown, after its server has
/// finished the requests in flight. From
/// [`RateLimitLayer::lease_handle`](crate::RateLimitLayer::lease_handle);
/// a handle of a policy without leases gives back nothing.
#[derive(Clone, Default)]
pub struct LeaseHandle {
    table: Option<Arc<dyn Release>>,
}

impl std::fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("leasing", &self.table.is_some())
            .finish()
    }
}

impl LeaseHandle {
    pub(crate) fn new(table: Option<Arc<dyn Release>>) -> Self {
        Self { table }
    }

    /// Gives every unspent unit back to the window it was granted in and
    /// stops leasing: from then on each request takes exactly its cost, so
    /// requests that still arrive strand nothing. Waits for grants in
    /// flight and give-backs under way first, so that once it returns, the
    /// store's counters hold exactly the units admitted (save a give-back
    /// that failed, counted in [`LeaseRelease::failed`]).
    pub async fn release(&self) -> LeaseRelease {
        match &self.table {
            Some(table) => table.release().await,
            None => LeaseRelease::default(),
        }
    }
}

/// A lease table of any store type, for [`LeaseHandle`].
pub(crate) trait Release: Send + Sync {
    fn release(&self) -> Pin<Box<dyn Future<Output = LeaseRelease> + Send + '_>>;
}
