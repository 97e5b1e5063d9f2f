//! One proxied HTTP/1.1 exchange, as one loop of attempts read top to bottom: pick an endpoint,
//! run an attempt ([`crate::attempt::run`]: one result), report it once, let the pure
//! [`weir_core::retry::next_step`] decide (respond / retry after a delay / retry fresh / fail),
//! then stream the endpoint's response or answer with weir's own error. Owns the request plan
//! (what does not change between attempts), holding a replayable body, and streaming the
//! response with its no-progress write timeout. Must not: block the worker, hold the state
//! borrow across an `.await`, or forward a byte it did not parse.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use weir_core::accesslog::{AUTHORITY_BYTES, InlineStr, METHOD_BYTES, PATH_BYTES};
use weir_core::config::ForwardedHeaders;
use weir_core::outcome::{ErrorReason, Outcome};
use weir_core::retry::{self, Attempted, RequestCtx, Step};
use weir_core::stats::RetryReason;

use crate::attempt::{self, AttemptResult, Bufs, ClientFault};
use crate::body::{self, OutFraming, PumpError, Source, Waits};
use crate::ctx::Ctx;
use crate::http::{self, BodyFraming, HeadLimits, Method, RequestHead, Version};
use crate::io::{Conn, Wait};
use crate::respond::{self, Reply};
use crate::state::{Picked, Scope, Tried};

/// `Via` values by the minor version received (`1.0 weir` … `1.9 weir`).
const VIA: [&[u8]; 10] = [
    b"1.0 weir",
    b"1.1 weir",
    b"1.2 weir",
    b"1.3 weir",
    b"1.4 weir",
    b"1.5 weir",
    b"1.6 weir",
    b"1.7 weir",
    b"1.8 weir",
    b"1.9 weir",
];

fn via(minor: u8) -> &'static [u8] {
    VIA[usize::from(minor.min(9))]
}

/// The client side of an exchange: the connection and its unconsumed bytes (`buf[..]`, head
/// first once parsed).
#[derive(Debug)]
pub(crate) struct Downstream {
    pub conn: Conn,
    pub buf: Vec<u8>,
    pub peer: SocketAddr,
}

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

/// What does not change between a request's attempts.
#[derive(Debug)]
pub(crate) struct Plan {
    pub deadline: Instant,
    pub attempt_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// Longest wait for the next byte of a response body.
    pub response_idle: Duration,
    /// Longest a write to the client may make no progress.
    pub write_timeout: Duration,
    pub response_limits: HeadLimits,
    /// The request body is held whole in the client buffer (replayable), or there is none.
    pub buffered_body: bool,
    /// Length of a held body.
    pub body_len: u64,
    pub idempotent: bool,
    pub client_version: Version,
    pub client_keep_alive: bool,
    pub is_head: bool,
    /// weir answered `Expect: 100-continue` itself: the endpoint's 100 is not relayed.
    pub swallow_100: bool,
    via: &'static [u8],
    forwarded: ForwardedHeaders,
    /// Values of the forwarding headers (X-Forwarded-For, Forwarded), when configured.
    fwd: Vec<u8>,
    fwd_split: usize,
    xfp: bool,
}

impl Plan {
    fn new(scope: &Scope, head: &mut RequestHead, src: &[u8], peer: SocketAddr, started: Instant) -> Plan {
        let cfg = scope.config();
        let proxy = &scope.snapshot().config.proxy;
        let retry = &scope.service().retry;
        let buffered_body = match head.body {
            BodyFraming::None => true,
            BodyFraming::ContentLength(n) => n <= retry.replay_buffer_bytes,
            _ => false,
        };
        let mut plan = Plan {
            deadline: started + cfg.timeouts.request,
            attempt_timeout: retry.per_attempt_timeout,
            connect_timeout: cfg.timeouts.connect,
            response_idle: cfg.timeouts.request,
            write_timeout: proxy.downstream_write_timeout,
            response_limits: HeadLimits {
                max_head_bytes: proxy.max_request_head_bytes.max(64 * 1024),
                max_headers: http::MAX_HEADERS_CAP,
                max_uri_bytes: usize::MAX,
            },
            buffered_body,
            body_len: match head.body {
                BodyFraming::ContentLength(n) if buffered_body => n,
                _ => 0,
            },
            idempotent: head.is_idempotent(),
            client_version: head.version,
            client_keep_alive: head.keep_alive,
            is_head: head.method == Method::Head,
            swallow_100: false,
            via: via(head.minor),
            forwarded: cfg.forwarded_headers,
            fwd: Vec::new(),
            fwd_split: 0,
            xfp: false,
        };
        if plan.forwarded.any() {
            plan.forwarding_values(head, src, peer);
        }
        plan
    }

    /// X-Forwarded-For and Forwarded: the client's values (every field line, in order) with the
    /// caller appended; X-Forwarded-Proto only when the request has none.
    fn forwarding_values(&mut self, head: &mut RequestHead, src: &[u8], peer: SocketAddr) {
        let ip = peer.ip().to_canonical();
        let join = |head: &RequestHead, name: &[u8], out: &mut Vec<u8>| {
            for h in head.headers.iter().filter(|h| h.forward && h.name.get(src).eq_ignore_ascii_case(name)) {
                out.extend_from_slice(h.value.get(src));
                out.extend_from_slice(b", ");
            }
        };
        if self.forwarded.x_forwarded_for {
            join(head, b"x-forwarded-for", &mut self.fwd);
            self.fwd.extend_from_slice(ip.to_string().as_bytes());
            head.remove_header(src, b"x-forwarded-for");
        }
        self.fwd_split = self.fwd.len();
        if self.forwarded.forwarded {
            join(head, b"forwarded", &mut self.fwd);
            match ip {
                std::net::IpAddr::V4(v4) => self.fwd.extend_from_slice(format!("for={v4};proto=http").as_bytes()),
                std::net::IpAddr::V6(v6) => self.fwd.extend_from_slice(format!("for=\"[{v6}]\";proto=http").as_bytes()),
            }
            head.remove_header(src, b"forwarded");
        }
        self.xfp = self.forwarded.x_forwarded_proto && head.header(src, b"x-forwarded-proto").is_none();
    }

    /// The deadline of an attempt starting at `now`.
    pub fn attempt_deadline(&self, now: Instant) -> Instant {
        self.attempt_timeout.map_or(self.deadline, |t| self.deadline.min(now + t))
    }

    /// Writes the request head for `endpoint` (and a held body) into `out`.
    pub fn write_head(&self, head: &RequestHead, src: &[u8], endpoint: SocketAddr, out: &mut Vec<u8>) {
        let host_value;
        let mut extra: [(&[u8], &[u8]); 5] = [(b"via", self.via), (b"", b""), (b"", b""), (b"", b""), (b"", b"")];
        let mut n = 1;
        if head.host.is_none() {
            host_value = endpoint.to_string();
            extra[n] = (b"host", host_value.as_bytes());
            n += 1;
        }
        if self.forwarded.x_forwarded_for {
            extra[n] = (b"x-forwarded-for", &self.fwd[..self.fwd_split]);
            n += 1;
        }
        if self.forwarded.forwarded {
            extra[n] = (b"forwarded", &self.fwd[self.fwd_split..]);
            n += 1;
        }
        if self.xfp {
            extra[n] = (b"x-forwarded-proto", b"http");
            n += 1;
        }
        http::write_request_head(head, src, out, &extra[..n]);
        if self.buffered_body && self.body_len > 0 {
            out.extend_from_slice(&src[head.head_len..head.head_len + self.body_len as usize]);
        }
    }
}

/// What every step of one exchange reads: the worker, the request's service and its plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub ctx: &'a Ctx,
    pub scope: &'a Scope,
    pub plan: &'a Plan,
}

/// How the attempt loop ended.
enum End {
    /// Stream this response to the client.
    Respond(AttemptResult, Picked),
    /// Answer with weir's own error.
    Fail(ErrorReason, Option<&'static str>),
    /// The client broke off; nothing to answer.
    Abandon,
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
        Bufs { wbuf: state.take_buf(), ubuf: state.take_buf(), resp: state.take_head() }
    };
    let mut ex = Exchange::default();
    let call = Call { ctx, scope, plan: &plan };
    match attempts(call, down, head, &mut bufs, &mut ex).await {
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

/// The attempt loop: one result per attempt, one report, one decision.
async fn attempts(
    call: Call<'_>,
    down: &mut Downstream,
    head: &RequestHead,
    bufs: &mut Bufs,
    ex: &mut Exchange,
) -> End {
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

        let r = attempt::run(call, down, head, &picked, fresh, bufs).await;
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
        let retry_after = match r.outcome {
            Outcome::Response { status: 503 | 429 } => bufs
                .resp
                .header(&bufs.ubuf, b"retry-after")
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now())),
            _ => None,
        };
        let attempted = Attempted {
            outcome: r.outcome,
            attempt,
            ctx: RequestCtx {
                idempotent: plan.idempotent,
                replayable: plan.buffered_body,
                request_bytes_written: r.written,
                reused_connection: r.reused,
                fresh_connection_retried: fresh_retried,
            },
            retry_after,
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
    r: AttemptResult,
    picked: &Picked,
    bufs: &mut Bufs,
    ex: &mut Exchange,
) {
    let Call { ctx, scope, plan } = call;
    let Some(mut up) = r.conn else { return };
    let Bufs { wbuf, ubuf, resp } = bufs;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_names_the_version_received() {
        assert_eq!(via(0), b"1.0 weir");
        assert_eq!(via(1), b"1.1 weir");
        assert_eq!(via(2), b"1.2 weir");
        assert_eq!(via(200), b"1.9 weir");
    }
}
