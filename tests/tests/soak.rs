//! The soak: a fixed request rate over churning connections while endpoints flap and the
//! config is reloaded, for `WEIR_SOAK_SECONDS` (default 20 s in the test suite; the operations
//! issue asks for 600). Zero idempotent requests may fail and weir's RSS must stay flat.
//! `cargo xtask test` runs the short version; run the long one with
//! `WEIR_SOAK_SECONDS=600 cargo test -p weir-tests --test integration soak -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use weir_tests::{Client, Endpoint, WeirProcess, eventually};

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

fn soak_config(endpoints: &[std::net::SocketAddr], connect_ms: u64) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n[access_log]\nsink = \"off\"\n\
         [[service]]\nname = \"soak\"\nvip = \"127.10.9.1:80\"\nendpoints = [{}]\n[service.timeouts]\nconnect_ms = {connect_ms}\n",
        eps.join(", ")
    )
}

#[test]
fn soak_with_flapping_endpoints_and_reloads() {
    let seconds: u64 = std::env::var("WEIR_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let flap_every = Duration::from_secs((seconds / 4).clamp(4, 30));
    let reload_every = Duration::from_secs((seconds / 5).clamp(3, 20));
    const RATE: u64 = 400; // requests per second, all clients together
    const PER_CONNECTION: u64 = 20;
    const CLIENTS: u64 = 8;

    let endpoints: Vec<Arc<Mutex<Endpoint>>> =
        (0..3).map(|i| Arc::new(Mutex::new(Endpoint::start(&format!("e{i}"))))).collect();
    let addrs: Vec<_> = endpoints.iter().map(|e| e.lock().addr).collect();
    let weir = WeirProcess::start(WEIR, &soak_config(&addrs, 1000), None);
    let (proxy, pid) = (weir.proxy, weir.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, connections) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, ok, failed, connections, failures) =
                (stop.clone(), ok.clone(), failed.clone(), connections.clone(), failures.clone());
            std::thread::spawn(move || {
                let interval = Duration::from_secs_f64(CLIENTS as f64 / RATE as f64);
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = Client::try_connect(proxy) else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().push("connect to weir failed".into());
                        std::thread::sleep(interval); // the client's pace
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    for _ in 0..PER_CONNECTION {
                        next += interval;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        match c.request("GET", "/", "soak", b"") {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            Ok(r) => {
                                failures.lock().push(format!("status {} {:?}", r.status, r.header("x-weir-error")));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(e) => {
                                failures.lock().push(format!("io: {e}"));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            })
        })
        .collect();

    // Warm up (pools, buffers, every client connected) before the RSS baseline.
    eventually(Duration::from_secs(20), "the warm-up requests", || {
        (ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= RATE).then_some(())
    });
    let rss_start = weir_tests::rss_kib(pid as u32);
    let start = Instant::now();
    let (mut next_flap, mut next_reload) = (start + flap_every, start + reload_every);
    let (mut flaps, mut reloads, mut victim) = (0, 0, 0usize);
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(100)); // the soak's tick
        let now = Instant::now();
        if now >= next_flap {
            // Kill one endpoint (listener closed, connections reset), bring it back half a
            // period later on the same address.
            let e = endpoints[victim % 3].clone();
            let addr = e.lock().addr;
            e.lock().kill();
            let back = flap_every / 2;
            std::thread::spawn(move || {
                std::thread::sleep(back); // the endpoint's downtime
                *e.lock() = Endpoint::start_at(&format!("e{}", addr.port()), addr);
            });
            victim += 1;
            flaps += 1;
            next_flap += flap_every;
        }
        if now >= next_reload {
            weir.write_config(&soak_config(&addrs, 1000 + reloads * 10));
            weir.signal(libc::SIGHUP);
            reloads += 1;
            next_reload += reload_every;
        }
    }
    let rss_end = weir_tests::rss_kib(pid as u32);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "soak: {seconds} s, {ok} requests ok, {failed} failed, {} connections, {flaps} endpoint flaps, {reloads} reloads, weir RSS {rss_start} KiB -> {rss_end} KiB",
        connections.load(Ordering::Relaxed)
    );
    assert!(flaps >= 2 && reloads >= 2, "the soak did too little: {flaps} flaps, {reloads} reloads");
    // Every reload was applied (a listener on port 0 reads back as unchanged); the file watcher
    // may apply a change once more besides the SIGHUP.
    let reloaded = |result: &str| {
        let metrics = Client::connect(weir.admin).get("/metrics", "admin").body_string();
        weir_tests::metric_value(&metrics, &format!("weir_config_reloads_total{{result=\"{result}\"}}"))
    };
    eventually(Duration::from_secs(5), "every SIGHUP reload applied", || {
        (reloaded("success") >= reloads as f64).then_some(())
    });
    assert_eq!(reloaded("failure"), 0.0, "a reload was rejected");
    assert_eq!(failed, 0, "idempotent requests failed: {:?}", failures.lock().iter().take(10).collect::<Vec<_>>());
    assert!(ok >= RATE * seconds / 2, "too few requests: {ok}");
    assert!(rss_end.saturating_sub(rss_start) < 16 * 1024, "RSS grew from {rss_start} KiB to {rss_end} KiB");
    drop(weir);
}
