//! Response heads from endpoints: framing rules, keep-alive, interim responses, and the same
//! Content-Length / Transfer-Encoding defences as requests (as 502s).

use super::*;

#[track_caller]
fn ok_resp(input: &[u8], head_req: bool) -> ResponseHead {
    let (h, r) = parse_resp(input, head_req);
    assert_eq!(r, Ok(Status::Complete(h.head_len)), "{:?}", show(input));
    h
}

#[track_caller]
fn bad_resp(input: &[u8]) -> HeadError {
    let (_, r) = parse_resp(input, false);
    let e = r.expect_err(&show(input));
    assert!(matches!(e, HeadError::UpstreamProtocol(_)), "{e:?}");
    assert_eq!((e.status(), e.reason()), (502, "upstream-protocol-error"));
    e
}

#[test]
fn content_length_response() {
    let src = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
    let h = ok_resp(src, false);
    assert_eq!((h.code, h.reason.get(src)), (200, &b"OK"[..]));
    assert_eq!(h.body, BodyFraming::ContentLength(5));
    assert_eq!(h.head_len, src.len() - 5);
    assert!(h.keep_alive && !h.is_interim());
    assert_eq!(h.header(src, b"x-a"), Some(&b"b"[..]));
}

#[test]
fn chunked_response() {
    let h = ok_resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false);
    assert_eq!(h.body, BodyFraming::Chunked);
    assert!(h.chunked && h.keep_alive);
}

#[test]
fn close_delimited_response() {
    let h = ok_resp(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n", false);
    assert_eq!(h.body, BodyFraming::CloseDelimited);
    assert!(!h.keep_alive, "a close-delimited body ends the connection");
    let h = ok_resp(b"HTTP/1.0 200 OK\r\n\r\n", false);
    assert_eq!((h.body, h.version), (BodyFraming::CloseDelimited, Version::Http10));
}

#[test]
fn head_response_has_no_body_but_keeps_metadata() {
    let h = ok_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true);
    assert_eq!((h.body, h.content_length), (BodyFraming::None, Some(1234)));
    assert!(h.keep_alive);
    let h = ok_resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true);
    assert_eq!((h.body, h.chunked), (BodyFraming::None, true));
    let h = ok_resp(b"HTTP/1.1 200 OK\r\n\r\n", true);
    assert_eq!(h.body, BodyFraming::None);
    assert!(h.keep_alive);
}

#[test]
fn no_body_statuses() {
    for code in [204, 304, 100, 102, 103] {
        let src = format!("HTTP/1.1 {code} X\r\nContent-Length: 10\r\n\r\n");
        let h = ok_resp(src.as_bytes(), false);
        assert_eq!(h.body, BodyFraming::None, "{code}");
        assert_eq!(h.is_interim(), code < 200, "{code}");
    }
    let h = ok_resp(b"HTTP/1.1 304 Not Modified\r\n\r\n", false);
    assert_eq!(h.body, BodyFraming::None);
    assert!(h.keep_alive);
}

#[test]
fn interim_then_final_in_one_buffer() {
    let src = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let h = ok_resp(src, false);
    assert!(h.is_interim());
    let rest = &src[h.head_len..];
    let h2 = ok_resp(rest, false);
    assert_eq!((h2.code, h2.body), (201, BodyFraming::ContentLength(0)));
    assert_eq!(h2.head_len, rest.len());
}

#[test]
fn switching_protocols_ends_the_head_with_no_body_and_is_not_interim() {
    let buf = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
    let h = ok_resp(buf, false);
    assert!(h.is_switch() && !h.is_interim());
    assert_eq!(h.body, BodyFraming::None);
    assert_eq!(&buf[h.head_len..], b"\x81\x02hi", "the new protocol's bytes follow the head");
    assert_eq!(h.header(buf, b"upgrade"), Some(&b"websocket"[..]));
}

#[test]
fn keep_alive_rules() {
    assert!(!ok_resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
    assert!(!ok_resp(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
    assert!(ok_resp(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
}

#[test]
fn missing_reason_phrase() {
    let src = b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n";
    let h = ok_resp(src, false);
    assert_eq!(h.code, 404);
    assert!(h.reason.is_empty());
    let src = b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 0\r\n\r\n";
    assert!(ok_resp(src, false).reason.is_empty());
}

#[test]
fn identical_repeated_content_lengths_are_one() {
    for src in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
    ] {
        let h = ok_resp(src, false);
        assert_eq!((h.body, h.content_length), (BodyFraming::ContentLength(5), Some(5)));
    }
}

#[test]
fn http_1_2_status_lines_are_read_as_1_1() {
    let src = b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let h = ok_resp(src, false);
    assert_eq!((h.code, h.version, h.minor, h.body), (200, Version::Http11, 2, BodyFraming::ContentLength(2)));
    assert_eq!(ok_resp(b"HTTP/1.0 200 OK\r\n\r\n", false).minor, 0);
    bad_resp(b"HTTP/2.0 200 OK\r\n\r\n");
    // Every prefix of such a head is only incomplete (found by the http_response fuzz target:
    // the prefix ending at the version digit was refused as a bad version).
    let src = b"HTTP/1.5 503 \r\nRetryLength: 0\r\n\r\n";
    let mut h = ResponseHead::default();
    for end in 0..src.len() {
        assert_eq!(parse_response(&src[..end], &HeadLimits::default(), false, &mut h), Ok(Status::Partial), "{end}");
    }
    assert_eq!(parse_response(src, &HeadLimits::default(), false, &mut h), Ok(Status::Complete(src.len())));
}

#[test]
fn framing_conflicts_are_502() {
    bad_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
    bad_resp(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Even when no body follows, a conflicting head is not forwarded.
    let (_, r) = parse_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", true);
    assert_eq!(r.map_err(|e| e.status()), Err(502));
}

#[test]
fn malformed_heads_are_502() {
    bad_resp(b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n");
    bad_resp(b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n");
    bad_resp(b"HTTP/2.0 200 OK\r\n\r\n");
    bad_resp(b"HTTP/1.1 099 Low\r\n\r\n");
    bad_resp(b"HTTP/1.1 600 High\r\n\r\n");
    bad_resp(b"HTTP/1.1 20 OK\r\n\r\n");
    bad_resp(b"HTTP/1.1 200 OK\rX: y\r\n\r\n");
}

#[test]
fn response_head_too_large_is_502() {
    let limits = HeadLimits { max_head_bytes: 32, ..HeadLimits::default() };
    let mut h = ResponseHead::default();
    let src = b"HTTP/1.1 200 OK\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let r = parse_response(src, &limits, false, &mut h);
    assert_eq!(r.map_err(|e| e.status()), Err(502));
    assert_eq!(parse_response(&src[..20], &limits, false, &mut h), Ok(Status::Partial));
}

#[test]
fn response_partial_then_complete() {
    let src = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let mut h = ResponseHead::default();
    for end in 0..src.len() {
        assert_eq!(parse_response(&src[..end], &HeadLimits::default(), false, &mut h), Ok(Status::Partial));
    }
    assert_eq!(parse_response(src, &HeadLimits::default(), false, &mut h), Ok(Status::Complete(src.len())));
}

#[test]
fn response_connection_listed_fields_are_dropped() {
    let src = b"HTTP/1.1 200 OK\r\nConnection: x-internal\r\nX-Internal: 1\r\nX-Public: 2\r\nContent-Length: 0\r\n\r\n";
    let h = ok_resp(src, false);
    let kept: Vec<&[u8]> = h.headers.iter().filter(|f| f.forward).map(|f| f.name.get(src)).collect();
    assert_eq!(kept, [&b"X-Public"[..]]);
}
