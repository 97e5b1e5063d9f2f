//! weir's own diagnostics (not access logs): `tracing` to stderr through a non-blocking
//! writer, text by default or JSON with `WEIR_LOG_FORMAT=json`, filtered by `RUST_LOG`
//! (default `info`). A slow stderr drops diagnostics rather than stalling a thread. The writer
//! thread holds lines not yet written: [`init`] hands back a [`LogGuard`] that the caller keeps
//! until the very end of `main`, and dropping it writes them out, so the last lines of a run
//! ("drained; exiting", the drain-timeout warning) are not lost with the process.

use tracing_subscriber::EnvFilter;

/// Keeps the diagnostics writer thread running. Dropping it writes out every queued line
/// (waiting at most about a second for a stuck stderr) and stops the writer: keep it until the
/// process is about to exit.
#[must_use = "dropping the guard stops weir's log writer: keep it until the end of main"]
#[derive(Debug)]
pub struct LogGuard(Option<tracing_appender::non_blocking::WorkerGuard>);

impl LogGuard {
    /// Writes out the queued lines and stops the writer (the same as dropping the guard).
    pub fn finish(self) {
        drop(self.0);
    }
}

/// Like [`init`], from a short-lived thread that first gives up every capability, so that the
/// log writer thread (created by it, inheriting its credentials) never holds any.
pub fn init_without_privileges() -> LogGuard {
    std::thread::spawn(|| {
        let _ = crate::privileges::drop_thread_caps(&Default::default());
        init()
    })
    .join()
    .unwrap_or(LogGuard(None))
}

/// Installs the global subscriber. Only the first call in a process installs one; later calls
/// return a guard that holds nothing.
pub fn init() -> LogGuard {
    let (writer, guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(true).finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("WEIR_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false);
    let installed = if json { builder.json().try_init().is_ok() } else { builder.try_init().is_ok() };
    LogGuard(installed.then_some(guard))
}
