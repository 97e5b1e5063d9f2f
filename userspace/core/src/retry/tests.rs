//! Tests of the retry policy, back-off, `Retry-After` and the budget, with injected time and
//! seeded RNGs.

use super::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// GET with no body, bytes written, fresh connection.
const SAFE: RequestCtx = RequestCtx {
    idempotent: true,
    replayable: true,
    request_bytes_written: true,
    reused_connection: false,
    fresh_connection_retried: false,
};
/// POST with a replayable (buffered) body.
const POST: RequestCtx = RequestCtx { idempotent: false, ..SAFE };
/// PUT whose body was streamed (too large to buffer).
const STREAMED: RequestCtx = RequestCtx { replayable: false, ..SAFE };

fn decide(outcome: Outcome, attempt: u32, ctx: RequestCtx) -> Decision {
    retry_decision(&RetryPolicy::default(), &outcome, attempt, &ctx)
}

fn stop(why: StopReason) -> Decision {
    Decision::Stop(why)
}

#[test]
fn nothing_sent_is_always_retried() {
    let streamed_post = RequestCtx { replayable: false, ..POST };
    for outcome in [Outcome::ConnectFailure, Outcome::ConnectTimeout, Outcome::ResetBeforeWrite] {
        assert_eq!(decide(outcome, 1, streamed_post), Decision::Retry, "{outcome:?}");
    }
    let not_written = RequestCtx { request_bytes_written: false, ..streamed_post };
    assert_eq!(decide(Outcome::Timeout, 1, not_written), Decision::Retry);
}

#[test]
fn keep_alive_race_gets_one_fresh_connection_retry() {
    let reused = RequestCtx { reused_connection: true, request_bytes_written: false, ..POST };
    assert_eq!(decide(Outcome::ResetBeforeWrite, 1, reused), Decision::RetrySameEndpointFreshConnection);
    // Even with attempts exhausted: it does not consume one.
    assert_eq!(decide(Outcome::ResetBeforeWrite, 3, reused), Decision::RetrySameEndpointFreshConnection);
    let used = RequestCtx { fresh_connection_retried: true, ..reused };
    assert_eq!(decide(Outcome::ResetBeforeWrite, 1, used), Decision::Retry);
    assert_eq!(decide(Outcome::ResetBeforeWrite, 3, used), stop(StopReason::AttemptsExhausted));
}

#[test]
fn unavailable_is_retried_for_any_method_with_a_replayable_body() {
    let r503 = Outcome::Response { status: 503 };
    assert_eq!(decide(r503, 1, POST), Decision::Retry);
    assert_eq!(decide(r503, 1, STREAMED), stop(StopReason::NotReplayable));
    assert_eq!(
        decide(Outcome::Response { status: 429 }, 1, SAFE),
        stop(StopReason::NotEnabled),
        "429 is off by default"
    );
    let with_429 =
        RetryPolicy { retry_on: RetryOn { rate_limited: true, ..RetryOn::default() }, ..RetryPolicy::default() };
    let r429 = Outcome::Response { status: 429 };
    assert_eq!(retry_decision(&with_429, &r429, 1, &POST), Decision::Retry);
}

#[test]
fn after_bytes_were_sent_only_idempotent_and_replayable() {
    for outcome in [
        Outcome::Response { status: 500 },
        Outcome::Response { status: 502 },
        Outcome::Response { status: 504 },
        Outcome::ResetAfterWrite,
        Outcome::ProtocolError,
        Outcome::Timeout,
    ] {
        assert_eq!(decide(outcome, 1, SAFE), Decision::Retry, "{outcome:?}");
        assert_eq!(decide(outcome, 2, SAFE), Decision::Retry, "{outcome:?}");
        assert_eq!(decide(outcome, 1, POST), stop(StopReason::NotIdempotent), "{outcome:?}");
        assert_eq!(decide(outcome, 1, STREAMED), stop(StopReason::NotReplayable), "{outcome:?}");
    }
}

#[test]
fn never_retried_outcomes() {
    for status in [200, 204, 301, 304, 400, 404, 499] {
        let outcome = Outcome::Response { status };
        assert_eq!(decide(outcome, 1, SAFE), stop(StopReason::Completed), "{status}");
    }
    assert_eq!(decide(Outcome::ResetAfterResponseStarted, 1, SAFE), stop(StopReason::NeverRetried));
    assert_eq!(decide(Outcome::LocalError, 1, SAFE), stop(StopReason::NeverRetried));
}

#[test]
fn attempts_are_counted_and_flags_respected() {
    // Default: 3 attempts = 2 retries.
    assert_eq!(decide(Outcome::ConnectFailure, 2, SAFE), Decision::Retry);
    assert_eq!(decide(Outcome::ConnectFailure, 3, SAFE), stop(StopReason::AttemptsExhausted));
    let single = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    assert_eq!(retry_decision(&single, &Outcome::ConnectFailure, 1, &SAFE), stop(StopReason::AttemptsExhausted));
    let no_5xx =
        RetryPolicy { retry_on: RetryOn { server_error: false, ..RetryOn::default() }, ..RetryPolicy::default() };
    let r500 = Outcome::Response { status: 500 };
    assert_eq!(retry_decision(&no_5xx, &r500, 1, &SAFE), stop(StopReason::NotEnabled));
    assert_eq!(stop(StopReason::NotEnabled), Decision::Stop(StopReason::NotEnabled));
    assert_eq!(StopReason::AttemptsExhausted.as_str(), "attempts_exhausted");
}

#[test]
fn idempotent_methods_and_replayable_bodies() {
    for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent_method(m.as_bytes()), "{m}");
    }
    for m in ["POST", "PATCH", "CONNECT", "get"] {
        assert!(!is_idempotent_method(m.as_bytes()), "{m}");
    }
    let p = RetryPolicy::default();
    assert!(p.body_is_replayable(0, true));
    assert!(p.body_is_replayable(64 * 1024, true));
    assert!(!p.body_is_replayable(64 * 1024 + 1, true));
    assert!(!p.body_is_replayable(10, false));
}

#[test]
fn backoff_is_full_jitter_exponential_and_capped() {
    let policy = RetryPolicy::default();
    let mut rng = SmallRng::seed_from_u64(1);
    for (n, window_ms) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (40, 250)] {
        let window = Duration::from_millis(window_ms);
        let samples: Vec<Duration> = (0..2_000).map(|_| backoff(&policy, n, &mut rng)).collect();
        assert!(samples.iter().all(|&d| d <= window), "retry {n}: within 0..={window:?}");
        let max = samples.iter().max().copied().expect("samples");
        let min = samples.iter().min().copied().expect("samples");
        assert!(max > window * 9 / 10 && min < window / 10, "retry {n}: spread over the window");
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!(mean > window * 4 / 10 && mean < window * 6 / 10, "retry {n}: mean {mean:?}");
    }
    let zero = RetryPolicy { backoff_base: Duration::ZERO, ..policy };
    assert_eq!(backoff(&zero, 1, &mut rng), Duration::ZERO);
}

#[test]
fn retry_after_parses_seconds_and_dates() {
    let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:07 GMT").expect("valid date");
    let secs = Duration::from_secs;
    assert_eq!(parse_retry_after(b"120", now), Some(secs(120)));
    assert_eq!(parse_retry_after(b" 5\t", now), Some(secs(5)));
    assert_eq!(parse_retry_after(b"0", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now), Some(secs(30)));
    assert_eq!(parse_retry_after(b"Sunday, 06-Nov-94 08:49:37 GMT", now), Some(secs(30)));
    assert_eq!(parse_retry_after(b"Sun Nov  6 08:49:37 1994", now), Some(secs(30)));
    assert_eq!(parse_retry_after(b"Sun, 06 Nov 1994 08:48:00 GMT", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after(b"99999999999999999999999", now), Some(secs(u64::MAX)));
    for bad in [&b""[..], b"  ", b"-5", b"1.5", b"soon", b"\xff", b"Sun, 32 Nov 1994 08:49:37 GMT"] {
        assert_eq!(parse_retry_after(bad, now), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn retry_after_is_honoured_only_before_the_deadline() {
    let ms = Duration::from_millis;
    let r503 = Outcome::Response { status: 503 };
    let r429 = Outcome::Response { status: 429 };
    assert_eq!(retry_delay(&r503, Some(ms(2_000)), ms(10), ms(15_000)), Some(ms(2_000)));
    assert_eq!(retry_delay(&r429, Some(ms(2_000)), ms(10), ms(15_000)), Some(ms(2_000)));
    assert_eq!(retry_delay(&r503, Some(ms(20_000)), ms(10), ms(15_000)), None, "past deadline");
    assert_eq!(retry_delay(&r503, None, ms(10), ms(15_000)), Some(ms(10)));
    // Retry-After on other statuses is not a retry instruction.
    let r500 = Outcome::Response { status: 500 };
    assert_eq!(retry_delay(&r500, Some(ms(20_000)), ms(10), ms(15_000)), Some(ms(10)));
    assert_eq!(retry_delay(&Outcome::ConnectFailure, None, ms(10), ms(10)), None);
    // gRPC pushback (gRFC A6): a wait, or "do not retry" (Duration::MAX).
    let unavailable = Outcome::Grpc { code: 14 };
    assert_eq!(retry_delay(&unavailable, Some(ms(300)), ms(10), ms(15_000)), Some(ms(300)));
    assert_eq!(retry_delay(&unavailable, Some(Duration::MAX), ms(10), ms(15_000)), None);
    assert_eq!(retry_delay(&unavailable, None, ms(10), ms(15_000)), Some(ms(10)));
}

/// Simulate `rate` original requests per second for `secs` seconds on one core, each wanting
/// `wanted` retries scheduled right after it; return the retries granted.
fn simulate(budget: &mut RetryBudget, start: Instant, rate: u32, secs: u32, wanted: u32) -> u32 {
    let mut granted = 0;
    for i in 0..rate * secs {
        let now = start + Duration::from_secs(1) * i / rate;
        budget.record_request(now);
        for _ in 0..wanted {
            granted += u32::from(budget.try_withdraw(now));
        }
    }
    granted
}

#[test]
fn budget_bounds_retries_to_ratio_plus_floor() {
    let policy = BudgetPolicy::default();
    let (rate, secs) = (100u32, 60u32);
    let mut budget = RetryBudget::new(policy, 1);
    let granted = simulate(&mut budget, Instant::now(), rate, secs, 2);
    let earned = f64::from(rate * secs) * policy.ratio + f64::from(policy.min_retries_per_sec * secs);
    let reserve = f64::from(policy.min_retries_per_sec) * FLOOR_RESERVE.as_secs_f64();
    let granted = f64::from(granted);
    assert!(granted <= earned + reserve + 1e-6, "granted {granted}, bound {}", earned + reserve);
    assert!(granted >= earned * 0.95, "granted {granted} of {earned} earned: tokens were wasted");
    assert!(granted < f64::from(rate * secs * 2) * 0.2, "far below the 2 retries per request wanted");
}

#[test]
fn budget_floor_is_split_across_workers() {
    let policy = BudgetPolicy::default();
    let mut budget = RetryBudget::new(policy, 4);
    assert_eq!(budget.floor_per_sec(), 2.5);
    let t0 = Instant::now();
    assert!((budget.available(t0) - 2.5).abs() < 1e-6, "a new budget starts with 1 s of floor");
    assert!(budget.try_withdraw(t0) && budget.try_withdraw(t0) && !budget.try_withdraw(t0));
    // No traffic: 10 s of floor gives 2.5 per second, no more.
    let mut later = 0;
    for ms in (0..10_000).step_by(10) {
        later += u32::from(budget.try_withdraw(t0 + Duration::from_millis(ms + 10)));
    }
    assert!((24..=25).contains(&later), "floor over 10 s: {later}");
    // Unused floor is saved up for one second only.
    let idle = t0 + Duration::from_secs(60);
    assert!((budget.available(idle) - 2.5).abs() < 1e-6, "reserve {}", budget.available(idle));
}

#[test]
fn burst_after_idle_is_bounded_by_the_cap() {
    let policy = BudgetPolicy::default();
    let t0 = Instant::now();
    let mut budget = RetryBudget::new(policy, 1);
    // Busy without failures: 1000 req/s for 10 s, then idle for 2 minutes.
    for i in 0..10_000u32 {
        budget.record_request(t0 + Duration::from_millis(u64::from(i)));
    }
    let burst_at = t0 + Duration::from_secs(130);
    let cap = f64::from(policy.min_retries_per_sec) * FLOOR_RESERVE.as_secs_f64();
    // Deposits decay with a 10 s time constant: after 120 s, e^-12 of them remain.
    let left = budget.available(burst_at);
    assert!(left <= cap + 0.1, "earlier deposits expired, {left} tokens left");
    // 500 requests arrive at once and all fail, each wanting 2 retries.
    let mut granted = 0u32;
    for _ in 0..500 {
        budget.record_request(burst_at);
        granted += u32::from(budget.try_withdraw(burst_at));
        granted += u32::from(budget.try_withdraw(burst_at));
    }
    let bound = cap + 500.0 * policy.ratio;
    assert!(f64::from(granted) <= bound + 0.1, "burst granted {granted}, bound {bound}");
    assert!(f64::from(granted) >= bound - 1.0, "the cap and the burst's deposits are usable");
}

#[test]
fn disabled_budget_never_refuses() {
    let mut budget = RetryBudget::new(BudgetPolicy { enabled: false, ..BudgetPolicy::default() }, 8);
    let t0 = Instant::now();
    assert!((0..10_000).all(|_| budget.try_withdraw(t0)));
}

#[test]
fn five_requests_earn_one_retry() {
    let mut budget = RetryBudget::new(BudgetPolicy { min_retries_per_sec: 0, ..BudgetPolicy::default() }, 1);
    let t0 = Instant::now();
    assert!(!budget.try_withdraw(t0), "no floor, no requests: no retry");
    for _ in 0..4 {
        budget.record_request(t0);
    }
    assert!(!budget.try_withdraw(t0));
    budget.record_request(t0);
    assert!(budget.try_withdraw(t0), "5 × 0.2 = 1 token");
    assert!(!budget.try_withdraw(t0));
}

fn attempted(outcome: Outcome, attempt: u32, ctx: RequestCtx) -> Attempted {
    Attempted { outcome, attempt, ctx, retry_after: None }
}

#[test]
fn next_step_relays_responses_and_fails_with_the_last_reason() {
    let (p, now) = (RetryPolicy::default(), Instant::now());
    let mut b = RetryBudget::new(BudgetPolicy::default(), 1);
    let mut rng = SmallRng::seed_from_u64(1);
    let left = Duration::from_secs(10);
    let n = next_step(&p, &attempted(Outcome::Response { status: 404 }, 1, SAFE), left, &mut b, now, &mut rng);
    assert_eq!(n, Next { step: Step::Respond, budget_exhausted: false });
    let n = next_step(&p, &attempted(Outcome::ResetAfterWrite, 1, POST), left, &mut b, now, &mut rng);
    assert_eq!(n.step, Step::Fail(ErrorReason::UpstreamReset), "a POST is not retried after bytes were sent");
    let n = next_step(&p, &attempted(Outcome::Response { status: 503 }, 3, SAFE), left, &mut b, now, &mut rng);
    assert_eq!(n.step, Step::Respond, "the last 503 is passed through");
    let n = next_step(&p, &attempted(Outcome::LocalResource, 1, SAFE), left, &mut b, now, &mut rng);
    assert_eq!(n.step, Step::Fail(ErrorReason::Overloaded), "weir's own limits are never retried");
}

#[test]
fn next_step_retries_with_back_off_and_counts_the_budget() {
    let (p, now) = (RetryPolicy::default(), Instant::now());
    let mut rng = SmallRng::seed_from_u64(2);
    let left = Duration::from_secs(10);
    // An empty budget: a retry after bytes were sent is refused, a refused connect is not.
    let mut b = RetryBudget::new(BudgetPolicy { min_retries_per_sec: 0, ratio: 0.0, enabled: true }, 1);
    let n = next_step(&p, &attempted(Outcome::Timeout, 1, SAFE), left, &mut b, now, &mut rng);
    assert_eq!(n, Next { step: Step::Fail(ErrorReason::Timeout), budget_exhausted: true });
    let n = next_step(&p, &attempted(Outcome::ConnectFailure, 1, SAFE), left, &mut b, now, &mut rng);
    match n.step {
        Step::Retry { delay, reason } => {
            assert!(delay <= p.backoff_base, "first back-off window is the base: {delay:?}");
            assert_eq!(reason, RetryReason::ConnectFailure);
        }
        other => panic!("a refused connect is retried: {other:?}"),
    }
    // A Retry-After beyond the deadline: the 503 is passed through.
    let mut b = RetryBudget::new(BudgetPolicy::default(), 1);
    let a = Attempted {
        retry_after: Some(Duration::from_secs(30)),
        ..attempted(Outcome::Response { status: 503 }, 1, SAFE)
    };
    assert_eq!(next_step(&p, &a, left, &mut b, now, &mut rng).step, Step::Respond);
    let a = Attempted { retry_after: Some(Duration::from_millis(5)), ..a };
    assert_eq!(
        next_step(&p, &a, left, &mut b, now, &mut rng).step,
        Step::Retry { delay: Duration::from_millis(5), reason: RetryReason::Status503 }
    );
    // The keep-alive race on a reused connection: once, at once.
    let raced = RequestCtx { reused_connection: true, request_bytes_written: false, ..POST };
    let n = next_step(&p, &attempted(Outcome::ResetBeforeWrite, 1, raced), left, &mut b, now, &mut rng);
    assert_eq!(n.step, Step::RetryFresh);
    let again = RequestCtx { fresh_connection_retried: true, ..raced };
    let n = next_step(&p, &attempted(Outcome::ResetBeforeWrite, 1, again), left, &mut b, now, &mut rng);
    assert!(matches!(n.step, Step::Retry { reason: RetryReason::KeepaliveRace, .. }), "{n:?}");
}
