//! Tests of a worker's state with injected time: what a reload carries over, and the order in
//! which endpoints are picked (fresh first, the last tried avoided, ejected ones skipped, one
//! request at a time on probation).

use std::time::{Duration, Instant};

use weir_core::config::Config;
use weir_core::outcome::Outcome;

use super::*;
use crate::io::{Conn, ConnectOptions, Runtime};
use crate::pool::UpConn;

fn snapshot(toml: &str, previous: Option<&Snapshot>) -> Arc<Snapshot> {
    let cfg = Config::parse(toml, std::path::Path::new("test.toml")).expect("valid config");
    Arc::new(Snapshot::build(cfg, 2, previous))
}

fn service(name: &str, vip: &str, endpoints: &[&str], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nendpoints = [{}]\nlb = \"round_robin\"\n{extra}\n",
        eps.join(", ")
    )
}

fn swap(state: &mut WorkerState, next: Arc<Snapshot>) {
    state.update(&arc_swap::ArcSwap::new(next));
}

#[test]
fn a_reload_carries_pools_latency_budgets_and_gauges_by_name_and_address() {
    Runtime::new().expect("runtime").block_on(async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let e2 = l.local_addr().expect("addr").to_string();
        let v1 = service("a", "127.10.0.1:80", &["127.0.0.1:1", &e2], "")
            + &service("b", "127.10.0.2:80", &["127.0.0.1:3"], "");
        let s1 = snapshot(&v1, None);
        let mut state = WorkerState::new(s1.clone(), 0, WorkerTelemetry::default());
        let a = state.scope(0);
        let t0 = Instant::now();

        // An idle pooled connection to e2, a latency estimate for e2, and a spent budget.
        let conn = Conn::connect(e2.parse().expect("addr"), &ConnectOptions::default(), Duration::from_secs(1))
            .await
            .expect("connect");
        let gauge = state.gauge(&a);
        let e2_picked = Picked { backend: 0, index: 1, addr: e2.parse().expect("addr"), panic: false, generation: 1 };
        assert!(state.services[0].active.is_none(), "no balancer or pools before the first request");
        state.pick(&a, &Tried::default(), t0, 0).expect("a pick builds the service's state");
        state.put_pooled(&a, &e2_picked, UpConn::new(conn, &gauge), t0);
        state.services[0].active.as_mut().expect("active").backends[0].balancer.on_start(1);
        state.report(&a, &e2_picked, &Outcome::Response { status: 200 }, Some(Duration::from_millis(40)), t0, 0);
        assert!(state.services[0].budget.try_withdraw(t0), "a new budget holds one second of floor");
        let budget_before = state.services[0].budget.available(t0);
        let b_slot = state.services[1].stats;
        state.telemetry.shard.service_mut(b_slot).upstream_connections = 3;

        // Reload: e1 goes, e4 comes, e2 moves to index 0; b goes, c comes.
        let v2 = service("a", "127.10.0.1:80", &[&e2, "127.0.0.1:4"], "")
            + &service("c", "127.10.0.3:80", &["127.0.0.1:5"], "");
        swap(&mut state, snapshot(&v2, Some(&s1)));
        let a2 = state.scope(0);
        assert_eq!(state.snapshot().generation, 2);
        assert_eq!(
            state.services[0].active.as_mut().expect("active").backends[0].balancer.latency_estimate(0, t0),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            state.services[0].active.as_mut().expect("active").backends[0].balancer.latency_estimate(1, t0),
            None,
            "a new endpoint starts unknown"
        );
        assert_eq!(state.services[0].budget.available(t0), budget_before, "same policy: the budget is carried");
        assert_eq!(state.gauge(&a2).get(), 1, "the pooled connection is still counted");
        let moved = Picked { backend: 0, index: 0, addr: e2.parse().expect("addr"), panic: false, generation: 2 };
        assert!(state.take_pooled(&a2, &moved, t0).is_some(), "the pool followed e2 to its new index");
        assert!(state.telemetry.shard.service(b_slot).is_none(), "a removed service's stats are freed");
        assert!(
            !state.telemetry.shard.publish().services.iter().any(|(n, _)| &**n == "b"),
            "a removed service is no longer published"
        );
        // A request routed before the reload still finds its service (by name).
        assert!(state.admit(&a));
        assert_eq!(state.services[0].pending, 1);
        // A policy change starts a fresh budget.
        let v3 = service("a", "127.10.0.1:80", &[&e2], "[service.retry]\nbudget_ratio = 0.5");
        let s2 = state.snapshot.clone();
        swap(&mut state, snapshot(&v3, Some(&s2)));
        assert!(state.services[0].budget.available(t0) > budget_before);
        assert_eq!(state.services[0].pending, 1, "requests in flight stay counted");
    });
}

#[test]
fn picks_prefer_endpoints_not_tried_and_avoid_the_last_tried() {
    let s = snapshot(&service("a", "127.10.0.1:80", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], ""), None);
    let mut state = WorkerState::new(s, 0, WorkerTelemetry::default());
    let a = state.scope(0);
    let now = Instant::now();
    let mut tried = Tried::default();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let p = state.pick(&a, &tried, now, 0).expect("an endpoint");
        assert!(!seen.contains(&p.addr), "{} picked twice before every endpoint was tried", p.addr);
        seen.push(p.addr);
        tried.add(p.addr);
    }
    // Every endpoint tried: any but the last one.
    for _ in 0..6 {
        let p = state.pick(&a, &tried, now, 0).expect("an endpoint");
        assert_ne!(Some(p.addr), tried.last(), "the last tried endpoint was picked again");
    }
}

#[test]
fn ejected_endpoints_are_skipped_and_come_back_on_probation_one_request_at_a_time() {
    let eps = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
    let s = snapshot(&service("a", "127.10.0.1:80", &eps, "[service.outlier]\nbase_ejection_ms = 1000"), None);
    let mut state = WorkerState::new(s, 0, WorkerTelemetry::default());
    let a = state.scope(0);
    let now = Instant::now();
    let bad = Picked { backend: 0, index: 0, addr: eps[0].parse().expect("addr"), panic: false, generation: 1 };
    for _ in 0..5 {
        state.report(&a, &bad, &Outcome::ConnectFailure, None, now, 0);
    }
    let slot = state.services[0].stats;
    assert_eq!(state.telemetry.shard.service_mut(slot).ejections, 1, "5 gateway failures eject");
    for _ in 0..20 {
        let p = state.pick(&a, &Tried::default(), now, 10).expect("an endpoint");
        assert_ne!(p.addr, bad.addr, "an ejected endpoint was picked");
        state.report(&a, &p, &Outcome::Response { status: 200 }, Some(Duration::from_millis(1)), now, 10);
    }
    // After the ejection (1 s + up to 2 s of jitter) the endpoint is on probation: the first
    // request that picks it claims it, and no other request gets it until that one reports.
    let later = 3_100;
    let mut claimed = None;
    for _ in 0..8 {
        let p = state.pick(&a, &Tried::default(), now, later).expect("an endpoint");
        if p.addr == bad.addr {
            assert!(claimed.is_none(), "a probation endpoint got a second request before the first reported");
            claimed = Some(p);
        }
    }
    let probe = claimed.expect("the endpoint came back on probation");
    state.report(&a, &probe, &Outcome::Response { status: 200 }, Some(Duration::from_millis(1)), now, later);
    let mut picked_again = false;
    for _ in 0..8 {
        let p = state.pick(&a, &Tried::default(), now, later + 1).expect("an endpoint");
        picked_again |= p.addr == bad.addr;
        state.report(&a, &p, &Outcome::Response { status: 200 }, Some(Duration::from_millis(1)), now, later + 1);
    }
    assert!(picked_again, "a successful probe returns the endpoint to rotation");
}

#[test]
fn an_unchanged_service_keeps_its_state_and_an_idle_one_gives_it_back() {
    let v1 = service("a", "127.10.0.1:80", &["127.0.0.1:1"], "") + &service("b", "127.10.0.2:80", &["127.0.0.1:2"], "");
    let s1 = snapshot(&v1, None);
    let mut state = WorkerState::new(s1.clone(), 0, WorkerTelemetry::default());
    let t0 = Instant::now();
    for i in 0..2 {
        let scope = state.scope(i);
        state.pick(&scope, &Tried::default(), t0, 0).expect("pick");
    }
    let a_before: *const Active = &**state.services[0].active.as_ref().expect("active");
    let b_before: *const Active = &**state.services[1].active.as_ref().expect("active");
    // Only b changes: a's snapshot entry is shared, so its state is moved, not rebuilt.
    let v2 = service("a", "127.10.0.1:80", &["127.0.0.1:1"], "") + &service("b", "127.10.0.2:80", &["127.0.0.1:3"], "");
    let s2 = snapshot(&v2, Some(&s1));
    assert!(Arc::ptr_eq(&s1.services[0], &s2.services[0]), "the snapshot kept a's derived state");
    assert!(!Arc::ptr_eq(&s1.services[1], &s2.services[1]));
    swap(&mut state, s2);
    assert!(std::ptr::eq(&**state.services[0].active.as_ref().expect("active"), a_before), "a was rebuilt");
    assert!(!std::ptr::eq(&**state.services[1].active.as_ref().expect("active"), b_before), "b was not rebuilt");
    // Idle past IDLE_RELEASE with nothing pooled or pending: the balancer and pools go.
    state.housekeeping(t0 + IDLE_RELEASE - Duration::from_secs(1));
    assert!(state.services[0].active.is_some());
    state.housekeeping(t0 + IDLE_RELEASE);
    assert!(state.services.iter().all(|s| s.active.is_none()), "idle services kept their balancers");
}
