//! One worker's own per-service state: balancers, upstream pools, pending-request counts,
//! retry budgets and stats slots, rebuilt from each new snapshot (pools and latency estimates
//! carried over by endpoint address). Owns routing a connection or request to a service.
//! Must not: be touched by another thread, or be borrowed across an `.await` (it lives in a
//! `RefCell` inside the worker).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use weir_core::balance::Balancer;
use weir_core::config::{Protocol, ServiceConfig};
use weir_core::retry::{BudgetPolicy, RetryBudget};

use crate::pool::Pool;
use crate::snapshot::Snapshot;
use crate::worker::Worker;

/// Per-service state on one worker.
#[derive(Debug)]
pub(crate) struct LocalService {
    pub name: Arc<str>,
    pub balancer: Balancer,
    /// Idle connections per endpoint (index-aligned with the service's endpoints).
    pub pools: Vec<Pool>,
    /// Requests in flight on this worker.
    pub pending: u32,
    /// This worker's share of `max_pending_requests`.
    pub max_pending: u32,
    pub budget: RetryBudget,
    /// Slot in the worker's stats shard.
    pub stats: usize,
}

/// A worker's view of the active snapshot.
#[derive(Debug)]
pub(crate) struct Local {
    pub snapshot: Arc<Snapshot>,
    pub services: Vec<LocalService>,
    pub rng: SmallRng,
    worker: usize,
}

/// How a new downstream connection is handled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnRoute {
    pub protocol: Protocol,
    /// The service address the client dialed (steered VIP or a service's own listener), if any.
    pub dialed: Option<SocketAddr>,
    /// The connection was steered/dialed to an address that no longer names a service.
    pub unknown: bool,
}

/// Identifies a service slot across snapshot changes.
#[derive(Debug, Clone)]
pub(crate) struct ServiceRef {
    pub generation: u64,
    pub index: usize,
    pub name: Arc<str>,
}

fn budget_policy(s: &ServiceConfig) -> BudgetPolicy {
    BudgetPolicy {
        enabled: s.retry.budget,
        ratio: s.retry.budget_ratio,
        min_retries_per_sec: s.retry.budget_min_per_sec,
    }
}

impl Local {
    pub fn new(snapshot: Arc<Snapshot>, worker: usize) -> Local {
        let mut local = Local {
            services: Vec::new(),
            rng: SmallRng::seed_from_u64(0x5745_4952 ^ worker as u64),
            worker,
            snapshot: snapshot.clone(),
        };
        local.rebuild(snapshot, None);
        local
    }

    /// Picks up a newer published snapshot, if any. Cheap when nothing changed.
    pub fn refresh(&mut self, worker: &Worker) {
        let current = worker.shared.snapshot.load();
        if current.generation != self.snapshot.generation {
            let snapshot = arc_swap::Guard::into_inner(current);
            self.rebuild(snapshot, Some(worker));
        }
    }

    fn rebuild(&mut self, snapshot: Arc<Snapshot>, worker: Option<&Worker>) {
        let workers = snapshot.workers.max(1) as u32;
        let mut old: Vec<LocalService> = std::mem::take(&mut self.services);
        let old_snapshot = self.snapshot.clone();
        for (i, s) in snapshot.config.services.iter().enumerate() {
            let weights: Vec<u32> = s.endpoints.iter().map(|e| e.weight).collect();
            let seed = (self.worker as u64) << 32 | i as u64;
            let mut balancer = Balancer::new(s.lb, &weights, seed ^ snapshot.generation);
            let stats = match worker {
                Some(w) => w.telemetry.borrow_mut().shard.slot(&s.name),
                None => 0,
            };
            let mut pools: Vec<Pool> = (0..s.endpoints.len()).map(|_| Pool::default()).collect();
            let mut pending = 0;
            let mut budget = RetryBudget::new(budget_policy(s), workers);
            if let Some(pos) = old.iter().position(|o| *o.name == *s.name) {
                let mut prev = old.swap_remove(pos);
                let prev_cfg = old_snapshot.config.service(&s.name);
                if let Some(prev_cfg) = prev_cfg {
                    balancer.carry_latency_from(&prev.balancer, |new_i| {
                        prev_cfg.endpoints.iter().position(|e| e.addr == s.endpoints[new_i].addr)
                    });
                    for (j, e) in prev_cfg.endpoints.iter().enumerate() {
                        if let Some(k) = s.endpoints.iter().position(|n| n.addr == e.addr) {
                            pools[k] = std::mem::take(&mut prev.pools[j]);
                        }
                    }
                }
                pending = prev.pending;
                if budget_policy(s) == budget_policy_of(&old_snapshot, &s.name) {
                    budget = prev.budget;
                }
                // Pools of endpoints that are gone are dropped with `prev`: idle connections
                // to removed endpoints close at once.
            }
            self.services.push(LocalService {
                name: Arc::from(s.name.as_str()),
                balancer,
                pools,
                pending,
                max_pending: s.limits.max_pending_requests.div_ceil(workers).max(1),
                budget,
                stats,
            });
        }
        self.snapshot = snapshot;
    }

    /// Creates stats slots for the current services (called once the worker exists).
    pub fn bind_stats(&mut self, worker: &Worker) {
        let mut t = worker.telemetry.borrow_mut();
        for (svc, cfg) in self.services.iter_mut().zip(&self.snapshot.config.services) {
            svc.stats = t.shard.slot(&cfg.name);
        }
    }

    /// Decides how a new connection is served. `dialed` is the steered original destination.
    pub fn route_for_connection(
        &mut self,
        worker: &Worker,
        dialed: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> ConnRoute {
        self.refresh(worker);
        // A connection to a service's own listener is for that service.
        let dialed = dialed.or_else(|| local.filter(|l| *l != self.snapshot.config.proxy.listen));
        match dialed {
            None => ConnRoute { protocol: Protocol::Http, dialed: None, unknown: false },
            Some(d) => match self.snapshot.by_vip(d) {
                Some(i) => {
                    ConnRoute { protocol: self.snapshot.config.services[i].protocol, dialed: Some(d), unknown: false }
                }
                None => ConnRoute { protocol: Protocol::Http, dialed: Some(d), unknown: true },
            },
        }
    }

    /// The service for one HTTP request: the dialed VIP if the connection was steered, else the
    /// Host header.
    pub fn route_request(&self, dialed: Option<SocketAddr>, host: Option<&[u8]>) -> Option<usize> {
        match dialed {
            Some(d) => self.snapshot.by_vip(d),
            None => host.and_then(|h| self.snapshot.by_host(h)),
        }
    }

    /// A handle to service `index` of the current snapshot.
    pub fn service_ref(&self, index: usize) -> ServiceRef {
        ServiceRef { generation: self.snapshot.generation, index, name: self.services[index].name.clone() }
    }

    /// The current slot of a service, following it across snapshot changes by name.
    pub fn resolve(&mut self, r: &ServiceRef) -> Option<&mut LocalService> {
        if r.generation == self.snapshot.generation {
            return self.services.get_mut(r.index);
        }
        self.services.iter_mut().find(|s| s.name == r.name)
    }

    /// Closes pooled connections idle past their service's timeout.
    pub fn housekeeping(&mut self, worker: &Worker, now: Instant) {
        self.refresh(worker);
        for (svc, cfg) in self.services.iter_mut().zip(&self.snapshot.config.services) {
            for pool in &mut svc.pools {
                pool.expire(now, cfg.timeouts.upstream_idle);
            }
        }
    }
}

fn budget_policy_of(snapshot: &Snapshot, name: &str) -> BudgetPolicy {
    snapshot.config.service(name).map(budget_policy).unwrap_or_default()
}
