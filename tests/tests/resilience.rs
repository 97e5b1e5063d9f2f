//! Resilience scenarios on real sockets, each asserting exact counts: retries on another
//! endpoint, outlier ejection with its cap, the retry budget under total failure, an endpoint
//! dying under load, and the keep-alive race.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_tests::{Behavior, Client, Endpoint, Weir, eventually};

use crate::data_path::{config, service};

fn endpoints_json(weir: &Weir) -> serde_json::Value {
    let (status, body) = weir.admin_get("/endpoints");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("/endpoints JSON")
}

fn ejected(weir: &Weir) -> Vec<String> {
    endpoints_json(weir)[0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter(|e| e["state"] != "active")
        .map(|e| e["address"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sends `n` GETs from `threads` keep-alive clients; returns the statuses seen.
fn load(weir: &Weir, host: &'static str, n: usize, threads: usize) -> Vec<u16> {
    let proxy = weir.proxy;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(proxy);
                (0..n / threads + usize::from(t < n % threads)).map(|_| c.get("/", host).status).collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("load thread")).collect()
}

#[test]
fn two_bad_endpoints_of_four_are_ejected_and_every_request_succeeds() {
    let (h1, h2, refusing, unavailable) =
        (Endpoint::start("h1"), Endpoint::start("h2"), Endpoint::start("refusing"), Endpoint::start("unavailable"));
    refusing.kill();
    unavailable.set(Behavior::Status(503));
    let weir = Weir::start(&config(&service("four", "127.10.7.1:80", &[&h1, &h2, &refusing, &unavailable], "")));
    let started = Instant::now();
    let statuses = load(&weir, "four", 1000, 4);
    let seconds = started.elapsed().as_secs_f64() + 1.0;
    assert_eq!(statuses.len(), 1000);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests: {:?}",
        statuses.iter().filter(|s| **s != 200).count()
    );
    let mut gone = ejected(&weir);
    gone.sort();
    let mut want = vec![refusing.addr.to_string(), unavailable.addr.to_string()];
    want.sort();
    assert_eq!(gone, want, "both bad endpoints must be ejected");
    weir.wait_metric("weir_outlier_ejections_total{service=\"four\"}", 2.0);
    // The 503 endpoint received the five requests that ejected it, plus at most the ones the
    // other three clients had already sent to it when the fifth failure came back.
    assert!(
        (5..=8).contains(&unavailable.requests()),
        "the 503 endpoint kept receiving requests: {}",
        unavailable.requests()
    );
    let retries: f64 = ["connect-failure", "status-503"]
        .iter()
        .map(|r| weir.metric(&format!("weir_retries_total{{service=\"four\",reason=\"{r}\"}}")))
        .sum();
    assert!(retries <= 1000.0 * 0.2 + 10.0 * seconds, "retries {retries} over the budget");
    assert!(retries >= 10.0, "each failure should have been retried: {retries}");
}

#[test]
fn the_ejection_cap_holds_with_three_of_four_failing() {
    let good = Endpoint::start("good");
    let bad: Vec<Endpoint> = (0..3).map(|i| Endpoint::start(&format!("bad{i}"))).collect();
    for b in &bad {
        b.set(Behavior::Status(503));
    }
    let eps: Vec<&Endpoint> = std::iter::once(&good).chain(bad.iter()).collect();
    let weir = Weir::start(&config(&service("cap", "127.10.7.2:80", &eps, "")));
    let proxy = weir.proxy;
    let worker = std::thread::spawn(move || {
        let mut c = Client::connect(proxy);
        (0..600).filter(|_| c.get("/", "cap").status == 200).count()
    });
    let mut max_seen = 0;
    while !worker.is_finished() {
        // Sampling pace of the observation, not a wait for anything.
        max_seen = max_seen.max(ejected(&weir).len());
        std::thread::sleep(Duration::from_millis(5));
    }
    let ok = worker.join().expect("load");
    max_seen = max_seen.max(ejected(&weir).len());
    assert_eq!(max_seen, 2, "never more than 50% of 4 endpoints may be ejected (saw {max_seen})");
    assert!(ok > 0);
}

#[test]
fn when_every_endpoint_fails_retries_stop_at_the_budget() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    a.set(Behavior::Status(503));
    b.set(Behavior::Status(503));
    let started = Instant::now();
    let weir =
        Weir::start(&config(&service("down", "127.10.7.3:80", &[&a, &b], "[service.outlier]\nenabled = false\n")));
    let statuses = load(&weir, "down", 500, 4);
    // Seconds of budget floor: the test so far plus the one second a budget starts with.
    let seconds = started.elapsed().as_secs_f64() + 1.0;
    assert!(statuses.iter().all(|s| *s == 503), "clients see the endpoints' 503");
    let seen = (a.requests() + b.requests()) as f64;
    let bound = 500.0 * 1.2 + 10.0 * seconds;
    assert!(seen <= bound, "endpoints saw {seen} requests for 500 (budget bound {bound}): retry storm");
    assert!(started.elapsed() < Duration::from_secs(20), "503s were slow: {:?}", started.elapsed());
    weir.wait_metric("weir_requests_total{service=\"down\",source=\"direct\",code=\"503\"}", 500.0);
    assert!(weir.metric("weir_retry_budget_exhausted_total{service=\"down\"}") > 0.0, "the budget never ran out");
}

#[test]
fn an_endpoint_killed_under_load_fails_no_idempotent_request_and_repeats_no_post() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let weir = Weir::start(&config(&service("kill", "127.10.7.4:80", &[&a, &b], "")));
    let proxy = weir.proxy;
    const PER_LOADER: u64 = 300;
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(proxy);
                for _ in 0..PER_LOADER {
                    match c.request("GET", "/", "kill", b"") {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            c = Client::connect(proxy);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Kill `a` once both endpoints are serving the load, well before it ends.
    eventually(Duration::from_secs(10), "both endpoints serving the load", || {
        (a.requests() >= 20 && b.requests() >= 20).then_some(())
    });
    let at_kill = done.load(Ordering::Relaxed);
    a.kill();
    for l in loaders {
        l.join().expect("loader");
    }
    let total = done.load(Ordering::Relaxed);
    assert_eq!(total, 4 * PER_LOADER);
    assert!(
        total - at_kill >= 300,
        "the kill came too late: only {} of {total} requests ran after it",
        total - at_kill
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "idempotent requests failed when an endpoint died");

    // POSTs already sent to a dying endpoint fail with 502 and are not sent again.
    let (c1, c2) = (Endpoint::start("c1"), Endpoint::start("c2"));
    c1.set(Behavior::Delay(Duration::from_millis(400)));
    c2.set(Behavior::Delay(Duration::from_millis(400)));
    let weir2 = Weir::start(&config(&service("post", "127.10.7.5:80", &[&c1, &c2], "")));
    let proxy = weir2.proxy;
    let posts: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                Client::connect(proxy).request("POST", "/", "post", format!("order {i}").as_bytes()).map(|r| r.status)
            })
        })
        .collect();
    // Kill c1 while it holds POSTs: all six have reached the endpoints, which answer only
    // after 400 ms.
    eventually(Duration::from_secs(5), "every POST received by an endpoint", || {
        (c1.requests() + c2.requests() == 6).then_some(())
    });
    assert!(c1.requests() > 0, "no POST went to c1");
    c1.kill();
    let statuses: Vec<u16> = posts.into_iter().map(|p| p.join().expect("post").expect("an answer")).collect();
    let failed_posts = statuses.iter().filter(|s| **s == 502).count() as u64;
    assert!(statuses.iter().all(|s| *s == 200 || *s == 502), "{statuses:?}");
    assert!(failed_posts > 0, "no POST was in flight on the killed endpoint: {statuses:?}");
    assert_eq!(c1.requests() + c2.requests(), 6, "a POST was sent twice (or lost before sending)");
    drop(weir);
}

#[test]
fn endpoints_closing_idle_connections_cause_no_client_errors() {
    let ep = Endpoint::start("idle");
    ep.set(Behavior::CloseIdleAfter(Duration::from_millis(1000)));
    // weir's pool idle timeout misconfigured above the endpoint's keep-alive.
    let weir = Weir::start(
        &config(&service("race", "127.10.7.6:80", &[&ep], "[service.timeouts]\nupstream_idle_ms = 5000\n"))
            .replace("workers = 2", "workers = 1"),
    );
    let mut c = Client::connect(weir.proxy);
    // At least 12 requests, and on until the endpoint has closed idle connections under weir a
    // few times (a loaded machine shifts the timing), at most 40.
    for i in 0..40u64 {
        let r = c.get("/", "race");
        assert_eq!(r.status, 200, "request {i} failed: {:?}", r.header("x-weir-error"));
        if i >= 12 && ep.connections() > 3 {
            break;
        }
        // Land the next request right around the endpoint's idle close (the timing is the
        // behaviour under test).
        std::thread::sleep(Duration::from_millis(980 + (i % 5) * 10));
    }
    assert!(ep.connections() > 1, "the endpoint never closed an idle connection");
}

#[test]
fn a_500_is_retried_only_for_idempotent_requests_and_only_when_configured() {
    let (bad, good) = (Endpoint::start("bad"), Endpoint::start("good"));
    bad.set(Behavior::Status(500));
    let weir = Weir::start(&config(
        // The budget is off here: this test is about which outcomes are retried, not how many.
        // Round robin makes first attempts alternate between the two endpoints (P2C over two
        // idle endpoints always prefers the one with the lower latency estimate, whichever
        // that happens to be).
        &(service("on", "127.10.7.7:80", &[&bad, &good], "lb = \"round_robin\"\n[service.outlier]\nenabled = false\n[service.retry]\nbudget = false\n")
            + &service("off", "127.10.7.8:80", &[&bad, &good], "lb = \"round_robin\"\n[service.outlier]\nenabled = false\n[service.retry]\nbudget = false\non_server_error = false\n")),
    ).replace("workers = 2", "workers = 1"));
    let mut c = Client::connect(weir.proxy);
    // GETs that land on the 500 endpoint are retried on the other one...
    for _ in 0..20 {
        assert_eq!(c.get("/", "on").status, 200);
    }
    // ...POSTs are not (not idempotent), and with on_server_error = false nothing is.
    let (mut post_500, mut get_500) = (0, 0);
    for _ in 0..20 {
        post_500 += u32::from(c.request("POST", "/", "on", b"x").expect("post").status == 500);
        get_500 += u32::from(c.get("/", "off").status == 500);
    }
    assert_eq!(post_500, 10, "every POST whose first attempt got a 500 must answer 500 (no retry)");
    assert_eq!(get_500, 10, "with on_server_error = false every 500 must reach the client");
    // bad: 10 first GET attempts + 10 POSTs + 10 GETs on "off"; good: 10 first GET attempts
    // + 10 GET retries + 10 POSTs + 10 GETs on "off". Nothing was sent twice besides the
    // 10 retried GETs.
    assert_eq!((bad.requests(), good.requests()), (30, 40));
}
