//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz (libFuzzer) targets in
//! `fuzz/` one after another, each for N seconds, on its growing corpus (`fuzz/corpus/TARGET`,
//! not committed) plus its committed seeds (`fuzz/seeds/TARGET`). Installs cargo-fuzz (and the
//! nightly toolchain it needs) when missing. Prints one summary line per target from libFuzzer's
//! final `#N DONE cov: ...` line, and fails naming every target that found a crash (the input is
//! kept in `fuzz/artifacts/TARGET/`). Must not: fuzz in parallel (it is meant to share a small
//! machine) or build into the workspace's target dir (sanitizer builds live in `fuzz/target`).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{capture, root, run};

#[derive(Args)]
pub(crate) struct FuzzArgs {
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Targets to run (default: every target in fuzz/Cargo.toml).
    targets: Vec<String>,
}

impl FuzzArgs {
    /// Every target for `seconds` each.
    pub(crate) fn all_for(seconds: u64) -> FuzzArgs {
        FuzzArgs { seconds, targets: Vec::new() }
    }
}

pub(crate) fn fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    let root = root();
    ensure_tools()?;
    let available = list_targets(&root)?;
    let targets = if args.targets.is_empty() { available.clone() } else { args.targets };
    if let Some(unknown) = targets.iter().find(|t| !available.contains(t)) {
        bail!("no fuzz target {unknown:?}; the targets are: {}", available.join(", "));
    }

    let mut summaries = Vec::new();
    let mut failed = Vec::new();
    for target in &targets {
        eprintln!("fuzz: {target}: fuzzing for {} s", args.seconds);
        match fuzz_one(&root, target, args.seconds) {
            Ok(summary) => summaries.push(summary),
            Err(e) => {
                summaries.push(format!("fuzz: {target}: FAILED"));
                failed.push(format!("{e:#}"));
            }
        }
    }
    eprintln!();
    for s in &summaries {
        eprintln!("{s}");
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// Nightly (cargo-fuzz builds with `-Zsanitizer` and sancov flags) and cargo-fuzz itself.
fn ensure_tools() -> anyhow::Result<()> {
    if capture(Command::new("rustc").args(["+nightly", "--version"])).is_err() {
        eprintln!("fuzz: installing the nightly toolchain");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if capture(Command::new("cargo").args(["fuzz", "--version"])).is_err() {
        eprintln!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn list_targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = capture(Command::new("cargo").current_dir(root).args(["+nightly", "fuzz", "list"]))
        .context("listing the fuzz targets")?;
    let targets: Vec<String> = out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if targets.is_empty() {
        bail!("fuzz/Cargo.toml declares no fuzz target");
    }
    Ok(targets)
}

/// Runs one target; returns its summary line, or an error naming the target and its crash.
fn fuzz_one(root: &Path, target: &str, seconds: u64) -> anyhow::Result<String> {
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = root.join("fuzz/seeds").join(target);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        // A shared CARGO_TARGET_DIR would mix sanitizer builds into the workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .args(["+nightly", "fuzz", "run", target])
        // libFuzzer writes new inputs into the first directory only: the seeds stay as they are.
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--").arg(format!("-max_total_time={seconds}")).arg("-rss_limit_mb=2048").stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("cannot start {shown}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;

    let mut done = None;
    let mut artifacts = Vec::new();
    let mut slow = Vec::new();
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.context("reading cargo fuzz's output")?;
        let line = String::from_utf8_lossy(&line);
        eprintln!("{line}");
        if let Some(d) = Done::parse(&line) {
            done = Some(d);
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            // slow-unit-*: an input that took longer than -report_slow_units (10 s), which on a
            // busy machine can be the scheduler; reported, not a failure. crash-, leak-, oom-
            // and timeout- inputs are findings.
            let path = path.trim().to_string();
            if path.rsplit('/').next().is_some_and(|n| n.starts_with("slow-unit-")) {
                slow.push(path);
            } else {
                artifacts.push(path);
            }
        }
    }
    let status = child.wait().with_context(|| format!("waiting for {shown}"))?;

    if !artifacts.is_empty() {
        let first = artifact_path(root, &artifacts[0]);
        bail!(
            "fuzz target `{target}` found a crash: {}\n  reproduce: cargo +nightly fuzz run {target} {p}\n  minimise:  cargo +nightly fuzz tmin {target} {p}",
            artifacts.join(", "),
            p = first.display(),
        );
    }
    if !status.success() {
        bail!("fuzz target `{target}` failed ({status}) without writing a crash input: see the output above");
    }
    let Some(d) = done else {
        bail!("fuzz target `{target}` ended without libFuzzer's final `DONE` line");
    };
    let slow = match slow.len() {
        0 => String::new(),
        n => format!(" (slow inputs: {n}, last {})", slow[n - 1]),
    };
    Ok(format!(
        "fuzz: {target}: {} runs in {} s ({} exec/s), cov {}, ft {}, corpus {}, crashes: none{slow}",
        d.runs, seconds, d.exec_per_sec, d.cov, d.ft, d.corp
    ))
}

fn artifact_path(root: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() { p.to_path_buf() } else { root.join(p) }
}

/// libFuzzer's final stats line: `#2097152\tDONE   cov: 812 ft: 2903 corp: 411/38Kb ...`.
#[derive(Debug, Default, PartialEq)]
struct Done {
    runs: u64,
    cov: String,
    ft: String,
    corp: String,
    exec_per_sec: String,
}

impl Done {
    fn parse(line: &str) -> Option<Done> {
        let mut words = line.split_whitespace();
        let runs = words.next()?.strip_prefix('#')?.parse().ok()?;
        if words.next()? != "DONE" {
            return None;
        }
        let mut d = Done { runs, ..Done::default() };
        while let Some(key) = words.next() {
            let Some(value) = words.next() else { break };
            match key {
                "cov:" => d.cov = value.to_string(),
                "ft:" => d.ft = value.to_string(),
                "corp:" => d.corp = value.to_string(),
                "exec/s:" => d.exec_per_sec = value.to_string(),
                _ => {}
            }
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_done_line() {
        let d = Done::parse("#2097152\tDONE   cov: 812 ft: 2903 corp: 411/38Kb lim: 4096 exec/s: 3495 rss: 456Mb")
            .expect("a DONE line");
        assert_eq!(
            d,
            Done {
                runs: 2_097_152,
                cov: "812".into(),
                ft: "2903".into(),
                corp: "411/38Kb".into(),
                exec_per_sec: "3495".into(),
            }
        );
        assert_eq!(Done::parse("#4096\tpulse  cov: 1 ft: 1 corp: 1/1b"), None);
        assert_eq!(Done::parse("Done 2097152 runs in 61 second(s)"), None);
    }
}
