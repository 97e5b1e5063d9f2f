//! What crosses threads into the data path: the published snapshot, the steering seam
//! ([`OriginalDst`]), the caller table, the drain flag and a few process-wide gauges. Written by the control
//! thread (and counted by workers with relaxed atomics); read by workers without locks. Must
//! not: hold anything a worker mutates per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

/// A steered connection, as the kernel recorded it when the workload called `connect()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steered {
    /// The service address the workload dialed.
    pub dialed: SocketAddr,
    /// The caller's cgroup v2 id (who dialed).
    pub cgroup_id: u64,
}

/// What the data path asks of the steering layer: which service address did the workload
/// dial, and from which cgroup, for a connection accepted from `peer` on `local`? Implemented
/// by the weir binary over the eBPF original-destination map; `None` when the connection was
/// not steered.
pub trait OriginalDst: Send + Sync + std::fmt::Debug {
    /// Looks the connection up and forgets it (each connection is asked about once).
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<Steered>;

    /// Called by each worker once its listener is bound (e.g. to register it for CPU-affine
    /// accept). `cpu` is the CPU the worker is pinned to, if any.
    fn register_listener(&self, _worker: usize, _cpu: Option<usize>, _fd: std::os::fd::RawFd) {}

    /// Called by every worker four times a second: the worker is alive. Steering treats weir as
    /// down (and applies its fail mode) when no worker has called this for a while.
    fn heartbeat(&self) {}

    /// Called before weir's own (marked) socket `fd` connects to an endpoint (wherever it is:
    /// the kernel pairs only an endpoint on this node); `true` when the steering layer wants
    /// [`OriginalDst::upstream_connected`] called once it is connected (the socket-level
    /// redirect is on, and the socket is named to it).
    fn upstream_connecting(&self, _fd: std::os::fd::RawFd) -> bool {
        false
    }

    /// Called after weir's own (marked) socket `fd` from `local` connected to an endpoint at
    /// `peer`, before anything is sent: the steering layer puts it into the socket-level
    /// redirect when the endpoint's side is there. `false`: undecided yet (the endpoint's side
    /// may be enrolled a moment later); call again, once, with `last`.
    fn upstream_connected(&self, _fd: std::os::fd::RawFd, _local: SocketAddr, _peer: SocketAddr, _last: bool) -> bool {
        true
    }
}

/// State every worker reads; written only outside the workers (start, reloads, drain).
#[derive(Debug)]
pub struct Shared {
    /// The snapshot new requests run on.
    pub snapshot: ArcSwap<Snapshot>,
    /// Original-destination lookups for steered connections.
    pub orig_dst: Option<Arc<dyn OriginalDst>>,
    /// Who the steered callers are (published by the binary's identity thread).
    pub callers: crate::caller::Callers,
    /// Set once by drain: workers stop accepting and close idle connections.
    pub draining: AtomicBool,
    /// Workers whose listener is bound and accepting.
    pub ready_workers: AtomicUsize,
    /// Downstream connections open right now, all workers (gauge; written per accept/close).
    pub downstream_connections: AtomicUsize,
    /// Process start; outlier detection counts milliseconds from here.
    pub epoch: Instant,
}

impl Shared {
    /// Milliseconds since [`Shared::epoch`].
    pub fn now_ms(&self) -> u64 {
        crate::io::now().saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Nanoseconds since [`Shared::epoch`] (rate limits' clock).
    pub fn now_ns(&self) -> u64 {
        crate::io::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }
}
