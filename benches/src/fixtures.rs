//! Inputs shared by the criterion benches and their smoke test: a typical service-mesh request
//! head, a chunked body, a config with many services, an access-log record. Each `run_*`
//! function is one iteration of one bench, so `cargo test` can run every bench body once.
//! Must not: measure anything itself (criterion does) or touch the network.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use weir_core::accesslog::{InlineStr, LogRecord};
use weir_core::balance::{Balancer, LbPolicy};
use weir_core::config::Config;
use weir_core::stats::{RequestRecord, ServiceStats};
use weir_proxy::http::{
    ChunkEvent, ChunkedDecoder, HeadLimits, RequestHead, Status, parse_request, write_request_head,
};

/// A request head as a workload in a mesh sends it: 9 fields, ~420 bytes.
pub const REQUEST: &[u8] = b"GET /api/v1/orders/12345?expand=items&currency=EUR HTTP/1.1\r\n\
host: checkout\r\n\
user-agent: Mozilla/5.0 (X11; Linux x86_64) checkout-client/2.3.1\r\n\
accept: application/json\r\n\
accept-encoding: gzip, deflate, br\r\n\
x-request-id: 0f8fad5b-d9cb-469f-a165-70867728950e\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl\r\n\
cookie: session=abc123; theme=dark\r\n\
connection: keep-alive\r\n\r\n";

/// What weir adds to every forwarded request.
pub const VIA: (&[u8], &[u8]) = (b"via", b"1.1 weir");

/// A chunked body: 8 chunks of 1 KiB with an extension on the first, then the last chunk.
pub fn chunked_body() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..8 {
        if i == 0 {
            out.extend_from_slice(b"400;name=value\r\n");
        } else {
            out.extend_from_slice(b"400\r\n");
        }
        out.extend(std::iter::repeat_n(b'a' + i as u8, 1024));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Parses [`REQUEST`] into `head`; returns the head length.
pub fn run_parse(head: &mut RequestHead, limits: &HeadLimits) -> usize {
    match parse_request(REQUEST, limits, head) {
        Ok(Status::Complete(n)) => n,
        other => panic!("the fixture request must parse completely, got {other:?}"),
    }
}

/// Parses [`REQUEST`] and re-serialises it with `via` as weir does; returns the bytes written.
pub fn run_parse_and_write(head: &mut RequestHead, limits: &HeadLimits, out: &mut Vec<u8>) -> usize {
    run_parse(head, limits);
    out.clear();
    write_request_head(head, REQUEST, out, &[VIA]);
    out.len()
}

/// Decodes `body` (from [`chunked_body`]) in one pass; returns the data bytes seen.
pub fn run_chunked(decoder: &mut ChunkedDecoder, body: &[u8]) -> usize {
    decoder.reset();
    let (mut at, mut data) = (0, 0);
    loop {
        match decoder.decode(&body[at..]) {
            Ok((used, ChunkEvent::Data(r))) => {
                data += r.len();
                at += used;
            }
            Ok((used, ChunkEvent::NeedMore)) => at += used,
            Ok((_, ChunkEvent::End)) => return data,
            Err(e) => panic!("the fixture body must decode: {e:?}"),
        }
        assert!(at <= body.len(), "decoder consumed past the input");
    }
}

/// A balancer over `n` equally weighted endpoints.
pub fn balancer(policy: LbPolicy, n: usize) -> Balancer {
    Balancer::new(policy, &vec![1; n], 42)
}

/// One attempt's balancer work as the data path does it: pick, start, finish.
pub fn run_pick(b: &mut Balancer, now: Instant) -> usize {
    let idx = b.pick(now, |_| true, None).expect("every endpoint is eligible");
    b.on_start(idx);
    b.on_finish(idx, Duration::from_micros(120), now);
    idx
}

/// A successful request record (the common case).
pub fn request_record(i: u64) -> RequestRecord {
    RequestRecord {
        status: Some(200),
        error: None,
        duration: Duration::from_micros(80 + (i % 400)),
        panic: false,
        source: weir_core::stats::SOURCE_DIRECT,
        exemplar: None,
        grpc: None,
    }
}

/// Records one request into `stats`.
pub fn run_record(stats: &mut ServiceStats, i: u64) {
    stats.record(&request_record(i));
}

/// An access-log record as the proxy fills it for a proxied GET.
pub fn log_record() -> LogRecord {
    let endpoint: SocketAddr = "10.1.2.3:8080".parse().expect("static address");
    let client: SocketAddr = "10.9.8.7:53122".parse().expect("static address");
    LogRecord {
        start_unix_us: 1_760_000_000_123_456,
        service: InlineStr::new(b"checkout"),
        endpoint: Some(endpoint),
        client: Some(client),
        method: InlineStr::new(b"GET"),
        authority: InlineStr::new(b"checkout"),
        path: InlineStr::new(b"/api/v1/orders/12345?expand=items&currency=EUR"),
        status: 200,
        error: None,
        attempts: 1,
        bytes_in: 0,
        bytes_out: 512,
        duration_us: 180,
        upstream_us: 150,
        worker: 0,
        protocol: weir_core::accesslog::LogProtocol::Http,
        grpc_status: None,
        route: weir_core::accesslog::NO_ID,
        backend: weir_core::accesslog::NO_ID,
        source_cgroup_id: 0,
    }
}

/// Pushes one record into the worker's ring the way `WorkerTelemetry::log` does (a full ring
/// drops and counts); the consumer side is drained when full so the bench measures pushes.
pub fn run_log_push(
    producer: &mut rtrb::Producer<LogRecord>,
    consumer: &mut rtrb::Consumer<LogRecord>,
    record: LogRecord,
    dropped: &mut u64,
) {
    if producer.push(record).is_err() {
        *dropped += 1;
        while consumer.pop().is_ok() {}
    }
}

/// A config with `services` HTTP services of `endpoints` endpoints each.
pub fn config_toml(services: usize, endpoints: usize) -> String {
    let mut s = String::from("[proxy]\nworkers = 2\n[access_log]\nsink = \"off\"\n");
    for i in 0..services {
        s.push_str(&format!(
            "[[service]]\nname = \"svc-{i}\"\nvip = \"127.10.{}.{}:80\"\nendpoints = [",
            i / 250,
            i % 250 + 1
        ));
        for e in 0..endpoints {
            let sep = if e == 0 { "" } else { ", " };
            s.push_str(&format!("{sep}\"10.{}.{}.{}:8080\"", i % 250, e / 250, e % 250 + 1));
        }
        s.push_str("]\n");
    }
    s
}

/// Parses and validates a [`config_toml`] (the part of a reload before the snapshot).
pub fn config(services: usize, endpoints: usize) -> Config {
    Config::parse(&config_toml(services, endpoints), Path::new("bench.toml"))
        .unwrap_or_else(|e| panic!("the bench config must validate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every bench body once, so `cargo test` catches a bench that would panic.
    #[test]
    fn every_bench_body_runs_once() {
        let limits = HeadLimits::default();
        let mut head = RequestHead::with_capacity(16);
        assert_eq!(run_parse(&mut head, &limits), REQUEST.len());
        let mut out = Vec::new();
        run_parse_and_write(&mut head, &limits, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("via: 1.1 weir\r\n"), "forwarded head: {text}");
        assert!(!text.to_ascii_lowercase().contains("connection:"), "hop-by-hop field forwarded: {text}");

        let body = chunked_body();
        assert_eq!(run_chunked(&mut ChunkedDecoder::new(), &body), 8 * 1024);

        for policy in [LbPolicy::P2c, LbPolicy::RoundRobin, LbPolicy::Random] {
            let mut b = balancer(policy, 16);
            assert!(run_pick(&mut b, Instant::now()) < 16);
        }

        let mut stats = ServiceStats::default();
        run_record(&mut stats, 7);
        assert_eq!(stats.requests(), 1);

        let (mut p, mut c) = rtrb::RingBuffer::new(4);
        let mut dropped = 0;
        for _ in 0..5 {
            run_log_push(&mut p, &mut c, log_record(), &mut dropped);
        }
        assert_eq!(dropped, 1);
        let mut line = Vec::new();
        log_record().write_json(0, weir_core::accesslog::LineNames::default(), &mut line);
        assert!(line.starts_with(b"{"), "log line: {}", String::from_utf8_lossy(&line));

        let cfg = config(50, 4);
        let snap = weir_proxy::Snapshot::build(cfg, 2, None);
        assert_eq!(snap.services.len(), 50);
        assert_eq!(snap.by_host(b"svc-49"), Some(49));
    }
}
