//! The identity section: what caller identity and tracing cost per request, in one run, against
//! weir with both off. Four weir processes (one worker each, on the proxy's CPU, started first
//! and measured in alternating rounds so drift hits all alike): *off* (dialed directly: every
//! request is `direct`, no trace header looked at), *identity* (steered: every request resolves
//! its caller's cgroup and counts under its `source`), *tracing, unsampled* (steered, an OTLP
//! collector configured, `sample_percent = 0`: the decision per request, no span) and *tracing,
//! sampled* (steered, `sample_percent = 100`: a span per request, exported by the weir process's
//! own exporter thread — which runs on the same pinned CPU, so its CPU is in the numbers). Each
//! round gives every variant a saturated closed loop (proxy CPU per request) and an open loop at
//! the feature rate (p99). Beside it, `weir-featurecost` measures the same steps in-process, in
//! nanoseconds, where the machine's noise cannot hide them. `cargo xtask bench --only identity`
//! runs just this, and puts its table into docs/BENCHMARKS.md.
//! Must not: compare numbers across runs, or leave the collector holding what it received.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;
use weir_testkit::Collector;

use super::features::median;
use super::measure::{self, OpenRun, Plan, Saturation};
use super::peers::{self, Env, Running, VIP, WeirSpec};
use super::procs::{self, Proc};
use super::report::us;

/// VIPs of the three steered variants (the main paths use 127.10.0.1, CPU-affine accept .2 and .3).
pub(super) const VIPS: [&str; 3] = ["127.10.0.4:80", "127.10.0.5:80", "127.10.0.6:80"];
/// Goal: tracing on but the request unsampled adds at most this, µs of proxy CPU.
pub(super) const GOAL_UNSAMPLED_US: f64 = 0.5;
/// Goal: a sampled request (span made and exported) adds at most this, µs.
pub(super) const GOAL_SAMPLED_US: f64 = 2.0;

/// One variant's results.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Variant {
    /// Stable key.
    pub key: String,
    /// Report label.
    pub label: String,
    /// Closed-loop runs, one per round.
    pub saturation: Vec<Saturation>,
    /// Open-loop runs at the feature rate, one per round.
    pub open: Vec<OpenRun>,
    /// Median proxy CPU per request, µs.
    pub cpu_us: Option<f64>,
    /// Median saturated rps.
    pub rps: Option<f64>,
    /// Median open-loop p99, µs.
    pub p99_us: Option<f64>,
    /// Median of the open loops' client send lag p99, µs (the load generator's own lateness).
    pub send_lag_p99_us: Option<f64>,
    /// Why it was not measured, or what failed.
    pub problems: Vec<String>,
}

/// The whole section.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Identity {
    /// The variants, off first.
    pub variants: Vec<Variant>,
    /// `weir-featurecost`'s JSON (ns per request of each step).
    pub micro: Option<serde_json::Value>,
    /// Spans the sampled variant exported / lost, and requests the collector took.
    pub spans_exported: u64,
    /// Lost (ring full or export failed).
    pub spans_lost: u64,
    /// What went wrong.
    pub problems: Vec<String>,
}

impl Identity {
    /// A section that did not run.
    pub(super) fn not_run(why: String) -> Identity {
        Identity { variants: Vec::new(), micro: None, spans_exported: 0, spans_lost: 0, problems: vec![why] }
    }

    fn cpu(&self, key: &str) -> Option<f64> {
        self.variants.iter().find(|v| v.key == key)?.cpu_us
    }

    /// Added proxy CPU per request of `key` over `base`, µs (medians of rounds).
    pub(super) fn added_us(&self, key: &str, base: &str) -> Option<f64> {
        Some(self.cpu(key)? - self.cpu(base)?)
    }
}

fn metric(admin: Option<SocketAddr>, sample: &str) -> u64 {
    admin.and_then(|a| procs::http_body(a, "/metrics").ok()).map_or(0.0, |t| weir_testkit::metric_value(&t, sample))
        as u64
}

/// Runs the section against `upstream`.
pub(super) fn run(env: &Env, plan: &Plan, upstream_addr: SocketAddr, upstream: &Proc) -> Identity {
    let micro = featurecost(env);
    let cgroup = match &env.cgroup {
        Ok(c) => c.clone(),
        Err(why) => {
            let mut s = Identity::not_run(format!("steered variants unavailable: {why}"));
            s.micro = micro;
            return s;
        }
    };
    let collector = match Collector::counting() {
        Ok(c) => c,
        Err(e) => return Identity::not_run(format!("starting the OTLP collector: {e}")),
    };
    let tracing =
        |pct: f64| format!("\n[tracing]\nsample_percent = {pct:?}\notlp_endpoint = \"{}\"\n", collector.endpoint());
    // Each steered weir has its own VIP: two weirs steering one VIP for one cgroup would see
    // only the first one's rewrite.
    let specs: [(&str, &str, Option<&std::path::Path>, &str, String); 4] = [
        ("weir-id-off", "off: dialed directly (`direct`), tracing off", None, VIP, String::new()),
        ("weir-id-identity", "identity: steered, caller resolved per request", Some(&cgroup), VIPS[0], String::new()),
        (
            "weir-id-unsampled",
            "identity + tracing, unsampled (`sample_percent = 0`)",
            Some(&cgroup),
            VIPS[1],
            tracing(0.0),
        ),
        (
            "weir-id-sampled",
            "identity + tracing, sampled (`sample_percent = 100`, exported)",
            Some(&cgroup),
            VIPS[2],
            tracing(100.0),
        ),
    ];
    let mut running: Vec<(Variant, Running)> = Vec::new();
    let mut problems = Vec::new();
    for (key, label, cg, vip, extra) in specs {
        let spec = WeirSpec {
            name: key,
            sink: "off",
            cgroup: cg,
            workers: 1,
            vip,
            cpu_affinity: None,
            socket_redirect: None,
            cpus: &env.proxy_cpu,
        };
        match peers::start_weir_with(env, &spec, upstream_addr, &extra) {
            Ok(r) => running.push((
                Variant {
                    key: key.into(),
                    label: label.into(),
                    saturation: Vec::new(),
                    open: Vec::new(),
                    cpu_us: None,
                    rps: None,
                    p99_us: None,
                    send_lag_p99_us: None,
                    problems: Vec::new(),
                },
                r,
            )),
            Err(e) => problems.push(format!("{key}: {e:#}")),
        }
    }
    let rounds = plan.feature_rounds.max(3);
    for round in 0..rounds {
        if procs::stopping() {
            break;
        }
        // The first variant rotates, so no variant always runs right after another one.
        let n = running.len();
        for k in 0..n {
            let (v, r) = &mut running[(round + k) % n];
            eprintln!("bench: identity: round {} of {rounds}: {}", round + 1, v.key);
            match measure::saturate(env, plan, r, upstream, plan.sat_s) {
                Ok(s) => v.saturation.push(s),
                Err(e) => v.problems.push(format!("closed loop: {e:#}")),
            }
            match measure::open(env, plan, r, plan.feature_rate, plan.feature_s) {
                Ok(o) => v.open.push(o),
                Err(e) => v.problems.push(format!("open loop: {e:#}")),
            }
        }
    }
    let mut spans_exported = 0;
    let mut spans_lost = 0;
    for (v, r) in &mut running {
        v.cpu_us = median(v.saturation.iter().filter_map(|s| s.proxy_cpu_us_per_req).collect());
        v.rps = median(v.saturation.iter().map(|s| s.rps).collect());
        v.p99_us = median(v.open.iter().map(|o| o.latency.p99_us).collect());
        v.send_lag_p99_us = median(v.open.iter().map(|o| o.send_lag_p99_us).collect());
        if v.key == "weir-id-sampled" {
            spans_exported = metric(r.admin, "weir_spans_total{result=\"exported\"}");
            spans_lost = metric(r.admin, "weir_spans_total{result=\"ring_full\"}")
                + metric(r.admin, "weir_spans_total{result=\"export_failed\"}");
        }
    }
    let variants = running.into_iter().map(|(v, _)| v).collect();
    drop(collector);
    Identity { variants, micro, spans_exported, spans_lost, problems }
}

/// `weir-featurecost` on the proxy's CPU.
fn featurecost(env: &Env) -> Option<serde_json::Value> {
    let bin = env.loadgen.with_file_name("weir-featurecost");
    let out = std::process::Command::new("taskset").args(["-c", &env.proxy_cpu]).arg(&bin).output().ok()?;
    if !out.status.success() {
        eprintln!("bench: identity: weir-featurecost failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn ns(v: &serde_json::Value, k: &str) -> String {
    v[k].as_f64().map_or("–".into(), |x| format!("{x:.0} ns"))
}

/// The section's heading in docs/BENCHMARKS.md (its numbers follow on the same line).
pub(super) const HEADING: &str = "### Cost of caller identity and tracing";

/// The section's markdown (a `###` heading, its tables, its goals).
pub(super) fn markdown(s: &Identity, plan: &Plan) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{HEADING} (weir, 1 worker; {} alternating rounds: {} s closed loop, then {} s open loop at {:.0} rps)\n",
        s.variants.first().map_or(0, |v| v.saturation.len()),
        plan.sat_s,
        plan.feature_s,
        plan.feature_rate
    );
    md.push_str(
        "Four weir processes side by side: *off* is dialed directly (every request `direct`, no trace header read), the \
others are steered (the load generator in a steered cgroup dials the VIP, so every request resolves its caller); the \
tracing variants send to an OTLP/HTTP collector on loopback, and the sampled one exports a span per request from its \
own exporter thread, pinned with the worker to the proxy's CPU, so the export is in its CPU. Proxy CPU per request is \
Δ(utime+stime) of the weir process / requests, median of rounds. The p99 is from the intended send time: when the \
client send lag is of the same size, the load generator's core was late (the machine, not weir), and only the CPU \
columns compare the variants.\n\n",
    );
    let _ = writeln!(
        md,
        "| variant | proxy CPU µs/req (median) | per round | added vs off | added vs identity | saturated rps | p99 (µs, median) | client send lag p99 (µs, median) |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|");
    for v in &s.variants {
        let rounds: Vec<String> =
            v.saturation.iter().filter_map(|x| x.proxy_cpu_us_per_req).map(|x| format!("{x:.2}")).collect();
        let vs = |base: &str| match (v.key.as_str(), s.added_us(&v.key, base)) {
            (k, _) if k == base => "–".to_string(),
            (_, Some(d)) => format!("{d:+.2}"),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            v.label,
            v.cpu_us.map_or("–".into(), |x| format!("{x:.2}")),
            rounds.join(", "),
            vs("weir-id-off"),
            if v.key == "weir-id-off" { "–".into() } else { vs("weir-id-identity") },
            v.rps.map_or("–".into(), |x| format!("{x:.0}")),
            v.p99_us.map_or("–".into(), us),
            v.send_lag_p99_us.map_or("–".into(), us)
        );
    }
    if s.variants.iter().any(|v| v.key == "weir-id-sampled") {
        let _ = writeln!(md, "\nSpans of the sampled variant: {} exported, {} lost.", s.spans_exported, s.spans_lost);
    }
    if let Some(m) = &s.micro {
        let _ = writeln!(
            md,
            "\nThe same steps in-process (`weir-featurecost`, {} calls each, best of 5, on the proxy's CPU): caller lookup \
{} (steered) vs {} (direct); stats record {} (a named caller) vs {} (direct); trace decision with tracing off {}, \
on and unsampled {} (no header) / {} (an unsampled `traceparent`), sampled (decision, forwarded `traceparent`, \
exemplar, span record into the ring) {}. Added per request: identity **{}**, unsampled **{}**, sampled **{}** on the \
worker (the export runs on the exporter thread, in the end-to-end numbers above).\n",
            m["calls"],
            ns(m, "caller_lookup_steered_ns"),
            ns(m, "caller_lookup_direct_ns"),
            ns(m, "stats_record_caller_ns"),
            ns(m, "stats_record_direct_ns"),
            ns(m, "trace_off_ns"),
            ns(m, "trace_unsampled_no_header_ns"),
            ns(m, "trace_unsampled_header_ns"),
            ns(m, "trace_sampled_ns"),
            ns(m, "identity_added_ns"),
            ns(m, "unsampled_added_ns"),
            ns(m, "sampled_added_ns"),
        );
    }
    for g in goals(s) {
        let _ = writeln!(
            md,
            "- {}: {} (target {}): {}",
            g.name,
            g.measured,
            g.target,
            match g.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            }
        );
    }
    for p in s.problems.iter().chain(s.variants.iter().flat_map(|v| v.problems.iter())) {
        let _ = writeln!(md, "- problem: {p}");
    }
    md.push('\n');
    md
}

/// The section's goals: judged on the in-process worker cost (which the machine's noise does
/// not hide); the end-to-end deltas are shown beside them.
pub(super) fn goals(s: &Identity) -> Vec<super::report::Goal> {
    let micro = |k: &str| s.micro.as_ref().and_then(|m| m[k].as_f64()).map(|ns| ns / 1000.0);
    let e2e = |k: &str| s.added_us(k, "weir-id-identity");
    let measured = |w: Option<f64>, e: Option<f64>| {
        format!(
            "{} on the worker; end to end {}",
            w.map_or("–".into(), |x| format!("{x:.3} µs")),
            e.map_or("–".into(), |x| format!("{x:+.2} µs of proxy CPU"))
        )
    };
    let (wu, ws) = (micro("unsampled_added_ns"), micro("sampled_added_ns"));
    vec![
        super::report::Goal {
            name: "tracing on, request unsampled: added cost per request".into(),
            target: format!("≤ {GOAL_UNSAMPLED_US} µs"),
            measured: measured(wu, e2e("weir-id-unsampled")),
            met: wu.map(|x| x <= GOAL_UNSAMPLED_US),
        },
        super::report::Goal {
            name: "request sampled (span made and exported): added cost per request".into(),
            target: format!("≤ {GOAL_SAMPLED_US} µs"),
            measured: measured(ws, e2e("weir-id-sampled")),
            met: match (ws, e2e("weir-id-sampled")) {
                (Some(w), Some(e)) => Some(w <= GOAL_SAMPLED_US && e <= GOAL_SAMPLED_US),
                (Some(w), None) => Some(w <= GOAL_SAMPLED_US),
                _ => None,
            },
        },
    ]
}
