//! The traffic-policy families of `/metrics`: RED per route and backend (services with
//! `[[service.route]]` only; labels `route`, the route's index, and `backend`, a configured
//! name: bounded by the config), faults injected, and active health-check results.

use weir_core::stats::{FaultKind, Merged};

use super::Out;
use super::names::*;
use crate::app::Control;

pub(super) fn render(o: &mut Out, stats: &Merged, control: &Control) {
    o.family(ROUTE_REQUESTS, "counter", "Requests by route (its index in the service's [[service.route]] list), backend and status code (\"none\" when no status was sent).");
    for (name, s) in stats.services() {
        for r in s.routes() {
            let route = r.route.to_string();
            for (code, n) in r.codes() {
                let code = if code == 0 { "none".to_string() } else { code.to_string() };
                o.sample(
                    ROUTE_REQUESTS,
                    &[("service", name), ("route", &route), ("backend", &r.backend), ("code", &code)],
                    n,
                );
            }
        }
    }
    o.family(
        ROUTE_ERRORS,
        "counter",
        "Requests of a route weir answered itself, or whose response the endpoint cut, by reason.",
    );
    for (name, s) in stats.services() {
        for r in s.routes() {
            let route = r.route.to_string();
            for (reason, n) in weir_core::outcome::ErrorReason::ALL.iter().zip(r.errors) {
                if n > 0 {
                    o.sample(
                        ROUTE_ERRORS,
                        &[("service", name), ("route", &route), ("backend", &r.backend), ("reason", reason.as_str())],
                        n,
                    );
                }
            }
        }
    }
    o.family(ROUTE_DURATION, "histogram", "Time from request head to the end of the response, by route and backend.");
    for (name, s) in stats.services() {
        for r in s.routes() {
            let route = r.route.to_string();
            let labels: [(&str, &str); 3] = [("service", name), ("route", &route), ("backend", &r.backend)];
            for (le, n) in r.cumulative_buckets() {
                let le = if le.is_infinite() { "+Inf".to_string() } else { format!("{le}") };
                o.sample(&format!("{ROUTE_DURATION}_bucket"), &[labels[0], labels[1], labels[2], ("le", &le)], n);
            }
            o.sample(&format!("{ROUTE_DURATION}_sum"), &labels, r.duration_sum_ns as f64 / 1e9);
            o.sample(&format!("{ROUTE_DURATION}_count"), &labels, r.duration_count);
        }
    }
    o.family(
        FAULTS,
        "counter",
        "Faults a route injected, by kind (abort: answered by weir with abort_status; delay: held for delay_ms).",
    );
    for (name, s) in stats.services() {
        for r in s.routes() {
            let route = r.route.to_string();
            for kind in FaultKind::ALL {
                let n = r.faults[kind as usize];
                if n > 0 {
                    o.sample(
                        FAULTS,
                        &[("service", name), ("route", &route), ("backend", &r.backend), ("kind", kind.as_str())],
                        n,
                    );
                }
            }
        }
    }
    o.family(HEALTH_CHECKS, "counter", "Active health checks by service, backend and result (pass, fail).");
    for (service, backend, passed, failed) in control.health.counts.all() {
        o.sample(HEALTH_CHECKS, &[("service", &service), ("backend", &backend), ("result", "pass")], passed);
        o.sample(HEALTH_CHECKS, &[("service", &service), ("backend", &backend), ("result", "fail")], failed);
    }
}
