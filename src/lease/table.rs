//! The slices this process holds: a bounded table of keys, each with its
//! slice (units, the windows they were granted in, when it ends), the next
//! slice size it asks for, and at most one grant in flight.
//!
//! The hot path is [`Table::spend`]: one shard lock, one lookup. A request
//! the slice cannot cover goes through [`Table::take`]: one grant per key
//! in flight (the others wait for it, then spend from what it brought), the
//! slice's leftovers handed in with the call. A background task, started by
//! the first grant and gone with the table, gives back slices left idle and
//! those evicted. Eviction is CLOCK (second chance), constant work per insert
//! amortised, never a slice with a grant in flight unless every slot has one.

use std::{
    collections::HashMap,
    future::Future,
    hash::{BuildHasher, RandomState},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use tokio::{
    sync::Notify,
    time::{Instant, timeout, timeout_at},
};

use super::{LeaseCall, LeaseRelease, LeaseReply, Release};
use crate::{
    Algorithm, Decision, Error,
    algorithm::Limit,
    config::LeaseConfig,
    layer::Stats,
    store::{Charge, MAX_LIMITS, Store},
};

/// Shards of a large table, each behind its own lock.
const SHARDS: usize = 16;

/// How much a slice grows each time one is spent while its key stays busy.
const GROWTH: u64 = 4;

/// Units a key spends through this process, one grant each, before its
/// pace is trusted to size a slice: two requests close together prove
/// little.
const SAMPLES: u64 = 4;

/// What a request taken through [`Table::take`] got.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taken {
    pub decision: Decision,
    /// The slice it was admitted from, to refund into (`None`: nothing to
    /// refund into, or denied).
    pub generation: Option<u64>,
    /// Whether this request asked the store itself.
    pub asked: bool,
}

pub(crate) struct Table<St> {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    store: St,
    limits: Vec<Limit>,
    algorithm: Algorithm,
    config: LeaseConfig,
    /// Bound on each give-back call.
    timeout: Duration,
    stats: Arc<Stats>,
    /// After [`Table::release`]: no more slices, each request takes its cost.
    closed: AtomicBool,
    generations: AtomicU64,
    sweeper: AtomicBool,
    /// Wakes the sweeper when a slice was evicted.
    wake: Arc<Notify>,
    /// Slices to give back that are no longer in the table (evicted, or
    /// landed after the table closed).
    orphans: Mutex<Vec<Unspent>>,
    /// Grants in flight, and who waits for them to land.
    flights: AtomicUsize,
    landed: Notify,
    /// Held by whoever is giving slices back, so that a release waits for
    /// the sweeper's give-backs under way.
    giving_back: tokio::sync::Mutex<()>,
}

struct Shard {
    slots: HashMap<Arc<str>, Slot>,
    /// Keys in CLOCK order; `None` where a slot was removed (and is in
    /// `free`).
    ring: Vec<Option<Arc<str>>>,
    free: Vec<usize>,
    hand: usize,
    capacity: usize,
}

struct Slot {
    units: u64,
    /// Per limit, the window the units were granted in.
    windows: [u64; MAX_LIMITS],
    /// When the slice ends: its first window's end as the store reported
    /// it, counted from when the grant was asked for.
    expires_at: Instant,
    /// For the headers: the reported limit, and when it is whole again.
    limit: u64,
    window: Duration,
    reset_at: Instant,
    generation: u64,
    last_used: Instant,
    /// The last grant: its units (the request's cost included) and when it
    /// came, from which the key's pace is measured.
    granted: u64,
    granted_at: Instant,
    /// Every unit granted since the key came into the table, and when it
    /// did: its pace over its whole stay.
    granted_total: u64,
    since: Instant,
    flight: Option<Arc<Flight>>,
    referenced: bool,
    ring: usize,
}

/// A grant in flight, which requests for the same key wait for.
#[derive(Default)]
struct Flight {
    done: AtomicBool,
    notify: Notify,
    /// A denial it brought: `(cost, decision, when it came)`, which a
    /// waiter of the same cost is given at once.
    denied: Mutex<Option<(u64, Decision, Instant)>>,
}

impl Flight {
    async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.done.load(SeqCst) {
            notified.await;
        }
    }

    fn land(&self) {
        self.done.store(true, SeqCst);
        self.notify.notify_waiters();
    }
}

/// Units to give back, and the windows they were granted in.
struct Unspent {
    key: Arc<str>,
    units: u64,
    windows: [u64; MAX_LIMITS],
}

/// What a request does after looking at its key's slot.
enum Begin {
    Local(Decision, u64),
    Wait(Arc<Flight>),
    Fly(Ticket),
}

/// A grant this request asks for.
struct Ticket {
    flight: Arc<Flight>,
    give_back: u64,
    windows: [u64; MAX_LIMITS],
    want: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<St: Store> Table<St> {
    pub(crate) fn new(
        config: LeaseConfig,
        limits: &[Limit],
        algorithm: Algorithm,
        timeout: Duration,
        store: St,
        stats: Arc<Stats>,
    ) -> Self {
        let shards = if config.capacity >= SHARDS * 32 {
            SHARDS
        } else {
            1
        };
        let per_shard = config.capacity / shards;
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        slots: HashMap::new(),
                        ring: Vec::new(),
                        free: Vec::new(),
                        hand: 0,
                        capacity: per_shard,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            store,
            limits: limits.to_vec(),
            algorithm,
            config,
            timeout,
            stats,
            closed: AtomicBool::new(false),
            generations: AtomicU64::new(0),
            sweeper: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            orphans: Mutex::new(Vec::new()),
            flights: AtomicUsize::new(0),
            landed: Notify::new(),
            giving_back: tokio::sync::Mutex::new(()),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        lock(&self.shards[index])
    }

    /// Admits a request of `cost` from its key's slice, if the slice holds
    /// that much and has not ended: the decision for its headers and the
    /// slice's generation. `None`: only [`take`](Self::take) can tell.
    pub(crate) fn spend(&self, key: &str, cost: u64, now: Instant) -> Option<(Decision, u64)> {
        let mut shard = self.shard(key);
        let slot = shard.slots.get_mut(key)?;
        slot.referenced = true;
        slot.spend(cost, now)
    }

    /// Gives back `cost` units an inner layer refused, to the slice they
    /// came from if it is still the key's: else they stay spent.
    pub(crate) fn refund(&self, key: &str, cost: u64, generation: Option<u64>) {
        let Some(generation) = generation else {
            return;
        };
        let mut shard = self.shard(key);
        if let Some(slot) = shard.slots.get_mut(key)
            && slot.generation == generation
            && slot.expires_at > Instant::now()
        {
            slot.units += cost;
        }
    }

    /// Decides a request of `cost` that [`spend`](Self::spend) could not:
    /// from a grant this request asks for (handing in the slice's
    /// leftovers), or from one in flight for the same key.
    pub(crate) async fn take(self: Arc<Self>, key: String, cost: u64) -> Result<Taken, Error> {
        // A request waits for grants in flight only so long: a busy key's
        // queue behind its one grant in flight must not become the
        // request's latency, which the policy's timeout would count as a
        // store failure. After that it asks for its cost alone, beside
        // every other request, as without leases.
        let deadline = Instant::now() + self.timeout / 2;
        loop {
            let ticket = match self.begin(&key, cost, Instant::now()) {
                Begin::Local(decision, generation) => {
                    self.stats.record_lease_local();
                    return Ok(Taken {
                        decision,
                        generation: Some(generation),
                        asked: false,
                    });
                }
                Begin::Wait(flight) => {
                    if timeout_at(deadline, flight.wait()).await.is_err() {
                        return self.alone(&key, cost).await;
                    }
                    let denied = *lock(&flight.denied);
                    match denied {
                        Some((denied_cost, decision, at)) if denied_cost == cost => {
                            return Ok(Taken {
                                decision: counted_down(decision, at),
                                generation: None,
                                asked: false,
                            });
                        }
                        _ => continue,
                    }
                }
                Begin::Fly(ticket) => ticket,
            };
            return self.fly(&key, cost, ticket).await;
        }
    }

    /// Looks at the key's slot: spend, wait for its grant in flight, or
    /// ask for one (taking the slice's leftovers to hand in).
    fn begin(self: &Arc<Self>, key: &str, cost: u64, now: Instant) -> Begin {
        let flight = Arc::new(Flight::default());
        if self.closed.load(SeqCst) {
            // No slices any more: exactly the request's cost.
            self.flights.fetch_add(1, SeqCst);
            return Begin::Fly(Ticket {
                flight,
                give_back: 0,
                windows: [0; MAX_LIMITS],
                want: cost,
            });
        }
        let mut shard = self.shard(key);
        let ticket = match shard.slots.get_mut(key) {
            Some(slot) => {
                slot.referenced = true;
                if let Some((decision, generation)) = slot.spend(cost, now) {
                    return Begin::Local(decision, generation);
                }
                if let Some(flight) = &slot.flight {
                    return Begin::Wait(flight.clone());
                }
                slot.flight = Some(flight.clone());
                let want = self.want(slot, cost, now);
                Ticket {
                    flight,
                    give_back: std::mem::take(&mut slot.units),
                    windows: slot.windows,
                    want,
                }
            }
            None => {
                let slot = Slot {
                    units: 0,
                    windows: [0; MAX_LIMITS],
                    expires_at: now,
                    limit: 0,
                    window: Duration::ZERO,
                    reset_at: now,
                    generation: 0,
                    last_used: now,
                    granted: 0,
                    granted_at: now,
                    granted_total: 0,
                    since: now,
                    flight: Some(flight.clone()),
                    referenced: false,
                    ring: 0,
                };
                if let Some((key, evicted)) = shard.insert(key.into(), slot) {
                    drop(shard);
                    self.orphan(key, &evicted);
                }
                // A key new here asks for its cost alone: a one-off
                // request leaves nothing to give back.
                Ticket {
                    flight,
                    give_back: 0,
                    windows: [0; MAX_LIMITS],
                    want: cost,
                }
            }
        };
        self.flights.fetch_add(1, SeqCst);
        Begin::Fly(ticket)
    }

    /// Asks the store for a grant, and lands it.
    async fn fly(self: &Arc<Self>, key: &str, cost: u64, ticket: Ticket) -> Result<Taken, Error> {
        // However this ends (an answer, an error, the request dropped by its
        // timeout), the waiters are woken and the slot freed.
        let guard = FlightGuard {
            table: self,
            key,
            flight: &ticket.flight,
        };
        let sent_at = Instant::now();
        let n = self.limits.len();
        let call = LeaseCall {
            key,
            limits: &self.limits,
            algorithm: self.algorithm,
            cost,
            want: ticket.want.min(self.config.max_slice).max(cost),
            instances: self.config.instances,
            give_back: ticket.give_back,
            windows: &ticket.windows[..n],
        };
        self.stats.record_lease_call(false);
        // A grant of the cost alone, with nothing to hand in (a key new here,
        // or at a slow pace; or the table closed), leaves nothing to give
        // back: the plain script decides it, exactly as without leases, and
        // more cheaply (it need not name the window).
        let reply = match ticket.give_back == 0 && call.want == cost {
            true => self.plain(key, cost).await.map(|decision| {
                let granted = if decision.allowed { cost } else { 0 };
                LeaseReply::new(
                    granted,
                    Some(decision),
                    [0; MAX_LIMITS],
                    [Duration::ZERO; MAX_LIMITS],
                    [0; MAX_LIMITS],
                )
            }),
            false => self.store.lease(call).await,
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                // The handed-in units may or may not have been credited.
                self.stats.record_lease_units(0, 0, ticket.give_back);
                return Err(error);
            }
        };
        let credited = min_credited(&reply, n);
        self.stats
            .record_lease_units(reply.granted, credited, ticket.give_back - credited);
        let Some(decision) = reply.decision else {
            return Err(Error::UnexpectedReply(
                "a lease grant without a decision".into(),
            ));
        };
        let now = Instant::now();
        if reply.granted < cost || !decision.allowed {
            *lock(&ticket.flight.denied) = Some((cost, decision, now));
            return Ok(Taken {
                decision,
                generation: None,
                asked: true,
            });
        }
        self.start_sweeper();
        let leftover = reply.granted - cost;
        let left = reply.window_left[..n].iter().min().copied();
        // The store's window ends no sooner than this after the call was
        // sent: its clock read the time left after the call arrived, and
        // `PTTL` rounds down by less than 1 ms.
        let expires_at = sent_at
            + left
                .unwrap_or_default()
                .saturating_sub(Duration::from_millis(1));
        let generation = self.generations.fetch_add(1, SeqCst) + 1;
        let mut shard = self.shard(key);
        let ours = shard.slots.get_mut(key).filter(|slot| {
            slot.flight
                .as_ref()
                .is_some_and(|f| Arc::ptr_eq(f, &ticket.flight))
        });
        match ours {
            Some(slot) if !self.closed.load(SeqCst) => {
                *slot = Slot {
                    units: leftover,
                    windows: reply.windows,
                    expires_at,
                    limit: decision.limit,
                    window: decision.window,
                    reset_at: now + decision.reset_after,
                    generation,
                    last_used: now,
                    granted: reply.granted,
                    granted_at: now,
                    granted_total: slot.granted_total + reply.granted,
                    since: slot.since,
                    flight: slot.flight.take(),
                    referenced: true,
                    ring: slot.ring,
                };
                drop(shard);
                drop(guard);
                Ok(Taken {
                    decision: Decision {
                        remaining: leftover,
                        ..decision
                    },
                    generation: Some(generation),
                    asked: true,
                })
            }
            _ => {
                // Evicted while in flight, or the table closed: the
                // leftovers go straight back.
                drop(shard);
                if leftover > 0 {
                    lock(&self.orphans).push(Unspent {
                        key: key.into(),
                        units: leftover,
                        windows: reply.windows,
                    });
                    self.wake.notify_one();
                }
                drop(guard);
                Ok(Taken {
                    decision: Decision {
                        remaining: 0,
                        ..decision
                    },
                    generation: None,
                    asked: true,
                })
            }
        }
    }

    /// Decides a request by the plain script, leaving the key's slot as it
    /// is: exactly its cost, nothing held.
    async fn alone(&self, key: &str, cost: u64) -> Result<Taken, Error> {
        self.stats.record_lease_call(false);
        let decision = self.plain(key, cost).await?;
        let granted = if decision.allowed { cost } else { 0 };
        self.stats.record_lease_units(granted, 0, 0);
        Ok(Taken {
            decision,
            generation: None,
            asked: true,
        })
    }

    /// The plain script's decision on `cost`, as without leases.
    async fn plain(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        self.store
            .check(Charge {
                key,
                limits: &self.limits,
                algorithm: self.algorithm,
                cost,
                now_us: None,
            })
            .await
    }

    /// The slice to ask for after `slot`'s: what the key spends in half
    /// an idle period at its pace (the slower of its last slice's and its
    /// whole stay's), so that a slice is rarely left to go back idle; its
    /// cost alone until it has spent [`SAMPLES`] units here, so that a key at
    /// a few requests a second keeps asking for its cost alone, as without
    /// leases; at most four times the last grant (a busy key grows 1, 4, 16,
    /// 64…) and `max_slice`; at least the request's cost.
    fn want(&self, slot: &Slot, cost: u64, now: Instant) -> u64 {
        let spent = slot.granted_total.saturating_sub(slot.units);
        if spent < SAMPLES {
            return cost;
        }
        let horizon = (self.config.idle_return / 2).as_micros();
        let pace =
            |units: u64, since: Instant| match now.saturating_duration_since(since).as_micros() {
                0 => u64::MAX,
                elapsed => u64::try_from(u128::from(units) * horizon / elapsed).unwrap_or(u64::MAX),
            };
        let last = pace(slot.granted.saturating_sub(slot.units), slot.granted_at);
        let paced = last.min(pace(spent, slot.since));
        let most = slot
            .granted
            .saturating_mul(GROWTH)
            .min(self.config.max_slice);
        paced.min(most).max(cost)
    }

    /// An evicted slot's units, to give back.
    fn orphan(&self, key: Arc<str>, slot: &Slot) {
        if slot.units > 0 {
            lock(&self.orphans).push(Unspent {
                key,
                units: slot.units,
                windows: slot.windows,
            });
            self.wake.notify_one();
        }
    }

    /// Starts the task that gives back idle and evicted slices, once.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper.swap(true, SeqCst) {
            return;
        }
        let (table, wake) = (Arc::downgrade(self), self.wake.clone());
        let tick = (self.config.idle_return / 2).max(Duration::from_millis(1));
        tokio::spawn(sweep(table, wake, tick));
    }

    /// Takes the units of slices idle for `idle_return` or ended (and the
    /// evicted ones) out of the table, and forgets keys idle for as long,
    /// so that they start small again (a busy key keeps its slice size from
    /// one window to the next). Units of a slice that ended are given back
    /// only under several limits (the longer windows may still run); under
    /// one, their window is over and they are dropped.
    fn collect(&self, now: Instant) -> Vec<Unspent> {
        let mut out = std::mem::take(&mut *lock(&self.orphans));
        let idle_return = self.config.idle_return;
        let several = self.limits.len() > 1;
        let mut dropped = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            let Shard {
                slots, ring, free, ..
            } = &mut *shard;
            slots.retain(|key, slot| {
                if slot.flight.is_some() {
                    return true;
                }
                let idle = slot.last_used + idle_return <= now;
                let ended = slot.expires_at <= now;
                if slot.units > 0 && (idle || ended) {
                    let units = std::mem::take(&mut slot.units);
                    if ended && !several {
                        dropped += units;
                    } else {
                        out.push(Unspent {
                            key: key.clone(),
                            units,
                            windows: slot.windows,
                        });
                    }
                }
                if idle {
                    ring[slot.ring] = None;
                    free.push(slot.ring);
                }
                !idle
            });
        }
        if dropped > 0 {
            self.stats.record_lease_units(0, 0, dropped);
        }
        out
    }

    /// Takes every slice out of the table.
    fn drain(&self) -> Vec<Unspent> {
        let mut out = std::mem::take(&mut *lock(&self.orphans));
        for shard in &self.shards {
            let mut shard = lock(shard);
            for (key, slot) in shard.slots.drain() {
                if slot.units > 0 {
                    out.push(Unspent {
                        key,
                        units: slot.units,
                        windows: slot.windows,
                    });
                }
            }
            shard.ring.clear();
            shard.free.clear();
            shard.hand = 0;
        }
        out
    }

    /// Gives `unspent` back, all calls at once (pipelined on the store's
    /// connection), each bounded by the policy's timeout.
    async fn give_back(&self, unspent: Vec<Unspent>) -> LeaseRelease {
        let n = self.limits.len();
        let mut report = LeaseRelease::default();
        let mut calls = tokio::task::JoinSet::new();
        for u in &unspent {
            report.slices += 1;
            report.units += u.units;
            let call = LeaseCall {
                key: &u.key,
                limits: &self.limits,
                algorithm: self.algorithm,
                cost: 0,
                want: 0,
                instances: self.config.instances,
                give_back: u.units,
                windows: &u.windows[..n],
            };
            self.stats.record_lease_call(true);
            let reply = timeout(self.timeout, self.store.lease(call));
            let units = u.units;
            calls.spawn(async move { (units, reply.await) });
        }
        while let Some(done) = calls.join_next().await {
            let Ok((units, reply)) = done else {
                continue;
            };
            match reply {
                Ok(Ok(reply)) => {
                    let credited = min_credited(&reply, n);
                    report.credited += credited;
                    self.stats.record_lease_units(0, credited, units - credited);
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "lease give-back not made");
                    report.failed += units;
                    self.stats.record_lease_units(0, 0, units);
                }
                Err(_) => {
                    report.failed += units;
                    self.stats.record_lease_units(0, 0, units);
                }
            }
        }
        report
    }

    /// Closes the table and gives everything back (see
    /// [`LeaseHandle::release`](super::LeaseHandle::release)).
    async fn release_all(&self) -> LeaseRelease {
        self.closed.store(true, SeqCst);
        // Grants in flight land first (each is bounded by its request's
        // timeout); then the sweeper's give-backs under way finish.
        let flights = async {
            loop {
                let landed = self.landed.notified();
                tokio::pin!(landed);
                landed.as_mut().enable();
                if self.flights.load(SeqCst) == 0 {
                    break;
                }
                landed.await;
            }
        };
        if timeout(self.timeout * 4, flights).await.is_err() {
            tracing::debug!("lease release: grants still in flight");
        }
        let _giving_back = self.giving_back.lock().await;
        let unspent = self.drain();
        self.give_back(unspent).await
    }
}

impl<St: Store> Release for Table<St> {
    fn release(&self) -> Pin<Box<dyn Future<Output = LeaseRelease> + Send + '_>> {
        Box::pin(self.release_all())
    }
}

/// The smallest number of units any limit credited: what came back to
/// every limit.
fn min_credited(reply: &LeaseReply, n: usize) -> u64 {
    reply.credited[..n].iter().min().copied().unwrap_or(0)
}

/// A denial that came at `at`, with its times counted down to now.
fn counted_down(decision: Decision, at: Instant) -> Decision {
    let elapsed = at.elapsed();
    Decision {
        reset_after: decision.reset_after.saturating_sub(elapsed),
        // Never early: the wait is what is left of the store's, at least 1 µs
        // while it runs.
        retry_after: decision
            .retry_after
            .map(|r| r.saturating_sub(elapsed).max(Duration::from_micros(1))),
        ..decision
    }
}

/// The sweeper: every `tick`, or when woken for an eviction, gives back
/// what [`Table::collect`] takes out; ends with the table.
async fn sweep<St: Store>(table: Weak<Table<St>>, wake: Arc<Notify>, tick: Duration) {
    let mut next = Instant::now() + tick;
    loop {
        // Woken for an eviction, it gives back the evicted slices only; the
        // scan of the whole table waits for its tick, so that a flood of new
        // keys evicting old ones never makes it scan at every request.
        let scan = tokio::select! {
            () = tokio::time::sleep_until(next) => true,
            () = wake.notified() => false,
        };
        let Some(table) = table.upgrade() else {
            return;
        };
        let _giving_back = table.giving_back.lock().await;
        let unspent = match scan {
            true => {
                next = Instant::now() + tick;
                table.collect(Instant::now())
            }
            false => std::mem::take(&mut *lock(&table.orphans)),
        };
        if !unspent.is_empty() {
            table.give_back(unspent).await;
        }
    }
}

/// Ends a grant in flight however its request ends: the slot forgets the
/// flight, its waiters wake, and a release waiting for flights learns of it.
struct FlightGuard<'a, St: Store> {
    table: &'a Table<St>,
    key: &'a str,
    flight: &'a Arc<Flight>,
}

impl<St: Store> Drop for FlightGuard<'_, St> {
    fn drop(&mut self) {
        {
            let mut shard = self.table.shard(self.key);
            if let Some(slot) = shard.slots.get_mut(self.key)
                && slot
                    .flight
                    .as_ref()
                    .is_some_and(|f| Arc::ptr_eq(f, self.flight))
            {
                slot.flight = None;
            }
        }
        self.flight.land();
        if self.table.flights.fetch_sub(1, SeqCst) == 1 {
            self.table.landed.notify_waiters();
        }
    }
}

impl Slot {
    /// Spends `cost` if the slice holds it and has not ended.
    fn spend(&mut self, cost: u64, now: Instant) -> Option<(Decision, u64)> {
        if self.units < cost || self.expires_at <= now || self.generation == 0 {
            return None;
        }
        self.units -= cost;
        self.last_used = now;
        let decision = Decision {
            allowed: true,
            limit: self.limit,
            window: self.window,
            remaining: self.units,
            reset_after: self.reset_at.saturating_duration_since(now),
            retry_after: None,
        };
        Some((decision, self.generation))
    }
}

impl Shard {
    /// Inserts `slot` under `key` (absent), evicting a slot if the shard is
    /// full: the first the CLOCK hand finds not recently used and without a
    /// grant in flight (after two turns, whatever it points at).
    fn insert(&mut self, key: Arc<str>, mut slot: Slot) -> Option<(Arc<str>, Slot)> {
        let mut evicted = None;
        let index = if let Some(index) = self.free.pop() {
            index
        } else if self.ring.len() < self.capacity.max(1) {
            self.ring.push(None);
            self.ring.len() - 1
        } else {
            let turns = 2 * self.ring.len();
            let mut steps = 0;
            loop {
                let index = self.hand;
                self.hand = (self.hand + 1) % self.ring.len();
                steps += 1;
                let held = self.ring[index].as_ref().expect("a full ring has no holes");
                let victim = self.slots.get_mut(held).expect("the ring names slots");
                if steps <= turns && (victim.referenced || victim.flight.is_some()) {
                    victim.referenced = false;
                    continue;
                }
                let held = self.ring[index].take().expect("checked above");
                let victim = self.slots.remove(&held).expect("checked above");
                evicted = Some((held, victim));
                break index;
            }
        };
        slot.ring = index;
        self.ring[index] = Some(key.clone());
        self.slots.insert(key, slot);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(now: Instant) -> Slot {
        Slot {
            units: 1,
            windows: [0; MAX_LIMITS],
            expires_at: now,
            limit: 0,
            window: Duration::ZERO,
            reset_at: now,
            generation: 1,
            last_used: now,
            granted: 1,
            granted_at: now,
            granted_total: 1,
            since: now,
            flight: None,
            referenced: false,
            ring: 0,
        }
    }

    fn shard(capacity: usize) -> Shard {
        Shard {
            slots: HashMap::new(),
            ring: Vec::new(),
            free: Vec::new(),
            hand: 0,
            capacity,
        }
    }

    #[test]
    fn a_full_shard_evicts_what_was_not_used_since_the_hand_passed() {
        let now = Instant::now();
        let mut shard = shard(3);
        for key in ["a", "b", "c"] {
            assert!(shard.insert(key.into(), slot(now)).is_none());
        }
        // b was used: the hand spares it once; a and c were not.
        shard.slots.get_mut("b").unwrap().referenced = true;
        let (evicted, _) = shard.insert("d".into(), slot(now)).unwrap();
        assert_eq!(&*evicted, "a");
        let (evicted, _) = shard.insert("e".into(), slot(now)).unwrap();
        assert_eq!(&*evicted, "c", "b had its second chance");
        assert_eq!(shard.slots.len(), 3);
        assert!(shard.slots.contains_key("b"));
    }

    #[test]
    fn a_slot_with_a_grant_in_flight_is_evicted_last() {
        let now = Instant::now();
        let mut shard = shard(2);
        let mut flying = slot(now);
        flying.flight = Some(Arc::new(Flight::default()));
        shard.insert("flying".into(), flying);
        shard.insert("idle".into(), slot(now));
        let (evicted, _) = shard.insert("new".into(), slot(now)).unwrap();
        assert_eq!(&*evicted, "idle");
        // Only slots in flight left: after two turns the hand takes one.
        shard.slots.get_mut("new").unwrap().flight = Some(Arc::new(Flight::default()));
        assert!(shard.insert("last".into(), slot(now)).is_some());
        assert_eq!(shard.slots.len(), 2);
    }

    #[test]
    fn a_removed_slot_frees_its_place_in_the_ring() {
        let now = Instant::now();
        let mut shard = shard(2);
        shard.insert("a".into(), slot(now));
        shard.insert("b".into(), slot(now));
        let Shard {
            slots, ring, free, ..
        } = &mut shard;
        let removed = slots.remove("a").unwrap();
        ring[removed.ring] = None;
        free.push(removed.ring);
        assert!(shard.insert("c".into(), slot(now)).is_none(), "no eviction");
        assert_eq!(shard.slots.len(), 2);
    }

    #[test]
    fn a_slice_is_spent_only_while_it_holds_the_cost_and_lasts() {
        let now = Instant::now();
        let mut live = slot(now);
        live.units = 3;
        live.expires_at = now + Duration::from_secs(1);
        live.reset_at = now + Duration::from_secs(2);
        assert!(live.spend(4, now).is_none());
        let (decision, generation) = live.spend(3, now).unwrap();
        assert_eq!((decision.remaining, generation), (0, 1));
        assert_eq!(decision.reset_after, Duration::from_secs(2));
        assert!(live.spend(1, now).is_none());
        live.units = 5;
        assert!(
            live.spend(1, now + Duration::from_secs(1)).is_none(),
            "ended"
        );
    }
}
