//! `cargo xtask setup`: installs what building and testing weir needs and the machine may lack:
//! rustfmt, the nightly toolchain's rust-src (for `-Z build-std=core`), bpf-linker linked against the
//! nightly's own libLLVM, and the Debian packages the tests use. Idempotent: every step checks
//! first, prints what it does, and skips what is present. Must not: install benchmark peers
//! (that is `bench`'s own setup) or anything the tests do not use.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{capture, run};

/// The bpf-linker release that works with aya-build 0.2.0 and nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the test suite uses: `ip` (netns/veth), promtool (metrics exposition check).
pub const TEST_PACKAGES: &[(&str, &str)] = &[("iproute2", "ip"), ("prometheus", "promtool")];

pub fn setup() -> anyhow::Result<()> {
    step("rustfmt (`cargo xtask test` checks formatting)", ensure_rustfmt)?;
    step("nightly toolchain", ensure_nightly)?;
    step("rust-src for nightly", ensure_rust_src)?;
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"), ensure_bpf_linker)?;
    step("Debian packages for the tests", || ensure_packages(TEST_PACKAGES))?;
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

fn ensure_rustfmt() -> anyhow::Result<()> {
    if capture(Command::new("cargo").args(["fmt", "--version"])).is_ok() {
        eprintln!("  present");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rustfmt"]))
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

/// Installs the Debian packages whose command is missing.
pub fn ensure_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
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
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
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
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| PathBuf::from(d).join(cmd))
        .find(|p| p.is_file())
}
