//! A service's state on a worker while it is in use ([`Active`]): per backend a balancer and
//! idle pools, per route its split position and regex cache; and what uses them: routing a
//! request within its service, picking an endpoint of its backend, pooled connections, and
//! recording what an attempt says about an endpoint.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use weir_core::balance::Balancer;
use weir_core::config::ServiceConfig;
use weir_core::outcome::Outcome;
use weir_core::outlier::{HealthSignal, OutlierEvent};
use weir_core::route::{RegexCache, RouteInput, smooth_pick};

use super::{Picked, Scope, Tried, WorkerState};
use crate::pool::{H2Conn, H2Pool, Lease, Pool, UpConn};
use crate::snapshot::{Backend, Service};

/// A service unused this long on a worker (nothing pooled, nothing in flight) gives its
/// balancers, pools and route state back.
pub(crate) const IDLE_RELEASE: Duration = Duration::from_secs(600);

/// A service's state that exists only while it is in use on this worker.
#[derive(Debug)]
pub(crate) struct Active {
    /// Per backend (index-aligned with the service's backends).
    pub(super) backends: Vec<BackendActive>,
    /// Per route: the split's smooth weighted round robin state (index-aligned with weights).
    splits: Vec<Box<[i64]>>,
    /// Per route: the search cache of its regex, if it has one.
    regex: Vec<RegexCache>,
    /// When a request last picked an endpoint.
    pub(super) last_pick: Instant,
}

/// One backend's balancer and pools on this worker.
#[derive(Debug)]
pub(crate) struct BackendActive {
    pub(super) balancer: Balancer,
    /// Idle connections per endpoint (index-aligned with the backend's endpoints).
    pools: Vec<Pool>,
    /// HTTP/2 connections per endpoint (HTTP/2 and gRPC services; empty otherwise).
    h2: Vec<H2Pool>,
}

impl BackendActive {
    fn new(cfg: &ServiceConfig, b: &Backend, seed: u64) -> BackendActive {
        let weights: Vec<u32> = b.endpoints.iter().map(|e| e.weight).collect();
        let h2 = if cfg.protocol.upstream_h2() { b.endpoints.len() } else { 0 };
        BackendActive {
            balancer: Balancer::new(cfg.lb, &weights, seed),
            pools: (0..b.endpoints.len()).map(|_| Pool::default()).collect(),
            h2: (0..h2).map(|_| H2Pool::default()).collect(),
        }
    }

    /// A new state for `b` with what `prev` (for `prev_b`) knew, matched by address.
    fn carried(cfg: &ServiceConfig, b: &Backend, seed: u64, prev_b: &Backend, prev: &mut BackendActive) -> Self {
        let mut next = BackendActive::new(cfg, b, seed);
        next.balancer.carry_latency_from(&prev.balancer, |new_i| {
            prev_b.endpoints.iter().position(|e| e.addr == b.endpoints[new_i].addr)
        });
        for (k, e) in prev_b.endpoints.iter().enumerate() {
            if let Some(n) = b.endpoints.iter().position(|n| n.addr == e.addr) {
                next.pools[n] = std::mem::take(&mut prev.pools[k]);
                if let (Some(to), Some(from)) = (next.h2.get_mut(n), prev.h2.get_mut(k)) {
                    *to = std::mem::take(from);
                }
            }
        }
        next
    }
}

impl Active {
    pub(super) fn new(cfg: &ServiceConfig, svc: &Service, seed: u64, now: Instant) -> Box<Active> {
        Box::new(Active {
            backends: svc
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendActive::new(cfg, b, seed.rotate_left(i as u32 * 7)))
                .collect(),
            splits: svc.routes.iter().map(|r| vec![0; r.weights.len()].into()).collect(),
            regex: svc.routes.iter().map(|r| r.matcher.cache()).collect(),
            last_pick: now,
        })
    }

    /// A new state for `svc` with what `prev` (for `prev_svc`) knew: per backend (by name) its
    /// pools and latency estimates, matched by address. Split positions start again.
    pub(super) fn carried(
        cfg: &ServiceConfig,
        svc: &Service,
        seed: u64,
        prev_svc: &Service,
        mut prev: Active,
    ) -> Box<Active> {
        let mut next = Active::new(cfg, svc, seed, prev.last_pick);
        for (i, b) in svc.backends.iter().enumerate() {
            if let Some(k) = prev_svc.backends.iter().position(|p| p.name == b.name) {
                let seed = seed.rotate_left(i as u32 * 7);
                next.backends[i] = BackendActive::carried(cfg, b, seed, &prev_svc.backends[k], &mut prev.backends[k]);
            }
        }
        // Pools of endpoints that are gone close with `prev`.
        next
    }

    /// Closes pooled connections idle past `max_idle`; how many are still pooled.
    pub(super) fn expire(&mut self, now: Instant, max_idle: Duration) -> usize {
        let mut pooled = 0;
        for b in &mut self.backends {
            for pool in &mut b.pools {
                pool.expire(now, max_idle);
                pooled += pool.len();
            }
            for pool in &mut b.h2 {
                pooled += pool.expire(now, max_idle);
            }
        }
        pooled
    }
}

impl WorkerState {
    /// Routes a request of `scope`'s service: the first of its routes that matches `req`, and
    /// a backend of that route's split (smooth weighted, per worker). The scope returned
    /// carries both; `None` when no route matches. A service without routes takes its one.
    pub(crate) fn route(&mut self, scope: &Scope, req: &impl RouteInput, now: Instant) -> Option<Scope> {
        if !scope.service().routed {
            return Some(Scope { route: 0, backend: 0, ..scope.clone() });
        }
        let i = self.current_index(scope)?;
        let snapshot = self.snapshot.clone();
        let (svc, cfg) = (&snapshot.services[i], &snapshot.config.services[i]);
        let service = self.services.get_mut(i)?;
        let seed = service.seed;
        let state = service.active.get_or_insert_with(|| Active::new(cfg, svc, seed, now));
        for (r, route) in svc.routes.iter().enumerate() {
            if route.matcher.matches(req, &mut state.regex[r]) {
                let backend = smooth_pick(&route.weights, &mut state.splits[r])?;
                return Some(Scope {
                    snapshot: Rc::clone(&snapshot),
                    index: i,
                    route: r as u16,
                    backend: backend as u16,
                });
            }
        }
        None
    }

    /// Index of `scope`'s backend in the current snapshot's service `i` (by name when the
    /// snapshot changed since the request was routed).
    fn current_backend(&self, scope: &Scope, i: usize) -> Option<usize> {
        if Rc::ptr_eq(&scope.snapshot, &self.snapshot) {
            return Some(usize::from(scope.backend));
        }
        let name = &scope.backend().name;
        self.snapshot.services.get(i)?.backends.iter().position(|b| b.name == *name)
    }

    /// Picks an endpoint of `scope`'s backend for the next attempt: one the request has not
    /// tried yet when one is eligible, else any eligible one other than the last tried, else
    /// the last tried. An endpoint on probation admits one request at a time across all
    /// cores; one failing its health checks gets none, not even in panic mode. `None`: no
    /// endpoint may be used now.
    pub(crate) fn pick(&mut self, scope: &Scope, tried: &Tried, now: Instant, now_ms: u64) -> Option<Picked> {
        let index = self.current_index(scope)?;
        let b = self.current_backend(scope, index)?;
        let snapshot = self.snapshot.clone();
        let (svc, cfg) = (snapshot.services.get(index)?, snapshot.config.services.get(index)?);
        let backend = svc.backends.get(b)?;
        let health = &*backend.health;
        let eligibility = health.eligibility();
        let avoid = tried.last().and_then(|a| backend.endpoints.iter().position(|e| e.addr == a));
        let service = self.services.get_mut(index)?;
        let seed = service.seed;
        let state = service.active.get_or_insert_with(|| Active::new(cfg, svc, seed, now));
        state.last_pick = now;
        let balancer = &mut state.backends[b].balancer;
        let mut excluded: Option<usize> = None;
        for _ in 0..3 {
            let usable = |i: usize| {
                Some(i) != excluded
                    && if eligibility.panic { health.is_usable(i) } else { health.is_eligible(i, now_ms) }
            };
            let fresh = |i: usize| usable(i) && !tried.contains(backend.endpoints[i].addr);
            let chosen = match balancer.pick(now, fresh, avoid) {
                Some(i) => i,
                None => balancer.pick(now, usable, avoid)?,
            };
            if eligibility.panic || health.try_claim(chosen, now_ms) {
                balancer.on_start(chosen);
                return Some(Picked {
                    backend: b,
                    index: chosen,
                    addr: backend.endpoints[chosen].addr,
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
        let b = self.current_backend(scope, i)?;
        let snapshot = self.snapshot.clone();
        let index = snapshot.services[i].backends.get(b)?.endpoints.iter().position(|e| e.addr == addr)?;
        self.services.get_mut(i)?.active.as_mut()?.backends.get_mut(b)?.balancer.on_start(index);
        Some(Picked { backend: b, index, addr, panic: false, generation: snapshot.generation })
    }

    /// `picked`'s backend state, while the snapshot it was picked on is current.
    fn picked_mut(&mut self, scope: &Scope, picked: &Picked) -> Option<&mut BackendActive> {
        if self.snapshot.generation != picked.generation {
            return None;
        }
        self.service_mut(scope)?.active.as_mut()?.backends.get_mut(picked.backend)
    }

    /// An idle pooled connection to `picked`, if one is fit for reuse.
    pub(crate) fn take_pooled(&mut self, scope: &Scope, picked: &Picked, now: Instant) -> Option<UpConn> {
        let max_idle = scope.config().timeouts.upstream_idle;
        self.picked_mut(scope, picked)?.pools.get_mut(picked.index)?.take(now, max_idle)
    }

    /// A handle on an HTTP/2 connection to `picked` with room for one more stream.
    pub(crate) fn take_h2(&mut self, scope: &Scope, picked: &Picked, now: Instant) -> Option<Lease> {
        self.picked_mut(scope, picked)?.h2.get_mut(picked.index)?.take(now)
    }

    /// Adds a new HTTP/2 connection to `picked`'s pool and returns a handle on it (the
    /// connection is dropped, and the handle is the only one, when the endpoint is gone).
    pub(crate) fn put_h2(&mut self, scope: &Scope, picked: &Picked, conn: H2Conn, now: Instant) -> Option<Lease> {
        match self.picked_mut(scope, picked).and_then(|b| b.h2.get_mut(picked.index)) {
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
        let cap = scope.service().max_idle_per_endpoint;
        if let Some(pool) = self.picked_mut(scope, picked).and_then(|b| b.pools.get_mut(picked.index)) {
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
        if let Some(b) = self.picked_mut(scope, picked) {
            match latency {
                Some(l) => b.balancer.on_finish(picked.index, l, now),
                None => b.balancer.on_cancel(picked.index),
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
        // Health state is keyed by backend and address: find the endpoint in the current snapshot.
        let (b, index) = if snapshot.generation == picked.generation {
            (picked.backend, picked.index)
        } else {
            let Some(b) = self.current_backend(scope, i) else { return };
            match snapshot.services[i].backends[b].health.addresses().iter().position(|a| *a == picked.addr) {
                Some(j) => (b, j),
                None => return,
            }
        };
        let Some(backend) = snapshot.services[i].backends.get(b) else { return };
        let event = backend.health.record(index, HealthSignal::from(outcome), now_ms, &mut self.rng);
        if let Some(OutlierEvent::Ejected(e)) = event {
            tracing::warn!(
                service = %scope.name(),
                backend = %backend.name,
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
}
