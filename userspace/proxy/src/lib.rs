//! weir's per-core data path: worker threads with their own io_uring runtime, listener,
//! balancers, pools and stats; HTTP/1.1 and TCP forwarding with retries, timeouts and outlier
//! detection. Knows nothing of eBPF: steering reaches it only through [`OriginalDst`].

mod body;
mod conn;
mod forward;
pub mod http;
pub mod io;
mod local;
mod pool;
mod snapshot;
mod tcp;
mod telemetry;
mod upstream;
mod worker;

pub use snapshot::{ServiceShared, Snapshot, outlier_policy};
pub use telemetry::{LogSource, TelemetryHub, WorkerTelemetry, telemetry};
pub use worker::{OriginalDst, Shared, StartOptions, ThreadHook, Workers};
