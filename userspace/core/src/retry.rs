//! Retries: when an attempt may be retried, how long to wait, and how many retries the service
//! can afford.
//!
//! Owns: the retry policy (its defaults are the config's), the retry decision for a finished
//! attempt, full-jitter back-off, `Retry-After` parsing, and the per-core retry budget.
//! Must not: pick endpoints (the balancer does, with the failed endpoint as `avoid`), read the
//! clock (time is a `std::time::Instant`, or a `SystemTime` for HTTP dates, passed in), use
//! ambient randomness (the RNG is the caller's), share state between cores (a [`RetryBudget`]
//! is per worker), or allocate.
//!
//! The attempt loop calls one function after every attempt, [`next_step`], which combines
//! [`retry_decision`] → (on `Retry`) [`RetryBudget::try_withdraw`] → [`backoff`] / [`retry_delay`]
//! into one answer: relay the response, retry after a delay, retry at once on a fresh
//! connection, or fail with a reason. It never waits: the caller sleeps the delay. The
//! keep-alive-race retry ([`Decision::RetrySameEndpointFreshConnection`]) skips the budget and
//! the back-off.

use crate::outcome::{ErrorReason, Outcome};
use crate::stats::RetryReason;
use rand::Rng;
use std::time::{Duration, Instant, SystemTime};

/// Which failures are retried. Each flag only opens the door: safety rules (idempotent method,
/// replayable body) still apply as documented per flag. Defaults: the config's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// Connect failure, connect timeout, or reset with zero request bytes written: nothing was
    /// sent, any method. Default: true.
    pub connect_failure: bool,
    /// A 503 response, any method (the endpoint refused before processing); needs a replayable
    /// body. Default: true.
    pub unavailable: bool,
    /// A 429 response, any method, replayable body. Default: false.
    pub rate_limited: bool,
    /// Any other 5xx response; idempotent method and replayable body only. Default: true.
    pub server_error: bool,
    /// Reset or invalid response after request bytes were written; idempotent and replayable
    /// only. Default: true.
    pub reset: bool,
    /// No response head within the per-attempt timeout; idempotent and replayable only (unless
    /// no request byte was written). Default: true.
    pub timeout: bool,
    /// gRPC statuses retried (a trailers-only response), replayable body only. Default:
    /// `unavailable`.
    pub grpc: crate::grpc::CodeSet,
}

impl RetryOn {
    /// What is always retried; `server_error`, `rate_limited` and `grpc` come from the config.
    pub const fn with(server_error: bool, rate_limited: bool, grpc: crate::grpc::CodeSet) -> RetryOn {
        RetryOn {
            connect_failure: true,
            unavailable: true,
            rate_limited,
            server_error,
            reset: true,
            timeout: true,
            grpc,
        }
    }
}

impl Default for RetryOn {
    /// The config's defaults (`[service.retry] on_server_error`, `on_rate_limited`).
    fn default() -> Self {
        crate::config::ServiceConfig::defaults().retry_policy().retry_on
    }
}

/// The retry budget: retries may add at most `ratio` to the request rate, with a floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// Retry tokens earned per original request. Default: 0.2 (retries add ≤ 20 % load).
    pub ratio: f64,
    /// Retries per second always allowed for the whole service (split across worker cores).
    /// Default: 10.
    pub min_retries_per_sec: u32,
    /// When false, retries are limited only by `attempts`. Default: true.
    pub enabled: bool,
}

impl Default for BudgetPolicy {
    /// The config's defaults (`[service.retry]`).
    fn default() -> Self {
        crate::config::ServiceConfig::defaults().budget_policy()
    }
}

/// Retry policy of a service. Defaults: the config's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (3 = 2 retries). 1 disables retries. Default: 3.
    pub attempts: u32,
    /// Which failures are retried.
    pub retry_on: RetryOn,
    /// Back-off before retry n is uniform in `0..=min(backoff_max, backoff_base × 2^(n-1))`.
    /// Default: 25 ms.
    pub backoff_base: Duration,
    /// Cap of the back-off window. Default: 250 ms.
    pub backoff_max: Duration,
    /// Timeout of one attempt (until the response head). Default: unset (only the request
    /// timeout applies).
    pub per_attempt_timeout: Option<Duration>,
    /// Request bodies up to this size are buffered and can be replayed. Default: 64 KiB.
    pub replay_buffer_bytes: u64,
    /// The retry budget.
    pub budget: BudgetPolicy,
}

impl Default for RetryPolicy {
    /// The config's defaults (`[service.retry]`, `[service.timeouts]`).
    fn default() -> Self {
        crate::config::ServiceConfig::defaults().retry_policy()
    }
}

impl RetryPolicy {
    /// Whether a request body can be replayed: fully received (`complete`) and at most
    /// `replay_buffer_bytes` long. A request without a body is `(0, true)`.
    pub fn body_is_replayable(&self, body_bytes: u64, complete: bool) -> bool {
        complete && body_bytes <= self.replay_buffer_bytes
    }
}

/// Whether a request method is idempotent, the one definition weir uses for retries: RFC 9110
/// 9.2.2's list, GET HEAD OPTIONS TRACE PUT DELETE (TRACE included: it is safe, and weir only
/// ever retries it with its whole request held). Case-sensitive, as methods are.
pub fn is_idempotent_method(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

/// What the retry decision needs to know about the request and the attempt that just finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCtx {
    /// The method is idempotent ([`is_idempotent_method`]).
    pub idempotent: bool,
    /// The request can be sent again: no body, or a body fully buffered within
    /// `replay_buffer_bytes` ([`RetryPolicy::body_is_replayable`]).
    pub replayable: bool,
    /// At least one request byte was written to the endpoint in this attempt.
    pub request_bytes_written: bool,
    /// The attempt used a pooled (reused keep-alive) connection.
    pub reused_connection: bool,
    /// This request already used its transparent fresh-connection retry.
    pub fresh_connection_retried: bool,
}

/// What to do after a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Retry on a different endpoint (when one exists), after the budget allows it and after
    /// the back-off. Consumes an attempt.
    Retry,
    /// The keep-alive race: a reused connection was closed before any request byte was written.
    /// Retry once, at once, on a fresh connection to the same endpoint. Consumes neither an
    /// attempt nor budget, and is not an endpoint failure.
    RetrySameEndpointFreshConnection,
    /// Do not retry; the outcome is final.
    Stop(StopReason),
}

/// Why an attempt is not retried (bounded label set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The attempt succeeded, or the response is the client's to see (1xx–4xx).
    Completed,
    /// The outcome is never retried (response already streaming, weir's own error).
    NeverRetried,
    /// The outcome could be retried but `retry_on` does not enable it.
    NotEnabled,
    /// Bytes were sent and the method is not idempotent.
    NotIdempotent,
    /// The request body cannot be sent again.
    NotReplayable,
    /// `attempts` reached.
    AttemptsExhausted,
}

impl StopReason {
    /// snake_case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::Completed => "completed",
            StopReason::NeverRetried => "never_retried",
            StopReason::NotEnabled => "not_enabled",
            StopReason::NotIdempotent => "not_idempotent",
            StopReason::NotReplayable => "not_replayable",
            StopReason::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

/// What must hold about the request for a retry to be safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Safety {
    /// Nothing was sent: always safe.
    NothingSent,
    /// The endpoint refused before processing: the request must be sendable again.
    Replayable,
    /// The endpoint may have processed it: idempotent and sendable again.
    IdempotentReplayable,
}

/// Decide whether the attempt that just finished (`attempt`, 1-based) is retried, per
/// the failure table of docs/OPERATING.md:
///
/// | outcome | retried when |
/// |---|---|
/// | connect failure / timeout, reset before write | always (nothing sent); the first reset on a reused connection → [`Decision::RetrySameEndpointFreshConnection`] |
/// | 503 (429 if enabled) | body replayable |
/// | other 5xx, reset after write, protocol error, timeout after bytes were written | idempotent and replayable |
/// | 1xx–4xx, reset after response started, local error | never |
///
/// The budget, back-off and request deadline are checked by the caller afterwards.
pub fn retry_decision(policy: &RetryPolicy, outcome: &Outcome, attempt: u32, ctx: &RequestCtx) -> Decision {
    let on = &policy.retry_on;
    let (enabled, safety) = match *outcome {
        Outcome::Response { status: 503 } => (on.unavailable, Safety::Replayable),
        Outcome::Response { status: 429 } => (on.rate_limited, Safety::Replayable),
        Outcome::Response { status: 500..=599 } => (on.server_error, Safety::IdempotentReplayable),
        Outcome::Response { .. } => return Decision::Stop(StopReason::Completed),
        Outcome::Grpc { code } if on.grpc.contains(code) => (true, Safety::Replayable),
        Outcome::Grpc { .. } => return Decision::Stop(StopReason::NotEnabled),
        Outcome::ConnectFailure | Outcome::ConnectTimeout => (on.connect_failure, Safety::NothingSent),
        Outcome::ResetBeforeWrite => {
            if ctx.reused_connection && !ctx.fresh_connection_retried {
                return Decision::RetrySameEndpointFreshConnection;
            }
            (on.connect_failure, Safety::NothingSent)
        }
        Outcome::ResetAfterWrite | Outcome::ProtocolError => (on.reset, Safety::IdempotentReplayable),
        Outcome::Timeout if ctx.request_bytes_written => (on.timeout, Safety::IdempotentReplayable),
        Outcome::Timeout => (on.timeout, Safety::NothingSent),
        Outcome::ResetAfterResponseStarted | Outcome::LocalResource | Outcome::LocalError => {
            return Decision::Stop(StopReason::NeverRetried);
        }
    };
    if !enabled {
        return Decision::Stop(StopReason::NotEnabled);
    }
    if attempt >= policy.attempts {
        return Decision::Stop(StopReason::AttemptsExhausted);
    }
    match safety {
        Safety::NothingSent => {}
        Safety::IdempotentReplayable if !ctx.idempotent => {
            return Decision::Stop(StopReason::NotIdempotent);
        }
        Safety::Replayable | Safety::IdempotentReplayable => {
            if !ctx.replayable {
                return Decision::Stop(StopReason::NotReplayable);
            }
        }
    }
    Decision::Retry
}

/// Full-jitter exponential back-off before retry `retry_number` (1 = the first retry): uniform
/// in `0..=min(backoff_max, backoff_base × 2^(retry_number-1))`.
pub fn backoff(policy: &RetryPolicy, retry_number: u32, rng: &mut impl Rng) -> Duration {
    let factor = 1u32.checked_shl(retry_number.max(1) - 1).unwrap_or(u32::MAX);
    let window = policy.backoff_base.saturating_mul(factor).min(policy.backoff_max);
    let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=window_ns))
}

/// Parse a `Retry-After` value: delta-seconds or an HTTP-date (IMF-fixdate, and the obsolete
/// RFC 850 and asctime forms recipients must accept). A date in the past is zero; delta-seconds
/// too large for a `u64` saturate. `None` when the value is malformed (then ignore it).
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to wait before a retry that [`retry_decision`] allowed, or `None` to not retry.
///
/// On a 503 or 429 with a `Retry-After` (`retry_after`, from [`parse_retry_after`]), or a gRPC
/// status with `grpc-retry-pushback-ms` (gRFC A6; `Duration::MAX` when the pushback says not
/// to retry), the wait is that value; otherwise `backoff` (from [`backoff`]). The retry happens
/// only if the wait ends before the request deadline (`time_left`, strictly).
pub fn retry_delay(
    outcome: &Outcome,
    retry_after: Option<Duration>,
    backoff: Duration,
    time_left: Duration,
) -> Option<Duration> {
    let wait = match (outcome, retry_after) {
        (Outcome::Response { status: 503 | 429 } | Outcome::Grpc { .. }, Some(after)) => after,
        _ => backoff,
    };
    (wait < time_left).then_some(wait)
}

/// What the attempt loop does after an attempt ([`next_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Relay the endpoint's response (the outcome is [`Outcome::Response`]).
    Respond,
    /// Retry on another endpoint (when one exists) once `delay` has passed.
    Retry {
        /// Back-off or the endpoint's `Retry-After`.
        delay: Duration,
        /// The `reason` label of the retry.
        reason: RetryReason,
    },
    /// The keep-alive race: retry at once, on a fresh connection to the same endpoint.
    RetryFresh,
    /// Answer the client with weir's own error.
    Fail(ErrorReason),
}

/// What [`next_step`] knows about the attempt that just finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    /// Its outcome.
    pub outcome: Outcome,
    /// Its number (1-based; the fresh-connection retry does not count).
    pub attempt: u32,
    /// The request and the attempt.
    pub ctx: RequestCtx,
    /// The endpoint's `Retry-After` on a 503 or 429 ([`parse_retry_after`]).
    pub retry_after: Option<Duration>,
}

/// The next step and whether the retry budget refused a retry on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// What to do.
    pub step: Step,
    /// A retry was allowed by the policy but refused by the budget (count it).
    pub budget_exhausted: bool,
}

/// Decides what follows an attempt: [`retry_decision`], then the budget (not drawn on when
/// nothing was sent: a refused connect adds no load to any endpoint), then the back-off or
/// `Retry-After`, which must end before the request deadline (`time_left`). Pure but for the
/// budget withdrawal and the RNG draw, both of which the caller owns; never waits.
pub fn next_step(
    policy: &RetryPolicy,
    a: &Attempted,
    time_left: Duration,
    budget: &mut RetryBudget,
    now: Instant,
    rng: &mut impl Rng,
) -> Next {
    let last = |budget_exhausted| {
        let step = match a.outcome {
            Outcome::Response { .. } | Outcome::Grpc { .. } => Step::Respond,
            ref o => Step::Fail(ErrorReason::for_failed_request(Some(o))),
        };
        Next { step, budget_exhausted }
    };
    match retry_decision(policy, &a.outcome, a.attempt, &a.ctx) {
        Decision::Stop(_) => last(false),
        Decision::RetrySameEndpointFreshConnection => Next { step: Step::RetryFresh, budget_exhausted: false },
        Decision::Retry => {
            let nothing_sent =
                matches!(a.outcome, Outcome::ConnectFailure | Outcome::ConnectTimeout | Outcome::ResetBeforeWrite);
            if !nothing_sent && !budget.try_withdraw(now) {
                return last(true);
            }
            let backoff = backoff(policy, a.attempt, rng);
            match retry_delay(&a.outcome, a.retry_after, backoff, time_left) {
                Some(delay) => Next {
                    step: Step::Retry { delay, reason: RetryReason::for_outcome(&a.outcome) },
                    budget_exhausted: false,
                },
                None => last(false),
            }
        }
    }
}

/// Time constant over which unused *earned* tokens (request deposits) are kept (10 s, as
/// Linkerd's budget TTL).
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// How much unused *floor* can be saved up: one second of it. Together with the deposits this
/// keeps the guarantee users can check from outside: over any run of T seconds with N original
/// requests, retries ≤ N × ratio + floor × (T + 1 s).
pub const FLOOR_RESERVE: Duration = Duration::from_secs(1);

/// Per-core retry budget: a token bucket (Linkerd/Envoy-like). Not shared between cores.
///
/// - Every original request deposits `ratio` tokens ([`RetryBudget::record_request`]).
/// - The floor adds `min_retries_per_sec / workers` tokens per second, continuously.
/// - The balance is capped at `recent deposits + floor × 1 s`, where recent deposits decay
///   with a 10 s time constant. A burst after idle therefore gets at most one second of floor
///   plus what the burst itself deposits.
/// - A new budget starts with that one second of floor, so the first failures after start-up
///   can be retried; no run can exceed `N × ratio + floor × (T + 1 s)`.
/// - Each retry withdraws one token when it is *scheduled* ([`RetryBudget::try_withdraw`]), so
///   retries waiting in back-off count against it.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    enabled: bool,
    ratio: f64,
    floor_per_sec: f64,
    balance: f64,
    /// Deposits of the last ~10 s (exponentially decayed), the variable part of the cap.
    recent_deposits: f64,
    last: Option<Instant>,
}

/// Floating-point slack so that five deposits of 0.2 make one token.
const TOKEN_EPSILON: f64 = 1e-9;

impl RetryBudget {
    /// A budget for one of `workers` worker cores (0 is treated as 1).
    pub fn new(policy: BudgetPolicy, workers: u32) -> RetryBudget {
        let ratio = if policy.ratio.is_finite() { policy.ratio.max(0.0) } else { 0.0 };
        let floor_per_sec = f64::from(policy.min_retries_per_sec) / f64::from(workers.max(1));
        RetryBudget {
            enabled: policy.enabled,
            ratio,
            floor_per_sec,
            balance: floor_per_sec * FLOOR_RESERVE.as_secs_f64(),
            recent_deposits: 0.0,
            last: None,
        }
    }

    /// Floor tokens per second on this core (`min_retries_per_sec / workers`).
    pub fn floor_per_sec(&self) -> f64 {
        self.floor_per_sec
    }

    fn cap(&self) -> f64 {
        self.recent_deposits + self.floor_per_sec * FLOOR_RESERVE.as_secs_f64()
    }

    fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        if now <= last {
            return;
        }
        let dt = now.duration_since(last).as_secs_f64();
        self.recent_deposits *= (-dt / BUDGET_WINDOW.as_secs_f64()).exp();
        self.balance = (self.balance + self.floor_per_sec * dt).min(self.cap());
        self.last = Some(now);
    }

    /// An original request (not a retry) started at `now`: deposit `ratio` tokens.
    pub fn record_request(&mut self, now: Instant) {
        self.refill(now);
        self.recent_deposits += self.ratio;
        self.balance = (self.balance + self.ratio).min(self.cap());
    }

    /// A retry is being scheduled at `now`: withdraw one token if available. Always true when
    /// the budget is disabled.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        if !self.enabled {
            return true;
        }
        self.refill(now);
        if self.balance + TOKEN_EPSILON >= 1.0 {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens available at `now` (for metrics and tests).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.balance
    }
}

#[cfg(test)]
mod tests;
