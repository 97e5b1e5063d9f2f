//! What traffic policy adds per hop, measured in one run: weir with a plain service against
//! weir with ten routes (nine path prefixes and a regex that do not match, tried before the
//! one that does) and a 90/10 split between two backends (both the upstream), header edits on
//! the matching route. Both run side by side on the proxy's core and are measured in
//! alternating rounds (one connection, sequential requests, upstream on the same core), so
//! drift hits both alike. The goal: the policy adds at most 1 µs at the median. Must not:
//! compare numbers from different runs.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;

use super::features::median;
use super::measure::{self, PerHop, Plan};
use super::peers::{self, Env, VIP, WeirSpec};
use super::procs::Proc;

/// Both variants' per-hop rounds and the difference.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PolicyCost {
    /// Rounds of the plain service.
    pub plain: Vec<PerHop>,
    /// Rounds of the routed service.
    pub routed: Vec<PerHop>,
    /// Median of the rounds' p50, plain, µs.
    pub plain_p50_us: Option<f64>,
    /// Median of the rounds' p50, routed, µs.
    pub routed_p50_us: Option<f64>,
    /// Mean over the rounds' means, plain, µs.
    pub plain_mean_us: Option<f64>,
    /// Mean over the rounds' means, routed, µs.
    pub routed_mean_us: Option<f64>,
    /// What went wrong.
    pub problems: Vec<String>,
}

/// The goal: what routing may add at the median.
const GOAL_ADDED_US: f64 = 1.0;

/// The section's heading in docs/BENCHMARKS.md.
pub(super) const HEADING: &str = "### Traffic policy per hop";

impl PolicyCost {
    /// Nothing measured yet.
    fn empty() -> PolicyCost {
        PolicyCost {
            plain: Vec::new(),
            routed: Vec::new(),
            plain_p50_us: None,
            routed_p50_us: None,
            plain_mean_us: None,
            routed_mean_us: None,
            problems: Vec::new(),
        }
    }

    /// A comparison that did not run.
    pub(super) fn not_run(why: String) -> PolicyCost {
        PolicyCost { problems: vec![why], ..PolicyCost::empty() }
    }

    /// Routed minus plain, at the median of the rounds' p50, µs.
    fn added_us(&self) -> Option<f64> {
        Some(self.routed_p50_us? - self.plain_p50_us?)
    }
}

/// The routed variant's service: the plain one's endpoint line replaced by backends and routes.
fn routed_toml(plain: &str, upstream: SocketAddr) -> String {
    let mut policy = format!(
        "[[service.backend]]\nname = \"stable\"\nendpoints = [\"{upstream}\"]\n\
         [[service.backend]]\nname = \"canary\"\nendpoints = [\"{upstream}\"]\n"
    );
    for i in 0..9 {
        let _ =
            write!(policy, "[[service.route]]\nmatch = {{ path_prefix = \"/v{i}/\" }}\nbackends = {{ canary = 1 }}\n");
    }
    policy += "[[service.route]]\nmatch = { path_regex = \"/users/[0-9]+/orders\" }\nbackends = { canary = 1 }\n\
               [[service.route]]\nbackends = { stable = 90, canary = 10 }\n\
               request_headers = { set = { \"x-weir-route\" = \"default\" }, remove = [\"x-debug\"] }\n";
    // The tables after the service's own fields: its timeouts table stays the service's.
    plain.replace(&format!("endpoints = [\"{upstream}\"]\n"), "") + &policy
}

/// Runs the comparison; the upstream is pinned to the proxy's core meanwhile.
pub(super) fn run(env: &Env, plan: &Plan, upstream_addr: SocketAddr, upstream: &Proc) -> anyhow::Result<PolicyCost> {
    let spec = |name| WeirSpec {
        name,
        sink: "off",
        cgroup: None,
        workers: 1,
        vip: VIP,
        cpu_affinity: None,
        socket_redirect: None,
        cpus: &env.proxy_cpu,
    };
    let plain_spec = spec("weir-plain");
    let plain = peers::start_weir_spec(env, &plain_spec, upstream_addr)?;
    let routed_spec = spec("weir-routed");
    let toml = routed_toml(&peers::weir_toml(upstream_addr, &routed_spec), upstream_addr);
    let routed = peers::start_weir_toml(env, &routed_spec, &toml)?;
    let mut out = PolicyCost::empty();
    upstream.pin(&env.proxy_cpu)?;
    let requests = plan.per_round(plan.seq_requests as f64) as u64;
    for round in 0..plan.rounds {
        // Alternate which goes first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (r, rounds, key) =
                if i == 0 { (&plain, &mut out.plain, "plain") } else { (&routed, &mut out.routed, "routed") };
            match measure::per_hop(env, plan, r, &env.proxy_cpu, requests) {
                Ok(h) => {
                    eprintln!(
                        "bench: policy: round {}: {key}: p50 {:.2} µs, mean {:.2} µs",
                        round + 1,
                        h.p50_us,
                        h.mean_us
                    );
                    rounds.push(h);
                }
                Err(e) => out.problems.push(format!("{key}, round {}: {e:#}", round + 1)),
            }
        }
    }
    upstream.pin(&env.client_cpu)?;
    out.plain_p50_us = median(out.plain.iter().map(|h| h.p50_us).collect());
    out.routed_p50_us = median(out.routed.iter().map(|h| h.p50_us).collect());
    out.plain_mean_us = median(out.plain.iter().map(|h| h.mean_us).collect());
    out.routed_mean_us = median(out.routed.iter().map(|h| h.mean_us).collect());
    drop(plain);
    drop(routed);
    Ok(out)
}

/// The section as Markdown, with the goal's verdict.
pub(super) fn markdown(c: &PolicyCost) -> String {
    let mut s = format!(
        "{HEADING}\n\nOne connection, sequential requests, weir and the upstream on one core; \
         medians over alternating rounds of the same run. *Routed*: ten routes (nine prefixes and a regex that \
         do not match, then the one that does) and a 90/10 split between two backends, with header edits.\n\n\
         | service | p50 µs | mean µs | rounds |\n|---|---|---|---|\n"
    );
    let f = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.2}"));
    let _ = writeln!(s, "| plain | {} | {} | {} |", f(c.plain_p50_us), f(c.plain_mean_us), c.plain.len());
    let _ = writeln!(s, "| routed | {} | {} | {} |", f(c.routed_p50_us), f(c.routed_mean_us), c.routed.len());
    if let Some(d) = c.added_us() {
        let verdict = if d <= GOAL_ADDED_US { "met" } else { "MISSED" };
        let _ = writeln!(s, "\n- added by routing at p50: {d:+.2} µs (target ≤ {GOAL_ADDED_US} µs): {verdict}");
    }
    for p in &c.problems {
        let _ = writeln!(s, "- problem: {p}");
    }
    s
}

/// The section's goal, for the run's goal table.
pub(super) fn goals(c: &PolicyCost) -> Vec<super::report::Goal> {
    vec![super::report::Goal {
        name: "ten routes (one regex) and a 90/10 split: added latency per hop at p50".into(),
        target: format!("≤ {GOAL_ADDED_US} µs"),
        measured: c.added_us().map_or("not measured".into(), |d| format!("{d:+.2} µs")),
        met: c.added_us().map(|d| d <= GOAL_ADDED_US),
    }]
}
