//! HTTP/2 clients (h2c with prior knowledge, on the proxy listener and steered connections):
//! the connection (its limits are weir's defences: concurrent streams, header list size,
//! reset and error-reset budgets against rapid-reset and CONTINUATION floods; a client that
//! breaks them loses its connection, not the worker's other clients), and each stream as one
//! request with the same routing, balancing, retries, ejection, RED and access-log record as
//! HTTP/1.1: attempted over HTTP/2 or HTTP/1.1 as the service says, its response relayed (with
//! trailers), or weir's own answer (gRPC calls get a trailers-only `grpc-status`). Must not:
//! block the connection on one stream (streams run side by side), or hold the state borrow
//! across an `.await`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use futures_util::stream::FuturesUnordered;
use weir_core::config::Protocol;
use weir_core::grpc;
use weir_core::outcome::ErrorReason;

use crate::attempt::{Bufs, ToH1};
use crate::body::PumpError;
use crate::bridge::{self, H1Left, Replay, ReqParts, Sink, Source};
use crate::ctx::{ConnRoute, Ctx};
use crate::h2guard::{self, Guarded, Verdict};
use crate::h2up::{H2Body, H2Up, ReqBody, ToH2};
use crate::io::{PollIo, Wait};
use crate::plan::{Call, Plan};
use crate::policy::{self, H2Input};
use crate::pool::UpConn;
use crate::record::{RequestInfo, Requester, account};
use crate::respond::{self, Reply};
use crate::retry_loop::{End, Exchange, attempts};
use crate::state::{Picked, Scope};
use crate::trace::{self, Trace};

/// The HTTP/2 connection preface a client with prior knowledge starts with.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf` is (the start of) the HTTP/2 preface.
pub(crate) fn is_preface(buf: &[u8]) -> bool {
    !buf.is_empty() && PREFACE.starts_with(&buf[..buf.len().min(PREFACE.len())])
}

/// Serves an HTTP/2 connection until it closes (or drain has finished its streams).
pub(crate) async fn serve(ctx: &Ctx, io: PollIo, peer: SocketAddr, route: ConnRoute) {
    let (header_timeout, idle, max_streams, max_list, write_timeout) = {
        let state = ctx.state.borrow();
        let p = &state.snapshot().config.proxy;
        let (max_streams, max_list) = (p.http2_max_concurrent_streams, p.max_request_head_bytes);
        (p.header_read_timeout, p.downstream_idle_timeout, max_streams, max_list, p.downstream_write_timeout)
    };
    // The frame-rate guard (h2guard) sits between the socket and h2, and tells why it closed.
    let verdict = Verdict::default();
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .max_header_list_size(max_list as u32)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_reset_streams(64)
        // Rapid reset (CVE-2023-44487): streams reset by the client before they are accepted.
        .max_pending_accept_reset_streams(64)
        // Streams weir resets for the client's errors before it gives up on the connection.
        .max_local_error_reset_streams(Some(256))
        .max_send_buffer_size(256 * 1024)
        .handshake::<_, Bytes>(Guarded::new(io, max_streams, verdict.clone()));
    let mut conn = match crate::io::until(crate::io::now() + header_timeout, handshake).await {
        Some(Ok(c)) => c,
        _ => return,
    };
    let mut streams = FuturesUnordered::new();
    let mut shutting_down = false;
    // Once closing, the client has the write timeout, renewed by each stream that ends, to
    // take its GOAWAY (and answer its PING): a client that never reads is not waited for.
    let mut goaway_by = crate::io::now();
    loop {
        if ctx.draining() && !shutting_down {
            conn.graceful_shutdown();
            shutting_down = true;
            goaway_by = crate::io::now() + write_timeout;
        }
        let event = {
            let accept = std::pin::pin!(conn.accept());
            let next = std::pin::pin!(async {
                if streams.is_empty() && shutting_down {
                    crate::io::until(goaway_by, std::future::pending::<()>()).await;
                    Event::Quiet
                } else if streams.is_empty() {
                    // Nothing in flight: wait for drain or the idle timeout instead.
                    crate::io::wait_until(crate::io::now() + idle, &ctx.drain).await;
                    Event::Quiet
                } else {
                    // Every stream that can finish now does, before the connection is polled
                    // (and flushed) again: their responses leave in one write, not one each.
                    std::future::poll_fn(|cx| {
                        let mut done = false;
                        while let std::task::Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                            done = true;
                        }
                        if done { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
                    })
                    .await;
                    Event::StreamDone
                }
            });
            match select(accept, next).await {
                Either::Left((Some(Ok((req, respond))), _)) => Event::Stream(req, respond),
                Either::Left((Some(Err(e)), _)) => {
                    tracing::debug!(%peer, "HTTP/2 connection error: {e}");
                    if let Some(reason) = h2guard::close_reason(&e, &verdict) {
                        ctx.state.borrow_mut().telemetry.shard.http2_closed(reason);
                    }
                    break;
                }
                Either::Left((None, _)) => break,
                Either::Right((e, _)) => e,
            }
        };
        match event {
            Event::Stream(req, mut respond) => {
                if h2guard::admit(&mut respond, streams.len(), max_streams) {
                    // Boxed: a stream's future is large (about 10 KB), and the set moves what it
                    // is given into its own task allocation; a box moves as a pointer.
                    streams.push(Box::pin(stream(ctx, req, respond, peer, route)));
                }
            }
            Event::StreamDone => goaway_by = crate::io::now() + write_timeout,
            Event::Quiet if shutting_down => {
                ctx.state.borrow_mut().telemetry.shard.http2_closed(weir_core::stats::Http2Close::GoawayTimeout);
                break;
            }
            Event::Quiet => {
                if streams.is_empty() && !shutting_down {
                    // Idle past the timeout, or drain: say goodbye, let in-flight streams end.
                    conn.graceful_shutdown();
                    shutting_down = true;
                    goaway_by = crate::io::now() + write_timeout;
                }
            }
        }
    }
    // The connection is over (closing its socket now): the streams still running learn it and
    // end, giving their upstream connections back.
    drop(conn);
    while streams.next().await.is_some() {}
}

/// What woke the connection loop.
#[expect(clippy::large_enum_variant, reason = "one at a time, moved once: boxing would allocate per stream")]
enum Event {
    Stream(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>),
    StreamDone,
    /// Idle past the timeout, or drain started.
    Quiet,
}

/// One HTTP/2 stream: a request, proxied.
async fn stream(
    ctx: &Ctx,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    route: ConnRoute,
) {
    let started = crate::io::now();
    let (parts, body) = req.into_parts();
    let info = RequestInfo::from_h2(&parts);
    // The connection's caller (steered: its cgroup) is every stream's.
    let mut who = Requester { peer, caller: route.caller, trace: Trace::None };
    let grpc_request =
        parts.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if parts.method == http::Method::CONNECT {
        // Tunnels (and RFC 8441's extended CONNECT) are not carried over HTTP/2.
        let reply = Reply { detail: Some("CONNECT is not supported"), ..Reply::new(ErrorReason::NotImplemented) };
        let ex = answer(&mut respond, reply, grpc_request);
        account(ctx, None, &who, started, &info, &ex);
        return;
    }
    let routed = {
        ctx.refresh();
        let mut state = ctx.state.borrow_mut();
        who.trace = trace::decide_h2(&state.snapshot().config.tracing, &parts.headers);
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| parts.headers.get(http::header::HOST).map(|h| h.as_bytes()));
        route.resolve(&mut state, host)
    };
    let Some(mut scope) = routed else {
        let reply = Reply { head_request: info.is_head, ..Reply::new(ErrorReason::NoRoute) };
        let ex = answer(&mut respond, reply, grpc_request);
        account(ctx, None, &who, started, &info, &ex);
        return;
    };
    match policy::admit(ctx, &scope, &who) {
        Ok(()) => {
            let arrival = Arrival { started, grpc_request };
            let ex = proxy(ctx, &mut scope, parts, body, &mut respond, &who, arrival).await;
            ctx.state.borrow_mut().release(&scope);
            account(ctx, Some(&scope), &who, started, &info, &ex);
        }
        Err(refused) => {
            let grpc = grpc_request || scope.config().protocol == Protocol::Grpc;
            let reply =
                Reply { head_request: info.is_head, retry_after: refused.retry_after, ..Reply::new(refused.reason) };
            let ex = answer(&mut respond, reply, grpc);
            account(ctx, Some(&scope), &who, started, &info, &ex);
        }
    }
}

/// Answers a stream with weir's own error; what the exchange records of it.
fn answer(respond: &mut h2::server::SendResponse<Bytes>, reply: Reply<'_>, grpc: bool) -> Exchange {
    let code = respond::h2_error(respond, reply, grpc);
    Exchange {
        status: if grpc { 200 } else { reply.status() },
        error: Some(reply.reason),
        grpc: code,
        h2: true,
        ..Exchange::default()
    }
}

/// When a stream arrived, and whether it is a gRPC call (by its content-type).
#[derive(Clone, Copy)]
struct Arrival {
    started: Instant,
    grpc_request: bool,
}

/// Proxies one admitted stream.
async fn proxy(
    ctx: &Ctx,
    scope: &mut Scope,
    mut parts: http::request::Parts,
    body: h2::RecvStream,
    respond: &mut h2::server::SendResponse<Bytes>,
    who: &Requester,
    arrival: Arrival,
) -> Exchange {
    let Arrival { started, grpc_request } = arrival;
    let protocol = scope.config().protocol;
    let grpc = grpc_request || protocol == Protocol::Grpc;
    let is_head = parts.method == http::Method::HEAD;
    // Routing, once per stream on its parsed head, then the route's edits and faults.
    if !policy::route(ctx, scope, &H2Input(&parts)) {
        return answer(respond, Reply { head_request: is_head, ..Reply::new(ErrorReason::NoRoute) }, grpc);
    }
    let scope = &*scope;
    policy::edit_h2(&mut parts.headers, &scope.route().edits);
    let fault = policy::fault(ctx, scope).await;
    if let Some(status) = fault.abort {
        let reply = Reply { head_request: is_head, status: Some(status), ..Reply::new(ErrorReason::FaultInjected) };
        return answer(respond, reply, grpc);
    }
    // A delay injected is not the endpoint's time: the request's deadline starts after it.
    let plan = Plan::for_h2(scope, &parts.method, fault.delayed.unwrap_or(started), who.trace);
    let client_deadline = if grpc {
        parts.headers.get("grpc-timeout").and_then(|v| grpc::parse_timeout(v.as_bytes())).map(|t| started + t)
    } else {
        None
    };
    let mut req = ReqParts::from_h2(&parts, &[]);
    plan.retrace_h2(&mut req.headers);
    req.add_fields(&plan.extra_h2(who.peer, &parts.headers));
    let limit = scope.retry().replay_buffer_bytes;
    let body = if body.is_end_stream() {
        None
    } else {
        Some(Rc::new(RefCell::new(H2Body { stream: body, replay: Replay::new(limit, false) })))
    };
    ctx.state.borrow_mut().record_request(scope, crate::io::now());
    let call = Call { ctx, scope, plan: &plan };
    let mut ex = Exchange { h2: true, ..Exchange::default() };
    if protocol.upstream_h2() {
        let req_body = body.clone().map_or(ReqBody::Empty, ReqBody::H2);
        let mut a = ToH2::new(&req, req_body, grpc, client_deadline);
        let Some(end) = until_reset(respond, attempts(call, &mut a, &mut ex)).await else {
            return cancelled(ex);
        };
        match end {
            End::Respond(r, picked) => {
                if let Some(up) = r.conn {
                    relay_h2(call, up, &picked, respond, grpc, &mut ex).await;
                }
            }
            End::Fail(reason, detail) => ex = fail(respond, reason, detail, grpc, &plan, ex),
            End::Abandon => {
                respond.send_reset(h2::Reason::CANCEL);
                ex.error = Some(ErrorReason::BadRequest);
            }
        }
    } else {
        let mut bufs = {
            let mut state = ctx.state.borrow_mut();
            Bufs { wbuf: state.take_buf(), ubuf: state.take_buf(), resp: state.take_head(), replayable: true }
        };
        let mut a = ToH1 { req: &req, body: body.clone(), bufs: &mut bufs };
        let end = until_reset(respond, attempts(call, &mut a, &mut ex)).await;
        match end {
            None => ex = cancelled(ex),
            Some(End::Respond(r, picked)) => {
                let early = r.early;
                if let Some(up) = r.conn {
                    relay_h1(call, up, &picked, &mut bufs, respond, early, &mut ex).await;
                }
            }
            Some(End::Fail(reason, detail)) => ex = fail(respond, reason, detail, grpc, &plan, ex),
            Some(End::Abandon) => {
                respond.send_reset(h2::Reason::CANCEL);
                ex.error = Some(ErrorReason::BadRequest);
            }
        }
        let mut state = ctx.state.borrow_mut();
        state.put_buf(bufs.wbuf);
        state.put_buf(bufs.ubuf);
        state.put_head(bufs.resp);
    }
    ex
}

/// Runs `fut` until the client resets the stream (a cancelled call, an expired gRPC deadline):
/// then `None`, and `fut` is dropped, which cancels its upstream attempt (an HTTP/2 stream is
/// reset, an HTTP/1.1 connection closed), so the endpoint stops working for nobody.
async fn until_reset<F: std::future::Future>(
    respond: &mut h2::server::SendResponse<Bytes>,
    fut: F,
) -> Option<F::Output> {
    let reset = std::pin::pin!(std::future::poll_fn(|cx| respond.poll_reset(cx)));
    match select(std::pin::pin!(fut), reset).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// What a stream the client reset before its response records: no status sent.
fn cancelled(ex: Exchange) -> Exchange {
    Exchange { status: 0, ..ex }
}

fn fail(
    respond: &mut h2::server::SendResponse<Bytes>,
    reason: ErrorReason,
    detail: Option<&'static str>,
    grpc: bool,
    plan: &Plan,
    ex: Exchange,
) -> Exchange {
    let answered = answer(respond, Reply { detail, head_request: plan.is_head, ..Reply::new(reason) }, grpc);
    Exchange { status: answered.status, error: answered.error, grpc: answered.grpc, ..ex }
}

/// The `grpc-status` of `headers`, if it carries one.
fn grpc_status(headers: &http::HeaderMap) -> Option<u8> {
    headers.get("grpc-status").and_then(|v| grpc::parse_status(v.as_bytes()))
}

/// Relays an HTTP/2 endpoint's response (head, data, trailers) to the client, while what is
/// left of the request body still streams to the endpoint.
async fn relay_h2(
    call: Call<'_>,
    mut up: H2Up,
    picked: &Picked,
    respond: &mut h2::server::SendResponse<Bytes>,
    grpc: bool,
    ex: &mut Exchange,
) {
    let Call { ctx, scope, plan } = call;
    let mut head = http::Response::from_parts(up.head.clone(), ());
    bridge::strip_connection_specific(head.headers_mut());
    head.headers_mut().append(http::header::VIA, http::HeaderValue::from_static("2 weir"));
    ex.status = up.head.status.as_u16();
    if grpc {
        ex.grpc = grpc_status(&up.head.headers);
    }
    let end = up.body.is_end_stream();
    let mut send = match respond.send_response(head, end && up.rest.is_none()) {
        Ok(s) => s,
        Err(_) => return,
    };
    if end && up.rest.is_none() {
        return;
    }
    let moved = Cell::new(0);
    let trailer_status = Cell::new(None);
    let relay = async {
        let mut src = Source::H2 { stream: &mut up.body, wait: Wait::Idle(plan.response_idle) };
        let mut sink = Sink::H2 { stream: &mut send, wait: Wait::Idle(plan.write_timeout) };
        while let Some(chunk) = src.next().await? {
            moved.set(moved.get() + chunk.len() as u64);
            sink.send(chunk).await?;
        }
        let trailers = src.trailers().await;
        trailer_status.set(trailers.as_ref().and_then(grpc_status));
        sink.finish(trailers).await
    };
    let result = match up.rest.take() {
        // Full duplex: the rest of the request body and the response, side by side.
        Some(rest) => futures_util::future::join(relay, rest).await.0,
        None => relay.await,
    };
    ex.bytes_out = moved.get();
    if let Some(code) = trailer_status.get() {
        ex.grpc = Some(code);
    }
    if let Err(e) = result {
        cut(ctx, scope, picked, e, &mut send, ex);
    }
    // A request stream the client never finished is closed now (the response is complete).
    if let Some(mut s) = up.send.take()
        && result_ok(&ex.error)
    {
        s.send_reset(h2::Reason::NO_ERROR);
    }
}

fn result_ok(error: &Option<ErrorReason>) -> bool {
    error.is_none()
}

/// A response broken off after its head, as HTTP/2 sees it: the stream is reset (never ended
/// cleanly), and an endpoint's cut counts against it.
fn cut(ctx: &Ctx, scope: &Scope, picked: &Picked, e: PumpError, send: &mut h2::SendStream<Bytes>, ex: &mut Exchange) {
    send.send_reset(h2::Reason::INTERNAL_ERROR);
    match e {
        PumpError::Destination => {}
        PumpError::DestinationTimeout => ex.write_timeout = true,
        PumpError::Source | PumpError::SourceTimeout | PumpError::Framing => {
            ex.error = Some(match e {
                PumpError::SourceTimeout => ErrorReason::Timeout,
                PumpError::Framing => ErrorReason::UpstreamProtocolError,
                _ => ErrorReason::UpstreamReset,
            });
            let outcome = weir_core::outcome::Outcome::ResetAfterResponseStarted;
            ctx.state.borrow_mut().report_health(scope, picked, &outcome, ctx.now_ms());
        }
    }
}

/// Relays an HTTP/1.1 endpoint's response to an HTTP/2 client; the connection goes back to the
/// pool when the exchange completed cleanly.
async fn relay_h1(
    call: Call<'_>,
    mut up: UpConn,
    picked: &Picked,
    bufs: &mut Bufs,
    respond: &mut h2::server::SendResponse<Bytes>,
    early: bool,
    ex: &mut Exchange,
) {
    let Call { ctx, scope, plan } = call;
    let head = bridge::h1_response_to_h2(&bufs.resp, &bufs.ubuf);
    ex.status = bufs.resp.code;
    let framing = bufs.resp.body;
    // Not after a HEAD (see `exchange::stream_response`).
    let reusable =
        bufs.resp.keep_alive && framing != crate::http::BodyFraming::CloseDelimited && !early && !plan.is_head;
    bufs.ubuf.drain(..bufs.resp.head_len);
    let no_body = matches!(framing, crate::http::BodyFraming::None | crate::http::BodyFraming::ContentLength(0));
    let mut send = match respond.send_response(head, no_body) {
        Ok(s) => s,
        Err(_) => {
            up.abort();
            return;
        }
    };
    if no_body {
        if reusable && bufs.ubuf.is_empty() && !ctx.draining() {
            ctx.state.borrow_mut().put_pooled(scope, picked, up, crate::io::now());
        }
        return;
    }
    let moved = Cell::new(0);
    let result = {
        let mut src = Source::H1 {
            conn: &mut up.conn,
            buf: &mut bufs.ubuf,
            base: 0,
            left: H1Left::of(framing),
            wait: Wait::Idle(plan.response_idle),
        };
        let mut sink = Sink::H2 { stream: &mut send, wait: Wait::Idle(plan.write_timeout) };
        bridge::relay(&mut src, &mut sink, &moved).await
    };
    ex.bytes_out = moved.get();
    match result {
        Ok(_) if reusable && bufs.ubuf.is_empty() && !ctx.draining() => {
            ctx.state.borrow_mut().put_pooled(scope, picked, up, crate::io::now());
        }
        Ok(_) => {}
        Err(e) => {
            up.abort();
            cut(ctx, scope, picked, e, &mut send, ex);
        }
    }
}
