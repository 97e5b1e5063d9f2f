//! How a finished HTTP request is counted, whatever its codec: the worker's RED stats shard
//! and its access-log ring, from what the exchange reported. Must not: block, lock, or allocate
//! (the log record is fixed-size).

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use weir_core::accesslog::{AUTHORITY_BYTES, InlineStr, LogProtocol, LogRecord, METHOD_BYTES, NO_ID, PATH_BYTES};
use weir_core::stats::RequestRecord;

use crate::ctx::Ctx;
use crate::http::{Method, RequestHead};
use crate::retry_loop::Exchange;
use crate::state::Scope;

/// What the access log needs of a request, copied out of the head (bounded, no heap).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestInfo {
    pub method: InlineStr<METHOD_BYTES>,
    pub authority: InlineStr<AUTHORITY_BYTES>,
    pub path: InlineStr<PATH_BYTES>,
    pub is_head: bool,
}

impl RequestInfo {
    /// From an HTTP/2 request's parts.
    pub fn from_h2(parts: &http::request::Parts) -> RequestInfo {
        let authority = parts.uri.authority().map_or(&b""[..], |a| a.as_str().as_bytes());
        RequestInfo {
            method: InlineStr::new(parts.method.as_str().as_bytes()),
            authority: InlineStr::new(authority),
            path: InlineStr::new(parts.uri.path_and_query().map_or(&b"/"[..], |p| p.as_str().as_bytes())),
            is_head: parts.method == http::Method::HEAD,
        }
    }

    pub fn from_head(head: &RequestHead, src: &[u8]) -> RequestInfo {
        RequestInfo {
            method: InlineStr::new(head.method_span.get(src)),
            authority: InlineStr::new(head.host.map_or(&b""[..], |h| h.get(src))),
            path: InlineStr::new(head.target.get(src)),
            is_head: head.method == Method::Head,
        }
    }
}

/// Counts a finished request in the worker's stats shard and access log.
pub(crate) fn account(
    ctx: &Ctx,
    scope: Option<&Scope>,
    peer: SocketAddr,
    started: Instant,
    info: &RequestInfo,
    ex: &Exchange,
) {
    let duration = started.elapsed();
    let mut state = ctx.state.borrow_mut();
    if ex.write_timeout {
        state.telemetry.shard.counters.downstream_write_timeouts += 1;
    }
    let record = RequestRecord {
        status: (ex.status != 0).then_some(ex.status),
        error: ex.error,
        duration,
        panic: ex.panic,
        grpc: ex.grpc,
    };
    // The route and backend a routed request took (services with routes only).
    let routed = scope.and_then(|s| Some((s.route_index()?, s.backend())));
    if let Some(stats) = scope.and_then(|s| state.stats(s)) {
        stats.record(&record);
        if let Some((route, backend)) = routed {
            stats.route_mut(route, &backend.name).record(&record);
        }
    }
    let t = &mut state.telemetry;
    if t.logging() {
        let start_unix_us = SystemTime::now()
            .checked_sub(duration)
            .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        t.log(LogRecord {
            start_unix_us,
            service: InlineStr::new(scope.map_or(&b""[..], |s| s.name().as_bytes())),
            endpoint: ex.endpoint,
            client: Some(peer),
            method: info.method,
            authority: info.authority,
            path: info.path,
            status: ex.status,
            error: ex.error,
            attempts: ex.attempts,
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out,
            duration_us: duration.as_micros() as u64,
            upstream_us: ex.upstream_us,
            worker: ctx.worker as u16,
            protocol: if ex.h2 { LogProtocol::Http2 } else { LogProtocol::Http },
            grpc_status: ex.grpc,
            route: routed.map_or(NO_ID, |(r, _)| r),
            backend: routed.map_or(NO_ID, |(_, b)| b.log_id),
        });
    }
}
