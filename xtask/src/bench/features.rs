//! The cost of weir's features, measured in one run: access log off, on (TCP sink that
//! reads), and on with a stalled sink (a TCP listener that accepts and never reads). The three
//! weir processes run side by side (idle ones cost nothing) so the open-loop rounds alternate
//! between them and drift on the machine hits all three alike; then each gets a saturated
//! closed loop for CPU per request. Must not: compare numbers from different runs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use weir_testkit::{LineSink, StalledSink};

use super::measure::{self, OpenRun, Plan, Saturation};
use super::peers::{self, Env, Running};
use super::procs::{self, Proc};

/// One weir variant's results.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Variant {
    /// Stable key.
    pub key: String,
    /// What the report calls it.
    pub label: String,
    /// The `[access_log] sink` value.
    pub sink: String,
    /// Open-loop runs at the feature rate, one per round.
    pub rounds: Vec<OpenRun>,
    /// Median of the rounds' p99, µs (one disturbed round does not move it).
    pub p99_us: Option<f64>,
    /// Median of the rounds' p99.9, µs.
    pub p999_us: Option<f64>,
    /// Saturated closed loop.
    pub saturation: Option<Saturation>,
    /// Access-log records shipped and dropped during the measured rounds (weir's metrics).
    pub log_shipped: u64,
    /// Dropped.
    pub log_dropped: u64,
    /// What went wrong, if anything.
    pub problems: Vec<String>,
}

fn log_counts(admin: Option<SocketAddr>) -> (u64, u64) {
    let Some(admin) = admin else { return (0, 0) };
    let text = procs::http_body(admin, "/metrics").unwrap_or_default();
    let get = |result: &str| {
        let sample = format!("weir_access_log_records_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&sample)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
            as u64
    };
    (get("shipped"), get("dropped"))
}

/// Runs the access-log comparison against `upstream`.
pub(super) fn run(env: &Env, plan: &Plan, upstream_addr: SocketAddr, upstream: &Proc) -> anyhow::Result<Vec<Variant>> {
    let healthy = LineSink::counting()?;
    let stalled = StalledSink::start()?;
    let specs = [
        ("weir-log-off", "weir, access log off", "off".to_string()),
        ("weir-log-tcp", "weir, access log → TCP sink that reads", format!("tcp:{}", healthy.addr)),
        ("weir-log-stalled", "weir, access log → stalled TCP sink", format!("tcp:{}", stalled.addr)),
    ];
    let mut running: Vec<(Variant, Running)> = Vec::new();
    for (key, label, sink) in specs {
        let r = peers::start_weir(env, key, upstream_addr, &sink, None)?;
        let v = Variant {
            key: key.into(),
            label: label.into(),
            sink,
            rounds: Vec::new(),
            p99_us: None,
            p999_us: None,
            saturation: None,
            log_shipped: 0,
            log_dropped: 0,
            problems: Vec::new(),
        };
        running.push((v, r));
    }
    // Fill the stalled sink's socket buffers first, so the rounds measure a sink that is
    // already stuck (its shipper blocks, the ring fills and drops).
    eprintln!("bench: features: stalling the never-reading sink");
    let stall_plan = Plan { sat_warmup_s: 0.2, sat_s: if plan.quick { 1.5 } else { 4.0 }, ..plan.clone() };
    measure::saturate(env, &stall_plan, &running[2].1, upstream, stall_plan.sat_s)?;
    let stuck = weir_testkit::wait_until(Duration::from_secs(10), || {
        (stalled.accepted() > 0 && log_counts(running[2].1.admin).1 > 0).then_some(())
    });
    if stuck.is_none() {
        eprintln!("bench: features: warning: the never-reading sink did not make weir drop records");
    }
    for round in 0..plan.feature_rounds {
        for (v, r) in &mut running {
            eprintln!(
                "bench: features: round {} of {}: {} at {} rps",
                round + 1,
                plan.feature_rounds,
                v.key,
                plan.feature_rate
            );
            let (s0, d0) = log_counts(r.admin);
            match measure::open(env, plan, r, plan.feature_rate, plan.feature_s) {
                Ok(o) => v.rounds.push(o),
                Err(e) => v.problems.push(format!("open loop: {e:#}")),
            }
            let (s1, d1) = log_counts(r.admin);
            v.log_shipped += s1.saturating_sub(s0);
            v.log_dropped += d1.saturating_sub(d0);
        }
    }
    for (v, r) in &mut running {
        eprintln!("bench: features: {} saturated", v.key);
        match measure::saturate(env, plan, r, upstream, plan.sat_s) {
            Ok(s) => v.saturation = Some(s),
            Err(e) => v.problems.push(format!("closed loop: {e:#}")),
        }
        v.p99_us = median(v.rounds.iter().map(|o| o.latency.p99_us).collect());
        v.p999_us = median(v.rounds.iter().map(|o| o.latency.p999_us).collect());
    }
    let out = running.into_iter().map(|(v, _r)| v).collect();
    drop(stalled);
    drop(healthy);
    Ok(out)
}

/// The median (mean of the middle two for an even count).
pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}
