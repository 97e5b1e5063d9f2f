//! What discovery counts, for `/metrics` and `/ready`: atomics the discovery thread writes and
//! the admin thread reads. Must not: hold a lock the discovery thread keeps across a publish.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;

/// The kinds of object watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// core/v1 Service.
    Service = 0,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice = 1,
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute = 2,
}

impl Kind {
    /// Both kinds.
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::HttpRoute];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::HttpRoute => "httproute",
        }
    }
}

/// What became of one watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An object added or changed (listed or watched).
    Applied = 0,
    /// An object deleted.
    Deleted = 1,
    /// An object weir does not serve (headless, ExternalName, excluded, no TCP port…).
    Ignored = 2,
    /// The watch failed (connection, 5xx, 429, 410 Gone): retried with back-off.
    Error = 3,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 4] = [Outcome::Applied, Outcome::Deleted, Outcome::Ignored, Outcome::Error];

    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Deleted => "deleted",
            Outcome::Ignored => "ignored",
            Outcome::Error => "error",
        }
    }
}

/// Discovery's counters and state.
#[derive(Debug, Default)]
pub struct Stats {
    events: [[AtomicU64; 4]; 3],
    relists: [AtomicU64; 3],
    /// Both watches have listed once and the discovered services are published.
    pub synced: AtomicBool,
    /// Unix time (s) discovery last matched the API (a list completed, or a batch published).
    pub last_sync_unix: AtomicU64,
    /// Weir services discovered (one per Service port).
    pub services: AtomicU64,
    /// Endpoints in the EndpointSlices known.
    pub endpoints: AtomicU64,
    /// `weir.dev/` annotations not applied.
    pub annotation_errors: AtomicU64,
    /// File services left out because they clash with discovered ones.
    pub conflicts: AtomicU64,
    /// The last watch error, until the next successful list or event.
    pub last_error: Mutex<Option<String>>,
    /// Whether this cluster serves HTTPRoutes: [`HttpRoutes`] as a `u8`.
    pub httproutes: AtomicU8,
    /// HTTPRoute problems found (fields ignored, rules skipped, versions not applied).
    pub route_problems_total: AtomicU64,
    /// The problems of the HTTPRoutes in effect, located.
    pub route_problems: Mutex<Vec<String>>,
}

/// Whether HTTPRoutes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRoutes {
    /// Not listed yet.
    Unknown = 0,
    /// Listed and watched.
    Served = 1,
    /// The API answers 404 for the resource: the Gateway API CRD is not installed. Retried
    /// with back-off.
    NotInstalled = 2,
    /// Listing fails otherwise (403: the ClusterRole lacks them; 5xx): retried with back-off.
    Failing = 3,
}

impl HttpRoutes {
    /// From [`Stats::httproutes`].
    pub fn from_u8(v: u8) -> HttpRoutes {
        match v {
            1 => HttpRoutes::Served,
            2 => HttpRoutes::NotInstalled,
            3 => HttpRoutes::Failing,
            _ => HttpRoutes::Unknown,
        }
    }

    /// For `/config`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpRoutes::Unknown => "not listed yet",
            HttpRoutes::Served => "served",
            HttpRoutes::NotInstalled => "not served by this cluster (the Gateway API HTTPRoute CRD is not installed)",
            HttpRoutes::Failing => "not listed: the API refuses or fails (see last_error); retrying",
        }
    }
}

impl Stats {
    /// Whether HTTPRoutes are read.
    pub fn httproutes(&self) -> HttpRoutes {
        HttpRoutes::from_u8(self.httproutes.load(Ordering::Relaxed))
    }

    /// Counts one event.
    pub fn event(&self, kind: Kind, outcome: Outcome) {
        self.events[kind as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Events of `kind` with `outcome` so far.
    pub fn events(&self, kind: Kind, outcome: Outcome) -> u64 {
        self.events[kind as usize][outcome as usize].load(Ordering::Relaxed)
    }

    /// Counts a relist (a list after the first: the watch fell too far behind, 410 Gone).
    pub fn relist(&self, kind: Kind) {
        self.relists[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Relists of `kind` so far.
    pub fn relists(&self, kind: Kind) -> u64 {
        self.relists[kind as usize].load(Ordering::Relaxed)
    }
}
