//! `weir-k8s-bench`: Kubernetes discovery at scale, measured. A synthetic cluster of 10 000
//! Services and 100 000 endpoints (10 per EndpointSlice) is served by the test API server
//! (`weir_tests::kube_api`, in this process), and weir runs as its own process (`weir-cli`)
//! with discovery on and steering off; requests reach services by `Host` name. Measures:
//! initial sync to serving (process start to the last Service routed), change-to-routed
//! latency under 100 changes/s, weir's RSS growth with the big table, RSS during a relist (410
//! Gone on every watch), and per-request latency on one connection without and with the big
//! table in one weir process. Prints a Markdown section (`cargo xtask bench-kubernetes`
//! puts it into docs/BENCHMARKS.md). Every address is on 127.0.0.0/8; only endpoints the
//! bench starts are ever dialed; every loop is bounded in count and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use weir_tests::kube_api::FakeApi;
use weir_tests::kube_objects::{Ep, service, slice};
use weir_tests::{Client, Endpoint, WeirProcess, eventually, rss_kib, scratch_dir};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A synthetic endpoint address, never dialed: 127.30.0.0 and up.
fn fake_ip(n: usize) -> String {
    format!("127.{}.{}.{}", 30 + n / 65_536, (n / 256) % 256, n % 256)
}

fn cluster_ip(i: usize) -> String {
    format!("127.10.{}.{}", 100 + i / 256, i % 256)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Per-request latency on one keep-alive connection through weir (`Host: probe.bench`).
fn latency(proxy: std::net::SocketAddr, n: usize) -> (Duration, Duration) {
    let mut c = Client::connect(proxy);
    let mut samples = Vec::with_capacity(n);
    // Warm up: connections, pools, the CPU's caches.
    for _ in 0..n.min(5_000) {
        c.get("/", "probe.bench");
    }
    for _ in 0..n {
        let t = Instant::now();
        let r = c.get("/", "probe.bench");
        samples.push(t.elapsed());
        assert_eq!(r.status, 200, "probe request failed");
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn routed(proxy: std::net::SocketAddr, host: &str, want: Option<&str>) -> bool {
    let Ok(mut c) = Client::try_connect(proxy) else { return false };
    match c.request("GET", "/", host, b"") {
        Ok(r) => r.status == 200 && want.is_none_or(|w| r.header("x-endpoint") == Some(w)),
        Err(_) => false,
    }
}

/// Peak RSS of `pid` sampled every 20 ms while `f` runs.
fn peak_rss_during<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new(rss_kib(pid)));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let v = rss_kib(pid);
                let mut p = peak.lock();
                *p = (*p).max(v);
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let p = *peak.lock();
    (out, p)
}

fn main() {
    let services = arg("--services", 10_000);
    let per_slice = arg("--endpoints-per-service", 10);
    let change_seconds = arg("--change-seconds", 20);
    let rate = arg("--changes-per-second", 100);
    let requests = arg("--requests", 20_000);
    let (records_kib, snapshot_kib, publish_cost) = attribute(services, per_slice);
    let bin = std::env::current_exe().expect("exe").with_file_name("weir-cli");
    assert!(bin.is_file(), "{} is missing: build the weir-tests binaries first", bin.display());

    // Real endpoints: the latency probe service's, and the ones change-to-routed moves
    // services between.
    let probe = Endpoint::start("probe");
    let movers: Vec<Endpoint> = (0..8).map(|i| Endpoint::start(&format!("m{i}"))).collect();
    let mover_port = |i: usize| movers[i].addr.port();

    let mut api = FakeApi::start();
    let kubeconfig = api.kubeconfig(&scratch_dir("k8s-bench"));
    let config = format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\ndefault_protocol = \"http\"\n",
        kubeconfig.display()
    );
    api.apply_service(service("bench", "probe", &["127.10.99.1"], &[("http", 80)]));
    api.apply_slice(slice("bench", "probe-1", "probe", &[("http", probe.addr.port())], &[Ep::ready("127.0.0.1")]));

    // 1. One weir, small cluster: RSS and latency without the big table.
    let weir = WeirProcess::start(bin.to_str().expect("path"), &config, None);
    let pid = weir.pid() as u32;
    eventually(Duration::from_secs(20), "probe routed", || routed(weir.proxy, "probe.bench", None).then_some(()));
    let (small_p50, small_p99) = latency(weir.proxy, requests);
    let rss_small = rss_kib(pid);

    // 2. The big cluster arrives through the watches.
    let load = |api: &FakeApi| {
        for i in 0..services {
            let name = format!("s{i}");
            api.apply_service(service("bench", &name, &[&cluster_ip(i)], &[("http", 80)]));
            let eps: Vec<Ep> = (0..per_slice).map(|j| Ep::ready(&fake_ip(i * per_slice + j))).collect();
            api.apply_slice(slice("bench", &format!("{name}-1"), &name, &[("http", 8080)], &eps));
        }
    };
    let t = Instant::now();
    load(&api);
    let last = format!("s{}.bench", services - 1);
    let ((), rss_peak_load) = peak_rss_during(pid, || {
        eventually(Duration::from_secs(120), "the last Service routed", || {
            // 8080 on a 127.30.x address: nothing listens, so a routed request is a 503
            // (connect failures) rather than a 404 no-route.
            let mut c = Client::try_connect(weir.proxy).ok()?;
            let r = c.request("GET", "/", &last, b"").ok()?;
            (r.status != 404).then_some(())
        })
    });
    let watch_sync = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss_big = rss_kib(pid);
    let (big_p50, big_p99) = latency(weir.proxy, requests);

    // 3. Change-to-routed under `rate` changes/s: each change moves one of 100 services to
    // another real endpoint; a poller per change measures until weir routes to it.
    for i in 0..100 {
        let name = format!("s{i}");
        api.apply_slice(slice(
            "bench",
            &format!("{name}-1"),
            &name,
            &[("http", mover_port(0))],
            &[Ep::ready("127.0.0.1")],
        ));
    }
    eventually(Duration::from_secs(30), "movers routed", || routed(weir.proxy, "s99.bench", Some("m0")).then_some(()));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let missed = Arc::new(Mutex::new(0usize));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut pollers = Vec::new();
    let total = change_seconds * rate;
    for n in 0..total {
        let due = start + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let svc = n % 100;
        let target = 1 + (n / 100) % (movers.len() - 1);
        let name = format!("s{svc}");
        let t0 = Instant::now();
        api.apply_slice(slice(
            "bench",
            &format!("{name}-1"),
            &name,
            &[("http", mover_port(target))],
            &[Ep::ready("127.0.0.1")],
        ));
        let (lat, missed, proxy) = (lat.clone(), missed.clone(), weir.proxy);
        let want = format!("m{target}");
        pollers.push(std::thread::spawn(move || {
            let host = format!("{name}.bench");
            let mut conn = Client::try_connect(proxy).ok();
            while t0.elapsed() < Duration::from_secs(5) {
                let answer = conn.as_mut().and_then(|c| c.request("GET", "/", &host, b"").ok());
                match answer {
                    Some(r) if r.status == 200 && r.header("x-endpoint") == Some(want.as_str()) => {
                        lat.lock().push(t0.elapsed());
                        return;
                    }
                    Some(_) => {}
                    None => conn = Client::try_connect(proxy).ok(),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            *missed.lock() += 1;
        }));
    }
    for p in pollers {
        let _ = p.join();
    }
    let mut changes = lat.lock().clone();
    changes.sort();
    let missed = *missed.lock();
    // What the changes left: right after, and once idle connections, pools and freed pages
    // have had time to go (upstream_idle 3 s, jemalloc's decay 1 s).
    let rss_after_changes = rss_kib(pid);
    std::thread::sleep(Duration::from_secs(5));
    let rss_changes_settled = rss_kib(pid);

    // 4. A relist of everything: the history is compacted and every watch gets 410 Gone.
    let rss_before_relist = rss_kib(pid);
    // A relist is done when both kinds watch again: the API server counts the requests (a
    // scrape of /metrics at this size would itself cost more than what it measures).
    let watches_before = api.requests("watch");
    let t = Instant::now();
    let ((), rss_relist_peak) = peak_rss_during(pid, || {
        api.compact();
        eventually(Duration::from_secs(120), "relist done", || {
            (api.requests("watch") >= watches_before + 2).then_some(())
        });
        std::thread::sleep(Duration::from_secs(2));
    });
    let relist_time = t.elapsed().saturating_sub(Duration::from_secs(2));
    let relists =
        weir_tests::metric_value(&admin_metrics(weir.admin), "weir_kubernetes_relists_total{kind=\"endpointslice\"}");
    assert!(relists >= 1.0, "weir did not relist after 410 Gone");
    drop(weir);

    // 5. Initial sync: a fresh weir against the big cluster, process start to the last
    // Service routed.
    let t = Instant::now();
    let fresh = WeirProcess::start(bin.to_str().expect("path"), &config, None);
    let ready = t.elapsed();
    eventually(Duration::from_secs(120), "fresh weir routes the last Service", || {
        let mut c = Client::try_connect(fresh.proxy).ok()?;
        let r = c.request("GET", "/", &last, b"").ok()?;
        (r.status != 404).then_some(())
    });
    let initial = t.elapsed();
    let rss_fresh = rss_kib(fresh.pid() as u32);
    drop(fresh);
    api.stop();

    let growth = rss_big.saturating_sub(rss_small);
    let p99 = percentile(&changes, 0.99);
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let relist_ratio = rss_relist_peak as f64 / rss_before_relist.max(1) as f64;
    println!("## Kubernetes discovery\n");
    println!(
        "> Generated by `cargo xtask bench-kubernetes` (the `weir-k8s-bench` binary) on {}. Do not edit by hand.\n",
        utc_now()
    );
    println!(
        "A synthetic cluster from the test API server (tests/src/kube_api.rs, in the bench's process, same machine): \
         {services} Services with one HTTP port, {} endpoints ({per_slice} per EndpointSlice). weir runs as its own \
         process with 2 workers, discovery on, steering off; requests reach services by `Host` name over loopback.\n",
        services * per_slice
    );
    println!("| measure | result | goal | |");
    println!("|---|---|---|---|");
    println!(
        "| initial sync to serving (process start → last Service routed) | {} (`/ready` after {}) | ≤ 5 s | {} |",
        ms(initial),
        ms(ready),
        verdict(initial <= Duration::from_secs(5))
    );
    println!("| the whole cluster arriving by watch events into a running weir | {} | — | |", ms(watch_sync));
    println!(
        "| change-to-routed at {rate} changes/s for {change_seconds} s ({} changes): p50 / p99 / max | {} / {} / {} ({missed} not routed within 5 s) | p99 ≤ 1 s | {} |",
        total,
        ms(percentile(&changes, 0.5)),
        ms(p99),
        ms(changes.last().copied().unwrap_or_default()),
        verdict(p99 <= Duration::from_secs(1) && missed == 0)
    );
    println!(
        "| of which, measured alone in the bench process: one publication on the control side (resolve the changed Service, compose, build the next snapshot) | {} | — | |",
        ms(publish_cost)
    );
    println!(
        "| weir RSS: 1 Service → the big cluster (peak while it arrived) | {} → {} (+{}; peak {}) | growth ≤ 64 MiB | {} |",
        mib(rss_small),
        mib(rss_big),
        mib(growth),
        mib(rss_peak_load),
        verdict(growth <= 64 * 1024)
    );
    println!(
        "| weir RSS after the {total} changes: right after → 5 s later (the 100 changed services now have traffic state) | {} → {} | — | |",
        mib(rss_after_changes),
        mib(rss_changes_settled)
    );
    println!("| weir RSS right after an initial sync of the big cluster | {} | — | |", mib(rss_fresh));
    println!(
        "| of which, built alone in the bench process: discovery's records (and their resolved services) / one snapshot of the composed config | {} / {} | — | |",
        mib(records_kib),
        mib(snapshot_kib)
    );
    println!(
        "| RSS during a full relist (410 Gone on every watch, {} to list again): before → peak | {} → {} (×{relist_ratio:.2}) | never doubles | {} |",
        ms(relist_time),
        mib(rss_before_relist),
        mib(rss_relist_peak),
        verdict(relist_ratio < 2.0)
    );
    println!(
        "| per-request latency, one keep-alive connection, {requests} requests: p50 / p99 without → with the big table | {} / {} → {} / {} | unchanged | |",
        us(small_p50),
        us(small_p99),
        us(big_p50),
        us(big_p99)
    );
    println!();
}

/// What discovery's records and a snapshot of the big cluster take, built here (in this
/// process, before anything else is): the RSS each adds.
fn attribute(services: usize, per_slice: usize) -> (u64, u64, Duration) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use weir_discovery::convert::{self, Settings};
    let me = std::process::id();
    let settings = Settings {
        node_name: Some("node-a".into()),
        exclude_namespaces: vec!["kube-system".into()],
        default_protocol: weir_core::config::Protocol::Http,
    };
    let before = rss_kib(me);
    let mut cluster = weir_discovery::Cluster::new();
    for i in 0..services {
        let name = format!("s{i}");
        let svc: Service =
            serde_json::from_value(service("bench", &name, &[&cluster_ip(i)], &[("http", 80)])).expect("a Service");
        let (key, record, _) = convert::service(&svc, &settings).expect("converts");
        cluster.apply_service(key, record);
        let eps: Vec<Ep> = (0..per_slice).map(|j| Ep::ready(&fake_ip(i * per_slice + j))).collect();
        let sl: EndpointSlice =
            serde_json::from_value(slice("bench", &format!("{name}-1"), &name, &[("http", 8080)], &eps))
                .expect("a slice");
        let (key, record) = convert::slice(&sl, &settings).expect("converts");
        cluster.apply_slice(key, record);
    }
    cluster.resolve();
    let records = rss_kib(me).saturating_sub(before);
    let file = weir_core::config::Config::parse("", std::path::Path::new("bench")).expect("empty config");
    let before = rss_kib(me);
    let config = weir_discovery::compose(&file, &cluster.services()).config;
    let snapshot = weir_proxy::Snapshot::build(config, 2, None);
    let snap = rss_kib(me).saturating_sub(before);
    assert_eq!(snapshot.services.len(), services);
    // What one publication costs on the control side after a one-endpoint change: resolve the
    // changed Service, hand over the set, compose, build the next snapshot (median of 5).
    let mut times = Vec::new();
    let mut previous = snapshot;
    for round in 0..5 {
        let t = Instant::now();
        let name = format!("s{round}");
        let eps = [Ep::ready(&fake_ip(round))];
        let sl: EndpointSlice =
            serde_json::from_value(slice("bench", &format!("{name}-1"), &name, &[("http", 8080)], &eps))
                .expect("a slice");
        let (key, record) = convert::slice(&sl, &settings).expect("converts");
        cluster.apply_slice(key, record);
        cluster.resolve();
        let config = weir_discovery::compose(&file, &cluster.services()).config;
        previous = weir_proxy::Snapshot::build(config, 2, Some(&previous));
        times.push(t.elapsed());
    }
    times.sort();
    (records, snap, times[2])
}

fn admin_metrics(admin: std::net::SocketAddr) -> String {
    let mut c = Client::connect(admin);
    c.get("/metrics", "admin").body_string()
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60)
}
