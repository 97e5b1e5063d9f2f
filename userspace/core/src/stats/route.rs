//! RED per route and backend, inside a service's stats on one worker: requests by status,
//! weir's own errors by reason, the exact duration buckets, and the faults a route injected.
//! Only services with routes have them; an entry is made on the first request of its route and
//! backend on the worker (bounded by the config: routes × backends), and kept (its counters are
//! monotonic). Keyed by the route's index and the backend's name, which is what the labels say.

use std::sync::Arc;

use crate::outcome::ErrorReason;

use super::{DURATION_BUCKETS_SECONDS, RequestRecord, bucket_of, count};

/// A fault a route injected (the `kind` label of `weir_faults_injected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answered by weir with the route's `abort_status`.
    Abort,
    /// Held for the route's `delay_ms` before going on.
    Delay,
}

impl FaultKind {
    /// Every kind, in label order.
    pub const ALL: [FaultKind; 2] = [FaultKind::Abort, FaultKind::Delay];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FaultKind::Abort => "abort",
            FaultKind::Delay => "delay",
        }
    }
}

/// One route and backend's counters on one worker.
#[derive(Debug, Clone)]
pub struct RouteStats {
    /// The route's index in its service's `[[service.route]]` list.
    pub route: u16,
    /// The backend's name.
    pub backend: Arc<str>,
    /// Requests by status code (0 = none), codes seen only, sorted.
    codes: Vec<(u16, u64)>,
    /// Errors weir generated itself, by reason (index as in `ErrorReason::ALL`).
    pub errors: [u64; ErrorReason::ALL.len()],
    /// Exact duration bucket counts (non-cumulative) + the +Inf slot.
    pub buckets: [u64; DURATION_BUCKETS_SECONDS.len() + 1],
    /// Exact sum of durations, nanoseconds.
    pub duration_sum_ns: u128,
    /// Durations counted.
    pub duration_count: u64,
    /// Faults injected, by [`FaultKind`].
    pub faults: [u64; FaultKind::ALL.len()],
}

impl RouteStats {
    /// Nothing counted yet.
    pub fn new(route: u16, backend: Arc<str>) -> RouteStats {
        RouteStats {
            route,
            backend,
            codes: Vec::new(),
            errors: [0; ErrorReason::ALL.len()],
            buckets: [0; DURATION_BUCKETS_SECONDS.len() + 1],
            duration_sum_ns: 0,
            duration_count: 0,
            faults: [0; FaultKind::ALL.len()],
        }
    }

    /// Counts one finished request (allocates only for a status code not seen before).
    pub fn record(&mut self, r: &RequestRecord) {
        count(&mut self.codes, r.status.filter(|c| *c < 600).unwrap_or(0), 1);
        if let Some(e) = r.error {
            self.errors[super::reason_index(e)] += 1;
        }
        let ns = r.duration.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.buckets[bucket_of(ns)] += 1;
        self.duration_sum_ns += u128::from(ns);
        self.duration_count += 1;
    }

    /// Counts a fault injected.
    pub fn fault(&mut self, kind: FaultKind) {
        self.faults[kind as usize] += 1;
    }

    /// Requests by status code (0 = no status), codes seen only, in order.
    pub fn codes(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes.iter().copied()
    }

    /// Requests counted with `code`.
    pub fn code(&self, code: u16) -> u64 {
        self.codes.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n)
    }

    /// Adds `other` (the same route and backend on another worker).
    pub fn merge(&mut self, other: &RouteStats) {
        for &(code, n) in &other.codes {
            count(&mut self.codes, code, n);
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.duration_sum_ns += other.duration_sum_ns;
        self.duration_count += other.duration_count;
        for (a, b) in self.faults.iter_mut().zip(other.faults) {
            *a += b;
        }
    }

    /// Cumulative bucket counts paired with their upper bound (seconds), ending with +Inf.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        super::cumulative(&self.buckets)
    }

    /// Heap bytes (for the memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.codes.capacity() * std::mem::size_of::<(u16, u64)>()
    }
}

/// The entry of `route` and `backend` in `routes`, made on first use.
pub(super) fn entry<'a>(routes: &'a mut Vec<RouteStats>, route: u16, backend: &Arc<str>) -> &'a mut RouteStats {
    let found =
        routes.iter().position(|r| r.route == route && (Arc::ptr_eq(&r.backend, backend) || r.backend == *backend));
    let i = match found {
        Some(i) => i,
        None => {
            routes.push(RouteStats::new(route, backend.clone()));
            routes.len() - 1
        }
    };
    &mut routes[i]
}
