//! The HTTP/2 section (`cargo xtask bench --only http2`, and part of every full run): h2c on
//! both sides of weir, HAProxy, Envoy and nginx (h2peers.rs), against nghttpd, loaded by h2load
//! (h2load.rs) on the client CPU with the proxy alone on its own. Every proxy is started first;
//! then the saturated closed loop (connections × concurrent streams, a warm-up run before each
//! measured one, proxy CPU from /proc) and the open loop at one fixed rate (the same for every
//! path; latency of every stream from h2load's log) run in interleaved rounds, each path taking
//! its turn, the first one rotating; a path's number is the median of its rounds. Then the
//! goals: weir's streams/s ≥ 1.5× Envoy's and ≥ HAProxy's, its p99 at the fixed rate ≤
//! HAProxy's. Must not: touch the HTTP/1.1 paths or their numbers.

use std::fmt::Write as _;

use serde::Serialize;

use super::features::median;
use super::h2load;
use super::h2peers::{self, H2Path};
use super::measure::Latency;
use super::peers::{Env, Running, SERVICE};
use super::procs::{self, Proc};
use super::report::{Goal, us};
use super::rounds::combine_latency;

/// weir's saturated streams/s against Envoy's.
pub(super) const GOAL_VS_ENVOY: f64 = 1.5;
/// weir's saturated streams/s against HAProxy's.
pub(super) const GOAL_VS_HAPROXY: f64 = 1.0;

/// Loads and durations of the section.
#[derive(Debug, Clone, Serialize)]
pub(super) struct H2Plan {
    /// Rounds; every path takes its turn in each.
    pub rounds: usize,
    /// Closed loop: connections, concurrent streams on each, seconds per round, and the
    /// unrecorded warm-up run before each measured one.
    pub sat_connections: usize,
    /// Concurrent streams per connection.
    pub sat_streams: usize,
    /// Seconds per round.
    pub sat_s: f64,
    /// Warm-up run, seconds.
    pub sat_warmup_s: f64,
    /// Open loop: streams/s in total (split over the connections), connections, the most
    /// streams in flight on each, seconds per round, and h2load's warm-up before recording.
    pub rate: f64,
    /// Connections.
    pub open_connections: usize,
    /// Most streams in flight per connection (above what the rate needs, so that h2load's
    /// pacing never waits for a free stream).
    pub open_streams: usize,
    /// Recorded seconds per round.
    pub open_s: f64,
    /// Warm-up, seconds.
    pub open_warmup_s: f64,
}

impl H2Plan {
    /// The plan for `--quick` or the full run.
    pub(super) fn new(quick: bool) -> H2Plan {
        H2Plan {
            rounds: if quick { 2 } else { 5 },
            sat_connections: 8,
            sat_streams: 16,
            sat_s: if quick { 2.0 } else { 3.0 },
            sat_warmup_s: 0.5,
            rate: 5_000.0,
            open_connections: 8,
            open_streams: 64,
            open_s: if quick { 2.0 } else { 4.0 },
            open_warmup_s: if quick { 0.5 } else { 1.0 },
        }
    }
}

/// A saturated run (median of rounds).
#[derive(Debug, Clone, Serialize)]
pub(super) struct H2Saturation {
    /// 2xx streams per second.
    pub streams_per_s: f64,
    /// 2xx streams over all rounds.
    pub streams: u64,
    /// Failed streams over all rounds.
    pub errors: u64,
    /// Proxy CPU per stream, µs (None on the direct path).
    pub proxy_cpu_us_per_stream: Option<f64>,
    /// Proxy CPU seconds / wall seconds: below ~0.9 the client core (or other load) was the limit.
    pub proxy_utilization: Option<f64>,
    /// Upstream (nghttpd) CPU per stream, µs.
    pub upstream_cpu_us_per_stream: f64,
    /// streams/s of each round, in the order run.
    pub rounds: Vec<f64>,
}

/// The open loop at the section's rate (percentiles: medians of rounds; max: the largest).
#[derive(Debug, Clone, Serialize)]
pub(super) struct H2Open {
    /// Intended streams/s.
    pub rate: f64,
    /// 2xx streams/s achieved (median of rounds).
    pub achieved: f64,
    /// Streams that were not answered 2xx, over all rounds.
    pub errors: u64,
    /// Latency of each stream, from h2load sending its HEADERS to the end of the response.
    pub latency: Latency,
    /// p99 of each round, µs.
    pub rounds_p99_us: Vec<f64>,
}

/// Everything measured on one path.
#[derive(Debug, Clone, Serialize)]
pub(super) struct H2Result {
    /// Stable key.
    pub key: String,
    /// Report label.
    pub label: String,
    /// "ok", "unavailable" or "failed".
    pub status: String,
    /// Why it is unavailable or failed.
    pub note: Option<String>,
    /// Closed loop.
    pub saturation: Option<H2Saturation>,
    /// Open loop.
    pub open: Option<H2Open>,
    /// Measurements that failed.
    pub problems: Vec<String>,
}

/// The section.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Http2 {
    /// Whether it ran ("ok"), or why not.
    pub status: String,
    /// CPU list of the proxies.
    pub proxy_cpu: String,
    /// CPU list of h2load and nghttpd.
    pub client_cpu: String,
    /// The plan.
    pub plan: H2Plan,
    /// One per path, in [`H2Path::ALL`] order.
    pub paths: Vec<H2Result>,
    /// Problems of the whole section (the upstream, …).
    pub problems: Vec<String>,
    /// CPU other processes used while the section ran, as a share of the machine, and the
    /// largest users (name (pid), seconds).
    pub other_load: Option<(f64, Vec<(String, f64)>)>,
}

impl Http2 {
    /// The section when it could not run at all.
    pub(super) fn not_run(env: &Env, plan: H2Plan, why: String) -> Http2 {
        Http2 {
            status: "failed".into(),
            proxy_cpu: env.proxy_cpu.clone(),
            client_cpu: env.client_cpu.clone(),
            plan,
            paths: Vec::new(),
            problems: vec![why],
            other_load: None,
        }
    }

    /// The path with `key`, if it produced results.
    pub(super) fn path(&self, key: &str) -> Option<&H2Result> {
        self.paths.iter().find(|p| p.key == key && p.status == "ok")
    }

    fn sat(&self, key: &str) -> Option<&H2Saturation> {
        self.path(key)?.saturation.as_ref()
    }

    /// Streams per second of proxy CPU (saturated): what the proxy would serve with a core
    /// of its own, whatever else ran on it.
    fn per_cpu(&self, key: &str) -> Option<f64> {
        self.sat(key)?.proxy_cpu_us_per_stream.filter(|c| *c > 0.0).map(|c| 1e6 / c)
    }

    fn p99(&self, key: &str) -> Option<f64> {
        self.path(key)?.open.as_ref().filter(|o| o.latency.count > 0).map(|o| o.latency.p99_us)
    }
}

/// A path taking part in the rounds.
struct Live {
    path: H2Path,
    running: Running,
    result: H2Result,
    sat: Vec<(h2load::Summary, Option<f64>, Option<f64>, f64)>,
    open: Vec<(f64, u64, Latency)>,
}

/// Runs the section: starts nghttpd and every proxy, then the rounds.
pub(super) fn run(env: &Env, quick: bool) -> Http2 {
    let plan = H2Plan::new(quick);
    if let Err(e) = &env.h2load {
        return Http2::not_run(env, plan, format!("no h2load: {e}"));
    }
    let (mut upstream, upstream_addr) = match h2peers::start_upstream(env) {
        Ok(u) => u,
        Err(e) => return Http2::not_run(env, plan, format!("the upstream (nghttpd) did not start: {e:#}")),
    };
    eprintln!("bench: http2: upstream nghttpd on {upstream_addr}");
    let (others_before, started) = (procs::cpu_snapshot(), std::time::Instant::now());
    let mut done = Vec::new();
    let mut live = Vec::new();
    for path in H2Path::ALL {
        let mut result = H2Result {
            key: path.key().into(),
            label: path.label().into(),
            status: "ok".into(),
            note: None,
            saturation: None,
            open: None,
            problems: Vec::new(),
        };
        if let Some(why) = path.unavailable(env) {
            eprintln!("bench: http2: {}: unavailable: {why}", path.key());
            result.status = "unavailable".into();
            result.note = Some(why);
            done.push(result);
            continue;
        }
        match h2peers::start(env, path, upstream_addr) {
            Ok(running) => live.push(Live { path, running, result, sat: Vec::new(), open: Vec::new() }),
            Err(e) => {
                eprintln!("bench: http2: {}: failed to start: {e:#}", path.key());
                result.status = "failed".into();
                result.note = Some(format!("did not start: {e:#}"));
                done.push(result);
            }
        }
    }
    let mut problems = Vec::new();
    'sat: for round in 0..plan.rounds {
        for i in order(live.len(), round) {
            if let Some(why) = stop(&mut upstream) {
                problems.push(why);
                break 'sat;
            }
            let l = &mut live[i];
            match saturate(env, &plan, &l.running, &upstream) {
                Ok(s) => {
                    eprintln!(
                        "bench: http2: {}: round {}: {:.0} streams/s, proxy CPU {} µs/stream, errors {}",
                        l.path.key(),
                        round + 1,
                        s.0.ok_rps(),
                        s.1.map_or("-".into(), us),
                        s.0.errors()
                    );
                    l.sat.push(s);
                }
                Err(e) => l.result.problems.push(format!("closed loop, round {}: {e:#}", round + 1)),
            }
        }
    }
    let log = env.dir.join("logs").join("h2load-open.log");
    'open: for round in 0..plan.rounds {
        for i in order(live.len(), round) {
            if let Some(why) = stop(&mut upstream) {
                problems.push(why);
                break 'open;
            }
            let l = &mut live[i];
            let (c, m, rate) = (plan.open_connections, plan.open_streams, plan.rate);
            match h2load::open(env, l.running.addr, c, m, rate, plan.open_s, plan.open_warmup_s, &log) {
                Ok((summary, lat, log_errors)) => {
                    eprintln!(
                        "bench: http2: {}: {rate} streams/s, round {}: p50 {} µs, p99 {} µs, p99.9 {} µs, errors {}",
                        l.path.key(),
                        round + 1,
                        us(lat.p50_us),
                        us(lat.p99_us),
                        us(lat.p999_us),
                        log_errors
                    );
                    let achieved = lat.count as f64 / plan.open_s;
                    l.open.push((achieved, log_errors.max(summary.errors()), lat));
                }
                Err(e) => l.result.problems.push(format!("open loop, round {}: {e:#}", round + 1)),
            }
        }
    }
    for mut l in live {
        if let Some(p) = l.running.proc.as_mut()
            && let Err(e) = p.check_alive()
        {
            l.result.problems.push(format!("the proxy died during the run: {e:#}"));
        }
        l.result.saturation = combine_saturation(&l.sat);
        l.result.open = combine_open(plan.rate, &l.open);
        for p in &l.result.problems {
            eprintln!("bench: http2: {}: problem: {p}", l.path.key());
        }
        done.push(l.result);
    }
    done.sort_by_key(|r| H2Path::ALL.iter().position(|p| p.key() == r.key));
    drop(upstream);
    let (other_s, top) = procs::other_load(&others_before, &procs::cpu_snapshot());
    // The machine's CPUs (not this process's mask: it is pinned).
    // SAFETY: sysconf has no preconditions.
    let online = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).max(1);
    let share = other_s / (started.elapsed().as_secs_f64() * online as f64);
    Http2 {
        status: "ok".into(),
        proxy_cpu: env.proxy_cpu.clone(),
        client_cpu: env.client_cpu.clone(),
        plan,
        paths: done,
        problems,
        other_load: Some((share, top)),
    }
}

/// The order of paths in `round`: every path in turn, starting one further each round.
fn order(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (round + k) % n.max(1))
}

/// Why to stop measuring: a signal arrived, or the upstream died.
fn stop(upstream: &mut Proc) -> Option<String> {
    if procs::stopping() {
        return Some("interrupted by a signal".into());
    }
    upstream.check_alive().err().map(|e| format!("the upstream died: {e:#}"))
}

/// One saturated round: a warm-up run, then the measured run with the CPU the proxy (if any)
/// and the upstream used during it: (summary, proxy µs/stream, proxy utilization, upstream
/// µs/stream).
fn saturate(
    env: &Env,
    plan: &H2Plan,
    r: &Running,
    upstream: &Proc,
) -> anyhow::Result<(h2load::Summary, Option<f64>, Option<f64>, f64)> {
    let (c, m) = (plan.sat_connections, plan.sat_streams);
    h2load::closed(env, r.addr, c, m, plan.sat_warmup_s, 0.0)?;
    let proxy0 = r.proc.as_ref().map(Proc::cpu_seconds);
    let up0 = upstream.cpu_seconds();
    let t0 = std::time::Instant::now();
    let s = h2load::closed(env, r.addr, c, m, plan.sat_s, 0.0)?;
    let wall = t0.elapsed().as_secs_f64();
    let proxy = r.proc.as_ref().map(Proc::cpu_seconds).zip(proxy0).map(|(b, a)| b - a);
    let n = s.succeeded.max(1) as f64;
    Ok((s, proxy.map(|c| c * 1e6 / n), proxy.map(|c| c / wall), (upstream.cpu_seconds() - up0) * 1e6 / n))
}

fn combine_saturation(rounds: &[(h2load::Summary, Option<f64>, Option<f64>, f64)]) -> Option<H2Saturation> {
    if rounds.is_empty() {
        return None;
    }
    let opt = |v: Vec<f64>| if v.is_empty() { None } else { median(v) };
    Some(H2Saturation {
        streams_per_s: median(rounds.iter().map(|r| r.0.ok_rps()).collect()).unwrap_or(0.0),
        streams: rounds.iter().map(|r| r.0.status_2xx).sum(),
        errors: rounds.iter().map(|r| r.0.errors()).sum(),
        proxy_cpu_us_per_stream: opt(rounds.iter().filter_map(|r| r.1).collect()),
        proxy_utilization: opt(rounds.iter().filter_map(|r| r.2).collect()),
        upstream_cpu_us_per_stream: median(rounds.iter().map(|r| r.3).collect()).unwrap_or(0.0),
        rounds: rounds.iter().map(|r| r.0.ok_rps()).collect(),
    })
}

fn combine_open(rate: f64, rounds: &[(f64, u64, Latency)]) -> Option<H2Open> {
    if rounds.is_empty() {
        return None;
    }
    Some(H2Open {
        rate,
        achieved: median(rounds.iter().map(|r| r.0).collect()).unwrap_or(0.0),
        errors: rounds.iter().map(|r| r.1).sum(),
        latency: combine_latency(&rounds.iter().map(|r| &r.2).collect::<Vec<_>>()),
        rounds_p99_us: rounds.iter().map(|r| r.2.p99_us).collect(),
    })
}

/// The section's goals.
pub(super) fn goals(h: &Http2) -> Vec<Goal> {
    let rps = |k: &str| h.sat(k).map(|s| s.streams_per_s);
    let busy = h.sat("weir").and_then(|s| s.proxy_utilization).filter(|u| *u < 0.9).map_or(String::new(), |u| {
        format!(
            "; weir's core was only {:.0}% busy (the client core, or other load on the machine, held it back): a lower bound",
            u * 100.0
        )
    });
    let vs = |peer: &str, label: &str, target: f64| {
        let ratio = rps("weir").zip(rps(peer)).map(|(w, p)| w / p.max(1e-9));
        let per_cpu = h.per_cpu("weir").zip(h.per_cpu(peer)).map_or(String::new(), |(w, p)| {
            format!("; per proxy CPU-second {w:.0} vs {p:.0} streams ({:.2}×)", w / p.max(1e-9))
        });
        Goal {
            name: format!("weir HTTP/2 saturated streams/s vs {label} (h2c both sides)"),
            target: format!("≥ {target}×"),
            measured: ratio.map_or("not measured".into(), |x| {
                format!(
                    "{x:.2}× ({:.0} vs {:.0} streams/s){busy}{per_cpu}",
                    rps("weir").unwrap_or(0.0),
                    rps(peer).unwrap_or(0.0)
                )
            }),
            met: ratio.map(|x| x >= target),
        }
    };
    let p99 = h.p99("weir").zip(h.p99("haproxy"));
    vec![
        vs("envoy", "Envoy", GOAL_VS_ENVOY),
        vs("haproxy", "HAProxy", GOAL_VS_HAPROXY),
        Goal {
            name: format!("weir HTTP/2 open-loop p99 at {:.0} streams/s vs HAProxy", h.plan.rate),
            target: "≤ HAProxy's".into(),
            measured: p99
                .map_or("not measured".into(), |(w, a)| format!("{w:.0} µs vs {a:.0} µs ({:.2}×)", w / a.max(1e-9))),
            met: p99.map(|(w, a)| w <= a),
        },
    ]
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn unavailable_row(p: &H2Result, cols: usize) -> Option<String> {
    (p.status != "ok").then(|| {
        let note: String = p.note.clone().unwrap_or_default().replace(['|', '\n'], " ").chars().take(160).collect();
        format!("| {} | **{}**: {note} |{}\n", p.label, p.status, " |".repeat(cols.saturating_sub(2)))
    })
}

/// The section's markdown (tables; the goals are in the report's goal table).
pub(super) fn markdown(h: &Http2) -> String {
    let mut md = String::new();
    let p = &h.plan;
    let (proxy_cpu, client_cpu) = (&h.proxy_cpu, &h.client_cpu);
    let _ = writeln!(
        md,
        "### HTTP/2 (h2c on both sides)\n\n\
Upstream: `nghttpd --no-tls` (nghttp2, one thread, CPU {client_cpu}) serving a 3-byte file. Load: `h2load` (one thread, \
CPU {client_cpu}), every stream `GET /` with `:authority: {SERVICE}` (weir routes by it; the others ignore it). Proxies \
on CPU {proxy_cpu}, one worker/thread, h2c with prior knowledge to the client and to nghttpd; nginx can only reach an \
HTTP/2 upstream through `grpc_pass` (one stream per upstream connection). {} rounds, every path in turn; medians of \
rounds.\n",
        p.rounds
    );
    let _ = writeln!(
        md,
        "Saturated: {} connections × {} concurrent streams, {} s per round after a {} s warm-up run. Open loop: {:.0} \
streams/s in total ({} connections, h2load `--rps`, which releases each connection's due streams every 10 ms; at most {} \
in flight on each), {} s recorded per round after {} s; latency from h2load sending a stream's HEADERS to the end of its \
response.\n",
        p.sat_connections,
        p.sat_streams,
        p.sat_s,
        p.sat_warmup_s,
        p.rate,
        p.open_connections,
        p.open_streams,
        p.open_s,
        p.open_warmup_s
    );
    if let Some((share, top)) = &h.other_load {
        let top = top.iter().take(3).map(|(n, s)| format!("{n}: {s:.0} s")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "Other processes used {:.0}% of the machine while this section ran{}{}\n",
            share * 100.0,
            if top.is_empty() { String::new() } else { format!(" ({top})") },
            if *share > 0.05 {
                ": the proxies shared their core with them, so streams/s and latency are noisy and \
streams per proxy CPU-second is the steadier comparison"
            } else {
                "."
            }
        );
    }
    for problem in &h.problems {
        let _ = writeln!(md, "- problem: {problem}");
    }
    if h.status != "ok" {
        return md;
    }
    let rps = |k: &str| h.sat(k).map(|s| s.streams_per_s);
    let _ = writeln!(
        md,
        "\n| path | saturated streams/s | ×direct | ×Envoy | ×HAProxy | proxy CPU µs/stream | streams per proxy CPU-s | ×Envoy | ×HAProxy | proxy core busy | upstream CPU µs/stream | errors | per round |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &h.paths {
        if let Some(row) = unavailable_row(r, 13) {
            md.push_str(&row);
            continue;
        }
        let Some(s) = &r.saturation else {
            let _ = writeln!(md, "| {} | not measured | | | | | | | | | | | |", r.label);
            continue;
        };
        let per_cpu = h.per_cpu(&r.key);
        let per_round = s.rounds.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {per_round} |",
            r.label,
            s.streams_per_s,
            ratio(Some(s.streams_per_s), rps("direct")),
            ratio(Some(s.streams_per_s), rps("envoy")),
            ratio(Some(s.streams_per_s), rps("haproxy")),
            s.proxy_cpu_us_per_stream.map_or("–".into(), us),
            per_cpu.map_or("–".into(), |v| format!("{v:.0}")),
            ratio(per_cpu, h.per_cpu("envoy")),
            ratio(per_cpu, h.per_cpu("haproxy")),
            s.proxy_utilization.map_or("–".into(), |u| format!("{:.0}%", u * 100.0)),
            us(s.upstream_cpu_us_per_stream),
            s.errors
        );
    }
    let _ = writeln!(
        md,
        "\n| path | rate | achieved | p50 (µs) | p90 | p99 | p99.9 | max | p99 ×direct | p99 ×HAProxy | errors | p99 per round |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &h.paths {
        if let Some(row) = unavailable_row(r, 12) {
            md.push_str(&row);
            continue;
        }
        let Some(o) = &r.open else {
            let _ = writeln!(md, "| {} | {:.0} | not measured | | | | | | | | | |", r.label, p.rate);
            continue;
        };
        let l = &o.latency;
        let per_round = o.rounds_p99_us.iter().map(|v| us(*v)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {per_round} |",
            r.label,
            o.rate,
            o.achieved,
            us(l.p50_us),
            us(l.p90_us),
            us(l.p99_us),
            us(l.p999_us),
            us(l.max_us),
            ratio(Some(l.p99_us), h.p99("direct")),
            ratio(Some(l.p99_us), h.p99("haproxy")),
            o.errors
        );
    }
    let problems: Vec<String> =
        h.paths.iter().flat_map(|r| r.problems.iter().map(move |m| format!("- {}: {m}", r.label))).collect();
    if !problems.is_empty() {
        let _ = writeln!(md, "\nProblems:\n\n{}", problems.join("\n"));
    }
    md
}

/// The goals as the lines `--only` prints under a section.
pub(super) fn goal_lines(goals: &[Goal]) -> String {
    let mut out = String::new();
    for g in goals {
        let verdict = match g.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let _ = writeln!(out, "- {}: {} (target {}): {verdict}", g.name, g.measured, g.target);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(key: &str, rps: f64, p99: f64) -> H2Result {
        H2Result {
            key: key.into(),
            label: key.into(),
            status: "ok".into(),
            note: None,
            saturation: Some(H2Saturation {
                streams_per_s: rps,
                streams: 100,
                errors: 0,
                proxy_cpu_us_per_stream: Some(10.0),
                proxy_utilization: Some(0.99),
                upstream_cpu_us_per_stream: 2.0,
                rounds: vec![rps],
            }),
            open: Some(H2Open {
                rate: 5_000.0,
                achieved: 10_000.0,
                errors: 0,
                latency: Latency { count: 10, p99_us: p99, ..Latency::default() },
                rounds_p99_us: vec![p99],
            }),
            problems: Vec::new(),
        }
    }

    #[test]
    fn goals_compare_weir_with_envoy_and_haproxy() {
        let mut nginx = ok("nginx", 0.0, 0.0);
        nginx.status = "unavailable".into();
        nginx.note = Some("no nginx | here".into());
        let h = Http2 {
            status: "ok".into(),
            proxy_cpu: "1".into(),
            client_cpu: "0".into(),
            plan: H2Plan::new(true),
            other_load: Some((0.2, vec![("rustc (1)".into(), 3.0)])),
            paths: vec![
                ok("direct", 300_000.0, 100.0),
                ok("weir", 60_000.0, 400.0),
                nginx,
                ok("haproxy", 50_000.0, 500.0),
                ok("envoy", 45_000.0, 900.0),
            ],
            problems: Vec::new(),
        };
        let g = goals(&h);
        assert_eq!(g.iter().map(|g| g.met).collect::<Vec<_>>(), [Some(false), Some(true), Some(true)], "{g:?}");
        assert!(g[0].measured.starts_with("1.33× (60000 vs 45000 streams/s)"), "{:?}", g[0]);
        let md = markdown(&h);
        assert!(md.contains("| weir | 60000 | 0.20× | 1.33× | 1.20× | 10.0 | 100000 | 1.00× | 1.00× | 99% |"), "{md}");
        assert!(
            md.contains("Other processes used 20% of the machine while this section ran (rustc (1): 3 s): "),
            "{md}"
        );
        assert!(g[0].measured.ends_with("; per proxy CPU-second 100000 vs 100000 streams (1.00×)"), "{:?}", g[0]);
        assert!(md.contains("| nginx | **unavailable**: no nginx   here |"), "{md}");
        assert!(goal_lines(&g).contains("(target ≥ 1.5×): MISSED"));
        let none = goals(&Http2 { status: "failed".into(), paths: Vec::new(), ..h });
        assert!(none.iter().all(|g| g.met.is_none()));
    }

    #[test]
    fn rounds_combine_to_medians() {
        let s = |rps: f64, cpu: f64| {
            (
                h2load::Summary { rps, succeeded: 10, failed: 1, errored: 0, timeout: 0, status_2xx: 10 },
                Some(cpu),
                Some(1.0),
                2.0,
            )
        };
        let c = combine_saturation(&[s(3.0, 9.0), s(1.0, 7.0), s(2.0, 8.0)]).expect("rounds");
        assert_eq!((c.streams_per_s, c.proxy_cpu_us_per_stream, c.errors, c.streams), (2.0, Some(8.0), 3, 30));
        assert!(combine_saturation(&[]).is_none());
        let lat = |p99: f64| Latency { count: 5, p99_us: p99, ..Latency::default() };
        let o = combine_open(10.0, &[(9.0, 1, lat(30.0)), (10.0, 0, lat(10.0)), (11.0, 0, lat(20.0))]).expect("open");
        assert_eq!((o.achieved, o.errors, o.latency.p99_us, o.rounds_p99_us.len()), (10.0, 1, 20.0, 3));
    }
}
