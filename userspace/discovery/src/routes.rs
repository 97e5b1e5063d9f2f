//! The HTTPRoutes attached to one port of a Service, as that weir service's backends and
//! routes. Routes on one parent are merged as Gateway API says: every match of every rule
//! becomes a weir route, sorted by match precedence ([`Precedence`]: exact path, then regex,
//! then the longest prefix; then method; then most header matches; then most query matches),
//! ties broken by the oldest route (`creationTimestamp`), then `namespace/name`, then rule and
//! match order. weir takes the first route that matches, so this order is the precedence.
//! Each backend Service port referenced is one named backend whose endpoints are that
//! Service's (the caller's `endpoints_of`). Must not: do I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_core::config::{BackendConfig, EndpointConfig, FaultConfig, RouteConfig, RouteRetry, RouteTimeouts};

use crate::gateway::{Precedence, RouteRecord};
use crate::record::{ObjectKey, PortRecord};

/// The backend a rule sends to when it has no backend with a weight: it has no endpoints, so
/// its requests get weir's no-endpoint answer (Gateway API says 500).
pub const NO_BACKEND: &str = "no-backend";

/// Whether `route` attaches to `port` of `svc` (`svc_key`).
pub fn attaches(route: &RouteRecord, svc_key: &ObjectKey, port: &PortRecord) -> bool {
    route.parents.iter().any(|p| {
        p.service == *svc_key
            && p.port.is_none_or(|n| n == port.port)
            && p.section.as_deref().is_none_or(|s| s == &*port.name)
    })
}

/// The backends and routes of one Service `port` from `routes` (each attached to it), or `None`
/// when no rule is served (the service stays a plain one). `endpoints_of(service, port)`: the
/// endpoints a backend Service port balances over.
pub fn attach<'a>(
    port: &PortRecord,
    routes: impl Iterator<Item = &'a RouteRecord>,
    mut endpoints_of: impl FnMut(&ObjectKey, u16) -> Vec<EndpointConfig>,
) -> Option<(Vec<BackendConfig>, Vec<RouteConfig>)> {
    if !port.protocol.is_http() {
        return None;
    }
    let mut routes: Vec<&RouteRecord> = routes.collect();
    routes.sort_by(|a, b| (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name)));
    let mut backends: Vec<BackendConfig> = Vec::new();
    let mut ordered: Vec<(Precedence, RouteConfig)> = Vec::new();
    for route in routes {
        for rule in &route.rules {
            let mut split: BTreeMap<String, u32> = BTreeMap::new();
            for b in &rule.backends {
                if !backends.iter().any(|have| *have.name == *b.name) {
                    let endpoints = b.service.as_ref().map(|s| endpoints_of(s, b.port)).unwrap_or_default();
                    backends.push(BackendConfig { name: b.name.to_string(), endpoints });
                }
                *split.entry(b.name.to_string()).or_default() += b.weight;
            }
            if split.values().all(|w| *w == 0) {
                if !backends.iter().any(|have| have.name == NO_BACKEND) {
                    backends.push(BackendConfig { name: NO_BACKEND.into(), endpoints: Vec::new() });
                }
                split = BTreeMap::from([(NO_BACKEND.to_string(), 1)]);
            }
            for (prec, matcher) in &rule.matches {
                ordered.push((
                    *prec,
                    RouteConfig {
                        matcher: matcher.clone(),
                        backends: split.clone(),
                        timeouts: RouteTimeouts { request: rule.request_timeout, attempt: rule.attempt_timeout },
                        retry: RouteRetry::default(),
                        request_headers: rule.headers.clone(),
                        fault: FaultConfig {
                            abort_percent: 0.0,
                            abort_status: 503,
                            delay_percent: 0.0,
                            delay: Duration::ZERO,
                        },
                    },
                ));
            }
        }
    }
    if ordered.is_empty() {
        return None;
    }
    // Stable: equal precedence keeps route, rule and match order.
    ordered.sort_by_key(|r| std::cmp::Reverse(r.0));
    Some((backends, ordered.into_iter().map(|(_, r)| r).collect()))
}
