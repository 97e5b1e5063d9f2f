//! One attempt of an HTTP/1.1 request against one endpoint, read top to bottom: a pooled
//! connection (checked before reuse) or a new one; the re-serialised head, and a held body, in
//! one write; a streamed body pumped while the response is read at the same time, so that an
//! early answer (413, 401…) or the endpoint's own `100 Continue` is relayed; interim 1xx heads
//! relayed to HTTP/1.1 clients; the final response head. Every wait is bounded by the attempt
//! deadline. The result is one [`AttemptResult`]. Must not: decide retries, report to the
//! balancer, or write anything to the client but interim heads.

use std::cell::{Cell, RefCell};
use std::pin::pin;
use std::rc::Rc;
use std::time::Instant;

use futures_util::future::{Either, select};
use weir_core::outcome::Outcome;

use crate::body::{self, OutFraming, PumpError, Source, Waits};
use crate::bridge::{ReqParts, Sink};
use crate::ctx::Ctx;
use crate::h2up::{H2Body, send_h2_body};
use crate::http::{self, BodyFraming, RequestHead, ResponseHead, Status, Version};
use crate::io::{Conn, Wait};
use crate::plan::{AttemptResult, Attempter, Call, ClientFault, Downstream, Plan};
use crate::pool::{self, UpConn};
use crate::state::{Picked, Scope};

/// The buffers of an exchange, reused across its attempts (and taken from the worker's pool).
#[derive(Debug)]
pub(crate) struct Bufs {
    /// Outgoing request head (and held body); the response head on its way to the client.
    pub wbuf: Vec<u8>,
    /// Upstream read buffer: the response head, then the start of its body.
    pub ubuf: Vec<u8>,
    /// The parsed response head (spans into `ubuf`).
    pub resp: ResponseHead,
    /// The request is held whole (replayable).
    pub replayable: bool,
}

/// How much of the request body went to the endpoint.
#[derive(Debug, Clone, Copy)]
enum BodySent {
    /// All of it (held bodies are sent with the head).
    Whole(u64),
    /// The pump failed on this side after moving this many bytes.
    Failed(u64, PumpError),
    /// The response came first; this many bytes had been moved.
    Unfinished(u64),
}

/// Runs one attempt against `picked`. `fresh_only`: do not use a pooled connection (the
/// keep-alive race retry).
pub(crate) async fn run(
    call: Call<'_>,
    down: &mut Downstream,
    head: &RequestHead,
    picked: &Picked,
    fresh_only: bool,
    bufs: &mut Bufs,
) -> AttemptResult<UpConn> {
    let Call { ctx, scope, plan } = call;
    let deadline = plan.attempt_deadline(crate::io::now());
    let (mut up, reused) = match connection(ctx, scope, plan, picked, fresh_only, deadline).await {
        Ok(c) => c,
        Err(outcome) => return AttemptResult::failed(outcome, false, false),
    };
    let sent_before = up.conn.sent();

    // The head (and a held body) in one write.
    bufs.wbuf.clear();
    plan.write_head(head, &down.buf, picked.addr, &scope.route().edits.set, &mut bufs.wbuf);
    let t_sent = crate::io::now();
    let (res, b) = up.conn.write_all_by(std::mem::take(&mut bufs.wbuf), Wait::Until(deadline)).await;
    bufs.wbuf = b;
    bufs.wbuf.clear();
    if let Err(e) = res {
        let outcome = match e.kind() {
            std::io::ErrorKind::TimedOut => Outcome::Timeout,
            // A write refused outright on a reused connection: it was closed while idle.
            _ if reused => Outcome::ResetBeforeWrite,
            _ => Outcome::ResetAfterWrite,
        };
        up.abort();
        return AttemptResult::failed(outcome, reused, outcome != Outcome::ResetBeforeWrite);
    }

    bufs.ubuf.clear();
    let (read, sent) = if plan.buffered_body {
        let read = read_head(&mut up.conn, bufs, plan, deadline, Some(&mut down.conn)).await;
        (read, BodySent::Whole(plan.body_len))
    } else {
        // Boxed: a streamed body pumped while the head is read is 2.6 KiB of state that a
        // request with a held body (most) would otherwise carry and move.
        Box::pin(send_body_and_read_head(&mut up, down, head, plan, deadline, bufs)).await
    };
    let mut r = classify(read, sent, reused);
    if matches!(r.outcome, Outcome::Response { .. }) {
        r.latency = Some(crate::io::now().saturating_duration_since(t_sent));
        r.conn = Some(up);
        return r;
    }
    if r.outcome == Outcome::ResetAfterWrite
        && reused
        && bufs.ubuf.is_empty()
        && (plan.buffered_body || r.body_bytes == 0)
    {
        // A reused connection closed with nothing read: the endpoint most likely closed it as
        // idle just as weir wrote. If its kernel acknowledged none of this request, its
        // application never read it: as safe to resend as a refused connect, whatever the
        // method. An idempotent request with a held body is safe to resend either way.
        let held = plan.idempotent && plan.buffered_body;
        if held || up.conn.unacked_since(sent_before) {
            r.outcome = Outcome::ResetBeforeWrite;
            r.written = false;
        }
    }
    // Abandoned mid-request: reset, so that bytes stuck in the send queue do not hold it open.
    up.abort();
    r
}

/// A pooled connection to `picked` or a new one, within the connect timeout.
async fn connection(
    ctx: &Ctx,
    scope: &Scope,
    plan: &Plan,
    picked: &Picked,
    fresh_only: bool,
    deadline: Instant,
) -> Result<(UpConn, bool), Outcome> {
    if !fresh_only {
        let pooled = ctx.state.borrow_mut().take_pooled(scope, picked, crate::io::now());
        if let Some(c) = pooled {
            return Ok((c, true));
        }
    }
    let timeout = plan.connect_timeout.min(deadline.saturating_duration_since(crate::io::now()));
    let (opts, gauge) = (ctx.connect_options(scope.config()), ctx.state.borrow_mut().gauge(scope));
    // Boxed: a new connection is the rare case (endpoints' connections are pooled), and its
    // state (1 KiB) would otherwise be part of every attempt's, which is moved twice per request.
    Ok((Box::pin(pool::connect(picked.addr, &opts, timeout, &gauge)).await?, false))
}

/// How reading a response head ended.
#[derive(Debug, Clone, Copy)]
enum HeadRead {
    /// A final head is in `resp`, its bytes at the start of `ubuf`.
    Final {
        /// Its status.
        code: u16,
        /// The endpoint keeps the connection open after it.
        keep_alive: bool,
    },
    Failed(Outcome),
}

/// One outcome from how the head read and the body send ended.
fn classify(read: HeadRead, sent: BodySent, reused: bool) -> AttemptResult<UpConn> {
    let mut r = AttemptResult::failed(Outcome::ResetAfterWrite, reused, true);
    match (read, sent) {
        (_, BodySent::Failed(n, PumpError::Source | PumpError::SourceTimeout)) => {
            r.outcome = Outcome::LocalError;
            r.body_bytes = n;
            r.client = ClientFault::Gone;
        }
        (_, BodySent::Failed(n, PumpError::Framing)) => {
            r.outcome = Outcome::LocalError;
            r.body_bytes = n;
            r.client = ClientFault::Malformed;
        }
        (_, BodySent::Failed(n, PumpError::DestinationTimeout)) => {
            r.outcome = Outcome::Timeout;
            r.body_bytes = n;
        }
        (HeadRead::Final { code, .. }, BodySent::Whole(n)) => {
            r.outcome = Outcome::Response { status: code };
            r.body_bytes = n;
        }
        (HeadRead::Final { code, .. }, BodySent::Unfinished(n) | BodySent::Failed(n, PumpError::Destination)) => {
            r.outcome = Outcome::Response { status: code };
            r.body_bytes = n;
            r.early = true;
        }
        (HeadRead::Failed(o), BodySent::Whole(n) | BodySent::Unfinished(n) | BodySent::Failed(n, _)) => {
            r.outcome = o;
            r.body_bytes = n;
        }
    }
    r
}

/// Pumps a streamed request body while reading the response, so that a response that comes
/// first (early, or `100 Continue`) is seen at once.
async fn send_body_and_read_head(
    up: &mut UpConn,
    down: &mut Downstream,
    head: &RequestHead,
    plan: &Plan,
    deadline: Instant,
    bufs: &mut Bufs,
) -> (HeadRead, BodySent) {
    let moved = Cell::new(0);
    let mut up_reader = up.conn.try_clone();
    let mut client_writer = down.conn.try_clone();
    let out = if head.body == BodyFraming::Chunked { OutFraming::Chunked } else { OutFraming::Raw };
    let waits = Waits { src: Wait::Until(deadline), dst: Wait::Until(deadline) };
    let Bufs { wbuf, ubuf, resp, .. } = bufs;
    let (read, sent) = {
        let src = Source { conn: &mut down.conn, buf: &mut down.buf, base: head.head_len };
        let mut pump = pin!(body::pump(src, &mut up.conn, head.body, out, waits, wbuf, &moved));
        let read = pin!(read_head_parts(&mut up_reader, ubuf, resp, plan, deadline, Some(&mut client_writer)));
        match select(pump.as_mut(), read).await {
            Either::Left((Ok(n), read)) => (read.await, BodySent::Whole(n)),
            // The endpoint stopped taking the body: it may have answered first.
            Either::Left((Err(PumpError::Destination), read)) => {
                (read.await, BodySent::Failed(moved.get(), PumpError::Destination))
            }
            Either::Left((Err(e), _)) => (HeadRead::Failed(Outcome::LocalError), BodySent::Failed(moved.get(), e)),
            Either::Right((read, pump)) => match read {
                // A final answer that does not refuse the body (below 400, connection kept):
                // the endpoint still reads it, so it is sent in full first.
                HeadRead::Final { code, keep_alive: true } if code < 400 => match pump.await {
                    Ok(n) => (read, BodySent::Whole(n)),
                    Err(e) => (read, BodySent::Failed(moved.get(), e)),
                },
                _ => (read, BodySent::Unfinished(moved.get())),
            },
        }
    };
    // A cancelled client read may have taken the buffer with it; then nothing of this request
    // may be sent again (callers see bytes as moved).
    let intact = down.buf.len() >= head.head_len;
    let fix = |n: u64| if intact { n } else { n.max(1) };
    let sent = match sent {
        BodySent::Whole(n) => BodySent::Whole(n),
        BodySent::Failed(n, e) => BodySent::Failed(fix(n), e),
        BodySent::Unfinished(n) => BodySent::Unfinished(fix(n)),
    };
    (read, sent)
}

/// Reads the final response head into `bufs`, relaying interim 1xx heads to an HTTP/1.1
/// client (a `100 Continue` is swallowed when weir already sent its own).
async fn read_head(
    up: &mut Conn,
    bufs: &mut Bufs,
    plan: &Plan,
    deadline: Instant,
    client: Option<&mut Conn>,
) -> HeadRead {
    read_head_parts(up, &mut bufs.ubuf, &mut bufs.resp, plan, deadline, client).await
}

async fn read_head_parts(
    up: &mut Conn,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    plan: &Plan,
    deadline: Instant,
    client: Option<&mut Conn>,
) -> HeadRead {
    let mut client = client;
    loop {
        if !ubuf.is_empty() {
            match http::parse_response(ubuf, &plan.response_limits, plan.is_head, resp) {
                Ok(Status::Complete(n)) if resp.is_interim() => {
                    // Interim heads go to an HTTP/1.1 client (never to an HTTP/2 one: `None`).
                    if let Some(client) = client.as_deref_mut()
                        && plan.client_version == Version::Http11
                        && !(resp.code == 100 && plan.swallow_100)
                    {
                        let mut out = Vec::with_capacity(64 + n);
                        http::write_response_head(resp, ubuf, &mut out, &[], plan.client_version, false);
                        let _ = client.write_all_by(out, Wait::Idle(plan.write_timeout)).await;
                    }
                    ubuf.drain(..n);
                    continue;
                }
                // A switch nobody asked for would hand the client a stream it cannot read.
                Ok(Status::Complete(_)) if resp.is_switch() && plan.upgrade.is_none() => {
                    return HeadRead::Failed(Outcome::ProtocolError);
                }
                Ok(Status::Complete(_)) => return HeadRead::Final { code: resp.code, keep_alive: resp.keep_alive },
                Ok(Status::Partial) => {}
                Err(_) => return HeadRead::Failed(Outcome::ProtocolError),
            }
        }
        if ubuf.capacity() - ubuf.len() < 1024 {
            ubuf.reserve(body::STREAM_READ_BYTES);
        }
        match up.read_by(std::mem::take(ubuf), Wait::Until(deadline)).await {
            None => return HeadRead::Failed(Outcome::Timeout),
            Some((res, b)) => {
                *ubuf = b;
                match res {
                    Ok(0) | Err(_) => return HeadRead::Failed(Outcome::ResetAfterWrite),
                    Ok(_) => {}
                }
            }
        }
    }
}

/// An HTTP/2 client's request attempted over HTTP/1.1: the head written from its parts, a held
/// body sent with it, a streamed one pumped (chunked) while the response head is read.
pub(crate) struct ToH1<'a> {
    pub req: &'a ReqParts,
    pub body: Option<Rc<RefCell<H2Body>>>,
    pub bufs: &'a mut Bufs,
}

impl Attempter for ToH1<'_> {
    type Up = UpConn;

    async fn run(&mut self, call: Call<'_>, picked: &Picked, fresh: bool) -> AttemptResult<UpConn> {
        let Call { ctx, scope, plan } = call;
        let deadline = plan.attempt_deadline(crate::io::now());
        let (mut up, reused) = match connection(ctx, scope, plan, picked, fresh, deadline).await {
            Ok(c) => c,
            Err(outcome) => return AttemptResult::failed(outcome, false, false),
        };
        let sent_before = up.conn.sent();
        let (framing, held) = match &self.body {
            None => (BodyFraming::None, true),
            Some(b) => {
                let b = b.borrow();
                if b.replay.complete && b.replay.trailers.is_none() {
                    (BodyFraming::ContentLength(b.replay.held_bytes()), true)
                } else {
                    (BodyFraming::Chunked, false)
                }
            }
        };
        let bufs = &mut *self.bufs;
        bufs.wbuf.clear();
        self.req.write_h1(picked.addr, framing, &mut bufs.wbuf);
        if let (true, Some(b)) = (held, &self.body) {
            for chunk in b.borrow().replay.held() {
                bufs.wbuf.extend_from_slice(chunk);
            }
        }
        let t_sent = crate::io::now();
        let (res, b) = up.conn.write_all_by(std::mem::take(&mut bufs.wbuf), Wait::Until(deadline)).await;
        bufs.wbuf = b;
        bufs.wbuf.clear();
        if let Err(e) = res {
            let outcome = match e.kind() {
                std::io::ErrorKind::TimedOut => Outcome::Timeout,
                _ if reused => Outcome::ResetBeforeWrite,
                _ => Outcome::ResetAfterWrite,
            };
            up.abort();
            return AttemptResult::failed(outcome, reused, outcome != Outcome::ResetBeforeWrite);
        }
        bufs.ubuf.clear();
        let (read, sent) = match (&self.body, held) {
            (Some(body), false) => {
                let moved = Cell::new(0);
                let mut up_reader = up.conn.try_clone();
                let Bufs { wbuf, ubuf, resp, .. } = bufs;
                let wait = Wait::Until(deadline);
                let mut sink = Sink::H1 { conn: &mut up.conn, out: OutFraming::Chunked, wait, scratch: wbuf };
                let pump = pin!(send_h2_body(body, &mut sink, wait, &moved));
                let read = pin!(read_head_parts(&mut up_reader, ubuf, resp, plan, deadline, None));
                match select(pump, read).await {
                    Either::Left((Ok(()), read)) => (read.await, BodySent::Whole(moved.get())),
                    Either::Left((Err(PumpError::Destination), read)) => {
                        (read.await, BodySent::Failed(moved.get(), PumpError::Destination))
                    }
                    Either::Left((Err(e), _)) => {
                        (HeadRead::Failed(Outcome::LocalError), BodySent::Failed(moved.get(), e))
                    }
                    Either::Right((read, _)) => (read, BodySent::Unfinished(moved.get())),
                }
            }
            _ => {
                let read = read_head(&mut up.conn, bufs, plan, deadline, None).await;
                let n = self.body.as_ref().map_or(0, |b| b.borrow().replay.held_bytes());
                (read, BodySent::Whole(n))
            }
        };
        let mut r = classify(read, sent, reused);
        if matches!(r.outcome, Outcome::Response { .. }) {
            r.latency = Some(crate::io::now().saturating_duration_since(t_sent));
            r.conn = Some(up);
            return r;
        }
        let untouched = held || r.body_bytes == 0;
        if r.outcome == Outcome::ResetAfterWrite && reused && bufs.ubuf.is_empty() && untouched {
            let safe = (plan.idempotent && held) || up.conn.unacked_since(sent_before);
            if safe {
                r.outcome = Outcome::ResetBeforeWrite;
                r.written = false;
            }
        }
        up.abort();
        r
    }

    fn retry_after(&self, r: &AttemptResult<UpConn>) -> Option<std::time::Duration> {
        match r.outcome {
            Outcome::Response { status: 503 | 429 } => self
                .bufs
                .resp
                .header(&self.bufs.ubuf, b"retry-after")
                .and_then(|v| weir_core::retry::parse_retry_after(v, std::time::SystemTime::now())),
            _ => None,
        }
    }

    fn replayable(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.borrow().replay.replayable())
    }
}
