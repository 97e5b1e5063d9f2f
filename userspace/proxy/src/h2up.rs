//! Attempts to an HTTP/2 (or gRPC) endpoint: a stream on a pooled multiplexed connection (or
//! a new connection when every one is full), the request head, the body pumped while the
//! response is awaited, one [`AttemptResult`]. A stream the endpoint refused (`REFUSED_STREAM`,
//! or above a `GOAWAY`'s last stream) never reached its application: as safe to retry as a
//! refused connect. gRPC: a trailers-only non-OK `grpc-status` is [`Outcome::Grpc`] (the
//! policy may retry it), `grpc-timeout` is rewritten to the time an attempt has left,
//! `grpc-previous-rpc-attempts` counts earlier attempts (gRFC A6), and
//! `grpc-retry-pushback-ms` is the wait the endpoint asked for. For an HTTP/2 client the body
//! keeps streaming after the response head arrives (full duplex, as bidirectional gRPC calls
//! need): the rest of the pump travels with the response. Must not: decide retries, or write
//! to the client.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::{Either, select};
use http::HeaderValue;
use weir_core::grpc;
use weir_core::outcome::Outcome;

use crate::body::PumpError;
use crate::bridge::{ReqParts, Sink, Source};
use crate::io::Wait;
use crate::plan::{AttemptResult, Attempter, Call, ClientFault};
use crate::pool;
use crate::state::Picked;

/// The rest of a request body still being sent to the endpoint.
pub(crate) type BodyPump = Pin<Box<dyn Future<Output = Result<(), PumpError>>>>;

/// The response of an HTTP/2 attempt, and what is left of the request body (still being sent:
/// the endpoint answered before the client finished, as streaming calls do).
pub(crate) struct H2Up {
    pub head: http::response::Parts,
    pub body: h2::RecvStream,
    pub rest: Option<BodyPump>,
    /// The request stream towards the endpoint (kept so it is not reset before the response
    /// is relayed; reset with NO_ERROR afterwards if the client never finished).
    pub send: Option<h2::SendStream<Bytes>>,
    /// The stream's claim on its connection (its slot is free again when this is dropped).
    #[expect(dead_code, reason = "held only for its Drop, which frees the stream's slot")]
    pub lease: pool::Lease,
}

impl std::fmt::Debug for H2Up {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Up").field("status", &self.head.status).field("rest", &self.rest.is_some()).finish()
    }
}

/// An HTTP/2 client's request body, shared between the attempts (for replay) and the pump
/// that may outlive an attempt (full duplex).
pub(crate) struct H2Body {
    pub stream: h2::RecvStream,
    pub replay: crate::bridge::Replay,
}

/// The next chunk of the client's body (borrowing the cell only inside each poll), with flow
/// control released as it is taken.
async fn next_chunk(body: &RefCell<H2Body>, wait: Wait) -> Result<Option<Bytes>, PumpError> {
    let deadline = deadline_of(wait);
    let polled = crate::io::until(deadline, std::future::poll_fn(|cx| body.borrow_mut().stream.poll_data(cx))).await;
    match polled {
        None => Err(PumpError::SourceTimeout),
        Some(None) => Ok(None),
        Some(Some(Err(_))) => Err(PumpError::Source),
        Some(Some(Ok(data))) => {
            let _ = body.borrow_mut().stream.flow_control().release_capacity(data.len());
            Ok(Some(data))
        }
    }
}

fn deadline_of(wait: Wait) -> Instant {
    match wait {
        Wait::Until(t) => t,
        Wait::Idle(d) => crate::io::now() + d,
    }
}

/// Sends an HTTP/2 client's body to `sink`: what the replay buffer holds, then the rest as it
/// arrives (kept while it fits), then the client's trailers or the end of the body.
pub(crate) async fn send_h2_body(
    body: &RefCell<H2Body>,
    sink: &mut Sink<'_>,
    wait: Wait,
    moved: &Cell<u64>,
) -> Result<(), PumpError> {
    let held: Vec<Bytes> = body.borrow().replay.held().to_vec();
    for chunk in held {
        moved.set(moved.get() + chunk.len() as u64);
        sink.send(chunk).await?;
    }
    if !body.borrow().replay.complete {
        while let Some(chunk) = next_chunk(body, wait).await? {
            body.borrow_mut().replay.keep(&chunk);
            moved.set(moved.get() + chunk.len() as u64);
            sink.send(chunk).await?;
        }
        let trailers = std::future::poll_fn(|cx| body.borrow_mut().stream.poll_trailers(cx)).await.ok().flatten();
        let mut b = body.borrow_mut();
        b.replay.trailers = trailers;
        b.replay.complete = true;
    }
    let trailers = body.borrow().replay.trailers.clone();
    sink.finish(trailers).await
}

/// [`send_h2_body`] owning what it needs, so that it can outlive the attempt (full duplex).
async fn pump_h2_body(
    body: Rc<RefCell<H2Body>>,
    mut send: h2::SendStream<Bytes>,
    wait: Wait,
    moved: Rc<Cell<u64>>,
) -> Result<h2::SendStream<Bytes>, PumpError> {
    send_h2_body(&body, &mut Sink::H2 { stream: &mut send, wait }, wait, &moved).await?;
    Ok(send)
}

/// Where the request body comes from.
#[expect(clippy::large_enum_variant, reason = "one per attempt, on its stack: boxing would allocate per request")]
pub(crate) enum ReqBody<'a> {
    /// No body.
    Empty,
    /// An HTTP/1.1 client's body (held whole when replayable, else streamed from the
    /// connection, framed as `left`).
    H1 { src: Source<'a>, replay: crate::bridge::Replay },
    /// An HTTP/2 client's body.
    H2(Rc<RefCell<H2Body>>),
}

/// A request attempted over HTTP/2.
pub(crate) struct ToH2<'a> {
    pub req: &'a ReqParts,
    pub body: ReqBody<'a>,
    /// gRPC semantics.
    pub grpc: bool,
    /// The deadline the client gave (`grpc-timeout`), if any.
    pub client_deadline: Option<Instant>,
    attempts: u32,
    /// The last response's retry wait (Retry-After, grpc-retry-pushback-ms).
    pushback: Option<Duration>,
}

impl<'a> ToH2<'a> {
    pub(crate) fn new(req: &'a ReqParts, body: ReqBody<'a>, grpc: bool, client_deadline: Option<Instant>) -> ToH2<'a> {
        ToH2 { req, body, grpc, client_deadline, attempts: 0, pushback: None }
    }

    fn request(&self, picked: &Picked, deadline: Instant) -> Option<http::Request<()>> {
        let mut req = self.req.to_h2(picked.addr)?;
        let h = req.headers_mut();
        if self.grpc {
            let left = deadline.saturating_duration_since(crate::io::now());
            let mut buf = [0u8; 10];
            let n = grpc::format_timeout(left, &mut buf);
            if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
                h.insert("grpc-timeout", v);
            }
            if self.attempts > 1 {
                h.insert("grpc-previous-rpc-attempts", HeaderValue::from(self.attempts - 1));
            }
        }
        Some(req)
    }

    /// Whether the client's body has been read to its end.
    pub(crate) fn body_complete(&self) -> bool {
        match &self.body {
            ReqBody::Empty => true,
            ReqBody::H1 { replay, .. } => replay.complete,
            ReqBody::H2(b) => b.borrow().replay.complete,
        }
    }

    fn body_empty(&self) -> bool {
        match &self.body {
            ReqBody::Empty => true,
            ReqBody::H1 { replay, .. } => replay.complete && replay.held_bytes() == 0,
            ReqBody::H2(b) => {
                let b = b.borrow();
                b.replay.complete && b.replay.held_bytes() == 0 && b.replay.trailers.is_none()
            }
        }
    }
}

/// What an error from the HTTP/2 client says about the attempt.
fn h2_outcome(e: &h2::Error) -> Outcome {
    if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Outcome::ResetBeforeWrite
    } else if e.is_io() || e.is_reset() {
        // The connection broke, or the endpoint reset the stream: the request may have
        // reached its application.
        Outcome::ResetAfterWrite
    } else {
        Outcome::ProtocolError
    }
}

impl Attempter for ToH2<'_> {
    type Up = H2Up;

    async fn run(&mut self, call: Call<'_>, picked: &Picked, fresh: bool) -> AttemptResult<H2Up> {
        let Call { ctx, scope, plan } = call;
        self.attempts += 1;
        self.pushback = None;
        let mut deadline = plan.attempt_deadline(crate::io::now());
        if let Some(d) = self.client_deadline {
            deadline = deadline.min(d);
        }
        // A stream on a pooled connection, or a new connection.
        let pooled = if fresh { None } else { ctx.state.borrow_mut().take_h2(scope, picked, crate::io::now()) };
        let reused = pooled.is_some();
        let sender = match pooled {
            Some(s) => Some(s),
            None => {
                let timeout = plan.connect_timeout.min(deadline.saturating_duration_since(crate::io::now()));
                let (opts, gauge) = (ctx.connect_options(scope.config()), ctx.state.borrow_mut().gauge(scope));
                match pool::connect_h2(picked.addr, &opts, timeout, &gauge).await {
                    Ok(c) => ctx.state.borrow_mut().put_h2(scope, picked, c, crate::io::now()),
                    Err(o) => return AttemptResult::failed(o, false, false),
                }
            }
        };
        let Some(lease) = sender else { return AttemptResult::failed(Outcome::LocalError, false, false) };
        let Some(req) = self.request(picked, deadline) else {
            return AttemptResult::failed(Outcome::LocalError, reused, false);
        };
        let end = self.body_empty();
        let t_sent = crate::io::now();
        let mut sender = lease.send.clone();
        let ready = crate::io::until(deadline, std::future::poll_fn(|cx| sender.poll_ready(cx))).await;
        match ready {
            None => return AttemptResult::failed(Outcome::Timeout, reused, false),
            Some(Err(e)) => return AttemptResult::failed(h2_outcome(&e), reused, false),
            Some(Ok(())) => {}
        }
        let (resp, send) = match sender.send_request(req, end) {
            Ok(pair) => pair,
            Err(e) => return AttemptResult::failed(h2_outcome(&e), reused, false),
        };
        let moved = Rc::new(Cell::new(0));
        let wait = Wait::Until(deadline);
        let resp = crate::io::until(deadline, resp);
        let mut r = AttemptResult::failed(Outcome::ResetAfterWrite, reused, true);
        let (head, rest, send) = match &mut self.body {
            _ if end => (resp.await, None, Some(send)),
            ReqBody::Empty => (resp.await, None, Some(send)),
            ReqBody::H2(body) => {
                let mut pump = Box::pin(pump_h2_body(body.clone(), send, wait, moved.clone()));
                match select(pump.as_mut(), std::pin::pin!(resp)).await {
                    Either::Left((Ok(send), resp)) => (resp.await, None, Some(send)),
                    Either::Left((Err(e), resp)) => match e {
                        PumpError::Source | PumpError::SourceTimeout => {
                            r.client = ClientFault::Gone;
                            r.outcome = Outcome::LocalError;
                            return r;
                        }
                        // The endpoint stopped taking the body: it may have answered.
                        _ => (resp.await, None, None),
                    },
                    // Full duplex: the rest of the body goes on while the response streams.
                    Either::Right((head, _)) => {
                        let rest: BodyPump = Box::pin(async move { pump.await.map(drop) });
                        (head, Some(rest), None)
                    }
                }
            }
            ReqBody::H1 { src, replay } => {
                let mut send = send;
                let sent = {
                    let mut sink = Sink::H2 { stream: &mut send, wait };
                    let pump = std::pin::pin!(replay.send(src, &mut sink, &moved));
                    match select(pump, std::pin::pin!(resp)).await {
                        Either::Left((Ok(_), resp)) => Ok(resp.await),
                        Either::Left((Err(e @ (PumpError::Source | PumpError::SourceTimeout)), _)) => Err(e),
                        Either::Left((Err(_), resp)) => Ok(resp.await),
                        // The endpoint answered before the body was sent: stop sending it.
                        Either::Right((head, _)) => {
                            r.early = true;
                            Ok(head)
                        }
                    }
                };
                match sent {
                    Ok(head) => (head, None, Some(send)),
                    Err(_) => {
                        r.client = ClientFault::Gone;
                        r.outcome = Outcome::LocalError;
                        return r;
                    }
                }
            }
        };
        r.body_bytes = moved.get();
        match head {
            None => r.outcome = Outcome::Timeout,
            Some(Err(e)) => {
                r.outcome = h2_outcome(&e);
                r.written = r.outcome != Outcome::ResetBeforeWrite;
            }
            Some(Ok(resp)) => {
                let (head, body) = resp.into_parts();
                r.outcome = Outcome::Response { status: head.status.as_u16() };
                if self.grpc
                    && body.is_end_stream()
                    && let Some(code) = head.headers.get("grpc-status").and_then(|v| grpc::parse_status(v.as_bytes()))
                    && code != grpc::OK
                {
                    r.outcome = Outcome::Grpc { code };
                    self.pushback = head.headers.get("grpc-retry-pushback-ms").map(|v| {
                        std::str::from_utf8(v.as_bytes())
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .map_or(Duration::MAX, Duration::from_millis)
                    });
                }
                if matches!(r.outcome, Outcome::Response { status: 503 | 429 }) {
                    self.pushback = head
                        .headers
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| weir_core::retry::parse_retry_after(v.as_bytes(), SystemTime::now()));
                }
                r.latency = Some(crate::io::now().saturating_duration_since(t_sent));
                r.conn = Some(H2Up { head, body, rest, send, lease });
            }
        }
        r
    }

    fn retry_after(&self, _r: &AttemptResult<H2Up>) -> Option<Duration> {
        self.pushback
    }

    fn replayable(&self) -> bool {
        match &self.body {
            ReqBody::Empty => true,
            ReqBody::H1 { replay, .. } => replay.replayable(),
            ReqBody::H2(b) => b.borrow().replay.replayable(),
        }
    }
}
