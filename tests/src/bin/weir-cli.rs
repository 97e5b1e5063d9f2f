//! The `weir` command, built inside the test package so that process-level tests (exit codes,
//! signals, kill -9, memory) can run it through `CARGO_BIN_EXE_weir-cli`: same code as `weir`,
//! with the same allocator and allocator options.
use std::process::ExitCode;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// As in userspace/weir/src/main.rs.
#[allow(non_upper_case_globals, reason = "the name jemalloc looks up")]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 61] = b"background_thread:false,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    weir::cli::main()
}
