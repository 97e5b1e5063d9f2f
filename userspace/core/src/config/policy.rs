//! Traffic policy in a service's config: named endpoint groups (`[[service.backend]]`), routes
//! with their matches, weighted splits, per-route timeouts, retries, header edits and faults
//! (`[[service.route]]`), the local rate limit (`[service.rate_limit]`) and active health
//! checks (`[service.health_check]`): as written (with weir's defaults, documented in
//! docs/OPERATING.md), validated, and located when wrong. Must not: guess: a route that names
//! a backend the service does not have, a split with nothing to send to, a pattern that does
//! not compile, a rate of 0 are problems, not defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::{Checker, RawEndpoint};
use super::{EndpointConfig, PathPart, Protocol, ServiceConfig, ms};
use crate::grpc::CodeSet;
use crate::route::{PathRegex, RouteMatch};

/// One `[[service.backend]]`: a named group of endpoints with its own balancer, outlier state
/// and panic mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendConfig {
    /// Unique within the service; the `backend` label.
    pub name: String,
    /// Where its requests go.
    pub endpoints: Vec<EndpointConfig>,
}

/// One `[[service.route]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    /// Which requests take this route (the first route that matches wins).
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Backend name → weight: the split, per request. Empty for a service without backends
    /// (its `endpoints`).
    pub backends: BTreeMap<String, u32>,
    /// Overrides of `[service.timeouts]`.
    pub timeouts: RouteTimeouts,
    /// Overrides of `[service.retry]`.
    pub retry: RouteRetry,
    /// Fields set or removed on the way to the endpoint.
    pub request_headers: HeaderEdits,
    /// Deliberate failures.
    pub fault: FaultConfig,
}

/// `[service.route.timeouts]`: unset fields are the service's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteTimeouts {
    /// Whole request, all attempts, until the response head.
    pub request: Option<Duration>,
    /// One attempt.
    pub attempt: Option<Duration>,
}

/// `[service.route.retry]`: unset fields are the service's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteRetry {
    /// Total attempts including the first.
    pub attempts: Option<u32>,
    /// Back-off base.
    pub backoff_base: Option<Duration>,
    /// Back-off cap.
    pub backoff_max: Option<Duration>,
    /// Retry a 5xx other than 503.
    pub on_server_error: Option<bool>,
    /// Retry a 429.
    pub on_rate_limited: Option<bool>,
    /// gRPC codes retried.
    pub on_grpc_status: Option<CodeSet>,
}

/// `request_headers`: fields set (replacing the request's own) and removed before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderEdits {
    /// Name (lower case) → value.
    #[serde(serialize_with = "pairs_as_map")]
    pub set: Vec<(String, String)>,
    /// Names (lower case).
    pub remove: Vec<String>,
}

fn pairs_as_map<S: serde::Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

impl HeaderEdits {
    /// Whether nothing is changed.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// `fault`: deliberate delays and aborts, after routing and before the upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultConfig {
    /// Share of requests (0..=100) answered `abort_status` by weir itself.
    pub abort_percent: f64,
    /// The status of an abort.
    pub abort_status: u16,
    /// Share of requests (0..=100) held for `delay` before they go on.
    pub delay_percent: f64,
    /// How long a delayed request is held.
    pub delay: Duration,
}

impl FaultConfig {
    /// Whether the route injects anything.
    pub fn any(&self) -> bool {
        self.abort_percent > 0.0 || (self.delay_percent > 0.0 && !self.delay.is_zero())
    }
}

/// Whose requests a rate limit counts together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitPer {
    /// All of the service's requests share one bucket.
    #[default]
    Service,
    /// One bucket per calling workload.
    Client,
}

/// `[service.rate_limit]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitConfig {
    /// Sustained requests per second, node-wide.
    pub requests_per_second: u32,
    /// Requests a full bucket lets through at once; unset = `requests_per_second`.
    pub burst: Option<u32>,
    /// One bucket for the service or per client.
    pub per: RateLimitPer,
}

impl RateLimitConfig {
    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

/// `[service.health_check]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckConfig {
    /// HTTP GET of this path, answered 2xx to pass; `None` with `tcp`.
    pub path: Option<String>,
    /// A connect check instead of an HTTP one.
    pub tcp: bool,
    /// Time between two checks of one endpoint (each jittered by up to a tenth).
    pub interval: Duration,
    /// A check not passed within this fails.
    pub timeout: Duration,
    /// Consecutive failed checks that take an endpoint out.
    pub unhealthy_after: u32,
    /// Consecutive passed checks that bring it back (through probation).
    pub healthy_after: u32,
}

// ---------------------------------------------------------------------------------------------
// As written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    name: String,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    #[serde(default)]
    backends: BTreeMap<String, u32>,
    #[serde(default)]
    timeouts: RawRouteTimeouts,
    #[serde(default)]
    retry: RawRouteRetry,
    #[serde(default)]
    request_headers: RawHeaderEdits,
    #[serde(default)]
    fault: RawFault,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    path_prefix: Option<String>,
    path_exact: Option<String>,
    path_regex: Option<String>,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    query: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouteTimeouts {
    request_ms: Option<u64>,
    attempt_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouteRetry {
    attempts: Option<u32>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    on_server_error: Option<bool>,
    on_rate_limited: Option<bool>,
    on_grpc_status: Option<CodeSet>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaderEdits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// A percentage written as an integer or a float.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Percent {
    Int(i64),
    Float(f64),
}

impl Percent {
    fn value(self) -> f64 {
        match self {
            Percent::Int(i) => i as f64,
            Percent::Float(f) => f,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFault {
    abort_percent: Percent,
    abort_status: u16,
    delay_percent: Percent,
    delay_ms: u64,
}

impl Default for RawFault {
    fn default() -> Self {
        RawFault { abort_percent: Percent::Int(0), abort_status: 503, delay_percent: Percent::Int(0), delay_ms: 0 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    requests_per_second: u32,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    per: RateLimitPer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealthCheck {
    path: Option<String>,
    tcp: bool,
    interval_ms: u64,
    timeout_ms: u64,
    unhealthy_after: u32,
    healthy_after: u32,
}

/// The path an HTTP health check asks for when none is given.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";

impl Default for RawHealthCheck {
    fn default() -> Self {
        RawHealthCheck {
            path: None,
            tcp: false,
            interval_ms: 1_000,
            timeout_ms: 500,
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

use PathPart::{Index, Key, Name};

/// A service's policy as written.
pub(super) struct RawPolicy {
    pub backends: Vec<RawBackend>,
    pub routes: Vec<RawRoute>,
    pub rate_limit: Option<RawRateLimit>,
    pub health_check: Option<RawHealthCheck>,
}

/// A service's policy, validated.
pub(super) struct Policy {
    pub backends: Vec<BackendConfig>,
    pub routes: Vec<RouteConfig>,
    pub rate_limit: Option<RateLimitConfig>,
    pub health_check: Option<HealthCheckConfig>,
}

/// Fields weir writes itself, or whose change would break framing: a route may not set or
/// remove them.
pub const MANAGED_FIELDS: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "via",
    "http2-settings",
];

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80) && s.trim() == s
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
}

/// A path given in a match or a health check: origin-form, printable, no spaces.
fn is_path(s: &str) -> bool {
    s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks an endpoint list at a path (the service's own endpoint checks).
pub(super) type CheckEndpoints<'a> = dyn FnMut(&mut Checker, &[PathPart], &[RawEndpoint]) -> Vec<EndpointConfig> + 'a;

/// Validates service `i`'s policy. `endpoints_given`: the service lists `endpoints` of its own.
pub(super) fn validate(
    c: &mut Checker,
    i: usize,
    raw: RawPolicy,
    protocol: Protocol,
    endpoints_given: bool,
    check_endpoints: &mut CheckEndpoints<'_>,
) -> Policy {
    let at = |rest: &[PathPart]| -> Vec<PathPart> {
        let mut p = vec![Key("service"), Index(i)];
        p.extend_from_slice(rest);
        p
    };
    let mut backends: Vec<BackendConfig> = Vec::with_capacity(raw.backends.len());
    for (j, b) in raw.backends.into_iter().enumerate() {
        if !is_name(&b.name) {
            c.problem(
                &at(&[Key("backend"), Index(j), Key("name")]),
                format!("{:?} is not a backend name: 1 to 63 characters of a-z 0-9 - _ .", b.name),
            );
        } else if let Some(first) = backends.iter().position(|x| x.name == b.name) {
            c.problem(
                &at(&[Key("backend"), Index(j), Key("name")]),
                format!("{:?} is already the name of backend[{first}]", b.name),
            );
        }
        let endpoints = check_endpoints(c, &at(&[Key("backend"), Index(j), Key("endpoints")]), &b.endpoints);
        backends.push(BackendConfig { name: b.name, endpoints });
    }
    let http = protocol.is_http();
    if !backends.is_empty() {
        if !http {
            c.problem(&at(&[Key("backend")]), "a tcp service has no backends: list its `endpoints`".into());
        } else if endpoints_given {
            c.problem(
                &at(&[Key("endpoints")]),
                "a service with [[service.backend]] lists its endpoints in its backends, not in `endpoints`".into(),
            );
        } else if raw.routes.is_empty() {
            c.problem(
                &at(&[Key("backend")]),
                "no route sends requests to these backends: add a [[service.route]] with `backends = { NAME = WEIGHT }`"
                    .into(),
            );
        }
    }
    if !raw.routes.is_empty() && !http {
        c.problem(&at(&[Key("route")]), "a tcp service has no routes (its connections are not HTTP requests)".into());
    }
    let routes = raw
        .routes
        .into_iter()
        .enumerate()
        .map(|(j, r)| route(c, &at(&[Key("route"), Index(j)]), r, &backends))
        .collect();
    let rate_limit = raw.rate_limit.map(|r| {
        let p = |k: &'static str| at(&[Key("rate_limit"), Key(k)]);
        if !http {
            c.problem(
                &at(&[Key("rate_limit")]),
                "rate limits apply to HTTP services (a tcp service's connections are not limited)".into(),
            );
        }
        if !(1..=10_000_000).contains(&r.requests_per_second) {
            c.problem(
                &p("requests_per_second"),
                format!("{} is outside 1..=10000000 (remove [service.rate_limit] for no limit)", r.requests_per_second),
            );
        }
        if r.burst == Some(0) {
            c.problem(&p("burst"), "must be at least 1 (unset: requests_per_second)".into());
        }
        RateLimitConfig { requests_per_second: r.requests_per_second, burst: r.burst, per: r.per }
    });
    let health_check = raw.health_check.map(|h| {
        let p = |k: &'static str| at(&[Key("health_check"), Key(k)]);
        let path = match (&h.path, h.tcp) {
            (Some(_), true) => {
                c.problem(&p("tcp"), "a check is either an HTTP GET of `path` or `tcp = true`, not both".into());
                None
            }
            (_, true) => None,
            (Some(path), false) => Some(path.clone()),
            (None, false) => Some(DEFAULT_HEALTH_PATH.to_string()),
        };
        if let Some(path) = &path {
            if !is_path(path) {
                c.problem(&p("path"), format!("{path:?} is not a path (it starts with / and has no spaces)"));
            }
            if protocol.upstream_h2() {
                c.problem(
                    &p("path"),
                    "HTTP checks speak HTTP/1.1, which an http2 or grpc service's endpoints do not: use `tcp = true`"
                        .into(),
                );
            }
        }
        c.positive_ms(&p("interval_ms"), h.interval_ms);
        c.positive_ms(&p("timeout_ms"), h.timeout_ms);
        if h.unhealthy_after == 0 {
            c.problem(&p("unhealthy_after"), "must be at least 1".into());
        }
        if h.healthy_after == 0 {
            c.problem(&p("healthy_after"), "must be at least 1".into());
        }
        HealthCheckConfig {
            path,
            tcp: h.tcp,
            interval: ms(h.interval_ms),
            timeout: ms(h.timeout_ms),
            unhealthy_after: h.unhealthy_after,
            healthy_after: h.healthy_after,
        }
    });
    Policy { backends, routes, rate_limit, health_check }
}

fn route(c: &mut Checker, at: &[PathPart], r: RawRoute, backends: &[BackendConfig]) -> RouteConfig {
    let p = |rest: &[PathPart]| -> Vec<PathPart> { at.iter().cloned().chain(rest.iter().cloned()).collect() };
    let m = r.matcher;
    let mp = |k: &'static str| p(&[Key("match"), Key(k)]);
    let paths = [m.path_prefix.is_some(), m.path_exact.is_some(), m.path_regex.is_some()];
    if paths.iter().filter(|x| **x).count() > 1 {
        c.problem(&p(&[Key("match")]), "give at most one of path_prefix, path_exact and path_regex".into());
    }
    for (k, v) in [("path_prefix", &m.path_prefix), ("path_exact", &m.path_exact)] {
        if let Some(v) = v
            && !is_path(v)
        {
            c.problem(&mp(k), format!("{v:?} is not a path (it starts with / and has no spaces)"));
        }
    }
    let path_regex = m.path_regex.as_deref().and_then(|re| match PathRegex::new(re) {
        Ok(r) => Some(r),
        Err(e) => {
            c.problem(&mp("path_regex"), e);
            None
        }
    });
    if let Some(method) = &m.method
        && !is_token(method)
    {
        c.problem(&mp("method"), format!("{method:?} is not a method (e.g. \"GET\")"));
    }
    let mut headers = Vec::with_capacity(m.headers.len());
    for (name, value) in m.headers {
        let path = p(&[Key("match"), Key("headers"), Name(name.clone())]);
        let lower = name.to_ascii_lowercase();
        if !is_token(&name) {
            c.problem(&path, format!("{name:?} is not a field name"));
        } else if headers.iter().any(|(n, _)| *n == lower) {
            c.problem(&path, format!("{name:?} is given twice (field names are case-insensitive)"));
        }
        if !is_field_value(&value) {
            c.problem(&path, format!("{value:?} is not a field value (printable, no surrounding spaces)"));
        }
        headers.push((lower, value));
    }
    let mut query = Vec::with_capacity(m.query.len());
    for (name, value) in m.query {
        if name.is_empty() || name.bytes().any(|b| b == b'&' || b == b'=' || !b.is_ascii_graphic()) {
            c.problem(
                &p(&[Key("match"), Key("query"), Name(name.clone())]),
                format!("{name:?} is not a query parameter name"),
            );
        }
        if value.bytes().any(|b| b == b'&' || !b.is_ascii_graphic()) {
            c.problem(
                &p(&[Key("match"), Key("query"), Name(name.clone())]),
                format!("{value:?} is not a query parameter value"),
            );
        }
        query.push((name, value));
    }
    let matcher = RouteMatch {
        path_prefix: m.path_prefix,
        path_exact: m.path_exact,
        path_regex,
        method: m.method,
        headers,
        query,
    };

    if backends.is_empty() {
        if !r.backends.is_empty() {
            c.problem(
                &p(&[Key("backends")]),
                "this service has no [[service.backend]]: its routes send to its `endpoints` (remove `backends`)"
                    .into(),
            );
        }
    } else if r.backends.is_empty() {
        c.problem(
            &p(&[Key("backends")]),
            "name the backends this route sends to: `backends = { NAME = WEIGHT }`".into(),
        );
    } else {
        for (name, weight) in &r.backends {
            let path = p(&[Key("backends"), Name(name.clone())]);
            if !backends.iter().any(|b| b.name == *name) {
                let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
                c.problem(&path, format!("{name:?} is not a backend of this service (it has {})", known.join(", ")));
            }
            if *weight > 1_000_000 {
                c.problem(&path, format!("weight {weight} is outside 0..=1000000"));
            }
        }
        if r.backends.values().all(|w| *w == 0) {
            c.problem(&p(&[Key("backends")]), "every weight is 0: nothing would be sent anywhere".into());
        }
    }

    let t = &r.timeouts;
    let tp = |k: &'static str| p(&[Key("timeouts"), Key(k)]);
    if let Some(v) = t.request_ms {
        c.positive_ms(&tp("request_ms"), v);
    }
    if let Some(v) = t.attempt_ms {
        c.positive_ms(&tp("attempt_ms"), v);
    }
    let rt = &r.retry;
    let rp = |k: &'static str| p(&[Key("retry"), Key(k)]);
    if let Some(a) = rt.attempts
        && !(1..=10).contains(&a)
    {
        c.problem(&rp("attempts"), format!("{a} is outside 1..=10 (total attempts, 1 = no retries)"));
    }
    if let Some(v) = rt.backoff_base_ms {
        c.positive_ms(&rp("backoff_base_ms"), v);
    }
    if let (Some(base), Some(max)) = (rt.backoff_base_ms, rt.backoff_max_ms)
        && max < base
    {
        c.problem(&rp("backoff_max_ms"), format!("{max} is below backoff_base_ms ({base})"));
    }

    let mut set = Vec::with_capacity(r.request_headers.set.len());
    for (name, value) in r.request_headers.set {
        let path = p(&[Key("request_headers"), Key("set"), Name(name.clone())]);
        let lower = name.to_ascii_lowercase();
        edit_name(c, &path, &name, &lower);
        if !is_field_value(&value) {
            c.problem(&path, format!("{value:?} is not a field value (printable, no surrounding spaces)"));
        }
        if set.iter().any(|(n, _): &(String, String)| *n == lower) {
            c.problem(&path, format!("{name:?} is given twice (field names are case-insensitive)"));
        }
        set.push((lower, value));
    }
    let mut remove = Vec::with_capacity(r.request_headers.remove.len());
    for (k, name) in r.request_headers.remove.into_iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        edit_name(c, &p(&[Key("request_headers"), Key("remove"), Index(k)]), &name, &lower);
        remove.push(lower);
    }

    let f = r.fault;
    let fp = |k: &'static str| p(&[Key("fault"), Key(k)]);
    for (k, v) in [("abort_percent", f.abort_percent.value()), ("delay_percent", f.delay_percent.value())] {
        if !(0.0..=100.0).contains(&v) {
            c.problem(&fp(k), format!("{v} is not a percentage (0..=100)"));
        }
    }
    if !(200..=599).contains(&f.abort_status) {
        c.problem(&fp("abort_status"), format!("{} is not a final HTTP status (200..=599)", f.abort_status));
    }
    if f.delay_percent.value() > 0.0 && f.delay_ms == 0 {
        c.problem(&fp("delay_ms"), "delay_percent is set, so give the delay (milliseconds, above 0)".into());
    }

    RouteConfig {
        matcher,
        backends: r.backends,
        timeouts: RouteTimeouts { request: t.request_ms.map(ms), attempt: t.attempt_ms.map(ms) },
        retry: RouteRetry {
            attempts: rt.attempts,
            backoff_base: rt.backoff_base_ms.map(ms),
            backoff_max: rt.backoff_max_ms.map(ms),
            on_server_error: rt.on_server_error,
            on_rate_limited: rt.on_rate_limited,
            on_grpc_status: rt.on_grpc_status,
        },
        request_headers: HeaderEdits { set, remove },
        fault: FaultConfig {
            abort_percent: f.abort_percent.value(),
            abort_status: f.abort_status,
            delay_percent: f.delay_percent.value(),
            delay: ms(f.delay_ms),
        },
    }
}

fn edit_name(c: &mut Checker, path: &[PathPart], name: &str, lower: &str) {
    if !is_token(name) {
        c.problem(path, format!("{name:?} is not a field name"));
    } else if MANAGED_FIELDS.contains(&lower) {
        c.problem(
            path,
            format!("{name:?} is managed by weir (framing, connection and routing fields cannot be edited)"),
        );
    }
}

impl ServiceConfig {
    /// The service's endpoint groups: its backends, or one group named `default` made of its
    /// `endpoints` when it has none.
    pub fn backend_groups(&self) -> impl Iterator<Item = (&str, &[EndpointConfig])> {
        let implicit = self.backends.is_empty().then_some(("default", self.endpoints.as_slice()));
        self.backends.iter().map(|b| (b.name.as_str(), b.endpoints.as_slice())).chain(implicit)
    }

    /// The retry policy of `route`: the service's, with the route's overrides.
    pub fn route_retry_policy(&self, route: &RouteConfig) -> crate::retry::RetryPolicy {
        let mut p = self.retry_policy();
        let r = &route.retry;
        p.attempts = r.attempts.unwrap_or(p.attempts);
        p.backoff_base = r.backoff_base.unwrap_or(p.backoff_base);
        p.backoff_max = r.backoff_max.unwrap_or(p.backoff_max).max(p.backoff_base);
        p.retry_on = crate::retry::RetryOn::with(
            r.on_server_error.unwrap_or(self.retry.on_server_error),
            r.on_rate_limited.unwrap_or(self.retry.on_rate_limited),
            r.on_grpc_status.unwrap_or(self.retry.on_grpc_status),
        );
        p.per_attempt_timeout = route.timeouts.attempt.or(self.timeouts.attempt);
        p
    }

    /// The whole-request timeout of `route`.
    pub fn route_request_timeout(&self, route: &RouteConfig) -> Duration {
        route.timeouts.request.unwrap_or(self.timeouts.request)
    }
}

#[cfg(test)]
mod tests;
