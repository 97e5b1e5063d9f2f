//! The gain of CPU-affine accept, measured in one run: two steered weir processes with two
//! workers each, started on CPUs 0 and 1 (weir pins worker *i* to the *i*-th CPU of its mask
//! itself), one with `[steering] cpu_affinity = true` — its sk_reuseport program hands a new
//! connection to the worker of the CPU that received it, on loopback the client's — and one
//! with it off, where the kernel's reuseport hash splits the connections between the workers.
//! The load generator (in the steered cgroup) and the upstream run on CPU 0; each variant is
//! reached through its own VIP, so both can stay attached to the one cgroup. Open-loop rounds
//! alternate between the two (taking turns going first), with fresh connections every round;
//! the program's kernel counters (`/steering`) and the workers' CPU time show where the
//! connections went. Must not: pin weir to one CPU, or compare numbers from different runs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

use super::features::median;
use super::measure::{self, OpenRun, Plan};
use super::peers::{self, Env, Running, SERVICE, WeirSpec};
use super::procs;
use super::report::us;

/// The VIP each variant is steered through: (cpu_affinity, key, label, VIP).
const VARIANTS: [(bool, &str, &str, &str); 2] = [
    (true, "weir-affinity-on", "weir, 2 workers, `cpu_affinity = true`", "127.10.0.2:80"),
    (false, "weir-affinity-off", "weir, 2 workers, `cpu_affinity = false`", "127.10.0.3:80"),
];

/// One weir variant's results.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AffinityVariant {
    /// Stable key.
    pub key: String,
    /// What the report calls it.
    pub label: String,
    /// `[steering] cpu_affinity`.
    pub cpu_affinity: bool,
    /// The VIP its client dials.
    pub vip: String,
    /// Open-loop runs, one per round.
    pub rounds: Vec<OpenRun>,
    /// Medians of the rounds' percentiles, µs.
    pub p50_us: Option<f64>,
    /// 99th.
    pub p99_us: Option<f64>,
    /// 99.9th.
    pub p999_us: Option<f64>,
    /// Median of the rounds' client send lag p99, µs.
    pub send_lag_p99_us: Option<f64>,
    /// Errors over all rounds.
    pub errors: u64,
    /// Connections the generator opened in the rounds that ran (per round, fresh).
    pub connections_opened: u64,
    /// Kernel counters of this weir over the rounds (deltas of `/steering` `counters`):
    /// connects rewritten to it.
    pub redirected: u64,
    /// Connections its sk_reuseport program gave to the worker of their CPU.
    pub affine_accept: u64,
    /// Connections its program found no worker for (the kernel's hash chose).
    pub affine_miss: u64,
    /// CPU seconds of each worker thread (index = worker) over the rounds.
    pub worker_cpu_s: Vec<f64>,
    /// CPUs each worker thread may run on (index = worker), as weir pinned them.
    pub worker_cpus: Vec<String>,
    /// What went wrong, if anything.
    pub problems: Vec<String>,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Affinity {
    /// "ok", "unavailable" (no root/cgroup, or one CPU) or "failed".
    pub status: String,
    /// Why it is unavailable or failed.
    pub note: Option<String>,
    /// The taskset CPU list both weir processes started on.
    pub weir_cpus: String,
    /// Affinity on, then off.
    pub variants: Vec<AffinityVariant>,
}

impl Affinity {
    /// A comparison that did not run.
    pub(super) fn not_run(status: &str, note: String) -> Affinity {
        Affinity { status: status.into(), note: Some(note), weir_cpus: String::new(), variants: Vec::new() }
    }

    /// The variant with `cpu_affinity == on`.
    pub(super) fn variant(&self, on: bool) -> Option<&AffinityVariant> {
        self.variants.iter().find(|v| v.cpu_affinity == on && !v.rounds.is_empty())
    }
}

/// Kernel counters and worker CPU of one weir at one moment.
struct Snapshot {
    counters: serde_json::Value,
    workers: Vec<(f64, String)>,
}

fn snapshot(r: &Running) -> anyhow::Result<Snapshot> {
    let admin = r.admin.ok_or_else(|| anyhow::anyhow!("weir has no admin address"))?;
    let body = procs::http_body(admin, "/steering")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("/steering answered {body:?}: {e}"))?;
    let counters = v.get("counters").cloned().ok_or_else(|| anyhow::anyhow!("/steering has no counters: {body}"))?;
    let mut workers = Vec::new();
    for t in r.proc.as_ref().map(|p| weir_testkit::proc::threads(p.pid)).unwrap_or_default() {
        if let Some(i) = t.name.strip_prefix("weir-worker-").and_then(|n| n.parse::<usize>().ok()) {
            if workers.len() <= i {
                workers.resize(i + 1, (0.0, String::new()));
            }
            workers[i] = (t.cpu_seconds, t.cpus_allowed);
        }
    }
    Ok(Snapshot { counters, workers })
}

fn counter(s: &Snapshot, name: &str) -> u64 {
    s.counters.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

/// Runs the comparison against the upstream at `upstream_addr`; never fails (the result says
/// why it did not run).
pub(super) fn run(env: &Env, plan: &Plan, upstream_addr: SocketAddr) -> Affinity {
    let cgroup = match &env.cgroup {
        Ok(cg) => cg.clone(),
        Err(why) => return Affinity::not_run("unavailable", why.clone()),
    };
    if env.proxy_cpu == env.client_cpu {
        return Affinity::not_run(
            "unavailable",
            "needs two CPUs (one worker on the client's CPU, one on another)".into(),
        );
    }
    // Worker 0 on the client's CPU, worker 1 on the other one.
    let weir_cpus = format!("{},{}", env.client_cpu, env.proxy_cpu);
    match measure_variants(env, plan, upstream_addr, &cgroup, &weir_cpus) {
        Ok(variants) => Affinity { status: "ok".into(), note: None, weir_cpus, variants },
        Err(e) => {
            eprintln!("bench: affinity: failed: {e:#}");
            Affinity { weir_cpus, ..Affinity::not_run("failed", format!("{e:#}")) }
        }
    }
}

fn measure_variants(
    env: &Env,
    plan: &Plan,
    upstream_addr: SocketAddr,
    cgroup: &Path,
    cpus: &str,
) -> anyhow::Result<Vec<AffinityVariant>> {
    let mut running: Vec<(AffinityVariant, Running)> = Vec::new();
    for (on, key, label, vip) in VARIANTS {
        let spec =
            WeirSpec { name: key, sink: "off", cgroup: Some(cgroup), workers: 2, vip, cpu_affinity: Some(on), cpus };
        let r = peers::start_weir_spec(env, &spec, upstream_addr)?;
        let v = AffinityVariant {
            key: key.into(),
            label: label.into(),
            cpu_affinity: on,
            vip: vip.into(),
            rounds: Vec::new(),
            p50_us: None,
            p99_us: None,
            p999_us: None,
            send_lag_p99_us: None,
            errors: 0,
            connections_opened: 0,
            redirected: 0,
            affine_accept: 0,
            affine_miss: 0,
            worker_cpu_s: Vec::new(),
            worker_cpus: Vec::new(),
            problems: Vec::new(),
        };
        running.push((v, r));
    }
    let before: Vec<Snapshot> = running.iter().map(|(_, r)| snapshot(r)).collect::<anyhow::Result<_>>()?;
    let round_plan = Plan { open_connections: plan.affinity_connections, ..plan.clone() };
    for round in 0..plan.affinity_rounds {
        // Take turns going first, so a slow start of a round does not always hit one variant.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (v, r) = &mut running[i];
            eprintln!(
                "bench: affinity: round {} of {}: {} at {} rps",
                round + 1,
                plan.affinity_rounds,
                v.key,
                plan.affinity_rate
            );
            match measure::open(env, &round_plan, r, plan.affinity_rate, plan.affinity_s) {
                Ok(o) => {
                    v.connections_opened += plan.affinity_connections as u64;
                    v.rounds.push(o);
                }
                Err(e) => v.problems.push(format!("open loop: {e:#}")),
            }
        }
    }
    let mut out = Vec::new();
    for ((mut v, mut r), b) in running.into_iter().zip(before) {
        match snapshot(&r) {
            Ok(a) => {
                v.redirected = counter(&a, "redirected").saturating_sub(counter(&b, "redirected"));
                v.affine_accept = counter(&a, "affine_accept").saturating_sub(counter(&b, "affine_accept"));
                v.affine_miss = counter(&a, "affine_miss").saturating_sub(counter(&b, "affine_miss"));
                v.worker_cpu_s = a
                    .workers
                    .iter()
                    .zip(b.workers.iter().map(|w| w.0).chain(std::iter::repeat(0.0)))
                    .map(|(w, b0)| w.0 - b0)
                    .collect();
                v.worker_cpus = a.workers.into_iter().map(|w| w.1).collect();
            }
            Err(e) => v.problems.push(format!("reading /steering and worker CPU after the rounds: {e:#}")),
        }
        if let Some(p) = r.proc.as_mut()
            && let Err(e) = p.check_alive()
        {
            v.problems.push(format!("weir died during the run: {e:#}"));
        }
        v.p50_us = median(v.rounds.iter().map(|o| o.latency.p50_us).collect());
        v.p99_us = median(v.rounds.iter().map(|o| o.latency.p99_us).collect());
        v.p999_us = median(v.rounds.iter().map(|o| o.latency.p999_us).collect());
        v.send_lag_p99_us = median(v.rounds.iter().map(|o| o.send_lag_p99_us).collect());
        v.errors = v.rounds.iter().map(|o| o.errors).sum();
        eprintln!(
            "bench: affinity: {}: p50 {} µs, p99 {} µs, p99.9 {} µs; affine_accept {}, affine_miss {}, redirected {}",
            v.key,
            v.p50_us.map_or("-".into(), us),
            v.p99_us.map_or("-".into(), us),
            v.p999_us.map_or("-".into(), us),
            v.affine_accept,
            v.affine_miss,
            v.redirected
        );
        if v.cpu_affinity && v.affine_accept == 0 && !v.rounds.is_empty() {
            v.problems.push("affine_accept stayed 0: the sk_reuseport program did not select a worker".into());
        }
        // Stop it now (weir removes its pins and detaches on SIGTERM).
        drop(r);
        out.push(v);
    }
    Ok(out)
}

/// Off ÷ on of one latency (above 1: CPU-affine accept is faster).
fn gain(off: Option<f64>, on: Option<f64>) -> Option<f64> {
    match (off, on) {
        (Some(off), Some(on)) if on > 0.0 => Some(off / on),
        _ => None,
    }
}

fn times(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.2}×"))
}

/// The report section: what is measured, the table, and the gain.
pub(super) fn table(a: &Affinity, plan: &Plan) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "\n### CPU-affine accept (2 workers, client on CPU 0)\n");
    let _ = writeln!(
        md,
        "weir with `[proxy] workers = 2` and eBPF steering, started on CPUs {cpus} (it pins worker 0 to CPU 0 and worker 1 to CPU 1 \
itself); the load generator — in the steered cgroup, dialing a service VIP — and the upstream are pinned to CPU 0. With \
`[steering] cpu_affinity = true` weir attaches an `sk_reuseport` program that hands each new connection to the listener of the \
worker pinned to the CPU that received the SYN — on loopback, the client's — so every connection is served by worker 0 and no \
request crosses cores. With `cpu_affinity = false` the kernel's reuseport hash sends about half of the connections to worker 1 on \
CPU 1, and every request on them pays cross-core wake-ups (client → worker 1 → upstream and back), which cost tens of µs on a VM. \
Both weir processes run side by side, each steered through its own VIP ({on_vip} on, {off_vip} off), and are measured in {rounds} \
alternating rounds of {secs} s open loop at {rate:.0} rps over {conns} keep-alive connections opened fresh every round (so the hash \
splits a new set each time); latencies are medians of the rounds' percentiles, from the intended send time. `affine_accept` / \
`affine_miss` are the program's kernel counters (weir's `/steering`, deltas over the rounds): with affinity on, every connection \
should be an `affine_accept`; with it off no program is attached. *Worker 1 share* is worker 1's part of the two worker threads' \
CPU time.\n",
        cpus = if a.weir_cpus.is_empty() { "0,1".into() } else { a.weir_cpus.clone() },
        on_vip = VARIANTS[0].3,
        off_vip = VARIANTS[1].3,
        rounds = plan.affinity_rounds,
        secs = plan.affinity_s,
        rate = plan.affinity_rate,
        conns = plan.affinity_connections,
    );
    let _ = writeln!(
        md,
        "| variant | p50 (µs) | p99 (µs) | p99.9 (µs) | p99 per round (µs) | ×affinity on, p50 / p99 / p99.9 | client send lag p99 (µs) | connections opened | steered (`redirected`) | `affine_accept` | `affine_miss` | worker 1 share of worker CPU | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    if a.status != "ok" {
        let note = a.note.clone().unwrap_or_default().replace('|', "/").replace('\n', " ");
        let note: String = note.chars().take(160).collect();
        let _ = writeln!(md, "| **{}**: {note} |{}", a.status, " |".repeat(12));
        return md;
    }
    let on = a.variant(true);
    for v in &a.variants {
        let opt = |x: Option<f64>| x.map_or("–".into(), us);
        let rounds = v.rounds.iter().map(|o| us(o.latency.p99_us)).collect::<Vec<_>>().join(", ");
        let vs_on = if v.cpu_affinity {
            "1 (baseline)".into()
        } else {
            let g = |f: fn(&AffinityVariant) -> Option<f64>| gain(f(v), on.and_then(f));
            format!("{} / {} / {}", times(g(|x| x.p50_us)), times(g(|x| x.p99_us)), times(g(|x| x.p999_us)))
        };
        let total: f64 = v.worker_cpu_s.iter().sum();
        let share = match v.worker_cpu_s.get(1) {
            Some(w1) if total > 0.0 => format!("{:.0}%", w1 / total * 100.0),
            _ => "–".into(),
        };
        let (accept, miss) = if v.cpu_affinity {
            (v.affine_accept.to_string(), v.affine_miss.to_string())
        } else {
            (format!("{} (no program)", v.affine_accept), v.affine_miss.to_string())
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {rounds} | {vs_on} | {} | {} | {} | {accept} | {miss} | {share} | {} |",
            v.label,
            opt(v.p50_us),
            opt(v.p99_us),
            opt(v.p999_us),
            opt(v.send_lag_p99_us),
            v.connections_opened,
            v.redirected,
            v.errors
        );
    }
    let off = a.variant(false);
    let g = |f: fn(&AffinityVariant) -> Option<f64>| gain(off.and_then(f), on.and_then(f));
    let _ = writeln!(
        md,
        "\n**Gain of CPU-affine accept** (latency with `cpu_affinity = false` ÷ with `true`; above 1× means affine accept is faster): \
p50 {}, p99 {}, p99.9 {}.",
        times(g(|x| x.p50_us)),
        times(g(|x| x.p99_us)),
        times(g(|x| x.p999_us))
    );
    let placement: Vec<String> = a
        .variants
        .iter()
        .map(|v| {
            let w = v
                .worker_cpus
                .iter()
                .enumerate()
                .map(|(i, c)| format!("worker {i} → CPU {c}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{}: {}",
                if v.cpu_affinity { "on" } else { "off" },
                if w.is_empty() { "unknown".into() } else { w }
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "Worker placement (each thread's `Cpus_allowed_list`): {}. Service `{SERVICE}`, access log off.",
        placement.join("; ")
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::Latency;

    fn variant(on: bool, p50: f64, p99: f64, p999: f64, workers: Vec<f64>) -> AffinityVariant {
        let latency = Latency { count: 4000, p50_us: p50, p99_us: p99, p999_us: p999, ..Latency::default() };
        let round = OpenRun {
            rate: 2000.0,
            achieved_rps: 2000.0,
            errors: 0,
            error_samples: vec![],
            latency,
            send_lag_p99_us: 5.0,
            send_lag_max_us: 9.0,
        };
        let (key, label, vip) = if on {
            (VARIANTS[0].1, VARIANTS[0].2, VARIANTS[0].3)
        } else {
            (VARIANTS[1].1, VARIANTS[1].2, VARIANTS[1].3)
        };
        AffinityVariant {
            key: key.into(),
            label: label.into(),
            cpu_affinity: on,
            vip: vip.into(),
            rounds: vec![round],
            p50_us: Some(p50),
            p99_us: Some(p99),
            p999_us: Some(p999),
            send_lag_p99_us: Some(5.0),
            errors: 0,
            connections_opened: 64,
            redirected: 64,
            affine_accept: if on { 64 } else { 0 },
            affine_miss: 0,
            worker_cpu_s: workers,
            worker_cpus: vec!["0".into(), "1".into()],
            problems: vec![],
        }
    }

    #[test]
    fn table_shows_gain_counters_and_worker_share() {
        let a = Affinity {
            status: "ok".into(),
            note: None,
            weir_cpus: "0,1".into(),
            variants: vec![
                variant(true, 50.0, 100.0, 200.0, vec![0.4, 0.0]),
                variant(false, 75.0, 300.0, 800.0, vec![0.2, 0.2]),
            ],
        };
        let md = table(&a, &Plan::new(true));
        assert!(md.contains("p50 1.50×, p99 3.00×, p99.9 4.00×"), "{md}");
        assert!(md.contains("| 1.50× / 3.00× / 4.00× |"), "{md}");
        assert!(
            md.contains("| 64 | 64 | 64 | 0 | 0% | 0 |"),
            "affinity on: every connection affine, worker 1 idle: {md}"
        );
        assert!(md.contains("| 0 (no program) | 0 | 50% |"), "{md}");
        assert!(md.contains("on: worker 0 → CPU 0, worker 1 → CPU 1"), "{md}");
    }
}
