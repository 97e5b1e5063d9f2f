//! Distributed tracing: W3C trace context through weir, spans exported over OTLP/HTTP to a
//! recording collector (decoded here with the opentelemetry-proto crate's own types), a
//! stalled collector that costs requests nothing, and exemplars in the OpenMetrics exposition.

use std::io::Read as _;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message as _;
use weir_tests::{Client, Collector, Endpoint, Response, Weir, eventually};

use crate::data_path::{config, service};

pub(crate) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub(crate) const PARENT: &str = "00f067aa0ba902b7";

pub(crate) fn traced(collector: &Collector, percent: f64, services: &str) -> String {
    format!(
        "{}[tracing]\nsample_percent = {percent:?}\notlp_endpoint = \"{}\"\n",
        config(services),
        collector.endpoint()
    )
}

/// `GET /` with `Host: host` and extra field lines (`name: value\r\n` each).
pub(crate) fn get_with(c: &mut Client, host: &str, extra: &str) -> Response {
    c.send_raw(format!("GET / HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n").as_bytes());
    c.read_response(false).expect("a response")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every span the collector received, checking each request is OTLP/HTTP protobuf, gzip.
pub(crate) fn spans(collector: &Collector) -> Vec<(ExportTraceServiceRequest, Span)> {
    let mut out = Vec::new();
    for post in collector.posts() {
        assert_eq!(post.path, "/v1/traces");
        assert_eq!(post.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(post.header("content-encoding"), Some("gzip"));
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&post.body[..]).read_to_end(&mut raw).expect("a gzip body");
        let req = ExportTraceServiceRequest::decode(&raw[..]).expect("an OTLP ExportTraceServiceRequest");
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((req.clone(), s.clone()));
                }
            }
        }
    }
    out
}

/// A span attribute as text.
pub(crate) fn attr(span: &Span, key: &str) -> Option<String> {
    let v = span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    let all: Vec<&String> = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v).collect();
    assert!(all.len() <= 1, "{name} forwarded {} times: {headers:?}", all.len());
    all.first().map(|v| v.to_string())
}

#[test]
fn a_sampled_request_gets_one_span_whose_id_is_the_forwarded_parent() {
    let collector = Collector::start().expect("collector");
    let ep = Endpoint::start("e");
    let weir = Weir::start(&traced(&collector, 0.0, &service("traced", "127.10.12.1:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    let amzn = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
    let r = get_with(
        &mut c,
        "traced",
        &format!(
            "traceparent: 00-{TRACE}-{PARENT}-01\r\ntracestate: congo=t61rcWkgMzE\r\nx-amzn-trace-id: {amzn}\r\nb3: {b3}\r\n"
        ),
    );
    assert_eq!(r.status, 200);
    let seen = ep.last_headers();
    let forwarded = header(&seen, "traceparent").expect("weir forwards a traceparent");
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[1], parts[3]), (4, "00", TRACE, "01"), "{forwarded}");
    assert_ne!(parts[2], PARENT, "the forwarded parent must be weir's span, not the caller's");
    // tracestate, X-Amzn-Trace-Id and b3 go through unchanged.
    assert_eq!(header(&seen, "tracestate").as_deref(), Some("congo=t61rcWkgMzE"));
    assert_eq!(header(&seen, "x-amzn-trace-id").as_deref(), Some(amzn));
    assert_eq!(header(&seen, "b3").as_deref(), Some(b3));

    let all = eventually(Duration::from_secs(10), "weir's span at the collector", || {
        let s = spans(&collector);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(all.len(), 1, "one span per sampled request");
    let (req, span) = &all[0];
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT, "weir's span is the caller's child");
    assert_eq!(hex(&span.span_id), parts[2], "the forwarded traceparent names weir's span");
    assert_eq!(span.kind, SpanKind::Client as i32);
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    for (key, want) in [
        ("weir.service", "traced".to_string()),
        ("weir.endpoint", ep.addr.to_string()),
        ("weir.attempts", "1".into()),
        ("http.response.status_code", "200".into()),
        ("http.request.method", "GET".into()),
        ("weir.outcome", "ok".into()),
        ("weir.source", "direct".into()),
    ] {
        assert_eq!(attr(span, key).as_deref(), Some(want.as_str()), "attribute {key}: {:?}", span.attributes);
    }
    let resource = req.resource_spans[0].resource.as_ref().expect("a resource");
    assert!(
        resource.attributes.iter().any(|a| a.key == "service.name"
            && a.value.as_ref().and_then(|v| v.value.as_ref()) == Some(&Value::StringValue("weir".into()))),
        "{resource:?}"
    );

    // One span per sampled request, exactly.
    for i in 0..9 {
        let id = format!("{:016x}", 0x1000 + i);
        assert_eq!(get_with(&mut c, "traced", &format!("traceparent: 00-{TRACE}-{id}-01\r\n")).status, 200);
    }
    eventually(Duration::from_secs(10), "ten spans", || (spans(&collector).len() >= 10).then_some(()));
    weir.wait_metric("weir_spans_total{result=\"exported\"}", 10.0);
    assert_eq!(spans(&collector).len(), 10);
    let ids: std::collections::BTreeSet<Vec<u8>> = spans(&collector).into_iter().map(|(_, s)| s.span_id).collect();
    assert_eq!(ids.len(), 10, "every span has its own id");
}

#[test]
fn unsampled_and_absent_trace_contexts_pass_untouched_unless_weir_samples() {
    let collector = Collector::start().expect("collector");
    let ep = Endpoint::start("e");
    let svc = service("quiet", "127.10.12.2:80", &[&ep], "");
    let weir = Weir::start(&traced(&collector, 0.0, &svc));
    let mut c = Client::connect(weir.proxy);
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    assert_eq!(get_with(&mut c, "quiet", &format!("traceparent: {unsampled}\r\ntracestate: a=b\r\n")).status, 200);
    let seen = ep.last_headers();
    assert_eq!(header(&seen, "traceparent"), Some(unsampled), "an unsampled trace is passed on untouched");
    assert_eq!(header(&seen, "tracestate").as_deref(), Some("a=b"));
    assert_eq!(get_with(&mut c, "quiet", "x-amzn-trace-id: Root=1-abc\r\n").status, 200);
    let seen = ep.last_headers();
    assert_eq!(header(&seen, "traceparent"), None, "no trace context, no sampling: none is added");
    assert_eq!(header(&seen, "x-amzn-trace-id").as_deref(), Some("Root=1-abc"));

    // sample_percent applies on reload: now weir starts a trace for every request without one.
    weir.reload(&traced(&collector, 100.0, &svc)).expect("reload with sample_percent = 100");
    assert_eq!(get_with(&mut c, "quiet", "tracestate: stale=1\r\n").status, 200);
    let seen = ep.last_headers();
    let started = header(&seen, "traceparent").expect("weir started a trace");
    assert_eq!(header(&seen, "tracestate"), None, "a trace weir starts carries no other trace's state");
    let all = eventually(Duration::from_secs(10), "the started trace's span", || {
        let s = spans(&collector);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(all.len(), 1, "only the request weir sampled has a span: {all:?}");
    let span = &all[0].1;
    assert_eq!(started, format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id)));
    assert!(span.parent_span_id.is_empty(), "a trace weir started has no parent");
}

/// Latency of `n` requests sent one after another, `pace` apart, in µs, sorted.
fn paced(c: &mut Client, n: usize, pace: Duration, deadline: Instant) -> Vec<u64> {
    let mut out = Vec::with_capacity(n.min(10_000));
    for _ in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        let t = Instant::now();
        assert_eq!(c.get("/", "stall").status, 200);
        out.push(t.elapsed().as_micros() as u64);
        std::thread::sleep(pace); // the client's rate: the behaviour under test
    }
    out.sort_unstable();
    out
}

fn p99(v: &[u64]) -> u64 {
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[test]
fn a_stalled_collector_costs_requests_nothing_and_drops_are_counted() {
    let collector = Collector::start().expect("collector");
    let ep = Endpoint::start("e");
    let weir = Weir::start(&traced(&collector, 100.0, &service("stall", "127.10.12.3:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    let pace = Duration::from_millis(2);
    // Warm up, and prove export works before the stall.
    let _ = paced(&mut c, 200, pace, Instant::now() + Duration::from_secs(10));
    eventually(Duration::from_secs(10), "spans exported", || {
        (weir.metric("weir_spans_total{result=\"exported\"}") >= 200.0).then_some(())
    });
    let healthy = paced(&mut c, 2500, pace, Instant::now() + Duration::from_secs(10));
    collector.stall();
    // Requests go on while the exporter is stuck on the collector: every one is answered, until
    // the bounded span ring has filled and spans are dropped (counted) instead of waited for.
    // (Latency under the stall is the bench's business; this proves nothing waits on it.)
    let dropped = || {
        weir.metric("weir_spans_total{result=\"ring_full\"}")
            + weir.metric("weir_spans_total{result=\"export_failed\"}")
    };
    let mut stalled = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (dropped() == 0.0 || stalled.len() < 2000) && Instant::now() < deadline {
        stalled.extend(paced(&mut c, 500, pace, deadline));
    }
    collector.resume();
    stalled.sort_unstable();
    eprintln!(
        "p99 healthy collector {} µs over {}, stalled {} µs over {}",
        p99(&healthy),
        healthy.len(),
        p99(&stalled),
        stalled.len()
    );
    assert!(stalled.len() >= 2000, "only {} requests answered while the collector stalled", stalled.len());
    assert!(dropped() > 0.0, "spans lost to the stalled collector were not counted");
    // Once the collector answers again, spans flow again.
    let before = weir.metric("weir_spans_total{result=\"exported\"}");
    let _ = paced(&mut c, 100, pace, Instant::now() + Duration::from_secs(5));
    eventually(Duration::from_secs(20), "exports after the collector recovered", || {
        (weir.metric("weir_spans_total{result=\"exported\"}") > before).then_some(())
    });
}

#[test]
fn latency_buckets_carry_exemplars_in_openmetrics_only() {
    let collector = Collector::start().expect("collector");
    let ep = Endpoint::start("e");
    let weir = Weir::start(&traced(&collector, 0.0, &service("ex", "127.10.12.4:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    assert_eq!(get_with(&mut c, "ex", &format!("traceparent: 00-{TRACE}-{PARENT}-01\r\n")).status, 200);
    weir.wait_metric("weir_request_duration_seconds_count{service=\"ex\",source=\"direct\"}", 1.0);
    let mut admin = Client::connect(weir.admin);
    admin.send_raw(
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    let r = admin.read_response(false).expect("/metrics");
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")), "{:?}", r.headers);
    let text = r.body_string();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(text.contains("# TYPE weir_requests counter\n"), "a counter family is named without _total");
    let with_exemplar: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("weir_request_duration_seconds_bucket{service=\"ex\""))
        .filter(|l| l.contains(&format!(" # {{trace_id=\"{TRACE}\"}} ")))
        .collect();
    assert_eq!(with_exemplar.len(), 1, "one bucket holds the sampled request:\n{text}");
    // The classic format stays the default, without exemplars.
    let plain = weir.metrics();
    assert!(!plain.contains("# EOF") && !plain.contains("trace_id"), "exemplars leaked into 0.0.4");
    assert!(plain.contains("# TYPE weir_requests_total counter\n"));
}

/// The forwarded `traceparent` among gRPC metadata the server saw (exactly one), and the
/// `tracestate`.
pub(crate) fn traced_metadata(seen: &serde_json::Value) -> (String, Option<String>) {
    let md: Vec<(String, String)> = seen["metadata"]
        .as_array()
        .expect("metadata")
        .iter()
        .map(|kv| (kv[0].as_str().unwrap_or("").to_string(), kv[1].as_str().unwrap_or("").to_string()))
        .collect();
    (header(&md, "traceparent").expect("weir forwards a traceparent"), header(&md, "tracestate"))
}

/// weir's span id in a forwarded `traceparent` of trace [`TRACE`], sampled.
pub(crate) fn weirs_span(forwarded: &str) -> String {
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[1], parts[3]), (4, "00", TRACE, "01"), "{forwarded}");
    parts[2].to_string()
}

/// The one span of trace [`TRACE`] whose parent is `parent`.
fn span_of(collector: &Collector, parent: &str) -> Span {
    eventually(Duration::from_secs(10), "weir's span at the collector", || {
        let mine: Vec<Span> =
            spans(collector).into_iter().map(|(_, s)| s).filter(|s| hex(&s.parent_span_id) == parent).collect();
        assert!(mine.len() <= 1, "more than one span for one request: {mine:?}");
        mine.into_iter().next()
    })
}

#[test]
fn http2_streams_join_the_trace_like_http11_requests_whatever_the_endpoint_speaks() {
    let collector = Collector::start().expect("collector");
    let grpc = weir_tests::clients::grpc_server("a", &[]);
    let ep = Endpoint::start("e");
    let services = format!(
        "[[service]]\nname = \"g\"\nvip = \"127.10.12.5:80\"\nprotocol = \"grpc\"\nendpoints = [\"{}\"]\n\n{}",
        grpc.addr,
        service("h1", "127.10.12.6:80", &[&ep], "")
    );
    let weir = Weir::start(&traced(&collector, 0.0, &services));

    // grpcio (HTTP/2) to a gRPC endpoint (HTTP/2): weir's span is the forwarded parent, the
    // caller's tracestate goes on.
    let tp = format!("traceparent=00-{TRACE}-{PARENT}-01");
    let out = weir_tests::clients::grpc_py(weir.proxy, "g", &["inspect", "10", &tp, "tracestate=congo=t61rcWkgMzE"]);
    assert_eq!(out["code"], "OK", "{out}");
    let (forwarded, state) = traced_metadata(&out["seen"]);
    assert_eq!(state.as_deref(), Some("congo=t61rcWkgMzE"));
    let span = span_of(&collector, PARENT);
    assert_eq!((hex(&span.trace_id), hex(&span.span_id)), (TRACE.to_string(), weirs_span(&forwarded)));
    for (key, want) in [
        ("weir.service", "g".to_string()),
        ("weir.endpoint", grpc.addr.to_string()),
        ("http.request.method", "POST".into()),
        ("http.response.status_code", "200".into()),
        ("weir.outcome", "ok".into()),
        ("weir.source", "direct".into()),
    ] {
        assert_eq!(attr(&span, key).as_deref(), Some(want.as_str()), "attribute {key}: {:?}", span.attributes);
    }

    // An HTTP/2 client (curl, prior knowledge) to an HTTP/1.1 endpoint.
    let parent2 = "00000000000000a2";
    let url = format!("http://{}/", weir.proxy);
    let tp = format!("traceparent: 00-{TRACE}-{parent2}-01");
    let code = weir_tests::clients::run(
        std::process::Command::new("curl").args([
            "-sS",
            "--max-time",
            "20",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "-H",
            "host: h1",
            "-H",
            &tp,
            &url,
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(code.trim(), "200 2", "curl: {code}");
    let forwarded = header(&ep.last_headers(), "traceparent").expect("weir forwards a traceparent");
    let span = span_of(&collector, parent2);
    assert_eq!(hex(&span.span_id), weirs_span(&forwarded), "the endpoint's parent is weir's span");

    // An HTTP/1.1 client's gRPC call to the gRPC endpoint (HTTP/2): the same.
    let parent3 = "00000000000000a3";
    let mut c = Client::connect(weir.proxy);
    c.send_raw(
        format!(
            "POST /weir.test.Echo/Inspect HTTP/1.1\r\nhost: g\r\ncontent-type: application/grpc\r\nte: trailers\r\n\
             traceparent: 00-{TRACE}-{parent3}-01\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0"
        )
        .as_bytes(),
    );
    let r = c.read_response(false).expect("a response");
    assert_eq!(r.status, 200, "{}", r.body_string());
    assert!(r.body.len() > 5, "no gRPC message in {:?}", r.body);
    let seen: serde_json::Value = serde_json::from_slice(&r.body[5..]).expect("the server's JSON");
    let (forwarded, _) = traced_metadata(&seen);
    let span = span_of(&collector, parent3);
    assert_eq!(hex(&span.span_id), weirs_span(&forwarded));
    assert_eq!(attr(&span, "weir.service").as_deref(), Some("g"));

    // Every stream was counted under its caller, with an exemplar for each sampled one.
    weir.wait_metric("weir_requests_total{service=\"g\",source=\"direct\",code=\"200\"}", 2.0);
    weir.wait_metric("weir_requests_total{service=\"h1\",source=\"direct\",code=\"200\"}", 1.0);
    weir.wait_metric("weir_spans_total{result=\"exported\"}", 3.0);
}
