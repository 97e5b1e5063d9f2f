//! Request heads that are accepted: fields, derived framing and connection handling, limits.

use super::*;

#[test]
fn simple_get() {
    let src = b"GET /a?b=c HTTP/1.1\r\nHost: svc:8080\r\nAccept: */*\r\n\r\n";
    let h = ok_req(src);
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.method_span.get(src), b"GET");
    assert_eq!(h.target.get(src), b"/a?b=c");
    assert_eq!(h.version, Version::Http11);
    assert_eq!(h.host.map(|s| s.get(src)), Some(&b"svc:8080"[..]));
    assert_eq!(h.headers.len(), 2);
    assert_eq!(h.headers[1].name.get(src), b"Accept");
    assert_eq!(h.headers[1].value.get(src), b"*/*");
    assert!(h.headers.iter().all(|f| f.forward));
    assert_eq!(h.body, BodyFraming::None);
    assert!(h.keep_alive && !h.expect_continue && !h.upgrade);
    assert_eq!(h.head_len, src.len());
    assert!(h.is_idempotent());
}

#[test]
fn head_len_stops_at_end_of_head_with_pipelined_bytes() {
    let src = b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n";
    let (h, res) = parse_req(src);
    let n = src.len() - b"abcGET / HTTP/1.1\r\n".len();
    assert_eq!(res, Ok(Status::Complete(n)));
    assert_eq!(h.body, BodyFraming::ContentLength(3));
    assert!(!h.is_idempotent());
}

#[test]
fn leading_empty_lines_are_ignored() {
    let src = b"\r\n\r\nGET / HTTP/1.1\r\nHost: svc\r\n\r\n";
    let h = ok_req(src);
    assert_eq!(h.target.get(src), b"/");
    assert_eq!(h.head_len, src.len());
}

#[test]
fn methods_and_idempotency() {
    let cases = [
        ("GET", Method::Get, true),
        ("HEAD", Method::Head, true),
        ("OPTIONS", Method::Options, true),
        ("PUT", Method::Put, true),
        ("DELETE", Method::Delete, true),
        ("TRACE", Method::Trace, true),
        ("POST", Method::Post, false),
        ("PATCH", Method::Patch, false),
        ("PURGE", Method::Other, false),
        ("get", Method::Other, false),
    ];
    for (m, kind, idem) in cases {
        let h = ok_req(format!("{m} / HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes());
        assert_eq!((h.method, h.is_idempotent()), (kind, idem), "{m}");
    }
}

#[test]
fn connect_is_501() {
    let e = err_req(b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n");
    assert_eq!((e.status(), e.reason(), e.detail()), (501, "not-implemented", "CONNECT is not supported"));
}

#[test]
fn asterisk_target_only_with_options() {
    let h = ok_req(b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n");
    assert_eq!(h.method, Method::Options);
    assert_eq!(err_req(b"GET * HTTP/1.1\r\nHost: svc\r\n\r\n"), HeadError::AsteriskTarget);
}

#[test]
fn absolute_form_must_agree_with_host() {
    let src = b"GET http://Svc:80/a HTTP/1.1\r\nHost: svc:80\r\n\r\n";
    let h = ok_req(src);
    assert_eq!(h.target.get(src), b"http://Svc:80/a");
    assert_eq!(h.path.get(src), b"/a", "forwarded in origin-form");
    assert_eq!(h.host.map(|s| s.get(src)), Some(&b"Svc:80"[..]), "the authority replaces Host");
    // The scheme's default port may be left out on either side.
    for (target, host) in [("http://svc:80/a", "svc"), ("http://svc/a", "svc:80"), ("https://svc/a", "svc:443")] {
        ok_req(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    }
    for (target, host) in [("http://evil/a", "svc"), ("http://svc:81/a", "svc"), ("https://svc/a", "svc:80")] {
        let e = err_req(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        assert_eq!(e, HeadError::HostMismatch, "{target} with Host {host}");
    }
    let src = b"GET http://svc?q HTTP/1.1\r\nHost: svc\r\n\r\n";
    assert_eq!(ok_req(src).path.get(src), b"?q");
    // HTTP/1.0 without Host: the authority is the host.
    let src = b"GET http://svc/a HTTP/1.0\r\n\r\n";
    assert_eq!(ok_req(src).host.map(|s| s.get(src)), Some(&b"svc"[..]));
    assert_eq!(status(b"GET http://u@svc/ HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GET http:///a HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
}

#[test]
fn keep_alive_defaults() {
    assert!(ok_req(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
    assert!(!ok_req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!ok_req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x, Close\r\n\r\n").keep_alive);
    assert!(!ok_req(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(ok_req(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!ok_req(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    assert_eq!(ok_req(b"GET / HTTP/1.0\r\n\r\n").version, Version::Http10);
}

#[test]
fn connection_options_and_hop_by_hop_marking() {
    let src = get_with(&[
        "Connection: keep-alive, X-Secret , ,x-other",
        "X-Secret: 1",
        "x-other: 2",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Trailer: x",
        "Proxy-Connection: keep-alive",
        "Upgrade: h2c",
        "X-Kept: 3",
    ]);
    let h = ok_req(&src);
    let opts: Vec<&[u8]> = h.connection_options.iter().map(|s| s.get(&src)).collect();
    assert_eq!(opts, [&b"keep-alive"[..], b"X-Secret", b"x-other"]);
    let kept: Vec<&[u8]> = h.headers.iter().filter(|f| f.forward).map(|f| f.name.get(&src)).collect();
    assert_eq!(kept, [&b"Host"[..], b"X-Kept"]);
    // Upgrade without the `upgrade` connection option is not an upgrade request.
    assert!(!h.upgrade);
}

#[test]
fn invalid_connection_is_400() {
    assert_eq!(err_req(&get_with(&["Connection: a b"])), HeadError::InvalidConnection);
    let many: Vec<String> = (0..33).map(|i| format!("x{i}")).collect();
    let line = format!("Connection: {}", many.join(","));
    assert_eq!(err_req(&get_with(&[&line])), HeadError::InvalidConnection);
}

#[test]
fn upgrade_is_reported() {
    let h = ok_req(&get_with(&["Connection: Upgrade", "Upgrade: websocket"]));
    assert!(h.upgrade);
}

#[test]
fn expect_continue() {
    let h = ok_req(&post_with(&["Expect: 100-Continue", "Content-Length: 10"]));
    assert!(h.expect_continue);
    let e = err_req(&post_with(&["Expect: something-else"]));
    assert_eq!((e.status(), e.reason()), (417, "expectation-failed"));
    // HTTP/1.0: ignored, and not forwarded.
    let src = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
    let h = ok_req(src);
    assert!(!h.expect_continue);
    assert!(h.headers.iter().all(|f| !f.forward || f.name.get(src) != b"Expect"));
}

#[test]
fn header_lookup_and_removal() {
    let src = get_with(&["X-Forwarded-For: 1.2.3.4", "x-forwarded-for: 5.6.7.8", "A: b"]);
    let mut h = ok_req(&src);
    assert_eq!(h.header(&src, b"X-FORWARDED-FOR"), Some(&b"1.2.3.4"[..]));
    assert_eq!(h.header(&src, b"missing"), None);
    assert_eq!(h.remove_header(&src, b"x-forwarded-for"), 2);
    assert_eq!(h.remove_header(&src, b"x-forwarded-for"), 0);
    assert_eq!(h.headers.iter().filter(|f| f.forward).count(), 2);
}

#[test]
fn empty_header_value() {
    let src = get_with(&["X-Empty:", "X-Spaces:   "]);
    let h = ok_req(&src);
    assert_eq!(h.header(&src, b"x-empty"), Some(&b""[..]));
    assert_eq!(h.header(&src, b"x-spaces"), Some(&b""[..]));
}

#[test]
fn partial_heads() {
    let src = get_with(&["A: b"]);
    let mut h = RequestHead::default();
    for end in 0..src.len() {
        assert_eq!(parse_request(&src[..end], &HeadLimits::default(), &mut h), Ok(Status::Partial));
    }
}

#[test]
fn reuse_keeps_capacity_and_resets() {
    let mut h = RequestHead::with_capacity(8);
    let a = post_with(&["Content-Length: 3", "Connection: close, x"]);
    parse_request(&a, &HeadLimits::default(), &mut h).unwrap();
    let cap = h.headers.capacity();
    let b = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n";
    parse_request(b, &HeadLimits::default(), &mut h).unwrap();
    assert_eq!(h.headers.capacity(), cap);
    assert_eq!((h.headers.len(), h.connection_options.len()), (1, 0));
    assert_eq!(h.body, BodyFraming::None);
    assert!(h.keep_alive);
}

// --- limits ---------------------------------------------------------------------------------

#[test]
fn head_too_large_is_431_complete_or_partial() {
    let limits = HeadLimits::default();
    let big = "x".repeat(61 * 1024);
    let complete = get_with(&[&format!("X-Big: {big}")]);
    assert_eq!(parse_req(&complete).1, Err(HeadError::HeadTooLarge));
    let partial = &complete[..complete.len() - 10];
    assert_eq!(parse_req(partial).1, Err(HeadError::HeadTooLarge));
    // Exactly at the limit is fine.
    let base = get_with(&["X-Big: "]).len();
    let exact = get_with(&[&format!("X-Big: {}", "y".repeat(limits.max_head_bytes - base))]);
    assert_eq!(exact.len(), limits.max_head_bytes);
    assert_eq!(parse_req(&exact).1, Ok(Status::Complete(exact.len())));
    let e = HeadError::HeadTooLarge;
    assert_eq!((e.status(), e.reason()), (431, "head-too-large"));
}

#[test]
fn too_many_headers_is_431() {
    let lines: Vec<String> = (0..99).map(|i| format!("X-{i}: v")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(ok_req(&get_with(&refs)).headers.len(), 100);
    let mut more = refs.clone();
    more.push("X-last: v");
    let e = err_req(&get_with(&more));
    assert_eq!((e, e.status()), (HeadError::TooManyHeaders, 431));
}

#[test]
fn uri_too_long_is_414_complete_or_partial() {
    let limits = HeadLimits::default();
    let ok_target = format!("/{}", "a".repeat(limits.max_uri_bytes - 1));
    ok_req(format!("GET {ok_target} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes());
    let long = format!("/{}", "a".repeat(limits.max_uri_bytes));
    let req = format!("GET {long} HTTP/1.1\r\nHost: svc\r\n\r\n");
    let e = err_req(req.as_bytes());
    assert_eq!((e.status(), e.reason()), (414, "uri-too-long"));
    // Still reading the request line.
    let partial = format!("GET /{}", "a".repeat(9000));
    assert_eq!(parse_req(partial.as_bytes()).1, Err(HeadError::UriTooLong));
    // An error seen before the limit was crossed wins, as it would byte by byte.
    let bad = format!("GET /\x01{}", "a".repeat(9000));
    assert_eq!(status(bad.as_bytes()), 400);
    // A URI longer than the whole head limit is still 414.
    let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(70 * 1024));
    assert_eq!(parse_req(huge.as_bytes()).1, Err(HeadError::UriTooLong));
}

#[test]
fn custom_limits() {
    let limits = HeadLimits { max_head_bytes: 64, max_headers: 2, max_uri_bytes: 4 };
    let (_, r) = parse_req_with(b"GET /abc HTTP/1.1\r\nHost: a\r\n\r\n", &limits);
    assert_eq!(r, Ok(Status::Complete(30)));
    let (_, r) = parse_req_with(b"GET /abcde HTTP/1.1\r\nHost: a\r\n\r\n", &limits);
    assert_eq!(r, Err(HeadError::UriTooLong));
    let (_, r) = parse_req_with(b"GET / HTTP/1.1\r\nHost: a\r\nB: c\r\nD: e\r\n\r\n", &limits);
    assert_eq!(r, Err(HeadError::TooManyHeaders));
    let (_, r) = parse_req_with(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "a".repeat(60)).as_bytes(), &limits);
    assert_eq!(r, Err(HeadError::HeadTooLarge));
}
