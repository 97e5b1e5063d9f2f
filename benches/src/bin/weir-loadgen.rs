//! `weir-loadgen`: the load generator of `cargo xtask bench`. Prints one JSON object.
//!
//! ```text
//! weir-loadgen open   --addr A --rate R --duration S [--warmup S] [--connections N]
//! weir-loadgen closed --addr A --duration S [--warmup S] [--connections N]
//! weir-loadgen seq    --addr A --requests N [--warmup-requests N] [--max-duration S]
//! weir-loadgen idle   --addr A --count N [--hold S]
//! common: [--host H] [--path P] [--cgroup DIR]   (--cgroup: join a cgroup v2 dir first)
//! ```
//! Pin it with `taskset`. Must not: run without a bound (every mode has one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use weir_benches::loadgen::{self, LoopOptions};

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> anyhow::Result<T> {
    match value(args, name) {
        Some(v) => v.parse().ok().with_context(|| format!("{name} {v:?} is not a number")),
        None => default.with_context(|| format!("{name} is required")),
    }
}

fn secs(args: &[String], name: &str, default: Option<f64>) -> anyhow::Result<Duration> {
    let s: f64 = num(args, name, default)?;
    if !(0.0..=3600.0).contains(&s) {
        bail!("{name} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    if let Some(dir) = value(&args, "--cgroup") {
        weir_testkit::cgroup::join(&PathBuf::from(dir))?;
    }
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack: 1 ns, so the
    // open loop wakes when asked to rather than up to 50 µs later.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let addr: SocketAddr =
        value(&args, "--addr").context("--addr IP:PORT is required")?.parse().context("--addr must be IP:PORT")?;
    let request =
        loadgen::request_bytes(value(&args, "--host").unwrap_or("bench"), value(&args, "--path").unwrap_or("/"));
    let report = match mode {
        "open" | "closed" => {
            let connections = num(&args, "--connections", Some(if mode == "open" { 64 } else { 32 }))?;
            loadgen::raise_nofile(connections as u64 + 64)?;
            let opts = LoopOptions {
                addr,
                request,
                connections,
                rate: if mode == "open" { Some(num(&args, "--rate", None)?) } else { None },
                warmup: secs(&args, "--warmup", Some(1.0))?,
                duration: secs(&args, "--duration", None)?,
            };
            let r = loadgen::event::run(&opts)?;
            loadgen::loop_report(&opts, &r)
        }
        "seq" => loadgen::sequential(
            addr,
            &request,
            num(&args, "--warmup-requests", Some(1000))?,
            num(&args, "--requests", None)?,
            secs(&args, "--max-duration", Some(60.0))?,
        )?,
        "idle" => {
            // `idle` prints its report as soon as the connections are open, then holds them.
            loadgen::idle(addr, &request, num(&args, "--count", None)?, secs(&args, "--hold", Some(120.0))?)?;
            return Ok(());
        }
        _ => bail!("usage: weir-loadgen open|closed|seq|idle --addr IP:PORT ... (see the source header)"),
    };
    println!("{report}");
    Ok(())
}
