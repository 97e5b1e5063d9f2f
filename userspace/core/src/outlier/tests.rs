//! Tests of outlier detection, with injected time (`now_ms`) and seeded RNGs.

use super::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const FAIL: HealthSignal = HealthSignal::GatewayFailure;
const OK: HealthSignal = HealthSignal::Success;

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n).map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080))).collect()
}

/// Default policy without jitter, so ejection times are exact.
fn exact() -> OutlierPolicy {
    OutlierPolicy { jitter_ms: 0, ..OutlierPolicy::default() }
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(42)
}

/// Record `n` gateway failures on `ep` at `now`; return the last event.
fn fail_n(h: &ServiceHealth, ep: usize, n: u32, now: u64, rng: &mut SmallRng) -> Option<OutlierEvent> {
    (0..n).map(|_| h.record(ep, FAIL, now, rng)).last().flatten()
}

fn ejection(event: Option<OutlierEvent>) -> Ejection {
    match event {
        Some(OutlierEvent::Ejected(e)) => e,
        other => panic!("expected an ejection, got {other:?}"),
    }
}

#[test]
fn five_consecutive_failures_eject_four_do_not() {
    let h = ServiceHealth::new(exact(), &addrs(4));
    let mut rng = rng();
    assert_eq!(fail_n(&h, 0, 4, 1_000, &mut rng), None);
    assert!(h.is_eligible(0, 1_000), "4 failures do not eject");
    let e = ejection(h.record(0, FAIL, 1_000, &mut rng));
    assert_eq!(
        e,
        Ejection { endpoint: 0, until_ms: 31_000, duration_ms: 30_000, times_ejected: 1, from_probation: false }
    );
    assert!(!h.is_eligible(0, 1_000));
    assert!(!h.is_eligible(0, 30_999));
    assert!(h.is_eligible(1, 1_000), "other endpoints unaffected");
    assert_eq!(h.ejected_count(), 1);
    assert_eq!(h.eligibility(), Eligibility { healthy_count: 3, total: 4, panic: false });
}

#[test]
fn a_success_in_between_resets_the_count() {
    let h = ServiceHealth::new(exact(), &addrs(4));
    let mut rng = rng();
    fail_n(&h, 0, 4, 0, &mut rng);
    assert_eq!(h.record(0, OK, 0, &mut rng), None);
    assert_eq!(fail_n(&h, 0, 4, 0, &mut rng), None, "count restarted after the success");
    // Neutral outcomes neither count nor reset.
    assert_eq!(h.record(0, HealthSignal::Neutral, 0, &mut rng), None);
    assert!(matches!(h.record(0, FAIL, 0, &mut rng), Some(OutlierEvent::Ejected(_))));
}

#[test]
fn ejection_time_grows_with_times_ejected_and_is_capped() {
    let h = ServiceHealth::new(exact(), &addrs(2));
    let mut rng = rng();
    let mut e = ejection(fail_n(&h, 0, 5, 0, &mut rng));
    let mut durations = vec![e.duration_ms];
    for _ in 0..11 {
        // Expired: the probation request fails and re-ejects at once, for longer.
        let now = e.until_ms;
        assert!(h.is_eligible(0, now), "on probation at the end of the ejection");
        e = ejection(h.record(0, FAIL, now, &mut rng));
        assert!(e.from_probation);
        durations.push(e.duration_ms);
    }
    let expected: Vec<u64> = (1..=12).map(|n| (30_000 * n).min(300_000)).collect();
    assert_eq!(durations, expected);
    assert_eq!(e.times_ejected, 12);
    assert_eq!(h.ejected_count(), 1, "re-ejection from probation is not counted twice");
}

#[test]
fn jitter_is_added_within_its_range() {
    let h = ServiceHealth::new(OutlierPolicy::default(), &addrs(2));
    let mut rng = rng();
    let mut e = ejection(fail_n(&h, 0, 5, 0, &mut rng));
    let mut seen = vec![e.duration_ms - 30_000];
    for n in 2..=10u64 {
        e = ejection(h.record(0, FAIL, e.until_ms, &mut rng));
        seen.push(e.duration_ms - (30_000 * n).min(300_000));
    }
    assert!(seen.iter().all(|&j| j <= 2_000), "jitter within 0..=2000 ms: {seen:?}");
    assert!(seen.windows(2).any(|w| w[0] != w[1]), "jitter varies: {seen:?}");
}

#[test]
fn cap_allows_at_most_half_of_four_endpoints() {
    let h = ServiceHealth::new(exact(), &addrs(4));
    let mut rng = rng();
    assert_eq!(h.max_ejected(), 2);
    ejection(fail_n(&h, 0, 5, 0, &mut rng));
    ejection(fail_n(&h, 1, 5, 0, &mut rng));
    assert_eq!(fail_n(&h, 2, 5, 0, &mut rng), Some(OutlierEvent::CapReached { endpoint: 2 }));
    assert_eq!(h.record(2, FAIL, 10, &mut rng), Some(OutlierEvent::CapReached { endpoint: 2 }));
    assert!(h.is_eligible(2, 10), "not ejected over the cap");
    assert_eq!(h.ejected_count(), 2);

    // Endpoint 0 comes back: now endpoint 2's next failure ejects it.
    assert_eq!(h.record(0, OK, 30_000, &mut rng), Some(OutlierEvent::Restored { endpoint: 0 }));
    assert_eq!(h.ejected_count(), 1);
    assert!(matches!(h.record(2, FAIL, 30_001, &mut rng), Some(OutlierEvent::Ejected(_))));
    assert_eq!(h.ejected_count(), 2);
}

#[test]
fn cap_is_checked_after_the_ejection() {
    let mut rng = rng();
    let single = ServiceHealth::new(exact(), &addrs(1));
    assert_eq!(single.max_ejected(), 0);
    for now in 0..20 {
        let event = single.record(0, FAIL, now, &mut rng);
        assert!(!matches!(event, Some(OutlierEvent::Ejected(_))), "1 endpoint never ejected");
    }
    assert!(single.is_eligible(0, 20));

    let three = ServiceHealth::new(exact(), &addrs(3));
    assert_eq!(three.max_ejected(), 1);
    ejection(fail_n(&three, 0, 5, 0, &mut rng));
    assert_eq!(fail_n(&three, 1, 5, 0, &mut rng), Some(OutlierEvent::CapReached { endpoint: 1 }));
}

#[test]
fn panic_mode_below_the_healthy_threshold() {
    let policy = OutlierPolicy { max_ejection_percent: 100, ..exact() };
    let h = ServiceHealth::new(policy, &addrs(4));
    let mut rng = rng();
    ejection(fail_n(&h, 0, 5, 0, &mut rng));
    ejection(fail_n(&h, 1, 5, 0, &mut rng));
    assert_eq!(h.eligibility(), Eligibility { healthy_count: 2, total: 4, panic: false }, "50% is not below 50%");
    ejection(fail_n(&h, 2, 5, 0, &mut rng));
    assert_eq!(h.eligibility(), Eligibility { healthy_count: 1, total: 4, panic: true });

    let no_panic = ServiceHealth::new(OutlierPolicy { panic_threshold_percent: 0, ..policy }, &addrs(2));
    ejection(fail_n(&no_panic, 0, 5, 0, &mut rng));
    ejection(fail_n(&no_panic, 1, 5, 0, &mut rng));
    assert_eq!(no_panic.eligibility(), Eligibility { healthy_count: 0, total: 2, panic: false });

    let empty = ServiceHealth::new(exact(), &[]);
    assert_eq!(empty.eligibility(), Eligibility { healthy_count: 0, total: 0, panic: false });
}

#[test]
fn probation_success_returns_to_healthy() {
    let h = ServiceHealth::new(exact(), &addrs(4));
    let mut rng = rng();
    let e = ejection(fail_n(&h, 0, 5, 0, &mut rng));
    assert_eq!(h.record(0, OK, e.until_ms - 1, &mut rng), None, "late outcome while ejected ignored");
    assert_eq!(h.record(0, FAIL, e.until_ms - 1, &mut rng), None);
    assert_eq!(h.record(0, OK, e.until_ms, &mut rng), Some(OutlierEvent::Restored { endpoint: 0 }));
    assert_eq!(h.ejected_count(), 0);
    let view = &h.snapshot(e.until_ms)[0];
    assert_eq!(view.state, EndpointState::Active);
    assert_eq!((view.times_ejected, view.consecutive_failures), (1, 0), "times kept for back-off");
    // Healthy again: N failures needed, and the next ejection is longer.
    assert_eq!(fail_n(&h, 0, 4, e.until_ms + 1, &mut rng), None);
    let again = ejection(h.record(0, FAIL, e.until_ms + 1, &mut rng));
    assert_eq!((again.times_ejected, again.duration_ms), (2, 60_000));
}

#[test]
fn probation_failure_re_ejects_at_once_for_longer() {
    let h = ServiceHealth::new(exact(), &addrs(4));
    let mut rng = rng();
    let e = ejection(fail_n(&h, 0, 5, 0, &mut rng));
    let again = ejection(h.record(0, FAIL, e.until_ms + 5, &mut rng));
    assert_eq!(
        again,
        Ejection {
            endpoint: 0,
            until_ms: e.until_ms + 5 + 60_000,
            duration_ms: 60_000,
            times_ejected: 2,
            from_probation: true
        }
    );
    assert!(!h.is_eligible(0, e.until_ms + 5));
}

#[test]
fn probation_lets_one_request_through_at_a_time() {
    let h = ServiceHealth::new(exact(), &addrs(4));
    let mut rng = rng();
    let t = ejection(fail_n(&h, 0, 5, 0, &mut rng)).until_ms;
    assert!(!h.try_claim(0, t - 1), "still ejected");
    assert!(h.is_eligible(0, t) && h.try_claim(0, t), "first probe");
    assert!(!h.is_eligible(0, t + 1), "probe in flight");
    assert!(!h.try_claim(0, t + 1), "second probe refused");
    // A neutral outcome frees the slot without a verdict.
    assert_eq!(h.record(0, HealthSignal::Neutral, t + 2, &mut rng), None);
    assert!(h.try_claim(0, t + 3));
    // A probe never recorded frees the slot after probe_timeout_ms.
    assert!(!h.try_claim(0, t + 3 + 14_999));
    assert!(h.try_claim(0, t + 3 + 15_000));
    assert_eq!(h.snapshot(t + 3)[0].state, EndpointState::Probation);
    // Active endpoints are claimed freely.
    assert!(h.try_claim(1, t) && h.try_claim(1, t));
    assert!(!h.try_claim(9, t) && !h.is_eligible(9, t), "out of range");
}

#[test]
fn times_ejected_decays_while_healthy() {
    let h = ServiceHealth::new(exact(), &addrs(2));
    let mut rng = rng();
    let mut e = ejection(fail_n(&h, 0, 5, 0, &mut rng));
    e = ejection(h.record(0, FAIL, e.until_ms, &mut rng));
    e = ejection(h.record(0, FAIL, e.until_ms, &mut rng));
    assert_eq!(e.times_ejected, 3);
    let back = e.until_ms;
    h.record(0, OK, back, &mut rng);
    // Two full max_ejection_ms periods healthy: 3 → 1, so the next ejection is the 2nd.
    let later = back + 2 * 300_000;
    assert_eq!(h.snapshot(later)[0].times_ejected, 1);
    let next = ejection(fail_n(&h, 0, 5, later, &mut rng));
    assert_eq!((next.times_ejected, next.duration_ms), (2, 60_000));
}

#[test]
fn disabled_policy_never_ejects() {
    let h = ServiceHealth::new(OutlierPolicy { enabled: false, ..exact() }, &addrs(4));
    let mut rng = rng();
    assert_eq!(fail_n(&h, 0, 50, 0, &mut rng), None);
    assert!(h.is_eligible(0, 0) && h.try_claim(0, 0));
    assert_eq!(h.eligibility(), Eligibility { healthy_count: 4, total: 4, panic: false });
}

#[test]
fn reload_carries_state_over_by_address() {
    let old_addrs = addrs(4);
    let old = ServiceHealth::new(exact(), &old_addrs);
    let mut rng = rng();
    let e = ejection(fail_n(&old, 1, 5, 0, &mut rng));
    fail_n(&old, 2, 3, 0, &mut rng);

    let extra = SocketAddr::from(([10, 0, 0, 99], 8080));
    let new_addrs = [extra, old_addrs[2], old_addrs[1]];
    let new = ServiceHealth::carry_over(&old, exact(), &new_addrs, false);
    assert_eq!(new.addresses(), &new_addrs);
    assert_eq!(new.ejected_count(), 1);
    assert!(!new.is_eligible(2, 10), "a reload does not un-eject");
    let views = new.snapshot(10);
    assert_eq!(views[2].ejected_until_ms, Some(e.until_ms));
    assert_eq!(views[2].times_ejected, 1);
    assert_eq!(views[1].consecutive_failures, 3, "failure count carried");
    assert_eq!(views[0].state, EndpointState::Active);
    // The carried count keeps counting: two more failures eject (cap 1 already used → capped).
    assert_eq!(fail_n(&new, 1, 2, 10, &mut rng), Some(OutlierEvent::CapReached { endpoint: 1 }));
}

#[test]
fn snapshot_serialises_for_the_admin_view() {
    let h = ServiceHealth::new(exact(), &addrs(2));
    let mut rng = rng();
    ejection(fail_n(&h, 0, 5, 0, &mut rng));
    let json = serde_json::to_value(h.snapshot(1)).expect("views serialise");
    assert_eq!(json[0]["state"], "ejected");
    assert_eq!(json[0]["ejected_until_ms"], 30_000);
    assert_eq!(json[0]["address"], "10.0.0.1:8080");
    assert_eq!(json[1]["state"], "active");
    assert_eq!(json[1]["ejected_until_ms"], serde_json::Value::Null);
}

#[test]
fn signals_follow_outcomes() {
    use crate::outcome::Outcome as O;
    assert_eq!(HealthSignal::from(&O::Response { status: 200 }), HealthSignal::Success);
    assert_eq!(HealthSignal::from(&O::Response { status: 500 }), HealthSignal::Success);
    assert_eq!(HealthSignal::from(&O::Response { status: 503 }), HealthSignal::GatewayFailure);
    assert_eq!(HealthSignal::from(&O::ConnectTimeout), HealthSignal::GatewayFailure);
    assert_eq!(HealthSignal::from(&O::ResetBeforeWrite), HealthSignal::Neutral);
    assert_eq!(HealthSignal::from(&O::LocalError), HealthSignal::Neutral);
}

/// Threads race to eject, restore and re-eject; the cap holds at every instant and the count
/// matches the endpoints' states when they stop.
#[test]
fn concurrent_ejections_never_exceed_the_cap() {
    const ENDPOINTS: usize = 8;
    const THREADS: u64 = 8;
    let h = Arc::new(ServiceHealth::new(OutlierPolicy::default(), &addrs(ENDPOINTS)));
    let cap = h.max_ejected();
    assert_eq!(cap, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let phase_barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));

    // Reads the shared count while workers race (a scan of the endpoints is not atomic, so the
    // count is the invariant to watch; states are compared with it once the workers stop).
    let watcher = {
        let (h, stop) = (Arc::clone(&h), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut max_seen = 0;
            while !stop.load(Ordering::Relaxed) {
                max_seen = max_seen.max(h.ejected_count());
            }
            max_seen
        })
    };

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (h, barrier) = (Arc::clone(&h), Arc::clone(&phase_barrier));
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                let (mut first_phase_ejections, mut restores) = (0u32, 0u32);
                // Phase 1: frozen time, everything fails: the cap fills exactly once.
                for i in 0..20_000 {
                    let ep = (i + t as usize) % ENDPOINTS;
                    if let Some(OutlierEvent::Ejected(_)) = h.record(ep, FAIL, 0, &mut rng) {
                        first_phase_ejections += 1;
                    }
                    assert!(h.ejected_count() <= cap);
                }
                barrier.wait();
                // Phase 2: time moves (differently per thread), mixed outcomes.
                for i in 0..50_000u64 {
                    let now = i * 20 + t * 7;
                    let ep = ((i * 7 + t) % ENDPOINTS as u64) as usize;
                    let signal = if rng.random_bool(0.7) { FAIL } else { OK };
                    if let Some(OutlierEvent::Restored { .. }) = h.record(ep, signal, now, &mut rng) {
                        restores += 1;
                    }
                    assert!(h.ejected_count() <= cap);
                }
                (first_phase_ejections, restores)
            })
        })
        .collect();

    let results: Vec<(u32, u32)> = workers.into_iter().map(|w| w.join().expect("worker thread panicked")).collect();
    stop.store(true, Ordering::Relaxed);
    let max_seen = watcher.join().expect("watcher thread panicked");
    assert!(max_seen <= cap, "{max_seen} endpoints seen ejected at once, cap {cap}");

    let views = h.snapshot(0);
    let ejected_now = views.iter().filter(|v| v.state != EndpointState::Active).count() as u32;
    assert_eq!(ejected_now, h.ejected_count(), "count matches states at rest");
    let first_phase: u32 = results.iter().map(|r| r.0).sum();
    assert_eq!(first_phase, cap, "frozen time: the cap fills exactly once, nothing double-counted");
    let restores: u32 = results.iter().map(|r| r.1).sum();
    assert!(restores > 0, "phase 2 exercised probation");
}

#[test]
fn a_failing_health_check_takes_an_endpoint_out_even_in_panic_mode() {
    let h = ServiceHealth::new(exact(), &addrs(2));
    let mut rng = rng();
    assert!(h.mark_down(1));
    assert!(!h.mark_down(1), "idempotent");
    assert!(!h.is_eligible(1, 0) && !h.try_claim(1, 0) && !h.is_usable(1));
    assert!(h.is_usable(0));
    assert_eq!(h.snapshot(0)[1].state, EndpointState::Unhealthy);
    assert_eq!(h.eligibility(), Eligibility { healthy_count: 1, total: 2, panic: false });
    assert_eq!(h.record(1, OK, 0, &mut rng), None, "outcomes of an unhealthy endpoint are ignored");
    assert!(!h.is_eligible(1, 0));
    // Both out: panic mode, and still neither is usable.
    assert!(h.mark_down(0));
    assert!(h.eligibility().panic);
    assert!(!h.is_usable(0) && !h.is_usable(1));
}

#[test]
fn a_passing_health_check_returns_through_probation() {
    let h = ServiceHealth::new(exact(), &addrs(4));
    let mut rng = rng();
    // Ejected first, then failing its checks: the ejection is over, its count kept.
    ejection(fail_n(&h, 0, 5, 0, &mut rng));
    assert!(h.mark_down(0));
    assert_eq!((h.ejected_count(), h.eligibility().healthy_count), (0, 3));
    assert!(!h.mark_up(1, 10), "an active endpoint is left alone");
    assert!(h.mark_up(0, 1_000));
    assert_eq!(h.snapshot(1_000)[0].state, EndpointState::Probation);
    assert!(h.try_claim(0, 1_000), "one probe");
    assert!(!h.try_claim(0, 1_000), "one at a time");
    // A failed probe ejects again, for longer (times_ejected was 1).
    let e = ejection(h.record(0, FAIL, 1_000, &mut rng));
    assert!(e.from_probation && e.times_ejected == 2, "{e:?}");
    // Again down and up, then a passing probe restores it.
    assert!(h.mark_down(0) && h.mark_up(0, 2_000) && h.try_claim(0, 2_000));
    assert_eq!(h.record(0, OK, 2_000, &mut rng), Some(OutlierEvent::Restored { endpoint: 0 }));
    assert_eq!(h.eligibility(), Eligibility { healthy_count: 4, total: 4, panic: false });
}

#[test]
fn health_checks_work_without_outlier_detection_and_carry_over_reloads() {
    let off = OutlierPolicy { enabled: false, ..exact() };
    let h = ServiceHealth::new(off, &addrs(2));
    assert!(h.mark_down(1));
    assert!(!h.is_eligible(1, 0) && h.is_eligible(0, 0));
    assert!(h.mark_up(1, 5));
    assert!(h.is_eligible(1, 5), "no probation without outlier detection");

    let old = ServiceHealth::new(exact(), &addrs(2));
    assert!(old.mark_down(1));
    let kept = ServiceHealth::carry_over(&old, exact(), &addrs(2), true);
    assert_eq!(kept.snapshot(0)[1].state, EndpointState::Unhealthy);
    assert_eq!(kept.eligibility().healthy_count, 1);
    let unchecked = ServiceHealth::carry_over(&old, exact(), &addrs(2), false);
    assert_eq!(unchecked.snapshot(0)[1].state, EndpointState::Probation, "checks gone: back through probation");
}

#[test]
fn checked_endpoints_wait_for_their_first_check_new_ones_too() {
    let h = ServiceHealth::new_checked(exact(), &addrs(2));
    assert_eq!(h.eligibility().healthy_count, 0);
    assert!(!h.is_eligible(0, 0) && !h.is_usable(0), "not even in panic mode");
    assert!(h.mark_up_first(0) && !h.mark_up_first(0));
    assert!(h.is_eligible(0, 0), "a first pass is active at once, no probation");
    assert_eq!(h.snapshot(0)[0].state, EndpointState::Active);
    // A reload adds an endpoint: the checked one stays active, the new one waits.
    let next = ServiceHealth::carry_over(&h, exact(), &addrs(3), true);
    let states: Vec<_> = next.snapshot(0).into_iter().map(|e| e.state).collect();
    assert_eq!(states, [EndpointState::Active, EndpointState::Unhealthy, EndpointState::Unhealthy]);
    assert_eq!(next.eligibility().healthy_count, 1);
}
