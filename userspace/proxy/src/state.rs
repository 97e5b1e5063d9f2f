//! One worker's own mutable state, knowing nothing of the worker thread: per service its
//! balancers and idle pools (one set per backend), its routes' split positions and regex
//! caches, pending count, retry budget, rate-limit tokens, stats slot and upstream-connection
//! gauge; the worker's RNG, buffer and head pools, and its telemetry outputs. Owns: routing a
//! request within its service, picking an endpoint and recording what an attempt says about
//! it (`state/active.rs`).
//!
//! A service costs little until it is used on this worker: its balancers, pools and route
//! state ([`Active`]) are built on its first request and dropped again after [`IDLE_RELEASE`]
//! without requests, once nothing is pooled or in flight. A new snapshot is applied
//! incrementally: a service whose derived state the snapshot kept (the same `Arc<Service>`)
//! keeps its state untouched; a changed one is rebuilt with its pools, latency estimates,
//! budget and gauge carried over by backend name and endpoint address.
//! Must not: do I/O (beyond closing pooled sockets it drops), be shared between threads, or be
//! borrowed across an `.await` (it lives in a `RefCell`; clippy denies holding the borrow).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weir_core::config::ServiceConfig;
use weir_core::ratelimit::{Caller, Limited, LocalTokens, RateLimit};
use weir_core::retry::{Attempted, Next, RetryBudget, RetryPolicy};
use weir_core::stats::ServiceStats;

use crate::http::ResponseHead;
use crate::pool::Gauge;
use crate::snapshot::{Backend, Route, Service, Snapshot};
use crate::telemetry::WorkerTelemetry;

mod active;
pub(crate) use active::{Active, IDLE_RELEASE};

/// A request's service, resolved once: the snapshot it was routed on, the service's index
/// there, and once routed ([`WorkerState::route`]) its route and backend. Cheap to clone (a
/// thread-local reference count, never the shared `Arc`'s).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    #[expect(clippy::redundant_allocation, reason = "clones bump a thread-local count, not the Arc's atomic one")]
    snapshot: Rc<Arc<Snapshot>>,
    index: usize,
    /// The route taken; [`NOT_ROUTED`] before routing (the service's first route applies).
    route: u16,
    backend: u16,
}

/// A scope's route before the request is routed.
const NOT_ROUTED: u16 = u16::MAX;

impl Scope {
    /// The service's derived state (policies, backends, routes).
    pub(crate) fn service(&self) -> &Service {
        &self.snapshot.services[self.index]
    }

    /// The route the request takes (the service's first before routing: for a service
    /// without routes, the one that matches everything).
    pub(crate) fn route(&self) -> &Route {
        let routes = &self.service().routes;
        routes.get(usize::from(self.route)).unwrap_or(&routes[0])
    }

    /// The route's index, once the request was routed on a service with routes.
    pub(crate) fn route_index(&self) -> Option<u16> {
        (self.route != NOT_ROUTED && self.service().routed).then_some(self.route)
    }

    /// The backend the request goes to.
    pub(crate) fn backend(&self) -> &Backend {
        &self.service().backends[usize::from(self.backend)]
    }

    /// The retry policy in force (the route's).
    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.route().retry
    }

    /// The whole-request timeout in force (the route's).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.route().request_timeout
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
    /// Index of its backend in the service of the snapshot `generation`.
    pub backend: usize,
    /// Index in the backend's endpoint list of the snapshot `generation`.
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

    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        self.addrs[..self.len].contains(&Some(addr))
    }

    /// The most recently tried endpoint.
    pub(crate) fn last(&self) -> Option<SocketAddr> {
        self.len.checked_sub(1).and_then(|i| self.addrs[i])
    }
}

/// Per-service state on one worker.
#[derive(Debug)]
pub(crate) struct ServiceState {
    /// Balancers, pools and route state, while the service is in use here.
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
    /// Tokens drawn from the service's rate limit (and which limit they came from).
    tokens: Option<(Arc<RateLimit>, LocalTokens)>,
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
                    let budget = if old_snapshot.services[j].budget == svc.budget {
                        prev.budget
                    } else {
                        RetryBudget::new(svc.budget, workers)
                    };
                    let prev_svc = &old_snapshot.services[j];
                    ServiceState {
                        active: prev.active.map(|a| Active::carried(cfg, svc, prev.seed, prev_svc, *a)),
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
                    tokens: None,
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

    /// A request's scope for service `index` of the current snapshot (not routed yet).
    pub(crate) fn scope(&self, index: usize) -> Scope {
        Scope { snapshot: self.snapshot.clone(), index, route: NOT_ROUTED, backend: 0 }
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

    /// Lets a request of `caller` through `scope`'s rate limit (when it has one), with this
    /// worker's tokens; `Err` says when the next one would pass.
    pub(crate) fn rate_limit(&mut self, scope: &Scope, caller: Caller, now_ns: u64) -> Result<(), Limited> {
        let Some(limit) = &scope.service().rate_limit else { return Ok(()) };
        let Some(s) = self.service_mut(scope) else { return Ok(()) };
        let tokens = match &mut s.tokens {
            Some((from, tokens)) if Arc::ptr_eq(from, limit) => tokens,
            slot => &mut slot.insert((limit.clone(), LocalTokens::new(limit))).1,
        };
        tokens.admit(limit, caller, now_ns)
    }

    /// Whether a request falls in `percent` (0..=100) of all, by this worker's RNG.
    pub(crate) fn roll(&mut self, percent: f64) -> bool {
        percent > 0.0 && self.rng.random::<f64>() * 100.0 < percent
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

    /// What follows an attempt ([`weir_core::retry::next_step`]), with this worker's budget and
    /// RNG; counts a retry the budget refused.
    pub(crate) fn next_step(
        &mut self,
        scope: &Scope,
        attempted: &Attempted,
        time_left: Duration,
        now: Instant,
    ) -> Next {
        let policy = scope.retry();
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
    /// the balancers, pools and route state of services unused for [`IDLE_RELEASE`], and
    /// copies the upstream-connection gauges into the stats shard.
    pub(crate) fn housekeeping(&mut self, now: Instant) {
        let snapshot = self.snapshot.clone();
        for (s, cfg) in self.services.iter_mut().zip(&snapshot.config.services) {
            if let Some(a) = &mut s.active {
                let pooled = a.expire(now, cfg.timeouts.upstream_idle);
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
