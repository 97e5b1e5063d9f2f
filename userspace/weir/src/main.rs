//! The `weir` command: `weir run`, `weir check`, `weir steer status`.
//!
//! The allocator is jemalloc, with background purging of freed memory after about a second
//! (`dirty_decay_ms:1000,muzzy_decay_ms:0`, the purging thread started by `weir run` once it can
//! hold no capability: [`weir::allocator`]): when a large service table shrinks, or a reload's
//! temporary parse state is freed, the memory goes back to the system instead of staying in
//! the process (measured against glibc malloc, with and without `malloc_trim`, in
//! docs/ARCHITECTURE.md's memory section).
use std::process::ExitCode;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start (the `_rjem_` prefix is tikv-jemalloc-sys's).
#[allow(non_upper_case_globals, reason = "the name jemalloc looks up")]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 61] = b"background_thread:false,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    weir::cli::main()
}
