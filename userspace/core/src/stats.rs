//! RED stats (rate, errors, duration) per service, as one worker's single-writer shard.
//! Owns: what is counted per request, the duration histogram (exact Prometheus buckets for
//! `/metrics` plus an HDR histogram for percentiles, and an exact sum and count), publishing a
//! shard for the admin thread, and merging published shards for a scrape. Must not: be written
//! by more than one thread, or lock.
//!
//! Memory follows traffic, not the size of the table: a service's slot (its name) is created
//! when a snapshot introduces it, but its [`ServiceStats`] (about 400 bytes) only when it is
//! first counted on that worker, and its HDR histogram (about 21 KiB) on its first recorded
//! duration; a service idle for [`HDR_IDLE_PUBLISHES`] publications gives its histogram back
//! (its counters stay: they are monotonic while the service exists). A service that leaves
//! the snapshot gives its whole slot back ([`StatsShard::release`]) and the slot is reused, so a
//! table that churns (Kubernetes Services come and go) does not grow the shard. Publishing
//! copies only the services counted since the last publication; the others share their
//! previous copy.
//!
//! Requests are also counted per caller (`source`): per service, a [`SourceStats`] (codes,
//! exact buckets, and the trace id of a recent sampled request per bucket: an exemplar) for
//! each source slot that called it, made on the pair's first request. Slots are small numbers
//! ([`SourceSlot`]); which name a slot stands for is the binary's business, and never changes.
//!
//! The exact buckets exist beside the HDR histogram because HDR's 2-significant-digit
//! buckets straddle Prometheus bucket bounds: a 50.2 ms request must count in `le="0.1"`, not
//! in `le="0.05"`, and only an exact comparison guarantees it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::outcome::ErrorReason;

mod reasons;
mod route;
pub use reasons::{Http2Close, RetryReason};
pub use route::{FaultKind, RouteStats};

/// Upper bounds (seconds) of the `weir_request_duration_seconds` buckets: 100 µs to 30 s.
pub const DURATION_BUCKETS_SECONDS: [f64; 17] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const DURATION_BUCKETS_NS: [u64; 17] = {
    let mut out = [0u64; 17];
    let mut i = 0;
    while i < 17 {
        out[i] = (DURATION_BUCKETS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// Highest duration the HDR histogram tracks (larger values are clamped to it): 120 s.
const HDR_MAX_US: u64 = 120_000_000;

/// The `source` label value a request is counted under: [`SOURCE_DIRECT`], [`SOURCE_OTHER`], or
/// a named caller (2 and up).
pub type SourceSlot = u16;
/// Slot of connections weir did not steer (`source="direct"`).
pub const SOURCE_DIRECT: SourceSlot = 0;
/// Slot of every steered caller without a name of its own (`source="other"`).
pub const SOURCE_OTHER: SourceSlot = 1;

/// A sampled request that a duration bucket points to (an OpenMetrics exemplar).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exemplar {
    /// The request's trace id.
    pub trace_id: [u8; 16],
    /// Its duration, nanoseconds.
    pub duration_ns: u64,
    /// When it finished, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// What one finished request reports, whatever its protocol.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord {
    /// Status sent to the client; `None` when none was (TCP relay, client gone, response cut).
    pub status: Option<u16>,
    /// Why weir answered itself, if it did.
    pub error: Option<ErrorReason>,
    /// Time from the request head to the end of the response.
    pub duration: Duration,
    /// The request was balanced in panic mode (too few healthy endpoints).
    pub panic: bool,
    /// Who called.
    pub source: SourceSlot,
    /// The trace of a sampled request (its `duration_ns` is filled in by `record`).
    pub exemplar: Option<Exemplar>,
    /// gRPC: the call's final `grpc-status`.
    pub grpc: Option<u8>,
}

/// The bucket a duration falls in (index into the exact buckets; the last is +Inf).
fn bucket_of(ns: u64) -> usize {
    DURATION_BUCKETS_NS.iter().position(|&b| ns <= b).unwrap_or(DURATION_BUCKETS_NS.len())
}

const BUCKETS: usize = DURATION_BUCKETS_SECONDS.len() + 1;

/// One caller's counters for one service on one worker: the `source` label's share of
/// `weir_requests_total` and `weir_request_duration_seconds`.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    /// Requests by status code (0 = no status), codes seen only, sorted.
    codes: Vec<(u16, u64)>,
    /// Exact bucket counts (non-cumulative) + the +Inf slot.
    pub buckets: [u64; BUCKETS],
    /// Exact sum of durations, nanoseconds.
    pub duration_sum_ns: u128,
    /// Exact count of durations.
    pub duration_count: u64,
    /// Per bucket, the latest sampled request that fell in it (from the first one on).
    exemplars: Option<Box<[Option<Exemplar>; BUCKETS]>>,
}

impl SourceStats {
    fn record(&mut self, code: u16, slot: usize, ns: u64, exemplar: Option<Exemplar>) {
        count(&mut self.codes, code, 1);
        self.buckets[slot] += 1;
        self.duration_sum_ns += u128::from(ns);
        self.duration_count += 1;
        if let Some(e) = exemplar {
            self.exemplars.get_or_insert_with(Default::default)[slot] = Some(Exemplar { duration_ns: ns, ..e });
        }
    }

    fn merge(&mut self, other: &SourceStats) {
        for &(code, n) in &other.codes {
            count(&mut self.codes, code, n);
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.duration_sum_ns += other.duration_sum_ns;
        self.duration_count += other.duration_count;
        if let Some(theirs) = &other.exemplars {
            let mine = self.exemplars.get_or_insert_with(Default::default);
            for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                if let Some(b) = b
                    && a.is_none_or(|a| a.unix_ms < b.unix_ms)
                {
                    *a = Some(*b);
                }
            }
        }
    }

    /// Requests by status code (0 = no status), codes seen only, in order.
    pub fn codes(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes.iter().copied()
    }

    /// Adds `n` requests with status `code` (counters handed over by a takeover).
    pub fn add_code(&mut self, code: u16, n: u64) {
        count(&mut self.codes, code, n);
    }

    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.codes.iter().map(|(_, n)| n).sum()
    }

    /// Requests that failed: a 5xx, or no status at all (weir's own errors are 4xx/5xx with
    /// a status; a cut response or a client gone has none). TCP connections (code 0) count here
    /// only when asked to.
    pub fn failures(&self, no_status_fails: bool) -> u64 {
        self.codes.iter().filter(|(c, _)| *c >= 500 || (*c == 0 && no_status_fails)).map(|(_, n)| n).sum()
    }

    /// Cumulative bucket counts paired with their upper bound (seconds), ending with +Inf.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        cumulative(&self.buckets)
    }

    /// The exemplar of bucket `i` (index as in [`SourceStats::cumulative_buckets`]).
    pub fn exemplar(&self, i: usize) -> Option<&Exemplar> {
        self.exemplars.as_ref().and_then(|e| e.get(i)?.as_ref())
    }

    /// Duration at quantile `q` estimated from the exact buckets the way Prometheus'
    /// `histogram_quantile` does (linear within a bucket; the highest finite bound for +Inf);
    /// `None` when empty.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        let total = self.duration_count;
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for (i, n) in self.buckets.iter().enumerate() {
            let cum = below + n;
            if cum as f64 >= rank && *n > 0 {
                let Some(&upper) = DURATION_BUCKETS_SECONDS.get(i) else { return Some(lower) };
                return Some(lower + (upper - lower) * ((rank - below as f64) / *n as f64));
            }
            below = cum;
            lower = DURATION_BUCKETS_SECONDS.get(i).copied().unwrap_or(lower);
        }
        Some(lower)
    }

    fn heap_bytes(&self) -> usize {
        self.codes.capacity() * std::mem::size_of::<(u16, u64)>()
            + self.exemplars.as_ref().map_or(0, |_| std::mem::size_of::<[Option<Exemplar>; BUCKETS]>())
    }
}

/// A service idle for this many publications (seconds) releases its HDR histogram.
pub const HDR_IDLE_PUBLISHES: u32 = 600;

/// One service's counters on one worker.
#[derive(Debug, Clone)]
pub struct ServiceStats {
    /// Requests by status code (0 = no status: TCP or no response), only codes seen, sorted.
    codes: Vec<(u16, u64)>,
    /// gRPC calls by final `grpc-status`, only codes seen, sorted.
    grpc: Vec<(u8, u64)>,
    /// Errors weir generated itself, by [`ErrorReason`] (index as in `ErrorReason::ALL`).
    pub errors: [u64; ErrorReason::ALL.len()],
    /// Retries by [`RetryReason`].
    pub retries: [u64; RetryReason::ALL.len()],
    /// Retries refused because the budget was empty.
    pub budget_exhausted: u64,
    /// Endpoints ejected by a decision made on this worker.
    pub ejections: u64,
    /// Requests balanced in panic mode.
    pub panic_requests: u64,
    /// Upstream connections opened minus closed by this worker (a gauge when summed).
    pub upstream_connections: i64,
    /// Exact `weir_request_duration_seconds` bucket counts (non-cumulative) + the +Inf slot.
    pub buckets: [u64; DURATION_BUCKETS_SECONDS.len() + 1],
    /// Exact sum of durations, nanoseconds.
    pub duration_sum_ns: u128,
    /// Exact count of durations.
    pub duration_count: u64,
    /// Durations in microseconds, 2 significant digits, for percentiles (from the first
    /// recorded duration; released after a long idle time).
    hdr: Option<Box<Histogram<u64>>>,
    /// Per route and backend (services with routes only).
    routes: Vec<RouteStats>,
    /// Per caller (source slot, sorted), from the pair's first request.
    sources: Vec<(SourceSlot, Box<SourceStats>)>,
}

impl Default for ServiceStats {
    fn default() -> Self {
        ServiceStats {
            codes: Vec::new(),
            grpc: Vec::new(),
            errors: [0; ErrorReason::ALL.len()],
            retries: [0; RetryReason::ALL.len()],
            budget_exhausted: 0,
            ejections: 0,
            panic_requests: 0,
            upstream_connections: 0,
            buckets: [0; DURATION_BUCKETS_SECONDS.len() + 1],
            duration_sum_ns: 0,
            duration_count: 0,
            hdr: None,
            routes: Vec::new(),
            sources: Vec::new(),
        }
    }
}

fn reason_index(reason: ErrorReason) -> usize {
    ErrorReason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

/// Adds `n` to `code`'s count in a sorted list of codes seen.
fn count<C: Ord + Copy>(codes: &mut Vec<(C, u64)>, code: C, n: u64) {
    match codes.binary_search_by_key(&code, |(c, _)| *c) {
        Ok(i) => codes[i].1 += n,
        Err(i) => codes.insert(i, (code, n)),
    }
}

/// Cumulative counts of non-cumulative `buckets`, paired with their upper bound (seconds).
fn cumulative(buckets: &[u64]) -> Vec<(f64, u64)> {
    let mut acc = 0;
    buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            acc += n;
            (DURATION_BUCKETS_SECONDS.get(i).copied().unwrap_or(f64::INFINITY), acc)
        })
        .collect()
}

impl ServiceStats {
    /// Counts one finished request. Allocation-free, but for the first request of a caller
    /// (its [`SourceStats`]) and the first duration (the HDR histogram).
    pub fn record(&mut self, r: &RequestRecord) {
        let code = r.status.filter(|c| *c < 600).unwrap_or(0);
        self.count_code(code, 1);
        if let Some(g) = r.grpc {
            self.count_grpc(g, 1);
        }
        if let Some(e) = r.error {
            self.errors[reason_index(e)] += 1;
        }
        if r.panic {
            self.panic_requests += 1;
        }
        let ns = r.duration.as_nanos().min(u128::from(u64::MAX)) as u64;
        let slot = bucket_of(ns);
        let i = match self.sources.binary_search_by_key(&r.source, |(s, _)| *s) {
            Ok(i) => i,
            Err(i) => {
                self.sources.insert(i, (r.source, Box::default()));
                i
            }
        };
        self.sources[i].1.record(code, slot, ns, r.exemplar);
        self.buckets[slot] += 1;
        self.duration_sum_ns += u128::from(ns);
        self.duration_count += 1;
        self.hdr
            .get_or_insert_with(|| Box::new(Histogram::new_with_bounds(1, HDR_MAX_US, 2).expect("static HDR bounds")))
            .saturating_record((ns / 1000).clamp(1, HDR_MAX_US));
    }

    /// Adds `n` calls that ended with gRPC status `code` (counters handed over by another weir).
    pub fn add_grpc(&mut self, code: u8, n: u64) {
        self.count_grpc(code, n);
    }

    /// Adds `n` requests answered with `code` (0 = no status).
    pub fn add_code(&mut self, code: u16, n: u64) {
        self.count_code(code.min(599), n);
    }

    /// The latency histogram's recorded values (µs) and their counts.
    pub fn hdr_recorded(&self) -> Vec<(u64, u64)> {
        self.hdr
            .as_ref()
            .map(|h| h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
            .unwrap_or_default()
    }

    /// Records `n` latencies of `value_us` into the histogram.
    pub fn record_hdr_n(&mut self, value_us: u64, n: u64) {
        self.hdr
            .get_or_insert_with(|| Box::new(Histogram::new_with_bounds(1, HDR_MAX_US, 2).expect("static HDR bounds")))
            .saturating_record_n(value_us.clamp(1, HDR_MAX_US), n);
    }

    fn count_grpc(&mut self, code: u8, n: u64) {
        count(&mut self.grpc, code, n);
    }

    /// The counters of `route` and `backend`, made on their first use on this worker.
    pub fn route_mut(&mut self, route: u16, backend: &Arc<str>) -> &mut RouteStats {
        route::entry(&mut self.routes, route, backend)
    }

    /// Per route and backend, in the order first counted.
    pub fn routes(&self) -> &[RouteStats] {
        &self.routes
    }

    /// gRPC calls by final `grpc-status`, codes seen only, in order.
    pub fn grpc_codes(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        self.grpc.iter().copied()
    }

    fn count_code(&mut self, code: u16, n: u64) {
        count(&mut self.codes, code, n);
    }

    /// Per caller: the source slots that called this service, in slot order.
    pub fn sources(&self) -> impl Iterator<Item = (SourceSlot, &SourceStats)> + '_ {
        self.sources.iter().map(|(s, st)| (*s, &**st))
    }

    /// Adds `stats` to caller `slot`'s (counters handed over by a takeover). Not on a worker:
    /// it may allocate.
    pub fn add_source(&mut self, slot: SourceSlot, stats: &SourceStats) {
        match self.sources.binary_search_by_key(&slot, |(s, _)| *s) {
            Ok(i) => self.sources[i].1.merge(stats),
            Err(i) => self.sources.insert(i, (slot, Box::new(stats.clone()))),
        }
    }

    /// One caller's stats.
    pub fn source(&self, slot: SourceSlot) -> Option<&SourceStats> {
        self.sources.binary_search_by_key(&slot, |(s, _)| *s).ok().map(|i| &*self.sources[i].1)
    }

    /// Requests by status code (0 = no status), codes seen only, in order.
    pub fn codes(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes.iter().copied()
    }

    /// Requests counted with `code`.
    pub fn code(&self, code: u16) -> u64 {
        self.codes.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n)
    }

    /// Bytes this value holds on the heap (for the memory accounting in the docs and tests).
    pub fn heap_bytes(&self) -> usize {
        self.codes.capacity() * std::mem::size_of::<(u16, u64)>()
            + self.hdr.as_ref().map_or(0, |_| std::mem::size_of::<Histogram<u64>>() + hdr_counts_bytes())
            + self.routes.iter().map(|r| std::mem::size_of::<RouteStats>() + r.heap_bytes()).sum::<usize>()
            + self.sources.capacity() * std::mem::size_of::<(SourceSlot, Box<SourceStats>)>()
            + self.sources.iter().map(|(_, s)| std::mem::size_of::<SourceStats>() + s.heap_bytes()).sum::<usize>()
    }

    /// Counts a retry.
    pub fn retry(&mut self, reason: RetryReason) {
        if let Some(i) = RetryReason::ALL.iter().position(|r| *r == reason) {
            self.retries[i] += 1;
        }
    }

    /// Adds `other` into `self` (for a scrape).
    pub fn merge(&mut self, other: &ServiceStats) {
        for &(code, n) in &other.codes {
            self.count_code(code, n);
        }
        for &(code, n) in &other.grpc {
            self.count_grpc(code, n);
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        for (a, b) in self.retries.iter_mut().zip(other.retries) {
            *a += b;
        }
        self.budget_exhausted += other.budget_exhausted;
        self.ejections += other.ejections;
        self.panic_requests += other.panic_requests;
        self.upstream_connections += other.upstream_connections;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.duration_sum_ns += other.duration_sum_ns;
        self.duration_count += other.duration_count;
        for r in &other.routes {
            self.route_mut(r.route, &r.backend).merge(r);
        }
        for (slot, theirs) in &other.sources {
            self.add_source(*slot, theirs);
        }
        if let Some(h) = &other.hdr {
            match &mut self.hdr {
                Some(mine) => {
                    let _ = mine.add(&**h);
                }
                None => self.hdr = Some(h.clone()),
            }
        }
    }

    /// Errors weir generated itself, by reason.
    pub fn errors_by_reason(&self) -> impl Iterator<Item = (ErrorReason, u64)> + '_ {
        ErrorReason::ALL.iter().copied().zip(self.errors.iter().copied())
    }

    /// Retries, by reason.
    pub fn retries_by_reason(&self) -> impl Iterator<Item = (RetryReason, u64)> + '_ {
        RetryReason::ALL.iter().copied().zip(self.retries.iter().copied())
    }

    /// Cumulative bucket counts paired with their upper bound (seconds), ending with +Inf.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        cumulative(&self.buckets)
    }

    /// Duration at quantile `q` (0..=1) from the HDR histogram; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        match &self.hdr {
            Some(h) if !h.is_empty() => Duration::from_micros(h.value_at_quantile(q)),
            _ => Duration::ZERO,
        }
    }

    /// Total requests counted.
    pub fn requests(&self) -> u64 {
        self.codes.iter().map(|(_, n)| n).sum()
    }
}

/// Heap bytes of one HDR histogram's counts (the same for every one: the bounds are fixed).
fn hdr_counts_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let h = Histogram::<u64>::new_with_bounds(1, HDR_MAX_US, 2).expect("static HDR bounds");
        h.distinct_values() * std::mem::size_of::<u64>()
    })
}

/// One service's place in a worker's shard.
#[derive(Debug)]
struct Slot {
    /// `None`: released, on the free list.
    name: Option<Arc<str>>,
    /// Allocated when the service is first counted on this worker.
    stats: Option<Box<ServiceStats>>,
    /// The copy last published, shared until the stats change again.
    published: Option<Arc<ServiceStats>>,
    /// Counted since the last publication.
    dirty: bool,
    /// Publications since the service was last counted.
    idle: u32,
}

/// All services' stats of one worker, keyed by service name (names survive reloads; indexes
/// do not). Written by that worker alone.
#[derive(Debug, Default)]
pub struct StatsShard {
    /// A slot lives as long as its service is in the snapshot, so its counters are monotonic
    /// for that long; released slots are reused.
    slots: Vec<Slot>,
    index: HashMap<Arc<str>, usize>,
    /// Released slots, reused first.
    free: Vec<usize>,
    /// The worker's counters that belong to no service.
    pub counters: WorkerCounters,
}

/// A worker's counters that belong to no service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Downstream connections refused at the connection limit.
    pub connections_refused: u64,
    /// Requests that matched no service.
    pub unrouted: u64,
    /// Client connections closed because a write to them made no progress for the downstream
    /// write timeout (the client stopped reading).
    pub downstream_write_timeouts: u64,
    /// Connects to endpoints that failed on weir's own limits (descriptors, memory, ports):
    /// answered `overloaded`, never blamed on the endpoint.
    pub local_connect_errors: u64,
    /// Accepts that failed (descriptors, memory); the listener backs off.
    pub accept_errors: u64,
    /// HTTP/2 client connections weir closed for their behaviour, by [`Http2Close`] (index:
    /// the reason's place in [`Http2Close::ALL`]).
    pub http2_closed: [u64; Http2Close::ALL.len()],
}

impl WorkerCounters {
    /// Adds `other` (another worker's) to these.
    pub fn add(&mut self, other: &WorkerCounters) {
        self.connections_refused += other.connections_refused;
        self.unrouted += other.unrouted;
        self.downstream_write_timeouts += other.downstream_write_timeouts;
        self.local_connect_errors += other.local_connect_errors;
        self.accept_errors += other.accept_errors;
        for (a, b) in self.http2_closed.iter_mut().zip(other.http2_closed) {
            *a += b;
        }
    }
}

impl StatsShard {
    /// Counts an HTTP/2 connection closed for `reason`.
    pub fn http2_closed(&mut self, reason: Http2Close) {
        self.counters.http2_closed[reason as usize] += 1;
    }

    /// The slot of `service`, created on first use (a name, no stats yet). Call when a
    /// snapshot arrives, not per request.
    pub fn slot(&mut self, service: &str) -> usize {
        if let Some(&i) = self.index.get(service) {
            return i;
        }
        let name: Arc<str> = Arc::from(service);
        let slot = Slot { name: Some(name.clone()), stats: None, published: None, dirty: false, idle: 0 };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.index.insert(name, i);
        i
    }

    /// Gives slot `i` back: its service left the snapshot. Its stats are freed and no longer
    /// published; the slot may be handed to another service. Call when a snapshot removes the
    /// service, never while anything may still count into `i`.
    pub fn release(&mut self, i: usize) {
        let Some(slot) = self.slots.get_mut(i) else { return };
        let Some(name) = slot.name.take() else { return };
        self.index.remove(&name);
        *slot = Slot { name: None, stats: None, published: None, dirty: false, idle: 0 };
        self.free.push(i);
    }

    /// The stats in slot `i`, allocated on the service's first use on this worker.
    pub fn service_mut(&mut self, i: usize) -> &mut ServiceStats {
        let slot = &mut self.slots[i];
        slot.dirty = true;
        slot.stats.get_or_insert_with(Box::default)
    }

    /// Sets slot `i`'s upstream-connection gauge, without allocating or marking anything
    /// changed when the value is what it already was (0 for a service never counted).
    pub fn set_upstream_connections(&mut self, i: usize, value: i64) {
        let current = self.service(i).map_or(0, |s| s.upstream_connections);
        if current != value {
            self.service_mut(i).upstream_connections = value;
        }
    }

    /// The stats in slot `i`, if the service was ever counted here.
    pub fn service(&self, i: usize) -> Option<&ServiceStats> {
        self.slots.get(i).and_then(|s| s.stats.as_deref())
    }

    /// A copy for the admin thread: every service counted so far, sharing the previous copy of
    /// those not counted since. Also releases the HDR histogram of services idle for
    /// [`HDR_IDLE_PUBLISHES`] publications.
    pub fn publish(&mut self) -> Published {
        let mut services = Vec::new();
        for slot in &mut self.slots {
            let (Some(name), Some(stats)) = (&slot.name, slot.stats.as_deref_mut()) else { continue };
            if slot.dirty {
                slot.dirty = false;
                slot.idle = 0;
            } else {
                slot.idle = slot.idle.saturating_add(1);
                if slot.idle == HDR_IDLE_PUBLISHES && stats.hdr.take().is_some() {
                    slot.published = None;
                }
            }
            let copy = match &slot.published {
                Some(p) if !slot.dirty && slot.idle > 0 => p.clone(),
                _ => {
                    let p = Arc::new(stats.clone());
                    slot.published = Some(p.clone());
                    p
                }
            };
            services.push((name.clone(), copy));
        }
        Published { services, counters: self.counters }
    }

    /// Services with a slot (counted or not).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no service has a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated, in use or free (the shard never shrinks below its largest table).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Heap bytes held by the counted services' stats (for the memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.stats.as_deref())
            .map(|s| std::mem::size_of::<ServiceStats>() + s.heap_bytes())
            .sum()
    }
}

/// One worker's stats as the admin thread sees them (published once a second).
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Every service counted on the worker so far.
    pub services: Vec<(Arc<str>, Arc<ServiceStats>)>,
    /// As in [`StatsShard`].
    pub counters: WorkerCounters,
}

/// Every worker's published stats merged by service (a scrape).
#[derive(Debug, Clone, Default)]
pub struct Merged {
    services: Vec<(Arc<str>, ServiceStats)>,
    index: HashMap<Arc<str>, usize>,
    /// Summed over workers.
    pub counters: WorkerCounters,
}

impl Merged {
    /// Merges published shards into per-service totals.
    pub fn merge<'a>(shards: impl IntoIterator<Item = &'a Published>) -> Merged {
        let mut out = Merged::default();
        for shard in shards {
            for (name, stats) in &shard.services {
                match out.index.get(name) {
                    Some(&i) => out.services[i].1.merge(stats),
                    None => {
                        out.index.insert(name.clone(), out.services.len());
                        out.services.push((name.clone(), (**stats).clone()));
                    }
                }
            }
            out.counters.add(&shard.counters);
        }
        out
    }

    /// Every counted service, in the order first seen.
    pub fn services(&self) -> impl Iterator<Item = (&Arc<str>, &ServiceStats)> {
        self.services.iter().map(|(n, s)| (n, s))
    }

    /// Stats of a service by name.
    pub fn get(&self, service: &str) -> Option<&ServiceStats> {
        self.index.get(service).map(|&i| &self.services[i].1)
    }
}

#[cfg(test)]
mod tests;
