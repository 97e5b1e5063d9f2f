//! Compact records of the API objects weir needs, made from each object as it arrives
//! (`convert`), so that no whole Service or EndpointSlice is ever kept: a Service becomes its
//! cluster IPs, TCP ports and policy; an EndpointSlice its TCP ports and, per endpoint, one
//! address and four flags. Must not: hold anything weir does not route on.

use std::net::IpAddr;
use std::sync::Arc;

use weir_core::config::{Protocol, ServiceConfig};

/// `namespace/name` of a Service (or of an EndpointSlice).
pub type ObjectKey = Arc<str>;

/// The key of an object in `namespace`.
pub fn key(namespace: &str, name: &str) -> ObjectKey {
    Arc::from(format!("{namespace}/{name}"))
}

/// What weir keeps of one Service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    /// `metadata.namespace`.
    pub namespace: Box<str>,
    /// `metadata.name`.
    pub name: Box<str>,
    /// Why the Service is not served (headless, ExternalName, …); `None` when it is.
    pub skip: Option<Skip>,
    /// `spec.clusterIPs` (dual stack: one per family), primary first.
    pub cluster_ips: Vec<IpAddr>,
    /// TCP ports; other protocols are dropped at conversion.
    pub ports: Vec<PortRecord>,
    /// `internalTrafficPolicy: Local`: only endpoints on this node.
    pub local_only: bool,
    /// Policy from `weir.dev/` annotations over the defaults; `None`: the defaults.
    pub policy: Option<Arc<ServiceConfig>>,
}

/// Why a Service is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `clusterIP: None`.
    Headless,
    /// `type: ExternalName` (a DNS alias, nothing to balance).
    ExternalName,
    /// Labelled `service.kubernetes.io/service-proxy-name`: another proxy serves it.
    OtherProxy,
    /// `default/kubernetes`: the API server itself, which weir dials for its own watches.
    ApiServer,
    /// In a namespace of `[kubernetes] exclude_namespaces`.
    ExcludedNamespace,
    /// No TCP port.
    NoTcpPort,
}

/// One TCP port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRecord {
    /// `name` (empty for a Service's single unnamed port); EndpointSlice ports match by it.
    pub name: Box<str>,
    /// `port`: what clients dial on the cluster IP.
    pub port: u16,
    /// From `appProtocol`, else the name's prefix, else `[kubernetes] default_protocol`.
    pub protocol: Protocol,
}

/// What weir keeps of one EndpointSlice.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceRecord {
    /// The Service it belongs to (`kubernetes.io/service-name`, same namespace).
    pub service: ObjectKey,
    /// TCP ports: name and port number on the endpoints.
    pub ports: Vec<(Box<str>, u16)>,
    /// Its endpoints (the first address of each).
    pub endpoints: Vec<EndpointRecord>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The endpoint's first address (the API says all of an endpoint's addresses are fungible).
    pub addr: IpAddr,
    /// `conditions.ready` (missing: true).
    pub ready: bool,
    /// `conditions.serving` (missing: same as ready).
    pub serving: bool,
    /// `conditions.terminating` (missing: false).
    pub terminating: bool,
    /// `nodeName` is this node.
    pub local: bool,
    /// `hints.forZones` names; `None` without hints.
    pub zones: Option<Box<[Box<str>]>>,
}
