//! HTTP/1.1 integrity against endpoints that misbehave on purpose (raw sockets): no response
//! ever reaches the wrong client, early answers are relayed, idle closes never fail a request,
//! writes have deadlines, closes are lingering (or abortive when a body was cut), and the
//! upstream connection gauge comes back down.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_tests::{Client, Weir, eventually};

use crate::raw::{RawClient, RawConn, RawEndpoint, field, one_service};

/// What the endpoint writes after answering `/bad`, 20 ms later, on the same connection.
#[derive(Clone, Copy, Debug)]
enum Unsolicited {
    /// `HEAD /bad` answered with `content-length: 4` and no body, then a whole response.
    HeadThenBody,
    /// A 204, then a whole response.
    NoContentThenBytes,
    /// A body longer than its Content-Length, written in two writes.
    BodyLongerThanLength,
    /// A 408 before closing.
    Timeout408,
}

const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL";

/// An endpoint that answers `/bad` and then writes unsolicited bytes 20 ms later; every other
/// target is answered with its own path as the body.
fn misbehaving(kind: Unsolicited, written: Arc<AtomicU64>) -> RawEndpoint {
    RawEndpoint::start(move |mut c: RawConn| {
        while let Some(head) = c.read_head() {
            if c.read_body(&head).is_none() {
                return;
            }
            if head.target != "/bad" {
                c.ok(&head.target);
                continue;
            }
            match kind {
                Unsolicited::HeadThenBody => c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"),
                Unsolicited::NoContentThenBytes => c.write(b"HTTP/1.1 204 No Content\r\n\r\n"),
                Unsolicited::BodyLongerThanLength => c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd"),
                Unsolicited::Timeout408 => c.ok("bad"),
            }
            // The misbehaviour under test: more bytes later, on an idle connection.
            std::thread::sleep(Duration::from_millis(20));
            match kind {
                Unsolicited::Timeout408 => {
                    c.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    written.fetch_add(1, Ordering::SeqCst);
                    c.close();
                    return;
                }
                _ => c.write(EVIL),
            }
            written.fetch_add(1, Ordering::SeqCst);
        }
    })
}

#[test]
fn unsolicited_bytes_on_an_idle_upstream_connection_never_reach_the_next_client() {
    for kind in [
        Unsolicited::HeadThenBody,
        Unsolicited::NoContentThenBytes,
        Unsolicited::BodyLongerThanLength,
        Unsolicited::Timeout408,
    ] {
        let written = Arc::new(AtomicU64::new(0));
        let ep = misbehaving(kind, written.clone());
        let weir = Weir::start(&one_service(1, &[ep.addr], "", ""));
        let mut first = Client::connect(weir.proxy);
        let method = if matches!(kind, Unsolicited::HeadThenBody) { "HEAD" } else { "GET" };
        first.send_raw(format!("{method} /bad HTTP/1.1\r\nhost: s\r\n\r\n").as_bytes());
        first.read_response(method == "HEAD").expect("the /bad response");
        eventually(Duration::from_secs(5), "the endpoint wrote its unsolicited bytes", || {
            (written.load(Ordering::SeqCst) == 1).then_some(())
        });
        // New clients, each on its own connection: each must get its own answer.
        for i in 0..5 {
            let mut c = Client::connect(weir.proxy);
            let path = format!("/user{i}");
            let r = c.get(&path, "s");
            assert_eq!((r.status, r.body_string()), (200, path.clone()), "{kind:?}: client {i} got another answer");
        }
    }
}

#[test]
fn under_load_no_client_ever_gets_another_clients_response() {
    let written = Arc::new(AtomicU64::new(0));
    let ep = misbehaving(Unsolicited::HeadThenBody, written.clone());
    let weir = Weir::start(&one_service(2, &[ep.addr], "", ""));
    let crossed = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let proxy = weir.proxy;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (crossed, answered) = (crossed.clone(), answered.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                for i in 0..100 {
                    assert!(Instant::now() < deadline, "the load did not finish in 20 s");
                    let mut c = Client::connect(proxy);
                    if t == 0 && i % 5 == 0 {
                        c.send_raw(b"HEAD /bad HTTP/1.1\r\nhost: s\r\n\r\n");
                        c.read_response(true).expect("HEAD answered");
                        continue;
                    }
                    let path = format!("/u{t}-{i}");
                    let r = c.get(&path, "s");
                    let body = r.body_string();
                    if body.starts_with("/u") && body != path {
                        crossed.fetch_add(1, Ordering::SeqCst);
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("load thread");
    }
    assert!(written.load(Ordering::SeqCst) >= 10, "the endpoint misbehaved during the load");
    assert_eq!(answered.load(Ordering::SeqCst), 380);
    assert_eq!(crossed.load(Ordering::SeqCst), 0, "responses went to the wrong client");
}

/// An endpoint that answers a large upload early (before reading its body) and closes.
fn early_answer(status: &'static str) -> RawEndpoint {
    RawEndpoint::start(move |mut c: RawConn| {
        let Some(head) = c.read_head() else { return };
        if head.content_length() > 1024 * 1024 || head.header("expect").is_some() {
            c.write(format!("HTTP/1.1 {status}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly").as_bytes());
            return; // dropped with the body unread: the kernel resets the connection
        }
        if c.read_body(&head).is_some() {
            c.ok("late");
        }
    })
}

#[test]
fn an_early_413_to_a_large_upload_is_relayed_and_is_not_an_endpoint_failure() {
    let ep = early_answer("413 Content Too Large");
    let weir = Weir::start(&one_service(3, &[ep.addr], "", ""));
    let mut c = RawClient::connect(weir.proxy);
    let body_len = 30 * 1024 * 1024;
    c.send(format!("POST /up HTTP/1.1\r\nhost: s\r\ncontent-length: {body_len}\r\n\r\n").as_bytes());
    let mut writer = c.stream.try_clone().expect("clone");
    let upload = std::thread::spawn(move || {
        let block = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            if writer.write_all(&block).is_err() {
                return;
            }
            sent += block.len();
        }
    });
    let (status, fields, body) = c.read_response().expect("an answer");
    assert_eq!((status, body.as_slice()), (413, &b"early"[..]), "the endpoint's early answer was lost");
    assert_eq!(field(&fields, "x-weir-error"), None);
    drop(c);
    upload.join().expect("upload thread");
    weir.wait_metric("weir_requests_total{service=\"s\",source=\"direct\",code=\"413\"}", 1.0);
    assert_eq!(weir.metric("weir_outlier_ejections_total{service=\"s\"}"), 0.0);
    assert_eq!(weir.metric("weir_request_errors_total{service=\"s\",reason=\"upstream-reset\"}"), 0.0);
}

#[test]
fn expect_100_continue_with_a_streamed_body_is_forwarded_and_an_early_401_relayed() {
    let ep = early_answer("401 Unauthorized");
    let weir = Weir::start(&one_service(4, &[ep.addr], "", ""));
    let mut c = RawClient::connect(weir.proxy);
    let body_len = 2 * 1024 * 1024;
    c.send(
        format!("PUT /up HTTP/1.1\r\nhost: s\r\nexpect: 100-continue\r\ncontent-length: {body_len}\r\n\r\n").as_bytes(),
    );
    // The client waits for 100 (or a final answer) before sending its body.
    let (first, _) = c.read_head().expect("an answer to the expectation");
    assert_eq!(first, 401, "weir answered the expectation itself instead of the endpoint");
    assert_eq!(ep.heads()[0].header("expect"), Some("100-continue"), "the expectation was not forwarded");
}

#[test]
fn expect_100_continue_is_answered_by_the_endpoint_when_it_wants_the_body() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        let Some(head) = c.read_head() else { return };
        c.write(b"HTTP/1.1 100 Continue\r\nx-from: endpoint\r\n\r\n");
        if let Some(n) = c.read_body(&head) {
            c.ok(&n.to_string());
        }
    });
    let weir = Weir::start(&one_service(5, &[ep.addr], "", ""));
    let mut c = RawClient::connect(weir.proxy);
    let body = vec![b'y'; 200 * 1024];
    c.send(
        format!("PUT /up HTTP/1.1\r\nhost: s\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n", body.len())
            .as_bytes(),
    );
    let (status, fields) = c.read_head().expect("the interim answer");
    assert_eq!(status, 100);
    assert_eq!(field(&fields, "x-from"), Some("endpoint"), "the 100 did not come from the endpoint");
    c.send(&body);
    let (status, _, got) = c.read_response().expect("final answer");
    assert_eq!((status, got), (200, body.len().to_string().into_bytes()));
}

/// An endpoint that closes a keep-alive connection gracefully (FIN, no `Connection: close`)
/// once it has been idle for 10 ms.
fn closes_idle_connections() -> RawEndpoint {
    RawEndpoint::start(|mut c: RawConn| {
        let _ = c.stream.set_read_timeout(Some(Duration::from_millis(10)));
        while let Some(head) = c.read_head() {
            let _ = c.stream.set_read_timeout(Some(Duration::from_secs(10)));
            let Some(n) = c.read_body(&head) else { return };
            c.ok(&n.to_string());
            let _ = c.stream.set_read_timeout(Some(Duration::from_millis(10)));
        }
        c.close();
    })
}

#[test]
fn a_non_replayable_request_never_fails_on_a_connection_the_endpoint_closed_while_idle() {
    let ep = closes_idle_connections();
    let weir = Weir::start(&one_service(6, &[ep.addr], "", ""));
    let mut c = Client::connect(weir.proxy);
    let uploads: [(&str, Vec<u8>); 3] = [
        ("POST", b"POST /a HTTP/1.1\r\nhost: s\r\ncontent-length: 5\r\n\r\nhello".to_vec()),
        (
            "POST chunked",
            b"POST /b HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        ("PUT over the replay buffer", {
            let mut r = format!("PUT /c HTTP/1.1\r\nhost: s\r\ncontent-length: {}\r\n\r\n", 100 * 1024).into_bytes();
            r.extend(std::iter::repeat_n(b'z', 100 * 1024));
            r
        }),
    ];
    assert_eq!(c.get("/warm", "s").status, 200);
    for (i, (what, raw)) in uploads.iter().enumerate() {
        // The pooled connection is closed by the endpoint before the next request.
        eventually(Duration::from_secs(5), "the endpoint closed the idle connection", || {
            (ep.closed() == i as u64 + 1).then_some(())
        });
        c.send_raw(raw);
        let r = c.read_response(false).expect("an answer");
        assert_eq!(
            r.status,
            200,
            "{what} failed on a connection the endpoint had closed: {:?}",
            r.header("x-weir-error")
        );
    }
}

#[test]
fn an_endpoint_that_stops_reading_a_large_body_gets_a_504_at_the_request_timeout() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        if c.read_head().is_some() {
            // Never reads the body; holds the connection until weir closes it.
            c.wait_peer_close_unread(Duration::from_secs(30));
        }
    });
    let weir = Weir::start(&one_service(7, &[ep.addr], "", "[service.timeouts]\nrequest_ms = 1500"));
    let mut c = RawClient::connect(weir.proxy);
    let body_len = 30 * 1024 * 1024;
    c.send(format!("POST /up HTTP/1.1\r\nhost: s\r\ncontent-length: {body_len}\r\n\r\n").as_bytes());
    let mut writer = c.stream.try_clone().expect("clone");
    let stop = Arc::new(AtomicBool::new(false));
    let upload = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let block = vec![b'x'; 64 * 1024];
            let _ = writer.set_write_timeout(Some(Duration::from_millis(200)));
            let mut sent = 0;
            while sent < body_len && !stop.load(Ordering::SeqCst) {
                match writer.write(&block) {
                    Ok(n) => sent += n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let t = Instant::now();
    let (status, fields, _) = c.read_response().expect("an answer before the client gives up");
    stop.store(true, Ordering::SeqCst);
    assert_eq!((status, field(&fields, "x-weir-error")), (504, Some("timeout")));
    assert!(t.elapsed() < Duration::from_secs(5), "the 504 took {:?} with request_ms = 1500", t.elapsed());
    upload.join().expect("upload thread");
    eventually(Duration::from_secs(5), "weir closed the upstream connection", || (ep.closed() == 1).then_some(()));
}

#[test]
fn a_client_that_never_reads_its_response_is_cut_off_at_the_write_timeout() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        let Some(_) = c.read_head() else { return };
        c.write(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 50 * 1024 * 1024).as_bytes());
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..800 {
            if c.stream.write_all(&block).is_err() {
                return;
            }
        }
    });
    let weir = Weir::start(&one_service(8, &[ep.addr], "downstream_write_timeout_ms = 1000", ""));
    let mut c = TcpStream::connect(weir.proxy).expect("connect");
    c.write_all(b"GET /big HTTP/1.1\r\nhost: s\r\n\r\n").expect("send");
    // The client never reads: weir must give up on it and on the upstream connection.
    eventually(Duration::from_secs(10), "weir closed the upstream connection of a stuck client", || {
        (ep.closed() == 1).then_some(())
    });
    weir.wait_metric("weir_downstream_write_timeouts_total", 1.0);
    // What weir had queued is still readable; then the connection must end (reset or EOF),
    // not stay open.
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut sink = Vec::new();
    if let Err(e) = c.read_to_end(&mut sink) {
        assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the stuck client's connection stayed open after {} bytes",
            sink.len()
        );
    }
}

#[test]
fn closing_after_a_response_with_a_pipelined_request_behind_it_loses_nothing() {
    let ep = weir_tests::Endpoint::start("a");
    let weir = Weir::start(&one_service(9, &[ep.addr], "", ""));
    for round in 0..3u64 {
        let mut s = TcpStream::connect(weir.proxy).expect("connect");
        s.write_all(b"GET /bytes/1048576 HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n").expect("send");
        // A pipelined request arrives once weir has read the first: it stays unread.
        eventually(Duration::from_secs(5), "the endpoint got the request", || {
            (ep.requests() == round + 1).then_some(())
        });
        s.write_all(b"GET / HTTP/1.1\r\nhost: s\r\n\r\n").expect("send");
        // The client is slow: it starts reading only once weir has finished the exchange.
        let want = round as f64 + 1.0;
        eventually(Duration::from_secs(5), "weir finished the exchange", || {
            (weir.metric("weir_requests_total{service=\"s\",source=\"direct\",code=\"200\"}") >= want).then_some(())
        });
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let res = s.read_to_end(&mut got);
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
        assert!(res.is_ok(), "round {round}: the client saw {res:?} after {} body bytes", got.len() - head_end);
        assert_eq!(got.len() - head_end, 1_048_576, "round {round}: the response was cut");
    }
}

#[test]
fn a_body_cut_by_the_endpoint_reaches_an_http10_client_as_a_reset_and_counts_as_an_error() {
    let ep = RawEndpoint::start(|mut c: RawConn| {
        let Some(_) = c.read_head() else { return };
        c.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2710\r\n");
        c.write(&[b'x'; 10_000]);
        c.write(b"\r\n");
        let l = libc::linger { l_onoff: 1, l_linger: 0 };
        use std::os::fd::AsRawFd;
        // SAFETY: setsockopt with a correctly sized linger struct on a valid fd.
        unsafe {
            libc::setsockopt(
                c.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
        // Dropped: closed with a reset mid-body.
    });
    let weir = Weir::start(&one_service(10, &[ep.addr], "", ""));
    let mut s = TcpStream::connect(weir.proxy).expect("connect");
    s.write_all(b"GET /cut HTTP/1.0\r\nhost: s\r\n\r\n").expect("send");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut got = Vec::new();
    let res = s.read_to_end(&mut got);
    let head = String::from_utf8_lossy(&got[..got.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4]);
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
    assert!(res.is_err(), "a cut close-delimited body ended with a clean FIN after {} bytes", got.len());
    weir.wait_metric("weir_request_errors_total{service=\"s\",reason=\"upstream-reset\"}", 1.0);
}

#[test]
fn the_upstream_connection_gauge_comes_back_down() {
    let ep = weir_tests::Endpoint::start("a");
    ep.set(weir_tests::Behavior::Delay(Duration::from_millis(300)));
    let weir = Weir::start(&one_service(
        11,
        &[ep.addr],
        "",
        "[service.timeouts]\nupstream_idle_ms = 2500\n[service.limits]\nmax_idle_per_endpoint = 2",
    ));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let proxy = weir.proxy;
            std::thread::spawn(move || Client::connect(proxy).get("/", "s").status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("client"), 200);
    }
    assert_eq!(ep.connections(), 8, "8 concurrent requests, 8 upstream connections");
    // Only 2 are kept idle; after the idle timeout none are.
    weir.wait_metric("weir_upstream_connections{service=\"s\"}", 2.0);
    eventually(Duration::from_secs(10), "idle upstream connections expired", || {
        (weir.metric("weir_upstream_connections{service=\"s\"}") == 0.0).then_some(())
    });
}

#[test]
fn a_shutdown_client_still_gets_its_whole_response() {
    // Pins what already works: a client that half-closes after its request gets the response.
    let ep = weir_tests::Endpoint::start("a");
    let weir = Weir::start(&one_service(12, &[ep.addr], "", ""));
    let mut s = TcpStream::connect(weir.proxy).expect("connect");
    s.write_all(b"GET /bytes/300000 HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n").expect("send");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert_eq!(got.len() - head_end, 300_000);
}
