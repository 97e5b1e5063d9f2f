//! Root tier: `weir run --takeover` replaces a running weir on the real steered path without
//! failing a request or resetting a connection: a workload in a steered cgroup
//! (`weir-workload`) keeps ~2 000 requests/s on keep-alive and new connections, slow requests,
//! a long-lived TCP relay and a long-lived HTTP response in flight while weir is taken over
//! again and again; a new weir killed at each step of the hand-off, and two racing, leave the
//! running one serving. (The loopback tier's takeover tests are in tests/takeover.rs.)
//!
//! (HTTP upgrades are not forwarded yet: the long-lived TCP connection and the endless HTTP
//! response stand in for an upgraded connection.)

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_tests::root::{Cgroup, probe, require_root};
use weir_tests::{Behavior, Endpoint, TcpEcho, WeirProcess, eventually, metric_value, scratch_dir};

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");
const WORKLOAD: &str = env!("CARGO_BIN_EXE_weir-workload");
const PROBE: &str = env!("CARGO_BIN_EXE_weir-probe");
/// `[proxy] drain_timeout_ms` of the root-tier configs.
const DRAIN_MS: u64 = 3000;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An endpoint whose every answer is an endless chunked stream: a line every 100 ms (for at
/// most a minute).
fn stream_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind stream endpoint");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let mut w = conn;
                if w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err() {
                    return;
                }
                for i in 0..600 {
                    let tick = format!("tick {i}\n");
                    if w.write_all(format!("{:x}\r\n{tick}\r\n", tick.len()).as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = w.write_all(b"0\r\n\r\n");
            });
        }
    });
    addr
}

/// What the root-tier tests steer: a web service, a slow one (2 s answers), a TCP echo and an
/// endless stream, on VIPs `127.10.15.{base}..{base+3}`.
struct Services {
    cg: Cgroup,
    web: [Endpoint; 2],
    _slow: Endpoint,
    _echo: TcpEcho,
    slow_addr: SocketAddr,
    echo_addr: SocketAddr,
    stream_addr: SocketAddr,
    base: u8,
}

impl Services {
    fn start(tag: &str, base: u8) -> Services {
        let slow = Endpoint::start("slow");
        slow.set(Behavior::Delay(Duration::from_secs(2)));
        let echo = TcpEcho::start("db");
        Services {
            cg: Cgroup::create(tag),
            web: [Endpoint::start("a"), Endpoint::start("b")],
            slow_addr: slow.addr,
            echo_addr: echo.addr,
            _slow: slow,
            _echo: echo,
            stream_addr: stream_endpoint(),
            base,
        }
    }

    fn vip(&self, i: u8) -> String {
        format!("127.10.15.{}:80", self.base + i)
    }

    /// The config, with `workers` workers and `extra` added to `[proxy]`.
    fn config(&self, workers: usize, extra: &str) -> String {
        format!(
            "[proxy]\nlisten = \"@PROXY@\"\nworkers = {workers}\ndrain_timeout_ms = {DRAIN_MS}\n{extra}\n\
             [admin]\nlisten = \"@ADMIN@\"\n[steering]\ncgroups = [\"{}\"]\n[access_log]\nsink = \"off\"\n\
             [[service]]\nname = \"web\"\nvip = \"{}\"\nendpoints = [\"{}\", \"{}\"]\n\
             [[service]]\nname = \"slow\"\nvip = \"{}\"\nendpoints = [\"{}\"]\n\
             [[service]]\nname = \"db\"\nvip = \"{}\"\nprotocol = \"tcp\"\nendpoints = [\"{}\"]\n\
             [[service]]\nname = \"feed\"\nvip = \"{}\"\nendpoints = [\"{}\"]\n",
            self.cg.path.display(),
            self.vip(0),
            self.web[0].addr,
            self.web[1].addr,
            self.vip(1),
            self.slow_addr,
            self.vip(2),
            self.echo_addr,
            self.vip(3),
            self.stream_addr,
        )
    }

    /// Starts the workload in the steered cgroup at `rate` requests/s; it runs until `stop`
    /// exists (or 120 s).
    fn workload(&self, rate: u32, stop: &std::path::Path) -> std::process::Child {
        Command::new(WORKLOAD)
            .args(["--cgroup", &self.cg.path.display().to_string()])
            .args(["--http", &self.vip(0), "--rate", &rate.to_string(), "--keepalive", "6", "--fresh", "2"])
            .args(["--slow", &self.vip(1), "--slow-clients", "2", "--tcp", &self.vip(2), "--stream", &self.vip(3)])
            .args(["--duration-ms", "120000", "--max-requests", "400000"])
            .arg("--stop-file")
            .arg(stop)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start weir-workload")
    }
}

/// A GET on the admin API (a fresh connection, closed after the answer): status and body.
fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// The pid of the weir that answers on `admin`.
fn serving_pid(admin: SocketAddr) -> Option<i32> {
    let (_, body) = admin_get(admin, "/config")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["pid"].as_i64().map(|p| p as i32)
}

/// The sum of every sample of a metric family whose name and labels start with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn web_requests(admin: SocketAddr) -> f64 {
    admin_get(admin, "/metrics").map_or(0.0, |(_, m)| metric_sum(&m, "weir_requests_total{service=\"web\""))
}

/// Scrapes `weir_requests_total{service="web"}` every 50 ms while `stop` is false; returns
/// (scrapes, the decreases seen).
fn watch_requests_total(admin: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut scrapes, mut last, mut decreases) = (0u64, 0.0f64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            if let Some((200, text)) = admin_get(admin, "/metrics") {
                let v = metric_sum(&text, "weir_requests_total{service=\"web\"");
                if v < last {
                    decreases.push(format!("{last} -> {v}"));
                }
                last = last.max(v);
                scrapes += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (scrapes, decreases)
    })
}

/// Starts a weir with `--takeover` on `old`'s addresses and waits until it serves (its pid
/// answers `/config`). Returns it and how long that took.
fn take_over(old: &WeirProcess, toml: &str) -> (WeirProcess, Duration) {
    let t0 = Instant::now();
    let new = WeirProcess::start_on(WEIR, toml, None, old.proxy, old.admin, |cmd, _| {
        cmd.arg("--takeover");
    });
    let pid = new.pid();
    eventually(Duration::from_secs(20), "the new weir serves the admin API", || {
        (serving_pid(old.admin) == Some(pid)).then_some(())
    });
    (new, t0.elapsed())
}

/// Waits until the workload has made `n` more web requests through the weir on `admin`.
fn wait_for_traffic(admin: SocketAddr, n: f64) {
    let start = web_requests(admin);
    eventually(Duration::from_secs(20), &format!("{n} more requests through weir"), || {
        (web_requests(admin) >= start + n).then_some(())
    });
}

/// One takeover made: when it started (Unix ms), how long until the new weir served, the
/// weir it replaced.
struct Made {
    started_ms: u64,
    took: Duration,
    old: WeirProcess,
}

/// The workload's report, checked: nothing failed, nothing was reset, slow requests all
/// completed, and every long-lived connection the weirs closed lived until its weir's drain
/// timeout.
fn check_workload(report: &serde_json::Value, takeovers: &[(u64, u64)], min_ok: u64) {
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    assert_eq!(n("failed"), 0, "requests failed: {:?}", report["errors"]);
    assert_eq!(n("resets"), 0, "connections were reset: {:?} {}", report["errors"], report["long_lived"]);
    assert_eq!(n("retried"), 0, "keep-alive connections were closed under a request: {:?}", report["errors"]);
    assert!(n("ok") >= min_ok, "too few requests: {} < {min_ok}", n("ok"));
    assert!(n("closes_seen") > 0, "no response carried Connection: close: no drain was seen");
    let slow = &report["slow"];
    assert_eq!(slow["failed"].as_u64(), Some(0), "slow requests failed: {:?}", report["errors"]);
    assert!(slow["ok"].as_u64().unwrap_or(0) >= 4, "too few slow requests: {slow}");
    let mut closed_by_weir = 0;
    for c in report["long_lived"].as_array().expect("long_lived") {
        let end = c["end"].as_str().unwrap_or("");
        assert!(end == "eof" || end == "stopped", "a long-lived connection ended badly: {c}");
        if end != "eof" {
            continue;
        }
        closed_by_weir += 1;
        let (opened, closed) = (c["opened_ms"].as_u64().unwrap_or(0), c["closed_ms"].as_u64().unwrap_or(0));
        // The weir that held it was replaced by the first takeover that ended after it opened
        // (or, opened while that takeover was under way, by the next one: either weir may have
        // accepted it); that weir keeps it until its drain timeout, then closes it.
        let replaced: Vec<_> = takeovers.iter().filter(|(_, end)| *end >= opened).take(2).collect();
        assert!(!replaced.is_empty(), "a long-lived connection was closed with no takeover after it opened: {c}");
        assert!(
            replaced.iter().any(|(start, end)| closed + 300 >= start + DRAIN_MS && closed <= end + DRAIN_MS + 5000),
            "a long-lived connection was not closed at its weir's drain timeout (takeovers {replaced:?}): {c}"
        );
    }
    assert!(closed_by_weir >= 2, "no long-lived connection reached a drain timeout: {}", report["long_lived"]);
}

/// Requests that started during a hand-off (within 10 ms).
fn requests_during(report: &serde_json::Value, windows: &[(u64, u64)]) -> u64 {
    report["per_10ms"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(slot, _)| {
            let ms = slot.parse::<u64>().unwrap_or(0) * 10;
            windows.iter().any(|(a, b)| ms + 10 > *a && ms <= *b)
        })
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum()
}

/// The longest latency (µs) of a request that overlapped a hand-off, of one that did not, and
/// the median.
fn handoff_latency(report: &serde_json::Value, windows: &[(u64, u64)]) -> (u64, u64, u64) {
    let (mut during, mut outside) = (0, 0);
    for s in report["slowest"].as_array().into_iter().flatten() {
        let (start_us, lat_us) = (s[0].as_u64().unwrap_or(0), s[1].as_u64().unwrap_or(0));
        let (start, end) = (start_us / 1000, (start_us + lat_us) / 1000);
        if windows.iter().any(|(a, b)| start <= *b && end >= *a) {
            during = during.max(lat_us);
        } else {
            outside = outside.max(lat_us);
        }
    }
    (during, outside, report["latency_us"]["p50"].as_u64().unwrap_or(0))
}

/// Runs the workload at `rate` while `count` takeovers happen one after the other, each
/// `every` after the previous started (or as soon as traffic flowed through the new weir);
/// `config_of(i)` is the config of the i-th new weir. Checks everything, prints the figures.
fn takeovers_under_load(
    tag: &str,
    base: u8,
    rate: u32,
    count: usize,
    every: Option<Duration>,
    config_of: impl Fn(&Services, usize) -> String,
) {
    require_root();
    let s = Services::start(tag, base);
    let mut weir = WeirProcess::start(WEIR, &s.config(2, ""), None);
    let admin = weir.admin;
    let stop_file = scratch_dir(tag).join("stop");
    let mut workload = s.workload(rate, &stop_file);
    wait_for_traffic(admin, f64::from(rate));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = watch_requests_total(admin, stop_watch.clone());
    let begun = Instant::now();
    let mut made: Vec<Made> = Vec::new();
    for i in 0..count {
        match every {
            // Pacing, not synchronisation: the soak takes over on a clock.
            Some(every) => std::thread::sleep((begun + every * i as u32).saturating_duration_since(Instant::now())),
            None => wait_for_traffic(admin, f64::from(rate) / 2.0),
        }
        let started_ms = unix_ms();
        let (new, took) = take_over(&weir, &config_of(&s, i));
        made.push(Made { started_ms, took, old: std::mem::replace(&mut weir, new) });
    }
    wait_for_traffic(admin, f64::from(rate));
    std::fs::write(&stop_file, "").expect("stop the workload");
    let mut out = String::new();
    workload.stdout.take().expect("stdout").read_to_string(&mut out).expect("workload output");
    assert!(workload.wait().expect("workload").success(), "weir-workload failed");
    stop_watch.store(true, Ordering::Relaxed);
    let (scrapes, decreases) = watcher.join().expect("watcher");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("workload JSON");

    // Every weir taken over exited 0, within its drain timeout (and the counters' hand-over).
    for m in &mut made {
        let left = Duration::from_millis((m.started_ms + DRAIN_MS + 8000).saturating_sub(unix_ms()));
        let status =
            m.old.wait_exit(left).unwrap_or_else(|| panic!("a weir taken over at {} did not exit", m.started_ms));
        assert!(status.success(), "a weir taken over exited with {status}");
    }
    // What the workload counted is what weir counted: nothing lost across the takeovers (the
    // last second of the serving weir is published within a second).
    let sent = report["ok"].as_u64().unwrap_or(0) as f64;
    let metrics = eventually(Duration::from_secs(5), "weir counts every request the workload made", || {
        let (_, m) = admin_get(admin, "/metrics")?;
        (metric_sum(&m, "weir_requests_total{service=\"web\"") >= sent).then_some(m)
    });
    assert_eq!(
        metric_value(&metrics, "weir_takeovers_total{result=\"success\"}"),
        count as f64,
        "the takeover counter does not count every takeover"
    );
    assert_eq!(metric_value(&metrics, "weir_takeovers_total{result=\"failure\"}"), 0.0);
    assert!(decreases.is_empty(), "weir_requests_total decreased over {scrapes} scrapes: {decreases:?}");
    assert!(scrapes > 20, "too few scrapes: {scrapes}");
    // No connect took the fail mode's path, and every new connection went to the listener of
    // its CPU (the SO_REUSEPORT group and the CPU-affinity array stayed intact): the kernel
    // counters, shared across takeovers.
    let kernel =
        |event: &str| metric_value(&metrics, &format!("weir_steering_kernel_events_total{{event=\"{event}\"}}"));
    for mode in ["fail_open", "fail_closed", "fail_endpoint"] {
        assert_eq!(kernel(mode), 0.0, "steering took its fail mode ({mode}) during the takeovers");
    }
    assert_eq!(kernel("affine_miss"), 0.0, "a connection found no listener for its CPU during the takeovers");
    // A quarter of the workload's requests come on new connections.
    assert!(kernel("affine_accept") >= sent / 8.0, "CPU-affine accepts were not counted across the takeovers");
    let windows: Vec<(u64, u64)> =
        made.iter().map(|m| (m.started_ms, m.started_ms + m.took.as_millis() as u64)).collect();
    check_workload(&report, &windows, u64::from(rate) * 3);
    let (longest_us, outside_us, p50_us) = handoff_latency(&report, &windows);
    let slowest_handoff = made.iter().map(|m| m.took).max().unwrap_or_default();
    println!(
        "takeover {tag}: {count} takeovers, {} requests ({} s; {} started during a hand-off), {} failed, {} reset, {} \
         retried on a closed keep-alive connection, {} answered with Connection: close; slow requests {} ok (longest \
         {} ms); p50 {} µs, longest request overlapping a hand-off {} µs (outside hand-offs {} µs); longest hand-off \
         (start to serving) {} ms; {} scrapes, counters never decreased",
        report["ok"],
        begun.elapsed().as_secs(),
        requests_during(&report, &windows),
        report["failed"],
        report["resets"],
        report["retried"],
        report["closes_seen"],
        report["slow"]["ok"],
        report["slow"]["max_ms"],
        p50_us,
        longest_us,
        outside_us,
        slowest_handoff.as_millis(),
        scrapes,
    );
    drop(weir);
}

#[test]
fn five_takeovers_in_a_row_under_load_fail_no_request_and_reset_no_connection() {
    // The third changes the config, restart-only fields included (workers, max_connections,
    // downstream idle timeout); the fourth goes back.
    takeovers_under_load("five", 1, 2000, 5, None, |s, i| match i {
        2 => s.config(1, "max_connections = 5000\ndownstream_idle_timeout_ms = 200000"),
        _ => s.config(2, ""),
    });
}

#[test]
fn soak_a_takeover_every_two_seconds() {
    let seconds: u64 = std::env::var("WEIR_TAKEOVER_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    takeovers_under_load("soak", 11, 1000, (seconds / 2) as usize, Some(Duration::from_secs(2)), |s, _| {
        s.config(2, "")
    });
}

/// Whether process `pid` is stopped (SIGSTOP).
fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
        .unwrap_or(false)
}

/// Starts `weir run --takeover` on `old`'s addresses, stopping itself at `step`; waits until
/// it has stopped there.
fn stopped_takeover(old: &WeirProcess, toml: &str, step: &str) -> std::process::Child {
    let dir = scratch_dir("stopped");
    let path = dir.join("weir.toml");
    std::fs::write(&path, toml.replace("@PROXY@", &old.proxy.to_string()).replace("@ADMIN@", &old.admin.to_string()))
        .expect("config");
    let child = Command::new(WEIR)
        .args(["run", "--takeover", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .env("WEIR_TAKEOVER_TEST_STOP_AT", step)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let pid = child.id() as i32;
    eventually(Duration::from_secs(20), &format!("the new weir stops at {step}"), || stopped(pid).then_some(()));
    child
}

#[test]
fn a_new_weir_killed_at_any_step_of_the_hand_off_leaves_the_old_one_serving() {
    require_root();
    let s = Services::start("kill9", 21);
    let toml = s.config(2, "").replace("[steering]\n", "[steering]\nfail_mode = \"closed\"\nfail_after_ms = 1000\n");
    let weir = WeirProcess::start(WEIR, &toml, None);
    let stop_file = scratch_dir("kill9").join("stop");
    let mut workload = s.workload(500, &stop_file);
    wait_for_traffic(weir.admin, 250.0);
    for (i, step) in ["offer-received", "ready-to-swap", "links-swapped"].into_iter().enumerate() {
        let mut new = stopped_takeover(&weir, &toml, step);
        let _ = new.kill();
        let _ = new.wait();
        // The old weir knows at once (its hand-off socket closed) and serves on; after longer
        // than fail_after_ms, connects are still steered to it, not failed closed: its own
        // programs are in the links.
        eventually(Duration::from_secs(5), "the failed takeover counted", || {
            let failures = admin_get(weir.admin, "/metrics")
                .map(|(_, m)| metric_value(&m, "weir_takeovers_total{result=\"failure\"}"))?;
            (failures >= (i + 1) as f64).then_some(())
        });
        assert_eq!(serving_pid(weir.admin), Some(weir.pid()), "{step}: another weir serves");
        wait_for_traffic(weir.admin, 750.0);
        let r = probe(PROBE, Some(&s.cg), &["--addr", &s.vip(0), "--requests", "20", "--connections", "4"]);
        assert_eq!((r.num("ok"), r.num("via")), (20, 20), "{step}: steering does not reach the old weir: {:?}", r.json);
    }
    let metrics = admin_get(weir.admin, "/metrics").expect("metrics").1;
    assert_eq!(metric_value(&metrics, "weir_takeovers_total{result=\"failure\"}"), 3.0);
    assert_eq!(metric_value(&metrics, "weir_steering_kernel_events_total{event=\"fail_closed\"}"), 0.0);
    std::fs::write(&stop_file, "").expect("stop the workload");
    let mut out = String::new();
    workload.stdout.take().expect("stdout").read_to_string(&mut out).expect("workload output");
    assert!(workload.wait().expect("workload").success(), "weir-workload failed");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("workload JSON");
    assert_eq!(report["failed"].as_u64(), Some(0), "requests failed: {:?}", report["errors"]);
    assert_eq!(report["resets"].as_u64(), Some(0), "connections were reset: {:?}", report["errors"]);
    assert_eq!(report["slow"]["failed"].as_u64(), Some(0), "slow requests failed: {:?}", report["errors"]);
    // Nothing the old weir held was closed: no takeover happened.
    for c in report["long_lived"].as_array().expect("long_lived") {
        assert_eq!(c["end"], "stopped", "a long-lived connection ended: {c}");
    }
}

#[test]
fn of_two_takeovers_racing_one_wins_and_the_other_exits_with_a_clear_error() {
    require_root();
    let s = Services::start("race", 31);
    let toml = s.config(2, "");
    let old = WeirProcess::start(WEIR, &toml, None);
    // The first holds the hand-off open (stopped before it swaps the links) ...
    let mut first = stopped_takeover(&old, &toml, "ready-to-swap");
    // ... so the second arrives while it is in progress: refused, exit 1, and it says why.
    let dir = scratch_dir("race");
    let path = dir.join("weir.toml");
    std::fs::write(&path, toml.replace("@PROXY@", &old.proxy.to_string()).replace("@ADMIN@", &old.admin.to_string()))
        .expect("config");
    let second = Command::new(WEIR)
        .args(["run", "--takeover", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the second takeover");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "the second takeover did not fail: {stderr}");
    assert!(
        stderr.contains(&format!("another takeover (weir pid {}) is in progress", first.id())),
        "unclear error: {stderr}"
    );
    // The first goes on and wins.
    // SAFETY: kill(2) on our own stopped child.
    unsafe { libc::kill(first.id() as i32, libc::SIGCONT) };
    let pid = first.id() as i32;
    eventually(Duration::from_secs(20), "the first takeover serves", || {
        (serving_pid(old.admin) == Some(pid)).then_some(())
    });
    let r = probe(PROBE, Some(&s.cg), &["--addr", &s.vip(0), "--requests", "10"]);
    assert_eq!((r.num("ok"), r.num("via")), (10, 10), "{:?}", r.json);
    let metrics = admin_get(old.admin, "/metrics").expect("metrics").1;
    assert_eq!(metric_value(&metrics, "weir_takeovers_total{result=\"success\"}"), 1.0);
    assert_eq!(metric_value(&metrics, "weir_takeovers_total{result=\"failure\"}"), 1.0, "the refusal is counted");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = first.wait().expect("wait");
    assert!(status.success(), "the winner did not drain cleanly: {status}");
    drop(old);
}
