//! The weir binary's allocator: jemalloc, which gives freed memory back to the system about a
//! second after it is freed (`dirty_decay_ms:1000,muzzy_decay_ms:0`, set at build time in the
//! binaries' `_rjem_malloc_conf`), so that RSS follows the service table down after it shrinks
//! and a reload's temporary parse state does not stay. Measured against glibc malloc (with
//! arena and trim tuning, and with `malloc_trim` after each reload) and mimalloc: see
//! docs/ARCHITECTURE.md. Must not: be called from a process whose global allocator is not
//! jemalloc (the test harness running weir in-process), where it would start an idle thread
//! for an allocator nobody uses.

/// Starts jemalloc's background purging thread. jemalloc creates it from the calling thread,
/// and a thread inherits its creator's capabilities: so it is started from a short-lived
/// thread that has first given up every capability.
pub fn start_background_purge() {
    let started = std::thread::spawn(|| {
        crate::privileges::drop_thread_caps(&Default::default()).is_ok()
            && tikv_jemalloc_ctl::background_thread::write(true).is_ok()
    })
    .join()
    .unwrap_or(false);
    if !started {
        tracing::warn!(
            "jemalloc's background purging could not start: freed memory returns to the system only as weir allocates"
        );
    }
}
