//! Choosing an endpoint and reporting what happened to an attempt on it: the one place where
//! the balancer, outlier detection (eligibility, probation claims, ejections) and the
//! per-service pending counts meet, for both HTTP and TCP. Must not: do request I/O (callers
//! connect and exchange), or hold a `RefCell` borrow across an `.await`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir_core::outcome::Outcome;
use weir_core::outlier::{HealthSignal, OutlierEvent};

use crate::io::{Conn, ConnectOptions};
use crate::local::ServiceRef;
use crate::worker::Worker;

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
    pub fn add(&mut self, addr: SocketAddr) {
        if !self.contains(addr) && self.len < self.addrs.len() {
            self.addrs[self.len] = Some(addr);
            self.len += 1;
        }
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        self.addrs[..self.len].contains(&Some(addr))
    }

    /// The most recently tried endpoint.
    pub fn last(&self) -> Option<SocketAddr> {
        self.len.checked_sub(1).and_then(|i| self.addrs[i])
    }
}

/// Picks an endpoint of `svc` for the next attempt: one the request has not tried yet when
/// one is eligible, else any eligible one other than the last tried, else the last tried.
/// `None`: the service has no endpoint that may be used now.
///
/// Borrows the snapshot rather than cloning its `Arc`: a refcount touched per request would be
/// a cache line shared by every core.
pub(crate) fn pick(worker: &Worker, svc: &ServiceRef, tried: &Tried, now: Instant) -> Option<Picked> {
    let now_ms = worker.shared.now_ms();
    let mut guard = worker.local.borrow_mut();
    guard.refresh(worker);
    let local = &mut *guard;
    let snapshot = &*local.snapshot;
    let index = snapshot.service_index_fast(svc)?;
    let cfg = &snapshot.config.services[index];
    let health = &*snapshot.services[index].health;
    let eligibility = health.eligibility();
    let avoid = tried.last().and_then(|a| cfg.endpoints.iter().position(|e| e.addr == a));
    let ls = local.services.get_mut(index)?;
    let mut excluded: Option<usize> = None;
    for _ in 0..3 {
        let usable = |i: usize| Some(i) != excluded && (eligibility.panic || health.is_eligible(i, now_ms));
        let fresh = |i: usize| usable(i) && !tried.contains(cfg.endpoints[i].addr);
        let chosen = match ls.balancer.pick(now, fresh, avoid) {
            Some(i) => i,
            None => ls.balancer.pick(now, usable, avoid)?,
        };
        // An endpoint on probation admits one request at a time across all cores.
        if eligibility.panic || health.try_claim(chosen, now_ms) {
            ls.balancer.on_start(chosen);
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

/// Opens a new connection to `addr`, marked so that steering never redirects it.
pub(crate) async fn connect(worker: &Worker, addr: SocketAddr, timeout: Duration) -> Result<Conn, Outcome> {
    // Marked only when steering is on: the mark is what keeps the connect hooks off weir's own
    // sockets, and setting it needs CAP_NET_ADMIN, which weir drops when it has no use for it.
    let mark = {
        let local = worker.local.borrow();
        let s = &local.snapshot.config.steering;
        if s.enabled && !s.cgroups.is_empty() { s.own_mark } else { 0 }
    };
    match Conn::connect(addr, ConnectOptions { mark }, timeout).await {
        Ok(c) => Ok(c),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(Outcome::ConnectTimeout),
        Err(_) => Err(Outcome::ConnectFailure),
    }
}

/// Reports an attempt's outcome: balancer load and latency, outlier detection, and stats for
/// any ejection this caused. `latency` is the time to the response head (None when there was
/// no response).
pub(crate) fn report(worker: &Worker, svc: &ServiceRef, picked: &Picked, outcome: &Outcome, latency: Option<Duration>) {
    let mut guard = worker.local.borrow_mut();
    let local = &mut *guard;
    if local.snapshot.generation == picked.generation
        && let Some(ls) = local.resolve(svc)
    {
        match latency {
            Some(l) => ls.balancer.on_finish(picked.index, l, Instant::now()),
            None => ls.balancer.on_cancel(picked.index),
        }
    }
    record_health(worker, local, svc, picked, outcome);
}

/// Reports what an outcome says about the endpoint's health only (no balancer accounting):
/// for a failure found after the attempt was already reported (a response cut mid-body).
pub(crate) fn report_health(worker: &Worker, svc: &ServiceRef, picked: &Picked, outcome: &Outcome) {
    let mut guard = worker.local.borrow_mut();
    record_health(worker, &mut guard, svc, picked, outcome);
}

fn record_health(
    worker: &Worker,
    local: &mut crate::local::Local,
    svc: &ServiceRef,
    picked: &Picked,
    outcome: &Outcome,
) {
    let Some(i) = local.snapshot.service_index_fast(svc) else { return };
    let health = &*local.snapshot.services[i].health;
    // Health state is keyed by address: find the endpoint's index in the current snapshot.
    let index = if local.snapshot.generation == picked.generation {
        picked.index
    } else {
        match health.addresses().iter().position(|a| *a == picked.addr) {
            Some(j) => j,
            None => return,
        }
    };
    let event = health.record(index, HealthSignal::from(outcome), worker.shared.now_ms(), &mut local.rng);
    if let Some(OutlierEvent::Ejected(e)) = event {
        tracing::warn!(
            service = %svc.name,
            endpoint = %picked.addr,
            seconds = e.duration_ms / 1000,
            times = e.times_ejected,
            "endpoint ejected"
        );
        if let Some(ls) = local.resolve(svc) {
            let slot = ls.stats;
            worker.telemetry.borrow_mut().shard.service_mut(slot).ejections += 1;
        }
    }
}
