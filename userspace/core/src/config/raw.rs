//! The config as written (serde structs with weir's defaults, documented in docs/OPERATING.md) and the checks that turn
//! it into a [`Config`]. Must not: guess: a value that could mean two things is a problem.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Deserialize;

mod kubernetes;
use kubernetes::{RawKubernetes, check_kubernetes};

use super::{
    AccessLogConfig, AdminConfig, Config, EndpointConfig, FailMode, ForwardedHeaders, LbPolicy, LimitsConfig, LogSink,
    MetricsConfig, OtlpTarget, OutlierConfig, PathPart, Problem, Protocol, ProxyConfig, RetryConfig, ServiceAliases,
    ServiceConfig, SteeringConfig, TimeoutConfig, TracingConfig, is_loopback, ms,
};

/// The whole file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    steering: RawSteering,
    #[serde(default)]
    access_log: RawAccessLog,
    #[serde(default)]
    kubernetes: RawKubernetes,
    #[serde(default)]
    tracing: RawTracing,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    listen: String,
    workers: usize,
    max_connections: Option<u32>,
    drain_timeout_ms: u64,
    header_read_timeout_ms: u64,
    downstream_idle_timeout_ms: u64,
    tcp_idle_timeout_ms: u64,
    downstream_write_timeout_ms: u64,
    max_request_head_bytes: usize,
    http2_max_concurrent_streams: u32,
    max_headers: usize,
    max_uri_bytes: usize,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: "127.0.0.1:15001".into(),
            workers: 0,
            max_connections: None,
            drain_timeout_ms: 20_000,
            header_read_timeout_ms: 10_000,
            downstream_idle_timeout_ms: 300_000,
            tcp_idle_timeout_ms: 3_600_000,
            downstream_write_timeout_ms: 60_000,
            max_request_head_bytes: 60 * 1024,
            http2_max_concurrent_streams: 100,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    allow_non_loopback: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { listen: "127.0.0.1:15000".into(), allow_non_loopback: false }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSteering {
    enabled: bool,
    cgroups: Vec<String>,
    own_mark: u32,
    fail_mode: FailMode,
    fail_after_ms: u64,
    pin_dir: String,
    cpu_affinity: bool,
    socket_redirect: bool,
}

impl Default for RawSteering {
    fn default() -> Self {
        RawSteering {
            enabled: true,
            cgroups: Vec::new(),
            own_mark: 0x5745,
            fail_mode: FailMode::Open,
            fail_after_ms: 2_000,
            pin_dir: "/sys/fs/bpf/weir".into(),
            cpu_affinity: true,
            socket_redirect: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAccessLog {
    sink: String,
    ring_records: Option<usize>,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        RawAccessLog { sink: "stdout".into(), ring_records: None }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTracing {
    sample_percent: f64,
    otlp_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    max_sources: usize,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics { max_sources: 50 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: String,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    lb: LbPolicy,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    outlier: RawOutlier,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    forwarded_headers: Vec<String>,
    #[serde(default = "yes")]
    socket_redirect: bool,
    #[serde(default, rename = "backend")]
    backends: Vec<super::policy::RawBackend>,
    #[serde(default, rename = "route")]
    routes: Vec<super::policy::RawRoute>,
    #[serde(default)]
    rate_limit: Option<super::policy::RawRateLimit>,
    #[serde(default)]
    health_check: Option<super::policy::RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawEndpoint {
    Addr(String),
    Full {
        addr: String,
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTimeouts {
    connect_ms: u64,
    request_ms: u64,
    attempt_ms: Option<u64>,
    upstream_idle_ms: u64,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts { connect_ms: 1_000, request_ms: 15_000, attempt_ms: None, upstream_idle_ms: 3_000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetry {
    attempts: u32,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    replay_buffer_bytes: usize,
    budget: bool,
    budget_ratio: f64,
    budget_min_per_sec: u32,
    on_server_error: bool,
    on_rate_limited: bool,
    on_grpc_status: crate::grpc::CodeSet,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            attempts: 3,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            replay_buffer_bytes: 64 * 1024,
            budget: true,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            on_server_error: true,
            on_rate_limited: false,
            on_grpc_status: crate::grpc::CodeSet::of(crate::grpc::UNAVAILABLE),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOutlier {
    enabled: bool,
    consecutive_gateway_failures: u32,
    base_ejection_ms: u64,
    max_ejection_ms: u64,
    max_ejection_percent: u32,
    panic_threshold_percent: u32,
}

impl Default for RawOutlier {
    fn default() -> Self {
        RawOutlier {
            enabled: true,
            consecutive_gateway_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_pending_requests: u32,
    max_idle_per_endpoint: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits { max_pending_requests: 10_000, max_idle_per_endpoint: 64 }
    }
}

impl From<&RawTimeouts> for TimeoutConfig {
    fn from(t: &RawTimeouts) -> TimeoutConfig {
        TimeoutConfig {
            connect: ms(t.connect_ms),
            request: ms(t.request_ms),
            attempt: t.attempt_ms.map(ms),
            upstream_idle: ms(t.upstream_idle_ms),
        }
    }
}

impl From<&RawRetry> for RetryConfig {
    fn from(r: &RawRetry) -> RetryConfig {
        RetryConfig {
            attempts: r.attempts,
            backoff_base: ms(r.backoff_base_ms),
            backoff_max: ms(r.backoff_max_ms),
            replay_buffer_bytes: r.replay_buffer_bytes,
            budget: r.budget,
            budget_ratio: r.budget_ratio,
            budget_min_per_sec: r.budget_min_per_sec,
            on_server_error: r.on_server_error,
            on_rate_limited: r.on_rate_limited,
            on_grpc_status: r.on_grpc_status,
        }
    }
}

impl From<&RawOutlier> for OutlierConfig {
    fn from(o: &RawOutlier) -> OutlierConfig {
        OutlierConfig {
            enabled: o.enabled,
            consecutive_gateway_failures: o.consecutive_gateway_failures,
            base_ejection: ms(o.base_ejection_ms),
            max_ejection: ms(o.max_ejection_ms),
            max_ejection_percent: o.max_ejection_percent,
            panic_threshold_percent: o.panic_threshold_percent,
        }
    }
}

impl From<&RawLimits> for LimitsConfig {
    fn from(l: &RawLimits) -> LimitsConfig {
        LimitsConfig { max_pending_requests: l.max_pending_requests, max_idle_per_endpoint: l.max_idle_per_endpoint }
    }
}

/// A service with every field at its default (the defaults live in the `Raw*` structs above,
/// and only there).
pub(super) fn default_service() -> ServiceConfig {
    ServiceConfig {
        name: String::new(),
        vip: SocketAddr::from(([0, 0, 0, 0], 0)),
        listen: None,
        protocol: Protocol::default(),
        endpoints: Vec::new(),
        backends: Vec::new(),
        routes: Vec::new(),
        rate_limit: None,
        health_check: None,
        lb: LbPolicy::default(),
        timeouts: (&RawTimeouts::default()).into(),
        retry: (&RawRetry::default()).into(),
        outlier: (&RawOutlier::default()).into(),
        limits: (&RawLimits::default()).into(),
        forwarded_headers: ForwardedHeaders::default(),
        socket_redirect: true,
        aliases: ServiceAliases::default(),
    }
}

/// Collects problems with their paths while checking.
pub(super) struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn problem(&mut self, path: &[PathPart], message: String) {
        self.problems.push(Problem { path: path.to_vec(), message });
    }

    fn addr(&mut self, path: &[PathPart], value: &str, example: &str) -> Option<SocketAddr> {
        self.addr_or_any_port(path, value, example, false)
    }

    /// An address weir binds itself: port 0 (any free port, read back once bound) is allowed
    /// when `any_port`.
    fn addr_or_any_port(
        &mut self,
        path: &[PathPart],
        value: &str,
        example: &str,
        any_port: bool,
    ) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 || any_port => Some(a),
            Ok(_) => {
                self.problem(path, format!("{value:?}: port 0 is not allowed (e.g. {example:?})"));
                None
            }
            Err(_) => {
                self.problem(path, format!("{value:?} is not an IP:PORT socket address (e.g. {example:?})"));
                None
            }
        }
    }

    pub(super) fn positive_ms(&mut self, path: &[PathPart], value: u64) {
        if value == 0 {
            self.problem(path, "must be greater than 0 (milliseconds)".into());
        }
    }

    fn percent(&mut self, path: &[PathPart], value: u32) {
        if value > 100 {
            self.problem(path, format!("{value} is not a percentage (0..=100)"));
        }
    }
}

use PathPart::{Index, Key};

/// Checks an endpoint list at `path` (addresses, weights, duplicates, no loop to the proxy).
fn check_endpoints(
    c: &mut Checker,
    path: &[PathPart],
    raw: &[RawEndpoint],
    listen: Option<SocketAddr>,
) -> Vec<EndpointConfig> {
    let mut endpoints = Vec::with_capacity(raw.len());
    for (j, e) in raw.iter().enumerate() {
        let path: Vec<PathPart> = path.iter().cloned().chain([Index(j)]).collect();
        let (addr, weight) = match e {
            RawEndpoint::Addr(a) => (a.as_str(), 1),
            RawEndpoint::Full { addr, weight } => (addr.as_str(), *weight),
        };
        if !(1..=1000).contains(&weight) {
            c.problem(&path, format!("weight {weight} is outside 1..=1000"));
        }
        if let Some(a) = c.addr(&path, addr, "127.0.0.1:18081") {
            if endpoints.iter().any(|e: &EndpointConfig| e.addr == a) {
                c.problem(&path, format!("{a} is listed twice"));
            }
            if Some(a) == listen {
                c.problem(&path, format!("{a} is the proxy's own listen address: requests would loop"));
            }
            endpoints.push(EndpointConfig { addr: a, weight });
        }
    }
    endpoints
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker { problems: Vec::new() };
    let RawConfig { proxy, admin, steering, access_log, kubernetes, tracing, metrics, services } = raw;

    // Port 0 for the proxy and admin listeners: weir binds any free port and reports it (tests).
    let listen = c.addr_or_any_port(&[Key("proxy"), Key("listen")], &proxy.listen, "127.0.0.1:15001", true);
    if proxy.max_connections == Some(0) {
        c.problem(&[Key("proxy"), Key("max_connections")], "must be at least 1".into());
    }
    if proxy.workers > 1024 {
        c.problem(
            &[Key("proxy"), Key("workers")],
            format!("{} workers is too many (0..=1024; 0 = one per CPU)", proxy.workers),
        );
    }
    for (key, v) in [
        ("drain_timeout_ms", proxy.drain_timeout_ms),
        ("header_read_timeout_ms", proxy.header_read_timeout_ms),
        ("downstream_idle_timeout_ms", proxy.downstream_idle_timeout_ms),
        ("tcp_idle_timeout_ms", proxy.tcp_idle_timeout_ms),
        ("downstream_write_timeout_ms", proxy.downstream_write_timeout_ms),
    ] {
        c.positive_ms(&[Key("proxy"), Key(key)], v);
    }
    if !(1024..=1024 * 1024).contains(&proxy.max_request_head_bytes) {
        c.problem(
            &[Key("proxy"), Key("max_request_head_bytes")],
            format!("{} is outside 1024..=1048576", proxy.max_request_head_bytes),
        );
    }
    if !(1..=10_000).contains(&proxy.http2_max_concurrent_streams) {
        c.problem(
            &[Key("proxy"), Key("http2_max_concurrent_streams")],
            format!("{} is outside 1..=10000", proxy.http2_max_concurrent_streams),
        );
    }
    if !(1..=1000).contains(&proxy.max_headers) {
        c.problem(&[Key("proxy"), Key("max_headers")], format!("{} is outside 1..=1000", proxy.max_headers));
    }
    if proxy.max_uri_bytes < 16 || proxy.max_uri_bytes >= proxy.max_request_head_bytes {
        c.problem(
            &[Key("proxy"), Key("max_uri_bytes")],
            format!("{} must be at least 16 and below max_request_head_bytes", proxy.max_uri_bytes),
        );
    }

    let admin_listen = c.addr_or_any_port(&[Key("admin"), Key("listen")], &admin.listen, "127.0.0.1:15000", true);
    if let Some(a) = admin_listen
        && !is_loopback(a.ip())
        && !admin.allow_non_loopback
    {
        c.problem(
            &[Key("admin"), Key("listen")],
            format!("{a} is not a loopback address; the admin API exposes config and state, so set `allow_non_loopback = true` in [admin] to bind it anyway"),
        );
    }
    if let (Some(a), Some(l)) = (admin_listen, listen)
        && a == l
        && a.port() != 0
    {
        c.problem(&[Key("admin"), Key("listen")], format!("{a} is also [proxy] listen; use another port"));
    }

    let mut cgroups = Vec::new();
    for (i, cg) in steering.cgroups.iter().enumerate() {
        if !cg.starts_with('/') {
            c.problem(
                &[Key("steering"), Key("cgroups"), Index(i)],
                format!("{cg:?} is not an absolute cgroup v2 directory (e.g. \"/sys/fs/cgroup/unified/kubepods\")"),
            );
        }
        cgroups.push(cg.into());
    }

    if steering.fail_after_ms < 1_000 {
        c.problem(
            &[Key("steering"), Key("fail_after_ms")],
            format!(
                "{} is below 1000: weir counts as down after this, and a busy machine can delay its heartbeat",
                steering.fail_after_ms
            ),
        );
    }
    if !steering.pin_dir.starts_with('/') {
        c.problem(
            &[Key("steering"), Key("pin_dir")],
            format!("{:?} is not an absolute path on a bpffs mount (e.g. \"/sys/fs/bpf/weir\")", steering.pin_dir),
        );
    }
    if steering.own_mark == 0 {
        c.problem(
            &[Key("steering"), Key("own_mark")],
            "0 would mark nothing: weir's own connections could be steered back to itself".into(),
        );
    }
    let sink = match LogSink::parse(&access_log.sink) {
        Ok(s) => Some(s),
        Err(e) => {
            c.problem(&[Key("access_log"), Key("sink")], e);
            None
        }
    };
    if let Some(n) = access_log.ring_records
        && !(16..=1 << 24).contains(&n)
    {
        c.problem(&[Key("access_log"), Key("ring_records")], format!("{n} is outside 16..=16777216"));
    }

    if !(0.0..=100.0).contains(&tracing.sample_percent) || tracing.sample_percent.is_nan() {
        c.problem(
            &[Key("tracing"), Key("sample_percent")],
            format!("{} is not a percentage (0.0..=100.0)", tracing.sample_percent),
        );
    } else if tracing.sample_percent > 0.0 && tracing.otlp_endpoint.is_none() {
        c.problem(
            &[Key("tracing"), Key("sample_percent")],
            "starting traces needs somewhere to send them: set [tracing] otlp_endpoint, or sample_percent = 0".into(),
        );
    }
    if let Some(e) = &tracing.otlp_endpoint
        && let Err(why) = OtlpTarget::parse(e)
    {
        c.problem(&[Key("tracing"), Key("otlp_endpoint")], why);
    }
    if !(1..=1000).contains(&metrics.max_sources) {
        c.problem(
            &[Key("metrics"), Key("max_sources")],
            format!(
                "{} is outside 1..=1000 (callers with their own `source` label; the rest are `other`)",
                metrics.max_sources
            ),
        );
    }

    let kubernetes = check_kubernetes(&mut c, kubernetes);

    let mut names: HashMap<String, usize> = HashMap::new();
    let mut vips: HashMap<SocketAddr, usize> = HashMap::new();
    let mut out_services = Vec::with_capacity(services.len());
    for (i, s) in services.into_iter().enumerate() {
        let p = |k: &'static str| [Key("service"), Index(i), Key(k)];
        if s.name.is_empty()
            || s.name.len() > 63
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
        {
            c.problem(&p("name"), format!("{:?} is not a service name: 1 to 63 characters of a-z 0-9 - _ .", s.name));
        } else if let Some(first) = names.insert(s.name.clone(), i) {
            c.problem(&p("name"), format!("{:?} is already the name of service[{first}]", s.name));
        }
        let vip = c.addr(&p("vip"), &s.vip, "127.10.0.1:80");
        if let Some(v) = vip {
            if let Some(first) = vips.insert(v, i) {
                c.problem(&p("vip"), format!("{v} is already the vip of service[{first}]"));
            }
            if Some(v) == listen {
                c.problem(&p("vip"), format!("{v} is the proxy's own listen address"));
            }
        }
        let service_listen = s.listen.as_deref().and_then(|l| c.addr(&p("listen"), l, "127.0.0.1:16001"));
        if let Some(l) = service_listen {
            if Some(l) == listen || Some(l) == admin_listen {
                c.problem(&p("listen"), format!("{l} is already the [proxy] or [admin] listen address"));
            } else if let Some(first) = vips.insert(l, i) {
                c.problem(&p("listen"), format!("{l} is already used by service[{first}]"));
            }
        }
        let mut check_endpoints =
            |c: &mut Checker, path: &[PathPart], raw: &[RawEndpoint]| check_endpoints(c, path, raw, listen);
        let endpoints = check_endpoints(&mut c, &[Key("service"), Index(i), Key("endpoints")], &s.endpoints);
        let policy = super::policy::validate(
            &mut c,
            i,
            super::policy::RawPolicy {
                backends: s.backends,
                routes: s.routes,
                rate_limit: s.rate_limit,
                health_check: s.health_check,
            },
            s.protocol,
            !s.endpoints.is_empty(),
            &mut check_endpoints,
        );
        let t = &s.timeouts;
        let tp = |k: &'static str| [Key("service"), Index(i), Key("timeouts"), Key(k)];
        c.positive_ms(&tp("connect_ms"), t.connect_ms);
        c.positive_ms(&tp("request_ms"), t.request_ms);
        c.positive_ms(&tp("upstream_idle_ms"), t.upstream_idle_ms);
        if let Some(a) = t.attempt_ms {
            c.positive_ms(&tp("attempt_ms"), a);
            if a > t.request_ms {
                c.problem(
                    &tp("attempt_ms"),
                    format!("{a} is longer than request_ms ({}): an attempt cannot outlive its request", t.request_ms),
                );
            }
        }
        let r = &s.retry;
        let rp = |k: &'static str| [Key("service"), Index(i), Key("retry"), Key(k)];
        if !(1..=10).contains(&r.attempts) {
            c.problem(&rp("attempts"), format!("{} is outside 1..=10 (total attempts, 1 = no retries)", r.attempts));
        }
        c.positive_ms(&rp("backoff_base_ms"), r.backoff_base_ms);
        if r.backoff_max_ms < r.backoff_base_ms {
            c.problem(
                &rp("backoff_max_ms"),
                format!("{} is below backoff_base_ms ({})", r.backoff_max_ms, r.backoff_base_ms),
            );
        }
        if !(0.0..=10.0).contains(&r.budget_ratio) || r.budget_ratio.is_nan() {
            c.problem(&rp("budget_ratio"), format!("{} is outside 0.0..=10.0", r.budget_ratio));
        }
        if r.replay_buffer_bytes > 16 * 1024 * 1024 {
            c.problem(&rp("replay_buffer_bytes"), format!("{} is above 16 MiB", r.replay_buffer_bytes));
        }
        let o = &s.outlier;
        let op = |k: &'static str| [Key("service"), Index(i), Key("outlier"), Key(k)];
        if o.consecutive_gateway_failures == 0 {
            c.problem(&op("consecutive_gateway_failures"), "must be at least 1".into());
        }
        c.positive_ms(&op("base_ejection_ms"), o.base_ejection_ms);
        if o.max_ejection_ms < o.base_ejection_ms {
            c.problem(
                &op("max_ejection_ms"),
                format!("{} is below base_ejection_ms ({})", o.max_ejection_ms, o.base_ejection_ms),
            );
        }
        c.percent(&op("max_ejection_percent"), o.max_ejection_percent);
        c.percent(&op("panic_threshold_percent"), o.panic_threshold_percent);
        let mut forwarded_headers = ForwardedHeaders::default();
        for (j, h) in s.forwarded_headers.iter().enumerate() {
            let flag = match h.as_str() {
                "x-forwarded-for" => &mut forwarded_headers.x_forwarded_for,
                "x-forwarded-proto" => &mut forwarded_headers.x_forwarded_proto,
                "forwarded" => &mut forwarded_headers.forwarded,
                other => {
                    c.problem(
                        &[Key("service"), Index(i), Key("forwarded_headers"), Index(j)],
                        format!("{other:?} is not a forwarding header: expected \"x-forwarded-for\", \"x-forwarded-proto\" or \"forwarded\""),
                    );
                    continue;
                }
            };
            if std::mem::replace(flag, true) {
                c.problem(
                    &[Key("service"), Index(i), Key("forwarded_headers"), Index(j)],
                    format!("{h:?} is listed twice"),
                );
            }
        }
        if s.limits.max_pending_requests == 0 {
            c.problem(
                &[Key("service"), Index(i), Key("limits"), Key("max_pending_requests")],
                "must be at least 1".into(),
            );
        }

        out_services.push(std::sync::Arc::new(ServiceConfig {
            name: s.name,
            vip: vip.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            listen: service_listen,
            protocol: s.protocol,
            endpoints,
            backends: policy.backends,
            routes: policy.routes,
            rate_limit: policy.rate_limit,
            health_check: policy.health_check,
            lb: s.lb,
            timeouts: t.into(),
            retry: r.into(),
            outlier: o.into(),
            limits: (&s.limits).into(),
            forwarded_headers,
            socket_redirect: s.socket_redirect,
            aliases: ServiceAliases::default(),
        }));
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    // Every Option below is Some: a None pushed a problem above.
    let (Some(listen), Some(admin_listen), Some(sink)) = (listen, admin_listen, sink) else {
        return Err(vec![Problem { path: vec![], message: "internal: unchecked value".into() }]);
    };
    Ok(Config {
        proxy: ProxyConfig {
            listen,
            workers: proxy.workers,
            max_connections: proxy.max_connections,
            drain_timeout: ms(proxy.drain_timeout_ms),
            header_read_timeout: ms(proxy.header_read_timeout_ms),
            downstream_idle_timeout: ms(proxy.downstream_idle_timeout_ms),
            tcp_idle_timeout: ms(proxy.tcp_idle_timeout_ms),
            downstream_write_timeout: ms(proxy.downstream_write_timeout_ms),
            max_request_head_bytes: proxy.max_request_head_bytes,
            http2_max_concurrent_streams: proxy.http2_max_concurrent_streams,
            max_headers: proxy.max_headers,
            max_uri_bytes: proxy.max_uri_bytes,
        },
        admin: AdminConfig { listen: admin_listen, allow_non_loopback: admin.allow_non_loopback },
        steering: SteeringConfig {
            enabled: steering.enabled,
            cgroups,
            own_mark: steering.own_mark,
            fail_mode: steering.fail_mode,
            fail_after: ms(steering.fail_after_ms),
            pin_dir: steering.pin_dir.into(),
            cpu_affinity: steering.cpu_affinity,
            socket_redirect: steering.socket_redirect,
        },
        access_log: AccessLogConfig { sink, ring_records: access_log.ring_records },
        kubernetes,
        tracing: TracingConfig { sample_percent: tracing.sample_percent, otlp_endpoint: tracing.otlp_endpoint },
        metrics: MetricsConfig { max_sources: metrics.max_sources },
        services: out_services,
    })
}
