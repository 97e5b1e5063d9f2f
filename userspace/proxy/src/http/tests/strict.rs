//! One test per line of docs/OPERATING.md's strict HTTP/1.1 parsing list, plus request smuggling
//! vectors. Every case asserts the exact status (and, through the helpers, that feeding the
//! bytes one at a time gives the same answer).

use super::*;

// --- 400: whitespace and line structure ---------------------------------------------------

#[test]
fn whitespace_between_header_name_and_colon_is_400() {
    assert_eq!(status(&get_with(&["X-A : 1"])), 400);
    assert_eq!(status(&get_with(&["X-A\t: 1"])), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost : svc\r\n\r\n"), 400);
}

#[test]
fn whitespace_before_first_header_line_is_400() {
    assert_eq!(status(b"GET / HTTP/1.1\r\n Host: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\n\tHost: svc\r\n\r\n"), 400);
}

#[test]
fn obs_fold_is_400() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\n 2\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\n\t2\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: svc\r\nX-A:\r\n 2\r\n\r\n"), 400);
}

#[test]
fn bare_cr_is_400() {
    assert_eq!(status(b"GET /\r HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\rHost: svc\r\n\r\n"), 400);
    assert_eq!(status(&get_with(&["X-A: a\rb"])), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\r\n"), 400);
}

#[test]
fn bare_lf_is_400() {
    assert_eq!(err_req(b"GET / HTTP/1.1\nHost: svc\r\n\r\n"), HeadError::InvalidLineEnding);
    assert_eq!(err_req(b"GET / HTTP/1.1\r\nHost: svc\n\r\n"), HeadError::InvalidLineEnding);
    assert_eq!(err_req(b"GET / HTTP/1.1\r\nHost: svc\r\n\n"), HeadError::InvalidLineEnding);
    assert_eq!(err_req(b"GET / HTTP/1.1\nHost: svc\n\n"), HeadError::InvalidLineEnding);
    assert_eq!(status(b"\nGET / HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
}

#[test]
fn nul_and_control_chars_in_request_line_are_400() {
    assert_eq!(status(b"GET /a\0b HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GE\0T / HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a\x01 HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a\x7f HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a\tb HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\0\r\nHost: svc\r\n\r\n"), 400);
    // Two spaces as a delimiter are not accepted either.
    assert_eq!(status(b"GET  / HTTP/1.1\r\nHost: svc\r\n\r\n"), 400);
}

#[test]
fn nul_and_control_chars_in_header_values_are_400() {
    for v in ["a\0b", "a\x01", "\x1b[31m", "a\x7fb", "a\x0bb", "a\x0cb"] {
        assert_eq!(status(&get_with(&[&format!("X-A: {v}")])), 400, "{v:?}");
    }
    // HTAB and obs-text are field-value bytes.
    let h = ok_req(&get_with(&["X-A: a\tb\u{e9}"]));
    assert_eq!(h.headers.len(), 2);
}

#[test]
fn invalid_chars_in_header_names_are_400() {
    for n in ["X@A", "X\"A\"", "X(A)", "X/A", "X[A]", "X{A}", "X=A", "X\u{e9}", "X\0A", "", "X;A"] {
        assert_eq!(status(&get_with(&[&format!("{n}: 1")])), 400, "{n:?}");
    }
    assert_eq!(status(&get_with(&["NoColon"])), 400);
}

#[test]
fn invalid_chars_in_request_target_are_400() {
    // CTLs, DEL, a fragment, broken escapes, or no known form.
    for t in ["/a#frag", "/%zz", "/%4", "/a%", "a/b", "//x\x7f", "/a\x01b", "/a\tb"] {
        let req = format!("GET {t} HTTP/1.1\r\nHost: svc\r\n\r\n");
        assert_eq!(status(req.as_bytes()), 400, "{t:?}");
    }
}

#[test]
fn request_targets_clients_really_send_are_accepted() {
    // Opaque bytes to a proxy, forwarded by its peers: brackets (axios/qs/PHP/Rails arrays),
    // the other RFC 3986-excluded visible bytes, and raw UTF-8.
    for t in [
        "/",
        "/a/b?c=d&e=%2F",
        "/~user/(x)!$&'*+,;=:@",
        "http://svc/a",
        "/?ids[]=1&ids[]=2",
        "/a<b",
        "/a>b",
        "/a\"b",
        "/a{b}",
        "/a|b",
        "/a\\b",
        "/a^b",
        "/a`b",
        "/caf\u{e9}",
    ] {
        let req = format!("GET {t} HTTP/1.1\r\nHost: svc\r\n\r\n");
        let h = ok_req(req.as_bytes());
        assert_eq!(h.target.get(req.as_bytes()), t.as_bytes());
    }
}

// --- 400: Content-Length -------------------------------------------------------------------

#[test]
fn invalid_content_length_is_400() {
    for v in ["abc", "1.5", "0x10", "5 5", "5a", "1e3", "\"5\""] {
        assert_eq!(err_req(&post_with(&[&format!("Content-Length: {v}")])), HeadError::InvalidContentLength, "{v:?}");
    }
    assert_eq!(status(&post_with(&["Content-Length:"])), 400);
}

#[test]
fn signed_content_length_is_400() {
    assert_eq!(status(&post_with(&["Content-Length: +5"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: -5"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: -0"])), 400);
}

#[test]
fn overflowing_content_length_is_400() {
    assert_eq!(status(&post_with(&["Content-Length: 18446744073709551616"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 99999999999999999999999999"])), 400);
    let h = ok_req(&post_with(&["Content-Length: 18446744073709551615"]));
    assert_eq!(h.body, BodyFraming::ContentLength(u64::MAX));
}

#[test]
fn list_valued_content_length_is_400() {
    assert_eq!(status(&post_with(&["Content-Length: 1, 1"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 1,2"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 5,"])), 400);
}

#[test]
fn repeated_content_length_is_400_even_when_equal() {
    assert_eq!(err_req(&post_with(&["Content-Length: 5", "Content-Length: 5"])), HeadError::DuplicateContentLength);
    assert_eq!(status(&post_with(&["Content-Length: 5", "content-length: 6"])), 400);
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    let e = err_req(&post_with(&["Content-Length: 5", "Transfer-Encoding: chunked"]));
    assert_eq!(e, HeadError::ContentLengthWithTransferEncoding);
    assert_eq!(e.status(), 400);
}

// --- 400 / 501: Transfer-Encoding -------------------------------------------------------------

#[test]
fn transfer_encoding_final_coding_not_chunked_is_400() {
    for v in ["gzip", "chunked, gzip", "identity", "xchunked", "chunkedx", "chunked, identity"] {
        assert_eq!(err_req(&post_with(&[&format!("Transfer-Encoding: {v}")])), HeadError::ChunkedNotFinal, "{v:?}");
    }
    let split = post_with(&["Transfer-Encoding: chunked", "Transfer-Encoding: identity"]);
    assert_eq!(status(&split), 400);
}

#[test]
fn transfer_encoding_chunked_twice_is_400() {
    assert_eq!(err_req(&post_with(&["Transfer-Encoding: chunked, chunked"])), HeadError::ChunkedTwice);
    assert_eq!(status(&post_with(&["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"])), 400);
    assert_eq!(status(&post_with(&["Transfer-Encoding: chunked, gzip, chunked"])), 400);
}

#[test]
fn malformed_transfer_encoding_is_400() {
    for v in
        ["\"chunked\"", "chunked,", ", chunked", "", "chun ked", "chunked/1", "chunked;", "chunked;=1", "chunked;a"]
            .into_iter()
            .chain(["chunked;a=\"x", "chunked;a=b c", ";a=b, chunked"])
    {
        assert_eq!(
            err_req(&post_with(&[&format!("Transfer-Encoding: {v}")])),
            HeadError::InvalidTransferEncoding,
            "{v:?}"
        );
    }
}

#[test]
fn unimplemented_transfer_coding_is_501() {
    for v in ["gzip, chunked", "deflate, chunked", "x-custom,chunked", "gzip, compress, chunked"] {
        let e = err_req(&post_with(&[&format!("Transfer-Encoding: {v}")]));
        assert_eq!((e.status(), e.reason()), (501, "not-implemented"), "{v:?}");
    }
    // Parameters do not make a coding unknown: still 501, not 400.
    let e = err_req(&post_with(&["Transfer-Encoding: gzip;level=1, chunked"]));
    assert_eq!(e.status(), 501);
    // Exactly chunked, in any case, with OWS and transfer parameters (RFC 9112 7), is the one
    // coding weir implements.
    for v in ["chunked", "Chunked", "CHUNKED", "\tchunked ", "chunked\t", "chunked;ext=1", "chunked ; a=\"b c\" ;x=y"] {
        let h = ok_req(&post_with(&[&format!("Transfer-Encoding: {v}")]));
        assert_eq!(h.body, BodyFraming::Chunked, "{v:?}");
    }
}

#[test]
fn transfer_encoding_in_http10_is_400() {
    let req = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(err_req(req), HeadError::TransferEncodingInHttp10);
}

// --- Host ---------------------------------------------------------------------------------------

#[test]
fn missing_host_in_http11_is_400() {
    assert_eq!(err_req(b"GET / HTTP/1.1\r\n\r\n"), HeadError::MissingHost);
    assert_eq!(ok_req(b"GET / HTTP/1.0\r\n\r\n").host, None);
}

#[test]
fn multiple_host_headers_are_400() {
    assert_eq!(err_req(&get_with(&["Host: other"])), HeadError::DuplicateHost);
    assert_eq!(status(&get_with(&["host: svc"])), 400);
}

#[test]
fn invalid_host_is_400() {
    for h in ["a b", "svc:port", "svc:123456", "a/b", "[::1", "user@svc", "[zz]"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
        assert_eq!(err_req(req.as_bytes()), HeadError::InvalidHost, "{h:?}");
    }
    for h in ["svc", "svc:8080", "10.0.0.1:80", "[::1]:443", "[fe80::1]", "a-b.c_d"] {
        ok_req(format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes());
    }
}

// --- Limits and versions ------------------------------------------------------------------------

#[test]
fn version_other_than_1x_is_505() {
    for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.9"] {
        let req = format!("GET / {v}\r\nHost: svc\r\n\r\n");
        assert_eq!(err_req(req.as_bytes()), HeadError::UnsupportedVersion, "{v}");
    }
    // The HTTP/2 prior-knowledge preface says so.
    let e = err_req(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!((e, e.status(), e.reason()), (HeadError::Http2Preface, 505, "version-not-supported"));
    assert!(e.detail().contains("HTTP/2"));
}

#[test]
fn later_http1_minor_versions_are_processed_as_1_1() {
    for (v, minor) in [("HTTP/1.2", 2), ("HTTP/1.9", 9)] {
        let req = format!("POST /x {v}\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc");
        let h = ok_req(req.as_bytes());
        assert_eq!((h.version, h.minor, h.body), (Version::Http11, minor, BodyFraming::ContentLength(3)), "{v}");
        assert_eq!(h.path.get(req.as_bytes()), b"/x");
    }
    assert_eq!(ok_req(b"GET / HTTP/1.0\r\n\r\n").minor, 0);
}

#[test]
fn malformed_version_is_400() {
    for v in ["http/1.1", "HTTP/11", "HTTP/1.1x", "HTTP/1.", "HTTP/a.b", "HTTPS/1.1", "HTTP/1.1 "] {
        let req = format!("GET / {v}\r\nHost: svc\r\n\r\n");
        assert_eq!(status(req.as_bytes()), 400, "{v:?}");
    }
    assert_eq!(status(b"GET /\r\n\r\n"), 400); // HTTP/0.9 simple request
}

// --- Smuggling vectors --------------------------------------------------------------------------

#[test]
fn smuggling_cl_te() {
    let req =
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED";
    assert_eq!(status(req), 400);
}

#[test]
fn smuggling_te_cl() {
    let req = b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n";
    assert_eq!(status(req), 400);
}

#[test]
fn smuggling_te_te_obfuscations() {
    let cases: &[&[u8]] = &[
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding : chunked",
        b"Transfer-Encoding: chunked, chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        b"Transfer-Encoding:\x0bchunked",
        b"Transfer-Encoding: \"chunked\"",
        b"Transfer-Encoding:\r\n chunked",
        b"Transfer_Encoding: chunked\r\nTransfer-Encoding: x",
        b"Transfer-Encoding\r\n: chunked",
        b"X: y\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: ch\0unked",
    ];
    for c in cases {
        let mut req = b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n".to_vec();
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n\r\n0\r\n\r\n");
        assert_eq!(status(&req), 400, "{:?}", show(c));
    }
}

#[test]
fn smuggling_content_length_variants() {
    assert_eq!(status(&post_with(&["Content-Length: +5"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 5, 5"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 5", "Content-Length: 5"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 5", "Content-Length: 50"])), 400);
    assert_eq!(status(&post_with(&["Content-Length : 5"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 0x5"])), 400);
    assert_eq!(status(&post_with(&["Content-Length: 5\x00"])), 400);
    // Surrounding OWS is not part of the value.
    assert_eq!(ok_req(&post_with(&["Content-Length:  5 "])).body, BodyFraming::ContentLength(5));
}

#[test]
fn hop_by_hop_cannot_strip_framing_or_host() {
    // Connection naming the framing fields or Host changes nothing about what weir forwards.
    let h = ok_req(&post_with(&["Content-Length: 5", "Connection: content-length, host"]));
    assert_eq!(h.body, BodyFraming::ContentLength(5));
    let src = post_with(&["Content-Length: 5", "Connection: content-length, host"]);
    let mut out = Vec::new();
    write_request_head(&h, &src, &mut out, &[]);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Host: svc\r\n") && text.contains("content-length: 5\r\n"), "{text}");
}
