//! One proxied HTTP exchange, as an explicit loop of attempts: pick an endpoint, take a pooled
//! connection or connect, send the re-serialised head and the body, read the response head,
//! classify the attempt (`Outcome`), and either retry (when safe, within budget, after
//! back-off, on another endpoint) or answer: stream the endpoint's response, or send weir's own
//! error. Owns the retry loop, request-body replay and the keep-alive race. Must not: block
//! the worker, hold a `RefCell` borrow across an `.await`, or forward a byte it did not parse.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use weir_core::accesslog::{AUTHORITY_BYTES, InlineStr, METHOD_BYTES, PATH_BYTES};
use weir_core::config::ServiceConfig;
use weir_core::outcome::{ErrorReason, Outcome};
use weir_core::retry::{self, BudgetPolicy, Decision, RequestCtx, RetryOn, RetryPolicy, StopReason};
use weir_core::stats::RetryReason;

use crate::body::{self, OutFraming, PumpError, Source};
use crate::conn::{Downstream, respond_error};
use crate::http::{self, BodyFraming, HeadLimits, Method, RequestHead, ResponseHead, Status, Version};
use crate::io::{Conn, until};
use crate::local::ServiceRef;
use crate::upstream::{self, Picked};
use crate::worker::Worker;

const VIA: (&[u8], &[u8]) = (b"via", b"1.1 weir");
const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

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
    pub attempts: u8,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_us: u64,
    pub panic: bool,
}

/// The retry policy of a service's config.
fn retry_policy(s: &ServiceConfig) -> RetryPolicy {
    RetryPolicy {
        attempts: s.retry.attempts,
        retry_on: RetryOn {
            server_error: s.retry.on_server_error,
            rate_limited: s.retry.on_rate_limited,
            ..RetryOn::default()
        },
        backoff_base: s.retry.backoff_base,
        backoff_max: s.retry.backoff_max,
        per_attempt_timeout: s.timeouts.attempt,
        replay_buffer_bytes: s.retry.replay_buffer_bytes as u64,
        budget: BudgetPolicy {
            ratio: s.retry.budget_ratio,
            min_retries_per_sec: s.retry.budget_min_per_sec,
            enabled: s.retry.budget,
        },
    }
}

/// Everything an attempt needs that does not change between attempts.
struct Plan {
    policy: RetryPolicy,
    connect_timeout: Duration,
    request_timeout: Duration,
    upstream_idle: Duration,
    max_idle: usize,
    limits: HeadLimits,
    /// Request body fully held in `down.buf[head_len..]` (replayable).
    buffered_body: bool,
    idempotent: bool,
    client_version: Version,
    client_keep_alive: bool,
}

/// Proxies one request whose head is parsed in `down.buf[..head.head_len]`.
pub(crate) async fn exchange(
    worker: &Rc<Worker>,
    down: &mut Downstream,
    head: &mut RequestHead,
    svc: &ServiceRef,
    info: &RequestInfo,
    started: Instant,
) -> Exchange {
    // The service may have gone in a reload since the request was routed.
    let Some(i) = worker.local.borrow().snapshot.service_index_fast(svc) else {
        respond_error(down, ErrorReason::NoRoute, None, true, info.is_head).await;
        return Exchange { status: 404, error: Some(ErrorReason::NoRoute), ..Exchange::default() };
    };
    let plan = {
        let local = worker.local.borrow();
        let cfg = &local.snapshot.config.services[i];
        let p = &local.snapshot.config.proxy;
        let policy = retry_policy(cfg);
        let buffered_body = match head.body {
            BodyFraming::None => true,
            BodyFraming::ContentLength(n) => n <= policy.replay_buffer_bytes,
            _ => false,
        };
        Plan {
            connect_timeout: cfg.timeouts.connect,
            request_timeout: cfg.timeouts.request,
            upstream_idle: cfg.timeouts.upstream_idle,
            max_idle: cfg.limits.max_idle_per_endpoint as usize,
            limits: HeadLimits {
                max_head_bytes: p.max_request_head_bytes.max(64 * 1024),
                max_headers: 256,
                max_uri_bytes: usize::MAX,
            },
            buffered_body,
            idempotent: head.is_idempotent(),
            client_version: head.version,
            client_keep_alive: head.keep_alive,
            policy,
        }
    };
    let deadline = started + plan.request_timeout;
    let head_len = head.head_len;

    // weir answers `Expect: 100-continue` itself (when it is ready to read the body) and does
    // not forward the expectation.
    let mut sent_continue = false;
    if head.expect_continue {
        head.remove_header(&down.buf, b"expect");
    }
    let body_len = match head.body {
        BodyFraming::ContentLength(n) => n,
        _ => 0,
    };
    if plan.buffered_body && body_len > 0 {
        if head.expect_continue && down.buf.len() == head_len {
            let (res, _) = down.conn.write_all(CONTINUE_100.to_vec()).await;
            if res.is_err() {
                return Exchange::default();
            }
            sent_continue = true;
        }
        if !read_body_fully(down, head_len + body_len as usize, deadline).await {
            // The client went away or stalled before its body arrived: nobody to answer.
            return Exchange::default();
        }
    }

    if let Some(ls) = worker.local.borrow_mut().resolve(svc) {
        ls.budget.record_request(Instant::now());
    }

    let mut wbuf = worker.take_buf();
    let mut ubuf = worker.take_buf();
    let mut resp = worker.take_head();
    let mut ex = Exchange::default();
    let mut tried = upstream::Tried::default();
    let mut attempt: u32 = 0;
    let mut fresh_retried = false;
    let mut force_fresh = false;
    let mut last_outcome: Option<Outcome> = None;
    let mut body_started = false;

    let end: End = 'attempts: loop {
        if !force_fresh {
            attempt += 1;
        }
        let now = Instant::now();
        if now >= deadline {
            break End::Failed;
        }
        let Some(picked) = (if force_fresh {
            ex.endpoint.and_then(|a| repick(worker, svc, a))
        } else {
            upstream::pick(worker, svc, &tried, now)
        }) else {
            if last_outcome.is_none() {
                break End::Error(ErrorReason::NoHealthyEndpoint);
            }
            break End::Failed;
        };
        ex.attempts = ex.attempts.saturating_add(1);
        ex.endpoint = Some(picked.addr);
        ex.panic |= picked.panic;
        let fresh_only = force_fresh;
        force_fresh = false;

        // A pooled connection, or a new one.
        let pooled = if fresh_only { None } else { take_pooled(worker, svc, &picked, plan.upstream_idle) };
        let reused = pooled.is_some();
        let attempt_deadline = plan.policy.per_attempt_timeout.map_or(deadline, |t| deadline.min(now + t));
        let mut up = match pooled {
            Some(c) => c,
            None => {
                let budget = plan.connect_timeout.min(attempt_deadline.saturating_duration_since(Instant::now()));
                match upstream::connect(worker, picked.addr, budget).await {
                    Ok(c) => {
                        with_stats(worker, svc, |s| s.upstream_connections += 1);
                        c
                    }
                    Err(outcome) => {
                        upstream::report(worker, svc, &picked, &outcome, None);
                        last_outcome = Some(outcome);
                        let ctx = RequestCtx {
                            idempotent: plan.idempotent,
                            replayable: plan.buffered_body,
                            request_bytes_written: false,
                            reused_connection: false,
                            fresh_connection_retried: fresh_retried,
                        };
                        match decide(worker, svc, &plan.policy, &outcome, attempt, &ctx, None, deadline).await {
                            Next::Retry => {
                                tried.add(picked.addr);
                                continue 'attempts;
                            }
                            Next::Fresh | Next::Stop => break 'attempts End::Failed,
                        }
                    }
                }
            }
        };

        // Send the head (and a replayable body) in one write.
        let t_sent = Instant::now();
        wbuf.clear();
        let host_extra;
        let mut extra: [(&[u8], &[u8]); 2] = [VIA, (b"", b"")];
        let mut n_extra = 1;
        if head.host.is_none() {
            host_extra = picked.addr.to_string();
            extra[1] = (b"host", host_extra.as_bytes());
            n_extra = 2;
        }
        http::write_request_head(head, &down.buf, &mut wbuf, &extra[..n_extra]);
        if plan.buffered_body && body_len > 0 {
            wbuf.extend_from_slice(&down.buf[head_len..head_len + body_len as usize]);
        }
        let (res, b) = up.write_all(std::mem::take(&mut wbuf)).await;
        wbuf = b;
        wbuf.clear();
        if res.is_err() {
            let outcome = if reused { Outcome::ResetBeforeWrite } else { Outcome::ResetAfterWrite };
            upstream::report(worker, svc, &picked, &outcome, None);
            with_stats(worker, svc, |s| s.upstream_connections -= 1);
            last_outcome = Some(outcome);
            let ctx = RequestCtx {
                idempotent: plan.idempotent,
                replayable: plan.buffered_body,
                request_bytes_written: !reused,
                reused_connection: reused,
                fresh_connection_retried: fresh_retried,
            };
            let next = decide(worker, svc, &plan.policy, &outcome, attempt, &ctx, None, deadline).await;
            if next.apply(&mut tried, picked.addr, &mut fresh_retried, &mut force_fresh) {
                continue;
            }
            break End::Failed;
        }

        // A streamed body: weir sends 100 Continue itself if the client is waiting for it.
        if !plan.buffered_body {
            if head.expect_continue && !sent_continue && down.buf.len() == head_len {
                let (res, _) = down.conn.write_all(CONTINUE_100.to_vec()).await;
                if res.is_err() {
                    upstream::report(worker, svc, &picked, &Outcome::LocalError, None);
                    with_stats(worker, svc, |s| s.upstream_connections -= 1);
                    break 'attempts End::Abandon;
                }
                sent_continue = true;
            }
            body_started = true;
            let out = if head.body == BodyFraming::Chunked { OutFraming::Chunked } else { OutFraming::Raw };
            let src = Source { conn: &mut down.conn, buf: &mut down.buf, base: head_len };
            match body::pump(src, &mut up, head.body, out, plan.request_timeout, &mut wbuf).await {
                Ok(n) => ex.bytes_in = n,
                Err(PumpError::Destination) => {
                    let outcome = Outcome::ResetAfterWrite;
                    upstream::report(worker, svc, &picked, &outcome, None);
                    with_stats(worker, svc, |s| s.upstream_connections -= 1);
                    last_outcome = Some(outcome);
                    break End::Failed;
                }
                Err(_) => {
                    // The client's body broke off: abandon the exchange and the connection.
                    upstream::report(worker, svc, &picked, &Outcome::LocalError, None);
                    with_stats(worker, svc, |s| s.upstream_connections -= 1);
                    break End::Abandon;
                }
            }
        } else {
            ex.bytes_in = body_len;
        }

        // The response head.
        ubuf.clear();
        let outcome = read_response_head(
            &mut up,
            &mut ubuf,
            &mut resp,
            &plan.limits,
            info.is_head,
            attempt_deadline,
            &mut down.conn,
            plan.client_version,
            sent_continue,
        )
        .await;
        let outcome = match outcome {
            HeadOutcome::Head => Outcome::Response { status: resp.code },
            HeadOutcome::Failed(o) => o,
        };
        let latency = t_sent.elapsed();
        let got_head = matches!(outcome, Outcome::Response { .. });
        // A reused connection closed with nothing read: most likely the endpoint closed it as
        // idle just as weir wrote. Safe to resend only for idempotent, replayable requests.
        let race =
            reused && outcome == Outcome::ResetAfterWrite && ubuf.is_empty() && plan.idempotent && plan.buffered_body;
        let reported = if race { Outcome::ResetBeforeWrite } else { outcome };
        upstream::report(worker, svc, &picked, &reported, got_head.then_some(latency));
        ex.upstream_us = latency.as_micros() as u64;
        if !got_head {
            with_stats(worker, svc, |s| s.upstream_connections -= 1);
            last_outcome = Some(reported);
            if body_started {
                break End::Failed;
            }
            let ctx = RequestCtx {
                idempotent: plan.idempotent,
                replayable: plan.buffered_body,
                request_bytes_written: !race,
                reused_connection: reused,
                fresh_connection_retried: fresh_retried,
            };
            let next = decide(worker, svc, &plan.policy, &reported, attempt, &ctx, None, deadline).await;
            if next.apply(&mut tried, picked.addr, &mut fresh_retried, &mut force_fresh) {
                continue;
            }
            break End::Failed;
        }
        last_outcome = Some(outcome);
        // An endpoint's 5xx may be retried; the response is then discarded with its connection.
        if resp.code >= 500 && !body_started {
            let ctx = RequestCtx {
                idempotent: plan.idempotent,
                replayable: plan.buffered_body,
                request_bytes_written: true,
                reused_connection: reused,
                fresh_connection_retried: fresh_retried,
            };
            let retry_after =
                resp.header(&ubuf, b"retry-after").and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            if let Next::Retry = decide(worker, svc, &plan.policy, &outcome, attempt, &ctx, retry_after, deadline).await
            {
                with_stats(worker, svc, |s| s.upstream_connections -= 1);
                drop(up);
                tried.add(picked.addr);
                continue;
            }
        }
        break End::Response(up, picked);
    };

    match end {
        End::Failed => {
            let reason = match last_outcome {
                None => ErrorReason::Timeout,
                // A discarded 5xx whose retry found no endpoint to go to.
                Some(Outcome::Response { .. }) => ErrorReason::NoHealthyEndpoint,
                Some(o) => ErrorReason::from_outcome(&o).unwrap_or(ErrorReason::UpstreamReset),
            };
            finish_error(down, &mut ex, reason, &plan, info).await;
        }
        End::Error(reason) => finish_error(down, &mut ex, reason, &plan, info).await,
        End::Abandon => {
            ex.keep_alive = false;
            ex.error = Some(ErrorReason::BadRequest);
        }
        End::Response(up, picked) => {
            stream_response(worker, svc, down, up, &picked, &mut resp, &mut ubuf, &mut wbuf, &plan, &mut ex).await;
        }
    }
    worker.put_buf(wbuf);
    worker.put_buf(ubuf);
    worker.put_head(resp);
    // The request body (buffered or streamed) is consumed: drop the head and body bytes.
    let consumed = if plan.buffered_body { head_len + body_len as usize } else { head_len };
    down.buf.drain(..consumed.min(down.buf.len()));
    ex
}

/// Reads until `down.buf` holds `total` bytes (head + a replayable body), by `deadline`.
async fn read_body_fully(down: &mut Downstream, total: usize, deadline: Instant) -> bool {
    if down.buf.capacity() < total {
        down.buf.reserve(total - down.buf.len());
    }
    while down.buf.len() < total {
        match until(deadline, down.conn.read(std::mem::take(&mut down.buf))).await {
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

/// The keep-alive race retry: same endpoint, fresh connection, no new attempt.
fn repick(worker: &Worker, svc: &ServiceRef, addr: SocketAddr) -> Option<Picked> {
    let mut local = worker.local.borrow_mut();
    let snapshot = local.snapshot.clone();
    let i = snapshot.service_index_fast(svc)?;
    let index = snapshot.config.services[i].endpoints.iter().position(|e| e.addr == addr)?;
    let ls = local.resolve(svc)?;
    ls.balancer.on_start(index);
    Some(Picked { index, addr, panic: false, generation: snapshot.generation })
}

fn take_pooled(worker: &Worker, svc: &ServiceRef, picked: &Picked, max_idle: Duration) -> Option<Conn> {
    let mut local = worker.local.borrow_mut();
    if local.snapshot.generation != picked.generation {
        return None;
    }
    local.resolve(svc)?.pools.get_mut(picked.index)?.take(Instant::now(), max_idle)
}

fn with_stats(worker: &Worker, svc: &ServiceRef, f: impl FnOnce(&mut weir_core::stats::ServiceStats)) {
    let slot = worker.local.borrow_mut().resolve(svc).map(|s| s.stats);
    if let Some(slot) = slot {
        f(worker.telemetry.borrow_mut().shard.service_mut(slot));
    }
}

/// How the attempt loop ended.
enum End {
    /// A response head to stream to the client.
    Response(Conn, Picked),
    /// Every attempt failed: answer from the last outcome.
    Failed,
    /// Answer with this reason.
    Error(ErrorReason),
    /// The client broke off; nothing to answer.
    Abandon,
}

enum Next {
    Retry,
    Fresh,
    Stop,
}

impl Next {
    /// Records the decision in the attempt loop's state; true when the loop goes on.
    fn apply(
        self,
        tried: &mut upstream::Tried,
        endpoint: SocketAddr,
        fresh_retried: &mut bool,
        force_fresh: &mut bool,
    ) -> bool {
        match self {
            Next::Retry => {
                tried.add(endpoint);
                true
            }
            Next::Fresh => {
                *fresh_retried = true;
                *force_fresh = true;
                true
            }
            Next::Stop => false,
        }
    }
}

/// Applies the retry decision, the budget and the back-off (sleeping it here).
#[allow(clippy::too_many_arguments)]
async fn decide(
    worker: &Worker,
    svc: &ServiceRef,
    policy: &RetryPolicy,
    outcome: &Outcome,
    attempt: u32,
    ctx: &RequestCtx,
    retry_after: Option<Duration>,
    deadline: Instant,
) -> Next {
    match retry::retry_decision(policy, outcome, attempt, ctx) {
        Decision::Stop(StopReason::Completed) | Decision::Stop(_) => Next::Stop,
        Decision::RetrySameEndpointFreshConnection => {
            with_stats(worker, svc, |s| s.retry(RetryReason::KeepaliveRace));
            Next::Fresh
        }
        Decision::Retry => {
            let now = Instant::now();
            // The budget protects endpoints from load that retries add. A request no endpoint
            // received (refused or timed-out connect) adds none when it is retried elsewhere,
            // so such retries are bounded by `attempts` alone.
            let nothing_sent =
                matches!(outcome, Outcome::ConnectFailure | Outcome::ConnectTimeout | Outcome::ResetBeforeWrite);
            let (granted, delay) = {
                let mut local = worker.local.borrow_mut();
                let local = &mut *local;
                let granted = nothing_sent || local.resolve(svc).is_some_and(|ls| ls.budget.try_withdraw(now));
                let backoff = retry::backoff(policy, attempt, &mut local.rng);
                (granted, retry::retry_delay(outcome, retry_after, backoff, deadline.saturating_duration_since(now)))
            };
            if !granted {
                with_stats(worker, svc, |s| s.budget_exhausted += 1);
                return Next::Stop;
            }
            let Some(delay) = delay else { return Next::Stop };
            with_stats(worker, svc, |s| s.retry(retry_reason(outcome)));
            if !delay.is_zero() {
                crate::io::sleep(delay).await;
            }
            Next::Retry
        }
    }
}

fn retry_reason(o: &Outcome) -> RetryReason {
    match o {
        Outcome::ConnectFailure | Outcome::ConnectTimeout => RetryReason::ConnectFailure,
        Outcome::ResetBeforeWrite => RetryReason::KeepaliveRace,
        Outcome::Timeout => RetryReason::Timeout,
        Outcome::Response { status: 503 } => RetryReason::Status503,
        Outcome::Response { .. } => RetryReason::Status5xx,
        _ => RetryReason::Reset,
    }
}

enum HeadOutcome {
    Head,
    Failed(Outcome),
}

/// Reads the final response head into `ubuf`/`resp`, forwarding interim 1xx heads to an
/// HTTP/1.1 client (a 100 Continue is swallowed when weir already sent its own).
#[allow(clippy::too_many_arguments)]
async fn read_response_head(
    up: &mut Conn,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    limits: &HeadLimits,
    is_head: bool,
    deadline: Instant,
    client: &mut Conn,
    client_version: Version,
    sent_continue: bool,
) -> HeadOutcome {
    loop {
        if !ubuf.is_empty() {
            match http::parse_response(ubuf, limits, is_head, resp) {
                Ok(Status::Complete(n)) if resp.is_interim() => {
                    if client_version == Version::Http11 && !(resp.code == 100 && sent_continue) {
                        let mut out = Vec::with_capacity(64);
                        http::write_response_head(resp, ubuf, &mut out, &[], client_version, false);
                        let (_, _) = client.write_all(out).await;
                    }
                    ubuf.drain(..n);
                    continue;
                }
                Ok(Status::Complete(_)) => return HeadOutcome::Head,
                Ok(Status::Partial) => {}
                Err(_) => return HeadOutcome::Failed(Outcome::ProtocolError),
            }
        }
        if ubuf.capacity() - ubuf.len() < 1024 {
            ubuf.reserve(body::STREAM_READ_BYTES);
        }
        match until(deadline, up.read(std::mem::take(ubuf))).await {
            None => return HeadOutcome::Failed(Outcome::Timeout),
            Some((res, b)) => {
                *ubuf = b;
                match res {
                    Ok(0) | Err(_) => return HeadOutcome::Failed(Outcome::ResetAfterWrite),
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Writes weir's own error response and fills in the exchange.
async fn finish_error(down: &mut Downstream, ex: &mut Exchange, reason: ErrorReason, plan: &Plan, info: &RequestInfo) {
    // After a failed streamed body the request framing is unknown: close.
    let close = !plan.client_keep_alive || !plan.buffered_body;
    respond_error(down, reason, None, close, info.is_head).await;
    ex.status = reason.status();
    ex.error = Some(reason);
    ex.keep_alive = !close && !reason.closes_connection();
}

/// Streams the endpoint's response to the client and returns the connection to the pool when
/// both sides of the exchange completed cleanly.
#[allow(clippy::too_many_arguments)]
async fn stream_response(
    worker: &Worker,
    svc: &ServiceRef,
    down: &mut Downstream,
    mut up: Conn,
    picked: &Picked,
    resp: &mut ResponseHead,
    ubuf: &mut Vec<u8>,
    wbuf: &mut Vec<u8>,
    plan: &Plan,
    ex: &mut Exchange,
) {
    let close = !plan.client_keep_alive || worker.draining();
    wbuf.clear();
    let framing = http::write_response_head(resp, ubuf, wbuf, &[VIA], plan.client_version, close);
    ex.status = resp.code;
    let upstream_framing = resp.body;
    let upstream_reusable = resp.keep_alive && upstream_framing != BodyFraming::CloseDelimited;
    let head_len = resp.head_len;
    ubuf.drain(..head_len);
    // A small body that already arrived with the head goes out in the same write.
    let mut upstream_framing = upstream_framing;
    if let (BodyFraming::ContentLength(n), BodyFraming::ContentLength(_)) = (upstream_framing, framing.framing)
        && ubuf.len() as u64 >= n
    {
        wbuf.extend_from_slice(&ubuf[..n as usize]);
        ubuf.drain(..n as usize);
        ex.bytes_out = n;
        upstream_framing = BodyFraming::ContentLength(0);
    }
    let (res, b) = down.conn.write_all(std::mem::take(wbuf)).await;
    *wbuf = b;
    if res.is_err() {
        with_stats(worker, svc, |s| s.upstream_connections -= 1);
        ex.keep_alive = false;
        return;
    }
    let out = if framing.framing == BodyFraming::Chunked { OutFraming::Chunked } else { OutFraming::Raw };
    wbuf.clear();
    let src = Source { conn: &mut up, buf: ubuf, base: 0 };
    let idle = plan.request_timeout;
    match body::pump(src, &mut down.conn, upstream_framing, out, idle, wbuf).await {
        Ok(n) => {
            ex.bytes_out += n;
            ex.keep_alive = !framing.close;
            if upstream_reusable && ubuf.is_empty() && !worker.draining() {
                let mut local = worker.local.borrow_mut();
                let same = local.snapshot.generation == picked.generation;
                if let Some(pool) = local.resolve(svc).filter(|_| same).and_then(|ls| ls.pools.get_mut(picked.index)) {
                    pool.put(up, Instant::now(), plan.max_idle);
                    return;
                }
            }
            with_stats(worker, svc, |s| s.upstream_connections -= 1);
        }
        Err(e) => {
            // The response broke off after its head: the client must not mistake a cut body
            // for a whole one, so its connection is reset.
            with_stats(worker, svc, |s| s.upstream_connections -= 1);
            if e != PumpError::Destination {
                upstream::report_health(worker, svc, picked, &Outcome::ResetAfterResponseStarted);
            }
            ex.keep_alive = false;
            down.conn.abort_ref();
        }
    }
}
