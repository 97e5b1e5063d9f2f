//! `cargo xtask test`: setup, a formatting check, the clippy gate (warnings are errors), build
//! everything, then every test of the workspace: the unprivileged tier and the root tier (eBPF,
//! cgroups, netns), which needs root and fails loudly without it; then a short run of every fuzz target (60 s each,
//! `WEIR_FUZZ_SECONDS` to change, 0 to skip) so that parser regressions surface.
//! `--unprivileged` runs everything that needs no root: the root tier's tests all live under
//! the `root_tier::` module of the integration tests, and are skipped by that name.

use std::process::Command;

use crate::{is_root, root, run, setup};

/// The module path every root-tier test lives under (tests/tests/root_tier.rs).
pub(crate) const ROOT_TIER: &str = "root_tier::";

/// The lint gate: the workspace lints (Cargo.toml `[workspace.lints]`) and clippy's defaults,
/// every warning an error.
pub(crate) const CLIPPY: &[&str] = &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"];

pub(crate) fn test(unprivileged: bool, extra: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    if unprivileged {
        eprintln!("test: --unprivileged: leaving out the root tier (tests under `{ROOT_TIER}`)");
    } else if !is_root() {
        eprintln!(
            "test: not running as root: the root-tier tests (eBPF, cgroups, netns) will fail; \
             run `sudo -E cargo xtask test` for the whole suite, or `cargo xtask test --unprivileged`"
        );
    }
    eprintln!("test: formatting (cargo fmt --all --check; run `cargo fmt --all` to fix)");
    run(Command::new("cargo").current_dir(root()).args(["fmt", "--all", "--check"]))?;
    eprintln!("test: linting (cargo clippy --workspace --all-targets -- -D warnings)");
    run(Command::new("cargo").current_dir(root()).args(CLIPPY))?;
    eprintln!("test: building");
    run(Command::new("cargo").current_dir(root()).args(["build", "--workspace", "--all-targets"]))?;
    eprintln!("test: running");
    run(Command::new("cargo")
        .current_dir(root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(test_args(unprivileged, extra)))?;
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

/// The arguments after `cargo test --workspace --no-fail-fast`: `extra` as given, plus, when
/// `unprivileged`, `--skip root_tier::` for the test binaries (after `extra`'s own `--`, or
/// after a new one).
fn test_args(unprivileged: bool, extra: &[String]) -> Vec<String> {
    let mut args = extra.to_vec();
    if unprivileged {
        if !args.iter().any(|a| a == "--") {
            args.push("--".into());
        }
        args.extend(["--skip".into(), ROOT_TIER.into()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unprivileged_skips_the_root_tier_after_any_extra_arguments() {
        assert_eq!(test_args(false, &[]), Vec::<String>::new());
        assert_eq!(test_args(true, &[]), strings(&["--", "--skip", "root_tier::"]));
        assert_eq!(test_args(true, &strings(&["soak"])), strings(&["soak", "--", "--skip", "root_tier::"]));
        assert_eq!(
            test_args(true, &strings(&["-p", "weir-tests", "--", "--nocapture"])),
            strings(&["-p", "weir-tests", "--", "--nocapture", "--skip", "root_tier::"])
        );
        assert_eq!(test_args(false, &strings(&["soak"])), strings(&["soak"]));
    }
}
