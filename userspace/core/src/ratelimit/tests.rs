//! The node-wide rate whatever the worker count, per-client isolation, a bounded table.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn cfg(rps: u32, burst: Option<u32>, per: RateLimitPer) -> RateLimitConfig {
    RateLimitConfig { requests_per_second: rps, burst, per }
}

fn ip(last: u32) -> Caller {
    Caller::Addr(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + last)))
}

/// Requests offered at `offered` per second for `secs`, round-robin over `workers` workers:
/// how many passed.
fn run(limit: &RateLimit, workers: usize, offered: u64, secs: u64, caller: impl Fn(u64) -> Caller) -> u64 {
    let mut locals: Vec<LocalTokens> = (0..workers).map(|_| LocalTokens::new(limit)).collect();
    let step = 1_000_000_000 / offered;
    let mut passed = 0;
    for i in 0..offered * secs {
        let now = 1_000_000_000 + i * step;
        if locals[i as usize % workers].admit(limit, caller(i), now).is_ok() {
            passed += 1;
        }
    }
    passed
}

#[test]
fn the_node_wide_rate_holds_whatever_the_worker_count() {
    for workers in [1, 2, 8, 64] {
        for (rps, burst) in [(100, 50), (1_000, 100), (50_000, 5_000)] {
            let limit = RateLimit::new(&cfg(rps, Some(burst), RateLimitPer::Service), workers);
            let passed = run(&limit, workers, u64::from(rps) * 3, 5, |_| ip(1));
            let most = u64::from(rps) * 5 + u64::from(burst);
            let least = most - workers as u64 * u64::from(limit.batch()) - u64::from(burst);
            assert!(
                (least..=most).contains(&passed),
                "{workers} workers, {rps}/s burst {burst}: {passed} passed, expected {least}..={most}"
            );
        }
    }
}

#[test]
fn a_limited_request_says_when_to_come_back() {
    let limit = RateLimit::new(&cfg(2, Some(1), RateLimitPer::Service), 1);
    let mut local = LocalTokens::new(&limit);
    let t0 = 5_000_000_000;
    assert!(local.admit(&limit, ip(1), t0).is_ok());
    let limited = local.admit(&limit, ip(1), t0).expect_err("the bucket is empty");
    assert_eq!(limited.retry_after, Duration::from_millis(500));
    assert_eq!(limited.retry_after_secs(), 1);
    assert!(local.admit(&limit, ip(1), t0 + 500_000_000).is_ok(), "one token per 500 ms");
}

#[test]
fn a_flooding_client_does_not_use_a_quiet_ones_bucket() {
    let limit = RateLimit::new(&cfg(10, Some(10), RateLimitPer::Client), 2);
    let mut locals = [LocalTokens::new(&limit), LocalTokens::new(&limit)];
    let (mut flood_ok, mut quiet_ok) = (0, 0);
    // 5 s: the flood sends 1 000/s, the quiet client 5/s, over both workers.
    for ms in 0..5_000u64 {
        let now = 1_000_000_000 + ms * 1_000_000;
        if locals[(ms % 2) as usize].admit(&limit, ip(2), now).is_ok() {
            flood_ok += 1;
        }
        if ms % 200 == 0 && locals[(ms / 200 % 2) as usize].admit(&limit, ip(3), now).is_ok() {
            quiet_ok += 1;
        }
    }
    assert_eq!(quiet_ok, 25, "the quiet client is never limited");
    assert!((55..=60).contains(&flood_ok), "the flood gets its own 10/s and burst: {flood_ok}");
}

#[test]
fn a_flood_of_clients_cannot_grow_the_table() {
    let limit = RateLimit::new(&cfg(1, Some(1), RateLimitPer::Client), 1);
    let passed = run(&limit, 1, 100_000, 1, |i| ip(i as u32 + 10));
    assert_eq!(passed, 100_000, "every new client starts with a full bucket");
    assert_eq!(limit.clients_known(), CLIENT_SLOTS);
    // One client keeps its bucket while others come and go in other sets.
    let mut local = LocalTokens::new(&limit);
    let now = 9_000_000_000;
    assert!(local.admit(&limit, ip(7), now).is_ok());
    assert!(local.admit(&limit, ip(7), now + 1).is_err(), "the same client's bucket is remembered");
}

#[test]
fn caller_keys_differ_and_are_never_zero() {
    let keys: std::collections::HashSet<u64> = (0..10_000).map(|i| ip(i).key()).collect();
    assert_eq!(keys.len(), 10_000);
    assert!(!keys.contains(&0));
    assert_ne!(Caller::Workload(1).key(), ip(1).key());
}
