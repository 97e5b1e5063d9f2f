//! The scale section: weir alone (release build, 2 workers on both CPUs, no traffic unless
//! said) with service tables of 1 000, 10 000 and 100 000 services of 10 endpoints each, and a
//! one-service table as the baseline, all in one run. Per table: time to ready, RSS at ready and
//! settled, one-service reloads (each changing one service's endpoints: weir's own reload
//! duration, file read → snapshot published), RSS after them (settled), RSS after reloading to
//! one service. Then per-request latency through a 10 000-service table against a one-service
//! one, in alternating open-loop rounds. Must not: send traffic to the filler services (their
//! endpoints do not exist), or compare numbers across runs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use weir_testkit::wait_until;

use super::measure::{self, OpenRun, Plan};
use super::peers::{Env, Running, SERVICE};
use super::procs::{self, Proc};
use super::report::us;

/// RSS goal above the one-service baseline at 10 000 services, MiB.
pub(super) const GOAL_EXTRA_MIB: f64 = 64.0;
/// A one-service change is live within this, ms.
pub(super) const GOAL_RELOAD_MS: f64 = 100.0;

/// One table size.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Table {
    /// Services (10 endpoints each), plus the `bench` service.
    pub services: usize,
    /// Start to ready, seconds.
    pub ready_s: f64,
    /// RSS when ready, MiB.
    pub rss_ready_mib: f64,
    /// RSS once settled, MiB.
    pub rss_settled_mib: f64,
    /// One-service reloads made.
    pub reloads: usize,
    /// Their durations (weir's `weir_config_last_reload_duration_seconds`), p50 and max, ms.
    pub reload_p50_ms: f64,
    /// Max.
    pub reload_max_ms: f64,
    /// RSS after them, settled, MiB.
    pub rss_after_reloads_mib: f64,
    /// RSS after reloading to one service, settled, MiB.
    pub rss_shrunk_mib: f64,
    /// `/metrics` size, bytes, and the time to fetch it, ms.
    pub metrics_bytes: usize,
    /// Fetch time.
    pub metrics_ms: f64,
}

/// The whole section.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Scale {
    /// RSS of a one-service weir, settled, MiB.
    pub baseline_mib: f64,
    /// One row per table size.
    pub tables: Vec<Table>,
    /// Open-loop rounds through a one-service table.
    pub latency_small: Vec<OpenRun>,
    /// The same, alternating, through a 10 000-service table.
    pub latency_big: Vec<OpenRun>,
    /// Problems met (a table that failed to start, …).
    pub problems: Vec<String>,
}

/// `services` filler services (10 endpoints each; `variant` changes service 7's first
/// endpoint) plus `bench`, whose endpoint is the upstream.
fn config(services: usize, variant: usize, upstream: SocketAddr) -> String {
    let mut out = String::with_capacity(services * 260 + 512);
    out.push_str(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [steering]\nenabled = false\n[access_log]\nsink = \"off\"\n",
    );
    let _ = write!(
        out,
        "[[service]]\nname = \"{SERVICE}\"\nvip = \"127.10.0.1:80\"\nendpoints = [\"{upstream}\"]\n\
         [service.timeouts]\nupstream_idle_ms = 60000\n"
    );
    for i in 0..services {
        let port = 20_000 + (i % 40_000);
        let first = if i == 7 { format!("127.0.9.{}", variant % 200 + 1) } else { "127.0.1.1".into() };
        let _ = write!(
            out,
            "[[service]]\nname = \"svc-{i}\"\nvip = \"127.{}.{}.{}:80\"\nendpoints = [\"{first}:{port}\"",
            20 + (i >> 16),
            (i >> 8) & 255,
            i & 255
        );
        for j in 2..=10 {
            let _ = write!(out, ", \"127.0.1.{j}:{port}\"");
        }
        out.push_str("]\n");
    }
    out
}

/// A running weir of this section, with its config file (rewritten for reloads).
struct Weir {
    proc: Proc,
    running: Running,
    admin: SocketAddr,
    config: std::path::PathBuf,
}

impl Weir {
    fn start(env: &Env, name: &str, text: &str) -> anyhow::Result<(Weir, f64)> {
        let config = env.dir.join("configs").join(format!("{name}.toml"));
        std::fs::create_dir_all(config.parent().context("config dir")?)?;
        std::fs::write(&config, text)?;
        let ready_file = env.dir.join("logs").join(format!("{name}.ready.json"));
        let _ = std::fs::remove_file(&ready_file);
        let started = Instant::now();
        let cpus = format!("{},{}", env.client_cpu, env.proxy_cpu);
        let mut proc = Proc::spawn(
            name,
            &cpus,
            &env.weir,
            &["run", "--config", &config.display().to_string(), "--ready-file", &ready_file.display().to_string()],
            &[("RUST_LOG", "warn")],
            &env.dir.join("logs").join(format!("{name}.log")),
        )?;
        let (listen, admin) = procs::wait_ready_file(&mut proc, &ready_file)?;
        procs::wait_ready(&mut proc, admin, "admin", "/ready")?;
        let ready_s = started.elapsed().as_secs_f64();
        let running = Running { proc: None, addr: listen, host: SERVICE.into(), cgroup: None, admin: Some(admin) };
        Ok((Weir { proc, running, admin, config }, ready_s))
    }

    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let body = procs::http_body(self.admin, "/metrics")?;
        Ok(weir_testkit::metric_value(&body, name))
    }

    /// Rewrites the config and waits until weir applied it; weir's own reload duration, ms.
    fn reload(&self, text: &str) -> anyhow::Result<f64> {
        let ok = "weir_config_reloads_total{result=\"success\"}";
        let before = self.metric(ok)?;
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.proc.pid, libc::SIGHUP) };
        wait_until(Duration::from_secs(60), || (self.metric(ok).ok()? > before).then_some(()))
            .context("the reload was not applied within 60 s")?;
        Ok(self.metric("weir_config_last_reload_duration_seconds")? * 1000.0)
    }

    /// RSS once two readings 500 ms apart are within 1 MiB (at most 20 s), MiB.
    fn settled_mib(&self) -> f64 {
        let mut last = self.proc.rss_bytes();
        let settled = wait_until(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(500)); // the sampling interval
            let now = self.proc.rss_bytes();
            let stable = now.abs_diff(last) < 1 << 20;
            last = now;
            stable.then_some(now)
        });
        settled.unwrap_or(last) as f64 / (1 << 20) as f64
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn table(env: &Env, services: usize, reloads: usize, upstream: SocketAddr) -> anyhow::Result<Table> {
    let name = format!("weir-scale-{services}");
    let (w, ready_s) = Weir::start(env, &name, &config(services, 0, upstream))?;
    let rss_ready_mib = mib(w.proc.rss_bytes());
    let rss_settled_mib = w.settled_mib();
    let t = Instant::now();
    let metrics_bytes = procs::http_body(w.admin, "/metrics")?.len();
    let metrics_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut took = Vec::with_capacity(reloads);
    for variant in 1..=reloads {
        took.push(w.reload(&config(services, variant, upstream))?);
    }
    took.sort_by(f64::total_cmp);
    let rss_after_reloads_mib = w.settled_mib();
    w.reload(&config(0, 0, upstream))?;
    let rss_shrunk_mib = w.settled_mib();
    Ok(Table {
        services,
        ready_s,
        rss_ready_mib,
        rss_settled_mib,
        reloads,
        reload_p50_ms: took.get(took.len() / 2).copied().unwrap_or(0.0),
        reload_max_ms: took.last().copied().unwrap_or(0.0),
        rss_after_reloads_mib,
        rss_shrunk_mib,
        metrics_bytes,
        metrics_ms,
    })
}

/// Runs the section.
pub(super) fn run(env: &Env, plan: &Plan, upstream: SocketAddr) -> Scale {
    let mut problems = Vec::new();
    let baseline_mib = match Weir::start(env, "weir-scale-1", &config(0, 0, upstream)) {
        Ok((w, _)) => w.settled_mib(),
        Err(e) => {
            problems.push(format!("one-service baseline: {e:#}"));
            0.0
        }
    };
    let sizes: &[usize] = if plan.quick { &[1_000, 10_000] } else { &[1_000, 10_000, 100_000] };
    let reloads = if plan.quick { 20 } else { 100 };
    let mut tables = Vec::new();
    for &n in sizes {
        if procs::stopping() {
            break;
        }
        eprintln!("bench: scale: {n} services x 10 endpoints, {reloads} one-service reloads");
        match table(env, n, reloads, upstream) {
            Ok(t) => tables.push(t),
            Err(e) => problems.push(format!("{n} services: {e:#}")),
        }
    }
    let (mut latency_small, mut latency_big) = (Vec::new(), Vec::new());
    if let Err(e) = latency(env, plan, upstream, &mut latency_small, &mut latency_big) {
        problems.push(format!("latency with a large table: {e:#}"));
    }
    Scale { baseline_mib, tables, latency_small, latency_big, problems }
}

/// Open-loop rounds, alternating between a one-service weir and a 10 000-service one (both
/// started first, the order of each round's pair rotating), through the `bench` service.
fn latency(
    env: &Env,
    plan: &Plan,
    upstream: SocketAddr,
    small: &mut Vec<OpenRun>,
    big: &mut Vec<OpenRun>,
) -> anyhow::Result<()> {
    let (s, _) = Weir::start(env, "weir-scale-latency-1", &config(0, 0, upstream))?;
    let (b, _) = Weir::start(env, "weir-scale-latency-10000", &config(10_000, 0, upstream))?;
    let rate = plan.affinity_rate;
    let secs = plan.affinity_s;
    for round in 0..plan.rounds {
        if procs::stopping() {
            break;
        }
        let order = if round % 2 == 0 { [(&s, true), (&b, false)] } else { [(&b, false), (&s, true)] };
        for (w, is_small) in order {
            let run = measure::open(env, plan, &w.running, rate, secs)?;
            if is_small { small.push(run) } else { big.push(run) }
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// p50 and p99 medians over rounds, µs.
pub(super) fn latency_medians(runs: &[OpenRun]) -> (Option<f64>, Option<f64>) {
    let mut p50: Vec<f64> = runs.iter().map(|r| r.latency.p50_us).collect();
    let mut p99: Vec<f64> = runs.iter().map(|r| r.latency.p99_us).collect();
    (median(&mut p50), median(&mut p99))
}

/// The section's markdown.
pub(super) fn markdown(s: &Scale) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Scale: large service tables\n\nweir alone, 2 workers, every service with 10 endpoints, no traffic to them. \
Baseline: a one-service weir, {:.1} MiB settled. Reloads each change one service's endpoints; their duration is \
weir's own (file read → new snapshot published). RSS is settled (two readings 500 ms apart within 1 MiB).\n",
        s.baseline_mib
    );
    let _ = writeln!(
        md,
        "| services | ready | RSS ready | RSS settled | above baseline | reloads | reload p50 / max | RSS after reloads | RSS after shrinking to one | /metrics |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &s.tables {
        let _ = writeln!(
            md,
            "| {} | {:.2} s | {:.1} MiB | {:.1} MiB | {:+.1} MiB | {} | {:.1} / {:.1} ms | {:.1} MiB | {:.1} MiB | {:.0} kB in {:.0} ms |",
            t.services,
            t.ready_s,
            t.rss_ready_mib,
            t.rss_settled_mib,
            t.rss_settled_mib - s.baseline_mib,
            t.reloads,
            t.reload_p50_ms,
            t.reload_max_ms,
            t.rss_after_reloads_mib,
            t.rss_shrunk_mib,
            t.metrics_bytes as f64 / 1000.0,
            t.metrics_ms
        );
    }
    let (sp50, sp99) = latency_medians(&s.latency_small);
    let (bp50, bp99) = latency_medians(&s.latency_big);
    if let (Some(sp50), Some(sp99), Some(bp50), Some(bp99)) = (sp50, sp99, bp50, bp99) {
        let rate = s.latency_small.first().map_or(0.0, |r| r.rate);
        let _ = writeln!(
            md,
            "\nPer-request latency through the `bench` service, open loop at {rate:.0} rps, {} alternating rounds each \
(medians): one-service table p50 {} / p99 {}; 10 000-service table p50 {} / p99 {} ({:.2}× / {:.2}×).\n",
            s.latency_small.len(),
            us(sp50),
            us(sp99),
            us(bp50),
            us(bp99),
            bp50 / sp50,
            bp99 / sp99
        );
    }
    for p in &s.problems {
        let _ = writeln!(md, "- problem: {p}");
    }
    md
}
