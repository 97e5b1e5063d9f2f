//! `/metrics` (Prometheus text exposition 0.0.4) and `/endpoints` (JSON), built at scrape time
//! on the admin thread from the workers' published stats shards, the shared outlier state and
//! the control counters. Owns every metric name and help text. Must not: run on a worker, or
//! emit a label value that is not bounded (services come from config, reasons and codes from
//! fixed sets; never paths or client addresses).
//!
//! Written by hand rather than with prometheus-client: that crate's encoder emits OpenMetrics
//! (`# EOF`, `_total` appended to counter families, `# UNIT`), while weir serves the classic
//! text format that `promtool check metrics` validates; the format is small and tested here.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::Serialize;
use weir_core::outlier::EndpointState;
use weir_core::stats::Merged;

use crate::app::Control;

/// Metric names, in one place.
pub mod names {
    pub const REQUESTS: &str = "weir_requests_total";
    pub const GRPC: &str = "weir_grpc_responses_total";
    pub const DURATION: &str = "weir_request_duration_seconds";
    pub const ERRORS: &str = "weir_request_errors_total";
    pub const RETRIES: &str = "weir_retries_total";
    pub const BUDGET_EXHAUSTED: &str = "weir_retry_budget_exhausted_total";
    pub const EJECTIONS: &str = "weir_outlier_ejections_total";
    pub const PANIC: &str = "weir_panic_mode_requests_total";
    pub const ENDPOINTS: &str = "weir_endpoints";
    pub const UPSTREAM_CONNECTIONS: &str = "weir_upstream_connections";
    pub const DOWNSTREAM_CONNECTIONS: &str = "weir_downstream_connections";
    pub const CONNECTIONS_REFUSED: &str = "weir_downstream_connections_refused_total";
    pub const UNROUTED: &str = "weir_unrouted_requests_total";
    pub const WRITE_TIMEOUTS: &str = "weir_downstream_write_timeouts_total";
    pub const LOCAL_RESOURCE: &str = "weir_local_resource_errors_total";
    pub const HTTP2_CLOSED: &str = "weir_http2_connections_closed_total";
    pub const ACCESS_LOG: &str = "weir_access_log_records_total";
    pub const RELOADS: &str = "weir_config_reloads_total";
    pub const LAST_RELOAD: &str = "weir_config_last_reload_timestamp_seconds";
    pub const RELOAD_DURATION: &str = "weir_config_last_reload_duration_seconds";
    pub const SNAPSHOT_AGE: &str = "weir_config_snapshot_age_seconds";
    pub const BUILD_INFO: &str = "weir_build_info";
    pub const WORKERS: &str = "weir_workers";
    pub const STEERING: &str = "weir_steering_kernel_events_total";
    pub const TAKEOVERS: &str = "weir_takeovers_total";
    pub const ROUTE_REQUESTS: &str = "weir_route_requests_total";
    pub const ROUTE_ERRORS: &str = "weir_route_request_errors_total";
    pub const ROUTE_DURATION: &str = "weir_route_request_duration_seconds";
    pub const FAULTS: &str = "weir_faults_injected_total";
    pub const HEALTH_CHECKS: &str = "weir_health_checks_total";
}

mod policy;

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The merged stats of every worker, plus those inherited from the weir this one took over:
/// counters continue across a takeover.
pub fn merged(control: &Control) -> Merged {
    let shards: Vec<_> = control.stats.iter().map(|s| s.load_full()).collect();
    let inherited = control.inherited.load();
    Merged::merge(shards.iter().map(|s| &**s).chain(std::iter::once(&inherited.stats)))
}

/// Renders `/metrics`.
pub fn render(control: &Control) -> String {
    let stats = merged(control);
    let snapshot = control.shared.snapshot.load_full();
    let mut o = Out(String::with_capacity(16 * 1024));
    use names::*;

    o.family(REQUESTS, "counter", "Requests (HTTP) and connections (TCP) handled, by service and status code (\"tcp\" for TCP, \"none\" when no status was sent).");
    for (name, s) in stats.services() {
        let tcp = snapshot
            .service_index(name)
            .is_some_and(|i| snapshot.config.services[i].protocol == weir_core::config::Protocol::Tcp);
        for (code, n) in s.codes() {
            let code = match code {
                0 if tcp => "tcp".to_string(),
                0 => "none".to_string(),
                c => c.to_string(),
            };
            o.sample(REQUESTS, &[("service", name), ("code", &code)], n);
        }
    }
    o.family(GRPC, "counter", "gRPC calls finished, by service and final grpc-status (lower snake_case name).");
    for (name, s) in stats.services() {
        for (code, n) in s.grpc_codes() {
            o.sample(GRPC, &[("service", name), ("grpc_code", weir_core::grpc::name_of(code))], n);
        }
    }
    o.family(
        DURATION,
        "histogram",
        "Time from request head to the end of the response (HTTP) or connection lifetime (TCP).",
    );
    for (name, s) in stats.services() {
        for (le, n) in s.cumulative_buckets() {
            let le = if le.is_infinite() { "+Inf".to_string() } else { format!("{le}") };
            o.sample(&format!("{DURATION}_bucket"), &[("service", name), ("le", &le)], n);
        }
        o.sample(&format!("{DURATION}_sum"), &[("service", name)], s.duration_sum_ns as f64 / 1e9);
        o.sample(&format!("{DURATION}_count"), &[("service", name)], s.duration_count);
    }
    o.family(
        ERRORS,
        "counter",
        "Requests weir answered itself, or whose response the endpoint cut, by reason (the x-weir-error value).",
    );
    for (name, s) in stats.services() {
        for (reason, n) in s.errors_by_reason() {
            o.sample(ERRORS, &[("service", name), ("reason", reason.as_str())], n);
        }
    }
    o.family(RETRIES, "counter", "Retries made, by reason.");
    for (name, s) in stats.services() {
        for (reason, n) in s.retries_by_reason() {
            o.sample(RETRIES, &[("service", name), ("reason", reason.as_str())], n);
        }
    }
    o.family(BUDGET_EXHAUSTED, "counter", "Retries not made because the retry budget was empty.");
    for (name, s) in stats.services() {
        o.sample(BUDGET_EXHAUSTED, &[("service", name)], s.budget_exhausted);
    }
    o.family(EJECTIONS, "counter", "Endpoints ejected by outlier detection.");
    for (name, s) in stats.services() {
        o.sample(EJECTIONS, &[("service", name)], s.ejections);
    }
    o.family(PANIC, "counter", "Requests balanced over all endpoints because too few were healthy (panic mode).");
    for (name, s) in stats.services() {
        o.sample(PANIC, &[("service", name)], s.panic_requests);
    }
    o.family(
        ENDPOINTS,
        "gauge",
        "Endpoints of each service by state (active, ejected, probation, unhealthy: failing active health checks).",
    );
    let now_ms = control.shared.now_ms();
    for (cfg, shared) in snapshot.config.services.iter().zip(&snapshot.services) {
        let (mut active, mut ejected, mut probation, mut unhealthy) = (0, 0, 0, 0);
        for e in shared.backends.iter().flat_map(|b| b.health.snapshot(now_ms)) {
            match e.state {
                EndpointState::Active => active += 1,
                EndpointState::Ejected => ejected += 1,
                EndpointState::Probation => probation += 1,
                EndpointState::Unhealthy => unhealthy += 1,
            }
        }
        // `active` always; the other states only when an endpoint is in them, so that a large
        // table of healthy services costs one series each.
        o.sample(ENDPOINTS, &[("service", &cfg.name), ("state", "active")], active);
        if ejected > 0 {
            o.sample(ENDPOINTS, &[("service", &cfg.name), ("state", "ejected")], ejected);
        }
        if probation > 0 {
            o.sample(ENDPOINTS, &[("service", &cfg.name), ("state", "probation")], probation);
        }
        if unhealthy > 0 {
            o.sample(ENDPOINTS, &[("service", &cfg.name), ("state", "unhealthy")], unhealthy);
        }
    }
    policy::render(&mut o, &stats, control);
    o.family(
        UPSTREAM_CONNECTIONS,
        "gauge",
        "Open connections from weir to the service's endpoints (pooled and in use).",
    );
    for (name, s) in stats.services() {
        o.sample(UPSTREAM_CONNECTIONS, &[("service", name)], s.upstream_connections.max(0));
    }
    o.family(DOWNSTREAM_CONNECTIONS, "gauge", "Open client connections.");
    o.sample(DOWNSTREAM_CONNECTIONS, &[], control.shared.downstream_connections.load(Ordering::Relaxed));
    o.family(CONNECTIONS_REFUSED, "counter", "Client connections closed at once because max_connections was reached.");
    o.sample(CONNECTIONS_REFUSED, &[], stats.counters.connections_refused);
    o.family(UNROUTED, "counter", "Requests or connections that matched no service.");
    o.sample(UNROUTED, &[], stats.counters.unrouted);
    o.family(
        WRITE_TIMEOUTS,
        "counter",
        "Client connections closed (with their upstream connection) because a write to the client made no progress for downstream_write_timeout_ms.",
    );
    o.sample(WRITE_TIMEOUTS, &[], stats.counters.downstream_write_timeouts);
    o.family(
        LOCAL_RESOURCE,
        "counter",
        "Connects and accepts that failed on weir's own limits (file descriptors, memory, local ports), by operation; never counted against an endpoint.",
    );
    o.sample(LOCAL_RESOURCE, &[("op", "connect")], stats.counters.local_connect_errors);
    o.sample(LOCAL_RESOURCE, &[("op", "accept")], stats.counters.accept_errors);
    o.family(
        HTTP2_CLOSED,
        "counter",
        "HTTP/2 client connections weir closed for their behaviour: control-frame floods, its HTTP/2 abuse limits (ENHANCE_YOUR_CALM), other protocol errors, a GOAWAY the client never took.",
    );
    for reason in weir_core::stats::Http2Close::ALL {
        o.sample(HTTP2_CLOSED, &[("reason", reason.as_str())], stats.counters.http2_closed[reason as usize]);
    }
    let (shipped, dropped) = control.access_log_counts();
    o.family(
        ACCESS_LOG,
        "counter",
        "Access-log records shipped to the sink, or dropped because a ring was full or the sink failed.",
    );
    o.sample(ACCESS_LOG, &[("result", "shipped")], shipped);
    o.sample(ACCESS_LOG, &[("result", "dropped")], dropped);
    let inherited = control.inherited.load();
    let own = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    o.family(RELOADS, "counter", "Config reloads by result (a failed reload keeps the previous config).");
    o.sample(RELOADS, &[("result", "success")], own(&control.reloads_ok) + inherited.totals.reloads_ok);
    o.sample(RELOADS, &[("result", "failure")], own(&control.reloads_failed) + inherited.totals.reloads_failed);
    o.family(
        TAKEOVERS,
        "counter",
        "Takeovers of the running weir by a new one (weir run --takeover), by result: success (counted by the new weir) or failure (refused or failed; the running weir served on).",
    );
    o.sample(TAKEOVERS, &[("result", "success")], own(&control.takeovers_ok) + inherited.totals.takeovers_ok);
    o.sample(TAKEOVERS, &[("result", "failure")], own(&control.takeovers_failed) + inherited.totals.takeovers_failed);
    o.family(LAST_RELOAD, "gauge", "Unix time of the last successful config load.");
    o.sample(LAST_RELOAD, &[], control.last_reload_unix.load(Ordering::Relaxed));
    o.family(
        RELOAD_DURATION,
        "gauge",
        "How long the last reload that changed the running config took, from reading the config file to the new snapshot published.",
    );
    o.sample(RELOAD_DURATION, &[], control.last_reload_us.load(Ordering::Relaxed) as f64 / 1e6);
    o.family(
        SNAPSHOT_AGE,
        "gauge",
        "Seconds since the active config snapshot was loaded (grows while the config source is unreadable or invalid).",
    );
    o.sample(SNAPSHOT_AGE, &[], control.snapshot_loaded.lock().elapsed().as_secs_f64());
    o.family(WORKERS, "gauge", "Proxy worker threads.");
    o.sample(WORKERS, &[], control.workers.load(Ordering::Relaxed));
    if let Some(steering) = control.steering.lock().as_ref() {
        o.family(
            STEERING,
            "counter",
            "Kernel-side steering events (connect rewrites, pass-throughs, recorded connections), summed over CPUs.",
        );
        let mut counters: Vec<_> = steering.status().counters.into_iter().collect();
        counters.sort();
        for (event, n) in counters {
            o.sample(STEERING, &[("event", event)], n);
        }
    }
    o.family(BUILD_INFO, "gauge", "Build information.");
    o.sample(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.0
}

/// One endpoint in `/endpoints`.
#[derive(Debug, Serialize)]
pub struct EndpointView {
    address: String,
    /// Its backend (`default` for a service's own `endpoints`).
    backend: String,
    weight: u32,
    state: EndpointState,
    /// Seconds until an ejection ends (ejected only).
    ejected_for_seconds: Option<f64>,
    times_ejected: u32,
    consecutive_failures: u32,
}

/// One service in `/endpoints`.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    service: String,
    vip: String,
    panic: bool,
    healthy: u32,
    endpoints: Vec<EndpointView>,
    requests: u64,
    p50_seconds: f64,
    p99_seconds: f64,
}

/// The per-service endpoint state for `/endpoints`.
pub fn endpoints_view(control: &Control) -> Vec<ServiceView> {
    let snapshot = control.shared.snapshot.load_full();
    let stats = merged(control);
    let now_ms = control.shared.now_ms();
    snapshot
        .config
        .services
        .iter()
        .zip(&snapshot.services)
        .map(|(cfg, shared)| {
            let eligibility: Vec<_> = shared.backends.iter().map(|b| b.health.eligibility()).collect();
            let s = stats.get(&cfg.name);
            ServiceView {
                service: cfg.name.clone(),
                vip: cfg.vip.to_string(),
                panic: eligibility.iter().any(|e| e.panic),
                healthy: eligibility.iter().map(|e| e.healthy_count).sum(),
                endpoints: shared
                    .backends
                    .iter()
                    .flat_map(|b| b.health.snapshot(now_ms).into_iter().zip(&*b.endpoints).map(move |(h, e)| (b, h, e)))
                    .map(|(b, h, e)| EndpointView {
                        address: h.address.to_string(),
                        backend: b.name.to_string(),
                        weight: e.weight,
                        state: h.state,
                        ejected_for_seconds: match (h.state, h.ejected_until_ms) {
                            (EndpointState::Ejected, Some(until)) => Some(until.saturating_sub(now_ms) as f64 / 1000.0),
                            _ => None,
                        },
                        times_ejected: h.times_ejected,
                        consecutive_failures: h.consecutive_failures,
                    })
                    .collect(),
                requests: s.map_or(0, |s| s.requests()),
                p50_seconds: s.map_or(0.0, |s| s.quantile(0.5).as_secs_f64()),
                p99_seconds: s.map_or(0.0, |s| s.quantile(0.99).as_secs_f64()),
            }
        })
        .collect()
}
