//! An HTTP/1.1 client's request to an HTTP/2 (or gRPC) service: the request translated once
//! ([`ReqParts::from_h1`]: end-to-end fields only, `Host` as `:authority`), attempted through
//! the same loop as every request ([`attempts`] with [`ToH2`]: a held body is replayed, a
//! streamed one is kept for replay up to the service's limit), and the endpoint's response
//! written back as HTTP/1.1 (chunked when its length is unknown; trailers are not carried).
//! Must not: hold the state borrow across an `.await`, or leave the client's connection open
//! when its request stream was not read to the end.

use std::cell::Cell;

use bytes::Bytes;
use weir_core::outcome::ErrorReason;

use crate::body::OutFraming;
use crate::bridge::{self, H1Left, Replay, ReqParts, Sink, Source};
use crate::h2up::{H2Up, ReqBody, ToH2};
use crate::http::{BodyFraming, RequestHead};
use crate::io::Wait;
use crate::plan::{Call, Downstream};
use crate::respond::{self, Reply};
use crate::retry_loop::{self, End, Exchange, attempts};
use crate::state::Picked;

/// Proxies one HTTP/1.1 request to an HTTP/2 endpoint. `down.buf` holds the head (and the body,
/// when the plan holds it); returns how the exchange ended and how many bytes of `down.buf`
/// the request consumed.
pub(crate) async fn exchange(call: Call<'_>, down: &mut Downstream, head: &mut RequestHead) -> (Exchange, usize) {
    let Call { scope, plan, .. } = call;
    let head_len = head.head_len;
    let mut ex = Exchange::default();
    let host = String::new();
    let (extra, n) = plan.added_fields(head, &host);
    let Some(req) = ReqParts::from_h1(head, &down.buf, &extra[..n]) else {
        let reply = Reply { close: true, ..Reply::new(ErrorReason::BadRequest) };
        respond::error(&mut down.conn, reply, plan.write_timeout).await;
        ex.status = 400;
        ex.error = Some(ErrorReason::BadRequest);
        return (ex, down.buf.len());
    };
    let grpc = scope.config().protocol == weir_core::config::Protocol::Grpc;
    let (end, early, body_complete) = {
        let body = if plan.buffered_body {
            let held = Bytes::copy_from_slice(&down.buf[head_len..head_len + plan.body_len as usize]);
            let empty = Source::H1 {
                conn: &mut down.conn,
                buf: &mut down.buf,
                base: 0,
                left: H1Left::Done,
                wait: Wait::Idle(plan.write_timeout),
            };
            if held.is_empty() { ReqBody::Empty } else { ReqBody::H1 { src: empty, replay: Replay::whole(held) } }
        } else {
            down.buf.drain(..head_len);
            let src = Source::H1 {
                conn: &mut down.conn,
                buf: &mut down.buf,
                base: 0,
                left: H1Left::of(head.body),
                wait: Wait::Idle(plan.response_idle),
            };
            ReqBody::H1 { src, replay: Replay::new(scope.retry().replay_buffer_bytes, false) }
        };
        let mut a = ToH2::new(&req, body, grpc, None);
        let end = attempts(call, &mut a, &mut ex).await;
        let early = matches!(&end, End::Respond(r, _) if r.early);
        (end, early, a.body_complete())
    };
    match end {
        End::Respond(r, picked) => {
            if let Some(up) = r.conn {
                respond_h1(call, down, up, &picked, early, &mut ex).await;
            }
        }
        End::Fail(reason, detail) => {
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
    // A streamed body was taken from `down.buf` as it was read: what is left follows it, unless
    // the body was not read to its end, and then nothing on the connection can be framed.
    ex.keep_alive &= body_complete;
    let consumed = if plan.buffered_body { head_len + plan.body_len as usize } else { 0 };
    (ex, consumed.min(down.buf.len()))
}

/// Writes an HTTP/2 endpoint's response to the HTTP/1.1 client.
async fn respond_h1(
    call: Call<'_>,
    down: &mut Downstream,
    mut up: H2Up,
    picked: &Picked,
    early: bool,
    ex: &mut Exchange,
) {
    let Call { ctx, scope, plan } = call;
    let close = !plan.client_keep_alive || ctx.draining() || early;
    let has_body = !up.body.is_end_stream() && !plan.is_head;
    let mut out = Vec::with_capacity(512);
    let framing = bridge::h2_response_to_h1(&up.head, plan.client_version, close, has_body, &mut out);
    ex.status = up.head.status.as_u16();
    let (res, mut out) = down.conn.write_all_by(out, Wait::Idle(plan.write_timeout)).await;
    if let Err(e) = res {
        ex.keep_alive = false;
        if e.kind() == std::io::ErrorKind::TimedOut {
            ex.write_timeout = true;
            ex.abort = true;
        }
        return;
    }
    if !has_body || plan.is_head {
        ex.keep_alive = !framing.close;
        return;
    }
    let moved = Cell::new(0);
    let result = {
        let mut src = Source::H2 { stream: &mut up.body, wait: Wait::Idle(plan.response_idle) };
        let outf = if framing.framing == BodyFraming::Chunked { OutFraming::Chunked } else { OutFraming::Raw };
        let mut sink =
            Sink::H1 { conn: &mut down.conn, out: outf, wait: Wait::Idle(plan.write_timeout), scratch: &mut out };
        bridge::relay(&mut src, &mut sink, &moved).await
    };
    ex.bytes_out = moved.get();
    match result {
        Ok(_) => ex.keep_alive = !framing.close,
        Err(e) => {
            ex.keep_alive = false;
            retry_loop::cut(ctx, scope, picked, e, ex);
        }
    }
}
