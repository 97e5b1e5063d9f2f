//! weir's developer tasks. `cargo xtask demo` and `cargo xtask test` are the two commands a
//! newcomer needs; `setup` installs toolchain pieces; `bench` measures weir against its peers.
//! Must not: hold product logic; it orchestrates processes that cargo cannot run alone.

mod bench;
mod demo;
mod demo_k8s;
mod fuzz;
mod k8s_bench;
mod setup;
mod test;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "weir developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the nightly rust-src, bpf-linker and the Debian packages the tests need.
    Setup,
    /// Run every test (unprivileged and root tiers) after setup and build.
    Test {
        /// Only the tests that need no root: leaves out the root tier (`root_tier::`, eBPF and
        /// cgroups), for contributors without root.
        #[arg(long)]
        unprivileged: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Start weir, demo endpoints and a steered demo workload; print live results.
    Demo(demo::DemoArgs),
    /// (internal) The demo workload: joins a cgroup and sends requests to a service VIP.
    #[command(hide = true)]
    DemoClient(demo::ClientArgs),
    /// Run the cargo-fuzz targets in fuzz/ one after another (installs cargo-fuzz if missing).
    Fuzz(fuzz::FuzzArgs),
    /// Measure weir against direct, nginx, HAProxy and Envoy; regenerate docs/BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Measure Kubernetes discovery at scale (10 000 Services, 100 000 endpoints from the test
    /// API server); rewrite that section of docs/BENCHMARKS.md.
    BenchKubernetes(k8s_bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Test { unprivileged, args } => test::test(unprivileged, &args),
        Task::Demo(args) => demo::demo(args),
        Task::DemoClient(args) => demo::client(args),
        Task::Fuzz(args) => fuzz::fuzz(args),
        Task::Bench(args) => bench::bench(args),
        Task::BenchKubernetes(args) => k8s_bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is one level below the root").to_path_buf()
}

/// Runs a command, inheriting stdio; fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub use weir_testkit::proc::is_root;
