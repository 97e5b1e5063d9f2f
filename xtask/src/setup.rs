//! `cargo xtask setup`: installs what building and testing weir needs and the machine may lack:
//! rustfmt and clippy, the nightly toolchain's rust-src (for `-Z build-std=core`), bpf-linker linked against the
//! nightly's own libLLVM, the Debian packages the tests use, and the pinned Python and Node
//! clients the tests drive weir with (in target/test-tools, see `weir_testkit::tools`). Idempotent: every step checks
//! first, prints what it does, and skips what is present. Must not: install benchmark peers
//! (that is `bench`'s own setup) or anything the tests do not use.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{capture, run};

/// The bpf-linker release that works with aya-build 0.2.0 and nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the test suite uses: `ip` (netns/veth), promtool (metrics exposition check),
/// h2load and nghttp (HTTP/2 clients), nghttpd (an HTTP/2 server), node and npm (a second gRPC
/// client).
pub(crate) const TEST_PACKAGES: &[(&str, &str)] =
    &[("iproute2", "ip"), ("prometheus", "promtool"), ("nghttp2-client", "h2load"), ("nodejs", "node"), ("npm", "npm")];

pub(crate) fn setup() -> anyhow::Result<()> {
    step("rustfmt (`cargo xtask test` checks formatting)", || ensure_component("fmt", "rustfmt"))?;
    step("clippy (`cargo xtask test` runs the lint gate)", || ensure_component("clippy", "clippy"))?;
    step("nightly toolchain", ensure_nightly)?;
    step("rust-src for nightly", ensure_rust_src)?;
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"), ensure_bpf_linker)?;
    step("Debian packages for the tests", || ensure_packages(TEST_PACKAGES))?;
    step("Python test clients (grpcio, h2, websockets) in target/test-tools", ensure_python_tools)?;
    step("Node gRPC client (@grpc/grpc-js) in target/test-tools", ensure_node_tools)?;
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("setup: {name}");
    f().with_context(|| format!("setup step failed: {name}"))
}

fn ensure_nightly() -> anyhow::Result<()> {
    let list = capture(Command::new("rustup").args(["toolchain", "list"]))?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("  present");
        return Ok(());
    }
    run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

/// The rustup component that provides `cargo <subcommand>`.
fn ensure_component(subcommand: &str, component: &str) -> anyhow::Result<()> {
    if capture(Command::new("cargo").args([subcommand, "--version"])).is_ok() {
        eprintln!("  present");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", component]))
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim()))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        eprintln!("  present");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if let Ok(v) = capture(Command::new("bpf-linker").arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        eprintln!("  present ({})", v.trim());
        return Ok(());
    }
    // bpf-linker must use the LLVM that produced the bitcode: the one inside nightly.
    let lib = nightly_sysroot()?.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}", lib.display()))?;
    let major = llvm.trim_start_matches("libLLVM-").split(['-', '.']).next().unwrap_or_default().to_string();
    let dylib = llvm.trim_start_matches("lib").trim_end_matches(".so");
    let rustflags = format!("-L {lib} -C link-arg=-Wl,-rpath,{lib} -l dylib={dylib}", lib = lib.display());
    eprintln!("  installing against {llvm} (LLVM {major})");
    run(Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{major},no-llvm-linking")])
        .env("RUSTFLAGS", rustflags))
}

/// A stamp naming what was installed, so that a present install is recognised (and a changed
/// pin reinstalls).
fn stamped(dir: &std::path::Path, packages: &[&str]) -> bool {
    std::fs::read_to_string(dir.join(".weir-installed")).is_ok_and(|s| s == packages.join("\n"))
}

fn stamp(dir: &std::path::Path, packages: &[&str]) -> anyhow::Result<()> {
    std::fs::write(dir.join(".weir-installed"), packages.join("\n")).context("writing the install stamp")
}

fn ensure_python_tools() -> anyhow::Result<()> {
    use weir_testkit::tools::{PYTHON_PACKAGES, venv};
    let venv = venv();
    if venv.join("bin/python").is_file() && stamped(&venv, PYTHON_PACKAGES) {
        eprintln!("  present");
        return Ok(());
    }
    let python = which("python3").context("python3 is missing: install it (`apt-get install python3`)")?;
    if Command::new(&python).args(["-m", "venv", "--help"]).output().map_or(true, |o| !o.status.success()) {
        apt_install(&["python3-venv"])?;
    }
    eprintln!("  installing {} into {}", PYTHON_PACKAGES.join(" "), venv.display());
    run(Command::new(&python).arg("-m").arg("venv").arg("--clear").arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))?;
    stamp(&venv, PYTHON_PACKAGES)
}

fn ensure_node_tools() -> anyhow::Result<()> {
    use weir_testkit::tools::{NODE_PACKAGES, node_prefix};
    let prefix = node_prefix();
    if stamped(&prefix, NODE_PACKAGES) {
        eprintln!("  present");
        return Ok(());
    }
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    eprintln!("  installing {} into {}", NODE_PACKAGES.join(" "), prefix.display());
    run(Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&prefix)
        .args(NODE_PACKAGES))?;
    stamp(&prefix, NODE_PACKAGES)
}

/// Installs the Debian packages whose command is missing.
pub(crate) fn ensure_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().filter(|(_, cmd)| which(cmd).is_none()).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        eprintln!("  present");
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing {}: install them as root (`sudo apt-get install {}`), then run this again",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("  installing {}", missing.join(" "));
    apt_install(&missing)
}

/// `apt-get install` of `packages` (an `apt-get update` first only if the install fails).
pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if which("apt-get").is_none() {
        bail!("missing {} and no apt-get to install them with", packages.join(", "));
    }
    let install = |update: bool| -> anyhow::Result<()> {
        if update {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install(false).or_else(|_| install(true))
}

/// Finds `cmd` on PATH (or in the sbin directories, which a non-login root shell may lack).
pub(crate) fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| PathBuf::from(d).join(cmd))
        .find(|p| p.is_file())
}
