//! One proxied HTTP/1.1 exchange, read top to bottom: the route (once, on the parsed head:
//! [`crate::policy`]), its header edits and faults, the plan, a held body, the attempts
//! ([`crate::retry_loop::attempts`] with HTTP/1.1 attempts from [`crate::attempt::run`], or
//! [`crate::h1_to_h2`] for an HTTP/2 service), then the endpoint's response streamed or weir's
//! own error answered. Owns the request plan
//! (what does not change between attempts), holding a replayable body, and streaming the
//! response with its no-progress write timeout. Must not: block the worker, hold the state
//! borrow across an `.await`, or forward a byte it did not parse.

use std::time::{Duration, Instant, SystemTime};

use weir_core::outcome::{ErrorReason, Outcome};
use weir_core::retry::{self};

use crate::attempt::{self, Bufs};
use crate::body::{self, OutFraming, Source, Waits};
use crate::ctx::Ctx;
use crate::http::{self, BodyFraming, Method, RequestHead};
use crate::io::Wait;
use crate::plan::{AttemptResult, Attempter, Call, Downstream, Plan, via};
use crate::policy::{self, H1Input};
use crate::pool::UpConn;
use crate::respond::{self, Reply};
use crate::retry_loop::{self, End, Exchange, attempts};
use crate::state::{Picked, Scope};

/// An HTTP/1.1 client's request, attempted over HTTP/1.1.
struct H1<'a> {
    down: &'a mut Downstream,
    head: &'a RequestHead,
    bufs: &'a mut Bufs,
}

impl Attempter for H1<'_> {
    type Up = UpConn;

    async fn run(&mut self, call: Call<'_>, picked: &Picked, fresh: bool) -> AttemptResult<UpConn> {
        attempt::run(call, self.down, self.head, picked, fresh, self.bufs).await
    }

    fn retry_after(&self, r: &AttemptResult<UpConn>) -> Option<Duration> {
        match r.outcome {
            Outcome::Response { status: 503 | 429 } => self
                .bufs
                .resp
                .header(&self.bufs.ubuf, b"retry-after")
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now())),
            _ => None,
        }
    }

    fn replayable(&self) -> bool {
        self.bufs.replayable
    }
}

/// Answers a request weir does not forward (no service, no route, a limit, a fault) without
/// reading its body: the connection closes after the answer when it has one.
pub(crate) async fn refuse(ctx: &Ctx, down: &mut Downstream, head: &RequestHead, reply: Reply<'_>) -> Exchange {
    let close = reply.close || head.body.has_body() || !head.keep_alive;
    let reply = Reply { close, head_request: head.method == Method::Head, ..reply };
    let written = respond::error(&mut down.conn, reply, ctx.downstream_write_timeout()).await;
    down.buf.drain(..head.head_len);
    Exchange {
        status: reply.status(),
        error: Some(reply.reason),
        keep_alive: written && !reply.closes(),
        ..Exchange::default()
    }
}

/// Proxies one request whose head is parsed in `down.buf[..head.head_len]`; `scope` becomes
/// the routed one.
pub(crate) async fn exchange(
    ctx: &Ctx,
    down: &mut Downstream,
    head: &mut RequestHead,
    scope: &mut Scope,
    started: Instant,
) -> Exchange {
    if !policy::route(ctx, scope, &H1Input { head, src: &down.buf }) {
        return refuse(ctx, down, head, Reply::new(ErrorReason::NoRoute)).await;
    }
    let scope = &*scope;
    policy::edit_h1(head, &down.buf, &scope.route().edits);
    let fault = policy::fault(ctx, scope).await;
    if let Some(status) = fault.abort {
        return refuse(ctx, down, head, Reply { status: Some(status), ..Reply::new(ErrorReason::FaultInjected) }).await;
    }
    // A delay injected is not the endpoint's time: the request's deadline starts after it.
    let mut plan = Plan::new(scope, head, down, fault.delayed.unwrap_or(started));
    let head_len = head.head_len;
    if plan.buffered_body {
        // weir answers `Expect: 100-continue` itself for a body it holds, and does not forward
        // the expectation; a streamed body's expectation goes to the endpoint, which answers.
        if head.expect_continue {
            head.remove_header(&down.buf, b"expect");
        }
        if plan.body_len > 0 {
            if head.expect_continue && down.buf.len() == head_len {
                if !respond::continue_100(&mut down.conn, plan.write_timeout).await {
                    return Exchange::default();
                }
                plan.swallow_100 = true;
            }
            if !read_body_fully(down, head_len + plan.body_len as usize, plan.deadline).await {
                // The client went away or stalled before its body arrived: nobody to answer.
                return Exchange::default();
            }
        }
    }
    if scope.config().protocol.upstream_h2() {
        // An HTTP/2 endpoint cannot be asked to say 100 for us: weir says it, then streams.
        if head.expect_continue {
            head.remove_header(&down.buf, b"expect");
            if !plan.buffered_body
                && down.buf.len() == head_len
                && !respond::continue_100(&mut down.conn, plan.write_timeout).await
            {
                return Exchange::default();
            }
        }
        ctx.state.borrow_mut().record_request(scope, crate::io::now());
        // Boxed: its state (5.5 KiB) would otherwise be part of every HTTP/1.1 request's.
        let (ex, consumed) = Box::pin(crate::h1_to_h2::exchange(Call { ctx, scope, plan: &plan }, down, head)).await;
        down.buf.drain(..consumed);
        return ex;
    }
    let mut bufs = {
        let mut state = ctx.state.borrow_mut();
        state.record_request(scope, crate::io::now());
        Bufs { wbuf: state.take_buf(), ubuf: state.take_buf(), resp: state.take_head(), replayable: plan.buffered_body }
    };
    let mut ex = Exchange::default();
    let call = Call { ctx, scope, plan: &plan };
    let end = attempts(call, &mut H1 { down, head, bufs: &mut bufs }, &mut ex).await;
    // The request (and a held body) is consumed; a streamed body was consumed by the pump.
    let consumed = if plan.buffered_body { head_len + plan.body_len as usize } else { head_len };
    match end {
        End::Respond(r, picked) => stream_response(call, down, r, &picked, &mut bufs, consumed, &mut ex).await,
        End::Fail(reason, detail) => {
            // After a streamed body the request's framing is unknown: close.
            let close = !plan.client_keep_alive || !plan.buffered_body;
            let reply = Reply { detail, close, head_request: plan.is_head, ..Reply::new(reason) };
            if !respond::error(&mut down.conn, reply, plan.write_timeout).await {
                ex.write_timeout = true;
            }
            ex.status = reason.status();
            ex.error = Some(reason);
            ex.keep_alive = !reply.closes();
        }
        End::Abandon => {
            ex.keep_alive = false;
            ex.error = Some(ErrorReason::BadRequest);
        }
    }
    {
        let mut state = ctx.state.borrow_mut();
        state.put_buf(bufs.wbuf);
        state.put_buf(bufs.ubuf);
        state.put_head(bufs.resp);
    }
    down.buf.drain(..consumed.min(down.buf.len()));
    ex
}

/// Reads until `down.buf` holds `total` bytes (head + a replayable body), by `deadline`.
async fn read_body_fully(down: &mut Downstream, total: usize, deadline: Instant) -> bool {
    if down.buf.capacity() < total {
        down.buf.reserve(total - down.buf.len());
    }
    while down.buf.len() < total {
        match down.conn.read_by(std::mem::take(&mut down.buf), Wait::Until(deadline)).await {
            None => return false,
            Some((res, b)) => {
                down.buf = b;
                match res {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        }
    }
    true
}

/// Streams the endpoint's response to the client and returns the connection to the pool when
/// both sides of the exchange completed cleanly.
async fn stream_response(
    call: Call<'_>,
    down: &mut Downstream,
    r: AttemptResult<UpConn>,
    picked: &Picked,
    bufs: &mut Bufs,
    consumed: usize,
    ex: &mut Exchange,
) {
    let Call { ctx, scope, plan } = call;
    let Some(mut up) = r.conn else { return };
    if bufs.resp.is_switch() {
        // Boxed: an upgrade is rare, and its state (3 KiB) would otherwise be every request's.
        return Box::pin(tunnel(call, down, up, bufs, consumed, ex)).await;
    }
    let Bufs { wbuf, ubuf, resp, .. } = bufs;
    // An early answer leaves the client's request stream unread: close after it.
    let close = !plan.client_keep_alive || ctx.draining() || r.early;
    wbuf.clear();
    let framing = http::write_response_head(resp, ubuf, wbuf, &[(b"via", via(resp.minor))], plan.client_version, close);
    ex.status = resp.code;
    // Not after a HEAD: an endpoint that wrongly sends the body anyway, a moment later, would
    // have it read as the next client's response (a peek before reuse cannot see bytes that are
    // still on their way).
    let reusable = resp.keep_alive && resp.body != BodyFraming::CloseDelimited && !r.early && !plan.is_head;
    let mut upstream_framing = resp.body;
    ubuf.drain(..resp.head_len);
    // A small body that already arrived with the head goes out in the same write.
    if let (BodyFraming::ContentLength(n), BodyFraming::ContentLength(_)) = (upstream_framing, framing.framing)
        && ubuf.len() as u64 >= n
    {
        wbuf.extend_from_slice(&ubuf[..n as usize]);
        ubuf.drain(..n as usize);
        ex.bytes_out = n;
        upstream_framing = BodyFraming::ContentLength(0);
    }
    let (res, b) = down.conn.write_all_by(std::mem::take(wbuf), Wait::Idle(plan.write_timeout)).await;
    *wbuf = b;
    if let Err(e) = res {
        ex.keep_alive = false;
        if e.kind() == std::io::ErrorKind::TimedOut {
            ex.write_timeout = true;
            ex.abort = true;
        }
        up.abort();
        return;
    }
    let out = if framing.framing == BodyFraming::Chunked { OutFraming::Chunked } else { OutFraming::Raw };
    wbuf.clear();
    let waits = Waits { src: Wait::Idle(plan.response_idle), dst: Wait::Idle(plan.write_timeout) };
    let moved = std::cell::Cell::new(0);
    let src = Source { conn: &mut up.conn, buf: ubuf, base: 0 };
    match body::pump(src, &mut down.conn, upstream_framing, out, waits, wbuf, &moved).await {
        Ok(n) => {
            ex.bytes_out += n;
            ex.keep_alive = !framing.close;
            if reusable && ubuf.is_empty() && !ctx.draining() {
                ctx.state.borrow_mut().put_pooled(scope, picked, up, crate::io::now());
            }
        }
        Err(e) => {
            ex.bytes_out += moved.get();
            ex.keep_alive = false;
            up.abort();
            retry_loop::cut(ctx, scope, picked, e, ex);
        }
    }
}

/// An upgrade the endpoint accepted (`101`): the head goes to the client, then both
/// connections are joined byte for byte until both sides are done (or idle for the TCP idle
/// timeout). Counted when it closes; never pooled.
async fn tunnel(
    call: Call<'_>,
    down: &mut Downstream,
    up: UpConn,
    bufs: &mut Bufs,
    consumed: usize,
    ex: &mut Exchange,
) {
    let Call { scope, plan, .. } = call;
    let Bufs { wbuf, ubuf, resp, .. } = bufs;
    ex.status = 101;
    ex.keep_alive = false;
    wbuf.clear();
    let protocol = resp.header(ubuf, b"upgrade").unwrap_or(b"");
    let extra: [(&[u8], &[u8]); 3] = [(b"via", via(resp.minor)), (b"connection", b"upgrade"), (b"upgrade", protocol)];
    http::write_response_head(resp, ubuf, wbuf, &extra, plan.client_version, false);
    let (res, b) = down.conn.write_all_by(std::mem::take(wbuf), Wait::Idle(plan.write_timeout)).await;
    *wbuf = b;
    if res.is_err() {
        up.abort();
        return;
    }
    // What either side sent after its head already belongs to the new protocol.
    let upstream_read = ubuf.split_off(resp.head_len);
    let client_read = down.buf.split_off(consumed.min(down.buf.len()));
    let idle = scope.snapshot().config.proxy.tcp_idle_timeout;
    let (bytes_in, bytes_out) = crate::tunnel::pipe(down.conn.try_clone(), client_read, up, upstream_read, idle).await;
    ex.bytes_in += bytes_in;
    ex.bytes_out = bytes_out;
}
