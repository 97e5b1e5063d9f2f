//! The span exporter: the `weir-otlp` thread drains every worker's span ring, batches the
//! records into an OTLP `ExportTraceServiceRequest` (a small prost model, [`proto`]), gzips it
//! and POSTs it to `[tracing] otlp_endpoint` + `/v1/traces` (OTLP/HTTP protobuf). A failed
//! batch (no answer, 429, 502, 503, 504) is retried with exponential back-off; while the
//! collector is backing off, spans are taken out of the rings and counted lost instead of
//! piling up; a batch that fails [`MAX_ATTEMPTS`] times, or is refused (another 4xx/5xx), is
//! dropped and counted. Memory is one batch being built and one being sent, whatever the
//! collector does. Counts: `weir_spans_total{result="exported"|"ring_full"|"export_failed"}`.
//! Must not: run on a worker, or make a worker wait: a dead or stalled collector only stalls
//! this thread, for at most the client's timeouts at a time, and the rings drop.

mod client;
pub mod proto;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;
use weir_core::config::OtlpTarget;
use weir_proxy::SpanSource;
use weir_proxy::trace::SpanRecord;

use client::Client;
use proto::{KeyValue, Span};

/// Spans per request to the collector, at most.
pub const MAX_BATCH: usize = 512;
/// A batch that is not full is sent this long after its first span.
pub const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// Each worker's span ring holds this many records (committed at start).
pub const RING_SPANS: usize = 2048;
/// Tries of one batch before it is dropped.
pub const MAX_ATTEMPTS: u32 = 4;
/// First back-off after a failure; doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Counters `/metrics` reads.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans lost because the collector failed, refused them, or was backing off.
    pub failed: AtomicU64,
}

/// The running exporter.
#[derive(Debug)]
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Shared counters.
    pub stats: Arc<ExportStats>,
    ring_dropped: Vec<Arc<AtomicU64>>,
}

impl Exporter {
    /// Starts exporting from `sources` to `target`. `drop_caps`: the thread gives up every
    /// capability first.
    pub fn start(target: OtlpTarget, sources: Vec<SpanSource>, drop_caps: bool) -> std::io::Result<Exporter> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ExportStats::default());
        let ring_dropped = sources.iter().map(|s| s.dropped.clone()).collect();
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new().name("weir-otlp".into()).spawn(move || {
                if drop_caps && let Err(e) = crate::privileges::drop_thread_caps(&Default::default()) {
                    tracing::warn!("span exporter: cannot drop capabilities: {e}");
                }
                run(Client::new(target), sources, &stop, &stats);
            })?
        };
        Ok(Exporter { stop, thread: Some(thread), stats, ring_dropped })
    }

    /// (exported, dropped because a ring was full, lost at or on the way to the collector).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.stats.exported.load(Ordering::Relaxed),
            self.ring_dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum(),
            self.stats.failed.load(Ordering::Relaxed),
        )
    }

    /// Sends what is queued (bounded by `timeout`) and stops.
    pub fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + timeout;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// A batch on its way to the collector.
struct Held {
    body: Vec<u8>,
    spans: u64,
    attempts: u32,
}

fn run(mut client: Client, mut sources: Vec<SpanSource>, stop: &AtomicBool, stats: &ExportStats) {
    let resource = resource();
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(MAX_BATCH);
    let mut first_at: Option<Instant> = None;
    let mut held: Option<Held> = None;
    let mut backoff = BACKOFF_BASE;
    let mut retry_at: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = Instant::now();
        let backing_off = retry_at.is_some_and(|t| now < t);
        let mut taken = 0usize;
        for src in sources.iter_mut() {
            let room = if backing_off { usize::MAX } else { MAX_BATCH - batch.len() };
            let n = src.consumer.slots().min(room);
            if n == 0 {
                continue;
            }
            let Ok(chunk) = src.consumer.read_chunk(n) else { continue };
            taken += n;
            if backing_off {
                // The collector is down: these are lost now rather than later.
                chunk.commit_all();
                stats.failed.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                batch.extend(chunk);
            }
        }
        if !batch.is_empty() && first_at.is_none() {
            first_at = Some(now);
        }
        let due =
            batch.len() >= MAX_BATCH || first_at.is_some_and(|t| now.duration_since(t) >= FLUSH_AFTER) || stopping;
        if held.is_none() && !batch.is_empty() && due {
            held = Some(Held { body: encode(&resource, &batch), spans: batch.len() as u64, attempts: 0 });
            batch.clear();
            first_at = None;
        }
        if let Some(h) = held.as_mut()
            && retry_at.is_none_or(|t| now >= t)
        {
            h.attempts += 1;
            match client.post(&h.body) {
                Ok(a) if (200..300).contains(&a.status) => {
                    let rejected = proto::ExportTraceServiceResponse::decode(&a.body[..])
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map_or(0, |p| p.rejected_spans.clamp(0, h.spans as i64) as u64);
                    stats.exported.fetch_add(h.spans - rejected, Ordering::Relaxed);
                    stats.failed.fetch_add(rejected, Ordering::Relaxed);
                    held = None;
                    retry_at = None;
                    backoff = BACKOFF_BASE;
                }
                other => {
                    let retryable = match &other {
                        Ok(a) => matches!(a.status, 429 | 502 | 503 | 504),
                        Err(_) => true,
                    };
                    if let Err(e) = &other
                        && h.attempts == 1
                    {
                        tracing::debug!("span export failed: {e}");
                    }
                    if !retryable || h.attempts >= MAX_ATTEMPTS || stopping {
                        stats.failed.fetch_add(h.spans, Ordering::Relaxed);
                        held = None;
                    }
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        }
        if taken == 0 {
            if stopping && held.is_none() && batch.is_empty() {
                return;
            }
            std::thread::sleep(IDLE_POLL);
        }
    }
}

fn resource() -> proto::Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    proto::Resource {
        attributes: vec![
            KeyValue::string("service.name", "weir"),
            KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::string("host.name", host),
        ],
    }
}

/// The OTLP span of one record.
pub fn span(r: &SpanRecord) -> Span {
    let service = String::from_utf8_lossy(r.service.as_bytes()).into_owned();
    let method = String::from_utf8_lossy(r.method.as_bytes()).into_owned();
    let mut attributes = vec![
        KeyValue::string("weir.service", service.clone()),
        KeyValue::string("http.request.method", method.clone()),
        KeyValue::int("weir.attempts", i64::from(r.attempts)),
        KeyValue::string("weir.outcome", r.outcome()),
        KeyValue::string("weir.source", String::from_utf8_lossy(r.source.as_bytes()).into_owned()),
    ];
    if r.status != 0 {
        attributes.push(KeyValue::int("http.response.status_code", i64::from(r.status)));
    }
    if let Some(e) = r.endpoint {
        attributes.push(KeyValue::string("weir.endpoint", e.to_string()));
        attributes.push(KeyValue::string("server.address", e.ip().to_string()));
        attributes.push(KeyValue::int("server.port", i64::from(e.port())));
    }
    let remote_parent = r.parent_span_id != [0; 8];
    Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        parent_span_id: if remote_parent { r.parent_span_id.to_vec() } else { Vec::new() },
        flags: u32::from(r.flags) | proto::FLAGS_HAS_IS_REMOTE | if remote_parent { proto::FLAGS_IS_REMOTE } else { 0 },
        name: if service.is_empty() { method } else { format!("{method} {service}") },
        kind: proto::SPAN_KIND_CLIENT,
        start_time_unix_nano: r.start_unix_ns,
        end_time_unix_nano: r.start_unix_ns + r.duration_ns,
        attributes,
        status: r.is_error().then(|| proto::Status { message: r.outcome().into(), code: proto::STATUS_CODE_ERROR }),
    }
}

/// One request body: the spans of `batch` under weir's resource, protobuf, gzip.
pub fn encode(resource: &proto::Resource, batch: &[SpanRecord]) -> Vec<u8> {
    let request = proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "weir".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans: batch.iter().map(span).collect(),
            }],
            schema_url: String::new(),
        }],
    };
    let raw = request.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 3 + 64), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&raw);
    gz.finish().unwrap_or_default()
}
