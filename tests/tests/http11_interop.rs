//! HTTP/1.1 forms that real clients and endpoints send and that weir forwards (upgrade offers,
//! the request-target bytes browsers and libraries use, HTTP/1.2, duplicate identical
//! Content-Length, absolute-form), error bodies that say what was wrong, forwarding headers,
//! and the behaviour weir already had that its peers lack (pinned here).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use weir_tests::{Client, Weir};

use crate::raw::{RawClient, RawConn, RawEndpoint, field, one_service};

/// An endpoint that answers every request with its target as the body (reading any body).
fn echo_target() -> RawEndpoint {
    RawEndpoint::start(|mut c: RawConn| {
        while let Some(head) = c.read_head() {
            if c.read_body(&head).is_none() {
                return;
            }
            c.ok(&head.target);
        }
    })
}

#[test]
fn upgrade_offers_weir_does_not_perform_are_dropped_and_the_request_forwarded() {
    let ep = echo_target();
    let weir = Weir::start(&one_service(30, &[ep.addr], "", ""));
    let mut c = Client::connect(weir.proxy);
    // Java's HttpClient and `curl --http2` offer h2c on every cleartext request.
    c.send_raw(
        b"GET /h2c HTTP/1.1\r\nhost: s\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.body_string()), (200, "/h2c".to_string()), "{:?}", r.header("x-weir-error"));
    let head = &ep.heads()[0];
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(head.header(hop), None, "{hop} was forwarded");
    }
}

#[test]
fn request_targets_that_browsers_and_libraries_send_are_forwarded_unchanged() {
    let ep = echo_target();
    let weir = Weir::start(&one_service(31, &[ep.addr], "", ""));
    let mut c = Client::connect(weir.proxy);
    let targets = [
        "/search?ids[]=1&ids[]=2",
        "/a|b",
        "/{id}",
        "/x^y",
        "/q=\"quoted\"",
        "/<tag>",
        "/back\\slash",
        "/tick`s",
        "/caf\u{e9}/\u{1f600}",
    ];
    for t in targets {
        let r = c.get(t, "s");
        assert_eq!((r.status, r.body_string()), (200, t.to_string()), "target {t:?}: {:?}", r.header("x-weir-error"));
    }
    // What enables smuggling or splitting stays refused.
    for bad in [
        &b"GET /a\x01b HTTP/1.1\r\nhost: s\r\n\r\n"[..],
        b"GET /a\x00b HTTP/1.1\r\nhost: s\r\n\r\n",
        b"GET /a\x7fb HTTP/1.1\r\nhost: s\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nhost: s\r\n\r\n",
    ] {
        let mut c = Client::connect(weir.proxy);
        c.send_raw(bad);
        assert_eq!(c.read_response(false).expect("answer").status, 400, "{:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(ep.heads().len(), targets.len());
}

#[test]
fn http_1_2_messages_are_processed_as_http_1_1() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        while let Some(head) = c.read_head() {
            c.write(
                format!("HTTP/1.2 200 OK\r\ncontent-length: {}\r\n\r\n{}", head.version.len(), head.version).as_bytes(),
            );
        }
    });
    let weir = Weir::start(&one_service(32, &[ep.addr], "", ""));
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET /v HTTP/1.2\r\nhost: s\r\n\r\n");
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.body_string()), (200, "HTTP/1.1".to_string()), "{:?}", r.header("x-weir-error"));
    assert_eq!(r.header("via"), Some("1.2 weir"), "Via names the version received from the endpoint");
}

#[test]
fn an_endpoints_identical_duplicate_content_length_is_collapsed() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        while let Some(head) = c.read_head() {
            let cl = if head.target == "/same" { "5" } else { "6" };
            c.write(format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: {cl}\r\n\r\nhello").as_bytes());
        }
    });
    let weir = Weir::start(&one_service(33, &[ep.addr], "", "[service.retry]\nattempts = 1"));
    let mut c = Client::connect(weir.proxy);
    let r = c.get("/same", "s");
    assert_eq!((r.status, r.body_string()), (200, "hello".to_string()));
    let lengths: Vec<_> = r.headers.iter().filter(|(n, _)| n == "content-length").collect();
    assert_eq!(lengths.len(), 1, "one Content-Length is forwarded");
    let r = Client::connect(weir.proxy).get("/differ", "s");
    assert_eq!((r.status, r.header("x-weir-error")), (502, Some("upstream-protocol-error")));
}

#[test]
fn a_malformed_chunked_request_body_gets_a_400() {
    let ep = echo_target();
    let weir = Weir::start(&one_service(34, &[ep.addr], "", ""));
    let mut c = RawClient::connect(weir.proxy);
    c.send(b"POST /up HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n");
    let (status, fields, body) = c.read_response().expect("an answer, not a silent close");
    assert_eq!((status, field(&fields, "x-weir-error")), (400, Some("bad-request")));
    assert!(String::from_utf8_lossy(&body).contains("chunk"), "the body says what was wrong: {body:?}");
}

#[test]
fn absolute_form_targets_are_rewritten_to_origin_form() {
    let ep = echo_target();
    let weir = Weir::start(&one_service(35, &[ep.addr], "", ""));
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET http://s:80/x?q=1 HTTP/1.1\r\nhost: s\r\n\r\n");
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.body_string()), (200, "/x?q=1".to_string()), "{:?}", r.header("x-weir-error"));
    c.send_raw(b"GET http://s HTTP/1.1\r\nhost: s\r\n\r\n");
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.body_string()), (200, "/".to_string()));
    assert_eq!(ep.heads()[0].header("host"), Some("s:80"), "Host comes from the target authority");
    // A real mismatch is still refused.
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET http://other/x HTTP/1.1\r\nhost: s\r\n\r\n");
    assert_eq!(c.read_response(false).expect("answer").status, 400);
}

#[test]
fn every_error_body_says_what_was_wrong() {
    let ep = echo_target();
    let weir = Weir::start(&one_service(36, &[ep.addr], "", ""));
    let cases: [(&[u8], u16, &str, &str); 4] = [
        (b"CONNECT s:443 HTTP/1.1\r\nhost: s:443\r\n\r\n", 501, "not-implemented", "CONNECT"),
        (b"GET / HTTP/3.0\r\nhost: s\r\n\r\n", 505, "version-not-supported", "version"),
        (b"GET / HTTP/1.1\r\nhost: s\r\nexpect: 200-ok\r\n\r\n", 417, "expectation-failed", "Expect"),
        (
            b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            501,
            "not-implemented",
            "transfer coding",
        ),
    ];
    for (raw, status, reason, says) in cases {
        let mut c = Client::connect(weir.proxy);
        c.send_raw(raw);
        let r = c.read_response(false).expect("answer");
        let what = String::from_utf8_lossy(raw);
        assert_eq!((r.status, r.header("x-weir-error")), (status, Some(reason)), "{what}");
        assert!(r.body_string().contains(says), "{what}: body {:?} does not say {says:?}", r.body_string());
    }
    // The HTTP/2 preface opens an HTTP/2 connection; after an HTTP/1.1 request it is an error.
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET / HTTP/1.1\r\nhost: s\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(c.read_response(false).expect("the GET answered").status, 200);
    let r = c.read_response(false).expect("the preface answered");
    assert_eq!((r.status, r.header("x-weir-error")), (505, Some("version-not-supported")));
    assert!(r.body_string().contains("HTTP/2"), "{}", r.body_string());
}

#[test]
fn forwarding_headers_are_added_only_when_configured() {
    let ep = echo_target();
    let svc = "forwarded_headers = [\"x-forwarded-for\", \"x-forwarded-proto\", \"forwarded\"]";
    let weir = Weir::start(&one_service(37, &[ep.addr], "", svc));
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET /f HTTP/1.1\r\nhost: s\r\nx-forwarded-for: 10.0.0.1\r\nforwarded: for=10.0.0.1\r\n\r\n");
    assert_eq!(c.read_response(false).expect("answer").status, 200);
    let head = &ep.heads()[0];
    assert_eq!(head.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(head.header("x-forwarded-proto"), Some("http"));
    assert_eq!(head.header("forwarded"), Some("for=10.0.0.1, for=127.0.0.1;proto=http"));

    let plain = echo_target();
    let weir = Weir::start(&one_service(38, &[plain.addr], "", ""));
    assert_eq!(Client::connect(weir.proxy).get("/f", "s").status, 200);
    let head = &plain.heads()[0];
    for name in ["x-forwarded-for", "x-forwarded-proto", "forwarded"] {
        assert_eq!(head.header(name), None, "{name} added without being configured");
    }
    // Via names the version weir received: 1.0 here.
    let mut s = TcpStream::connect(weir.proxy).expect("connect");
    s.write_all(b"GET /v10 HTTP/1.0\r\nhost: s\r\n\r\n").expect("send");
    let mut got = String::new();
    s.read_to_string(&mut got).expect("read");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(plain.heads()[1].header("via"), Some("1.0 weir"));
}

#[test]
fn interim_responses_reach_http11_clients_only_and_204s_have_no_framing() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        while let Some(head) = c.read_head() {
            if head.target == "/204" {
                c.write(b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n");
                continue;
            }
            c.write(b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n");
            c.ok("after hints");
        }
    });
    let weir = Weir::start(&one_service(39, &[ep.addr], "", ""));
    let mut c = RawClient::connect(weir.proxy);
    c.send(b"GET /hints HTTP/1.1\r\nhost: s\r\n\r\n");
    let (status, fields) = c.read_head().expect("interim");
    assert_eq!((status, field(&fields, "link")), (103, Some("</s.css>; rel=preload")));
    let (status, _, body) = c.read_response().expect("final");
    assert_eq!((status, body.as_slice()), (200, &b"after hints"[..]));
    c.send(b"GET /204 HTTP/1.1\r\nhost: s\r\n\r\n");
    let (status, fields) = c.read_head().expect("204");
    assert_eq!(status, 204);
    assert!(field(&fields, "content-length").is_none() && field(&fields, "transfer-encoding").is_none(), "{fields:?}");
    // An HTTP/1.0 client never sees a 1xx.
    let mut s = TcpStream::connect(weir.proxy).expect("connect");
    s.write_all(b"GET /hints HTTP/1.0\r\nhost: s\r\n\r\n").expect("send");
    let mut got = String::new();
    s.read_to_string(&mut got).expect("read");
    assert!(got.starts_with("HTTP/1.1 200"), "a 1.0 client got {got:?}");
}

#[test]
fn hop_by_hop_fields_are_stripped_both_ways_and_http10_clients_never_get_chunked() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        while let Some(_head) = c.read_head() {
            c.write(b"HTTP/1.1 200 OK\r\nconnection: x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        }
    });
    let weir = Weir::start(&one_service(40, &[ep.addr], "", ""));
    let mut c = Client::connect(weir.proxy);
    c.send_raw(b"GET / HTTP/1.1\r\nhost: s\r\nconnection: x-mine\r\nx-mine: 1\r\nkeep-alive: 1\r\nte: trailers\r\nproxy-connection: x\r\n\r\n");
    let r = c.read_response(false).expect("answer");
    assert_eq!(r.body_string(), "hello");
    for hop in ["x-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(r.header(hop), None, "response field {hop} was forwarded");
    }
    let head = &ep.heads()[0];
    for hop in ["x-mine", "keep-alive", "te", "proxy-connection", "connection"] {
        assert_eq!(head.header(hop), None, "request field {hop} was forwarded");
    }
    let mut s = TcpStream::connect(weir.proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\nhost: s\r\n\r\n").expect("send");
    let mut got = String::new();
    s.read_to_string(&mut got).expect("read");
    assert!(!got.to_ascii_lowercase().contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
}

#[test]
fn transfer_parameters_and_obs_text_values_are_forwarded() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        while let Some(head) = c.read_head() {
            let Some(n) = c.read_body(&head) else { return };
            c.ok(&n.to_string());
        }
    });
    let weir = Weir::start(&one_service(32, &[ep.addr], "", ""));
    let mut c = Client::connect(weir.proxy);
    c.send_raw(
        "POST /p HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked;ext=1\r\nx-name: caf\u{e9} \u{1f600}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .as_bytes(),
    );
    let r = c.read_response(false).expect("answer");
    assert_eq!((r.status, r.body_string()), (200, "5".to_string()), "{:?}", r.header("x-weir-error"));
    let head = &ep.heads()[0];
    assert_eq!(head.header("x-name"), Some("caf\u{e9} \u{1f600}"), "obs-text reaches the endpoint unchanged");
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
}
