//! Operations on a running weir: reloads (good, invalid, under load), graceful drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use weir_tests::{Behavior, Client, Endpoint, Weir, eventually};

use crate::data_path::{config, service};

#[test]
fn an_invalid_reload_keeps_the_running_config() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let good = config(&service("s", "127.10.6.1:80", &[&a], ""));
    let weir = Weir::start(&good);
    let mut c = Client::connect(weir.proxy);
    assert_eq!(c.get("/", "s").header("x-endpoint"), Some("a"));
    let err = weir.reload(&good.replace("127.10.6.1:80", "127.10.6.1")).expect_err("invalid config accepted");
    assert!(err.contains("service[0].vip"), "{err}");
    assert_eq!(c.get("/", "s").header("x-endpoint"), Some("a"), "the old config stopped serving");
    assert_eq!(weir.control().reloads_failed.load(Ordering::Relaxed), 1);
    weir.reload(&config(&service("s", "127.10.6.1:80", &[&b], ""))).expect("valid reload");
    assert_eq!(c.get("/", "s").header("x-endpoint"), Some("b"), "the new endpoint list is not in use");
}

#[test]
fn reloads_under_load_fail_no_request() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let weir = Weir::start(&config(&service("s", "127.10.6.2:80", &[&a, &b], "")));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, proxy) = (stop.clone(), ok.clone(), failed.clone(), weir.proxy);
            std::thread::spawn(move || {
                let mut c = Client::connect(proxy);
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match c.request("GET", "/", "s", b"") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for i in 0..20 {
        // Every reload lands while requests flow: wait until the load has moved on since the
        // last one.
        let seen = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        eventually(Duration::from_secs(10), "requests between two reloads", || {
            (ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= seen + 10).then_some(())
        });
        let eps: &[&Endpoint] = if i % 2 == 0 { &[&a] } else { &[&a, &b] };
        weir.reload(&config(&service(
            "s",
            "127.10.6.2:80",
            eps,
            &format!("[service.timeouts]\nconnect_ms = {}\n", 500 + i),
        )))
        .expect("reload");
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().expect("loader");
    }
    assert!(ok.load(Ordering::Relaxed) > 100, "too little traffic: {}", ok.load(Ordering::Relaxed));
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during reloads");
}

#[test]
fn drain_finishes_in_flight_requests() {
    let slow = Endpoint::start("slow");
    slow.set(Behavior::Delay(Duration::from_millis(700)));
    let weir = Weir::start(&config(&service("s", "127.10.6.3:80", &[&slow], "")));
    let proxy = weir.proxy;
    let inflight: Vec<_> = (0..4).map(|_| std::thread::spawn(move || Client::connect(proxy).get("/", "s"))).collect();
    // In flight: all four reached the endpoint, which answers after 700 ms.
    eventually(Duration::from_secs(5), "four requests in flight", || (slow.requests() == 4).then_some(()));
    let admin = weir.admin;
    let drained = std::thread::spawn(move || weir.shutdown());
    // Not ready once the drain has begun, while the requests are still in flight.
    eventually(Duration::from_secs(5), "/ready answering 503 during the drain", || {
        (Client::connect(admin).get("/ready", "admin").status == 503).then_some(())
    });
    assert!(inflight.iter().all(|h| !h.is_finished()), "the in-flight requests ended before the drain began");
    for h in inflight {
        let r = h.join().expect("in-flight request");
        assert_eq!(r.status, 200, "an in-flight request failed during drain");
        assert_eq!(r.header("connection"), Some("close"), "responses during drain must close");
    }
    assert!(drained.join().expect("drain"), "drain did not finish in time");
    assert!(Client::try_connect(proxy).is_err(), "still accepting after drain");
}

#[test]
fn a_change_of_the_config_file_is_picked_up_without_a_signal() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let weir = Weir::start(&config(&service("w", "127.10.6.4:80", &[&a], "")));
    let mut c = Client::connect(weir.proxy);
    assert_eq!(c.get("/", "w").header("x-endpoint"), Some("a"));
    // Replace the file the way a ConfigMap update does: write elsewhere, rename over it.
    let text = std::fs::read_to_string(&weir.config_path)
        .expect("read config")
        .replace(&a.addr.to_string(), &b.addr.to_string());
    let tmp = weir.config_path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &weir.config_path).expect("rename");
    weir_tests::eventually(Duration::from_secs(5), "the watcher reloads", || {
        (c.get("/", "w").header("x-endpoint") == Some("b")).then_some(())
    });
    assert_eq!(weir.control().reloads_ok.load(Ordering::Relaxed), 1);
    let age_after_reload = weir.metric("weir_config_snapshot_age_seconds");
    let since = std::time::Instant::now();
    // An unreadable or invalid file keeps the running config (static stability).
    let failed = || weir.control().reloads_failed.load(Ordering::Relaxed);
    std::fs::write(&weir.config_path, "this is [not toml").expect("write garbage");
    eventually(Duration::from_secs(5), "the watcher rejects the invalid file", || (failed() >= 1).then_some(()));
    assert_eq!(c.get("/", "w").header("x-endpoint"), Some("b"));
    let after_invalid = failed();
    std::fs::remove_file(&weir.config_path).expect("remove the config");
    eventually(Duration::from_secs(5), "the watcher finds the file gone", || (failed() > after_invalid).then_some(()));
    assert_eq!(c.get("/", "w").header("x-endpoint"), Some("b"), "a missing config file stopped traffic");
    assert_eq!(weir.control().reloads_ok.load(Ordering::Relaxed), 1, "a bad config source was applied");
    // The snapshot kept aging all along: the failed attempts did not count as loads.
    let elapsed = since.elapsed().as_secs_f64();
    let age = weir.metric("weir_config_snapshot_age_seconds");
    assert!(age >= age_after_reload + elapsed, "snapshot age went from {age_after_reload} to {age} in {elapsed} s");
}

#[test]
fn a_reload_changing_a_restart_only_field_is_rejected_whole() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let weir = Weir::start(&config(&service("r", "127.10.6.5:80", &[&a], "")));
    let mut c = Client::connect(weir.proxy);
    // A new endpoint (reloadable) together with a new worker count (restart only).
    let both = config(&service("r", "127.10.6.5:80", &[&b], "")).replace("workers = 2", "workers = 1");
    let err = weir.reload(&both).expect_err("workers cannot change on reload");
    assert!(err.contains("[proxy] workers") && err.contains("restart"), "{err}");
    assert_eq!(c.get("/", "r").header("x-endpoint"), Some("a"), "part of a rejected reload was applied");
}
