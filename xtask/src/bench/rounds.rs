//! The six paths measured in interleaved rounds: every proxy is started first (idle, on the
//! proxy's core), then each measurement runs `plan.rounds` times, and within a round every path
//! takes its turn (the first path rotates from round to round). Drift of the machine over the
//! run (a noisy neighbour, frequency changes) then hits every path alike, and a path's result
//! is the median of its rounds. Memory is measured last, one path at a time.
//! Must not: measure anything itself (measure.rs does) or format results (report.rs does).

use std::net::SocketAddr;

use super::features;
use super::measure::{self, Latency, OpenRun, PerHop, Plan, Saturation};
use super::peers::{self, Env, PathId, Running};
use super::procs::{self, Proc};
use super::{PathResult, unavailable};

/// A path taking part in the rounds.
struct Live {
    id: PathId,
    running: Running,
    result: PathResult,
    rss_idle: u64,
    per_hop: Vec<PerHop>,
    open: Vec<Vec<OpenRun>>,
    saturation: Vec<Saturation>,
}

/// Measures every path of [`PathId::ALL`] against `upstream`.
pub(super) fn run(env: &Env, plan: &Plan, upstream_addr: SocketAddr, upstream: &mut Proc) -> Vec<PathResult> {
    let mut done: Vec<PathResult> = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    for id in PathId::ALL {
        let mut result = PathResult::new(id);
        if let Some(why) = unavailable(env, id) {
            eprintln!("bench: {}: unavailable: {why}", id.key());
            result.status = "unavailable".into();
            result.note = Some(why);
            done.push(result);
            continue;
        }
        eprintln!("bench: {}: starting", id.key());
        match peers::start(env, id, upstream_addr) {
            Ok(running) => live.push(Live {
                id,
                running,
                result,
                rss_idle: 0,
                per_hop: Vec::new(),
                open: vec![Vec::new(); plan.rates.len()],
                saturation: Vec::new(),
            }),
            Err(e) => {
                eprintln!("bench: {}: failed to start: {e:#}", id.key());
                result.status = "failed".into();
                result.note = Some(format!("did not start: {e:#}"));
                done.push(result);
            }
        }
    }
    let rounds = plan.rounds.max(1);

    // Added latency per hop: everything on the proxy's core.
    if let Err(e) = upstream.pin(&env.proxy_cpu) {
        problem_all(&mut live, format!("pinning the upstream to the proxy's core: {e:#}"));
    } else {
        for round in 0..rounds {
            for i in order(live.len(), round) {
                if stop(upstream, &mut live) {
                    break;
                }
                let l = &mut live[i];
                match measure::per_hop(
                    env,
                    plan,
                    &l.running,
                    &env.proxy_cpu,
                    plan.per_round(plan.seq_requests as f64) as u64,
                ) {
                    Ok(h) => {
                        eprintln!(
                            "bench: {}: round {}: per hop p50 {:.1} µs, p99 {:.1} µs",
                            l.id.key(),
                            round + 1,
                            h.p50_us,
                            h.p99_us
                        );
                        l.per_hop.push(h);
                    }
                    Err(e) => l.result.problems.push(format!("per-hop test, round {}: {e:#}", round + 1)),
                }
            }
        }
    }
    if let Err(e) = upstream.pin(&env.client_cpu) {
        problem_all(&mut live, format!("re-pinning the upstream: {e:#}"));
    }
    for l in &mut live {
        l.rss_idle = l.running.proc.as_ref().map_or(0, Proc::rss_bytes);
    }

    for (r, &rate) in plan.rates.iter().enumerate() {
        for round in 0..rounds {
            for i in order(live.len(), round) {
                if stop(upstream, &mut live) {
                    break;
                }
                let l = &mut live[i];
                match measure::open(env, plan, &l.running, rate, plan.per_round(plan.open_s)) {
                    Ok(o) => {
                        eprintln!(
                            "bench: {}: {rate} rps, round {}: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, errors {}",
                            l.id.key(),
                            round + 1,
                            o.latency.p50_us,
                            o.latency.p99_us,
                            o.latency.p999_us,
                            o.errors
                        );
                        l.open[r].push(o);
                    }
                    Err(e) => l.result.problems.push(format!("open loop at {rate} rps, round {}: {e:#}", round + 1)),
                }
            }
        }
    }

    for round in 0..rounds {
        for i in order(live.len(), round) {
            if stop(upstream, &mut live) {
                break;
            }
            let l = &mut live[i];
            match measure::saturate(env, plan, &l.running, upstream, plan.per_round(plan.sat_s)) {
                Ok(s) => {
                    eprintln!(
                        "bench: {}: round {}: saturated {:.0} rps, proxy CPU {} µs/req",
                        l.id.key(),
                        round + 1,
                        s.rps,
                        s.proxy_cpu_us_per_req.map_or("-".into(), |c| format!("{c:.2}"))
                    );
                    l.saturation.push(s);
                }
                Err(e) => l.result.problems.push(format!("closed loop, round {}: {e:#}", round + 1)),
            }
        }
    }

    for mut l in live {
        if let Some(proc) = &l.running.proc {
            match measure::memory(env, plan, &l.running, proc, l.rss_idle) {
                Ok(m) => {
                    eprintln!(
                        "bench: {}: {} idle connections: {:.0} bytes each",
                        l.id.key(),
                        m.connections,
                        m.per_connection_bytes
                    );
                    l.result.memory = Some(m);
                }
                Err(e) => l.result.problems.push(format!("memory test: {e:#}")),
            }
        }
        if let Some(p) = l.running.proc.as_mut()
            && let Err(e) = p.check_alive()
        {
            l.result.problems.push(format!("the proxy died during the run: {e:#}"));
        }
        l.result.per_hop = combine_per_hop(&l.per_hop);
        l.result.open = l.open.iter().filter_map(|runs| combine_open(runs)).collect();
        l.result.saturation = combine_saturation(&l.saturation);
        for p in &l.result.problems {
            eprintln!("bench: {}: problem: {p}", l.id.key());
        }
        done.push(l.result);
    }
    // Report order is PathId::ALL order.
    done.sort_by_key(|r| PathId::ALL.iter().position(|id| id.key() == r.key));
    done
}

/// The order of paths in `round`: every path in turn, starting one further each round.
fn order(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (round + k) % n.max(1))
}

/// Whether to stop measuring: a signal arrived or the upstream died (recorded on every path).
fn stop(upstream: &mut Proc, live: &mut [Live]) -> bool {
    if procs::stopping() {
        return true;
    }
    match upstream.check_alive() {
        Ok(()) => false,
        Err(e) => {
            problem_all(live, format!("the upstream died: {e:#}"));
            true
        }
    }
}

fn problem_all(live: &mut [Live], problem: String) {
    for l in live {
        if !l.result.problems.contains(&problem) {
            l.result.problems.push(problem.clone());
        }
    }
}

/// [`features::median`] of `values`; 0 when empty.
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    features::median(values.into_iter().collect()).unwrap_or(0.0)
}

fn combine_per_hop(rounds: &[PerHop]) -> Option<PerHop> {
    if rounds.is_empty() {
        return None;
    }
    let requests: u64 = rounds.iter().map(|h| h.requests).sum();
    Some(PerHop {
        p50_us: median(rounds.iter().map(|h| h.p50_us)),
        p99_us: median(rounds.iter().map(|h| h.p99_us)),
        mean_us: rounds.iter().map(|h| h.mean_us * h.requests as f64).sum::<f64>() / requests.max(1) as f64,
        requests,
        errors: rounds.iter().map(|h| h.errors).sum(),
    })
}

/// Percentiles: medians of the rounds'; max: the largest; the plotted distribution: the
/// median at each percentile the rounds share (its 100% point: the largest max).
pub(super) fn combine_latency(rounds: &[&Latency]) -> Latency {
    let shared = rounds.iter().map(|l| l.distribution.len()).min().unwrap_or(0);
    let mut distribution: Vec<(f64, f64)> = (0..shared.saturating_sub(1))
        .map(|i| (rounds[0].distribution[i].0, median(rounds.iter().map(|l| l.distribution[i].1))))
        .collect();
    let max_us = rounds.iter().map(|l| l.max_us).fold(0.0, f64::max);
    if shared > 0 {
        distribution.push((100.0, max_us));
    }
    let count: u64 = rounds.iter().map(|l| l.count).sum();
    Latency {
        count,
        mean_us: rounds.iter().map(|l| l.mean_us * l.count as f64).sum::<f64>() / count.max(1) as f64,
        p50_us: median(rounds.iter().map(|l| l.p50_us)),
        p90_us: median(rounds.iter().map(|l| l.p90_us)),
        p99_us: median(rounds.iter().map(|l| l.p99_us)),
        p999_us: median(rounds.iter().map(|l| l.p999_us)),
        max_us,
        distribution,
    }
}

fn combine_open(rounds: &[OpenRun]) -> Option<OpenRun> {
    let first = rounds.first()?;
    let mut error_samples: Vec<String> = rounds.iter().flat_map(|o| o.error_samples.iter().cloned()).collect();
    error_samples.truncate(5);
    Some(OpenRun {
        rate: first.rate,
        achieved_rps: median(rounds.iter().map(|o| o.achieved_rps)),
        errors: rounds.iter().map(|o| o.errors).sum(),
        error_samples,
        latency: combine_latency(&rounds.iter().map(|o| &o.latency).collect::<Vec<_>>()),
        send_lag_p99_us: median(rounds.iter().map(|o| o.send_lag_p99_us)),
        send_lag_max_us: rounds.iter().map(|o| o.send_lag_max_us).fold(0.0, f64::max),
    })
}

fn combine_saturation(rounds: &[Saturation]) -> Option<Saturation> {
    if rounds.is_empty() {
        return None;
    }
    let opt = |f: fn(&Saturation) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = rounds.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Some(Saturation {
        rps: median(rounds.iter().map(|s| s.rps)),
        requests: rounds.iter().map(|s| s.requests).sum(),
        errors: rounds.iter().map(|s| s.errors).sum(),
        proxy_cpu_s: rounds.iter().map(|s| s.proxy_cpu_s).sum(),
        proxy_cpu_us_per_req: opt(|s| s.proxy_cpu_us_per_req),
        proxy_utilization: opt(|s| s.proxy_utilization),
        upstream_cpu_us_per_req: median(rounds.iter().map(|s| s.upstream_cpu_us_per_req)),
        p50_us: median(rounds.iter().map(|s| s.p50_us)),
        p99_us: median(rounds.iter().map(|s| s.p99_us)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn every_path_goes_first_in_turn() {
        assert_eq!(order(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(order(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(order(3, 5).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(order(0, 2).count(), 0);
    }

    fn lat(p50: f64, max: f64, count: u64) -> Latency {
        Latency {
            count,
            mean_us: p50,
            p50_us: p50,
            p90_us: p50 * 2.0,
            p99_us: p50 * 3.0,
            p999_us: p50 * 4.0,
            max_us: max,
            distribution: vec![(0.0, p50 / 2.0), (50.0, p50), (100.0, max)],
        }
    }

    #[test]
    fn rounds_combine_to_medians_sums_and_the_largest_max() {
        let l = combine_latency(&[&lat(10.0, 100.0, 10), &lat(30.0, 50.0, 10), &lat(20.0, 900.0, 20)]);
        assert_eq!((l.p50_us, l.p99_us, l.max_us, l.count), (20.0, 60.0, 900.0, 40));
        assert_eq!(l.mean_us, (100.0 + 300.0 + 400.0) / 40.0);
        assert_eq!(l.distribution, vec![(0.0, 10.0), (50.0, 20.0), (100.0, 900.0)]);

        let sat = |rps: f64, cpu: Option<f64>| Saturation {
            rps,
            requests: 100,
            errors: 1,
            proxy_cpu_s: cpu.map(|_| 1.0),
            proxy_cpu_us_per_req: cpu,
            proxy_utilization: cpu.map(|_| 0.99),
            upstream_cpu_us_per_req: 6.0,
            p50_us: 1.0,
            p99_us: 2.0,
        };
        let s = combine_saturation(&[sat(50_000.0, Some(15.0)), sat(70_000.0, Some(13.0)), sat(60_000.0, Some(14.0))])
            .expect("rounds");
        assert_eq!(
            (s.rps, s.requests, s.errors, s.proxy_cpu_us_per_req, s.proxy_cpu_s),
            (60_000.0, 300, 3, Some(14.0), Some(3.0))
        );
        let direct = combine_saturation(&[sat(80_000.0, None)]).expect("one round");
        assert_eq!((direct.proxy_cpu_us_per_req, direct.proxy_cpu_s), (None, None));
        assert!(combine_saturation(&[]).is_none());
    }
}
