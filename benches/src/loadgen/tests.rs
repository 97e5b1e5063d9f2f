//! The generator against a tiny in-process keep-alive server: every mode completes, counts
//! what it sent, and an open loop keeps its rate and measures a stall from the intended time.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

/// Serves `HTTP/1.1 200` with a 3-byte body on every request; sleeps `stall_every`-th request
/// for 50 ms when non-zero. Returns its address and a request counter.
fn server(stall_every: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let served = counter.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                        if stall_every > 0 && n.is_multiple_of(stall_every) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        if conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").is_err() {
                            return;
                        }
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, served)
}

fn opts(addr: SocketAddr, rate: Option<f64>) -> LoopOptions {
    LoopOptions {
        addr,
        request: request_bytes("bench", "/"),
        connections: 4,
        rate,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
    }
}

#[test]
fn open_loop_keeps_its_rate() {
    let (addr, _) = server(0);
    let r = event::run(&opts(addr, Some(400.0))).expect("run");
    assert_eq!(r.errors.count, 0, "errors: {:?}", r.errors.samples);
    assert!((190..=210).contains(&r.ok), "400 rps for 0.5 s recorded {} responses", r.ok);
    let report = loop_report(&opts(addr, Some(400.0)), &r);
    assert!(report["latency"]["p50_us"].as_f64().expect("p50") > 0.0);
}

#[test]
fn open_loop_counts_a_stall_from_the_intended_time() {
    // One connection at 400 rps (2.5 ms apart) and a 50 ms stall every 100th request: the
    // requests scheduled during the stall queue behind it, and the max is at least the stall.
    let (addr, _) = server(100);
    let mut o = opts(addr, Some(400.0));
    o.connections = 1;
    let r = event::run(&o).expect("run");
    assert!(r.latency.max() >= 45_000_000, "max {} ns hides the 50 ms stall", r.latency.max());
    // Coordinated omission would record only the stalled request as slow; measured from the
    // intended time, the ~20 requests scheduled during the stall are slow too.
    let slow = r.latency.count_between(10_000_000, MAX_RECORD_NS);
    assert!(slow >= 10, "only {slow} requests recorded above 10 ms");
}

#[test]
fn closed_loop_saturates() {
    let (addr, served) = server(0);
    let r = event::run(&opts(addr, None)).expect("run");
    assert_eq!(r.errors.count, 0, "errors: {:?}", r.errors.samples);
    assert!(r.ok > 200, "closed loop made only {} requests in 0.5 s", r.ok);
    assert!(served.load(Ordering::Relaxed) >= r.ok);
}

#[test]
fn sequential_and_idle_modes_complete() {
    let (addr, _) = server(0);
    let req = request_bytes("bench", "/");
    let seq = sequential(addr, &req, 10, 100, Duration::from_secs(5)).expect("seq");
    assert_eq!(seq["ok"], 100);
    let idle = idle(addr, &req, 20, Duration::from_millis(50)).expect("idle");
    assert_eq!(idle["connected"], 20);
}

#[test]
fn an_unreachable_address_fails_fast() {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(event::run(&opts(addr, Some(100.0))).is_err());
}
