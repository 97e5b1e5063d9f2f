//! A worker's outputs: its RED stats shard (single writer; a copy is published once a second
//! for the admin thread to merge), the producer ends of its access-log ring and its span ring
//! (a full ring drops the record and counts it; the worker never waits), and its per-caller
//! request counters (read by the identity thread to rank callers). The rings are committed
//! when they are made: every slot is written once, so their memory is resident from the start
//! and does not grow in with traffic. Must not: lock, block, or be shared between workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use weir_core::accesslog::LogRecord;
use weir_core::stats::{Published, StatsShard};

use crate::caller::CallerCounts;
use crate::trace::SpanRecord;

/// One worker's telemetry handles.
#[derive(Debug, Default)]
pub struct WorkerTelemetry {
    /// The live shard; only this worker writes it.
    pub shard: StatsShard,
    published: Option<Arc<ArcSwap<Published>>>,
    log: Option<rtrb::Producer<LogRecord>>,
    log_dropped: Arc<AtomicU64>,
    spans: Option<rtrb::Producer<SpanRecord>>,
    spans_dropped: Arc<AtomicU64>,
    /// Requests per caller counter slot (this worker writes, the identity thread reads).
    pub callers: Arc<CallerCounts>,
    local_warn: WarnLimiter,
    accept_warn: WarnLimiter,
}

/// The reading side of every worker's telemetry, for the admin thread, the log shipper, the
/// span exporter and the identity thread.
#[derive(Debug)]
pub struct TelemetryHub {
    /// Each worker's last published shard.
    pub shards: Vec<Arc<ArcSwap<Published>>>,
    /// Each worker's access-log ring (consumer) and its drop counter. Empty when logging is off.
    pub logs: Vec<LogSource>,
    /// Each worker's span ring (consumer) and its drop counter. Empty when tracing is off.
    pub spans: Vec<SpanSource>,
    /// Each worker's per-caller request counters.
    pub callers: Vec<Arc<CallerCounts>>,
}

/// One worker's span ring, as the exporter sees it.
#[derive(Debug)]
pub struct SpanSource {
    /// Spans in push order.
    pub consumer: rtrb::Consumer<SpanRecord>,
    /// Spans dropped because the ring was full (monotonic, written by the worker).
    pub dropped: Arc<AtomicU64>,
}

/// One worker's access-log ring, as the shipper sees it.
#[derive(Debug)]
pub struct LogSource {
    /// Records in push order.
    pub consumer: rtrb::Consumer<LogRecord>,
    /// Records dropped because the ring was full (monotonic, written by the worker).
    pub dropped: Arc<AtomicU64>,
}

/// Creates telemetry for `workers` workers; `ring_records` is the per-worker access-log ring
/// capacity (`None` = access logging off), `span_records` the per-worker span ring capacity
/// (`None` = tracing off). Each ring's memory (`ring_records` × `size_of::<LogRecord>()`,
/// likewise for spans) is touched here, once, so that it counts against the process's memory
/// from the start instead of filling in as records arrive.
pub fn telemetry(
    workers: usize,
    ring_records: Option<usize>,
    span_records: Option<usize>,
) -> (Vec<WorkerTelemetry>, TelemetryHub) {
    let mut out = Vec::with_capacity(workers);
    let mut hub =
        TelemetryHub { shards: Vec::with_capacity(workers), logs: Vec::new(), spans: Vec::new(), callers: Vec::new() };
    for _ in 0..workers {
        let published = Arc::new(ArcSwap::from_pointee(Published::default()));
        hub.shards.push(published.clone());
        let dropped = Arc::new(AtomicU64::new(0));
        let log = ring_records.map(|cap| {
            let (mut producer, mut consumer) = rtrb::RingBuffer::new(cap);
            commit(&mut producer, &mut consumer, cap);
            hub.logs.push(LogSource { consumer, dropped: dropped.clone() });
            producer
        });
        let spans_dropped = Arc::new(AtomicU64::new(0));
        let spans = span_records.map(|cap| {
            let (mut producer, mut consumer) = rtrb::RingBuffer::new(cap);
            commit(&mut producer, &mut consumer, cap);
            hub.spans.push(SpanSource { consumer, dropped: spans_dropped.clone() });
            producer
        });
        let callers = Arc::new(CallerCounts::default());
        hub.callers.push(callers.clone());
        out.push(WorkerTelemetry {
            shard: StatsShard::default(),
            published: Some(published),
            log,
            log_dropped: dropped,
            spans,
            spans_dropped,
            callers,
            local_warn: WarnLimiter::default(),
            accept_warn: WarnLimiter::default(),
        });
    }
    (out, hub)
}

/// Writes every slot of an empty ring once and reads it back: the allocator hands out untouched
/// pages, which the kernel would otherwise commit one by one as the first records arrive.
fn commit<T: Copy + Default>(producer: &mut rtrb::Producer<T>, consumer: &mut rtrb::Consumer<T>, cap: usize) {
    if let Ok(chunk) = producer.write_chunk_uninit(cap) {
        chunk.fill_from_iter(std::iter::repeat(T::default()));
    }
    if let Ok(chunk) = consumer.read_chunk(cap) {
        chunk.commit_all();
    }
}

impl WorkerTelemetry {
    /// Publishes a copy of the shard for the admin thread (once a second, and at exit).
    pub fn flush(&mut self) {
        if let Some(p) = &self.published {
            p.store(Arc::new(self.shard.publish()));
        }
    }

    /// Counts a connection refused at the limit.
    pub fn connection_refused(&mut self) {
        self.shard.counters.connections_refused += 1;
    }

    /// Counts a connect that failed on weir's own limits, and warns (at most every 10 s,
    /// saying how many were not logged).
    pub fn local_connect_error(&mut self, service: &str, endpoint: std::net::SocketAddr, now: std::time::Instant) {
        self.shard.counters.local_connect_errors += 1;
        if let Some(quiet) = self.local_warn.due(now) {
            tracing::warn!(
                %service,
                %endpoint,
                not_logged = quiet,
                "a connect failed on weir's own limits (file descriptors, memory or local ports): answered 503 overloaded, the endpoint is not blamed"
            );
        }
    }

    /// Counts a failed accept, and warns (at most every 10 s).
    pub fn accept_error(&mut self, worker: usize, error: &std::io::Error, now: std::time::Instant) {
        self.shard.counters.accept_errors += 1;
        if let Some(quiet) = self.accept_warn.due(now) {
            tracing::warn!(worker, not_logged = quiet, "accept failed: {error}; backing off");
        }
    }

    /// Whether access logging is on (so callers can skip building records).
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// Whether tracing is on (spans have a ring to go to).
    pub fn tracing(&self) -> bool {
        self.spans.is_some()
    }

    /// Queues a span, or drops and counts it when the ring is full.
    pub fn span(&mut self, record: SpanRecord) {
        if let Some(p) = &mut self.spans
            && p.push(record).is_err()
        {
            self.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues an access-log record, or drops and counts it when the ring is full.
    pub fn log(&mut self, record: LogRecord) {
        if let Some(p) = &mut self.log
            && p.push(record).is_err()
        {
            // Single writer: a relaxed increment is enough, the shipper only needs to see it
            // eventually.
            self.log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A warning that repeats: logged the first time, then at most once per [`WARN_EVERY`], with the
/// count of those not logged in between.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    last: Option<std::time::Instant>,
    quiet: u64,
}

/// How often a repeated warning is logged at most.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl WarnLimiter {
    /// `Some(not logged since the last one)` when a warning is due now.
    pub(crate) fn due(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < WARN_EVERY => {
                self.quiet += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.quiet))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_logged_once_per_period_with_the_count_left_out() {
        let t0 = std::time::Instant::now();
        let mut w = WarnLimiter::default();
        assert_eq!(w.due(t0), Some(0));
        for i in 1..=100 {
            assert_eq!(w.due(t0 + std::time::Duration::from_millis(i * 10)), None);
        }
        assert_eq!(w.due(t0 + WARN_EVERY), Some(100));
        assert_eq!(w.due(t0 + WARN_EVERY), None);
    }

    #[test]
    fn a_committed_ring_is_empty_and_takes_its_full_capacity() {
        let (mut workers, mut hub) = telemetry(1, Some(16), Some(4));
        let log = &mut hub.logs[0];
        assert_eq!(log.consumer.slots(), 0, "the committed ring is not empty");
        for _ in 0..20 {
            workers[0].log(LogRecord::default());
        }
        assert_eq!(log.consumer.slots(), 16);
        assert_eq!(log.dropped.load(Ordering::Relaxed), 4);
        for _ in 0..6 {
            workers[0].span(SpanRecord::default());
        }
        assert_eq!((hub.spans[0].consumer.slots(), hub.spans[0].dropped.load(Ordering::Relaxed)), (4, 2));
    }
}
