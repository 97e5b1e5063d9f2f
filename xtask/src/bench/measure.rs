//! The measurements of one path (one round of them), with identical settings for every path: added latency per
//! hop (one connection, sequential requests, everything on the proxy's core), open loop at
//! fixed rates, saturated closed loop with proxy CPU per request (/proc utime+stime deltas),
//! and RSS idle and with many idle keep-alive client connections. Runs `weir-loadgen`
//! pinned with `taskset` (in the steered cgroup for the steered path) and bounds every run.
//! Must not: start or configure proxies (peers.rs does), or format results (report.rs does).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::peers::{Env, Running};
use super::procs::{self, Proc};

/// Durations, rates and sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Plan {
    /// `--quick`.
    pub quick: bool,
    /// Open-loop rates, requests per second.
    pub rates: Vec<f64>,
    /// Open loop: seconds sent before recording, and recorded seconds.
    pub open_warmup_s: f64,
    /// Recorded seconds per rate.
    pub open_s: f64,
    /// Open loop keep-alive connections.
    pub open_connections: usize,
    /// Per-hop test: unrecorded and recorded sequential requests.
    pub seq_warmup: u64,
    /// Recorded sequential requests.
    pub seq_requests: u64,
    /// Closed loop: warm-up seconds (before every measured run), measured seconds,
    /// connections.
    pub sat_warmup_s: f64,
    /// Measured seconds.
    pub sat_s: f64,
    /// Connections.
    pub sat_connections: usize,
    /// Idle keep-alive client connections for the memory test.
    pub idle_connections: usize,
    /// Access-log comparison: open-loop rate, seconds per round, rounds.
    pub feature_rate: f64,
    /// Seconds per round.
    pub feature_s: f64,
    /// Rounds (variants alternate within each round).
    pub feature_rounds: usize,
    /// CPU-affine accept comparison: open-loop rate, seconds per round, rounds, connections
    /// (fresh ones every round, so the kernel's hash splits them anew).
    pub affinity_rate: f64,
    /// Seconds per round.
    pub affinity_s: f64,
    /// Rounds (the two variants alternate, in turn first within a round).
    pub affinity_rounds: usize,
    /// Keep-alive connections per round.
    pub affinity_connections: usize,
    /// Rounds of the path measurements: the per-hop requests and the open- and closed-loop
    /// seconds above are split over them, and every path takes its turn in each round.
    pub rounds: usize,
}

impl Plan {
    /// `total` (requests or seconds of the path measurements) split over the rounds.
    pub(super) fn per_round(&self, total: f64) -> f64 {
        total / self.rounds.max(1) as f64
    }

    /// The plan for `--quick` (about two minutes of measurement) or the full run.
    pub(super) fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rates: vec![1000.0, 5000.0, 15000.0],
                open_warmup_s: 0.5,
                open_s: 2.0,
                open_connections: 64,
                seq_warmup: 500,
                seq_requests: 5000,
                sat_warmup_s: 0.5,
                sat_s: 2.0,
                sat_connections: 32,
                idle_connections: 10_000,
                feature_rate: 5000.0,
                feature_s: 1.5,
                feature_rounds: 3,
                affinity_rate: 2000.0,
                affinity_s: 2.0,
                affinity_rounds: 6,
                affinity_connections: 32,
                rounds: 2,
            }
        } else {
            Plan {
                quick,
                rates: vec![1000.0, 5000.0, 15000.0],
                open_warmup_s: 1.0,
                open_s: 20.0,
                open_connections: 64,
                seq_warmup: 2000,
                seq_requests: 50_000,
                sat_warmup_s: 0.5,
                sat_s: 15.0,
                sat_connections: 32,
                idle_connections: 10_000,
                feature_rate: 5000.0,
                feature_s: 6.0,
                feature_rounds: 5,
                affinity_rate: 2000.0,
                affinity_s: 5.0,
                affinity_rounds: 8,
                affinity_connections: 32,
                rounds: 5,
            }
        }
    }
}

/// Latency summary as `weir-loadgen` prints it (µs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Recorded requests.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Percentiles.
    pub p50_us: f64,
    /// 90th.
    pub p90_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// 99.9th.
    pub p999_us: f64,
    /// Max.
    pub max_us: f64,
    /// `[percentile, µs]` points for the plot.
    pub distribution: Vec<(f64, f64)>,
}

#[derive(Debug, Deserialize)]
struct LoopOut {
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    achieved_rps: f64,
    latency: Latency,
    send_lag: Latency,
}

#[derive(Debug, Deserialize)]
struct SeqOut {
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    latency: Latency,
}

#[derive(Debug, Deserialize)]
struct IdleOut {
    connected: u64,
    errors: u64,
    error_samples: Vec<String>,
}

/// One open-loop run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OpenRun {
    /// Intended rate.
    pub rate: f64,
    /// 2xx responses per recorded second.
    pub achieved_rps: f64,
    /// Errors (non-2xx, broken connections, unfinished).
    pub errors: u64,
    /// First error messages.
    pub error_samples: Vec<String>,
    /// Latency from the intended send time.
    pub latency: Latency,
    /// How late the generator sent, p99 and max (µs): large values mean the client core was
    /// busy, which the latency includes.
    pub send_lag_p99_us: f64,
    /// Max send lag.
    pub send_lag_max_us: f64,
}

/// The per-hop test.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PerHop {
    /// Median round trip.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Recorded requests.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
}

/// The saturated closed loop.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Saturation {
    /// Requests per second.
    pub rps: f64,
    /// Requests completed.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Proxy CPU seconds used during the run (utime + stime, whole process tree).
    pub proxy_cpu_s: Option<f64>,
    /// Proxy CPU per request, µs.
    pub proxy_cpu_us_per_req: Option<f64>,
    /// Proxy CPU seconds / wall seconds: below ~0.9 the client core, not the proxy, was the
    /// limit.
    pub proxy_utilization: Option<f64>,
    /// Upstream CPU per request, µs.
    pub upstream_cpu_us_per_req: f64,
    /// Closed-loop latency percentiles (from the actual send).
    pub p50_us: f64,
    /// 99th.
    pub p99_us: f64,
}

/// Memory of the proxy.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Memory {
    /// RSS after start and a few requests.
    pub rss_idle_bytes: u64,
    /// RSS right before the idle connections were opened (after the load runs).
    pub rss_before_bytes: u64,
    /// RSS with them open.
    pub rss_loaded_bytes: u64,
    /// Idle keep-alive client connections held.
    pub connections: u64,
    /// (loaded − before) / connections.
    pub per_connection_bytes: f64,
}

/// Runs `weir-loadgen` on `cpus` (in `cgroup` if given) and parses its JSON; kills it if it
/// overruns `bound`.
fn loadgen<T: for<'de> Deserialize<'de>>(
    env: &Env,
    cpus: &str,
    cgroup: Option<&Path>,
    args: &[String],
    bound: Duration,
) -> anyhow::Result<T> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus]).arg(&env.loadgen).args(args);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let shown = format!("weir-loadgen {}", args.join(" "));
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
    procs::track(&mut child)?;
    let pid = child.id();
    let Some(status) = weir_testkit::proc::wait_exit(&mut child, bound + Duration::from_secs(15)) else {
        let _ = child.kill();
        let _ = child.wait();
        procs::untrack(pid);
        bail!("{shown} overran its time bound and was killed");
    };
    let out = child.wait_with_output();
    procs::untrack(pid);
    let out = out?;
    if !status.success() {
        bail!("{shown} failed ({status}): {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{shown} printed no report: {}", String::from_utf8_lossy(&out.stdout)))
}

fn common(r: &Running) -> Vec<String> {
    vec!["--addr".into(), r.addr.to_string(), "--host".into(), r.host.clone()]
}

/// Open loop at `rate` for `secs` (after `warmup` s) from the client core.
pub(super) fn open(env: &Env, plan: &Plan, r: &Running, rate: f64, secs: f64) -> anyhow::Result<OpenRun> {
    open_with(env, plan, r, rate, secs, &[&env.client_cpu], plan.open_connections)
}

/// [`open`] from one load generator per entry of `clients` (its CPU list), each sending its
/// share of `rate` over its share of `connections`, all at once. Rates, counts and errors add
/// up; each latency percentile is the worst of the generators' (their recordings cannot be
/// merged exactly).
pub(super) fn open_with(
    env: &Env,
    plan: &Plan,
    r: &Running,
    rate: f64,
    secs: f64,
    clients: &[&str],
    connections: usize,
) -> anyhow::Result<OpenRun> {
    let n = clients.len().max(1);
    let mut args = vec!["open".to_string()];
    args.extend(common(r));
    args.extend(
        [
            ("--rate", (rate / n as f64).to_string()),
            ("--duration", secs.to_string()),
            ("--warmup", plan.open_warmup_s.to_string()),
            ("--connections", connections.div_ceil(n).to_string()),
        ]
        .map(|(k, v)| [k.to_string(), v])
        .into_iter()
        .flatten(),
    );
    let bound = Duration::from_secs_f64(secs + plan.open_warmup_s);
    let out = together(clients, |cpus| loadgen::<LoopOut>(env, cpus, r.cgroup.as_deref(), &args, bound))?;
    Ok(OpenRun {
        rate,
        achieved_rps: out.achieved_rps,
        errors: out.errors,
        error_samples: out.error_samples,
        latency: out.latency,
        send_lag_p99_us: out.send_lag.p99_us,
        send_lag_max_us: out.send_lag.max_us,
    })
}

/// Runs `run` once per client CPU list, all at once, and adds their reports up.
fn together(clients: &[&str], run: impl Fn(&str) -> anyhow::Result<LoopOut> + Sync) -> anyhow::Result<LoopOut> {
    let outs: Vec<anyhow::Result<LoopOut>> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients.iter().map(|cpus| scope.spawn(|| run(cpus))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a load generator thread panicked"))))
            .collect()
    });
    let mut sum: Option<LoopOut> = None;
    for out in outs {
        let out = out?;
        sum = Some(match sum {
            None => out,
            Some(s) => LoopOut {
                ok: s.ok + out.ok,
                errors: s.errors + out.errors,
                error_samples: s.error_samples.into_iter().chain(out.error_samples).take(5).collect(),
                achieved_rps: s.achieved_rps + out.achieved_rps,
                latency: worst(&s.latency, &out.latency),
                send_lag: worst(&s.send_lag, &out.send_lag),
            },
        });
    }
    sum.context("no load generator ran")
}

/// Per percentile the worse of `a` and `b`; counts add up, the mean is weighted.
fn worst(a: &Latency, b: &Latency) -> Latency {
    let count = a.count + b.count;
    let mean_us = (a.mean_us * a.count as f64 + b.mean_us * b.count as f64) / count.max(1) as f64;
    let distribution = if a.p99_us >= b.p99_us { a.distribution.clone() } else { b.distribution.clone() };
    Latency {
        count,
        mean_us,
        p50_us: a.p50_us.max(b.p50_us),
        p90_us: a.p90_us.max(b.p90_us),
        p99_us: a.p99_us.max(b.p99_us),
        p999_us: a.p999_us.max(b.p999_us),
        max_us: a.max_us.max(b.max_us),
        distribution,
    }
}

/// One connection, `requests` sequential requests, load generator on `cpus`.
pub(super) fn per_hop(env: &Env, plan: &Plan, r: &Running, cpus: &str, requests: u64) -> anyhow::Result<PerHop> {
    let mut args = vec!["seq".to_string()];
    args.extend(common(r));
    args.extend(["--requests".into(), requests.to_string(), "--warmup-requests".into(), plan.seq_warmup.to_string()]);
    args.extend(["--max-duration".into(), "60".into()]);
    let out: SeqOut = loadgen(env, cpus, r.cgroup.as_deref(), &args, Duration::from_secs(60))?;
    if out.ok == 0 {
        bail!("no request succeeded: {}", out.error_samples.join("; "));
    }
    Ok(PerHop {
        p50_us: out.latency.p50_us,
        p99_us: out.latency.p99_us,
        mean_us: out.latency.mean_us,
        requests: out.ok,
        errors: out.errors,
    })
}

/// Closed loop from the client core: a warm-up run, then a measured run of `secs` with CPU
/// deltas of the proxy (if any) and the upstream.
pub(super) fn saturate(env: &Env, plan: &Plan, r: &Running, upstream: &Proc, secs: f64) -> anyhow::Result<Saturation> {
    saturate_with(env, plan, r, upstream, secs, &[&env.client_cpu], plan.sat_connections)
}

/// [`saturate`] from one load generator per entry of `clients` (its CPU list), sharing
/// `connections`, all at once (see [`open_with`] for how their reports add up).
pub(super) fn saturate_with(
    env: &Env,
    plan: &Plan,
    r: &Running,
    upstream: &Proc,
    secs: f64,
    clients: &[&str],
    connections: usize,
) -> anyhow::Result<Saturation> {
    let run = |secs: f64| -> anyhow::Result<LoopOut> {
        let mut args = vec!["closed".to_string()];
        args.extend(common(r));
        args.extend(["--duration".into(), secs.to_string(), "--warmup".into(), "0".into()]);
        args.extend(["--connections".into(), connections.div_ceil(clients.len().max(1)).to_string()]);
        together(clients, |cpus| loadgen(env, cpus, r.cgroup.as_deref(), &args, Duration::from_secs_f64(secs)))
    };
    run(plan.sat_warmup_s)?;
    let proxy0 = r.proc.as_ref().map(Proc::cpu_seconds);
    let up0 = upstream.cpu_seconds();
    let t0 = Instant::now();
    let out = run(secs)?;
    let wall = t0.elapsed().as_secs_f64();
    let proxy_cpu = r.proc.as_ref().map(Proc::cpu_seconds).zip(proxy0).map(|(b, a)| b - a);
    let up_cpu = upstream.cpu_seconds() - up0;
    let n = out.ok.max(1) as f64;
    Ok(Saturation {
        rps: out.achieved_rps,
        requests: out.ok,
        errors: out.errors,
        proxy_cpu_s: proxy_cpu,
        proxy_cpu_us_per_req: proxy_cpu.map(|c| c * 1e6 / n),
        proxy_utilization: proxy_cpu.map(|c| c / wall),
        upstream_cpu_us_per_req: up_cpu * 1e6 / n,
        p50_us: out.latency.p50_us,
        p99_us: out.latency.p99_us,
    })
}

/// Opens `plan.idle_connections` keep-alive connections (one request each) and measures the
/// proxy's RSS with them held, against its RSS just before.
pub(super) fn memory(env: &Env, plan: &Plan, r: &Running, proxy: &Proc, rss_idle: u64) -> anyhow::Result<Memory> {
    let before = proxy.rss_bytes();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &env.client_cpu]).arg(&env.loadgen).arg("idle").args(common(r));
    cmd.args(["--count", &plan.idle_connections.to_string(), "--hold", "90"]);
    if let Some(cg) = &r.cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting weir-loadgen idle")?;
    procs::track(&mut child)?;
    // The generator prints its report once every connection is open, then holds them until
    // its stdin closes (or 90 s pass).
    let stdout = child.stdout.take().context("loadgen stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let result = (|| -> anyhow::Result<Memory> {
        let line = rx.recv_timeout(Duration::from_secs(90)).context("weir-loadgen idle did not report within 90 s")?;
        let out: IdleOut =
            serde_json::from_str(line.trim()).with_context(|| format!("weir-loadgen idle printed {line:?}"))?;
        if out.connected == 0 {
            bail!("no idle connection could be opened: {}", out.error_samples.join("; "));
        }
        if out.errors > 0 {
            eprintln!("bench:   {} of the idle connections failed: {}", out.errors, out.error_samples.join("; "));
        }
        let loaded = settled_rss(proxy);
        Ok(Memory {
            rss_idle_bytes: rss_idle,
            rss_before_bytes: before,
            rss_loaded_bytes: loaded,
            connections: out.connected,
            per_connection_bytes: (loaded as f64 - before as f64) / out.connected as f64,
        })
    })();
    drop(child.stdin.take());
    if weir_testkit::proc::wait_exit(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    procs::untrack(child.id());
    result
}

/// The proxy's RSS once it has settled after the idle connections opened: the same reading
/// 100 ms apart (at most 5 s; then the last reading).
fn settled_rss(proxy: &Proc) -> u64 {
    let mut last = (Instant::now(), proxy.rss_bytes());
    weir_testkit::wait_until(Duration::from_secs(5), || {
        if last.0.elapsed() < Duration::from_millis(100) {
            return None;
        }
        let now = proxy.rss_bytes();
        if now == last.1 {
            return Some(now);
        }
        last = (Instant::now(), now);
        None
    })
    .unwrap_or(last.1)
}
