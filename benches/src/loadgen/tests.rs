//! The generator against weir-testkit's keep-alive endpoint in this process: every mode
//! completes, counts what it sent, and an open loop keeps its rate and measures a stall from
//! the intended time.

use std::net::SocketAddr;
use std::time::Duration;

use weir_testkit::{Behavior, Endpoint, ReservedPort};

use super::*;

/// weir-testkit's keep-alive test endpoint; with `stall_every` > 0, every n-th request waits
/// 50 ms before its answer.
fn server(stall_every: u64) -> Endpoint {
    let ep = Endpoint::start("lg");
    if stall_every > 0 {
        ep.set(Behavior::StallEvery { every: stall_every, stall: Duration::from_millis(50) });
    }
    ep
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
    let ep = server(0);
    let addr = ep.addr;
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
    let ep = server(100);
    let mut o = opts(ep.addr, Some(400.0));
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
    let ep = server(0);
    let r = event::run(&opts(ep.addr, None)).expect("run");
    assert_eq!(r.errors.count, 0, "errors: {:?}", r.errors.samples);
    assert!(r.ok > 200, "closed loop made only {} requests in 0.5 s", r.ok);
    assert!(ep.requests() >= r.ok);
}

#[test]
fn sequential_and_idle_modes_complete() {
    let ep = server(0);
    let req = request_bytes("bench", "/");
    let seq = sequential(ep.addr, &req, 10, 100, Duration::from_secs(5)).expect("seq");
    assert_eq!(seq["ok"], 100);
    assert_eq!(ep.requests(), 110, "warm-up and recorded requests");
    // The hold also bounds the time to open them: generous for a loaded machine (it ends early
    // once stdin closes).
    let idle = idle(ep.addr, &req, 20, Duration::from_secs(1)).expect("idle");
    assert_eq!(idle["connected"], 20);
}

#[test]
fn an_unreachable_address_fails_fast() {
    // A port held but not listening: connects are refused.
    let port = ReservedPort::loopback().expect("reserve a port");
    assert!(event::run(&opts(port.addr(), Some(100.0))).is_err());
}
