//! Serialisation: forwarded heads drop hop-by-hop fields and regenerate framing; response
//! framing adapts to the client's version; error responses parse back with our own parser.

use super::*;

fn text(v: &[u8]) -> String {
    String::from_utf8(v.to_vec()).expect("ascii")
}

fn forward_req(src: &[u8], extra: &[(&[u8], &[u8])]) -> String {
    let h = ok_req(src);
    let mut out = Vec::new();
    write_request_head(&h, src, &mut out, extra);
    // What weir sends must itself be a valid, equivalent request.
    let again = ok_req(&out);
    assert_eq!((again.method, again.body), (h.method, h.body));
    assert_eq!(again.target.get(&out), h.target.get(src));
    text(&out)
}

#[test]
fn request_drops_hop_by_hop_and_connection_listed() {
    let src = post_with(&[
        "Connection: keep-alive, X-Hop",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-T",
        "Upgrade: h2c",
        "X-Hop: secret",
        "Transfer-Encoding: chunked",
        "X-End: 1",
    ]);
    let out = forward_req(&src, &[(b"x-forwarded-for", b"10.0.0.1")]);
    assert_eq!(
        out,
        "POST / HTTP/1.1\r\nHost: svc\r\nX-End: 1\r\ntransfer-encoding: chunked\r\n\
         x-forwarded-for: 10.0.0.1\r\n\r\n"
    );
}

#[test]
fn request_regenerates_content_length_and_upgrades_version() {
    let src = b"PUT /k?v=1 HTTP/1.0\r\nContent-Length:  007\r\nX-A:  b c \r\n\r\n";
    let out = forward_req(src, &[(b"host", b"svc")]);
    assert_eq!(out, "PUT /k?v=1 HTTP/1.1\r\nX-A: b c\r\ncontent-length: 7\r\nhost: svc\r\n\r\n");
}

#[test]
fn request_keeps_expect_and_reframing_by_caller() {
    let src = post_with(&["Expect: 100-continue", "Transfer-Encoding: chunked"]);
    let mut h = ok_req(&src);
    h.body = BodyFraming::ContentLength(12); // the caller buffered the whole body
    let mut out = Vec::new();
    write_request_head(&h, &src, &mut out, &[]);
    assert_eq!(text(&out), "POST / HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\ncontent-length: 12\r\n\r\n");
}

#[test]
fn absolute_form_is_forwarded_in_origin_form() {
    for (target, origin) in [("http://svc/a?b", "/a?b"), ("http://svc", "/"), ("http://svc?q=1", "/?q=1")] {
        let src = format!("GET {target} HTTP/1.1\r\nHost: svc\r\n\r\n");
        let h = ok_req(src.as_bytes());
        let mut out = Vec::new();
        write_request_head(&h, src.as_bytes(), &mut out, &[]);
        let again = ok_req(&out);
        assert_eq!(again.target.get(&out), origin.as_bytes(), "{target}");
    }
}

#[test]
fn invalid_extra_headers_are_skipped() {
    let src = get_with(&[]);
    let bad: &[(&[u8], &[u8])] = &[(b"x-a", b"ok"), (b"bad name", b"v"), (b"x-b", b"a\r\nInjected: 1"), (b"", b"v")];
    let out = forward_req(&src, bad);
    assert_eq!(out, "GET / HTTP/1.1\r\nHost: svc\r\nx-a: ok\r\n\r\n");
}

fn forward_resp(src: &[u8], head_req: bool, client: Version, close: bool) -> (String, DownstreamBody) {
    let mut h = ResponseHead::default();
    let r = parse_response(src, &HeadLimits::default(), head_req, &mut h);
    assert_eq!(r, Ok(Status::Complete(h.head_len)));
    let mut out = Vec::new();
    let body = write_response_head(&h, src, &mut out, &[], client, close);
    (text(&out), body)
}

#[test]
fn response_content_length_keep_alive() {
    let src = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-a\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
    let (out, body) = forward_resp(src, false, Version::Http11, false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nX-B: 2\r\ncontent-length: 5\r\n\r\n");
    assert_eq!(body, DownstreamBody { framing: BodyFraming::ContentLength(5), close: false });
    let (out, body) = forward_resp(src, false, Version::Http11, true);
    assert!(out.ends_with("content-length: 5\r\nconnection: close\r\n\r\n"), "{out}");
    assert!(body.close);
    // An HTTP/1.0 client kept alive (it asked) is told so.
    let (out, body) = forward_resp(src, false, Version::Http10, false);
    assert!(out.ends_with("content-length: 5\r\nconnection: keep-alive\r\n\r\n"), "{out}");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(!body.close);
}

#[test]
fn response_chunked_and_close_delimited_by_client_version() {
    for src in [&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\n\r\n"] {
        let (out, body) = forward_resp(src, false, Version::Http11, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(body, DownstreamBody { framing: BodyFraming::Chunked, close: false });
        let (out, body) = forward_resp(src, false, Version::Http10, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        assert_eq!(body, DownstreamBody { framing: BodyFraming::CloseDelimited, close: true });
    }
}

#[test]
fn response_without_body_keeps_metadata() {
    let (out, body) = forward_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, Version::Http11, false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n");
    assert_eq!(body.framing, BodyFraming::None);
    let (out, _) = forward_resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, Version::Http11, false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    let (out, _) = forward_resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, Version::Http10, true);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
    let (out, _) = forward_resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false, Version::Http11, false);
    assert_eq!(out, "HTTP/1.1 204 No Content\r\n\r\n");
    let (out, _) =
        forward_resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", false, Version::Http11, false);
    assert_eq!(out, "HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n");
}

#[test]
fn interim_response_forwarding() {
    let (out, body) = forward_resp(b"HTTP/1.1 100 Continue\r\n\r\n", false, Version::Http11, true);
    assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(body, DownstreamBody { framing: BodyFraming::None, close: false });
}

#[test]
fn response_reason_phrase() {
    let (out, _) = forward_resp(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", false, Version::Http11, false);
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    let (out, _) = forward_resp(b"HTTP/1.1 299\r\nContent-Length: 0\r\n\r\n", false, Version::Http11, false);
    assert!(out.starts_with("HTTP/1.1 299 \r\n"), "{out}");
    let (out, _) =
        forward_resp(b"HTTP/1.0 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n", false, Version::Http11, false);
    assert!(out.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{out}");
}

#[test]
fn chunk_writers() {
    let mut out = Vec::new();
    write_chunk_header(0, &mut out);
    assert!(out.is_empty());
    write_chunk_header(255, &mut out);
    write_chunk(b"hello", &mut out);
    write_chunk(b"", &mut out);
    write_chunk_header(u64::MAX, &mut out);
    write_last_chunk(&mut out);
    assert_eq!(text(&out), "ff\r\n5\r\nhello\r\nffffffffffffffff\r\n0\r\n\r\n");
    // Our encoder's output decodes to the same bytes.
    let mut enc = Vec::new();
    write_chunk(b"abc", &mut enc);
    write_chunk(&[b'z'; 300], &mut enc);
    write_last_chunk(&mut enc);
    let mut dec = ChunkedDecoder::new();
    let (mut pos, mut data) = (0, Vec::new());
    loop {
        match dec.decode(&enc[pos..]).unwrap() {
            (n, ChunkEvent::Data(r)) => {
                data.extend_from_slice(&enc[pos..][r]);
                pos += n;
            }
            (n, ChunkEvent::End) => {
                assert_eq!(pos + n, enc.len());
                break;
            }
            (n, ChunkEvent::NeedMore) => panic!("incomplete after {}", pos + n),
        }
    }
    assert_eq!(data.len(), 303);
}

fn parse_back(out: &[u8], head_req: bool) -> (ResponseHead, String) {
    let mut h = ResponseHead::default();
    let r = parse_response(out, &HeadLimits::default(), head_req, &mut h);
    assert_eq!(r, Ok(Status::Complete(h.head_len)), "{:?}", show(out));
    let body = text(&out[h.head_len..]);
    if let BodyFraming::ContentLength(n) = h.body {
        assert_eq!(n as usize, body.len());
    }
    (h, body)
}

#[test]
fn error_response_is_well_formed() {
    let mut out = Vec::new();
    write_error_response(503, "no-healthy-endpoint", "no healthy endpoint for service api", true, &mut out);
    let (h, body) = parse_back(&out, false);
    assert_eq!((h.code, h.reason.get(&out)), (503, &b"Service Unavailable"[..]));
    assert_eq!(h.header(&out, b"x-weir-error"), Some(&b"no-healthy-endpoint"[..]));
    assert_eq!(h.header(&out, b"content-type"), Some(&b"text/plain"[..]));
    assert_eq!(h.header(&out, b"connection"), Some(&b"close"[..]));
    assert_eq!(h.header(&out, b"retry-after"), None);
    assert_eq!(body, "no healthy endpoint for service api\n");
    assert!(!h.keep_alive);
}

#[test]
fn shed_response_has_retry_after() {
    let mut out = Vec::new();
    let r = ErrorResponse { retry_after_secs: Some(2), ..ErrorResponse::new(503, "shed", "overloaded") };
    r.write(&mut out);
    let (h, body) = parse_back(&out, false);
    assert_eq!(h.header(&out, b"retry-after"), Some(&b"2"[..]));
    assert_eq!(h.header(&out, b"connection"), None);
    assert!(h.keep_alive);
    assert_eq!(body, "overloaded\n");
}

#[test]
fn error_response_sanitises_reason_and_detail() {
    let mut out = Vec::new();
    let detail = "bad\r\nInjected: yes\0 caf\u{e9}";
    write_error_response(400, "bad reason\r\nX: y", detail, false, &mut out);
    let (h, body) = parse_back(&out, false);
    assert_eq!(h.header(&out, b"x-weir-error"), Some(&b"bad-reason--X--y"[..]));
    assert_eq!(h.header(&out, b"injected"), None);
    assert_eq!(body, "bad  Injected: yes  caf??\n");
    let mut out = Vec::new();
    write_error_response(42, "", &"d".repeat(2000), false, &mut out);
    let (h, body) = parse_back(&out, false);
    assert_eq!((h.code, h.header(&out, b"x-weir-error")), (500, Some(&b"error"[..])));
    assert_eq!(body.len(), 513);
}

#[test]
fn error_response_to_head_has_no_body() {
    let mut out = Vec::new();
    ErrorResponse { omit_body: true, ..ErrorResponse::new(404, "no-route", "no route") }.write(&mut out);
    let (h, body) = parse_back(&out, true);
    assert_eq!((h.code, h.content_length, body.as_str()), (404, Some(9), ""));
}

#[test]
fn every_head_error_answers_with_its_status() {
    use HeadError::*;
    let all = [
        InvalidMethod,
        InvalidTarget,
        AsteriskTarget,
        InvalidVersion,
        UnsupportedVersion,
        InvalidHeaderName,
        InvalidHeaderValue,
        InvalidLineEnding,
        InvalidContentLength,
        DuplicateContentLength,
        ContentLengthWithTransferEncoding,
        InvalidTransferEncoding,
        ChunkedNotFinal,
        ChunkedTwice,
        TransferEncodingInHttp10,
        UnsupportedTransferCoding,
        MissingHost,
        DuplicateHost,
        InvalidHost,
        HostMismatch,
        InvalidConnection,
        UnsupportedExpectation,
        ConnectNotSupported,
        Http2Preface,
        HeadTooLarge,
        TooManyHeaders,
        UriTooLong,
        UpstreamProtocol("x"),
    ];
    for e in all {
        assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{e:?}");
        assert_eq!(e.to_string(), e.detail());
        let mut out = Vec::new();
        write_head_error(&e, &mut out);
        let (h, body) = parse_back(&out, false);
        assert_eq!(h.code, e.status());
        assert!(!reason_phrase(h.code).is_empty());
        assert_eq!(h.header(&out, b"x-weir-error"), Some(e.reason().as_bytes()));
        assert_eq!(h.header(&out, b"connection"), Some(&b"close"[..]));
        assert_eq!(body, format!("{}\n", e.detail()));
    }
}
