//! The attempt loop every request goes through, whatever the client and the endpoint speak:
//! pick an endpoint, run one attempt (an [`Attempter`] says how: HTTP/1.1, HTTP/2), report it
//! once, let the pure [`weir_core::retry::next_step`] decide (respond / retry after a delay /
//! retry fresh / fail); and what an exchange records ([`Exchange`]), including a response cut
//! after its head. Must not: write to the client, or hold the state borrow across an `.await`.

use std::net::SocketAddr;

use weir_core::outcome::{ErrorReason, Outcome};
use weir_core::retry::{Attempted, RequestCtx, Step};
use weir_core::stats::RetryReason;

use crate::body::PumpError;
use crate::ctx::Ctx;
use crate::plan::{AttemptResult, Attempter, Call, ClientFault};
use crate::state::{Picked, Scope, Tried};

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
    /// The client spoke HTTP/2.
    pub h2: bool,
    /// gRPC: the call's final `grpc-status`.
    pub grpc: Option<u8>,
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

/// The attempt loop: one result per attempt, one report, one decision.
pub(crate) async fn attempts<A: Attempter>(call: Call<'_>, a: &mut A, ex: &mut Exchange) -> End<A::Up> {
    let Call { ctx, scope, plan } = call;
    let mut tried = Tried::default();
    let mut attempt: u32 = 0;
    let mut fresh = false;
    let mut fresh_retried = false;
    let mut last: Option<Outcome> = None;
    loop {
        let now = crate::io::now();
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
        ctx.state.borrow_mut().report(scope, &picked, &r.outcome, r.latency, crate::io::now(), ctx.now_ms());
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
        let now = crate::io::now();
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

/// A response broken off after its head: an endpoint failure the client must see as a cut
/// (its connection is reset, never closed cleanly), or a client that stopped reading.
pub(crate) fn cut(ctx: &Ctx, scope: &Scope, picked: &Picked, e: PumpError, ex: &mut Exchange) {
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
