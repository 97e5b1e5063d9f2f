//! One downstream HTTP/1.1 connection, read top to bottom: read a request head (idle and
//! header-read timeouts), parse it strictly, route it, hand it to [`crate::forward`], account
//! for it, and loop while the connection stays keep-alive. Pipelined requests are answered in
//! order because the next head is parsed only after the previous response is complete. Owns
//! the downstream read buffer and every response weir writes on its own. Must not: forward a
//! byte of a request that failed parsing.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use weir_core::accesslog::{InlineStr, LogRecord};
use weir_core::outcome::{DEFAULT_SHED_RETRY_AFTER_SECS, ErrorReason};
use weir_core::stats::RequestRecord;

use crate::forward::{self, Exchange, RequestInfo};
use crate::http::{self, ErrorResponse, HeadError, HeadLimits, RequestHead, Status};
use crate::io::{Conn, ReadUntil};
use crate::local::ConnRoute;
use crate::worker::Worker;

/// Initial capacity of a connection's read buffer; it grows for large heads and bodies and
/// shrinks back after a request, so an idle keep-alive connection holds little memory.
const READ_BUF_BYTES: usize = 1024;
const SHRINK_ABOVE_BYTES: usize = 64 * 1024;

/// The client side of an exchange: the connection and its unconsumed bytes (`buf[..]`, head
/// first once parsed).
#[derive(Debug)]
pub(crate) struct Downstream {
    pub conn: Conn,
    pub buf: Vec<u8>,
    pub peer: SocketAddr,
}

/// Serves HTTP on one accepted connection until it closes.
pub(crate) async fn serve(worker: &Rc<Worker>, conn: Conn, peer: SocketAddr, route: ConnRoute) {
    let mut down = Downstream { conn, buf: Vec::with_capacity(READ_BUF_BYTES), peer };
    let mut head = RequestHead::default();
    let mut first = true;
    loop {
        let limits = {
            let local = worker.local.borrow();
            let p = &local.snapshot.config.proxy;
            HeadLimits {
                max_head_bytes: p.max_request_head_bytes,
                max_headers: p.max_headers,
                max_uri_bytes: p.max_uri_bytes,
            }
        };
        let started = match read_head(worker, &mut down, &mut head, &limits, first).await {
            HeadRead::Ready(t) => t,
            HeadRead::Closed => return,
            HeadRead::Failed(reason, status) => {
                let t0 = Instant::now();
                respond_error(&mut down, reason, Some(status), true, false).await;
                account(worker, None, &down, None, status, Some(reason), t0, &RequestInfo::default(), None);
                return;
            }
        };
        first = false;
        // The request's state machine (forwarding, retries, streaming) is several KiB; boxing it
        // keeps an idle keep-alive connection down to its read buffer and a small future.
        let keep_alive = Box::pin(handle(worker, &mut down, &mut head, route, started)).await;
        if !keep_alive {
            return;
        }
        if down.buf.capacity() > SHRINK_ABOVE_BYTES {
            down.buf.shrink_to(READ_BUF_BYTES.max(down.buf.len()));
        }
    }
}

enum HeadRead {
    /// A complete head is parsed; the request started at this instant.
    Ready(Instant),
    /// The client closed (or went idle past the timeout, or drain) between requests.
    Closed,
    /// Answer with this reason and status, then close.
    Failed(ErrorReason, u16),
}

/// Reads until `head` is complete. Between requests the downstream idle timeout applies (and
/// drain closes the connection); from the first byte of a head (or from accept, for the first
/// request) the header read timeout applies, then 408.
async fn read_head(
    worker: &Worker,
    down: &mut Downstream,
    head: &mut RequestHead,
    limits: &HeadLimits,
    first: bool,
) -> HeadRead {
    let (idle, header_timeout) = {
        let local = worker.local.borrow();
        let p = &local.snapshot.config.proxy;
        (p.downstream_idle_timeout, p.header_read_timeout)
    };
    let mut head_deadline = first.then(|| Instant::now() + header_timeout);
    let mut started = Instant::now();
    loop {
        if !down.buf.is_empty() {
            if head_deadline.is_none() {
                head_deadline = Some(Instant::now() + header_timeout);
                started = Instant::now();
            }
            match http::parse_request(&down.buf, limits, head) {
                Ok(Status::Complete(_)) => return HeadRead::Ready(started),
                Ok(Status::Partial) => {}
                Err(e) => return HeadRead::Failed(head_error_reason(&e), e.status()),
            }
        } else if worker.draining() {
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
            None => (Instant::now() + idle, Some(&worker.drain)),
        };
        match crate::io::read_until(&mut down.conn, buf, deadline, cancel).await {
            ReadUntil::TimedOut if head_deadline.is_some() => {
                // The read was cancelled with its buffer; what was already parsed is lost,
                // which is fine: the connection is answered 408 and closed.
                return HeadRead::Failed(ErrorReason::HeaderReadTimeout, 408);
            }
            ReadUntil::TimedOut | ReadUntil::Cancelled => return HeadRead::Closed,
            // EOF or an error, between requests or within a head: nothing to answer to.
            ReadUntil::Done(Ok(0) | Err(_), _) => return HeadRead::Closed,
            ReadUntil::Done(Ok(_), buf) => down.buf = buf,
        }
    }
}

/// The `x-weir-error` reason for a request head that failed parsing.
pub(crate) fn head_error_reason(e: &HeadError) -> ErrorReason {
    match e.status() {
        431 => ErrorReason::HeadTooLarge,
        414 => ErrorReason::UriTooLong,
        501 | 505 => ErrorReason::NotImplemented,
        _ => ErrorReason::BadRequest,
    }
}

/// Handles one parsed request; returns whether the connection stays open.
async fn handle(
    worker: &Rc<Worker>,
    down: &mut Downstream,
    head: &mut RequestHead,
    route: ConnRoute,
    started: Instant,
) -> bool {
    let info = RequestInfo::from_head(head, &down.buf);
    if head.upgrade {
        respond_error(down, ErrorReason::NotImplemented, None, true, info.is_head).await;
        account(worker, None, down, None, 501, Some(ErrorReason::NotImplemented), started, &info, None);
        return false;
    }
    let service = {
        let mut local = worker.local.borrow_mut();
        local.refresh(worker);
        let host = head.host.map(|h| h.get(&down.buf));
        if route.unknown { None } else { local.route_request(route.dialed, host).map(|i| local.service_ref(i)) }
    };
    let Some(svc) = service else {
        // Unknown service: 404. Its body (if any) is not read, so the connection closes.
        let close = head.body.has_body() || !head.keep_alive;
        worker.telemetry.borrow_mut().shard.unrouted += 1;
        respond_error(down, ErrorReason::NoRoute, None, close, info.is_head).await;
        account(worker, None, down, None, 404, Some(ErrorReason::NoRoute), started, &info, None);
        down.buf.drain(..head.head_len);
        return !close;
    };

    // Overload protection: this worker's share of the service's pending-request limit.
    let shed = {
        let mut local = worker.local.borrow_mut();
        match local.resolve(&svc) {
            Some(ls) if ls.pending >= ls.max_pending => true,
            Some(ls) => {
                ls.pending += 1;
                false
            }
            None => true,
        }
    };
    if shed {
        let close = head.body.has_body() || !head.keep_alive;
        respond_error(down, ErrorReason::Overloaded, None, close, info.is_head).await;
        account(worker, Some(&svc), down, None, 503, Some(ErrorReason::Overloaded), started, &info, None);
        down.buf.drain(..head.head_len);
        return !close;
    }
    let exchange = forward::exchange(worker, down, head, &svc, &info, started).await;
    if let Some(ls) = worker.local.borrow_mut().resolve(&svc) {
        ls.pending = ls.pending.saturating_sub(1);
    }
    account(
        worker,
        Some(&svc),
        down,
        exchange.endpoint,
        exchange.status,
        exchange.error,
        started,
        &info,
        Some(&exchange),
    );
    exchange.keep_alive && !worker.draining()
}

/// Writes a response weir generates itself.
pub(crate) async fn respond_error(
    down: &mut Downstream,
    reason: ErrorReason,
    status: Option<u16>,
    close: bool,
    omit_body: bool,
) {
    let mut out = Vec::with_capacity(256);
    ErrorResponse {
        status: status.unwrap_or(reason.status()),
        reason: reason.as_str(),
        detail: reason.message(),
        close: close || reason.closes_connection(),
        retry_after_secs: reason.sets_retry_after().then_some(DEFAULT_SHED_RETRY_AFTER_SECS),
        omit_body,
    }
    .write(&mut out);
    let (_, _) = down.conn.write_all(out).await;
}

/// Counts a finished request in the worker's stats shard and access log.
#[allow(clippy::too_many_arguments)]
fn account(
    worker: &Worker,
    svc: Option<&crate::local::ServiceRef>,
    down: &Downstream,
    endpoint: Option<SocketAddr>,
    status: u16,
    error: Option<ErrorReason>,
    started: Instant,
    info: &RequestInfo,
    exchange: Option<&Exchange>,
) {
    let duration = started.elapsed();
    let slot = svc.and_then(|s| worker.local.borrow_mut().resolve(s).map(|l| l.stats));
    let mut t = worker.telemetry.borrow_mut();
    if let Some(slot) = slot {
        t.shard.service_mut(slot).record(&RequestRecord {
            status: (status != 0).then_some(status),
            error,
            duration,
            panic: exchange.is_some_and(|e| e.panic),
        });
    }
    if t.logging() {
        let start_unix_us = SystemTime::now()
            .checked_sub(duration)
            .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        t.log(LogRecord {
            start_unix_us,
            service: InlineStr::new(svc.map_or(&b""[..], |s| s.name.as_bytes())),
            endpoint,
            client: Some(down.peer),
            method: info.method,
            authority: info.authority,
            path: info.path,
            status,
            error,
            attempts: exchange.map_or(0, |e| e.attempts),
            bytes_in: exchange.map_or(0, |e| e.bytes_in),
            bytes_out: exchange.map_or(0, |e| e.bytes_out),
            duration_us: duration.as_micros() as u64,
            upstream_us: exchange.map_or(0, |e| e.upstream_us),
            worker: worker.id as u16,
            tcp: false,
        });
    }
}
