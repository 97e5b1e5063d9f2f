//! TCP services: balance per connection, then relay bytes both ways until both sides are done.
//! Owns: connect with retries on another endpoint (nothing was sent, so it is safe), half-close
//! (a FIN from one side is passed on as a FIN while the other direction keeps flowing), the
//! idle timeout, and the per-connection stats and access-log record. Must not: parse or buffer
//! the stream beyond one read.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_core::accesslog::{InlineStr, LogRecord};
use weir_core::outcome::{ErrorReason, Outcome};
use weir_core::stats::{RequestRecord, RetryReason};

use crate::io::{Conn, until};
use crate::local::ConnRoute;
use crate::upstream::{self, Picked};
use crate::worker::Worker;

const RELAY_BUF_BYTES: usize = 16 * 1024;

/// Serves one downstream connection of a TCP service.
pub(crate) async fn relay(worker: &Rc<Worker>, client: Conn, peer: SocketAddr, route: ConnRoute) {
    let started = Instant::now();
    let start_unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let resolved = {
        let mut local = worker.local.borrow_mut();
        local.refresh(worker);
        route.dialed.and_then(|d| local.snapshot.by_vip(d)).map(|i| {
            let cfg = &local.snapshot.config.services[i];
            (
                local.service_ref(i),
                cfg.timeouts.connect,
                cfg.retry.attempts,
                local.snapshot.config.proxy.tcp_idle_timeout,
            )
        })
    };
    let Some((svc, connect_timeout, attempts, idle)) = resolved else {
        // Unknown destination: a TCP client gets its connection closed.
        worker.telemetry.borrow_mut().shard.unrouted += 1;
        return;
    };

    let mut last: Option<Picked> = None;
    let mut tried_endpoints = upstream::Tried::default();
    let mut upstream = None;
    let mut error = None;
    let mut tried = 0u8;
    for attempt in 1..=attempts {
        let Some(picked) = upstream::pick(worker, &svc, &tried_endpoints, Instant::now()) else {
            error = Some(if last.is_some() { ErrorReason::ConnectFailure } else { ErrorReason::NoHealthyEndpoint });
            break;
        };
        tried += 1;
        match upstream::connect(worker, picked.addr, connect_timeout).await {
            Ok(conn) => {
                upstream::report(worker, &svc, &picked, &Outcome::Response { status: 200 }, Some(started.elapsed()));
                upstream = Some((conn, picked));
                break;
            }
            Err(outcome) => {
                upstream::report(worker, &svc, &picked, &outcome, None);
                last = Some(picked);
                tried_endpoints.add(picked.addr);
                error = Some(ErrorReason::ConnectFailure);
                if attempt < attempts {
                    with_stats(worker, &svc, |s| s.retry(RetryReason::ConnectFailure));
                }
            }
        }
    }

    let (mut bytes_in, mut bytes_out, mut endpoint) = (0, 0, None);
    if let Some((up, picked)) = upstream {
        error = None;
        endpoint = Some(picked.addr);
        with_stats(worker, &svc, |s| s.upstream_connections += 1);
        let (i, o) = pipe(client, up, idle).await;
        with_stats(worker, &svc, |s| s.upstream_connections -= 1);
        (bytes_in, bytes_out) = (i, o);
    }
    let duration = started.elapsed();
    with_stats(worker, &svc, |s| s.record(&RequestRecord { status: None, error, duration, panic: false }));
    let mut t = worker.telemetry.borrow_mut();
    if t.logging() {
        t.log(LogRecord {
            start_unix_us,
            service: InlineStr::new(svc.name.as_bytes()),
            endpoint,
            client: Some(peer),
            status: 0,
            error,
            attempts: tried,
            bytes_in,
            bytes_out,
            duration_us: duration.as_micros() as u64,
            worker: worker.id as u16,
            tcp: true,
            ..LogRecord::default()
        });
    }
}

fn with_stats(worker: &Worker, svc: &crate::local::ServiceRef, f: impl FnOnce(&mut weir_core::stats::ServiceStats)) {
    let slot = worker.local.borrow_mut().resolve(svc).map(|s| s.stats);
    if let Some(slot) = slot {
        f(worker.telemetry.borrow_mut().shard.service_mut(slot));
    }
}

/// Relays both directions until each has seen EOF (or an error, or `idle` without traffic in
/// either direction). Returns bytes client→endpoint and endpoint→client.
async fn pipe(client: Conn, upstream: Conn, idle: Duration) -> (u64, u64) {
    let last_activity = Rc::new(Cell::new(Instant::now()));
    let (c_read, c_write) = (client.try_clone(), client);
    let (u_read, u_write) = (upstream.try_clone(), upstream);
    let up = copy(c_read, u_write, idle, last_activity.clone());
    let down = copy(u_read, c_write, idle, last_activity);
    let (a, b) = futures_util::future::join(up, down).await;
    (a, b)
}

/// Copies `from` → `to` until EOF, then passes the EOF on (shutdown of the write side).
async fn copy(mut from: Conn, mut to: Conn, idle: Duration, last: Rc<Cell<Instant>>) -> u64 {
    let mut buf = Vec::with_capacity(RELAY_BUF_BYTES);
    let mut total = 0u64;
    loop {
        buf.clear();
        let deadline = last.get() + idle;
        let read = match until(deadline, from.read(buf)).await {
            Some(r) => r,
            None => {
                // Idle here; if the other direction moved meanwhile, keep waiting.
                if last.get() + idle > Instant::now() {
                    buf = Vec::with_capacity(RELAY_BUF_BYTES);
                    continue;
                }
                to.abort_ref();
                from.abort_ref();
                return total;
            }
        };
        let (res, b) = read;
        buf = b;
        match res {
            Ok(0) => {
                let _ = to.shutdown_write().await;
                return total;
            }
            Ok(n) => {
                total += n as u64;
                last.set(Instant::now());
                let (res, b) = to.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    from.abort_ref();
                    return total;
                }
            }
            Err(_) => {
                to.abort_ref();
                return total;
            }
        }
    }
}
