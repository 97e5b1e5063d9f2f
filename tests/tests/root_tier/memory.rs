//! weir inside a memory limit (root tier: memory cgroups). A limit too small for the config
//! stops weir at start with the numbers; with the access-log rings sized from the limit, weir
//! commits its rings at start (RSS right after start includes them) and a bounded load with
//! idle keep-alive clients neither grows it past a bound nor gets it OOM-killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_tests::memcg::MemoryCgroup;
use weir_tests::{ANY_PORT, Client, Endpoint, LineSink, WeirProcess, eventually, rss_kib};

use crate::data_path::service;

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");
const MIB: u64 = 1024 * 1024;
/// Bytes of one access-log ring slot (`LogRecord`).
const RECORD: u64 = std::mem::size_of::<weir_core::accesslog::LogRecord>() as u64;

fn config(sink: &str, ring_records: Option<usize>, services: &str) -> String {
    let ring = ring_records.map(|r| format!("ring_records = {r}\n")).unwrap_or_default();
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"{sink}\"\n{ring}{services}"
    )
}

#[test]
fn a_memory_limit_too_small_for_explicit_rings_stops_weir_at_start_with_the_numbers() {
    let cg = MemoryCgroup::create("small", 64 * MIB);
    let ep = Endpoint::start("e");
    let sink = LineSink::counting().expect("sink");
    let dir = weir_tests::scratch_dir("memsmall");
    let path = dir.join("weir.toml");
    let toml = config(&format!("tcp:{}", sink.addr), Some(65_536), &service("m", "127.10.12.1:80", &[&ep], ""))
        .replace("@PROXY@", ANY_PORT)
        .replace("@ADMIN@", ANY_PORT);
    std::fs::write(&path, toml).expect("write config");
    let mut cmd = std::process::Command::new(WEIR);
    cmd.args(["run", "--config"]).arg(&path).env("RUST_LOG", "warn");
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cg.join_on_exec(&mut cmd);
    let child = cmd.spawn().expect("spawn weir");
    let pid = child.id() as i32;
    // Bounded: a weir that does not refuse keeps running; stop it after 20 s.
    let watchdog = std::thread::spawn(move || {
        if weir_tests::wait_until(Duration::from_secs(20), || weir_tests::testkit::proc::exited(pid).then_some(()))
            .is_some()
        {
            return false;
        }
        // SAFETY: kill(2) on our own child, still unreaped (wait_with_output below reaps it).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("wait for weir");
    let killed = watchdog.join().expect("watchdog");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !killed,
        "weir kept running for 20 s with 2 × 65536 access-log records ({} MiB) in a 64 MiB cgroup; stderr:\n{stderr}",
        2 * 65_536 * RECORD / MIB
    );
    assert_eq!(cg.oom_kills(), 0, "weir was OOM-killed instead of refusing to start; stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "exit status {}; stderr:\n{stderr}", out.status);
    // `weir check` in the same cgroup sees the same limit and says the same.
    let mut check = std::process::Command::new(WEIR);
    check.args(["check", "--config"]).arg(&path);
    cg.join_on_exec(&mut check);
    let checked = check.output().expect("run weir check");
    let check_err = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "weir check accepted the config in a 64 MiB cgroup: {check_err}");
    assert!(check_err.contains("memory limit 64.0 MiB"), "weir check: {check_err}");
    for needed in [
        "memory limit 64.0 MiB".to_string(),
        cg.limit_file().display().to_string(),
        "2 workers × 65536 records × 512 B".to_string(),
        "[access_log] ring_records".to_string(),
        "raise the memory limit to at least".to_string(),
    ] {
        assert!(stderr.contains(&needed), "weir's refusal does not say {needed:?}:\n{stderr}");
    }
}

#[test]
fn with_rings_sized_from_a_64_mib_limit_weir_commits_them_at_start_and_survives_load() {
    let cg = MemoryCgroup::create("fits", 64 * MIB);
    let ep = Endpoint::start("e");
    let sink = LineSink::counting().expect("sink");
    let weir = WeirProcess::start(
        WEIR,
        &config(&format!("tcp:{}", sink.addr), None, &service("m", "127.10.12.2:80", &[&ep], "")),
        Some(cg.dir()),
    );
    let pid = weir.pid() as u32;
    let mut admin = Client::connect(weir.admin);
    let cfg: serde_json::Value = serde_json::from_slice(&admin.get("/config", "admin").body).expect("/config JSON");
    let ring_records = cfg["memory"]["ring_records"]
        .as_u64()
        .or(cfg["config"]["access_log"]["ring_records"].as_u64())
        .unwrap_or_else(|| panic!("/config has no memory.ring_records: {cfg}"));
    assert!(ring_records >= 1024, "rings of {ring_records} records in a 64 MiB limit");
    let rings = 2 * ring_records * RECORD;
    let rss_start = rss_kib(pid) * 1024;
    let usage_start = cg.usage();
    eprintln!(
        "memory: limit 64 MiB, ring_records {ring_records} ({:.1} MiB for 2 rings); RSS at start {:.1} MiB, cgroup usage {:.1} MiB",
        rings as f64 / MIB as f64,
        rss_start as f64 / MIB as f64,
        usage_start as f64 / MIB as f64
    );
    assert!(
        rss_start >= rings,
        "RSS at start ({rss_start} B) does not include the access-log rings ({rings} B): they were not committed"
    );

    // Idle keep-alive clients (each has made one request) and a bounded load: keep-alive
    // clients and clients that open a connection per request, for at most 60 s.
    const IDLE: usize = 2000;
    let idle: Vec<Client> = (0..IDLE)
        .map(|_| {
            let mut c = Client::connect(weir.proxy);
            assert_eq!(c.get("/", "m").status, 200);
            c
        })
        .collect();
    let after_idle = rss_kib(pid) * 1024;
    let usage_idle = cg.usage();
    eprintln!(
        "memory: {IDLE} idle keep-alive clients: RSS {:.1} MiB (+{:.0} B each), cgroup usage {:.1} MiB (+{:.0} B each)",
        after_idle as f64 / MIB as f64,
        after_idle.saturating_sub(rss_start) as f64 / IDLE as f64,
        usage_idle as f64 / MIB as f64,
        usage_idle.saturating_sub(usage_start) as f64 / IDLE as f64
    );
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let peak_usage = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, peak_usage) = (stop.clone(), peak.clone(), peak_usage.clone());
        let usage_file = cg.usage_file();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let rss = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
                    peak.fetch_max(rss.unwrap_or(0) * 1024, Ordering::Relaxed);
                }
                if let Some(u) = std::fs::read_to_string(&usage_file).ok().and_then(|u| u.trim().parse::<u64>().ok()) {
                    peak_usage.fetch_max(u, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20)); // the sampling pace
            }
        })
    };
    // More records than two rings of the default size (2 × 65536) hold: before the rings were
    // committed at start, this much traffic filled them in and the cgroup ran out.
    const KEEP_ALIVE_LOADERS: usize = 6;
    const PER_KEEP_ALIVE_LOADER: usize = 25_000;
    const NEW_CONNECTIONS: usize = 5_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    let proxy = weir.proxy;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..KEEP_ALIVE_LOADERS + 1)
        .map(|i| {
            let (ok, failed) = (ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let keep_alive = i < KEEP_ALIVE_LOADERS;
                let mut c = Client::connect(proxy);
                for _ in 0..(if keep_alive { PER_KEEP_ALIVE_LOADER } else { NEW_CONNECTIONS }) {
                    if Instant::now() >= deadline {
                        break;
                    }
                    if !keep_alive {
                        c = Client::connect(proxy);
                    }
                    match c.request("GET", "/", "m", b"") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for l in loaders {
        l.join().expect("load thread");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "memory: {ok} requests ({failed} failed): peak RSS {:.1} MiB, peak cgroup usage {:.1} MiB, OOM kills {}",
        peak as f64 / MIB as f64,
        peak_usage.load(Ordering::Relaxed) as f64 / MIB as f64,
        cg.oom_kills()
    );
    assert_eq!(cg.oom_kills(), 0, "weir was OOM-killed in its 64 MiB cgroup");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "weir is gone");
    assert_eq!(failed, 0, "requests failed under load");
    assert!(ok >= 20_000, "only {ok} requests in 60 s");
    assert!(cg.usage() < 64 * MIB, "cgroup usage {} B is over the limit", cg.usage());
    // The rings were committed at start: traffic adds connections and buffers, not rings.
    assert!(
        peak < rss_start + 16 * MIB,
        "RSS grew from {rss_start} B at start to {peak} B under load (bound: +16 MiB)"
    );
    eventually(Duration::from_secs(10), "access-log lines shipped", || (sink.lines() > 0).then_some(()));
    drop(idle);
    let status = weir.terminate(Duration::from_secs(30));
    assert!(status.success(), "weir exited with {status}");
    assert_eq!(cg.oom_kills(), 0, "weir was OOM-killed in its 64 MiB cgroup");
}
