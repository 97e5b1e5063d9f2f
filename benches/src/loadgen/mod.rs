//! The in-house HTTP/1.1 load generator that `cargo xtask bench` runs against every path:
//! open loop at a constant rate (latency from the intended send time, so no coordinated
//! omission), closed loop (saturation), one connection with sequential requests (added latency
//! per hop), and many idle keep-alive connections (memory per connection). Latencies go into
//! HDR histograms (ns, 3 significant digits); every mode prints one JSON object.
//! Must not: run unbounded (every mode has a duration or count and a deadline), or talk to
//! anything but the address it is given.

pub mod event;
pub mod response;

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

pub use event::{LoopOptions, LoopResult};

/// Highest latency recorded: 60 s in ns (larger values saturate).
pub const MAX_RECORD_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORD_NS, 3).expect("static histogram bounds are valid")
}

/// Error count plus the first few distinct messages.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    /// Total.
    pub count: u64,
    /// Up to 5 distinct messages.
    pub samples: Vec<String>,
}

impl Errors {
    /// Counts one error.
    pub fn add(&mut self, msg: String) {
        self.count += 1;
        if self.samples.len() < 5 && !self.samples.contains(&msg) {
            self.samples.push(msg);
        }
    }
}

/// The request every mode sends: `GET path` with `Host: host`.
pub fn request_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: weir-loadgen\r\naccept: */*\r\n\r\n").into_bytes()
}

/// Percentiles of `h` in microseconds (fractional), plus the distribution for plotting:
/// `[percentile, µs]` points at 1 − 10^(−k/10) up to the resolution the sample count allows.
pub fn summary(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    let q = |p: f64| us(h.value_at_quantile(p));
    let mut dist = Vec::new();
    if !h.is_empty() {
        for k in 0..=60u32 {
            let p = 1.0 - 10f64.powf(-f64::from(k) / 10.0);
            if k > 0 && (1.0 - p) * (h.len() as f64) < 1.0 {
                break;
            }
            dist.push(json!([p * 100.0, q(p)]));
        }
        dist.push(json!([100.0, us(h.max())]));
    }
    json!({
        "count": h.len(),
        "mean_us": if !h.is_empty() { h.mean() / 1000.0 } else { 0.0 },
        "p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99), "p999_us": q(0.999),
        "max_us": us(h.max()),
        "distribution": dist,
    })
}

/// The JSON report of an open- or closed-loop run.
pub fn loop_report(opts: &LoopOptions, r: &LoopResult) -> Value {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    json!({
        "mode": if opts.rate.is_some() { "open" } else { "closed" },
        "addr": opts.addr.to_string(),
        "connections": opts.connections,
        "rate": opts.rate,
        "duration_s": secs,
        "ok": r.ok,
        "errors": r.errors.count,
        "error_samples": r.errors.samples,
        "reconnects": r.reconnects,
        "achieved_rps": r.ok as f64 / secs,
        "latency": summary(&r.latency),
        "send_lag": summary(&r.send_lag),
    })
}

/// Reads one response (Content-Length framed) from a blocking stream into `buf`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<response::Parsed> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = response::parse(buf).map_err(|e| anyhow::anyhow!("{e}"))? {
            return Ok(p);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!("connection closed before a whole response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection, `warmup` + `requests` sequential requests (or until `max_duration`): the
/// latency of each recorded request, measured from its write to the end of its response.
pub fn sequential(
    addr: SocketAddr,
    request: &[u8],
    warmup: u64,
    requests: u64,
    max_duration: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + max_duration;
    let mut s = event::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut h, mut errors, mut buf) = (new_histogram(), Errors::default(), Vec::with_capacity(4096));
    let started = Instant::now();
    let mut done = 0u64;
    for i in 0..warmup + requests {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        let res = s.write_all(request).map_err(anyhow::Error::from).and_then(|_| read_response(&mut s, &mut buf));
        let elapsed = t0.elapsed();
        match res {
            Ok(p) if (200..300).contains(&p.status) => {
                if i >= warmup {
                    h.saturating_record((elapsed.as_nanos() as u64).max(1));
                    done += 1;
                }
                if p.close || buf.len() > p.len {
                    s = event::connect(addr)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                }
            }
            Ok(p) => errors.add(format!("status {}", p.status)),
            Err(e) => {
                errors.add(format!("{e:#}"));
                s = event::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
            }
        }
    }
    Ok(json!({
        "mode": "seq",
        "addr": addr.to_string(),
        "ok": done,
        "errors": errors.count,
        "error_samples": errors.samples,
        "duration_s": started.elapsed().as_secs_f64(),
        "latency": summary(&h),
    }))
}

/// Opens `count` keep-alive connections, sends one request on each and reads its response,
/// then prints one JSON line (`connected`, errors) and holds them open until stdin closes or
/// `hold` passes. Returns the final report.
pub fn idle(addr: SocketAddr, request: &[u8], count: usize, hold: Duration) -> anyhow::Result<Value> {
    raise_nofile(count as u64 + 64)?;
    let started = Instant::now();
    let (mut conns, mut errors, mut buf) = (Vec::with_capacity(count), Errors::default(), Vec::new());
    for _ in 0..count {
        if started.elapsed() > hold {
            errors.add("ran out of time opening connections".into());
            break;
        }
        let opened = event::connect(addr).map_err(anyhow::Error::from).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request)?;
            let p = read_response(&mut s, &mut buf)?;
            anyhow::ensure!((200..300).contains(&p.status) && !p.close, "status {} (close: {})", p.status, p.close);
            Ok(s)
        });
        match opened {
            Ok(s) => conns.push(s),
            Err(e) => errors.add(format!("{e:#}")),
        }
    }
    let ready = json!({
        "mode": "idle",
        "addr": addr.to_string(),
        "connected": conns.len(),
        "errors": errors.count,
        "error_samples": errors.samples,
        "open_s": started.elapsed().as_secs_f64(),
    });
    println!("{ready}");
    std::io::stdout().flush()?;
    // Hold until the driver closes our stdin (or the hold time passes).
    let deadline = started + hold;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().lock().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    drop(conns);
    Ok(ready)
}

/// Raises RLIMIT_NOFILE to at least `want` (root may raise the hard limit too).
pub fn raise_nofile(want: u64) -> anyhow::Result<()> {
    weir_testkit::proc::raise_nofile(Some(want))
        .map_err(|e| anyhow::anyhow!("{e}; run as root or raise `ulimit -n`"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
