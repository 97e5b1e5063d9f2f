//! The span exporter: the `weir-otlp` thread drains every worker's span ring, batches the
//! records into an OTLP `ExportTraceServiceRequest` (written without per-span allocation by
//! [`wire`], held to a small prost model of the messages, [`proto`]), gzips it
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
pub mod wire;

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
    let mut encoder = wire::Encoder::new(&resource());
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
            held = Some(Held { body: encoder.body(&batch), spans: batch.len() as u64, attempts: 0 });
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

/// The OTLP span of one record, as a prost model message: the reference [`wire`] is tested
/// against (the exporter itself writes the same bytes without building it).
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

#[cfg(test)]
mod tests {
    use weir_core::accesslog::InlineStr;
    use weir_proxy::trace::SpanRecord;

    fn record(i: u64) -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: (i + 1).to_be_bytes(),
            parent_span_id: [3; 8],
            flags: 1,
            start_unix_ns: 1_764_000_000_000_000_000 + i * 1000,
            duration_ns: 80_000 + i % 1000,
            service: InlineStr::new(b"checkout"),
            method: InlineStr::new(b"GET"),
            endpoint: Some("10.1.2.3:8080".parse().expect("addr")),
            attempts: 1,
            status: 200,
            error: None,
            source: InlineStr::new(b"shop/web"),
        }
    }

    #[test]
    fn the_wire_encoder_writes_what_the_prost_model_encodes() {
        use prost::Message as _;
        let resource = super::resource();
        let mut enc = super::wire::Encoder::new(&resource);
        let mut failed = record(7);
        failed.status = 0;
        failed.error = Some(weir_core::outcome::ErrorReason::ConnectFailure);
        failed.endpoint = None;
        failed.parent_span_id = [0; 8];
        let batch = vec![record(1), failed, record(2)];
        let model = super::proto::ExportTraceServiceRequest {
            resource_spans: vec![super::proto::ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![super::proto::ScopeSpans {
                    scope: Some(super::proto::InstrumentationScope {
                        name: "weir".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: batch.iter().map(super::span).collect(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(enc.request(&batch), model.encode_to_vec());
        let mut raw = Vec::new();
        use std::io::Read as _;
        flate2::read::GzDecoder::new(&enc.body(&batch)[..]).read_to_end(&mut raw).expect("gzip");
        assert_eq!(super::proto::ExportTraceServiceRequest::decode(&raw[..]).expect("decodes"), model);
    }

    /// `cargo test --release -p weir --lib export_cost -- --ignored --nocapture`: what the
    /// exporter spends per span encoding and compressing.
    #[test]
    #[ignore = "a measurement, run by hand in release"]
    fn export_cost() {
        let mut enc = super::wire::Encoder::new(&super::resource());
        let batch: Vec<SpanRecord> = (0..super::MAX_BATCH as u64).map(record).collect();
        let n = 200;
        let t = std::time::Instant::now();
        let mut bytes = 0;
        for _ in 0..n {
            bytes += enc.body(&batch).len();
        }
        let per = t.elapsed().as_nanos() as f64 / (n * batch.len()) as f64;
        eprintln!("encode+gzip: {per:.0} ns per span, {} B per batch", bytes / n);
        let t = std::time::Instant::now();
        let mut raw = 0;
        for _ in 0..n {
            raw += enc.request(&batch).len();
        }
        let per = t.elapsed().as_nanos() as f64 / (n * batch.len()) as f64;
        eprintln!("encode only: {per:.0} ns per span, {} B per batch", raw / n);
    }
}
