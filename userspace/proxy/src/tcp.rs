//! TCP services: balance per connection, then relay bytes both ways ([`crate::tunnel`]) until
//! both sides are done. Owns: connect with retries on another endpoint (nothing was sent, so
//! it is safe), and the per-connection stats and access-log record. Must not: parse or buffer
//! the stream.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_core::accesslog::{InlineStr, LogProtocol, LogRecord, NO_ID};
use weir_core::outcome::{ErrorReason, Outcome};
use weir_core::stats::{RequestRecord, RetryReason, SourceSlot};

use crate::ctx::{ConnRoute, Ctx};
use crate::io::Conn;
use crate::pool::{self, UpConn};
use crate::state::{Picked, Scope, Tried};
use crate::tunnel;

/// Serves one downstream connection of a TCP service.
pub(crate) async fn relay(ctx: &Ctx, mut client: Conn, peer: SocketAddr, route: ConnRoute) {
    client.receive_multishot();
    let started = crate::io::now();
    let start_unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let resolved = {
        ctx.refresh();
        let state = ctx.state.borrow();
        let snapshot = state.snapshot();
        route.dialed.and_then(|d| snapshot.by_vip(d)).map(|i| (state.scope(i), snapshot.config.proxy.tcp_idle_timeout))
    };
    let Some((scope, idle)) = resolved else {
        // Unknown destination: a TCP client gets its connection closed.
        ctx.state.borrow_mut().telemetry.shard.counters.unrouted += 1;
        return;
    };
    let (attempts, connect_timeout) = (scope.config().retry.attempts, scope.config().timeouts.connect);
    let opts = ctx.connect_options(scope.config());

    let mut tried = Tried::default();
    let mut connected: Option<(UpConn, Picked)> = None;
    let mut error = None;
    let mut tries = 0u8;
    for attempt in 1..=attempts {
        let picked = ctx.state.borrow_mut().pick(&scope, &tried, crate::io::now(), ctx.now_ms());
        let Some(picked) = picked else {
            error = Some(if tries > 0 { ErrorReason::ConnectFailure } else { ErrorReason::NoHealthyEndpoint });
            break;
        };
        tries += 1;
        let gauge = ctx.state.borrow_mut().gauge(&scope);
        let res = pool::connect(picked.addr, &opts, connect_timeout, &gauge).await;
        let mut state = ctx.state.borrow_mut();
        match res {
            Ok(up) => {
                let ok = Outcome::Response { status: 200 };
                state.report(
                    &scope,
                    &picked,
                    &ok,
                    Some(crate::io::now().saturating_duration_since(started)),
                    crate::io::now(),
                    ctx.now_ms(),
                );
                connected = Some((up, picked));
                break;
            }
            Err(outcome) => {
                state.report(&scope, &picked, &outcome, None, crate::io::now(), ctx.now_ms());
                tried.add(picked.addr);
                error = ErrorReason::from_outcome(&outcome);
                // weir's own limits are not retried elsewhere: they would fail the same way.
                if outcome == Outcome::LocalResource {
                    break;
                }
                if attempt < attempts
                    && let Some(s) = state.stats(&scope)
                {
                    s.retry(RetryReason::ConnectFailure);
                }
            }
        }
    }

    let (mut bytes_in, mut bytes_out, mut endpoint) = (0, 0, None);
    if let Some((up, picked)) = connected {
        error = None;
        endpoint = Some(picked.addr);
        (bytes_in, bytes_out) = tunnel::pipe(client, Vec::new(), up, Vec::new(), idle).await;
    }
    let duration = crate::io::now().saturating_duration_since(started);
    let source = ctx.source(route.caller, &ctx.state.borrow().telemetry.callers);
    record(ctx, &scope, error, duration, source.slot);
    let mut state = ctx.state.borrow_mut();
    let t = &mut state.telemetry;
    if t.logging() {
        t.log(LogRecord {
            start_unix_us,
            service: InlineStr::new(scope.name().as_bytes()),
            endpoint,
            client: Some(peer),
            status: 0,
            error,
            attempts: tries,
            bytes_in,
            bytes_out,
            duration_us: duration.as_micros() as u64,
            worker: ctx.worker as u16,
            protocol: LogProtocol::Tcp,
            grpc_status: None,
            route: NO_ID,
            backend: NO_ID,
            source_cgroup_id: source.cgroup_id.unwrap_or(0),
            ..LogRecord::default()
        });
    }
}

fn record(ctx: &Ctx, scope: &Scope, error: Option<ErrorReason>, duration: Duration, source: SourceSlot) {
    if let Some(s) = ctx.state.borrow_mut().stats(scope) {
        s.record(&RequestRecord { status: None, error, duration, panic: false, source, exemplar: None, grpc: None });
    }
}
