//! Takeover: a new weir (`weir run --takeover`) replaces a running one with the same
//! `[steering] pin_dir` and `[proxy] listen` without failing a request or resetting a
//! connection. Owns the hand-off protocol, its versions, the order of its steps and what
//! happens when one fails. Must not: run on a worker, or make the proxy aware of any of it
//! (the proxy only adopts sockets, pauses, stops accepting and drains).
//!
//! The two talk over the hand-off socket ([`wire`]) that the running weir holds. In order:
//!
//! 1. new → old `Hello`: protocol version, eBPF shared-map layout, listen address, pin dir.
//!    The old weir refuses (`Refuse`, with the reason) a version it does not speak, another
//!    map layout, or a second takeover while one is in progress, and keeps serving.
//! 2. old → new `Offer`: its version, service table, and as file descriptors its listening
//!    sockets (every worker's, in order, so the SO_REUSEPORT group and the CPU-affinity map
//!    stay as they are), its admin socket and the hand-off socket itself. The old weir goes on
//!    accepting.
//! 3. The new weir loads its programs (reusing the pinned shared maps) with the old weir's
//!    service table, starts its workers paused on the inherited sockets, and asks `Swap`.
//! 4. old → new `SwapOk`. The new weir puts its programs into every pinned link with
//!    BPF_LINK_UPDATE (steering never stops: a link always has a program, and both weirs route
//!    every connection the same way) and sends `Commit`, then starts accepting.
//! 5. The old weir stops accepting (what it did not accept stays queued on the shared
//!    sockets), stops its admin server, lets go of steering without detaching, starts its
//!    drain, and answers `Committed` with its counters. The new weir then serves the admin API
//!    (its counters start from the old weir's), applies its own config to steering, and serves
//!    the hand-off socket for the next takeover.
//! 6. While it drains (in-flight requests finish with `Connection: close`, connections waiting
//!    for a request get [`IDLE_GRACE`] to send one, TCP relays run until `drain_timeout_ms`),
//!    the old weir sends its counters once a second (`Stats`) and a last time when done
//!    (`Final`), so that what it still serves is counted too; then it exits 0.
//!
//! Failure safety: until `Commit`, the old weir never stops serving. If the new weir dies or
//! gives up (`Abort`) or stalls (no `Commit` within half of `fail_after_ms` after `SwapOk`, so
//! its heartbeat is never stale while its programs run), the old weir puts its own programs
//! back into its links if the new one may have touched them, counts a failed takeover and
//! keeps serving; the new weir's paused workers never accepted anything. After `Commit` the old
//! weir is only draining.

pub mod new;
pub mod old;
pub mod totals;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir_core::stats::Published;
use weir_proxy::caller::CallerTable;

use crate::app::Control;
use crate::steering::ServiceEntry;
pub use totals::Totals;

/// The hand-off protocol this weir speaks when it takes over.
pub const PROTOCOL: u32 = 1;
/// The protocol versions this weir accepts from a weir taking it over.
pub const SUPPORTED: [u32; 1] = [1];

/// How long a draining weir that was taken over waits for a request on a connection that has
/// none in flight before it closes it (a request that arrives is answered, with
/// `Connection: close`). Long enough for a client busy on the connection to send its next
/// request, short enough to be done soon after the hand-off.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long the new weir may take from the offer to `Swap` (loading programs, committing
/// memory, starting workers).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a shutdown waits for a takeover in progress to commit or fail.
pub const CLOSE_WAIT: Duration = Duration::from_secs(65);

/// The layout of the eBPF maps this build shares with the weir it takes over, as its hello
/// carries it.
pub fn shared_maps_abi() -> Vec<u32> {
    weir_ebpf_common::shared_maps_abi().to_vec()
}

/// The other weir in messages: `weir pid N`, or, when its pid is not visible from this PID
/// namespace (SO_PEERCRED says 0: it runs in another container), so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who(pub u32);

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => f.write_str("a weir in another PID namespace"),
            pid => write!(f, "weir pid {pid}"),
        }
    }
}

/// What a frame is. The numbers never change; new kinds get new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// new → old: who I am ([`Hello`]).
    Hello = 1,
    /// old → new: what I hand over ([`Offer`]), with file descriptors.
    Offer = 2,
    /// Either way: no ([`Refuse`]).
    Refuse = 3,
    /// new → old: ready to put my programs into the links.
    Swap = 4,
    /// old → new: go ahead.
    SwapOk = 5,
    /// new → old: my programs are in; stop accepting.
    Commit = 6,
    /// old → new: stopped; my counters ([`Committed`]).
    Committed = 7,
    /// old → new, while draining: my counters ([`StatsUpdate`]).
    Stats = 8,
    /// old → new: my last counters ([`StatsUpdate`]); I am done.
    Final = 9,
    /// new → old: I give up ([`Refuse`] body: the reason).
    Abort = 10,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        [Hello, Offer, Refuse, Swap, SwapOk, Commit, Committed, Stats, Final, Abort].into_iter().find(|k| *k as u8 == v)
    }
}

/// new → old, first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the new weir speaks.
    pub protocol: u32,
    /// Its release.
    pub version: String,
    /// The layout of the eBPF maps it shares with the old weir
    /// (`weir_ebpf_common::shared_maps_abi`).
    pub shared_maps_abi: Vec<u32>,
    /// Its `[proxy] listen`.
    pub listen: SocketAddr,
    /// Its `[steering] pin_dir`.
    pub pin_dir: PathBuf,
    /// Its `[steering] fail_after_ms`.
    #[serde(default)]
    pub fail_after_ms: u64,
}

/// old → new: what is handed over. File descriptors, in this order: one per entry of
/// `listeners`, the admin socket if `admin` is set, the hand-off socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    /// The protocol version both will speak.
    pub protocol: u32,
    /// The old weir's release.
    pub version: String,
    /// The address of each listening socket handed over.
    pub listeners: Vec<SocketAddr>,
    /// The admin socket's address, if it is handed over.
    pub admin: Option<SocketAddr>,
    /// The old weir's kernel service table; `None` when it does not steer.
    pub steering: Option<Vec<ServiceEntry>>,
}

/// A refusal, or the reason for giving up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refuse {
    /// Why, for the log of the other side.
    pub reason: String,
}

/// old → new, after `Commit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Committed {
    /// The old weir's counters when it stopped accepting.
    pub totals: Totals,
    /// Milliseconds until it sends its last counters at the latest: when its drain ends (or,
    /// if later, when the weir it took over itself is done).
    pub drain_ms: u64,
}

/// old → new, while draining and at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsUpdate {
    /// The old weir's counters (its own and those it inherited), whole.
    pub totals: Totals,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

fn parse<T: for<'de> Deserialize<'de>>(kind: Kind, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed {kind:?} message: {e}"))
}

/// What a weir inherited: the counters of the weir it took over (and of the ones before it),
/// added to its own in `/metrics`. A service's inherited counters last as long as the service:
/// once a complete service table (the file's, and the discovered ones once synced) no longer
/// has it, they are dropped ([`Inherited::retain`]), as a removed service's own stats slot is.
#[derive(Debug, Default)]
pub struct Inherited {
    /// As received (less the services since removed).
    pub totals: Totals,
    /// The stats part as last built, for the caller table of that generation.
    stats: parking_lot::Mutex<Option<(u64, Arc<Published>)>>,
}

impl Inherited {
    /// From received totals.
    pub fn new(totals: Totals) -> Inherited {
        Inherited { totals, stats: parking_lot::Mutex::new(None) }
    }

    /// The stats part, ready to merge with the workers' shards: each caller's share under
    /// the slot `callers` gives its name. A name `callers` does not have yet (the identity
    /// thread gives the old weir's names soon after they arrive: [`Control::inherit`]) is left out
    /// until it has; one it will not give (fewer `max_sources` here) stays out.
    pub fn stats(&self, callers: &CallerTable) -> Arc<Published> {
        let mut cached = self.stats.lock();
        match &*cached {
            Some((generation, stats)) if *generation == callers.generation => stats.clone(),
            _ => {
                let stats = Arc::new(self.totals.to_published(callers));
                *cached = Some((callers.generation, stats.clone()));
                stats
            }
        }
    }

    /// `self` with only the services `keep` accepts (each with its callers' shares); `None`
    /// when that is all of them. The stats part is built again, lazily, from what is kept.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Option<Inherited> {
        if self.totals.services.iter().all(|s| keep(&s.name)) {
            return None;
        }
        let mut totals = self.totals.clone();
        totals.services.retain(|s| keep(&s.name));
        Some(Inherited::new(totals))
    }
}

#[cfg(test)]
mod inherited_tests {
    use super::*;
    use crate::takeover::totals::{ServiceTotals, SourceTotals};

    #[test]
    fn counters_of_removed_services_are_dropped_with_their_callers_and_the_rest_kept() {
        let source = |source: &str, n: u64| SourceTotals {
            source: source.into(),
            codes: vec![(200, n)],
            duration_sum_ns: "0".into(),
            ..SourceTotals::default()
        };
        let service = |name: &str, n: u64| ServiceTotals {
            name: name.into(),
            codes: vec![(200, n)],
            duration_sum_ns: "0".into(),
            sources: vec![source("direct", n - 1), source("shop/web", 1)],
            ..ServiceTotals::default()
        };
        let totals = Totals {
            format: totals::FORMAT,
            services: vec![service("kept.shop:http", 5), service("gone.shop:http", 7)],
            source_names: vec!["shop/web".into()],
            unrouted: 3,
            reloads_ok: 2,
            ..Totals::default()
        };
        let mut callers = CallerTable { generation: 1, ..CallerTable::default() };
        callers.sources.push(Arc::from("shop/web"));
        let inherited = Inherited::new(totals);
        assert_eq!(inherited.stats(&callers).services.len(), 2);
        assert!(inherited.retain(|_| true).is_none(), "nothing to drop: nothing rebuilt");
        let kept = inherited.retain(|name| name != "gone.shop:http").expect("one dropped");
        let stats = kept.stats(&callers);
        let names: Vec<&str> = stats.services.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["kept.shop:http"]);
        assert_eq!(kept.totals.services.len(), 1);
        let s = &stats.services[0].1;
        assert_eq!(s.code(200), 5);
        let by_source: Vec<_> = s.sources().map(|(slot, st)| (slot, st.requests())).collect();
        assert_eq!(by_source, [(weir_core::stats::SOURCE_DIRECT, 4), (2, 1)], "a kept service keeps its callers");
        // Counters that are not per service, and the callers' names, stay whole.
        assert_eq!((stats.counters.unrouted, kept.totals.reloads_ok), (3, 2));
        assert_eq!(kept.totals.source_names, ["shop/web"]);
    }
}

/// Every counter of this weir, its own and inherited, as it would hand them over now.
pub fn current_totals(control: &Control) -> Totals {
    use std::sync::atomic::Ordering::Relaxed;
    let inherited = control.inherited.load();
    let callers = control.shared.callers.table.load();
    let mut t = Totals::from_merged(&crate::metrics::merged(control), &callers);
    let (shipped, dropped) = control.access_log_counts();
    t.access_log_shipped = shipped;
    t.access_log_dropped = dropped;
    t.reloads_ok = control.reloads_ok.load(Relaxed) + inherited.totals.reloads_ok;
    t.reloads_failed = control.reloads_failed.load(Relaxed) + inherited.totals.reloads_failed;
    t.takeovers_ok = control.takeovers_ok.load(Relaxed) + inherited.totals.takeovers_ok;
    t.takeovers_failed = control.takeovers_failed.load(Relaxed) + inherited.totals.takeovers_failed;
    t
}

/// Where this weir stands with respect to takeovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving; a takeover may start.
    Idle,
    /// A takeover by this pid got the offer and is preparing.
    Offered { pid: u32 },
    /// A takeover by this pid may be putting its programs into the links.
    Swapping { pid: u32 },
    /// Taken over by this pid: draining.
    HandedOver { pid: u32 },
    /// Shutting down on a signal: no takeover any more.
    Closing,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// When a handed-over weir's drain ends at the latest.
    drain_deadline: Option<Instant>,
    /// The drain is over: send the last counters.
    final_requested: bool,
    /// The last counters are sent (or cannot be).
    final_sent: bool,
    /// The weir this one took over still sends counters, until this instant at the latest.
    predecessor_until: Option<Instant>,
}

/// The takeover state of a running weir, shared by the hand-off threads and the lifecycle.
#[derive(Debug)]
pub struct Handoff {
    state: Mutex<State>,
    changed: Condvar,
}

impl Default for Handoff {
    fn default() -> Handoff {
        Handoff {
            state: Mutex::new(State {
                phase: Phase::Idle,
                drain_deadline: None,
                final_requested: false,
                final_sent: false,
                predecessor_until: None,
            }),
            changed: Condvar::new(),
        }
    }
}

/// How a shutdown goes on, given the takeover state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Detach and drain as usual.
    Normal,
    /// Taken over by this pid: finish the drain, hand over the last counters, detach nothing.
    HandedOver { pid: u32, deadline: Instant },
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// A takeover by `pid` asks: starts it, or says why not.
    fn begin(&self, pid: u32) -> Result<(), String> {
        let mut s = self.lock();
        match s.phase {
            Phase::Idle => {
                s.phase = Phase::Offered { pid };
                Ok(())
            }
            Phase::Offered { pid: other } | Phase::Swapping { pid: other } => {
                Err(format!("another takeover ({}) is in progress", Who(other)))
            }
            Phase::HandedOver { pid: other } => Err(format!("this weir has already handed over to {}", Who(other))),
            Phase::Closing => Err("this weir is shutting down".into()),
        }
    }

    fn swapping(&self, pid: u32) -> Result<(), String> {
        let mut s = self.lock();
        match s.phase {
            Phase::Offered { pid: p } if p == pid => {
                s.phase = Phase::Swapping { pid };
                Ok(())
            }
            Phase::Closing => Err("this weir is shutting down".into()),
            other => Err(format!("unexpected swap in phase {other:?}")),
        }
    }

    fn failed(&self) {
        self.set(|s| {
            if matches!(s.phase, Phase::Offered { .. } | Phase::Swapping { .. }) {
                s.phase = Phase::Idle;
            }
        });
    }

    fn handed_over(&self, pid: u32, deadline: Instant) {
        self.set(|s| {
            s.phase = Phase::HandedOver { pid };
            s.drain_deadline = Some(deadline);
        });
    }

    /// A shutdown begins: no takeover may start from now on. A takeover in progress is let
    /// finish (waiting at most `wait` for it to commit or fail): a supervisor that stops the
    /// old weir while a new one takes over (Kubernetes deleting the old pod once the new one
    /// looks ready) wants the hand-over, not a detach under the new weir's feet.
    pub fn close(&self, wait: Duration) -> Shutdown {
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        while matches!(s.phase, Phase::Offered { .. } | Phase::Swapping { .. }) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        match s.phase {
            Phase::HandedOver { pid } => {
                Shutdown::HandedOver { pid, deadline: s.drain_deadline.unwrap_or_else(Instant::now) }
            }
            _ => {
                s.phase = Phase::Closing;
                Shutdown::Normal
            }
        }
    }

    /// The handed-over drain is over: the hand-off thread sends the last counters. Waits (at
    /// most `wait`, plus as long as this weir's own predecessor may still send counters) until
    /// they are sent.
    pub fn finish(&self, wait: Duration) {
        self.set(|s| s.final_requested = true);
        let mut s = self.lock();
        let deadline = s.predecessor_until.map_or(Instant::now(), |p| p.max(Instant::now())) + wait;
        while !s.final_sent {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits up to `every` for the end of the drain; true once it is over.
    fn final_requested(&self, every: Duration) -> bool {
        let s = self.lock();
        if s.final_requested {
            return true;
        }
        self.changed.wait_timeout(s, every).unwrap_or_else(|e| e.into_inner()).0.final_requested
    }

    fn final_sent(&self) {
        self.set(|s| s.final_sent = true);
    }

    /// The weir this one took over sends counters until `until` at the latest.
    fn predecessor_following(&self, until: Instant) {
        self.set(|s| s.predecessor_until = Some(until));
    }

    /// Until when the weir this one took over may still send counters, if it still does.
    fn predecessor_until(&self) -> Option<Instant> {
        self.lock().predecessor_until
    }

    fn predecessor_done(&self) {
        self.set(|s| s.predecessor_until = None);
    }

    /// Waits until the weir this one took over has sent its last counters (or its deadline
    /// passed), so that the counters this weir hands on include them.
    fn wait_predecessor(&self) {
        let mut s = self.lock();
        while let Some(until) = s.predecessor_until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Test hook: with `WEIR_TAKEOVER_TEST_STOP_AT=<step>` in its environment, a weir taking over
/// stops itself (SIGSTOP) when it reaches `step` (`offer-received`, `ready-to-swap`,
/// `links-swapped`), so that a test can kill it exactly there.
fn test_stop_at(step: &str) {
    if std::env::var("WEIR_TAKEOVER_TEST_STOP_AT").is_ok_and(|s| s == step) {
        tracing::warn!("stopping at takeover step {step} (WEIR_TAKEOVER_TEST_STOP_AT)");
        // SAFETY: raise(2) has no preconditions.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}
