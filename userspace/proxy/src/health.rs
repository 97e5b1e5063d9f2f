//! Active health checks (`[service.health_check]`), on their own thread with its own runtime,
//! timers and connections, never on a worker core's request path: every endpoint of a checked
//! service is checked every `interval_ms` (each wait jittered by up to a tenth, so checks of
//! many endpoints do not fall together), by an HTTP/1.1 `GET path` answered 2xx within
//! `timeout_ms`, or a TCP connect with `tcp = true`. `unhealthy_after` consecutive failures
//! take an endpoint out ([`ServiceHealth::mark_down`]: no request, not even in panic mode);
//! `healthy_after` consecutive passes bring it back through probation, as after an ejection.
//! An endpoint of a checked service starts out until its first check passes.
//!
//! The checker follows the published snapshot (endpoints are keyed by service, backend and
//! address, so their counts survive reloads) and counts results per service and backend for
//! `weir_health_checks_total`. Must not: run on a worker, or touch a worker's state.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weir_core::config::{HealthCheckConfig, ServiceConfig};

use crate::io::{Conn, ConnectOptions, Runtime};
use crate::shared::Shared;
use crate::worker::ThreadHook;

/// Check results per (service, backend): `[passed, failed]`. Written by the checker thread,
/// read at scrape time.
#[derive(Debug, Default)]
pub struct CheckCounts {
    inner: Mutex<BTreeMap<(String, String), [u64; 2]>>,
}

impl CheckCounts {
    fn count(&self, service: &str, backend: &str, passed: bool) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match m.get_mut(&(service.to_string(), backend.to_string())) {
            Some(e) => e,
            None => m.entry((service.to_string(), backend.to_string())).or_default(),
        };
        entry[usize::from(!passed)] += 1;
    }

    /// `(service, backend, passed, failed)`, sorted.
    pub fn all(&self) -> Vec<(String, String, u64, u64)> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|((s, b), [p, f])| (s.clone(), b.clone(), *p, *f)).collect()
    }
}

/// The running checker thread.
#[derive(Debug)]
pub struct HealthChecker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Results so far.
    pub counts: Arc<CheckCounts>,
}

impl HealthChecker {
    /// Starts checking what `shared`'s snapshots say, until stopped. `on_start` runs on the
    /// thread first (as on a worker's: it drops capabilities).
    pub fn start(shared: Arc<Shared>, on_start: Option<ThreadHook>) -> std::io::Result<HealthChecker> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(CheckCounts::default());
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::Builder::new().name("weir-health".into()).spawn(move || {
                if let Some(hook) = on_start {
                    (hook.0)(usize::MAX);
                }
                match Runtime::new() {
                    Ok(rt) => rt.block_on(run(shared, stop, counts)),
                    Err(e) => tracing::error!("health checks: cannot start a runtime: {e}"),
                }
            })?
        };
        Ok(HealthChecker { stop, thread: Some(thread), counts })
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Who an endpoint is, across reloads.
type Key = (Arc<str>, Arc<str>, SocketAddr);

/// One endpoint's checking state.
#[derive(Debug)]
struct Endpoint {
    next: Instant,
    running: bool,
    passes: u32,
    failures: u32,
    /// Whether a check of it ever passed (its first pass brings it in at once).
    ever_passed: bool,
}

/// The longest the loop sleeps: how soon it sees a reload or a stop.
const TICK: Duration = Duration::from_millis(50);

async fn run(shared: Arc<Shared>, stop: Arc<AtomicBool>, counts: Arc<CheckCounts>) {
    let mut endpoints: HashMap<Key, Endpoint> = HashMap::new();
    let done: Rc<RefCell<Vec<(Key, bool)>>> = Rc::default();
    let mut rng = SmallRng::seed_from_u64(std::process::id().into());
    while !stop.load(Ordering::SeqCst) {
        let snapshot = shared.snapshot.load_full();
        let now = crate::io::now();
        let now_ms = shared.now_ms();
        // Results first, applied to the current snapshot's state (by address).
        for (key, passed) in done.borrow_mut().drain(..) {
            let Some(ep) = endpoints.get_mut(&key) else { continue };
            ep.running = false;
            counts.count(&key.0, &key.1, passed);
            let Some(i) = snapshot.service_index(&key.0) else { continue };
            let (svc, cfg) = (&snapshot.services[i], &snapshot.config.services[i]);
            let (Some(hc), Some(b)) = (&cfg.health_check, svc.backends.iter().find(|b| b.name == key.1)) else {
                continue;
            };
            let Some(j) = b.health.addresses().iter().position(|a| *a == key.2) else { continue };
            if passed {
                ep.failures = 0;
                ep.passes = ep.passes.saturating_add(1);
                let first = !ep.ever_passed;
                ep.ever_passed = true;
                let changed = (first && b.health.mark_up_first(j))
                    || (ep.passes >= hc.healthy_after && b.health.mark_up(j, now_ms));
                if changed {
                    tracing::info!(service = %key.0, backend = %key.1, endpoint = %key.2, "health check passes: endpoint back");
                }
            } else {
                ep.passes = 0;
                ep.failures = ep.failures.saturating_add(1);
                if ep.failures >= hc.unhealthy_after && b.health.mark_down(j) {
                    tracing::warn!(service = %key.0, backend = %key.1, endpoint = %key.2, "health check fails: endpoint out");
                }
            }
        }
        // What to check now; endpoints no longer checked are forgotten.
        let mut wanted: HashMap<Key, (&HealthCheckConfig, &ServiceConfig)> = HashMap::new();
        for (svc, cfg) in snapshot.services.iter().zip(&snapshot.config.services) {
            let Some(hc) = &cfg.health_check else { continue };
            for b in &svc.backends {
                for e in b.endpoints.iter() {
                    wanted.insert((svc.name.clone(), b.name.clone(), e.addr), (hc, cfg));
                }
            }
        }
        endpoints.retain(|k, _| wanted.contains_key(k));
        let mut next_wake = now + TICK;
        for (key, (hc, cfg)) in wanted {
            let ep = endpoints.entry(key.clone()).or_insert_with(|| Endpoint {
                // The first check soon, spread over a tenth of the interval.
                next: now + jitter(&mut rng, hc.interval / 10),
                running: false,
                passes: 0,
                failures: 0,
                ever_passed: false,
            });
            if ep.running {
                continue;
            }
            if ep.next <= now {
                ep.running = true;
                ep.next = now + hc.interval + jitter(&mut rng, hc.interval / 10);
                let opts = crate::ctx::connect_options(&shared, &snapshot.config.steering, cfg);
                let (hc, done) = (hc.clone(), done.clone());
                crate::io::spawn(async move {
                    let passed = check(key.2, &hc, &opts).await;
                    done.borrow_mut().push((key, passed));
                });
            }
            next_wake = next_wake.min(ep.next);
        }
        drop(snapshot);
        crate::io::sleep(next_wake.saturating_duration_since(crate::io::now()).min(TICK)).await;
    }
}

fn jitter(rng: &mut SmallRng, max: Duration) -> Duration {
    Duration::from_nanos(rng.random_range(0..=max.as_nanos().min(u128::from(u64::MAX)) as u64))
}

/// One check of `addr`: passed or not, within the check's timeout.
async fn check(addr: SocketAddr, hc: &HealthCheckConfig, opts: &ConnectOptions) -> bool {
    let deadline = crate::io::now() + hc.timeout;
    let attempt = async {
        let mut conn = Conn::connect(addr, opts, hc.timeout).await.ok()?;
        let Some(path) = &hc.path else { return Some(true) };
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: weir-health-check\r\nconnection: close\r\n\r\n"
        );
        let (res, _) = conn.write_all(req.into_bytes()).await;
        res.ok()?;
        let mut buf = Vec::with_capacity(1024);
        // The status line is all a check reads.
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            let (res, b) = conn.read(buf).await;
            buf = b;
            if res.ok()? == 0 {
                break;
            }
        }
        Some(passes(&buf))
    };
    crate::io::until(deadline, attempt).await.flatten().unwrap_or(false)
}

/// Whether a response starting with `head` passes a check: `HTTP/1.x 2xx`.
fn passes(head: &[u8]) -> bool {
    head.len() >= 12
        && head.starts_with(b"HTTP/1.")
        && head[8] == b' '
        && head[9] == b'2'
        && head[10..12].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::passes;

    #[test]
    fn only_a_2xx_status_line_passes() {
        assert!(passes(b"HTTP/1.1 200 OK\r\n"));
        assert!(passes(b"HTTP/1.0 204 No Content\r\n"));
        assert!(!passes(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!passes(b"HTTP/1.1 2"), "cut short");
        assert!(!passes(b"SSH-2.0-OpenSSH\r\n"));
    }
}
