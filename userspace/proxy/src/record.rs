//! How a finished HTTP request is counted, whatever its codec: the worker's RED stats shard
//! (under the caller's `source`), its access-log ring and, for a traced request, its span
//! ring, from what the exchange reported. Must not: block, lock, or allocate
//! (the log record is fixed-size).

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use weir_core::accesslog::{AUTHORITY_BYTES, InlineStr, LogProtocol, LogRecord, METHOD_BYTES, NO_ID, PATH_BYTES};
use weir_core::stats::{Exemplar, RequestRecord};

use crate::ctx::Ctx;
use crate::http::{Method, RequestHead};
use crate::plan::Downstream;
use crate::retry_loop::Exchange;
use crate::state::Scope;
use crate::trace::{SpanRecord, Trace};

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
    pub(crate) fn from_h2(parts: &http::request::Parts) -> RequestInfo {
        let authority = parts.uri.authority().map_or(&b""[..], |a| a.as_str().as_bytes());
        RequestInfo {
            method: InlineStr::new(parts.method.as_str().as_bytes()),
            authority: InlineStr::new(authority),
            path: InlineStr::new(parts.uri.path_and_query().map_or(&b"/"[..], |p| p.as_str().as_bytes())),
            is_head: parts.method == http::Method::HEAD,
        }
    }

    pub(crate) fn from_head(head: &RequestHead, src: &[u8]) -> RequestInfo {
        RequestInfo {
            method: InlineStr::new(head.method_span.get(src)),
            authority: InlineStr::new(head.host.map_or(&b""[..], |h| h.get(src))),
            path: InlineStr::new(head.target.get(src)),
            is_head: head.method == Method::Head,
        }
    }
}

/// Who sent a request, as its accounting reports it: the client's address, the caller's
/// cgroup (a steered connection's, shared by every request and HTTP/2 stream on it) and the
/// request's trace decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Requester {
    pub peer: SocketAddr,
    /// The caller's cgroup id, for a steered connection.
    pub caller: Option<u64>,
    pub trace: Trace,
}

impl Requester {
    /// The current request of an HTTP/1.1 connection.
    pub(crate) fn of(down: &Downstream) -> Requester {
        Requester { peer: down.peer, caller: down.caller, trace: down.trace }
    }
}

/// Counts a finished request in the worker's stats shard (under its caller's `source`), its
/// access log and, when weir makes a span for it, its span ring.
pub(crate) fn account(
    ctx: &Ctx,
    scope: Option<&Scope>,
    who: &Requester,
    started: Instant,
    info: &RequestInfo,
    ex: &Exchange,
) {
    let duration = crate::io::now().saturating_duration_since(started);
    let mut state = ctx.state.borrow_mut();
    let source = ctx.source(who.caller, &state.telemetry.callers);
    if ex.write_timeout {
        state.telemetry.shard.counters.downstream_write_timeouts += 1;
    }
    let wall = (state.telemetry.logging() || who.trace != Trace::None).then(|| {
        let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (end.saturating_sub(duration), end)
    });
    let record = RequestRecord {
        status: (ex.status != 0).then_some(ex.status),
        error: ex.error,
        duration,
        panic: ex.panic,
        source: source.slot,
        exemplar: who.trace.trace_id().map(|trace_id| Exemplar {
            trace_id,
            duration_ns: 0,
            unix_ms: wall.map_or(0, |(_, end)| end.as_millis() as u64),
        }),
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
    let (start, _) = wall.unwrap_or_default();
    if let Trace::Span(span) = who.trace {
        t.span(SpanRecord {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            flags: span.flags,
            start_unix_ns: start.as_nanos() as u64,
            duration_ns: duration.as_nanos() as u64,
            service: InlineStr::new(scope.map_or(&b""[..], |s| s.name().as_bytes())),
            method: info.method,
            endpoint: ex.endpoint,
            attempts: ex.attempts,
            status: ex.status,
            error: ex.error,
            source: source.workload,
        });
    }
    if t.logging() {
        t.log(LogRecord {
            start_unix_us: start.as_micros() as u64,
            service: InlineStr::new(scope.map_or(&b""[..], |s| s.name().as_bytes())),
            endpoint: ex.endpoint,
            client: Some(who.peer),
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
            source_cgroup_id: source.cgroup_id.unwrap_or(0),
        });
    }
}
