//! weir's test kit: what the integration tests (`tests/`), the benches (`benches/`) and
//! `xtask` (demo, bench) share to drive weir from the outside — a blocking HTTP/1.1 client, a
//! scriptable test endpoint, a cgroup v2 handle whose root comes from /proc/self/mountinfo,
//! access-log sinks (one that reads, one that never reads), a recording OTLP/HTTP collector,
//! /proc readings, loopback ports
//! reserved by binding port 0, and polling helpers that wait on observable state instead of
//! sleeping. Must not: depend on the weir crates (xtask and the benches use it without
//! building weir), or be used by product code.

pub mod cgroup;
pub mod client;
pub mod collector;
pub mod endpoint;
pub mod memcg;
pub mod net;
pub mod proc;
pub mod sink;
pub mod tools;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use cgroup::{Cgroup, Cgroup2Mount, cgroup2_root};
pub use client::{Client, Response};
pub use collector::Collector;
pub use endpoint::{Behavior, Endpoint, TcpEcho};
pub use net::ReservedPort;
pub use proc::rss_kib;
pub use sink::{LineSink, StalledSink};

/// How often the polling helpers look again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for: {what}"))
}

/// Polls `f` until it returns `Some` (that value) or `timeout` passes (`None`). For cleanup
/// paths and tools that must not panic; tests use [`eventually`].
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// A fresh scratch directory under the workspace's target directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-scratch").join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The value of `sample` in a Prometheus text exposition (exact name and label set as
/// rendered, e.g. `weir_requests_total{service="a",source="direct",code="200"}`), 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("numeric sample"))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_the_first_value_or_gives_up() {
        let mut n = 0;
        assert_eq!(
            wait_until(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        let t = Instant::now();
        assert_eq!(wait_until(Duration::from_millis(50), || None::<()>), None);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn metric_value_reads_exact_samples_only() {
        let text = "# TYPE a counter\na{x=\"1\"} 3\na{x=\"10\"} 7\nb 2.5\n";
        assert_eq!(metric_value(text, "a{x=\"1\"}"), 3.0);
        assert_eq!(metric_value(text, "a{x=\"10\"}"), 7.0);
        assert_eq!(metric_value(text, "b"), 2.5);
        assert_eq!(metric_value(text, "c"), 0.0);
    }
}
