//! HTTP/1.1 integrity against endpoints that misbehave on purpose (raw sockets): no response
//! ever reaches the wrong client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_tests::{Client, Weir, eventually};

use crate::raw::{RawConn, RawEndpoint, one_service};

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
