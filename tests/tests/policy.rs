//! Traffic policy through weir with real clients on real sockets: routes (path, method,
//! header, query, regex; no match = 404 `no-route`) over HTTP/1.1 and HTTP/2 alike, header
//! edits seen by the endpoint, a 90/10 split exact over 10 000 requests (h2load), rate limits
//! (node-wide over two workers, and per client: a flood does not push a quiet client over),
//! active health checks (a listening-but-broken endpoint gets no request, and rejoins when it
//! passes), faults (aborts at 10% ±2% over 10 000 requests, never retried; delays counted),
//! gRPC calls routed by metadata (grpcio), what the metrics and access log say, and a broken
//! policy refused by `weir check` and by a reload that keeps the running config.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_tests::clients::{self, grpc_py, grpc_server};
use weir_tests::{Client, Endpoint, LineSink, Weir, eventually};

/// A config with `services`, `workers` workers and the access log sent to `log`.
fn config(workers: usize, services: &str, log: Option<SocketAddr>) -> String {
    let sink = log.map_or("off".to_string(), |a| format!("tcp:{a}"));
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = {workers}\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"{sink}\"\n{services}"
    )
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
}

/// An HTTP/1.1 endpoint that records every request head it gets (method, target, fields) and
/// answers 200 with its name, except `/healthz`, answered `health` (a status it can change).
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<Head>>>,
    health: Arc<AtomicU64>,
    checks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
struct Head {
    method: String,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Recorder {
    fn start(name: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads: Arc<Mutex<Vec<Head>>> = Arc::default();
        let health = Arc::new(AtomicU64::new(200));
        let checks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, hs, c, s) = (heads.clone(), health.clone(), checks.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (h, hs, c) = (h.clone(), hs.clone(), c.clone());
                std::thread::spawn(move || serve(conn, name, &h, &hs, &c));
            }
        });
        Recorder { addr, heads, health, checks, stop }
    }

    /// Requests other than health checks.
    fn requests(&self) -> Vec<Head> {
        self.heads.lock().expect("heads").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, name: &str, heads: &Mutex<Vec<Head>>, health: &AtomicU64, checks: &AtomicU64) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut fields = BTreeMap::new();
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l).unwrap_or(0) == 0 {
                return;
            }
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let close = fields.get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let (status, body) = if target == "/healthz" {
            checks.fetch_add(1, Ordering::SeqCst);
            (health.load(Ordering::SeqCst), "check".to_string())
        } else {
            heads.lock().expect("heads").push(Head { method, target, fields });
            (200, name.to_string())
        };
        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-endpoint: {name}\r\n\r\n{body}", body.len());
        if writer.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// curl, its output.
fn curl(args: &[&str]) -> String {
    clients::run(Command::new("curl").args(["-sS", "--max-time", "20"]).args(args), Duration::from_secs(30))
}

/// h2load's status-code summary: (2xx, 4xx, 5xx) of `n` requests to `url` with `:authority`.
fn h2load(url: &str, authority: &str, n: usize) -> (u64, u64, u64) {
    let out = clients::run(
        Command::new("h2load")
            .args(["-n", &n.to_string(), "-c", "4", "-m", "8", "-H"])
            .arg(format!(":authority: {authority}"))
            .arg(url),
        Duration::from_secs(120),
    );
    let line = out.lines().find(|l| l.contains("status codes:")).unwrap_or_else(|| panic!("no status codes: {out}"));
    let num = |what: &str| -> u64 {
        let at = line.find(what).unwrap_or_else(|| panic!("{what} in {line}"));
        line[..at].trim_end().rsplit([' ', ',']).next().and_then(|n| n.parse().ok()).expect("a count")
    };
    (num(" 2xx"), num(" 4xx"), num(" 5xx"))
}

#[test]
fn routes_match_and_edit_requests_over_http11_and_http2() {
    let (v1, v2, dbg) = (Recorder::start("v1"), Recorder::start("v2"), Recorder::start("dbg"));
    let (sink, rx) = LineSink::start().expect("sink");
    let services = format!(
        r#"[[service]]
name = "shop"
vip = "127.10.60.1:80"
[[service.backend]]
name = "v1"
endpoints = [{}]
[[service.backend]]
name = "v2"
endpoints = [{}]
[[service.backend]]
name = "dbg"
endpoints = [{}]
[[service.route]]
match = {{ path_prefix = "/v2/" }}
backends = {{ v2 = 1 }}
[[service.route]]
match = {{ path_regex = "/items/[0-9]+", method = "DELETE" }}
backends = {{ dbg = 1 }}
[[service.route]]
match = {{ path_exact = "/q", query = {{ debug = "1" }}, headers = {{ "X-Team" = "blue" }} }}
backends = {{ dbg = 1 }}
[[service.route]]
match = {{ path_prefix = "/api/" }}
backends = {{ v1 = 1 }}
request_headers = {{ set = {{ "x-weir-route" = "api" }}, remove = ["x-debug"] }}
"#,
        list(&[v1.addr]),
        list(&[v2.addr]),
        list(&[dbg.addr])
    );
    let weir = Weir::start(&config(1, &services, Some(sink.addr)));
    let url = |p: &str| format!("http://{}{p}", weir.proxy);
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let get = |path: &str, extra: &[&str]| {
            let mut args = vec![proto, "-H", "host: shop", "-o", "-", "-w", " %{http_code}"];
            args.extend_from_slice(extra);
            let u = url(path);
            args.push(&u);
            curl(&args)
        };
        assert_eq!(get("/v2/cart", &[]), "v2 200", "{proto}");
        assert_eq!(get("/items/42", &["-X", "DELETE"]), "dbg 200", "{proto}: regex and method");
        assert!(get("/items/42", &[]).ends_with(" 404"), "{proto}: GET matches no route");
        assert!(get("/items/4x2", &["-X", "DELETE"]).ends_with(" 404"), "{proto}: the regex matches whole paths");
        assert_eq!(get("/q?a=2&debug=1", &["-H", "x-team: blue"]), "dbg 200", "{proto}: query and header");
        assert!(get("/q?debug=1", &["-H", "x-team: red"]).ends_with(" 404"), "{proto}: the header differs");
        assert_eq!(get("/api/x", &["-H", "x-debug: 1", "-H", "x-weir-route: forged"]), "v1 200", "{proto}");
        let out = curl(&[proto, "-sS", "-D", "-", "-o", "/dev/null", "-H", "host: shop", &url("/nowhere")]);
        assert!(out.to_ascii_lowercase().contains("x-weir-error: no-route"), "{proto}: {out}");
    }
    // The endpoint saw the route's edits: the forged value replaced, the removed field gone.
    let api: Vec<Head> = v1.requests();
    assert_eq!(api.len(), 2, "{api:?}");
    for h in &api {
        assert_eq!(h.target, "/api/x");
        assert_eq!(h.fields.get("x-weir-route").map(String::as_str), Some("api"), "{h:?}");
        assert!(!h.fields.contains_key("x-debug"), "{h:?}");
    }
    assert_eq!(dbg.requests().iter().filter(|h| h.method == "DELETE").count(), 2);
    assert_eq!(v2.requests().len(), 2);
    // RED per route and backend; unmatched requests are counted as no-route.
    weir.wait_metric("weir_route_requests_total{service=\"shop\",route=\"0\",backend=\"v2\",code=\"200\"}", 2.0);
    weir.wait_metric("weir_route_requests_total{service=\"shop\",route=\"3\",backend=\"v1\",code=\"200\"}", 2.0);
    weir.wait_metric("weir_request_errors_total{service=\"shop\",reason=\"no-route\"}", 8.0);
    // The access log names the route and the backend.
    let lines: Vec<serde_json::Value> = (0..16)
        .map(|_| serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).expect("a line")).expect("JSON"))
        .collect();
    let first = &lines[0];
    assert_eq!((first["route"].as_u64(), first["backend"].as_str()), (Some(0), Some("v2")), "{first}");
    assert!(lines.iter().any(|l| l["route"].is_null() && l["error"] == "no-route"), "{lines:?}");
}

#[test]
fn a_split_is_exact_over_ten_thousand_requests() {
    let (s1, s2, canary) = (Endpoint::start("s1"), Endpoint::start("s2"), Endpoint::start("canary"));
    let services = format!(
        "[[service]]\nname = \"split\"\nvip = \"127.10.60.2:80\"\n\
         [[service.backend]]\nname = \"stable\"\nendpoints = [{}]\n\
         [[service.backend]]\nname = \"canary\"\nendpoints = [{}]\n\
         [[service.route]]\nmatch = {{ path_prefix = \"/\" }}\nbackends = {{ stable = 90, canary = 10 }}\n",
        list(&[s1.addr, s2.addr]),
        list(&[canary.addr])
    );
    let weir = Weir::start(&config(2, &services, None));
    let (ok, _, _) = h2load(&format!("http://{}/", weir.proxy), "split", 10_000);
    assert_eq!(ok, 10_000);
    let (stable, canary_n) = (s1.requests() + s2.requests(), canary.requests());
    assert_eq!(stable + canary_n, 10_000);
    assert!((8_900..=9_100).contains(&stable), "stable {stable}, canary {canary_n}: not 90/10 within ±1%");
    // Each backend balances on its own: both stable endpoints share its part.
    assert!(s1.requests() > 3_000 && s2.requests() > 3_000, "{} / {}", s1.requests(), s2.requests());
    weir.wait_metric(
        "weir_route_requests_total{service=\"split\",route=\"0\",backend=\"canary\",code=\"200\"}",
        canary_n as f64,
    );
}

/// Sends GETs on `conns` keep-alive connections until `until`, at most `max` each: (200s,
/// 429s, when the first started, when the last ended).
fn flood(
    proxy: SocketAddr,
    host: &'static str,
    conns: usize,
    until: Instant,
    max: u64,
) -> (u64, u64, Instant, Instant) {
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(proxy);
                let (mut ok, mut limited) = (0, 0);
                for _ in 0..max {
                    if Instant::now() >= until {
                        break;
                    }
                    let r = c.get("/", host);
                    match r.status {
                        200 => ok += 1,
                        429 => {
                            assert_eq!(r.header("x-weir-error"), Some("rate-limited"));
                            assert!(r.header("retry-after").is_some_and(|s| s.parse::<u32>().is_ok_and(|s| s >= 1)));
                            limited += 1;
                        }
                        s => panic!("status {s}"),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in threads {
        let (o, l) = t.join().expect("client thread");
        ok += o;
        limited += l;
    }
    (ok, limited, started, Instant::now())
}

#[test]
fn a_rate_limit_holds_node_wide_and_per_client() {
    let e = Endpoint::start("rl");
    let services = format!(
        "[[service]]\nname = \"rl\"\nvip = \"127.10.60.3:80\"\nendpoints = [{}]\n\
         [service.rate_limit]\nrequests_per_second = 200\nburst = 20\n\
         [[service]]\nname = \"pc\"\nvip = \"127.10.60.4:80\"\nendpoints = [{}]\n\
         [service.rate_limit]\nrequests_per_second = 20\nburst = 10\nper = \"client\"\n",
        list(&[e.addr]),
        list(&[e.addr])
    );
    let weir = Weir::start(&config(2, &services, None));
    // Node-wide: 6 connections over two workers, as fast as they go, for 5 s.
    let (ok, limited, start, end) = flood(weir.proxy, "rl", 6, Instant::now() + Duration::from_secs(5), 200_000);
    let secs = end.duration_since(start).as_secs_f64();
    let allowed = 200.0 * secs + 20.0;
    assert!((ok + limited) as f64 >= 3.0 * allowed, "the clients did not offer 3× the limit: {ok} + {limited}");
    assert!((ok as f64 - allowed).abs() <= 0.1 * allowed, "{ok} passed in {secs:.2} s, {allowed:.0} allowed");
    weir.wait_metric("weir_request_errors_total{service=\"rl\",reason=\"rate-limited\"}", limited as f64);
    weir.wait_metric("weir_requests_total{service=\"rl\",source=\"direct\",code=\"429\"}", limited as f64);

    // Per client: a flood from 127.0.0.1 is limited, and a quiet client on 127.0.0.3 sending
    // within its own burst is not pushed over.
    let proxy = weir.proxy;
    let flooder = std::thread::spawn(move || flood(proxy, "pc", 2, Instant::now() + Duration::from_secs(3), 50_000));
    eventually(Duration::from_secs(5), "the flood is limited", || {
        (weir.metric("weir_request_errors_total{service=\"pc\",reason=\"rate-limited\"}") > 0.0).then_some(())
    });
    let url = format!("http://{proxy}/");
    let mut args = vec!["--interface", "127.0.0.3", "-H", "host: pc", "-o", "/dev/null", "-w", "%{http_code}\n"];
    for _ in 0..9 {
        args.push(&url);
    }
    let codes = curl(&args);
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), 9, "the quiet client was limited: {codes}");
    let (ok, limited, _, _) = flooder.join().expect("flooder");
    assert!(limited > ok, "the flood was not limited: {ok} passed, {limited} limited");
}

#[test]
fn an_endpoint_failing_its_health_checks_gets_no_request_and_rejoins_when_it_passes() {
    let (good, broken) = (Recorder::start("good"), Recorder::start("broken"));
    broken.health.store(503, Ordering::SeqCst);
    let services = format!(
        "[[service]]\nname = \"hc\"\nvip = \"127.10.60.5:80\"\nendpoints = [{}]\n\
         [service.health_check]\npath = \"/healthz\"\ninterval_ms = 50\ntimeout_ms = 500\n\
         unhealthy_after = 2\nhealthy_after = 2\n",
        list(&[good.addr, broken.addr])
    );
    let weir = Weir::start(&config(2, &services, None));
    // Until its first check passes no endpoint is used: wait for the good one to be in.
    eventually(Duration::from_secs(10), "the good endpoint checked in", || {
        let (_, body) = weir.admin_get("/endpoints");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let eps = v[0]["endpoints"].as_array().cloned().unwrap_or_default();
        let state = |a: SocketAddr| eps.iter().find(|e| e["address"] == a.to_string()).map(|e| e["state"].clone());
        (state(good.addr) == Some("active".into()) && state(broken.addr) == Some("unhealthy".into())).then_some(())
    });
    let mut c = Client::connect(weir.proxy);
    for _ in 0..200 {
        let r = c.get("/work", "hc");
        assert_eq!((r.status, r.header("x-endpoint")), (200, Some("good")));
    }
    assert_eq!(broken.requests().len(), 0, "a failing endpoint got requests");
    assert!(broken.checks.load(Ordering::SeqCst) >= 1, "it was checked");
    assert_eq!(weir.metric("weir_endpoints{service=\"hc\",state=\"unhealthy\"}"), 1.0);
    // The endpoint may have answered a check whose result weir has not counted yet.
    eventually(Duration::from_secs(10), "a failed check counted", || {
        (weir.metric("weir_health_checks_total{service=\"hc\",backend=\"default\",result=\"fail\"}") >= 1.0)
            .then_some(())
    });
    // It passes again: back through probation, then it takes its share.
    broken.health.store(200, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "the endpoint is back", || {
        let r = c.get("/work", "hc");
        assert_eq!(r.status, 200);
        (!broken.requests().is_empty()).then_some(())
    });
}

#[test]
fn faults_abort_their_share_never_retried_and_delays_are_counted() {
    let e = Endpoint::start("f");
    let services = format!(
        "[[service]]\nname = \"f\"\nvip = \"127.10.60.6:80\"\nendpoints = [{}]\n\
         [[service.route]]\nmatch = {{ path_prefix = \"/always\" }}\nfault = {{ abort_percent = 100, abort_status = 418 }}\n\
         [[service.route]]\nmatch = {{ path_prefix = \"/slow\" }}\nfault = {{ delay_percent = 100, delay_ms = 20 }}\n\
         [[service.route]]\nfault = {{ abort_percent = 10, abort_status = 503 }}\n",
        list(&[e.addr])
    );
    let weir = Weir::start(&config(2, &services, None));
    let (ok, _, aborted) = h2load(&format!("http://{}/x", weir.proxy), "f", 10_000);
    assert_eq!(ok + aborted, 10_000);
    assert!((800..=1_200).contains(&aborted), "{aborted} of 10000 aborted: not 10% ±2%");
    assert_eq!(e.requests(), ok, "an aborted request reached the endpoint (or was retried)");
    weir.wait_metric(
        "weir_faults_injected_total{service=\"f\",route=\"2\",backend=\"default\",kind=\"abort\"}",
        aborted as f64,
    );
    let before = e.requests();
    let out = curl(&["-D", "-", "-o", "/dev/null", "-H", "host: f", &format!("http://{}/always", weir.proxy)]);
    assert!(out.starts_with("HTTP/1.1 418") && out.contains("x-weir-error: fault-injected"), "{out}");
    let out = curl(&[
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "host: f",
        &format!("http://{}/always", weir.proxy),
    ]);
    assert!(out.starts_with("HTTP/2 418") && out.contains("x-weir-error: fault-injected"), "{out}");
    assert_eq!(e.requests(), before, "an abort never reaches the endpoint");
    for _ in 0..3 {
        assert_eq!(Client::connect(weir.proxy).get("/slow", "f").status, 200);
    }
    weir.wait_metric("weir_faults_injected_total{service=\"f\",route=\"1\",backend=\"default\",kind=\"delay\"}", 3.0);
}

#[test]
fn grpc_calls_are_routed_by_metadata_and_limited_with_resource_exhausted() {
    let (stable, canary) = (grpc_server("stable", &[]), grpc_server("canary", &[]));
    let services = format!(
        "[[service]]\nname = \"g\"\nvip = \"127.10.60.7:80\"\nprotocol = \"grpc\"\n\
         [[service.backend]]\nname = \"stable\"\nendpoints = [{}]\n\
         [[service.backend]]\nname = \"canary\"\nendpoints = [{}]\n\
         [[service.route]]\nmatch = {{ headers = {{ \"x-canary\" = \"yes\" }} }}\nbackends = {{ canary = 1 }}\n\
         request_headers = {{ set = {{ \"x-routed\" = \"canary\" }} }}\n\
         [[service.route]]\nbackends = {{ stable = 1 }}\n",
        list(&[stable.addr]),
        list(&[canary.addr])
    );
    let weir = Weir::start(&config(1, &services, None));
    let out = grpc_py(weir.proxy, "g", &["calls", "10", "x-canary=yes"]);
    assert_eq!(out["servers"]["canary"].as_u64(), Some(10), "{out}");
    let out = grpc_py(weir.proxy, "g", &["calls", "10"]);
    assert_eq!(out["servers"]["stable"].as_u64(), Some(10), "{out}");
    let out = grpc_py(weir.proxy, "g", &["inspect", "10", "x-canary=yes"]);
    let md = out["seen"]["metadata"].as_array().cloned().unwrap_or_default();
    assert!(md.iter().any(|kv| kv[0] == "x-routed" && kv[1] == "canary"), "the route's field: {out}");
    weir.wait_metric("weir_route_requests_total{service=\"g\",route=\"0\",backend=\"canary\",code=\"200\"}", 11.0);

    // Over its limit, a call ends RESOURCE_EXHAUSTED (a trailers-only answer).
    weir.reload(&config(1, &format!("{services}[service.rate_limit]\nrequests_per_second = 1\nburst = 2\n"), None))
        .expect("reload");
    let out = grpc_py(weir.proxy, "g", &["calls", "20"]);
    let limited = out["codes"]["RESOURCE_EXHAUSTED"].as_u64().unwrap_or(0);
    assert!(limited >= 15, "{out}");
}

#[test]
fn a_broken_policy_is_located_and_a_reload_keeps_the_running_one() {
    let e = Endpoint::start("k");
    let good = format!(
        "[[service]]\nname = \"k\"\nvip = \"127.10.60.8:80\"\n[[service.backend]]\nname = \"stable\"\nendpoints = [{}]\n\
         [[service.route]]\nbackends = {{ stable = 1 }}\n",
        list(&[e.addr])
    );
    let weir = Weir::start(&config(1, &good, None));
    for (bad, field, value) in [
        (good.replace("{ stable = 1 }", "{ stabel = 1 }"), "service[0].route[0].backends.stabel", "stabel"),
        (good.replace("{ stable = 1 }", "{ stable = 0 }"), "service[0].route[0].backends", "every weight is 0"),
        (
            good.replace("backends =", "match = { path_regex = \"/(a\" }\nbackends ="),
            "service[0].route[0].match.path_regex",
            "/(a",
        ),
        (
            format!("{good}[service.rate_limit]\nrequests_per_second = 0\n"),
            "service[0].rate_limit.requests_per_second",
            "0",
        ),
    ] {
        let text = config(1, &bad, None);
        let err = weir.reload(&text).expect_err("a broken policy is refused");
        assert!(err.contains(field) && err.contains(value), "{err}");
        // `weir check` says the same, with the file and line.
        let path = weir.config_path.with_file_name("check.toml");
        std::fs::write(&path, text.replace("@PROXY@", "127.0.0.1:0").replace("@ADMIN@", "127.0.0.1:0")).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_weir-cli"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("weir check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("{}:", path.display())) && stderr.contains(field), "{stderr}");
        // The running config still routes.
        assert_eq!(Client::connect(weir.proxy).get("/", "k").status, 200);
    }
}

#[test]
fn a_route_has_its_own_timeouts_and_a_reload_of_routes_drops_nothing_in_flight() {
    let (slow, fast) = (Endpoint::start("slow"), Endpoint::start("fast"));
    slow.set(weir_tests::Behavior::Delay(Duration::from_millis(1500)));
    let routes = |weights: &str| {
        format!(
            "[[service]]\nname = \"t\"\nvip = \"127.10.60.9:80\"\n\
             [[service.backend]]\nname = \"slow\"\nendpoints = [{}]\n\
             [[service.backend]]\nname = \"fast\"\nendpoints = [{}]\n\
             [[service.route]]\nmatch = {{ path_prefix = \"/short/\" }}\nbackends = {{ slow = 1 }}\n\
             [service.route.timeouts]\nrequest_ms = 200\n\
             [[service.route]]\nbackends = {{ {weights} }}\n",
            list(&[slow.addr]),
            list(&[fast.addr])
        )
    };
    let weir = Weir::start(&config(1, &routes("slow = 1"), None));
    // The route's request_ms (200 ms) ends a request the service's default (15 s) would wait for.
    let r = Client::connect(weir.proxy).get("/short/x", "t");
    assert_eq!((r.status, r.header("x-weir-error")), (504, Some("timeout")));
    // A request in flight on the default route while a reload moves the route's traffic away.
    let proxy = weir.proxy;
    let before = slow.requests();
    let inflight = std::thread::spawn(move || Client::connect(proxy).get("/long", "t"));
    eventually(Duration::from_secs(10), "the request reached the slow endpoint", || {
        (slow.requests() > before).then_some(())
    });
    weir.reload(&config(1, &routes("fast = 1"), None)).expect("reload");
    assert_eq!(Client::connect(weir.proxy).get("/long", "t").header("x-endpoint"), Some("fast"), "the new split");
    let r = inflight.join().expect("client");
    assert_eq!((r.status, r.header("x-endpoint")), (200, Some("slow")), "the request in flight finished");
}

#[test]
fn a_tcp_health_check_takes_out_an_endpoint_that_refuses_connections() {
    let (up, down) = (Endpoint::start("up"), Endpoint::start("down"));
    let services = format!(
        "[[service]]\nname = \"tc\"\nvip = \"127.10.60.10:80\"\nendpoints = [{}]\n\
         [service.health_check]\ntcp = true\ninterval_ms = 50\ntimeout_ms = 500\nunhealthy_after = 1\nhealthy_after = 1\n",
        list(&[up.addr, down.addr])
    );
    let weir = Weir::start(&config(1, &services, None));
    let state = |a: SocketAddr| {
        let (_, body) = weir.admin_get("/endpoints");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let eps = v[0]["endpoints"].as_array().cloned().unwrap_or_default();
        eps.iter().find(|e| e["address"] == a.to_string()).map(|e| e["state"].as_str().unwrap_or("").to_string())
    };
    eventually(Duration::from_secs(10), "both checked in", || {
        (state(up.addr).as_deref() == Some("active") && state(down.addr).as_deref() == Some("active")).then_some(())
    });
    down.kill();
    eventually(Duration::from_secs(10), "the refusing endpoint is out", || {
        (state(down.addr).as_deref() == Some("unhealthy")).then_some(())
    });
    let before = down.requests();
    let mut c = Client::connect(weir.proxy);
    for _ in 0..50 {
        assert_eq!(c.get("/", "tc").header("x-endpoint"), Some("up"));
    }
    assert_eq!(down.requests(), before);
}
