//! The narrow context a connection task gets from its worker: the worker's own state (behind a
//! `RefCell`, borrowed only between awaits), the cross-thread inputs it reads, and the drain
//! signal. Tasks see this, never the worker (its accept loop, limits and threads). Must not:
//! grow per-request data, or hand out the state borrow across an `.await`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::caller::{CallerCounts, Source};
use crate::io::{CancelToken, ConnectOptions};
use crate::shared::{OriginalDst, Shared};
use crate::state::{Scope, WorkerState};

/// How a new downstream connection is routed (decided once, at accept).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnRoute {
    /// The service address the client dialed (steered VIP or a service's own listener), if any.
    pub dialed: Option<SocketAddr>,
    /// The connection was steered/dialed to an address that no longer names a service.
    pub unknown: bool,
    /// The caller's cgroup id, for a steered connection (`None`: dialled to weir directly).
    pub caller: Option<u64>,
}

impl ConnRoute {
    /// The service of a request on this connection (by the address dialed, else by `host`);
    /// `None` for an unknown service, counted as unrouted. Admission (rate and pending limits)
    /// is `policy::admit`'s.
    pub(crate) fn resolve(&self, state: &mut WorkerState, host: Option<&[u8]>) -> Option<Scope> {
        let index = match (self.unknown, self.dialed) {
            (true, _) => None,
            (false, Some(d)) => state.snapshot().by_vip(d),
            (false, None) => host.and_then(|h| state.snapshot().by_host(h)),
        };
        let scope = index.map(|i| state.scope(i));
        if scope.is_none() {
            state.telemetry.shard.counters.unrouted += 1;
        }
        scope
    }
}

/// What every task of one worker shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The worker's id (for logs and the access log).
    pub worker: usize,
    /// The worker's state. Never borrowed across an `.await`.
    pub state: RefCell<WorkerState>,
    /// Cancelled when drain starts.
    pub drain: CancelToken,
    shared: Arc<Shared>,
}

impl Ctx {
    pub(crate) fn new(worker: usize, state: WorkerState, shared: Arc<Shared>) -> Ctx {
        Ctx { worker, state: RefCell::new(state), drain: CancelToken::new(), shared }
    }

    /// Whether weir is draining.
    pub(crate) fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Milliseconds since process start (outlier detection's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// Nanoseconds since process start (rate limits' clock).
    pub(crate) fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// Moves the worker to the latest published snapshot, if it changed.
    pub(crate) fn refresh(&self) {
        self.state.borrow_mut().update(&self.shared.snapshot);
    }

    /// The steering seam, when weir steers.
    pub(crate) fn orig_dst(&self) -> Option<&Arc<dyn OriginalDst>> {
        self.shared.orig_dst.as_ref()
    }

    /// Who called, for a connection whose caller cgroup is `cgroup` (`None`: not steered);
    /// counts the request in `counts`, this worker's per-caller counters.
    pub(crate) fn source(&self, cgroup: Option<u64>, counts: &CallerCounts) -> Source {
        Source::of(&self.shared.callers, cgroup, counts)
    }

    /// How this worker opens connections to endpoints ([`connect_options`]).
    pub(crate) fn connect_options(&self, service: &weir_core::config::ServiceConfig) -> ConnectOptions {
        connect_options(&self.shared, &self.state.borrow().snapshot().config.steering, service)
    }

    /// How long a write to a client may make no progress.
    pub(crate) fn downstream_write_timeout(&self) -> Duration {
        self.state.borrow().snapshot().config.proxy.downstream_write_timeout
    }
}

/// How weir opens connections to `service`'s endpoints: marked so that steering never
/// redirects them (only when steering is on: setting the mark needs CAP_NET_ADMIN, which weir
/// drops when it has no use for it), and told to the steering layer (the upstream leg's
/// socket-level redirect) unless the service keeps its legs on TCP.
pub(crate) fn connect_options(
    shared: &Shared,
    s: &weir_core::config::SteeringConfig,
    service: &weir_core::config::ServiceConfig,
) -> ConnectOptions {
    let mark = if s.enabled && !s.cgroups.is_empty() { s.own_mark } else { 0 };
    ConnectOptions { mark, steering: shared.orig_dst.clone().filter(|_| service.socket_redirect) }
}
