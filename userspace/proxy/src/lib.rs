//! weir's per-core data path: worker threads with their own io_uring runtime, listener,
//! balancers, pools and stats; HTTP/1.1 and TCP forwarding with retries, timeouts and outlier
//! detection. Knows nothing of eBPF: steering reaches it only through [`OriginalDst`].
//!
//! Modules depend on each other one way only (docs/ARCHITECTURE.md draws the graph; a test
//! fails if a cycle comes back): `worker` → `conn`/`tcp` → `exchange` → `attempt` →
//! `body`/`respond`/`pool`/`http`/`io`, with `ctx` → `state` → `snapshot` beside them.

mod attempt;
mod body;
mod bridge;
pub mod caller;
mod conn;
mod ctx;
mod exchange;
mod h1_to_h2;
mod h2down;
mod h2guard;
mod h2up;
mod health;
pub mod http;
pub mod io;
mod plan;
mod policy;
mod pool;
mod record;
mod recycle;
mod respond;
mod retry_loop;
mod shared;
mod snapshot;
mod state;
mod tcp;
mod telemetry;
pub mod trace;
mod tunnel;
mod worker;

pub use health::{CheckCounts, HealthChecker};
pub use shared::{OriginalDst, Shared, Steered};
pub use snapshot::{Service, Snapshot};
pub use telemetry::{LogSource, SpanSource, TelemetryHub, WorkerTelemetry, telemetry};
pub use worker::{StartOptions, ThreadHook, Workers};
