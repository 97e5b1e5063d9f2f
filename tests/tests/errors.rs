//! docs/OPERATING.md's failure table rows that belong to the data path: what the client sees, the
//! `x-weir-error` reason, and that nothing malformed reaches an endpoint.

use std::time::{Duration, Instant};

use weir_tests::{Behavior, Client, Endpoint, Weir};

use crate::data_path::{config, service};

fn one_service(ep: &Endpoint, extra: &str) -> (Weir, Client) {
    let weir = Weir::start(&config(&service("s", "127.10.2.1:80", &[ep], extra)));
    let c = Client::connect(weir.proxy);
    (weir, c)
}

#[test]
fn smuggling_and_malformed_requests_get_400_and_never_reach_the_endpoint() {
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&service("s", "127.10.2.2:80", &[&ep], "")));
    let cases: [&[u8]; 8] = [
        b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: +4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: s\r\nx-a : b\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: s\r\nx-a: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: s\r\nx-a: b\x00c\r\n\r\n",
        b"GET / HTTP/1.1\r\nx-no-host: 1\r\n\r\n",
    ];
    for raw in cases {
        let mut c = Client::connect(weir.proxy);
        c.send_raw(raw);
        let r = c.read_response(false).expect("an answer");
        assert_eq!(r.status, 400, "for {:?}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("x-weir-error"), Some("bad-request"));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.is_closed(Duration::from_secs(2)), "connection kept open after 400");
    }
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(c.read_response(false).expect("answer").status, 501);
    assert_eq!(ep.requests(), 0, "a malformed request reached the endpoint");
}

#[test]
fn oversized_heads_get_431_and_long_uris_414() {
    let ep = Endpoint::start("a");
    let (weir, mut c) = one_service(&ep, "");
    c.send_raw(format!("GET / HTTP/1.1\r\nhost: s\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024)).as_bytes());
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.header("x-weir-error")), (431, Some("head-too-large")));
    let mut c = Client::connect(weir.proxy);
    let mut many = String::from("GET / HTTP/1.1\r\nhost: s\r\n");
    for i in 0..101 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    c.send_raw(many.as_bytes());
    assert_eq!(c.read_response(false).expect("answer").status, 431);
    let mut c = Client::connect(weir.proxy);
    c.send_raw(format!("GET /{} HTTP/1.1\r\nhost: s\r\n\r\n", "p".repeat(9000)).as_bytes());
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.header("x-weir-error")), (414, Some("uri-too-long")));
    assert_eq!(ep.requests(), 0);
}

#[test]
fn a_client_too_slow_with_its_head_gets_408() {
    let ep = Endpoint::start("a");
    let toml = config(&service("s", "127.10.2.3:80", &[&ep], ""))
        .replace("workers = 2", "workers = 1\nheader_read_timeout_ms = 300");
    let weir = Weir::start(&toml);
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET / HTTP/1.1\r\nhost: s\r\n");
    let t = Instant::now();
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.header("x-weir-error")), (408, Some("header-read-timeout")));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(c.is_closed(Duration::from_secs(2)));
}

#[test]
fn unknown_service_gets_404() {
    let ep = Endpoint::start("a");
    let (_weir, mut c) = one_service(&ep, "");
    let r = c.get("/", "nope");
    assert_eq!((r.status, r.header("x-weir-error")), (404, Some("no-route")));
    // The connection stays usable for known services.
    assert_eq!(c.get("/", "s").status, 200);
}

#[test]
fn refused_connects_are_retried_elsewhere_then_503() {
    let good = Endpoint::start("good");
    let dead = Endpoint::start("dead");
    dead.kill();
    let weir = Weir::start(&config(&service("s", "127.10.2.4:80", &[&dead, &good], "")));
    let mut c = Client::connect(weir.proxy);
    for _ in 0..20 {
        let r = c.get("/", "s");
        assert_eq!(
            (r.status, r.header("x-endpoint")),
            (200, Some("good")),
            "a refused endpoint must be retried on another"
        );
    }
    // With only dead endpoints: 503 connect_failure.
    let weir2 = Weir::start(&config(&service("d", "127.10.2.5:80", &[&dead], "")));
    let mut c = Client::connect(weir2.proxy);
    let r = c.get("/", "d");
    assert_eq!((r.status, r.header("x-weir-error")), (503, Some("connect-failure")));
    drop(weir);
}

#[test]
fn an_endpoint_slower_than_the_request_timeout_gets_504() {
    let ep = Endpoint::start("slow");
    ep.set(Behavior::Delay(Duration::from_secs(3)));
    let (_weir, mut c) = one_service(&ep, "[service.timeouts]\nrequest_ms = 300\n");
    let t = Instant::now();
    let r = c.get("/", "s");
    assert_eq!((r.status, r.header("x-weir-error")), (504, Some("timeout")));
    assert!(t.elapsed() < Duration::from_secs(2), "504 took {:?}", t.elapsed());
}

#[test]
fn no_endpoints_gets_503_saying_why() {
    let weir = Weir::start(&config("[[service]]\nname = \"empty\"\nvip = \"127.10.2.6:80\"\n"));
    let mut c = Client::connect(weir.proxy);
    let r = c.get("/", "empty");
    assert_eq!((r.status, r.header("x-weir-error")), (503, Some("no-healthy-endpoint")));
    assert!(r.body_string().contains("no healthy endpoint"), "{}", r.body_string());
}

#[test]
fn over_the_pending_limit_requests_are_shed_with_retry_after() {
    let ep = Endpoint::start("slow");
    ep.set(Behavior::Delay(Duration::from_millis(800)));
    let toml = config(&service("s", "127.10.2.7:80", &[&ep], "[service.limits]\nmax_pending_requests = 1\n"))
        .replace("workers = 2", "workers = 1");
    let weir = Weir::start(&toml);
    let proxy = weir.proxy;
    let first = std::thread::spawn(move || Client::connect(proxy).get("/", "s").status);
    // The first request is pending once the endpoint has it (it answers after 800 ms).
    weir_tests::eventually(Duration::from_secs(5), "the first request at the endpoint", || {
        (ep.requests() == 1).then_some(())
    });
    let r = Client::connect(weir.proxy).get("/", "s");
    assert_eq!((r.status, r.header("x-weir-error")), (503, Some("overloaded")));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(first.join().expect("first request"), 200);
}

#[test]
fn an_endpoint_dying_mid_response_cuts_the_client_connection() {
    let ep = Endpoint::start("a");
    ep.set(Behavior::ResetMidResponse);
    let (_weir, mut c) = one_service(&ep, "");
    c.send_raw(b"GET /bytes/100000 HTTP/1.1\r\nhost: s\r\n\r\n");
    let r = c.read_response(false);
    assert!(r.is_err(), "a cut body must not look complete: {r:?}");
}

#[test]
fn malformed_upstream_responses_get_502() {
    let ep = Endpoint::start("a");
    ep.set(Behavior::Malformed);
    let (_weir, mut c) = one_service(&ep, "[service.retry]\nattempts = 1\n");
    let r = c.get("/", "s");
    assert_eq!((r.status, r.header("x-weir-error")), (502, Some("upstream-protocol-error")));
}

#[test]
fn connections_over_the_limit_get_503_with_retry_after() {
    let ep = Endpoint::start("a");
    let toml =
        config(&service("s", "127.10.2.8:80", &[&ep], "")).replace("workers = 2", "workers = 1\nmax_connections = 2");
    let weir = Weir::start(&toml);
    let mut held: Vec<Client> = (0..2).map(|_| Client::connect(weir.proxy)).collect();
    for c in &mut held {
        assert_eq!(c.get("/", "s").status, 200);
    }
    let mut extra = Client::connect(weir.proxy);
    let r = extra.get("/", "s");
    assert_eq!((r.status, r.header("x-weir-error"), r.header("retry-after")), (503, Some("overloaded"), Some("1")));
    drop(held);
    // Once connections close there is room again.
    weir_tests::eventually(Duration::from_secs(5), "a connection slot frees up", || {
        let mut c = Client::connect(weir.proxy);
        (c.get("/", "s").status == 200).then_some(())
    });
}
