//! The config model: TOML text in, a validated [`Config`] out, or errors that name file, line,
//! column, field and value. Owns the defaults (the `Raw*` structs, documented in
//! docs/OPERATING.md) and every rule a config must pass. Must not: do I/O (the binary reads the
//! file and passes its text to [`Config::parse`]), or touch anything a running snapshot owns (a
//! config that fails here never replaces a good one).
//!
//! Parsing is two steps: serde fills the raw structs (unknown fields, wrong types and missing
//! fields are reported by `toml` with their position), then [`validate`] checks meaning
//! (addresses, ranges, duplicates). Meaning errors are located afterwards by walking the
//! spanned document (`toml::de::DeTable`) along the field's path, so the structs stay plain.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod policy;
mod raw;
pub use policy::{
    BackendConfig, DEFAULT_HEALTH_PATH, FaultConfig, HeaderEdits, HealthCheckConfig, MANAGED_FIELDS, RateLimitConfig,
    RateLimitPer, RouteConfig, RouteRetry, RouteTimeouts,
};
pub mod selector;
pub use raw::RawConfig;

/// One thing wrong with a config, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the field, e.g. `service[1].vip` (empty for syntax errors).
    pub field: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Everything wrong with one config file. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read (or `<inline>`).
    pub file: PathBuf,
    /// The problems, in file order.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if issue.line > 0 {
                write!(f, ":{}:{}", issue.line, issue.column)?;
            }
            if issue.field.is_empty() {
                write!(f, ": {}", issue.message)?;
            } else {
                write!(f, ": field `{}`: {}", issue.field, issue.message)?;
            }
        }
        Ok(())
    }
}

/// Application protocol of a service: what weir speaks to its endpoints. Clients may speak
/// HTTP/1.1 or HTTP/2 (h2c) to any HTTP service; weir translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 to the endpoints, balanced per request, retried.
    #[default]
    Http,
    /// HTTP/2 with prior knowledge (h2c) to the endpoints, over pooled multiplexed
    /// connections, balanced per request (stream).
    Http2,
    /// gRPC: HTTP/2 to the endpoints with gRPC's semantics (trailers, `grpc-status` retries,
    /// `grpc-timeout`, weir's own failures as `grpc-status` trailers-only responses).
    Grpc,
    /// Plain TCP, balanced per connection, relayed byte for byte.
    Tcp,
}

impl Protocol {
    /// Requests are parsed and balanced one by one (every protocol but TCP).
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// The endpoints speak HTTP/2.
    pub fn upstream_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

pub use crate::balance::LbPolicy;

/// Where access-log records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "target")]
pub enum LogSink {
    /// Access logging disabled.
    Off,
    /// Standard output.
    Stdout,
    /// A file, reopened on SIGUSR1.
    File(PathBuf),
    /// NDJSON over TCP (e.g. a Vector `socket` source).
    Tcp(String),
    /// NDJSON over a unix stream socket.
    Unix(PathBuf),
}

impl LogSink {
    fn parse(s: &str) -> Result<LogSink, String> {
        let hint = "expected \"off\", \"stdout\", \"file:/path\", \"tcp:HOST:PORT\" or \"unix:/path\"";
        match s {
            "off" => Ok(LogSink::Off),
            "stdout" => Ok(LogSink::Stdout),
            _ => match s.split_once(':') {
                Some(("file", p)) if p.starts_with('/') => Ok(LogSink::File(p.into())),
                Some(("unix", p)) if p.starts_with('/') => Ok(LogSink::Unix(p.into())),
                Some(("tcp", a))
                    if a.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0)) =>
                {
                    Ok(LogSink::Tcp(a.to_string()))
                }
                _ => Err(format!("{s:?} is not a log sink: {hint}")),
            },
        }
    }
}

/// The validated config: what a snapshot is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Data-path listener and limits.
    pub proxy: ProxyConfig,
    /// Admin server.
    pub admin: AdminConfig,
    /// eBPF steering.
    pub steering: SteeringConfig,
    /// Access-log shipping.
    pub access_log: AccessLogConfig,
    /// Service discovery from the Kubernetes API.
    pub kubernetes: KubernetesConfig,
    /// Distributed tracing (W3C trace context, OTLP/HTTP export).
    pub tracing: TracingConfig,
    /// Metric label bounds.
    pub metrics: MetricsConfig,
    /// Services, in file order (then the discovered ones, by name). Shared, so that a new
    /// config can keep the unchanged services of the previous one as they are.
    pub services: Vec<Arc<ServiceConfig>>,
}

/// `[kubernetes]`: Services and EndpointSlices from the Kubernetes API become services beside
/// the file's own. Read once at start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubernetesConfig {
    /// Watch the API. Default false.
    pub enabled: bool,
    /// A kubeconfig file; unset: the in-cluster service account, then `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (for `internalTrafficPolicy: Local` and topology hints); unset: the
    /// `NODE_NAME` environment variable (the downward API).
    pub node_name: Option<String>,
    /// Label selector for Services (the API's syntax); empty: every Service.
    pub service_selector: String,
    /// Namespaces whose Services are never served. Default `["kube-system"]`.
    pub exclude_namespaces: Vec<String>,
    /// Protocol of a port that neither `appProtocol` nor its name decides. Default tcp.
    pub default_protocol: Protocol,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyConfig {
    /// Address every worker listens on (SO_REUSEPORT). Default `127.0.0.1:15001`.
    pub listen: SocketAddr,
    /// Worker threads; 0 = one per CPU. Default 0.
    pub workers: usize,
    /// Downstream connections across all workers before new ones are refused. Unset: derived
    /// at start from the descriptor limit (10 000, or fewer when the limit cannot hold them).
    pub max_connections: Option<u32>,
    /// Longest a SIGTERM drain waits for in-flight requests. Default 20 s.
    pub drain_timeout: Duration,
    /// A client must send a whole request head within this, else 408. Default 10 s.
    pub header_read_timeout: Duration,
    /// Idle keep-alive HTTP client connections are closed after this. Default 300 s.
    pub downstream_idle_timeout: Duration,
    /// Idle TCP-service connections are closed after this. Default 3600 s.
    pub tcp_idle_timeout: Duration,
    /// A write to a client that makes no progress for this long (the client stopped reading)
    /// closes the client connection and the upstream one behind it. Default 60 s.
    pub downstream_write_timeout: Duration,
    /// Largest request head, else 431. Default 60 KiB. Also the largest HTTP/2 header list a
    /// client may send.
    pub max_request_head_bytes: usize,
    /// HTTP/2 streams a client connection may have open at once. Default 100.
    pub http2_max_concurrent_streams: u32,
    /// Most request headers, else 431. Default 100.
    pub max_headers: usize,
    /// Longest request target, else 414. Default 8 KiB.
    pub max_uri_bytes: usize,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    /// Admin HTTP listener (/metrics, /ready, /config, /endpoints). Default `127.0.0.1:15000`.
    pub listen: SocketAddr,
    /// Must be true to bind a non-loopback admin address. Default false.
    pub allow_non_loopback: bool,
}

/// What connects to a VIP do while weir is down (crashed, restarting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Untouched: they go to the VIP itself (kube-proxy's path for a ClusterIP; ECONNREFUSED
    /// for a VIP nothing else serves).
    #[default]
    Open,
    /// Refused at once (ECONNREFUSED).
    Closed,
    /// Straight to the service's first endpoint, bypassing weir.
    Endpoint,
}

/// `[steering]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SteeringConfig {
    /// Load and attach the eBPF programs. Default true; false runs the proxy alone.
    pub enabled: bool,
    /// cgroup v2 directories whose workloads are steered.
    pub cgroups: Vec<PathBuf>,
    /// SO_MARK on weir's own upstream sockets, which steering never touches. Default 0x5745.
    pub own_mark: u32,
    /// What connects to a VIP do while weir is down. Default open.
    pub fail_mode: FailMode,
    /// weir counts as down when its workers' heartbeat is older than this. Default 2 s.
    pub fail_after: Duration,
    /// bpffs directory where links and maps are pinned (so steering survives a crash and a
    /// restart takes the links over atomically). Default `/sys/fs/bpf/weir`.
    pub pin_dir: PathBuf,
    /// Send each new connection to the worker pinned to the CPU that received it
    /// (sk_reuseport). Default true.
    pub cpu_affinity: bool,
    /// Move the bytes of steered connections between the workload's socket and weir's
    /// straight from one socket to the other (sockops + sk_msg), skipping TCP/IP on that local
    /// leg. Default true; off, with the kernel's reason logged, where the kernel refuses it.
    pub socket_redirect: bool,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogConfig {
    /// Where records go. Default stdout.
    pub sink: LogSink,
    /// Capacity of each worker's record ring. Unset (the default): weir sizes the rings from
    /// its memory limit at start, at most [`DEFAULT_RING_RECORDS`] each.
    pub ring_records: Option<usize>,
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingConfig {
    /// Percentage (0..=100) of requests that arrive without a trace context for which weir
    /// starts a sampled trace. Default 0: weir only takes part in traces its callers started.
    pub sample_percent: f64,
    /// Base URL of the OTLP/HTTP collector (`http://HOST:PORT`, spans are POSTed to
    /// `/v1/traces` under it). Unset (the default): tracing is off and trace headers pass
    /// through untouched.
    pub otlp_endpoint: Option<String>,
}

impl TracingConfig {
    /// Whether weir makes spans (an OTLP endpoint is configured).
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// Where spans go: host (name or IP), port and request path, from a validated endpoint.
    pub fn traces_target(&self) -> Option<OtlpTarget> {
        self.otlp_endpoint.as_deref().and_then(|e| OtlpTarget::parse(e).ok())
    }
}

/// A parsed `[tracing] otlp_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (4318 when the URL names none).
    pub port: u16,
    /// Request path: the URL's path with `/v1/traces` appended, unless it already ends so.
    pub path: String,
}

impl OtlpTarget {
    /// Parses `http://HOST[:PORT][/PATH]`.
    pub fn parse(url: &str) -> Result<OtlpTarget, String> {
        let hint = "expected \"http://HOST:PORT\" (OTLP over HTTP/protobuf, e.g. \"http://127.0.0.1:4318\")";
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(format!(
                    "{url:?}: https is not supported; send to a collector on the node or in the cluster over http ({hint})"
                ));
            }
            _ => return Err(format!("{url:?} is not an http URL: {hint}")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed `[` in the host: {hint}"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['@', ' ', '?', '#']) {
            return Err(format!("{url:?} has no valid host: {hint}"));
        }
        let port = match port {
            None => 4318,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?}: {p:?} is not a port: {hint}"))?,
        };
        if path.contains(['?', '#', ' ']) {
            return Err(format!("{url:?}: a query or fragment is not allowed: {hint}"));
        }
        let path = if path.ends_with("/v1/traces") { path.to_string() } else { format!("{path}/v1/traces") };
        Ok(OtlpTarget { host: host.to_string(), port, path })
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsConfig {
    /// Callers that get their own `source` label value (the busiest first, kept for the life
    /// of the process); the rest are `other`. Default 50; 1..=1000.
    pub max_sources: usize,
}

/// Capacity of each worker's access-log ring when `ring_records` is unset and no memory limit
/// makes it smaller.
pub const DEFAULT_RING_RECORDS: usize = 65_536;

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    /// Unique name; also the `service` metric label.
    pub name: String,
    /// The virtual address workloads dial.
    pub vip: SocketAddr,
    /// Optional dedicated local listener for this service (host-daemon style: an application
    /// dials `127.0.0.1:PORT` instead of being steered). Connections to it need no Host header
    /// and work for TCP services without eBPF. Fixed for the life of the process.
    pub listen: Option<SocketAddr>,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// Where requests go (a service without backends).
    pub endpoints: Vec<EndpointConfig>,
    /// Named endpoint groups, each balanced on its own; routes split requests between them.
    /// Empty: the service's `endpoints` are its one group.
    #[serde(rename = "backend")]
    pub backends: Vec<BackendConfig>,
    /// Routes, in order: the first that matches a request decides its backend. Empty: every
    /// request goes to the service's one group.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Local rate limit. Default: none.
    pub rate_limit: Option<RateLimitConfig>,
    /// Active health checks. Default: none (passive outlier detection only).
    pub health_check: Option<HealthCheckConfig>,
    /// Balancing policy.
    pub lb: LbPolicy,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// Retries and their budget.
    pub retry: RetryConfig,
    /// Outlier detection.
    pub outlier: OutlierConfig,
    /// Overload protection.
    pub limits: LimitsConfig,
    /// Forwarding headers added to requests with the caller's address. Default none.
    pub forwarded_headers: ForwardedHeaders,
    /// The socket-level redirect for this service's legs (`[steering] socket_redirect` must be
    /// on too). Default true; false keeps both legs on TCP, for workloads or endpoints that read
    /// their sockets with `splice(2)`, which does not see redirected bytes.
    pub socket_redirect: bool,
    /// Further VIPs and `Host` names of a discovered service (a dual-stack Service's second
    /// cluster IP, `NAME.NAMESPACE.svc`…). Never written in a file; empty for file services.
    #[serde(skip_serializing_if = "ServiceAliases::is_empty")]
    pub aliases: ServiceAliases,
}

/// More addresses and `Host` names routed to one service, besides its `vip` and `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceAliases {
    /// Further virtual addresses (steered like `vip`).
    pub vips: Vec<SocketAddr>,
    /// Further `Host` header values (lowercase; a form with a port names it).
    pub hosts: Vec<String>,
}

impl ServiceAliases {
    /// No alias at all.
    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.hosts.is_empty()
    }
}

/// Which forwarding headers weir adds to requests it forwards (`forwarded_headers` in a
/// `[[service]]`: any of `"x-forwarded-for"`, `"x-forwarded-proto"`, `"forwarded"`; serialised
/// in that same list form).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardedHeaders {
    /// Append the caller's IP to `X-Forwarded-For` (or add it).
    pub x_forwarded_for: bool,
    /// Add `X-Forwarded-Proto: http` unless the request already has one.
    pub x_forwarded_proto: bool,
    /// Append `for=CALLER;proto=http` to `Forwarded` (RFC 7239), or add it.
    pub forwarded: bool,
}

impl Serialize for ForwardedHeaders {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names = [
            (self.x_forwarded_for, "x-forwarded-for"),
            (self.x_forwarded_proto, "x-forwarded-proto"),
            (self.forwarded, "forwarded"),
        ];
        s.collect_seq(names.iter().filter(|(on, _)| *on).map(|(_, n)| n))
    }
}

impl ForwardedHeaders {
    /// Whether any header is added.
    pub fn any(&self) -> bool {
        self.x_forwarded_for || self.x_forwarded_proto || self.forwarded
    }
}

/// One endpoint of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EndpointConfig {
    /// Address.
    pub addr: SocketAddr,
    /// Relative weight, 1..=1000. Default 1.
    pub weight: u32,
}

/// `[service.timeouts]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeoutConfig {
    /// TCP connect to an endpoint. Default 1 s.
    pub connect: Duration,
    /// Whole request, all attempts, until response headers. Default 15 s.
    pub request: Duration,
    /// One attempt; unset = only the request timeout. Default unset.
    pub attempt: Option<Duration>,
    /// Pooled idle upstream connections are closed after this. Default 3 s.
    pub upstream_idle: Duration,
}

/// `[service.retry]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryConfig {
    /// Total attempts including the first. Default 3.
    pub attempts: u32,
    /// Full-jitter back-off base. Default 25 ms.
    pub backoff_base: Duration,
    /// Back-off cap. Default 250 ms.
    pub backoff_max: Duration,
    /// Request bodies up to this size are kept for replay. Default 64 KiB.
    pub replay_buffer_bytes: usize,
    /// Retry budget on. Default true.
    pub budget: bool,
    /// Retries may add this fraction to the request rate. Default 0.2.
    pub budget_ratio: f64,
    /// Retries per second always allowed per service. Default 10.
    pub budget_min_per_sec: u32,
    /// Retry a 5xx other than 503 (idempotent methods with a replayable body only). Default
    /// true (App Mesh's `server-error`); false passes a 500 straight through.
    pub on_server_error: bool,
    /// Retry a 429 (replayable body; honours `Retry-After`). Default false.
    pub on_rate_limited: bool,
    /// gRPC services: retry a response whose `grpc-status` (trailers-only, before anything was
    /// relayed) is one of these codes (replayable body). Default `["unavailable"]`.
    pub on_grpc_status: crate::grpc::CodeSet,
}

/// `[service.outlier]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierConfig {
    /// Outlier detection on. Default true.
    pub enabled: bool,
    /// Consecutive gateway failures that eject. Default 5.
    pub consecutive_gateway_failures: u32,
    /// Ejection time × times ejected. Default 30 s.
    pub base_ejection: Duration,
    /// Longest ejection. Default 300 s.
    pub max_ejection: Duration,
    /// Never more than this share of endpoints ejected. Default 50.
    pub max_ejection_percent: u32,
    /// Below this share healthy, balance over all endpoints. Default 50.
    pub panic_threshold_percent: u32,
}

/// `[service.limits]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitsConfig {
    /// Requests in flight for this service (all workers) before 503 + Retry-After. Default 10 000.
    pub max_pending_requests: u32,
    /// Idle pooled connections kept per endpoint per worker. Default 64.
    pub max_idle_per_endpoint: u32,
}

impl ServiceConfig {
    /// The retry policy this service's `[service.retry]` and `[service.timeouts]` describe.
    pub fn retry_policy(&self) -> crate::retry::RetryPolicy {
        let r = &self.retry;
        crate::retry::RetryPolicy {
            attempts: r.attempts,
            retry_on: crate::retry::RetryOn::with(r.on_server_error, r.on_rate_limited, r.on_grpc_status),
            backoff_base: r.backoff_base,
            backoff_max: r.backoff_max,
            per_attempt_timeout: self.timeouts.attempt,
            replay_buffer_bytes: r.replay_buffer_bytes as u64,
            budget: self.budget_policy(),
        }
    }

    /// The retry budget of `[service.retry]`.
    pub fn budget_policy(&self) -> crate::retry::BudgetPolicy {
        let r = &self.retry;
        crate::retry::BudgetPolicy {
            enabled: r.budget,
            ratio: r.budget_ratio,
            min_retries_per_sec: r.budget_min_per_sec,
        }
    }

    /// The outlier-detection policy of `[service.outlier]`; a probe (the one request an
    /// endpoint on probation gets) times out with the request timeout.
    pub fn outlier_policy(&self) -> crate::outlier::OutlierPolicy {
        let o = &self.outlier;
        crate::outlier::OutlierPolicy {
            enabled: o.enabled,
            consecutive_gateway_failures: o.consecutive_gateway_failures,
            base_ejection_ms: o.base_ejection.as_millis() as u64,
            max_ejection_ms: o.max_ejection.as_millis() as u64,
            max_ejection_percent: o.max_ejection_percent,
            panic_threshold_percent: o.panic_threshold_percent,
            probe_timeout_ms: self.timeouts.request.as_millis() as u64,
            jitter_ms: crate::outlier::EJECTION_JITTER_MS,
        }
    }

    /// A service with every field at its default (name empty, VIP unspecified): the one
    /// source of the policy defaults.
    pub fn defaults() -> ServiceConfig {
        raw::default_service()
    }
}

impl Config {
    /// Validates `src`; `file` names it in errors.
    pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(src)
            .map_err(|e| ConfigError { file: file.to_path_buf(), issues: vec![syntax_issue(src, &e)] })?;
        validate(raw).map_err(|problems| ConfigError { file: file.to_path_buf(), issues: locate(src, problems) })
    }

    /// The service with this name (a linear search: for tools and tests; the data path uses
    /// the snapshot's index).
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name).map(|s| &**s)
    }

    /// Makes every service equal to one of `previous`'s (same name, same value) share
    /// `previous`'s value, so that what already runs is recognised as unchanged by pointer
    /// and the duplicate is freed.
    pub fn share_unchanged(&mut self, previous: &Config) {
        let by_name: std::collections::HashMap<&str, &Arc<ServiceConfig>> =
            previous.services.iter().map(|s| (s.name.as_str(), s)).collect();
        for s in &mut self.services {
            if let Some(p) = by_name.get(s.name.as_str())
                && (Arc::ptr_eq(p, s) || ***p == **s)
            {
                *s = Arc::clone(p);
            }
        }
    }
}

impl ServiceConfig {
    /// Every virtual address of the service: `vip`, then its aliases.
    pub fn vips(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.vip).chain(self.aliases.vips.iter().copied())
    }
}

/// A problem found by [`validate`], before it is located in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path from the document root: table keys and array indexes.
    pub path: Vec<PathPart>,
    /// What is wrong.
    pub message: String,
}

/// One step of a [`Problem`] path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    /// A table key.
    Key(&'static str),
    /// An array index.
    Index(usize),
    /// A key the file chose (a backend name in a route's split, a header name).
    Name(String),
}

fn path_string(path: &[PathPart]) -> String {
    let mut s = String::new();
    for part in path {
        match part {
            PathPart::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathPart::Name(k) => {
                s.push('.');
                s.push_str(k);
            }
            PathPart::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

fn syntax_issue(src: &str, e: &toml::de::Error) -> ConfigIssue {
    let (line, column) = e.span().map_or((0, 0), |s| line_col(src, s.start));
    ConfigIssue { field: String::new(), line, column, message: e.message().trim().to_string() }
}

/// Finds each problem's field in the spanned document.
fn locate(src: &str, problems: Vec<Problem>) -> Vec<ConfigIssue> {
    let doc = toml::de::DeTable::parse(src).ok();
    let mut issues: Vec<ConfigIssue> = problems
        .into_iter()
        .map(|p| {
            let span = doc.as_ref().and_then(|d| span_of(d.get_ref(), &p.path));
            let (line, column) = span.map_or((0, 0), |s| line_col(src, s));
            ConfigIssue { field: path_string(&p.path), line, column, message: p.message }
        })
        .collect();
    issues.sort_by_key(|i| (i.line, i.column));
    issues
}

fn span_of(root: &toml::de::DeTable<'_>, path: &[PathPart]) -> Option<usize> {
    use toml::de::DeValue;
    let (first, rest) = path.split_first()?;
    let PathPart::Key(k) = first else { return None };
    let (key, mut value) = root.get_key_value(*k)?;
    let mut best = key.span().start;
    for part in rest {
        let next = match (part, value.get_ref()) {
            (PathPart::Key(k), DeValue::Table(t)) => t.get_key_value(*k).map(|(key, v)| {
                best = key.span().start;
                v
            }),
            (PathPart::Name(k), DeValue::Table(t)) => t.get_key_value(k.as_str()).map(|(key, v)| {
                best = key.span().start;
                v
            }),
            (PathPart::Index(i), DeValue::Array(a)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(v) => {
                value = v;
                if !matches!(v.get_ref(), DeValue::Table(_)) {
                    best = v.span().start;
                }
            }
            None => break,
        }
    }
    Some(best)
}

/// Checks meaning; every problem is reported, not just the first.
pub fn validate(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    raw::validate(raw)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests;
