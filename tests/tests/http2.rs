//! HTTP/2 and gRPC through weir, against clients and servers nobody here wrote: grpcio (Python)
//! servers and clients, @grpc/grpc-js (Node), curl with prior knowledge, nghttp, h2load and
//! nghttpd. Every gRPC call shape, every status passed through, retries of UNAVAILABLE onto a
//! healthy endpoint and its ejection, per-call balancing over one client connection, deadlines
//! (the client's, rewritten per attempt, and weir's own), gRFC A6 headers, weir's own answers
//! as trailers-only statuses, translation between HTTP/1.1 and HTTP/2 both ways (hop-by-hop
//! fields never cross), and trailers relayed.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use weir_tests::clients::{self, Nghttpd, grpc_js, grpc_py, grpc_server};
use weir_tests::{Endpoint, LineSink, ReservedPort, Weir, scratch_dir};

/// A config with `services` (TOML `[[service]]` tables) and the access log sent to `log`.
fn config(services: &str, log: Option<SocketAddr>) -> String {
    let sink = log.map_or("off".to_string(), |a| format!("tcp:{a}"));
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 1\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"{sink}\"\n{services}"
    )
}

/// A `[[service]]` table.
fn service(name: &str, vip: &str, protocol: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nprotocol = \"{protocol}\"\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}

fn count(v: &Value, key: &str, name: &str) -> u64 {
    v[key][name].as_u64().unwrap_or(0)
}

fn recv_json(rx: &mpsc::Receiver<String>) -> Value {
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("an access-log line");
    serde_json::from_str(&line).expect("JSON")
}

#[test]
fn grpc_calls_of_every_shape_pass_through_from_python_and_node() {
    let server = grpc_server("a", &[]);
    let (sink, rx) = LineSink::start().expect("sink");
    let weir = Weir::start(&config(&service("g", "127.10.30.1:80", "grpc", &[server.addr], ""), Some(sink.addr)));
    let out = grpc_py(weir.proxy, "g", &["shapes"]);
    assert_eq!(out["ok"], serde_json::json!(["unary", "server_streaming", "client_streaming", "bidi"]), "{out}");
    let js = grpc_js(weir.proxy, "g", 20);
    assert_eq!((count(&js, "codes", "OK"), js["stream"].as_u64()), (20, Some(5)), "{js}");
    // 5 calls from Python (two unary), 21 from Node.
    weir.wait_metric("weir_grpc_responses_total{service=\"g\",grpc_code=\"ok\"}", 26.0);
    let v = recv_json(&rx);
    assert_eq!((v["protocol"].as_str(), v["grpc_status"].as_u64()), (Some("http2"), Some(0)), "{v}");
    assert_eq!(v["path"], "/weir.test.Echo/Unary");
}

#[test]
fn every_grpc_status_reaches_the_client_unchanged_with_its_message() {
    let server = grpc_server("a", &[]);
    // No gRPC retries: each status must reach the client exactly as the server sent it.
    let retry = "[service.retry]\non_grpc_status = []\n[service.outlier]\nenabled = false\n";
    let weir = Weir::start(&config(&service("g", "127.10.30.2:80", "grpc", &[server.addr], retry), None));
    for code in 1..=16u8 {
        let out = grpc_py(weir.proxy, "g", &["calls", "1", &format!("x-status={code}")]);
        let name = weir_core::grpc::name_of(code).to_uppercase();
        assert_eq!(count(&out, "codes", &name), 1, "status {code}: {out}");
        assert_eq!(out["details"][0], format!("status {code} from a"), "{out}");
        let sample =
            format!("weir_grpc_responses_total{{service=\"g\",grpc_code=\"{}\"}}", weir_core::grpc::name_of(code));
        weir.wait_metric(&sample, 1.0);
    }
    assert_eq!(weir.metric("weir_retries_total{service=\"g\",reason=\"grpc-status\"}"), 0.0);
}

#[test]
fn an_unavailable_endpoint_is_retried_onto_a_healthy_one_then_ejected() {
    let bad = grpc_server("bad", &["--status", "14"]);
    let good = grpc_server("good", &[]);
    // Round robin, so that the unavailable endpoint is certainly picked first every other call.
    let extra = "lb = \"round_robin\"\n[service.outlier]\nconsecutive_gateway_failures = 3\n";
    let weir = Weir::start(&config(&service("g", "127.10.30.3:80", "grpc", &[bad.addr, good.addr], extra), None));
    let out = grpc_py(weir.proxy, "g", &["calls", "100"]);
    assert_eq!(count(&out, "codes", "OK"), 100, "every call succeeded: {out}");
    assert_eq!(count(&out, "servers", "good"), 100, "{out}");
    // UNAVAILABLE is a gateway failure: three in a row eject the endpoint.
    weir.wait_metric("weir_grpc_responses_total{service=\"g\",grpc_code=\"ok\"}", 100.0);
    weir.wait_metric_at_least("weir_outlier_ejections_total{service=\"g\"}", 1.0);
    // Ejected: the calls after the ejection never reached it (the few that ejected it, and a
    // probation call, were retried).
    let retries = weir.metric("weir_retries_total{service=\"g\",reason=\"grpc-status\"}");
    assert!(retries >= 1.0, "the unavailable endpoint was never tried");
    assert!(retries < 10.0, "{retries} retries: the unavailable endpoint was not ejected");
}

#[test]
fn calls_over_one_client_connection_are_balanced_per_call() {
    let servers: Vec<_> = ["a", "b", "c"].iter().map(|n| grpc_server(n, &[])).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let (sink, rx) = LineSink::start().expect("sink");
    let extra = "lb = \"round_robin\"\n";
    let weir = Weir::start(&config(&service("g", "127.10.30.4:80", "grpc", &addrs, extra), Some(sink.addr)));
    let out = grpc_py(weir.proxy, "g", &["calls", "90"]);
    assert_eq!(count(&out, "codes", "OK"), 90, "{out}");
    for n in ["a", "b", "c"] {
        assert_eq!(count(&out, "servers", n), 30, "round robin per call, not per connection: {out}");
    }
    let clients: std::collections::BTreeSet<String> =
        (0..90).map(|_| recv_json(&rx)["client"].as_str().expect("client").to_string()).collect();
    assert_eq!(clients.len(), 1, "all calls came over one connection: {clients:?}");
}

#[test]
fn deadlines_travel_per_attempt_and_weirs_own_timeout_is_deadline_exceeded() {
    let server = grpc_server("a", &[]);
    let extra = "[service.timeouts]\nrequest_ms = 1500\n";
    let weir = Weir::start(&config(&service("g", "127.10.30.5:80", "grpc", &[server.addr], extra), None));
    // The client's deadline is shorter: the server sees it.
    let out = grpc_py(weir.proxy, "g", &["inspect", "1.0"]);
    let left = out["seen"]["time_remaining"].as_f64().expect("time remaining");
    assert!(left <= 1.0 && left > 0.5, "{out}");
    // weir's is shorter: the server sees weir's (grpc-timeout rewritten).
    let out = grpc_py(weir.proxy, "g", &["inspect", "30"]);
    let left = out["seen"]["time_remaining"].as_f64().expect("time remaining");
    assert!(left <= 1.5 && left > 0.5, "{out}");
    // The endpoint is slower than weir's timeout: weir answers DEADLINE_EXCEEDED itself.
    let t = std::time::Instant::now();
    let out = grpc_py(weir.proxy, "g", &["inspect", "30", "x-sleep-ms=5000"]);
    assert_eq!(out["code"], "DEADLINE_EXCEEDED", "{out}");
    assert_eq!(out["trailers"]["x-weir-error"], "timeout", "{out}");
    assert!(t.elapsed() < Duration::from_secs(5), "weir's timeout, not the server's sleep");
}

#[test]
fn retries_say_how_many_attempts_came_before_and_honour_pushback() {
    let bad = grpc_server("bad", &["--status", "14"]);
    let good = grpc_server("good", &[]);
    let extra = "lb = \"round_robin\"\n[service.outlier]\nenabled = false\n[service.retry]\nbudget = false\n";
    let weir = Weir::start(&config(&service("g", "127.10.30.6:80", "grpc", &[bad.addr, good.addr], extra), None));
    let (mut first, mut second) = (0u32, 0u32);
    for _ in 0..6 {
        let out = grpc_py(weir.proxy, "g", &["inspect", "10"]);
        assert_eq!(out["code"], "OK", "{out}");
        let md = out["seen"]["metadata"].as_array().expect("metadata");
        let previous = md.iter().find(|kv| kv[0] == "grpc-previous-rpc-attempts").map(|kv| kv[1].clone());
        match previous {
            None => first += 1,
            Some(v) => {
                assert_eq!(v, "1", "{out}");
                second += 1;
            }
        }
    }
    assert!(first > 0 && second > 0, "round robin alternates first attempts: {first} {second}");
    weir.wait_metric("weir_retries_total{service=\"g\",reason=\"grpc-status\"}", f64::from(second));
    // A pushback that says "do not retry" is obeyed.
    let alone = Weir::start(&config(&service("h", "127.10.30.7:80", "grpc", &[bad.addr], ""), None));
    let out = grpc_py(alone.proxy, "h", &["calls", "3", "x-pushback-ms=-1"]);
    assert_eq!(count(&out, "codes", "UNAVAILABLE"), 3, "{out}");
    alone.wait_metric("weir_grpc_responses_total{service=\"h\",grpc_code=\"unavailable\"}", 3.0);
    assert_eq!(alone.metric("weir_retries_total{service=\"h\",reason=\"grpc-status\"}"), 0.0);
    // A pushback that asks for a wait is a retry after it (3 attempts on the one endpoint).
    let out = grpc_py(alone.proxy, "h", &["calls", "1", "x-pushback-ms=10"]);
    assert_eq!(count(&out, "codes", "UNAVAILABLE"), 1, "{out}");
    alone.wait_metric("weir_retries_total{service=\"h\",reason=\"grpc-status\"}", 2.0);
}

#[test]
fn weirs_own_answers_to_grpc_calls_are_trailers_only_statuses() {
    let refused = ReservedPort::loopback().expect("a port nothing listens on");
    let services = service("empty", "127.10.30.8:80", "grpc", &[], "")
        + &service("down", "127.10.30.9:80", "grpc", &[refused.addr()], "");
    let weir = Weir::start(&config(&services, None));
    for (authority, code, reason) in [
        ("empty", "UNAVAILABLE", "no-healthy-endpoint"),
        ("down", "UNAVAILABLE", "connect-failure"),
        ("nowhere", "UNIMPLEMENTED", "no-route"),
    ] {
        let out = grpc_py(weir.proxy, authority, &["inspect", "10"]);
        assert_eq!(
            (out["code"].as_str(), out["trailers"]["x-weir-error"].as_str()),
            (Some(code), Some(reason)),
            "{out}"
        );
    }
    weir.wait_metric("weir_grpc_responses_total{service=\"empty\",grpc_code=\"unavailable\"}", 1.0);
}

/// curl, speaking `args`, its output.
fn curl(args: &[&str]) -> String {
    clients::run(Command::new("curl").args(["-sS", "--max-time", "20"]).args(args), Duration::from_secs(30))
}

#[test]
fn http2_clients_reach_http1_services_and_http1_clients_http2_services() {
    let docs = scratch_dir("h2docs");
    let page = b"hello from an HTTP/2 server\n";
    clients::write_file(&docs, "index.html", page);
    let h2 = Nghttpd::start(&docs);
    let h1 = Endpoint::start("one");
    let services = service("h2web", "127.10.30.10:80", "http2", &[h2.addr], "")
        + &service("h1web", "127.10.30.11:80", "http", &[h1.addr], "");
    let weir = Weir::start(&config(&services, None));
    let url = |path: &str| format!("http://{}{path}", weir.proxy);
    // HTTP/2 → HTTP/1.1: the endpoint sees HTTP/1.1 with weir's Via.
    let out = curl(&["--http2-prior-knowledge", "-H", "host: h1web", "-D", "-", &url("/bytes/5")]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("x-seen-via: 2 weir"), "{out}");
    // HTTP/1.1 → HTTP/2 and HTTP/2 → HTTP/2.
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let out = curl(&[proto, "-H", "host: h2web", &url("/index.html")]);
        assert_eq!(out.as_bytes(), page, "{proto}");
    }
    // Bodies both ways: 300 KiB, chunked from an HTTP/1.1 client, echoed by the HTTP/2 server.
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let file = clients::write_file(&docs, "upload.bin", &body);
    let data = format!("@{}", file.display());
    for extra in [&["--http1.1", "-H", "transfer-encoding: chunked"][..], &["--http2-prior-knowledge"][..]] {
        let mut args = extra.to_vec();
        args.extend(["-H", "host: h2web", "--data-binary", &data, "-o", "-"]);
        let u = url("/upload");
        args.push(&u);
        let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(&args).output().expect("curl");
        assert!(out.status.success() && out.stdout == body, "{extra:?}: {} bytes back", out.stdout.len());
    }
}

#[test]
fn hop_by_hop_fields_never_cross_into_http2() {
    let server = grpc_server("a", &[]);
    let weir = Weir::start(&config(&service("g", "127.10.30.12:80", "grpc", &[server.addr], ""), None));
    // A gRPC call carried over HTTP/1.1 (the empty message: 5 bytes of framing), with every
    // kind of connection-specific field; grpcio refuses a request that carries one.
    let dir = scratch_dir("hop");
    let file = clients::write_file(&dir, "empty.grpc", &[0, 0, 0, 0, 0]);
    let data = format!("@{}", file.display());
    let u = format!("http://{}/weir.test.Echo/Inspect", weir.proxy);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--http1.1", "-o", "-"])
        .args(["-H", "host: g", "-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", "connection: x-hop, te", "-H", "x-hop: 1", "-H", "keep-alive: timeout=5"])
        .args(["-H", "proxy-connection: keep-alive", "-H", "x-end-to-end: kept"])
        .args(["--data-binary", &data, &u])
        .output()
        .expect("curl");
    assert!(out.status.success() && out.stdout.len() > 5, "{out:?}");
    let seen: Value = serde_json::from_slice(&out.stdout[5..]).expect("the server's JSON");
    let names: Vec<&str> =
        seen["metadata"].as_array().expect("metadata").iter().filter_map(|kv| kv[0].as_str()).collect();
    for hop in ["connection", "x-hop", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"] {
        assert!(!names.contains(&hop), "{hop} crossed into HTTP/2: {names:?}");
    }
    assert!(names.contains(&"x-end-to-end") && names.contains(&"via"), "{names:?}");
}

#[test]
fn nghttp_sees_trailers_and_h2load_completes_through_weir() {
    let docs = scratch_dir("h2load");
    clients::write_file(&docs, "index.html", &[b'x'; 2048]);
    let port = ReservedPort::loopback().expect("port");
    let addr = port.addr();
    let mut nghttpd = Command::new("nghttpd")
        .args(["--no-tls", "-a", "127.0.0.1", "--trailer", "x-checksum: 42", "-d"])
        .arg(&docs)
        .arg(addr.port().to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("nghttpd");
    weir_tests::eventually(Duration::from_secs(10), "nghttpd listening", || std::net::TcpStream::connect(addr).ok());
    let weir = Weir::start(&config(&service("h2web", "127.10.30.13:80", "http2", &[addr], ""), None));
    let url = format!("http://{}/index.html", weir.proxy);
    let out =
        clients::run(Command::new("nghttp").args(["-v", "-H", ":authority: h2web", &url]), Duration::from_secs(30));
    assert!(out.contains(":status: 200"), "{out}");
    assert!(out.contains("x-checksum: 42"), "the trailer reached the client: {out}");
    let out = clients::run(
        Command::new("h2load").args(["-n", "2000", "-c", "4", "-m", "16", "-H", ":authority: h2web", &url]),
        Duration::from_secs(60),
    );
    assert!(out.contains("2000 succeeded, 0 failed"), "{out}");
    let _ = nghttpd.kill();
    let _ = nghttpd.wait();
}

#[test]
fn websocket_echo_through_weir_with_large_messages_in_both_close_orders() {
    let server = clients::ws_server();
    let (sink, rx) = LineSink::start().expect("sink");
    let weir = Weir::start(&config(&service("ws", "127.10.30.14:80", "http", &[server.addr], ""), Some(sink.addr)));
    for order in ["client", "server"] {
        let out = clients::ws_client(weir.proxy, "ws", 4, 1 << 20, order);
        assert_eq!((out["echoed"].as_u64(), out["mismatch"].as_u64()), (Some(4), Some(0)), "{order}: {out}");
        let want = if order == "client" { 1000 } else { 4001 };
        assert_eq!(out["close_code"].as_u64(), Some(want), "{order}: {out}");
        // Counted when it closes, with what crossed.
        let v = recv_json(&rx);
        assert_eq!((v["status"].as_u64(), v["attempts"].as_u64()), (Some(101), Some(1)), "{v}");
        assert!(v["bytes_in"].as_u64().is_some_and(|b| b > 4 << 20), "{v}");
        assert!(v["bytes_out"].as_u64().is_some_and(|b| b > 4 << 20), "{v}");
    }
    weir.wait_metric("weir_requests_total{service=\"ws\",source=\"direct\",code=\"101\"}", 2.0);
}

#[test]
fn an_upgrade_is_never_retried_once_sent() {
    // Endpoints that take the request and reset: a GET would be retried, an upgrade not.
    let eps: Vec<Endpoint> = (0..2).map(|i| Endpoint::start(&format!("e{i}"))).collect();
    for ep in &eps {
        ep.set(weir_tests::Behavior::ResetAfterRequest);
    }
    let addrs: Vec<SocketAddr> = eps.iter().map(|e| e.addr).collect();
    let weir = Weir::start(&config(&service("ws", "127.10.30.15:80", "http", &addrs, ""), None));
    let mut c = weir_tests::Client::connect(weir.proxy);
    c.send_raw(
        b"GET /chat HTTP/1.1\r\nhost: ws\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let r = c.read_response(false).expect("an answer");
    assert_eq!(r.status, 502, "{:?}", r.header("x-weir-error"));
    let total: u64 = eps.iter().map(|e| e.requests()).sum();
    assert_eq!(total, 1, "the upgrade reached exactly one endpoint once");
    // A plain GET on the same endpoints is retried.
    let r = weir_tests::Client::connect(weir.proxy).get("/", "ws");
    assert_eq!(r.status, 502);
    let total: u64 = eps.iter().map(|e| e.requests()).sum();
    assert!(total >= 3, "{total}");
}

#[test]
fn connect_over_http2_is_not_implemented() {
    let h1 = Endpoint::start("one");
    let weir = Weir::start(&config(&service("h1web", "127.10.30.16:80", "http", &[h1.addr], ""), None));
    let out = clients::run(
        Command::new("nghttp").args([
            "-v",
            "-H",
            ":method: CONNECT",
            "-H",
            ":authority: h1web",
            &format!("http://{}/", weir.proxy),
        ]),
        Duration::from_secs(30),
    );
    assert!(out.contains(":status: 501") || out.contains("RST_STREAM"), "{out}");
    assert_eq!(h1.requests(), 0, "nothing reached the endpoint");
}

#[test]
fn a_client_that_gives_up_cancels_the_upstream_attempt() {
    let slow = Endpoint::start("slow");
    slow.set(weir_tests::Behavior::Delay(Duration::from_secs(8)));
    let weir = Weir::start(&config(&service("slow", "127.10.30.17:80", "http", &[slow.addr], ""), None));
    let url = format!("http://{}/", weir.proxy);
    // curl gives up after half a second (and closes its connection, resetting the stream).
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "0.5", "-H", "host: slow", &url])
        .output()
        .expect("curl");
    assert!(!out.status.success(), "the request should have timed out on the client");
    // weir drops the attempt at once instead of holding the endpoint for its 8 s.
    weir_tests::eventually(Duration::from_secs(4), "the upstream connection closed", || {
        (weir.metric("weir_upstream_connections{service=\"slow\"}") == 0.0
            && weir.metric("weir_requests_total{service=\"slow\",source=\"direct\",code=\"none\"}") == 1.0)
            .then_some(())
    });
}
