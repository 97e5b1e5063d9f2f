//! One downstream HTTP/1.1 connection, read top to bottom: read a request head (idle and
//! header-read timeouts), parse it strictly, route it to its service once, admit it under the
//! service's pending limit, hand it to [`crate::exchange`], account for it, and loop while the
//! connection stays keep-alive. Pipelined requests are answered in order because the next head
//! is parsed only after the previous response is complete. Closes in stages (lingering) so a
//! queued response is never destroyed by a reset, except when a response was cut, which must
//! look cut. Owns the downstream read buffer. Must not: forward a byte of a request that failed
//! parsing.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_core::accesslog::{InlineStr, LogRecord};
use weir_core::outcome::ErrorReason;
use weir_core::stats::{Exemplar, RequestRecord};

use crate::ctx::{ConnRoute, Ctx};
use crate::exchange::{self, Exchange, RequestInfo};
use crate::http::{self, HeadLimits, RequestHead, Status};
use crate::io::{Conn, ReadUntil};
use crate::plan::Downstream;
use crate::respond::{self, Reply};
use crate::state::Scope;
use crate::trace::{self, SpanRecord, Trace};

/// Initial capacity of a connection's read buffer; it grows for large heads and bodies and
/// shrinks back after a request, so an idle keep-alive connection holds little memory.
const READ_BUF_BYTES: usize = 1024;
const SHRINK_ABOVE_BYTES: usize = 64 * 1024;

/// A lingering close reads and discards what the client still sends for at most this long…
const LINGER_TIME: Duration = Duration::from_secs(2);
/// …and at most this much.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// How a connection ends.
enum Close {
    /// The client closed (or went idle past the timeout between requests): nothing unread.
    Quiet,
    /// weir closes: in stages.
    Linger,
    /// A response was cut: reset.
    Abort,
}

/// Serves HTTP on one accepted connection until it closes.
pub(crate) async fn serve(ctx: &Ctx, conn: Conn, peer: SocketAddr, route: ConnRoute) {
    let mut down =
        Downstream { conn, buf: Vec::with_capacity(READ_BUF_BYTES), peer, caller: route.caller, trace: Trace::None };
    let mut head = RequestHead::default();
    let mut first = true;
    let close = loop {
        let started = match read_head(ctx, &mut down, &mut head, first).await {
            HeadRead::Ready(t) => t,
            HeadRead::Closed => break Close::Quiet,
            HeadRead::Failed(reason, detail) => {
                let t0 = Instant::now();
                let reply = Reply { detail: Some(detail), close: true, ..Reply::new(reason) };
                respond::error(&mut down.conn, reply, ctx.downstream_write_timeout()).await;
                let ex = Exchange { status: reply.reason.status(), error: Some(reply.reason), ..Exchange::default() };
                down.trace = Trace::None;
                account(ctx, None, &down, t0, &RequestInfo::default(), &ex);
                break Close::Linger;
            }
        };
        first = false;
        // The request's state machine (forwarding, retries, streaming) is several KiB; boxing it
        // keeps an idle keep-alive connection down to its read buffer and a small future.
        let ex = Box::pin(handle(ctx, &mut down, &mut head, route, started)).await;
        if ex.abort {
            break Close::Abort;
        }
        if !ex.keep_alive || ctx.draining() {
            break Close::Linger;
        }
        if down.buf.capacity() > SHRINK_ABOVE_BYTES {
            down.buf.shrink_to(READ_BUF_BYTES.max(down.buf.len()));
        }
    };
    match close {
        Close::Quiet => {}
        Close::Linger => down.conn.close_lingering(LINGER_TIME, LINGER_BYTES).await,
        Close::Abort => down.conn.abort(),
    }
}

enum HeadRead {
    /// A complete head is parsed; the request started at this instant.
    Ready(Instant),
    /// The client closed (or went idle past the timeout, or drain) between requests.
    Closed,
    /// Answer this error (with this body text), then close.
    Failed(ErrorReason, &'static str),
}

/// Reads until `head` is complete. Between requests the downstream idle timeout applies (and
/// drain closes the connection); from the first byte of a head (or from accept, for the first
/// request) the header read timeout applies, then 408.
async fn read_head(ctx: &Ctx, down: &mut Downstream, head: &mut RequestHead, first: bool) -> HeadRead {
    let (limits, idle, header_timeout) = {
        let state = ctx.state.borrow();
        let p = &state.snapshot().config.proxy;
        let limits = HeadLimits {
            max_head_bytes: p.max_request_head_bytes,
            max_headers: p.max_headers,
            max_uri_bytes: p.max_uri_bytes,
        };
        (limits, p.downstream_idle_timeout, p.header_read_timeout)
    };
    let mut head_deadline = first.then(|| Instant::now() + header_timeout);
    let mut started = Instant::now();
    loop {
        if !down.buf.is_empty() {
            if head_deadline.is_none() {
                head_deadline = Some(Instant::now() + header_timeout);
                started = Instant::now();
            }
            match http::parse_request(&down.buf, &limits, head) {
                Ok(Status::Complete(_)) => return HeadRead::Ready(started),
                Ok(Status::Partial) => {}
                Err(e) => return HeadRead::Failed(e.error_reason(), e.detail()),
            }
        } else if ctx.draining() {
            return HeadRead::Closed;
        }
        if down.buf.len() == down.buf.capacity() {
            down.buf.reserve(down.buf.capacity().max(READ_BUF_BYTES));
        }
        let buf = std::mem::take(&mut down.buf);
        // Between requests: the idle timeout, and drain closes the connection. Within a head:
        // the header read timeout, then 408.
        let (deadline, cancel) = match head_deadline {
            Some(d) => (d, None),
            None => (Instant::now() + idle, Some(&ctx.drain)),
        };
        match crate::io::read_until(&mut down.conn, buf, deadline, cancel).await {
            ReadUntil::TimedOut if head_deadline.is_some() => {
                // The read was cancelled with its buffer; what was already parsed is lost,
                // which is fine: the connection is answered 408 and closed.
                let reason = ErrorReason::HeaderReadTimeout;
                return HeadRead::Failed(reason, reason.message());
            }
            ReadUntil::TimedOut | ReadUntil::Cancelled => return HeadRead::Closed,
            // EOF or an error, between requests or within a head: nothing to answer to.
            ReadUntil::Done(Ok(0) | Err(_), _) => return HeadRead::Closed,
            ReadUntil::Done(Ok(_), buf) => down.buf = buf,
        }
    }
}

/// Handles one parsed request: routes it to its service once, admits it, proxies it, and
/// accounts for it.
async fn handle(
    ctx: &Ctx,
    down: &mut Downstream,
    head: &mut RequestHead,
    route: ConnRoute,
    started: Instant,
) -> Exchange {
    let info = RequestInfo::from_head(head, &down.buf);
    let routed = {
        ctx.refresh();
        let mut state = ctx.state.borrow_mut();
        down.trace = trace::decide(&state.snapshot().config.tracing, head, &down.buf);
        let index = if route.unknown {
            None
        } else {
            match route.dialed {
                Some(d) => state.snapshot().by_vip(d),
                None => head.host.and_then(|h| state.snapshot().by_host(h.get(&down.buf))),
            }
        };
        match index.map(|i| state.scope(i)) {
            None => {
                state.telemetry.shard.unrouted += 1;
                Err((None, ErrorReason::NoRoute))
            }
            Some(scope) if !state.admit(&scope) => Err((Some(scope), ErrorReason::Overloaded)),
            Some(scope) => Ok(scope),
        }
    };
    match routed {
        Ok(scope) => {
            let ex = exchange::exchange(ctx, down, head, &scope, started).await;
            ctx.state.borrow_mut().release(&scope);
            account(ctx, Some(&scope), down, started, &info, &ex);
            ex
        }
        // Unknown service (404) or over the service's pending limit (503): the request's body
        // (if any) is not read, so the connection closes after the answer.
        Err((scope, reason)) => {
            let close = head.body.has_body() || !head.keep_alive;
            let reply = Reply { close, head_request: info.is_head, ..Reply::new(reason) };
            let written = respond::error(&mut down.conn, reply, ctx.downstream_write_timeout()).await;
            down.buf.drain(..head.head_len);
            let ex = Exchange {
                status: reason.status(),
                error: Some(reason),
                keep_alive: written && !reply.closes(),
                ..Exchange::default()
            };
            account(ctx, scope.as_ref(), down, started, &info, &ex);
            ex
        }
    }
}

/// Counts a finished request in the worker's stats shard (under its caller's `source`), its
/// access log and, when weir makes a span for it, its span ring.
fn account(ctx: &Ctx, scope: Option<&Scope>, down: &Downstream, started: Instant, info: &RequestInfo, ex: &Exchange) {
    let duration = started.elapsed();
    let mut state = ctx.state.borrow_mut();
    let source = ctx.source(down.caller, &state.telemetry.callers);
    if ex.write_timeout {
        state.telemetry.shard.downstream_write_timeouts += 1;
    }
    let wall = (state.telemetry.logging() || down.trace != Trace::None).then(|| {
        let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (end.saturating_sub(duration), end)
    });
    if let Some(stats) = scope.and_then(|s| state.stats(s)) {
        stats.record(&RequestRecord {
            status: (ex.status != 0).then_some(ex.status),
            error: ex.error,
            duration,
            panic: ex.panic,
            source: source.slot,
            exemplar: down.trace.trace_id().map(|trace_id| Exemplar {
                trace_id,
                duration_ns: 0,
                unix_ms: wall.map_or(0, |(_, end)| end.as_millis() as u64),
            }),
        });
    }
    let t = &mut state.telemetry;
    let (start, _) = wall.unwrap_or_default();
    if let Trace::Span(span) = down.trace {
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
        let start_unix_us = start.as_micros() as u64;
        t.log(LogRecord {
            start_unix_us,
            service: InlineStr::new(scope.map_or(&b""[..], |s| s.name().as_bytes())),
            endpoint: ex.endpoint,
            client: Some(down.peer),
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
            tcp: false,
            source_cgroup_id: source.cgroup_id.unwrap_or(0),
        });
    }
}
