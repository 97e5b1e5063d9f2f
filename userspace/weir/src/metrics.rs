//! `/metrics` (Prometheus text exposition 0.0.4, or OpenMetrics 1.0 with exemplars when the
//! scraper asks for `application/openmetrics-text`) and `/endpoints` (JSON), built at scrape
//! time on the admin thread from the workers' published stats shards, the shared outlier state
//! and the control counters. Owns every metric name and help text. Must not: run on a worker,
//! or emit a label value that is not bounded (services come from config, reasons and codes
//! from fixed sets, `source` from the caller table's at most `max_sources` + 2 names; never
//! paths or client addresses).
//!
//! Written by hand rather than with prometheus-client: that crate's encoder emits OpenMetrics
//! only, while weir serves the classic text format by default (`promtool check metrics`
//! validates it) and OpenMetrics on request (for exemplars: the trace id of a recent sampled
//! request on each latency bucket); both are small and tested here.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::Serialize;
use weir_core::outlier::EndpointState;
use weir_core::stats::{Exemplar, Merged};

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
    pub const SPANS: &str = "weir_spans_total";
    pub const TAKEOVERS: &str = "weir_takeovers_total";
    pub const ROUTE_REQUESTS: &str = "weir_route_requests_total";
    pub const ROUTE_ERRORS: &str = "weir_route_request_errors_total";
    pub const ROUTE_DURATION: &str = "weir_route_request_duration_seconds";
    pub const FAULTS: &str = "weir_faults_injected_total";
    pub const HEALTH_CHECKS: &str = "weir_health_checks_total";
    pub const K8S_SYNCED: &str = "weir_kubernetes_synced";
    pub const K8S_LAST_SYNC: &str = "weir_kubernetes_last_sync_timestamp_seconds";
    pub const K8S_EVENTS: &str = "weir_kubernetes_events_total";
    pub const K8S_RELISTS: &str = "weir_kubernetes_relists_total";
    pub const K8S_SERVICES: &str = "weir_kubernetes_services";
    pub const K8S_ENDPOINTS: &str = "weir_kubernetes_endpoints";
    pub const K8S_ANNOTATION_ERRORS: &str = "weir_kubernetes_annotation_errors_total";
    pub const K8S_CONFLICTS: &str = "weir_kubernetes_file_conflicts";
    pub const K8S_ROUTE_PROBLEMS: &str = "weir_kubernetes_httproute_problems_total";
}

mod policy;

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format's content type.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

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

struct Out {
    text: String,
    /// OpenMetrics rather than 0.0.4.
    om: bool,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // OpenMetrics names a counter family without the `_total` its samples carry.
        let name = if self.om && kind == "counter" { name.strip_suffix("_total").unwrap_or(name) } else { name };
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", label(v));
            }
            self.text.push('}');
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.text, " {value}");
    }

    /// A bucket sample with its exemplar (OpenMetrics only): `# {trace_id="…"} VALUE TIMESTAMP`.
    fn bucket(&mut self, name: &str, labels: &[(&str, &str)], value: u64, exemplar: Option<&Exemplar>) {
        self.text.push_str(name);
        self.labels(labels);
        let _ = write!(self.text, " {value}");
        if let (true, Some(e)) = (self.om, exemplar) {
            let mut id = String::with_capacity(32);
            for b in e.trace_id {
                let _ = write!(id, "{b:02x}");
            }
            let _ = write!(
                self.text,
                " # {{trace_id=\"{id}\"}} {} {}.{:03}",
                e.duration_ns as f64 / 1e9,
                e.unix_ms / 1000,
                e.unix_ms % 1000
            );
        }
        self.text.push('\n');
    }
}

/// The merged stats of every worker, plus those inherited from the weir this one took over:
/// counters continue across a takeover.
pub fn merged(control: &Control) -> Merged {
    let shards: Vec<_> = control.stats.iter().map(|s| s.load_full()).collect();
    let inherited = control.inherited.load().stats(&control.shared.callers.table.load());
    Merged::merge(shards.iter().map(|s| &**s).chain(std::iter::once(&*inherited)))
}

/// Renders `/metrics`: Prometheus text 0.0.4, or OpenMetrics with exemplars when `openmetrics`.
pub fn render(control: &Control, openmetrics: bool) -> String {
    let stats = merged(control);
    let snapshot = control.shared.snapshot.load_full();
    let callers = control.shared.callers.table.load_full();
    let mut o = Out { text: String::with_capacity(16 * 1024), om: openmetrics };
    use names::*;

    o.family(REQUESTS, "counter", "Requests (HTTP) and connections (TCP) handled, by service, caller (source) and status code (\"tcp\" for TCP, \"none\" when no status was sent).");
    for (name, s) in stats.services() {
        let tcp = snapshot
            .service_index(name)
            .is_some_and(|i| snapshot.config.services[i].protocol == weir_core::config::Protocol::Tcp);
        for (slot, src) in s.sources() {
            let source = callers.source_name(slot);
            for (code, n) in src.codes() {
                let code = match code {
                    0 if tcp => "tcp".to_string(),
                    0 => "none".to_string(),
                    c => c.to_string(),
                };
                o.sample(REQUESTS, &[("service", name), ("source", source), ("code", &code)], n);
            }
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
        "Time from request head to the end of the response (HTTP) or connection lifetime (TCP), by service and caller (source).",
    );
    for (name, s) in stats.services() {
        for (slot, src) in s.sources() {
            let source = callers.source_name(slot);
            for (i, (le, n)) in src.cumulative_buckets().into_iter().enumerate() {
                let le = if le.is_infinite() { "+Inf".to_string() } else { format!("{le}") };
                let labels = [("service", &**name), ("source", source), ("le", &le)];
                o.bucket(&format!("{DURATION}_bucket"), &labels, n, src.exemplar(i));
            }
            let labels = [("service", &**name), ("source", source)];
            o.sample(&format!("{DURATION}_sum"), &labels, src.duration_sum_ns as f64 / 1e9);
            o.sample(&format!("{DURATION}_count"), &labels, src.duration_count);
        }
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
    if let Some(k) = &control.kubernetes {
        kubernetes(&mut o, &k.stats);
    }
    let (exported, ring_full, export_failed) = control.exporter.lock().as_ref().map_or((0, 0, 0), |e| e.counts());
    o.family(
        SPANS,
        "counter",
        "Spans of sampled requests: exported to the OTLP collector, or dropped because a worker's span ring was full or the collector failed.",
    );
    o.sample(SPANS, &[("result", "exported")], exported);
    o.sample(SPANS, &[("result", "ring_full")], ring_full);
    o.sample(SPANS, &[("result", "export_failed")], export_failed);
    o.family(BUILD_INFO, "gauge", "Build information.");
    o.sample(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
    if o.om {
        o.text.push_str("# EOF\n");
    }
    o.text
}

/// Discovery's families (only with `[kubernetes] enabled`).
fn kubernetes(o: &mut Out, k: &weir_discovery::Stats) {
    use names::*;
    use weir_discovery::stats::{Kind, Outcome};
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    o.family(
        K8S_SYNCED,
        "gauge",
        "1 once both watches listed and discovered services serve; 0 while weir serves the config file's services only.",
    );
    o.sample(K8S_SYNCED, &[], u8::from(k.synced.load(Ordering::Relaxed)));
    o.family(K8S_LAST_SYNC, "gauge", "Unix time discovery last matched the API server (0: never).");
    o.sample(K8S_LAST_SYNC, &[], n(&k.last_sync_unix));
    o.family(K8S_EVENTS, "counter", "Watch events by kind and result (applied, deleted, ignored, error).");
    for kind in Kind::ALL {
        for outcome in Outcome::ALL {
            o.sample(K8S_EVENTS, &[("kind", kind.as_str()), ("result", outcome.as_str())], k.events(kind, outcome));
        }
    }
    o.family(K8S_RELISTS, "counter", "Lists after the first, by kind (a watch too far behind: 410 Gone).");
    for kind in Kind::ALL {
        o.sample(K8S_RELISTS, &[("kind", kind.as_str())], k.relists(kind));
    }
    o.family(K8S_SERVICES, "gauge", "Services discovered (one per Service port).");
    o.sample(K8S_SERVICES, &[], n(&k.services));
    o.family(K8S_ENDPOINTS, "gauge", "Endpoints in the EndpointSlices known.");
    o.sample(K8S_ENDPOINTS, &[], n(&k.endpoints));
    o.family(K8S_ANNOTATION_ERRORS, "counter", "weir.dev/ annotations not applied (the default stays).");
    o.sample(K8S_ANNOTATION_ERRORS, &[], n(&k.annotation_errors));
    o.family(
        K8S_CONFLICTS,
        "gauge",
        "Config file services not served because a discovered service has their name or VIP.",
    );
    o.sample(K8S_CONFLICTS, &[], n(&k.conflicts));
    o.family(
        K8S_ROUTE_PROBLEMS,
        "counter",
        "HTTPRoute fields ignored, rules skipped and versions not applied (located in /config and the log).",
    );
    o.sample(K8S_ROUTE_PROBLEMS, &[], n(&k.route_problems_total));
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

/// One caller of one service in `/callers`.
#[derive(Debug, Serialize)]
pub struct CallerView {
    /// The `source` label value.
    source: String,
    /// Requests since weir started.
    requests: u64,
    /// Requests per second over the last 10 s.
    rate_per_second: f64,
    /// Failed requests (a 5xx, or no response) since weir started.
    errors: u64,
    /// Failed requests per second over the last 10 s.
    errors_per_second: f64,
    /// Median duration, from the latency buckets (as `histogram_quantile` computes it).
    p50_seconds: Option<f64>,
    /// 99th percentile, likewise.
    p99_seconds: Option<f64>,
}

/// `/callers`: per service, per caller (`source`), rate, errors and p50/p99; then every
/// workload weir knows, with its label and cgroups.
pub fn callers_view(control: &Control) -> serde_json::Value {
    let stats = merged(control);
    let snapshot = control.shared.snapshot.load_full();
    let table = control.shared.callers.table.load_full();
    let identity = control.identity.lock();
    let rates = identity.as_ref().map(|i| i.shared.rates()).unwrap_or_default();
    let mut services = Vec::new();
    for (name, s) in stats.services() {
        let tcp = snapshot
            .service_index(name)
            .is_some_and(|i| snapshot.config.services[i].protocol == weir_core::config::Protocol::Tcp);
        let mut callers: Vec<CallerView> = s
            .sources()
            .map(|(slot, src)| {
                let (rate, err_rate) = rates.get(&(name.clone(), slot)).copied().unwrap_or((0.0, 0.0));
                CallerView {
                    source: table.source_name(slot).to_string(),
                    requests: src.requests(),
                    rate_per_second: rate,
                    errors: src.failures(!tcp),
                    errors_per_second: err_rate,
                    p50_seconds: src.quantile_seconds(0.5),
                    p99_seconds: src.quantile_seconds(0.99),
                }
            })
            .collect();
        callers.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.source.cmp(&b.source)));
        services.push(serde_json::json!({ "service": &**name, "callers": callers }));
    }
    let workloads = identity.as_ref().map(|i| i.shared.workloads.lock().clone()).unwrap_or_default();
    serde_json::json!({
        "max_sources": snapshot.config.metrics.max_sources,
        "named_sources": table.sources.len().saturating_sub(2),
        "rate_window_seconds": crate::identity::RATE_WINDOW.as_secs(),
        "services": services,
        "workloads": workloads,
    })
}
