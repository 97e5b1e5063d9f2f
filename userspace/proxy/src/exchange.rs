//! One proxied HTTP/1.1 exchange, as one loop of attempts read top to bottom: pick an endpoint,
//! run an attempt ([`crate::attempt::run`]: one result), report it once, let the pure
//! [`weir_core::retry::next_step`] decide (respond / retry after a delay / retry fresh / fail),
//! then stream the endpoint's response or answer with weir's own error. Owns the request plan
//! (what does not change between attempts), holding a replayable body, and streaming the
//! response with its no-progress write timeout. Must not: block the worker, hold the state
//! borrow across an `.await`, or forward a byte it did not parse.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use weir_core::accesslog::{AUTHORITY_BYTES, InlineStr, METHOD_BYTES, PATH_BYTES};
use weir_core::outcome::{ErrorReason, Outcome};
use weir_core::retry::{self, Attempted, RequestCtx, Step};
use weir_core::stats::RetryReason;

use crate::attempt::{self, Bufs};
use crate::body::{self, OutFraming, PumpError, Source, Waits};
use crate::ctx::Ctx;
use crate::http::{self, BodyFraming, Method, RequestHead};
use crate::io::Wait;
use crate::plan::{AttemptResult, Call, ClientFault, Downstream, Plan, via};
use crate::pool::UpConn;
use crate::respond::{self, Reply};
use crate::state::{Picked, Scope, Tried};

/// What the access log needs of a request, copied out of the head (bounded, no heap).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestInfo {
    pub method: InlineStr<METHOD_BYTES>,
    pub authority: InlineStr<AUTHORITY_BYTES>,
    pub path: InlineStr<PATH_BYTES>,
    pub is_head: bool,
}

impl RequestInfo {
    pub fn from_head(head: &RequestHead, src: &[u8]) -> RequestInfo {
        RequestInfo {
            method: InlineStr::new(head.method_span.get(src)),
            authority: InlineStr::new(head.host.map_or(&b""[..], |h| h.get(src))),
            path: InlineStr::new(head.target.get(src)),
            is_head: head.method == Method::Head,
        }
    }
}

/// How an exchange ended, for the connection loop, stats and the access log.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Exchange {
    /// Status sent to the client (0 = none: the connection was cut).
    pub status: u16,
    pub error: Option<ErrorReason>,
    pub endpoint: Option<SocketAddr>,
    /// The downstream connection may carry another request.
    pub keep_alive: bool,
    /// Close the downstream connection with a reset (a cut response must not look whole).
    pub abort: bool,
    /// A write to the client made no progress for the write timeout.
    pub write_timeout: bool,
    pub attempts: u8,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_us: u64,
    pub panic: bool,
}

/// How the attempt loop ended.
pub(crate) enum End<U> {
    /// Stream this response to the client.
    Respond(AttemptResult<U>, Picked),
    /// Answer with weir's own error.
    Fail(ErrorReason, Option<&'static str>),
    /// The client broke off; nothing to answer.
    Abandon,
}

/// The codec-specific side of a request's attempts: how one attempt is made, and what its
/// response says about waiting before a retry. The loop ([`attempts`]) does not care which
/// codec carried the request or speaks to the endpoint.
pub(crate) trait Attempter {
    /// What a response-bearing attempt holds (a connection, an HTTP/2 stream).
    type Up;

    /// Runs one attempt against `picked` (`fresh`: not on a pooled connection).
    fn run(&mut self, call: Call<'_>, picked: &Picked, fresh: bool) -> impl Future<Output = AttemptResult<Self::Up>>;

    /// The wait the endpoint asked for before a retry (`Retry-After` on a 503 or 429, gRPC's
    /// pushback); `Duration::MAX` when it asked not to be retried.
    fn retry_after(&self, r: &AttemptResult<Self::Up>) -> Option<Duration>;

    /// Whether the request can still be sent again whole.
    fn replayable(&self) -> bool;
}

/// The attempt loop: one result per attempt, one report, one decision.
pub(crate) async fn attempts<A: Attempter>(call: Call<'_>, a: &mut A, ex: &mut Exchange) -> End<A::Up> {
    let Call { ctx, scope, plan } = call;
    let mut tried = Tried::default();
    let mut attempt: u32 = 0;
    let mut fresh = false;
    let mut fresh_retried = false;
    let mut last: Option<Outcome> = None;
    loop {
        let now = Instant::now();
        if now >= plan.deadline {
            return End::Fail(last.map_or(ErrorReason::Timeout, |o| ErrorReason::for_failed_request(Some(&o))), None);
        }
        let picked = {
            let mut state = ctx.state.borrow_mut();
            match (fresh, ex.endpoint) {
                (true, Some(addr)) => state.repick(scope, addr),
                _ => state.pick(scope, &tried, now, ctx.now_ms()),
            }
        };
        let Some(picked) = picked else {
            return End::Fail(ErrorReason::for_failed_request(last.as_ref()), None);
        };
        if !fresh {
            attempt += 1;
        }
        ex.attempts = ex.attempts.saturating_add(1);
        ex.endpoint = Some(picked.addr);
        ex.panic |= picked.panic;

        let r = a.run(call, &picked, fresh).await;
        ctx.state.borrow_mut().report(scope, &picked, &r.outcome, r.latency, Instant::now(), ctx.now_ms());
        ex.bytes_in = r.body_bytes;
        ex.upstream_us = r.latency.map_or(0, |l| l.as_micros() as u64);
        last = Some(r.outcome);
        match r.client {
            ClientFault::None => {}
            ClientFault::Gone => return End::Abandon,
            ClientFault::Malformed => {
                return End::Fail(ErrorReason::BadRequest, Some("malformed chunked request body"));
            }
        }
        if r.early {
            return End::Respond(r, picked);
        }
        let attempted = Attempted {
            outcome: r.outcome,
            attempt,
            ctx: RequestCtx {
                idempotent: plan.idempotent,
                replayable: a.replayable(),
                request_bytes_written: r.written,
                reused_connection: r.reused,
                fresh_connection_retried: fresh_retried,
            },
            retry_after: a.retry_after(&r),
        };
        let now = Instant::now();
        let next =
            ctx.state.borrow_mut().next_step(scope, &attempted, plan.deadline.saturating_duration_since(now), now);
        fresh = false;
        match next.step {
            Step::Respond => return End::Respond(r, picked),
            Step::Fail(reason) => return End::Fail(reason, None),
            Step::RetryFresh => {
                count_retry(ctx, scope, RetryReason::KeepaliveRace);
                fresh = true;
                fresh_retried = true;
            }
            Step::Retry { delay, reason } => {
                count_retry(ctx, scope, reason);
                tried.add(picked.addr);
                drop(r); // a discarded response goes with its connection
                if !delay.is_zero() {
                    crate::io::sleep(delay).await;
                }
            }
        }
    }
}

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

/// Proxies one request whose head is parsed in `down.buf[..head.head_len]`.
pub(crate) async fn exchange(
    ctx: &Ctx,
    down: &mut Downstream,
    head: &mut RequestHead,
    scope: &Scope,
    started: Instant,
) -> Exchange {
    let mut plan = Plan::new(scope, head, &down.buf, down.peer, started);
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
    let mut bufs = {
        let mut state = ctx.state.borrow_mut();
        state.record_request(scope, Instant::now());
        Bufs { wbuf: state.take_buf(), ubuf: state.take_buf(), resp: state.take_head(), replayable: plan.buffered_body }
    };
    let mut ex = Exchange::default();
    let call = Call { ctx, scope, plan: &plan };
    let end = attempts(call, &mut H1 { down, head, bufs: &mut bufs }, &mut ex).await;
    match end {
        End::Respond(r, picked) => stream_response(call, down, r, &picked, &mut bufs, &mut ex).await,
        End::Fail(reason, detail) => {
            // After a streamed body the request's framing is unknown: close.
            let close = !plan.client_keep_alive || !plan.buffered_body;
            let reply = Reply { reason, detail, close, head_request: plan.is_head };
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
    // The request (and a held body) is consumed; a streamed body was consumed by the pump.
    let consumed = if plan.buffered_body { head_len + plan.body_len as usize } else { head_len };
    down.buf.drain(..consumed.min(down.buf.len()));
    ex
}

fn count_retry(ctx: &Ctx, scope: &Scope, reason: RetryReason) {
    if let Some(s) = ctx.state.borrow_mut().stats(scope) {
        s.retry(reason);
    }
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
    ex: &mut Exchange,
) {
    let Call { ctx, scope, plan } = call;
    let Some(mut up) = r.conn else { return };
    let Bufs { wbuf, ubuf, resp, .. } = bufs;
    // An early answer leaves the client's request stream unread: close after it.
    let close = !plan.client_keep_alive || ctx.draining() || r.early;
    wbuf.clear();
    let framing = http::write_response_head(resp, ubuf, wbuf, &[(b"via", via(resp.minor))], plan.client_version, close);
    ex.status = resp.code;
    let reusable = resp.keep_alive && resp.body != BodyFraming::CloseDelimited && !r.early;
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
                ctx.state.borrow_mut().put_pooled(scope, picked, up, Instant::now());
            }
        }
        Err(e) => {
            ex.bytes_out += moved.get();
            ex.keep_alive = false;
            up.abort();
            cut(ctx, scope, picked, e, ex);
        }
    }
}

/// A response broken off after its head: an endpoint failure the client must see as a cut
/// (its connection is reset, never closed cleanly), or a client that stopped reading.
fn cut(ctx: &Ctx, scope: &Scope, picked: &Picked, e: PumpError, ex: &mut Exchange) {
    match e {
        PumpError::Destination => {}
        PumpError::DestinationTimeout => {
            ex.write_timeout = true;
            ex.abort = true;
        }
        PumpError::Source | PumpError::SourceTimeout | PumpError::Framing => {
            ex.abort = true;
            ex.error = Some(match e {
                PumpError::SourceTimeout => ErrorReason::Timeout,
                PumpError::Framing => ErrorReason::UpstreamProtocolError,
                _ => ErrorReason::UpstreamReset,
            });
            let outcome = Outcome::ResetAfterResponseStarted;
            ctx.state.borrow_mut().report_health(scope, picked, &outcome, ctx.now_ms());
        }
    }
}
