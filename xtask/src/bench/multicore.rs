//! Two workers on two cores, measured in one run: weir with two workers (CPU-affine accept on,
//! steered when the machine allows it, as a cluster runs it) against nginx with two worker
//! processes. The machine has only these two CPUs, so the load generators and the upstream
//! share them with the proxy: the proxies and the upstream may run on both, and there is one
//! load generator per CPU (as clients on a node run on all its CPUs; one generator alone
//! would put all its connections on one weir worker with CPU-affine accept). What the ratio
//! says is how much work each proxy leaves for the rest. Two measurements per round, the two proxies
//! taking turns going first: a closed loop (saturated rps, proxy CPU per request) and an open
//! loop at a fixed rate over 1 000 keep-alive connections (p99 with many clients). Must not:
//! compare numbers from different runs.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;

use super::features::median;
use super::measure::{self, OpenRun, Plan, Saturation};
use super::peers::{self, Env, Running, VIP, WeirSpec};
use super::procs::Proc;
use super::report::{Goal, us};
use weir_testkit::ReservedPort;

/// Keep-alive connections of the many-clients loop.
pub(super) const MANY_CONNECTIONS: usize = 1000;
/// Its rate, requests per second.
pub(super) const MANY_RATE: f64 = 10_000.0;
/// Connections of the closed loop (two workers' worth of the single-worker runs').
const SATURATION_CONNECTIONS: usize = 64;
/// The section's heading in docs/BENCHMARKS.md.
pub(super) const HEADING: &str = "### Two workers on two cores";
/// The goal: weir's saturated rps against nginx's, both with two workers.
const GOAL_RPS_RATIO: f64 = 1.3;

/// One proxy's rounds.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Contender {
    /// Stable key (`weir`, `nginx`).
    pub key: String,
    /// What the report calls it.
    pub label: String,
    /// Closed-loop runs, one per round.
    pub saturation: Vec<Saturation>,
    /// Many-connection open-loop runs, one per round.
    pub many: Vec<OpenRun>,
    /// What went wrong.
    pub problems: Vec<String>,
}

impl Contender {
    fn rps(&self) -> Option<f64> {
        median(self.saturation.iter().map(|s| s.rps).collect())
    }

    fn cpu_us(&self) -> Option<f64> {
        median(self.saturation.iter().filter_map(|s| s.proxy_cpu_us_per_req).collect())
    }

    fn many_p(&self, f: fn(&OpenRun) -> f64) -> Option<f64> {
        median(self.many.iter().map(f).collect())
    }
}

/// The section.
#[derive(Debug, Clone, Serialize)]
pub(super) struct MultiCore {
    /// "ok", "unavailable" (fewer than two CPUs, no nginx) or "failed".
    pub status: String,
    /// The CPU list every process ran on.
    pub cpus: String,
    /// weir, then nginx.
    pub contenders: Vec<Contender>,
    /// Why it did not run, or what failed.
    pub problems: Vec<String>,
}

impl MultiCore {
    /// A section that did not run.
    pub(super) fn not_run(status: &str, why: String) -> MultiCore {
        MultiCore { status: status.into(), cpus: String::new(), contenders: Vec::new(), problems: vec![why] }
    }

    fn get(&self, key: &str) -> Option<&Contender> {
        self.contenders.iter().find(|c| c.key == key)
    }

    /// weir's saturated rps over nginx's.
    fn rps_ratio(&self) -> Option<f64> {
        Some(self.get("weir")?.rps()? / self.get("nginx")?.rps()?)
    }
}

/// Starts nginx as a reverse proxy with two worker processes on `cpus`.
fn start_nginx(env: &Env, cpus: &str, upstream: SocketAddr) -> anyhow::Result<Running> {
    let nginx = env.nginx.clone().map_err(anyhow::Error::msg)?;
    let port = ReservedPort::loopback()?;
    let listen = port.addr();
    let prefix = env.dir.join("nginx-2workers");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = peers::nginx_proxy_conf(&prefix, listen, upstream).replace("worker_processes 1;", "worker_processes 2;");
    anyhow::ensure!(conf.contains("worker_processes 2;"), "the nginx config no longer sets worker_processes");
    let conf = env.write_config("nginx-2workers.conf", &conf)?;
    let args = ["-p", &peers::s(&prefix), "-c", &peers::s(&conf)];
    let mut p = Proc::spawn("nginx-2workers", cpus, &nginx, &args, &[], &env.log_path("nginx-2workers"))?.holding(port);
    super::procs::wait_ready(&mut p, listen, peers::SERVICE, "/")?;
    Ok(Running { proc: Some(p), addr: listen, host: peers::SERVICE.into(), cgroup: None, admin: None })
}

/// Runs the comparison. The upstream moves to both CPUs meanwhile.
pub(super) fn run(env: &Env, plan: &Plan, upstream_addr: SocketAddr, upstream: &Proc) -> MultiCore {
    if env.proxy_cpu == env.client_cpu {
        return MultiCore::not_run("unavailable", "needs two CPUs".into());
    }
    if let Err(why) = &env.nginx {
        return MultiCore::not_run("unavailable", format!("no nginx: {why}"));
    }
    let cpus = format!("{},{}", env.client_cpu, env.proxy_cpu);
    let mut out = MultiCore { status: "ok".into(), cpus: cpus.clone(), contenders: Vec::new(), problems: Vec::new() };
    let weir_label = if env.cgroup.is_ok() {
        "weir, 2 workers, steered, `cpu_affinity = true`"
    } else {
        "weir, 2 workers, direct (no cgroup for steering), `cpu_affinity = true`"
    };
    let spec = WeirSpec {
        name: "weir-2workers",
        sink: "off",
        cgroup: env.cgroup.as_deref().ok(),
        workers: 2,
        vip: VIP,
        cpu_affinity: Some(true),
        socket_redirect: None,
        cpus: &cpus,
    };
    let started = peers::start_weir_spec(env, &spec, upstream_addr)
        .and_then(|w| Ok((w, start_nginx(env, &cpus, upstream_addr)?)))
        .and_then(|pair| {
            upstream.pin(&cpus)?;
            Ok(pair)
        });
    let (weir, nginx) = match started {
        Ok(pair) => pair,
        Err(e) => return MultiCore::not_run("failed", format!("{e:#}")),
    };
    let contender = |key: &str, label: &str| Contender {
        key: key.into(),
        label: label.into(),
        saturation: Vec::new(),
        many: Vec::new(),
        problems: Vec::new(),
    };
    out.contenders = vec![contender("weir", weir_label), contender("nginx", "nginx, 2 worker processes")];
    let clients = [env.client_cpu.as_str(), env.proxy_cpu.as_str()];
    let sat_s = plan.per_round(plan.sat_s).max(1.0);
    let many_s = plan.per_round(plan.open_s).max(1.0);
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let r = if i == 0 { &weir } else { &nginx };
            let c = &mut out.contenders[i];
            match measure::saturate_with(env, plan, r, upstream, sat_s, &clients, SATURATION_CONNECTIONS) {
                Ok(s) => {
                    eprintln!("bench: 2 workers: round {}: {}: {:.0} rps", round + 1, c.key, s.rps);
                    c.saturation.push(s);
                }
                Err(e) => c.problems.push(format!("closed loop, round {}: {e:#}", round + 1)),
            }
            match measure::open_with(env, plan, r, MANY_RATE, many_s, &clients, MANY_CONNECTIONS) {
                Ok(o) => {
                    eprintln!(
                        "bench: 2 workers: round {}: {}: {} connections at {MANY_RATE:.0} rps: p99 {:.0} µs",
                        round + 1,
                        c.key,
                        MANY_CONNECTIONS,
                        o.latency.p99_us
                    );
                    c.many.push(o);
                }
                Err(e) => c.problems.push(format!("{MANY_CONNECTIONS} connections, round {}: {e:#}", round + 1)),
            }
        }
    }
    if let Err(e) = upstream.pin(&env.client_cpu) {
        out.problems.push(format!("moving the upstream back: {e:#}"));
    }
    if out.contenders.iter().any(|c| c.saturation.is_empty()) {
        out.status = "failed".into();
    }
    out
}

/// The section as Markdown.
pub(super) fn markdown(m: &MultiCore) -> String {
    let mut s = format!("{HEADING}\n\n");
    if m.status != "ok" && m.contenders.is_empty() {
        let _ = writeln!(s, "Not measured ({}): {}\n", m.status, m.problems.join("; "));
        return s;
    }
    let _ = writeln!(
        s,
        "The proxy and the upstream may run on CPUs {}, with one load generator pinned to each: the machine has \
         only these two, so the generators and the upstream compete with the proxy, and a proxy that needs less \
         CPU leaves more for them. Closed loop over {SATURATION_CONNECTIONS} connections; open loop at \
         {MANY_RATE:.0} rps over {MANY_CONNECTIONS} keep-alive connections (latency percentiles: the worse of the \
         two generators'). Medians over {} alternating rounds.\n",
        m.cpus,
        m.contenders.first().map_or(0, |c| c.saturation.len())
    );
    s.push_str(
        "| proxy | saturated rps | ×nginx | proxy CPU µs/req | p50 µs (1 000 conns) | p99 µs | p99.9 µs | errors |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let nginx_rps = m.get("nginx").and_then(Contender::rps);
    let f = |v: Option<f64>| v.map_or("—".to_string(), us);
    for c in &m.contenders {
        let ratio = c.rps().zip(nginx_rps).map_or("—".into(), |(a, b)| format!("{:.2}×", a / b));
        let errors: u64 =
            c.saturation.iter().map(|x| x.errors).sum::<u64>() + c.many.iter().map(|x| x.errors).sum::<u64>();
        let _ = writeln!(
            s,
            "| {} | {} | {ratio} | {} | {} | {} | {} | {errors} |",
            c.label,
            c.rps().map_or("—".into(), |v| format!("{v:.0}")),
            f(c.cpu_us()),
            f(c.many_p(|o| o.latency.p50_us)),
            f(c.many_p(|o| o.latency.p99_us)),
            f(c.many_p(|o| o.latency.p999_us)),
        );
    }
    for p in m.problems.iter().chain(m.contenders.iter().flat_map(|c| &c.problems)) {
        let _ = writeln!(s, "\n- problem: {p}");
    }
    s
}

/// The section's goals.
pub(super) fn goals(m: &MultiCore) -> Vec<Goal> {
    let p99 = |k: &str| m.get(k).and_then(|c| c.many_p(|o| o.latency.p99_us));
    vec![
        Goal {
            name: "2 workers on 2 cores: saturated rps, weir vs nginx with 2 workers".into(),
            target: format!("≥ {GOAL_RPS_RATIO}×"),
            measured: m.rps_ratio().map_or("not measured".into(), |r| format!("{r:.2}×")),
            met: m.rps_ratio().map(|r| r >= GOAL_RPS_RATIO),
        },
        Goal {
            name: format!(
                "{MANY_CONNECTIONS} keep-alive clients at {MANY_RATE:.0} rps: p99, weir vs nginx (2 workers)"
            ),
            target: "≤ nginx's".into(),
            measured: p99("weir")
                .zip(p99("nginx"))
                .map_or("not measured".into(), |(w, n)| format!("{} µs vs {} µs ({:.2}×)", us(w), us(n), w / n)),
            met: p99("weir").zip(p99("nginx")).map(|(w, n)| w <= n),
        },
    ]
}
