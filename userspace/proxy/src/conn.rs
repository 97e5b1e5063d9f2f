//! One downstream HTTP/1.1 connection, read top to bottom (a connection that opens with the
//! HTTP/2 preface is handed to [`crate::h2down`]): read a request head (idle and
//! header-read timeouts), parse it strictly, route it to its service once, admit it under the
//! service's rate and pending limits ([`crate::policy`]), hand it to [`crate::exchange`],
//! account for it, and loop while the connection stays keep-alive. Pipelined requests are answered in order because the next head
//! is parsed only after the previous response is complete. Closes in stages (lingering) so a
//! queued response is never destroyed by a reset, except when a response was cut, which must
//! look cut. Owns the downstream read buffer. Must not: forward a byte of a request that failed
//! parsing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir_core::outcome::ErrorReason;

use crate::ctx::{ConnRoute, Ctx};
use crate::exchange;
use crate::h2down;
use crate::http::{self, HeadLimits, RequestHead, Status};
use crate::io::{Conn, ReadUntil};
use crate::plan::Downstream;
use crate::policy;
use crate::record::{RequestInfo, Requester, account};
use crate::respond::{self, Reply};
use crate::retry_loop::Exchange;
use crate::trace::{self, Trace};

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
            HeadRead::Idle => break Close::Linger,
            HeadRead::Http2 => {
                // h2c with prior knowledge: the connection is HTTP/2 from here on, the preface
                // (already read) read again by the HTTP/2 server.
                let Downstream { conn, buf, peer, .. } = down;
                match conn.into_poll_io_after(buf) {
                    // Boxed: an HTTP/1.1 connection must not carry the HTTP/2 server's state.
                    Ok(io) => Box::pin(crate::h2down::serve(ctx, io, peer, route)).await,
                    Err(e) => tracing::warn!(%peer, "cannot serve HTTP/2 on this connection: {e}"),
                }
                return;
            }
            HeadRead::Failed(reason, detail) => {
                let t0 = crate::io::now();
                let reply = Reply { detail: Some(detail), close: true, ..Reply::new(reason) };
                // Boxed, like the lingering close below: an idle connection's future must not
                // carry the size of the states it ends in (1.6 and 2 KiB).
                Box::pin(respond::error(&mut down.conn, reply, ctx.downstream_write_timeout())).await;
                let ex = Exchange { status: reply.reason.status(), error: Some(reply.reason), ..Exchange::default() };
                down.trace = Trace::None;
                account(ctx, None, &Requester::of(&down), t0, &RequestInfo::default(), &ex);
                break Close::Linger;
            }
        };
        if first {
            // HTTP/1.1 from here on (never handed to HTTP/2): reads take what a receive kept
            // armed on the connection received.
            down.conn.receive_multishot();
        }
        first = false;
        // The request's state machine (forwarding, retries, streaming) is several KiB; keeping it
        // off this future (in a block the worker recycles) keeps an idle keep-alive connection
        // down to its read buffer and a small future.
        let ex = crate::recycle::Recycled::new(handle(ctx, &mut down, &mut head, route, started)).await;
        if ex.abort {
            break Close::Abort;
        }
        // A response sent without `Connection: close` promised the client another request:
        // even when drain started since, the next one is read (drain closes the connection
        // only when no request comes, after its grace), never met with a close it could not see
        // coming.
        if !ex.keep_alive {
            break Close::Linger;
        }
        if down.buf.capacity() > SHRINK_ABOVE_BYTES {
            down.buf.shrink_to(READ_BUF_BYTES.max(down.buf.len()));
        }
    };
    match close {
        Close::Quiet => {}
        Close::Linger => Box::pin(down.conn.close_lingering(LINGER_TIME, LINGER_BYTES)).await,
        Close::Abort => down.conn.abort(),
    }
}

enum HeadRead {
    /// A complete head is parsed; the request started at this instant.
    Ready(Instant),
    /// The client closed between requests.
    Closed,
    /// No request came: idle past the timeout between requests, or drain. weir closes, in
    /// stages, so that a request the client sends meanwhile meets a FIN, never a reset.
    Idle,
    /// The first bytes are the HTTP/2 prior-knowledge preface.
    Http2,
    /// Answer this error (with this body text), then close.
    Failed(ErrorReason, &'static str),
}

/// Reads until `head` is complete. Between requests the downstream idle timeout applies (and
/// drain closes the connection); from the first byte of a head (or from accept, for the first
/// request) the header read timeout applies, then 408. Until the first byte of a head arrives,
/// the worker's drain token closes the connection (the drain cancels it after its grace).
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
    let mut head_deadline = first.then(|| crate::io::now() + header_timeout);
    let mut started = crate::io::now();
    loop {
        if !down.buf.is_empty() {
            if head_deadline.is_none() {
                head_deadline = Some(crate::io::now() + header_timeout);
                started = crate::io::now();
            }
            if first && h2down::is_preface(&down.buf) {
                if down.buf.len() >= h2down::PREFACE.len() {
                    return HeadRead::Http2;
                }
            } else {
                match http::parse_request(&down.buf, &limits, head) {
                    Ok(Status::Complete(_)) => return HeadRead::Ready(started),
                    Ok(Status::Partial) => {}
                    Err(e) => return HeadRead::Failed(e.error_reason(), e.detail()),
                }
            }
        }
        if down.buf.len() == down.buf.capacity() {
            down.buf.reserve(down.buf.capacity().max(READ_BUF_BYTES));
        }
        // Between requests: the idle timeout. Within a head (or from accept, for the first):
        // the header read timeout, then 408. Drain closes a connection with no head begun.
        let deadline = head_deadline.unwrap_or_else(|| crate::io::now() + idle);
        let cancel = down.buf.is_empty().then_some(&ctx.drain);
        let buf = std::mem::take(&mut down.buf);
        match crate::io::read_until(&mut down.conn, buf, deadline, cancel).await {
            ReadUntil::TimedOut if head_deadline.is_some() => {
                // The read was cancelled with its buffer; what was already parsed is lost,
                // which is fine: the connection is answered 408 and closed.
                let reason = ErrorReason::HeaderReadTimeout;
                return HeadRead::Failed(reason, reason.message());
            }
            ReadUntil::TimedOut | ReadUntil::Cancelled => return HeadRead::Idle,
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
        route.resolve(&mut state, head.host.map(|h| h.get(&down.buf)))
    };
    let Some(mut scope) = routed else {
        // Unknown service (404): the request's body (if any) is not read.
        let ex = exchange::refuse(ctx, down, head, Reply::new(ErrorReason::NoRoute)).await;
        account(ctx, None, &Requester::of(down), started, &info, &ex);
        return ex;
    };
    match policy::admit(ctx, &scope, &Requester::of(down)) {
        Ok(()) => {
            let ex = exchange::exchange(ctx, down, head, &mut scope, started).await;
            ctx.state.borrow_mut().release(&scope);
            account(ctx, Some(&scope), &Requester::of(down), started, &info, &ex);
            ex
        }
        // Over the service's rate limit (429) or pending limit (503): the request's body (if
        // any) is not read, so the connection closes after the answer.
        Err(refused) => {
            let reply = Reply { retry_after: refused.retry_after, ..Reply::new(refused.reason) };
            let ex = exchange::refuse(ctx, down, head, reply).await;
            account(ctx, Some(&scope), &Requester::of(down), started, &info, &ex);
            ex
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns (what every connection task allocates once).
    fn future_size<'a, Fut: std::future::Future>(_: impl Fn(&'a Ctx, Conn, SocketAddr, ConnRoute) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn an_idle_connection_carries_a_small_future() {
        // The request, the error answer and the lingering close are boxed when they happen:
        // 10 000 idle keep-alive connections must not each hold their several KiB.
        let size = future_size(serve);
        assert!(size <= 1536, "a connection's future is {size} bytes");
    }

    #[test]
    fn a_request_s_state_fits_a_recycled_block() {
        // Moved once per request (into its block, a `memcpy` of its whole size); one that does
        // not fit would cost a `Box` per request. The rare paths are boxed where they start.
        fn size<'a, Fut: std::future::Future>(
            _: impl Fn(&'a Ctx, &'a mut Downstream, &'a mut RequestHead, ConnRoute, Instant) -> Fut,
        ) -> usize {
            std::mem::size_of::<Fut>()
        }
        let size = size(handle);
        assert!(size <= crate::recycle::BLOCK_BYTES, "a request's future is {size} bytes");
    }
}
