//! The `weir` command: `weir run`, `weir check`, `weir steer status`.
use std::process::ExitCode;

fn main() -> ExitCode {
    weir::cli::main()
}
