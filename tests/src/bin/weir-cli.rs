//! The `weir` command, built inside the test package so that process-level tests (exit codes,
//! signals, kill -9) can run it through `CARGO_BIN_EXE_weir-cli`: same code as `weir`.
use std::process::ExitCode;

fn main() -> ExitCode {
    weir::cli::main()
}
