//! weir's own diagnostics (not access logs): `tracing` to stderr through a non-blocking
//! writer, text by default or JSON with `WEIR_LOG_FORMAT=json`, filtered by `RUST_LOG`
//! (default `info`). A slow stderr drops diagnostics rather than stalling a thread.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

static GUARD: OnceLock<tracing_appender::non_blocking::WorkerGuard> = OnceLock::new();

/// Like [`init`], from a short-lived thread that first gives up every capability, so that the
/// log writer thread (created by it, inheriting its credentials) never holds any.
pub fn init_without_privileges() {
    let _ = std::thread::spawn(|| {
        let _ = crate::privileges::drop_thread_caps(&Default::default());
        init();
    })
    .join();
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    if GUARD.get().is_some() {
        return;
    }
    let (writer, guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(true).finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("WEIR_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false);
    let installed = if json { builder.json().try_init().is_ok() } else { builder.try_init().is_ok() };
    if installed {
        let _ = GUARD.set(guard);
    }
}
