//! weir's Kubernetes discovery: Services and EndpointSlices from the API, turned at once into
//! compact records ([`record`], [`convert`]), combined into weir services with the semantics
//! kube-proxy users rely on ([`cluster`]), with the Gateway API HTTPRoutes attached to
//! Services as their routes ([`gateway`], [`routes`]), and composed with the config file's services
//! ([`compose`]). [`run`] is the discovery thread. Must not: know the proxy or eBPF: it hands
//! the binary validated `ServiceConfig`s, and the binary publishes them as it publishes a file.

pub mod annotations;
pub mod client;
pub mod cluster;
pub mod compose;
pub mod convert;
pub mod gateway;
pub mod record;
pub mod routes;
pub mod run;
pub mod stats;

pub use cluster::Cluster;
pub use compose::{Composed, compose};
pub use run::{Discovery, Options, Publish};
pub use stats::Stats;

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable credentials: the kubeconfig named in the config is missing or invalid, or
    /// neither a service account nor `$KUBECONFIG` is there.
    #[error("kubernetes: {0}")]
    Credentials(String),
    /// The client could not be built from the credentials (TLS material, auth plugin).
    #[error("kubernetes: building the API client: {0}")]
    Client(#[source] kube::Error),
    /// The discovery thread or its runtime could not start.
    #[error("kubernetes: starting the discovery thread: {0}")]
    Runtime(#[source] std::io::Error),
}
