//! The HTTP/1.1 and TCP data path on real loopback sockets: keep-alive and pooling, Host
//! routing, chunked bodies both ways, large streamed bodies, TCP relay with half-close,
//! pipelining.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use weir_tests::{Client, Endpoint, TcpEcho, Weir};

pub(crate) fn config(services: &str) -> String {
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n[access_log]\nsink = \"off\"\n{services}"
    )
}

pub(crate) fn service(name: &str, vip: &str, endpoints: &[&Endpoint], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{}\"", e.addr)).collect();
    format!("[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nendpoints = [{}]\n{extra}\n", eps.join(", "))
}

#[test]
fn keep_alive_requests_reuse_one_upstream_connection() {
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&service("shop", "127.10.1.1:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    for _ in 0..20 {
        let r = c.get("/", "shop");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-endpoint"), Some("a"));
        assert_eq!(r.header("x-seen-via"), Some("1.1 weir"), "weir adds Via to forwarded requests");
        assert_eq!(r.header("via"), Some("1.1 weir"), "and to responses");
        assert_eq!(r.body_string(), "hello from a\n");
    }
    assert_eq!(ep.requests(), 20);
    // One client connection lands on one worker, which reuses its pooled connection.
    assert_eq!(ep.connections(), 1, "weir opened a new upstream connection per request");
}

#[test]
fn host_header_routes_by_name_name_port_and_vip() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let svc = service("alpha", "127.10.1.2:80", &[&a], "") + &service("beta", "127.10.1.3:8080", &[&b], "");
    let weir = Weir::start(&config(&svc));
    let mut c = Client::connect(weir.proxy);
    for (host, want) in
        [("alpha", "a"), ("alpha:80", "a"), ("127.10.1.2", "a"), ("beta", "b"), ("127.10.1.3:8080", "b"), ("BETA", "b")]
    {
        let r = c.get("/", host);
        assert_eq!((r.status, r.header("x-endpoint")), (200, Some(want)), "Host: {host}");
    }
}

#[test]
fn chunked_request_and_response_bodies_are_streamed_and_reframed() {
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&service("s", "127.10.1.4:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    // A chunked upload: 3 chunks, with an extension weir drops.
    c.send_raw(b"POST /up HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n3\r\n!!!\r\n0\r\n\r\n");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-body-bytes"), Some("14"));
    // A chunked download arrives whole.
    let r = c.get("/chunked/100000", "s");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 100_000);
    // And the connection is still usable afterwards.
    assert_eq!(c.get("/", "s").status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let svc = service("a", "127.10.1.6:80", &[&a], "") + &service("b", "127.10.1.7:80", &[&b], "");
    let weir = Weir::start(&config(&svc));
    let mut c = Client::connect(weir.proxy);
    c.send_raw(
        b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: b\r\n\r\nGET /3 HTTP/1.1\r\nhost: a\r\n\r\n",
    );
    let order: Vec<String> = (0..3)
        .map(|_| c.read_response(false).expect("response").header("x-endpoint").unwrap_or("").to_string())
        .collect();
    assert_eq!(order, ["a", "b", "a"]);
}

#[test]
fn expect_100_continue_is_answered_by_weir() {
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&service("s", "127.10.1.8:80", &[&ep], "")));
    let mut s = TcpStream::connect(weir.proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n").expect("write");
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).expect("100 Continue before the body is sent");
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ping").expect("body");
    let mut c = BufReader::new(s);
    let mut line = String::new();
    c.read_line(&mut line).expect("status");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
}

#[test]
fn connection_close_is_honoured_and_http10_works() {
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&service("s", "127.10.1.9:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET / HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed(Duration::from_secs(2)), "weir kept a `Connection: close` connection open");

    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET / HTTP/1.0\r\nhost: s\r\n\r\n");
    let r = c.read_response(false).expect("1.0 response");
    assert_eq!(r.status, 200);
    assert!(c.is_closed(Duration::from_secs(2)), "an HTTP/1.0 connection without keep-alive stays open");
}

#[test]
fn tcp_service_relays_both_ways_with_half_close() {
    let echo = TcpEcho::start("e1");
    // The service's own listener, on a port held for weir (it binds it with SO_REUSEADDR).
    let port = weir_tests::ReservedPort::loopback().expect("reserve a port");
    let svc = format!(
        "[[service]]\nname = \"db\"\nvip = \"127.10.1.10:5432\"\nlisten = \"{}\"\nprotocol = \"tcp\"\nendpoints = [\"{}\"]\n",
        port.addr(),
        echo.addr
    );
    let weir = Weir::start(&config(&svc));
    let mut s = TcpStream::connect(port.addr()).expect("connect to the service listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    for i in 0..3 {
        writeln!(s, "line {i}").expect("write");
        let mut back = String::new();
        r.read_line(&mut back).expect("echo");
        assert_eq!(back, format!("echo:e1:line {i}\n"));
    }
    // Half-close: our FIN reaches the endpoint, which still answers on the other direction.
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = String::new();
    r.read_to_string(&mut rest).expect("read after half-close");
    assert_eq!(rest, "bye:e1\n");
    drop(weir);
}
