//! `cargo xtask bench --only redirect`: what the socket-level redirect buys, as the ratios the
//! fast-path goals are stated in. weir steered with the redirect on and off (both steer the
//! bench cgroup, each through its own VIP) beside weir, nginx and HAProxy dialed directly,
//! measured in the interleaved rounds of the full run (rounds.rs) without the memory test.
//! Must not: measure anything itself.

use std::fmt::Write as _;

use super::PathResult;
use super::install::Machine;
use super::measure::Plan;
use super::report::us;

/// Goals of the fast path, as ratios to nginx in the same run.
const HOP_VS_NGINX: f64 = 0.6;
const RPS_VS_NGINX: f64 = 1.3;
const CPU_VS_NGINX: f64 = 0.75;
const P99_VS_NGINX: f64 = 1.0;

fn path<'a>(paths: &'a [PathResult], key: &str) -> Option<&'a PathResult> {
    paths.iter().find(|p| p.key == key && p.status == "ok")
}

fn added_us(paths: &[PathResult], key: &str) -> Option<f64> {
    let direct = path(paths, "direct")?.per_hop.as_ref()?.p50_us;
    Some(path(paths, key)?.per_hop.as_ref()?.p50_us - direct)
}

fn rps(paths: &[PathResult], key: &str) -> Option<f64> {
    Some(path(paths, key)?.saturation.as_ref()?.rps)
}

fn cpu(paths: &[PathResult], key: &str) -> Option<f64> {
    path(paths, key)?.saturation.as_ref()?.proxy_cpu_us_per_req
}

fn p99_at(paths: &[PathResult], key: &str, rate: f64) -> Option<f64> {
    Some(path(paths, key)?.open.iter().find(|o| o.rate == rate)?.latency.p99_us)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b)
}

fn show(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}×"))
}

/// `measured` against a goal of at most (`at_most`) or at least `target`, as a ratio:
/// "met", or by how much it is missed.
fn verdict(measured: Option<f64>, target: f64, at_most: bool) -> String {
    match measured {
        None => "not measured".into(),
        Some(m) if (at_most && m <= target) || (!at_most && m >= target) => format!("{m:.2}×: met"),
        Some(m) if at_most => {
            format!("{m:.2}×: MISSED by {:.0}% ({m:.2}× against ≤ {target}×)", (m / target - 1.0) * 100.0)
        }
        Some(m) => format!("{m:.2}×: MISSED by {:.0}% ({m:.2}× against ≥ {target}×)", (1.0 - m / target) * 100.0),
    }
}

/// The section's markdown: the table, the goals per weir variant, what the rows mean.
/// `command`: what measured `paths`; `background`: what else ran meanwhile, when known.
pub(super) fn markdown(
    paths: &[PathResult],
    plan: &Plan,
    machine: &Machine,
    command: &str,
    date: &str,
    background: &str,
) -> String {
    let top = plan.rates.iter().copied().fold(0.0, f64::max);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Socket-level redirect\n\n`{command}`, {date}; {} CPUs ({}), Linux {}; median of {} interleaved rounds{}.\n",
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        plan.rounds,
        if background.is_empty() { String::new() } else { format!("; {background}") }
    );
    let _ = writeln!(
        md,
        "| path | added per hop, p50 (µs) | ×nginx | saturated rps | ×nginx | proxy CPU µs/req | ×nginx | p99 @ {top:.0} rps (µs) | ×nginx |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in paths {
        if p.status != "ok" {
            let _ = writeln!(
                md,
                "| {} | **{}**: {} | | | | | | | |",
                p.label,
                p.status,
                p.note.clone().unwrap_or_default()
            );
            continue;
        }
        let k = p.key.as_str();
        let added = added_us(paths, k);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            if k == "direct" { "0 (baseline)".into() } else { added.map_or("–".into(), |v| format!("{v:+.1}")) },
            if k == "direct" { "–".into() } else { show(ratio(added, added_us(paths, "nginx"))) },
            rps(paths, k).map_or("–".into(), |v| format!("{v:.0}")),
            show(ratio(rps(paths, k), rps(paths, "nginx"))),
            cpu(paths, k).map_or("–".into(), us),
            show(ratio(cpu(paths, k), cpu(paths, "nginx"))),
            p99_at(paths, k, top).map_or("–".into(), us),
            show(ratio(p99_at(paths, k, top), p99_at(paths, "nginx", top))),
        );
    }
    let _ = writeln!(
        md,
        "\nnginx, HAProxy and weir dialed directly do **not** get the redirect: only weir's eBPF steering (the client in a steered cgroup dialing a VIP) enrolls sockets. The redirect moves the client ↔ weir leg and, on the steered path with the redirect on, the weir ↔ upstream leg too (the upstream listens on loopback in a cgroup where weir's sock_ops program runs: weir's own, here; `/steering` counts these connections as `upstream_paired`); weir dialed directly runs without steering, so both of its legs are TCP, as are both legs of the steered path with the redirect off. Proxy CPU is the proxy process's; on the steered paths the `sk_msg` program of a client's send runs on the client's CPU time, as the loopback TCP receive does on the TCP paths. Access log off on every path.\n"
    );
    let _ = writeln!(md, "Goals of the fast path (ratios to nginx, this run):\n");
    let _ = writeln!(
        md,
        "| weir variant | per hop ≤ {HOP_VS_NGINX}× | saturated rps ≥ {RPS_VS_NGINX}× | CPU/req ≤ {CPU_VS_NGINX}× | p99 @ {top:.0} rps ≤ {P99_VS_NGINX}× |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for key in ["weir-steered", "weir-steered-tcp", "weir"] {
        let Some(p) = path(paths, key) else { continue };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            p.label,
            verdict(ratio(added_us(paths, key), added_us(paths, "nginx")), HOP_VS_NGINX, true),
            verdict(ratio(rps(paths, key), rps(paths, "nginx")), RPS_VS_NGINX, false),
            verdict(ratio(cpu(paths, key), cpu(paths, "nginx")), CPU_VS_NGINX, true),
            verdict(ratio(p99_at(paths, key, top), p99_at(paths, "nginx", top)), P99_VS_NGINX, true),
        );
    }
    for p in paths.iter().filter(|p| !p.problems.is_empty()) {
        let _ = writeln!(md, "\nProblems of {}: {}", p.label, p.problems.join("; "));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn verdicts_say_by_how_much_a_goal_is_missed() {
        assert_eq!(verdict(Some(0.5), 0.6, true), "0.50×: met");
        assert_eq!(verdict(Some(0.9), 0.6, true), "0.90×: MISSED by 50% (0.90× against ≤ 0.6×)");
        assert_eq!(verdict(Some(1.04), 1.3, false), "1.04×: MISSED by 20% (1.04× against ≥ 1.3×)");
        assert_eq!(verdict(None, 1.3, false), "not measured");
    }
}
