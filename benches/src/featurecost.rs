//! What caller identity and tracing add to one request on a worker, measured in-process on the
//! exact code the worker runs (`weir_proxy::caller`, `weir_proxy::trace`, the stats shard, a
//! span ring): nanoseconds per request for each step, with the step as it is when the feature
//! is off beside it. `cargo xtask bench` runs it (the `weir-featurecost` binary) pinned to the
//! proxy's CPU next to its end-to-end comparison. Must not: allocate inside a timed loop
//! (beyond what the data path itself does).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use weir_core::accesslog::InlineStr;
use weir_core::config::TracingConfig;
use weir_core::stats::{Exemplar, RequestRecord, SOURCE_DIRECT, ServiceStats};
use weir_proxy::caller::{Caller, CallerCounts, CallerTable, Callers, Source};
use weir_proxy::http::{HeadLimits, RequestHead, Status, parse_request};
use weir_proxy::trace::{self, SpanRecord, Trace};

/// Nanoseconds per call of `f`, the best of `reps` runs of `n` calls.
fn ns_per(n: u64, reps: u32, mut f: impl FnMut(u64)) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn head(extra: &str) -> (RequestHead, Vec<u8>) {
    let src = format!(
        "GET /api/v1/orders/12345 HTTP/1.1\r\nhost: checkout\r\nuser-agent: weir-loadgen\r\naccept: */*\r\n\
         content-type: application/json\r\nx-request-id: 3f2a9c\r\n{extra}\r\n"
    )
    .into_bytes();
    let mut h = RequestHead::with_capacity(16);
    let limits = HeadLimits { max_head_bytes: 16 * 1024, max_headers: 64, max_uri_bytes: 4096 };
    match parse_request(&src, &limits, &mut h) {
        Ok(Status::Complete(_)) => {}
        other => panic!("fixture head did not parse: {other:?}"),
    }
    (h, src)
}

fn record(source: u16, exemplar: Option<Exemplar>, i: u64) -> RequestRecord {
    RequestRecord {
        status: Some(200),
        error: None,
        duration: std::time::Duration::from_micros(80 + (i % 400)),
        panic: false,
        source,
        exemplar,
        grpc: None,
    }
}

/// Runs every measurement with `n` calls each; JSON: step → ns per request.
pub fn run(n: u64) -> Value {
    let reps = 5;
    // A node with 1 000 caller cgroups, 50 named.
    let callers = Callers::default();
    let mut table = CallerTable { generation: 1, ..CallerTable::default() };
    for i in 0..1000u64 {
        let source = if i < 50 { 2 + i as u16 } else { 1 };
        table.by_cgroup.insert(10_000 + i, Caller { index: i as u32, source, workload: InlineStr::new(b"shop/web") });
    }
    for i in 0..50 {
        table.sources.push(Arc::from(format!("caller-{i}").as_str()));
    }
    callers.table.store(Arc::new(table));
    let counts = CallerCounts::default();
    let direct = ns_per(n, reps, |_| {
        black_box(Source::of(black_box(&callers), None, &counts));
    });
    let steered = ns_per(n, reps, |i| {
        black_box(Source::of(black_box(&callers), Some(10_000 + (i % 1000)), &counts));
    });

    // Stats: one service, its callers counted apart (10 sources that called it).
    let mut stats = ServiceStats::default();
    for s in 0..10 {
        stats.record(&record(s, None, 0));
    }
    let record_direct = ns_per(n, reps, |i| stats.record(black_box(&record(SOURCE_DIRECT, None, i))));
    let record_caller = ns_per(n, reps, |i| stats.record(black_box(&record(2 + (i % 8) as u16, None, i))));

    let off = TracingConfig { sample_percent: 0.0, otlp_endpoint: None };
    let on = |pct: f64| TracingConfig { sample_percent: pct, otlp_endpoint: Some("http://127.0.0.1:4318".into()) };
    let (plain, plain_src) = head("");
    let (unsampled, unsampled_src) = head("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n");
    let (sampled, sampled_src) = head("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n");
    let trace_off = ns_per(n, reps, |_| {
        black_box(trace::decide(black_box(&off), &sampled, &sampled_src));
    });
    let on0 = on(0.0);
    let no_header = ns_per(n, reps, |_| {
        black_box(trace::decide(black_box(&on0), &plain, &plain_src));
    });
    let unsampled_header = ns_per(n, reps, |_| {
        black_box(trace::decide(black_box(&on0), &unsampled, &unsampled_src));
    });
    // Sampled: the decision, the forwarded traceparent, the exemplar, the span record pushed
    // into a ring (drained as the exporter would).
    let (mut producer, mut consumer) = rtrb::RingBuffer::<SpanRecord>::new(2048);
    let mut stats2 = ServiceStats::default();
    stats2.record(&record(2, None, 0));
    let sampled_cost = ns_per(n, reps, |i| {
        let t = trace::decide(black_box(&on0), &sampled, &sampled_src);
        let Trace::Span(s) = t else { panic!("a sampled trace context was not sampled") };
        black_box(s.traceparent());
        stats2.record(&record(2, Some(Exemplar { trace_id: s.trace_id, duration_ns: 0, unix_ms: i }), i));
        let span = SpanRecord {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            flags: s.flags,
            start_unix_ns: i,
            duration_ns: 80_000,
            service: InlineStr::new(b"checkout"),
            method: InlineStr::new(b"GET"),
            endpoint: None,
            attempts: 1,
            status: 200,
            error: None,
            source: InlineStr::new(b"shop/web"),
        };
        if producer.push(span).is_err()
            && let Ok(chunk) = consumer.read_chunk(consumer.slots())
        {
            chunk.commit_all();
        }
    });
    let unsampled_cost = no_header.max(unsampled_header) - trace_off;
    json!({
        "calls": n,
        "caller_lookup_direct_ns": direct,
        "caller_lookup_steered_ns": steered,
        "stats_record_direct_ns": record_direct,
        "stats_record_caller_ns": record_caller,
        "trace_off_ns": trace_off,
        "trace_unsampled_no_header_ns": no_header,
        "trace_unsampled_header_ns": unsampled_header,
        "trace_sampled_ns": sampled_cost,
        "identity_added_ns": (steered - direct) + (record_caller - record_direct).max(0.0),
        "unsampled_added_ns": unsampled_cost,
        "sampled_added_ns": sampled_cost - trace_off,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_step_is_measured() {
        let v = super::run(1000);
        for k in ["caller_lookup_steered_ns", "trace_sampled_ns", "identity_added_ns", "sampled_added_ns"] {
            assert!(v[k].as_f64().is_some_and(|x| x.is_finite()), "{k}: {v}");
        }
    }
}
