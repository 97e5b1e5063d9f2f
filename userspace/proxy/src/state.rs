//! One worker's own mutable state, knowing nothing of the worker thread: per service its
//! balancer, idle pools, pending count, retry budget, stats slot and upstream-connection
//! gauge; the worker's RNG, buffer and head pools, and its telemetry outputs. Owns: picking an
//! endpoint and recording what an attempt says about it.
//!
//! A service costs little until it is used on this worker: its balancer and pools
//! ([`Active`]) are built on its first request and dropped again after [`IDLE_RELEASE`]
//! without requests, once nothing is pooled or in flight. A new snapshot is applied
//! incrementally: a service whose derived state the snapshot kept (the same `Arc<Service>`)
//! keeps its state untouched; a changed one is rebuilt with its pools, latency estimates,
//! budget and gauge carried over by endpoint address.
//! Must not: do I/O (beyond closing pooled sockets it drops), be shared between threads, or be
//! borrowed across an `.await` (it lives in a `RefCell`; clippy denies holding the borrow).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use weir_core::balance::Balancer;
use weir_core::config::ServiceConfig;
use weir_core::outcome::Outcome;
use weir_core::outlier::{HealthSignal, OutlierEvent};
use weir_core::retry::{Attempted, Next, RetryBudget};
use weir_core::stats::ServiceStats;

use crate::http::ResponseHead;
use crate::pool::{Gauge, H2Conn, H2Pool, Lease, Pool, UpConn};
use crate::snapshot::{Service, Snapshot};
use crate::telemetry::WorkerTelemetry;

/// A request's service, resolved once: the snapshot it was routed on and the service's index
/// there. Cheap to clone (a thread-local reference count, never the shared `Arc`'s).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    #[expect(clippy::redundant_allocation, reason = "clones bump a thread-local count, not the Arc's atomic one")]
    snapshot: Rc<Arc<Snapshot>>,
    index: usize,
}

impl Scope {
    /// The service's derived state (policies, health).
    pub(crate) fn service(&self) -> &Service {
        &self.snapshot.services[self.index]
    }

    /// The service's config.
    pub(crate) fn config(&self) -> &ServiceConfig {
        &self.snapshot.config.services[self.index]
    }

    /// The service name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.service().name
    }

    /// The snapshot the request was routed on.
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// An endpoint chosen for one attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Picked {
    /// Index in the service's endpoint list of the snapshot `generation`.
    pub index: usize,
    pub addr: SocketAddr,
    /// Chosen in panic mode (over all endpoints, ejected ones included).
    pub panic: bool,
    pub generation: u64,
}

/// The endpoints a request has already tried (at most 10 attempts, as config allows).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tried {
    addrs: [Option<SocketAddr>; 10],
    len: usize,
}

impl Tried {
    /// Notes an endpoint as tried.
    pub(crate) fn add(&mut self, addr: SocketAddr) {
        if !self.contains(addr) && self.len < self.addrs.len() {
            self.addrs[self.len] = Some(addr);
            self.len += 1;
        }
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        self.addrs[..self.len].contains(&Some(addr))
    }

    /// The most recently tried endpoint.
    pub(crate) fn last(&self) -> Option<SocketAddr> {
        self.len.checked_sub(1).and_then(|i| self.addrs[i])
    }
}

/// A service's state that exists only while it is in use on this worker.
#[derive(Debug)]
pub(crate) struct Active {
    balancer: Balancer,
    /// Idle connections per endpoint (index-aligned with the service's endpoints).
    pools: Vec<Pool>,
    /// HTTP/2 connections per endpoint (HTTP/2 and gRPC services; empty otherwise).
    h2: Vec<H2Pool>,
    /// When a request last picked an endpoint.
    last_pick: Instant,
}

/// A service unused this long on a worker (nothing pooled, nothing in flight) gives its
/// balancer and pools back.
pub(crate) const IDLE_RELEASE: Duration = Duration::from_secs(600);

impl Active {
    fn new(cfg: &ServiceConfig, seed: u64, now: Instant) -> Box<Active> {
        let weights: Vec<u32> = cfg.endpoints.iter().map(|e| e.weight).collect();
        let h2 = if cfg.protocol.upstream_h2() { cfg.endpoints.len() } else { 0 };
        Box::new(Active {
            balancer: Balancer::new(cfg.lb, &weights, seed),
            pools: (0..cfg.endpoints.len()).map(|_| Pool::default()).collect(),
            h2: (0..h2).map(|_| H2Pool::default()).collect(),
            last_pick: now,
        })
    }

    /// A new state for `cfg` with what `prev` (for `prev_cfg`) knew, matched by address.
    fn carried(cfg: &ServiceConfig, seed: u64, prev_cfg: &ServiceConfig, prev: &mut Active) -> Box<Active> {
        let mut next = Active::new(cfg, seed, prev.last_pick);
        next.balancer.carry_latency_from(&prev.balancer, |new_i| {
            prev_cfg.endpoints.iter().position(|e| e.addr == cfg.endpoints[new_i].addr)
        });
        for (k, e) in prev_cfg.endpoints.iter().enumerate() {
            if let Some(n) = cfg.endpoints.iter().position(|n| n.addr == e.addr) {
                next.pools[n] = std::mem::take(&mut prev.pools[k]);
                if let (Some(to), Some(from)) = (next.h2.get_mut(n), prev.h2.get_mut(k)) {
                    *to = std::mem::take(from);
                }
            }
        }
        // Pools of endpoints that are gone close with `prev` (dropped by the caller).
        next
    }
}

/// Per-service state on one worker.
#[derive(Debug)]
pub(crate) struct ServiceState {
    /// Balancer and pools, while the service is in use here.
    active: Option<Box<Active>>,
    /// Seeds this service's balancer on this worker.
    seed: u64,
    /// Requests in flight on this worker.
    pending: u32,
    budget: RetryBudget,
    /// Slot in the worker's stats shard.
    stats: usize,
    /// Open upstream connections (the `weir_upstream_connections` gauge's share).
    gauge: Gauge,
}

/// Buffers kept for reuse per worker, and the largest one kept.
const MAX_POOLED_BUFS: usize = 256;
const MAX_POOLED_BUF_BYTES: usize = 256 * 1024;
const NEW_BUF_BYTES: usize = 16 * 1024;
/// Response heads kept for reuse per worker, and the most field slots one may keep.
const MAX_POOLED_HEADS: usize = 256;
const MAX_POOLED_HEAD_FIELDS: usize = 256;

/// A worker's view of the active snapshot and everything it owns.
#[derive(Debug)]
pub(crate) struct WorkerState {
    #[expect(clippy::redundant_allocation, reason = "clones bump a thread-local count, not the Arc's atomic one")]
    snapshot: Rc<Arc<Snapshot>>,
    services: Vec<ServiceState>,
    rng: SmallRng,
    worker: usize,
    bufs: Vec<Vec<u8>>,
    heads: Vec<ResponseHead>,
    /// This worker's stats shard and log ring.
    pub telemetry: WorkerTelemetry,
}

impl WorkerState {
    pub(crate) fn new(snapshot: Arc<Snapshot>, worker: usize, telemetry: WorkerTelemetry) -> WorkerState {
        let mut state = WorkerState {
            snapshot: Rc::new(snapshot.clone()),
            services: Vec::new(),
            rng: SmallRng::seed_from_u64(0x5745_4952 ^ worker as u64),
            worker,
            bufs: Vec::new(),
            heads: Vec::new(),
            telemetry,
        };
        state.rebuild(snapshot);
        state
    }

    /// The snapshot requests are routed on now.
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Moves to `latest` if it is newer. Cheap when nothing changed (one generation compare).
    pub(crate) fn update(&mut self, latest: &arc_swap::ArcSwap<Snapshot>) {
        let current = latest.load();
        if current.generation != self.snapshot.generation {
            self.rebuild(arc_swap::Guard::into_inner(current));
        }
    }

    fn rebuild(&mut self, snapshot: Arc<Snapshot>) {
        let workers = snapshot.workers.max(1) as u32;
        // The previous states, index-aligned with the previous snapshot.
        let mut old: Vec<Option<ServiceState>> = std::mem::take(&mut self.services).into_iter().map(Some).collect();
        let old_snapshot = std::mem::replace(&mut self.snapshot, Rc::new(snapshot));
        let snapshot = self.snapshot.clone();
        self.services.reserve(snapshot.services.len());
        for (i, (cfg, svc)) in snapshot.config.services.iter().zip(&snapshot.services).enumerate() {
            // The same position first (no hashing: the common case), then by name.
            let j = match old_snapshot.config.services.get(i) {
                Some(o) if Arc::ptr_eq(o, cfg) || o.name == cfg.name => Some(i),
                _ => old_snapshot.service_index(&cfg.name),
            };
            let previous = j.and_then(|j| Some((j, old.get_mut(j)?.take()?)));
            let state = match previous {
                // Unchanged: kept exactly as it was.
                Some((j, prev)) if Arc::ptr_eq(&old_snapshot.services[j], svc) => prev,
                Some((j, prev)) => {
                    let prev_cfg = &old_snapshot.config.services[j];
                    let budget = if old_snapshot.services[j].budget == svc.budget {
                        prev.budget
                    } else {
                        RetryBudget::new(svc.budget, workers)
                    };
                    ServiceState {
                        active: prev.active.map(|mut a| Active::carried(cfg, prev.seed, prev_cfg, &mut a)),
                        budget,
                        // Requests in flight and open connections stay counted.
                        ..prev
                    }
                }
                None => ServiceState {
                    active: None,
                    seed: (self.worker as u64) << 32 ^ (i as u64) ^ snapshot.generation.rotate_left(17),
                    pending: 0,
                    budget: RetryBudget::new(svc.budget, workers),
                    stats: self.telemetry.shard.slot(&cfg.name),
                    gauge: Gauge::default(),
                },
            };
            self.services.push(state);
        }
        // Services that are gone: their idle connections close now, and their stats slot is
        // given back (nothing counts into it any more: a request still in flight for a
        // removed service finds no state for it).
        for gone in old.into_iter().flatten() {
            self.telemetry.shard.release(gone.stats);
        }
    }

    /// A request's scope for service `index` of the current snapshot.
    pub(crate) fn scope(&self, index: usize) -> Scope {
        Scope { snapshot: self.snapshot.clone(), index }
    }

    /// Index of `scope`'s service in the current snapshot: its own while the snapshot is the
    /// same (the common case, no lookup), else found by name (`None` when a reload removed it).
    fn current_index(&self, scope: &Scope) -> Option<usize> {
        if Rc::ptr_eq(&scope.snapshot, &self.snapshot) {
            Some(scope.index)
        } else {
            self.snapshot.service_index(scope.name())
        }
    }

    /// The current state of `scope`'s service.
    fn service_mut(&mut self, scope: &Scope) -> Option<&mut ServiceState> {
        let i = self.current_index(scope)?;
        self.services.get_mut(i)
    }

    /// `scope`'s stats on this worker.
    pub(crate) fn stats(&mut self, scope: &Scope) -> Option<&mut ServiceStats> {
        let slot = self.service_mut(scope)?.stats;
        Some(self.telemetry.shard.service_mut(slot))
    }

    /// Admits a request to `scope` unless its pending limit is reached.
    pub(crate) fn admit(&mut self, scope: &Scope) -> bool {
        let max = scope.service().max_pending_per_worker;
        match self.service_mut(scope) {
            Some(s) if s.pending < max => {
                s.pending += 1;
                true
            }
            _ => false,
        }
    }

    /// A request admitted by [`WorkerState::admit`] finished.
    pub(crate) fn release(&mut self, scope: &Scope) {
        if let Some(s) = self.service_mut(scope) {
            s.pending = s.pending.saturating_sub(1);
        }
    }

    /// Deposits an original request into `scope`'s retry budget.
    pub(crate) fn record_request(&mut self, scope: &Scope, now: Instant) {
        if let Some(s) = self.service_mut(scope) {
            s.budget.record_request(now);
        }
    }

    /// The gauge an upstream connection of `scope` is counted in.
    pub(crate) fn gauge(&mut self, scope: &Scope) -> Gauge {
        self.service_mut(scope).map(|s| s.gauge.clone()).unwrap_or_default()
    }

    /// Picks an endpoint of `scope` for the next attempt: one the request has not tried yet
    /// when one is eligible, else any eligible one other than the last tried, else the last
    /// tried. An endpoint on probation admits one request at a time across all cores. `None`:
    /// no endpoint may be used now.
    pub(crate) fn pick(&mut self, scope: &Scope, tried: &Tried, now: Instant, now_ms: u64) -> Option<Picked> {
        let index = self.current_index(scope)?;
        let snapshot = self.snapshot.clone();
        let cfg = snapshot.config.services.get(index)?;
        let health = &*snapshot.services[index].health;
        let eligibility = health.eligibility();
        let avoid = tried.last().and_then(|a| cfg.endpoints.iter().position(|e| e.addr == a));
        let service = self.services.get_mut(index)?;
        let seed = service.seed;
        let state = service.active.get_or_insert_with(|| Active::new(cfg, seed, now));
        state.last_pick = now;
        let mut excluded: Option<usize> = None;
        for _ in 0..3 {
            let usable = |i: usize| Some(i) != excluded && (eligibility.panic || health.is_eligible(i, now_ms));
            let fresh = |i: usize| usable(i) && !tried.contains(cfg.endpoints[i].addr);
            let chosen = match state.balancer.pick(now, fresh, avoid) {
                Some(i) => i,
                None => state.balancer.pick(now, usable, avoid)?,
            };
            if eligibility.panic || health.try_claim(chosen, now_ms) {
                state.balancer.on_start(chosen);
                return Some(Picked {
                    index: chosen,
                    addr: cfg.endpoints[chosen].addr,
                    panic: eligibility.panic,
                    generation: snapshot.generation,
                });
            }
            excluded = Some(chosen);
        }
        None
    }

    /// The keep-alive race retry: the same endpoint again, for a fresh connection.
    pub(crate) fn repick(&mut self, scope: &Scope, addr: SocketAddr) -> Option<Picked> {
        let i = self.current_index(scope)?;
        let snapshot = self.snapshot.clone();
        let index = snapshot.config.services[i].endpoints.iter().position(|e| e.addr == addr)?;
        self.services.get_mut(i)?.active.as_mut()?.balancer.on_start(index);
        Some(Picked { index, addr, panic: false, generation: snapshot.generation })
    }

    /// An idle pooled connection to `picked`, if one is fit for reuse.
    pub(crate) fn take_pooled(&mut self, scope: &Scope, picked: &Picked, now: Instant) -> Option<UpConn> {
        if self.snapshot.generation != picked.generation {
            return None;
        }
        let max_idle = scope.config().timeouts.upstream_idle;
        self.service_mut(scope)?.active.as_mut()?.pools.get_mut(picked.index)?.take(now, max_idle)
    }

    /// A handle on an HTTP/2 connection to `picked` with room for one more stream.
    pub(crate) fn take_h2(&mut self, scope: &Scope, picked: &Picked, now: Instant) -> Option<Lease> {
        if self.snapshot.generation != picked.generation {
            return None;
        }
        self.service_mut(scope)?.active.as_mut()?.h2.get_mut(picked.index)?.take(now)
    }

    /// Adds a new HTTP/2 connection to `picked`'s pool and returns a handle on it (the
    /// connection is dropped, and the handle is the only one, when the endpoint is gone).
    pub(crate) fn put_h2(&mut self, scope: &Scope, picked: &Picked, conn: H2Conn, now: Instant) -> Option<Lease> {
        let same = self.snapshot.generation == picked.generation;
        let pool = self.service_mut(scope).and_then(|s| s.active.as_mut()?.h2.get_mut(picked.index)).filter(|_| same);
        match pool {
            Some(pool) => {
                pool.put(conn);
                pool.take(now)
            }
            None => Some(conn.lease()),
        }
    }

    /// Returns a connection whose exchange completed cleanly to `picked`'s pool (dropped, and
    /// so closed, when the endpoint is gone).
    pub(crate) fn put_pooled(&mut self, scope: &Scope, picked: &Picked, up: UpConn, now: Instant) {
        if self.snapshot.generation != picked.generation {
            return;
        }
        let cap = scope.service().max_idle_per_endpoint;
        if let Some(pool) = self.service_mut(scope).and_then(|s| s.active.as_mut()?.pools.get_mut(picked.index)) {
            pool.put(up, now, cap);
        }
    }

    /// Reports an attempt: balancer load and latency (`latency` to the response head; `None`
    /// when there was no response), then what the outcome says about the endpoint's health.
    pub(crate) fn report(
        &mut self,
        scope: &Scope,
        picked: &Picked,
        outcome: &Outcome,
        latency: Option<Duration>,
        now: Instant,
        now_ms: u64,
    ) {
        if self.snapshot.generation == picked.generation
            && let Some(a) = self.service_mut(scope).and_then(|s| s.active.as_mut())
        {
            match latency {
                Some(l) => a.balancer.on_finish(picked.index, l, now),
                None => a.balancer.on_cancel(picked.index),
            }
        }
        if *outcome == Outcome::LocalResource {
            self.telemetry.local_connect_error(scope.name(), picked.addr, now);
        }
        self.report_health(scope, picked, outcome, now_ms);
    }

    /// Records what an outcome says about the endpoint's health only (no balancer accounting):
    /// for a failure found after the attempt was reported (a response cut mid-body).
    pub(crate) fn report_health(&mut self, scope: &Scope, picked: &Picked, outcome: &Outcome, now_ms: u64) {
        let Some(i) = self.current_index(scope) else { return };
        let snapshot = self.snapshot.clone();
        let health = &*snapshot.services[i].health;
        // Health state is keyed by address: find the endpoint's index in the current snapshot.
        let index = if snapshot.generation == picked.generation {
            picked.index
        } else {
            match health.addresses().iter().position(|a| *a == picked.addr) {
                Some(j) => j,
                None => return,
            }
        };
        let event = health.record(index, HealthSignal::from(outcome), now_ms, &mut self.rng);
        if let Some(OutlierEvent::Ejected(e)) = event {
            tracing::warn!(
                service = %scope.name(),
                endpoint = %picked.addr,
                seconds = e.duration_ms / 1000,
                times = e.times_ejected,
                "endpoint ejected"
            );
            if let Some(stats) = self.stats(scope) {
                stats.ejections += 1;
            }
        }
    }

    /// What follows an attempt ([`weir_core::retry::next_step`]), with this worker's budget and
    /// RNG; counts a retry the budget refused.
    pub(crate) fn next_step(
        &mut self,
        scope: &Scope,
        attempted: &Attempted,
        time_left: Duration,
        now: Instant,
    ) -> Next {
        let policy = &scope.service().retry;
        let Some(i) = self.current_index(scope) else {
            // The service is gone: no retry (it would have nowhere to go).
            let last = Attempted { attempt: policy.attempts, ..*attempted };
            let mut unused = RetryBudget::new(scope.service().budget, 1);
            return weir_core::retry::next_step(policy, &last, time_left, &mut unused, now, &mut self.rng);
        };
        let s = &mut self.services[i];
        let next = weir_core::retry::next_step(policy, attempted, time_left, &mut s.budget, now, &mut self.rng);
        if next.budget_exhausted
            && let Some(stats) = self.stats(scope)
        {
            stats.budget_exhausted += 1;
        }
        next
    }

    /// Once a second: closes pooled connections idle past their service's timeout, gives back
    /// the balancer and pools of services unused for [`IDLE_RELEASE`], and copies the
    /// upstream-connection gauges into the stats shard.
    pub(crate) fn housekeeping(&mut self, now: Instant) {
        let snapshot = self.snapshot.clone();
        for (s, cfg) in self.services.iter_mut().zip(&snapshot.config.services) {
            if let Some(a) = &mut s.active {
                let mut pooled = 0;
                for pool in &mut a.pools {
                    pool.expire(now, cfg.timeouts.upstream_idle);
                    pooled += pool.len();
                }
                for pool in &mut a.h2 {
                    pooled += pool.expire(now, cfg.timeouts.upstream_idle);
                }
                if pooled == 0 && s.pending == 0 && now.saturating_duration_since(a.last_pick) >= IDLE_RELEASE {
                    s.active = None;
                }
            }
            self.telemetry.shard.set_upstream_connections(s.stats, s.gauge.get());
        }
    }

    /// An empty buffer from the worker's pool (or a new one).
    pub(crate) fn take_buf(&mut self) -> Vec<u8> {
        self.bufs.pop().unwrap_or_else(|| Vec::with_capacity(NEW_BUF_BYTES))
    }

    /// Returns a buffer to the pool.
    pub(crate) fn put_buf(&mut self, mut buf: Vec<u8>) {
        if self.bufs.len() < MAX_POOLED_BUFS && buf.capacity() <= MAX_POOLED_BUF_BYTES && buf.capacity() > 0 {
            buf.clear();
            self.bufs.push(buf);
        }
    }

    /// A response head from the worker's pool (or a new one); its contents are stale until
    /// the next parse, which resets it.
    pub(crate) fn take_head(&mut self) -> ResponseHead {
        self.heads.pop().unwrap_or_default()
    }

    /// Returns a response head to the pool.
    pub(crate) fn put_head(&mut self, head: ResponseHead) {
        if self.heads.len() < MAX_POOLED_HEADS && head.headers.capacity() <= MAX_POOLED_HEAD_FIELDS {
            self.heads.push(head);
        }
    }
}

#[cfg(test)]
mod tests;
