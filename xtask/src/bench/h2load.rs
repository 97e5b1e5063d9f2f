//! h2load (nghttp2), the HTTP/2 load generator of the HTTP/2 section: one thread pinned to the
//! client CPU, h2c with prior knowledge, every request `GET /` with `:authority: bench`. Runs
//! it bounded (its own `-D` duration, and killed if it overruns that by 15 s), and reads what
//! it prints: the summary (2xx, failures, streams/s) and, for the open loop, its per-request
//! log (`--log-file`, main phase only) turned into percentiles. Must not: start or configure
//! servers, or format results.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::measure::Latency;
use super::peers::{Env, SERVICE};
use super::procs::{self, Proc};

/// What h2load's summary says about one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(super) struct Summary {
    /// Streams per second over the main phase, as h2load computes it (all completed streams).
    pub rps: f64,
    /// Streams completed (any status).
    pub succeeded: u64,
    /// Streams failed: reset, broken connection, or a status of 400 and above.
    pub failed: u64,
    /// Of those, broken (no status at all).
    pub errored: u64,
    /// Streams that timed out.
    pub timeout: u64,
    /// Responses with a 2xx status.
    pub status_2xx: u64,
}

impl Summary {
    /// 2xx responses per second.
    pub(super) fn ok_rps(&self) -> f64 {
        if self.succeeded == 0 { 0.0 } else { self.rps * self.status_2xx as f64 / self.succeeded as f64 }
    }

    /// Streams that failed (h2load counts statuses of 400 and above and broken streams there;
    /// timeouts happen only with `-T`/`-N`, which the bench does not use).
    pub(super) fn errors(&self) -> u64 {
        self.failed
    }
}

/// Parses h2load's closing summary.
pub(super) fn parse_summary(out: &str) -> anyhow::Result<Summary> {
    let mut s = Summary::default();
    let mut seen = (false, false);
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 4.00s, 304293.33 req/s, 9.00MB/s"
            s.rps = rest
                .split(',')
                .find_map(|f| f.trim().strip_suffix(" req/s"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no req/s in {line:?}"))?;
            seen.0 = true;
        } else if let Some(rest) = line.strip_prefix("requests:") {
            // "requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 1 errored, 0 timeout"
            for field in rest.split(',') {
                let mut it = field.split_whitespace();
                let (Some(n), Some(what)) = (it.next(), it.next()) else { continue };
                let n: u64 = n.parse().with_context(|| format!("bad count in {line:?}"))?;
                match what {
                    "succeeded" => s.succeeded = n,
                    "failed" => s.failed = n,
                    "errored" => s.errored = n,
                    "timeout" => s.timeout = n,
                    _ => {}
                }
            }
            seen.1 = true;
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            s.status_2xx = rest
                .split(',')
                .find_map(|f| f.trim().strip_suffix(" 2xx"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no 2xx count in {line:?}"))?;
        }
    }
    if !(seen.0 && seen.1) {
        bail!("no summary in h2load's output: {}", tail(out));
    }
    Ok(s)
}

fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" / ")
}

/// Latency of the 2xx rows of an h2load `--log-file` (start µs, status, duration µs; status −1
/// for a failed stream), and how many rows were not 2xx.
pub(super) fn parse_log(text: &str) -> (Latency, u64) {
    let mut us: Vec<u64> = Vec::new();
    let mut errors = 0;
    for line in text.lines() {
        let mut f = line.split('\t');
        let (_, Some(status), Some(took)) = (f.next(), f.next(), f.next()) else { continue };
        match (status.trim().parse::<i32>(), took.trim().parse::<u64>()) {
            (Ok(200..=299), Ok(t)) => us.push(t),
            _ => errors += 1,
        }
    }
    (latency(us), errors)
}

/// Percentiles of `samples` (µs), with the plot's distribution points at 1 − 10^(−k/10) as far
/// as the sample count resolves (as weir-loadgen reports them).
pub(super) fn latency(mut samples: Vec<u64>) -> Latency {
    samples.sort_unstable();
    let n = samples.len();
    if n == 0 {
        return Latency::default();
    }
    let q = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
    let mut distribution = Vec::new();
    for k in 0..=60u32 {
        let p = 1.0 - 10f64.powf(-f64::from(k) / 10.0);
        if k > 0 && (1.0 - p) * (n as f64) < 1.0 {
            break;
        }
        distribution.push((p * 100.0, q(p)));
    }
    let max = samples[n - 1] as f64;
    distribution.push((100.0, max));
    Latency {
        count: n as u64,
        mean_us: samples.iter().sum::<u64>() as f64 / n as f64,
        p50_us: q(0.50),
        p90_us: q(0.90),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: max,
        distribution,
    }
}

/// The arguments every run shares: one thread, `GET /` with `:authority: bench`.
fn base(addr: SocketAddr) -> Vec<String> {
    vec!["-t".into(), "1".into(), "-H".into(), format!(":authority: {SERVICE}"), format!("http://{addr}/")]
}

/// Runs h2load with `args` on the client CPU; its stdout. Killed if it runs `bound` + 15 s.
fn run(env: &Env, args: &[String], bound: Duration) -> anyhow::Result<String> {
    let h2load = env.h2load.clone().map_err(anyhow::Error::msg)?;
    let shown = format!("h2load {}", args.join(" "));
    let mut child = Command::new("taskset")
        .args(["-c", &env.client_cpu])
        .arg(&h2load)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    procs::track(&mut child)?;
    let pid = child.id();
    // h2load writes little (its summary), so the pipes cannot fill while it runs.
    let status = weir_testkit::proc::wait_exit(&mut child, bound + Duration::from_secs(15));
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output();
    procs::untrack(pid);
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match status {
        None => bail!("{shown} overran its time bound and was killed"),
        Some(s) if !s.success() => {
            bail!("{shown} failed ({s}): {} {}", tail(&text), String::from_utf8_lossy(&out.stderr).trim())
        }
        Some(_) => Ok(text),
    }
}

/// One stream on one connection: whether `addr` answers 2xx over h2c.
pub(super) fn probe(env: &Env, addr: SocketAddr) -> anyhow::Result<()> {
    let mut args: Vec<String> = ["-n", "1", "-c", "1", "-m", "1"].map(String::from).to_vec();
    args.extend(base(addr));
    let s = parse_summary(&run(env, &args, Duration::from_secs(5))?)?;
    if s.status_2xx != 1 {
        bail!("no 2xx answer ({s:?})");
    }
    Ok(())
}

/// Waits (at most 20 s) until `addr` answers over h2c, or fails if `p` exits.
pub(super) fn wait_ready(env: &Env, p: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let mut last = String::new();
    let ready = weir_testkit::wait_until(Duration::from_secs(20), || {
        if let Err(e) = p.check_alive() {
            return Some(Err(e));
        }
        match probe(env, addr) {
            Ok(()) => Some(Ok(())),
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        }
    });
    ready.unwrap_or_else(|| {
        bail!(
            "{} did not answer over h2c on {addr} within 20 s (last: {last}); log:\n{}",
            p.name,
            procs::log_tail(&p.log)
        )
    })
}

/// `connections` × `streams` in flight for `secs` (after `warmup` s, not counted), as fast as
/// the path answers.
pub(super) fn closed(
    env: &Env,
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    secs: f64,
    warmup: f64,
) -> anyhow::Result<Summary> {
    let mut args = closed_args(connections, streams, secs, warmup);
    args.extend(base(addr));
    parse_summary(&run(env, &args, Duration::from_secs_f64(secs + warmup))?)
}

/// The flags of a closed-loop run (durations in whole milliseconds, as h2load takes them).
pub(super) fn closed_args(connections: usize, streams: usize, secs: f64, warmup: f64) -> Vec<String> {
    let mut args =
        vec!["-c".to_string(), connections.to_string(), "-m".into(), streams.to_string(), "-D".into(), ms(secs)];
    if warmup > 0.0 {
        args.extend(["--warm-up-time".into(), ms(warmup)]);
    }
    args
}

fn ms(secs: f64) -> String {
    format!("{}ms", (secs * 1000.0).round() as u64)
}

/// The flags of an open-loop run: `rate` streams/s in total, split evenly over `connections`
/// (h2load's `--rps` is per connection), at most `streams` in flight on each.
pub(super) fn open_args(
    connections: usize,
    streams: usize,
    rate: f64,
    secs: f64,
    warmup: f64,
    log: &Path,
) -> Vec<String> {
    let mut args = closed_args(connections, streams, secs, warmup);
    args.extend([
        "--rps".into(),
        format!("{}", (rate / connections.max(1) as f64).round() as u64),
        "--log-file".into(),
        log.display().to_string(),
    ]);
    args
}

/// An open-loop run at `rate` streams/s for `secs` (after `warmup` s): h2load's summary, the
/// latency of the 2xx streams from its log, and the non-2xx rows of the log.
#[allow(clippy::too_many_arguments, reason = "one call site: the run's settings")]
pub(super) fn open(
    env: &Env,
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    rate: f64,
    secs: f64,
    warmup: f64,
    log: &Path,
) -> anyhow::Result<(Summary, Latency, u64)> {
    let _ = std::fs::remove_file(log);
    let mut args = open_args(connections, streams, rate, secs, warmup, log);
    args.extend(base(addr));
    let summary = parse_summary(&run(env, &args, Duration::from_secs_f64(secs + warmup))?)?;
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let (lat, errors) = parse_log(&text);
    let _ = std::fs::remove_file(log);
    Ok((summary, lat, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "starting benchmark...\nspawning thread #0: 8 total client(s). Timing-based test with 1s of warm-up time and 3s of main duration for measurements.\n\
Warm-up started for thread #0.\nprogress: 10% of clients started\nWarm-up phase is over for thread #0.\nMain benchmark duration is started for thread #0.\n\
Main benchmark duration is over for thread #0. Stopping all clients.\nStopped all clients for thread #0\n\n\
finished in 4.00s, 304293.33 req/s, 9.00MB/s\n\
requests: 912880 total, 912880 started, 912880 done, 912870 succeeded, 10 failed, 4 errored, 0 timeout\n\
status codes: 912860 2xx, 0 3xx, 6 4xx, 0 5xx\n\
traffic: 26.99MB (28299832) total, 10.41MB (10917544) headers (space savings 94.25%), 3.12MB (3274848) data\n";

    #[test]
    fn the_summary_is_read() {
        let s = parse_summary(OUT).expect("summary");
        assert_eq!(
            s,
            Summary { rps: 304293.33, succeeded: 912870, failed: 10, errored: 4, timeout: 0, status_2xx: 912860 }
        );
        assert_eq!(s.errors(), 10);
        assert!((s.ok_rps() - 304293.33 * 912860.0 / 912870.0).abs() < 1e-6);
        assert!(parse_summary("h2load: connection refused\n").is_err());
    }

    #[test]
    fn the_log_becomes_percentiles() {
        let mut text = String::new();
        for i in 1..=1000u64 {
            text.push_str(&format!("1700000000{i:06}\t200\t{i}\n"));
        }
        text.push_str("1700000001000000\t-1\t5\n1700000001000001\t503\t7\ngarbage\n");
        let (l, errors) = parse_log(&text);
        assert_eq!(errors, 2);
        assert_eq!(
            (l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us),
            (1000, 500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(l.distribution.first(), Some(&(0.0, 1.0)));
        assert_eq!(l.distribution.last(), Some(&(100.0, 1000.0)));
        // 1000 samples resolve up to 99.9% (k = 30).
        assert_eq!(l.distribution.len(), 32);
        assert_eq!(latency(Vec::new()).count, 0);
    }

    #[test]
    fn rates_are_split_over_the_connections() {
        let a = open_args(8, 32, 10_000.0, 4.0, 0.5, Path::new("/tmp/x.log"));
        let s = a.join(" ");
        assert_eq!(s, "-c 8 -m 32 -D 4000ms --warm-up-time 500ms --rps 1250 --log-file /tmp/x.log");
        assert_eq!(closed_args(4, 16, 2.5, 0.0).join(" "), "-c 4 -m 16 -D 2500ms");
    }
}
