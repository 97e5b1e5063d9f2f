//! `cargo xtask test`: setup, a formatting check, build everything, then every test of the workspace: the
//! unprivileged tier and the root tier (eBPF, cgroups, netns), which needs root and fails
//! loudly without it; then a short run of every fuzz target (60 s each, `WEIR_FUZZ_SECONDS`
//! to change, 0 to skip) so that parser regressions surface.

use std::process::Command;

use crate::{is_root, root, run, setup};

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    if !is_root() {
        eprintln!(
            "test: not running as root: the root-tier tests (eBPF, cgroups, netns) will fail; \
             run `sudo -E cargo xtask test` for the whole suite"
        );
    }
    eprintln!("test: formatting (cargo fmt --all --check; run `cargo fmt --all` to fix)");
    run(Command::new("cargo").current_dir(root()).args(["fmt", "--all", "--check"]))?;
    eprintln!("test: building");
    run(Command::new("cargo").current_dir(root()).args(["build", "--workspace", "--all-targets"]))?;
    eprintln!("test: running");
    run(Command::new("cargo").current_dir(root()).args(["test", "--workspace", "--no-fail-fast"]).args(extra))?;
    let seconds: u64 = match std::env::var("WEIR_FUZZ_SECONDS") {
        Ok(v) => v.parse().map_err(|_| anyhow::anyhow!("WEIR_FUZZ_SECONDS={v:?} is not a number of seconds"))?,
        Err(_) => 60,
    };
    if seconds > 0 && extra.is_empty() {
        eprintln!("test: fuzzing every target for {seconds} s");
        crate::fuzz::fuzz(crate::fuzz::FuzzArgs::all_for(seconds))?;
    }
    Ok(())
}
