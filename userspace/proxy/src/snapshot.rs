//! The immutable snapshot workers run on: a validated config plus what is derived from it once
//! per publication: route tables (VIP, Host, name) and, per service, its policies precomputed
//! (retry, budget, outlier, per-worker limits), its `Host` forms, its backends with the state
//! all cores share (outlier and health-check state, per backend), its routes (matches, splits,
//! per-route retry policy and timeout, header edits, faults) and its rate limit's shared
//! bucket. Built where a config is loaded (at start, on a reload from the signal loop or the
//! file watcher, or when discovery hands over a change), published with one atomic swap, read
//! by workers without locks. A build costs what changed: unchanged services keep their derived
//! state, and when no service was added, removed, moved or re-addressed (an endpoint change,
//! the common case under Kubernetes churn) the route tables are shared with the previous
//! snapshot. Must not: change after publication; anything a worker mutates lives in its own
//! `WorkerState`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use weir_core::accesslog::Names;
use weir_core::config::{Config, EndpointConfig, FaultConfig, HeaderEdits, ServiceConfig};
use weir_core::outlier::ServiceHealth;
use weir_core::ratelimit::RateLimit;
use weir_core::retry::{BudgetPolicy, RetryPolicy};
use weir_core::route::RouteMatch;

/// One published configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated config.
    pub config: Arc<Config>,
    /// Increases with every published snapshot.
    pub generation: u64,
    /// Worker count (fixed for the life of the process).
    pub workers: usize,
    /// Per-service derived state, index-aligned with `config.services`.
    pub services: Vec<Arc<Service>>,
    /// Shared with the previous snapshot while no route changed.
    routes: Arc<Routes>,
    /// Backend names by access-log id, the same table for every snapshot of the process.
    pub names: Arc<Names>,
}

/// Where a connection or request goes: service indexes by VIP (or dedicated listen address),
/// by `Host` form and by name.
#[derive(Debug, Default)]
struct Routes {
    by_vip: HashMap<SocketAddr, usize>,
    /// Keys are the services' own `Host` forms ([`Service::hosts`]), not copies.
    by_host: HashMap<Arc<str>, usize>,
    by_name: HashMap<Arc<str>, usize>,
}

/// What a snapshot derives for one service, once, instead of per request.
#[derive(Debug)]
pub struct Service {
    /// The service name (the `service` label).
    pub name: Arc<str>,
    /// Its endpoint groups: the named backends, or one made of the service's `endpoints`.
    pub backends: Vec<Backend>,
    /// Its routes, in order; a service without `[[service.route]]` has one that matches
    /// every request and sends it to its one backend.
    pub routes: Vec<Route>,
    /// Routes are configured: requests are routed, and counted and logged per route and
    /// backend.
    pub routed: bool,
    /// The shared side of `[service.rate_limit]`; kept across reloads that do not change it.
    pub rate_limit: Option<Arc<RateLimit>>,
    /// Retry policy (`[service.retry]` + the attempt timeout).
    pub retry: RetryPolicy,
    /// Retry budget policy.
    pub budget: BudgetPolicy,
    /// This worker's share of `max_pending_requests` (each worker gets the same share).
    pub max_pending_per_worker: u32,
    /// Idle pooled connections kept per endpoint per worker.
    pub max_idle_per_endpoint: usize,
    /// `Host` header forms a client dialing the proxy directly may use, in the order they are
    /// entered in the route table: the name, `name:port`, the VIP, its IP alone for port 80,
    /// then a discovered service's further VIPs and names. The first is `name`'s `Arc`.
    hosts: Box<[Arc<str>]>,
}

/// One endpoint group of a service, with its own balancers (per worker), outlier state and
/// panic mode.
#[derive(Debug)]
pub struct Backend {
    /// Its name (`default` for a service's own `endpoints`): the `backend` label.
    pub name: Arc<str>,
    /// Its id in the access log's [`Names`].
    pub log_id: u16,
    /// Its endpoints.
    pub endpoints: Box<[EndpointConfig]>,
    /// Outlier detection and health-check state, shared by all workers; carried across
    /// reloads for endpoints that stay (matched by backend name and address).
    pub health: Arc<ServiceHealth>,
}

/// One route, derived once: what a request that matches it gets.
#[derive(Debug)]
pub struct Route {
    /// Which requests take it.
    pub matcher: RouteMatch,
    /// Weight per backend of the service (index-aligned; 0 for a backend it does not name).
    pub weights: Box<[u32]>,
    /// The service's retry policy with the route's overrides.
    pub retry: RetryPolicy,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Fields set and removed on the way to the endpoint.
    pub edits: HeaderEdits,
    /// Faults injected.
    pub fault: FaultConfig,
}

impl Service {
    fn new(
        cfg: &ServiceConfig,
        workers: usize,
        previous: Option<(&ServiceConfig, &Service)>,
        names: &Names,
    ) -> Service {
        let policy = cfg.outlier_policy();
        let checked = cfg.health_check.is_some();
        let backends: Vec<Backend> = cfg
            .backend_groups()
            .map(|(name, endpoints)| {
                let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
                let old = previous.and_then(|(_, p)| p.backends.iter().find(|b| &*b.name == name));
                let health = match old {
                    Some(old) => ServiceHealth::carry_over(&old.health, policy, &addrs, checked),
                    None if checked => ServiceHealth::new_checked(policy, &addrs),
                    None => ServiceHealth::new(policy, &addrs),
                };
                Backend {
                    name: Arc::from(name),
                    log_id: names.id(name),
                    endpoints: endpoints.into(),
                    health: Arc::new(health),
                }
            })
            .collect();
        let routes = if cfg.routes.is_empty() {
            vec![Route {
                matcher: RouteMatch::default(),
                weights: vec![1; backends.len()].into(),
                retry: cfg.retry_policy(),
                request_timeout: cfg.timeouts.request,
                edits: HeaderEdits::default(),
                fault: FaultConfig { abort_percent: 0.0, abort_status: 503, delay_percent: 0.0, delay: Duration::ZERO },
            }]
        } else {
            cfg.routes
                .iter()
                .map(|r| Route {
                    matcher: r.matcher.clone(),
                    weights: backends
                        .iter()
                        .map(
                            |b| {
                                if cfg.backends.is_empty() { 1 } else { r.backends.get(&*b.name).copied().unwrap_or(0) }
                            },
                        )
                        .collect(),
                    retry: cfg.route_retry_policy(r),
                    request_timeout: cfg.route_request_timeout(r),
                    edits: r.request_headers.clone(),
                    fault: r.fault.clone(),
                })
                .collect()
        };
        let rate_limit = cfg.rate_limit.as_ref().map(|rl| match previous {
            Some((old_cfg, old)) if old_cfg.rate_limit.as_ref() == Some(rl) && old.rate_limit.is_some() => {
                old.rate_limit.clone().unwrap_or_else(|| Arc::new(RateLimit::new(rl, workers)))
            }
            _ => Arc::new(RateLimit::new(rl, workers)),
        });
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let mut hosts: Vec<Arc<str>> = Vec::with_capacity(4 + cfg.aliases.vips.len() + cfg.aliases.hosts.len());
        hosts.push(name.clone());
        hosts.push(Arc::from(format!("{}:{}", cfg.name, cfg.vip.port())));
        hosts.push(Arc::from(cfg.vip.to_string()));
        if cfg.vip.port() == 80 {
            hosts.push(Arc::from(host_ip(cfg.vip.ip())));
        }
        // A discovered service's further VIPs (dual stack) and Host names.
        hosts.extend(cfg.aliases.vips.iter().map(|v| Arc::from(v.to_string())));
        hosts.extend(cfg.aliases.hosts.iter().map(|h| Arc::from(h.as_str())));
        Service {
            name,
            backends,
            routes,
            routed: !cfg.routes.is_empty(),
            rate_limit,
            retry: cfg.retry_policy(),
            budget: cfg.budget_policy(),
            max_pending_per_worker: cfg.limits.max_pending_requests.div_ceil(workers.max(1) as u32).max(1),
            max_idle_per_endpoint: cfg.limits.max_idle_per_endpoint as usize,
            hosts: hosts.into_boxed_slice(),
        }
    }
}

/// Whether `a` and `b` are routed to by exactly the same addresses and names.
fn same_routes(a: &ServiceConfig, b: &ServiceConfig) -> bool {
    a.name == b.name && a.vip == b.vip && a.listen == b.listen && a.aliases == b.aliases
}

impl Routes {
    fn build(config: &Config, services: &[Arc<Service>]) -> Routes {
        let n = services.len();
        let mut r = Routes {
            by_vip: HashMap::with_capacity(n),
            by_host: HashMap::with_capacity(services.iter().map(|s| s.hosts.len()).sum()),
            by_name: HashMap::with_capacity(n),
        };
        for (i, (s, service)) in config.services.iter().zip(services).enumerate() {
            r.by_name.insert(service.name.clone(), i);
            r.by_vip.insert(s.vip, i);
            if let Some(l) = s.listen {
                r.by_vip.insert(l, i);
            }
            for v in &s.aliases.vips {
                r.by_vip.insert(*v, i);
            }
            for h in &service.hosts {
                r.by_host.insert(h.clone(), i);
            }
        }
        r
    }
}

impl Snapshot {
    /// Builds a snapshot incrementally from `previous`: a service whose config is unchanged
    /// keeps its derived state and its config value as they are (the same `Arc`s, so workers
    /// keep their state for it untouched and the duplicate just parsed is freed); a changed one
    /// is derived again, its outlier state carried over by endpoint address (an ejected
    /// endpoint stays ejected across a reload).
    pub fn build(mut config: Config, workers: usize, previous: Option<&Snapshot>) -> Snapshot {
        let names = previous.map_or_else(Arc::default, |p| p.names.clone());
        let mut services = Vec::with_capacity(config.services.len());
        // The route tables can be shared when every service is routed to as in `previous`, at
        // the same index.
        let mut same_routes_as_previous = previous.is_some_and(|p| p.services.len() == config.services.len());
        for i in 0..config.services.len() {
            let s = &config.services[i];
            // The same position first (no hashing: the common case), then by name.
            let old = previous.and_then(|p| match p.config.services.get(i) {
                Some(o) if Arc::ptr_eq(o, s) || o.name == s.name => Some((p, i)),
                _ => p.service_index(&s.name).map(|j| (p, j)),
            });
            let service = match old {
                Some((p, j)) if Arc::ptr_eq(&p.config.services[j], s) || *p.config.services[j] == **s => {
                    config.services[i] = p.config.services[j].clone();
                    p.services[j].clone()
                }
                Some((p, j)) => {
                    Arc::new(Service::new(s, workers, Some((&p.config.services[j], &p.services[j])), &names))
                }
                None => Arc::new(Service::new(s, workers, None, &names)),
            };
            if same_routes_as_previous {
                same_routes_as_previous = match old {
                    Some((p, j)) => j == i && same_routes(&p.config.services[j], &config.services[i]),
                    None => false,
                };
            }
            services.push(service);
        }
        let routes = match previous {
            Some(p) if same_routes_as_previous => p.routes.clone(),
            _ => Arc::new(Routes::build(&config, &services)),
        };
        Snapshot {
            config: Arc::new(config),
            generation: previous.map_or(1, |p| p.generation + 1),
            workers,
            services,
            routes,
            names,
        }
    }

    /// The service whose VIP (or dedicated listen address) is `addr`.
    pub fn by_vip(&self, addr: SocketAddr) -> Option<usize> {
        self.routes.by_vip.get(&addr).copied()
    }

    /// The service a `Host` header names: `name`, `name:port`, `vip:port`, or the VIP alone
    /// for port 80. Case-insensitive.
    pub fn by_host(&self, host: &[u8]) -> Option<usize> {
        let host = std::str::from_utf8(host).ok()?.trim();
        if let Some(&i) = self.routes.by_host.get(host) {
            return Some(i);
        }
        self.routes.by_host.get(host.to_ascii_lowercase().as_str()).copied()
    }

    /// Index of the service named `name`.
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.routes.by_name.get(name).copied()
    }
}

fn host_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service with two backends, two routes (a split), a rate limit and health checks.
    pub(crate) const SHOP: &str = "[[service]]\nname = \"shop\"\nvip = \"127.10.0.5:80\"\n\
        [[service.backend]]\nname = \"stable\"\nendpoints = [\"127.0.0.1:18101\", \"127.0.0.1:18102\"]\n\
        [[service.backend]]\nname = \"canary\"\nendpoints = [\"127.0.0.1:18103\"]\n\
        [[service.route]]\nmatch = { path_prefix = \"/v2/\" }\nbackends = { canary = 1 }\n\
        [service.route.timeouts]\nrequest_ms = 2000\n\
        [[service.route]]\nmatch = { path_prefix = \"/\" }\nbackends = { stable = 90, canary = 10 }\n\
        request_headers = { set = { \"x-weir-route\" = \"default\" }, remove = [\"x-debug\"] }\n\
        [service.rate_limit]\nrequests_per_second = 100\nburst = 50\n\
        [service.health_check]\npath = \"/healthz\"\n";

    fn config(services: &str) -> Config {
        Config::parse(services, std::path::Path::new("test.toml")).expect("valid config")
    }

    #[test]
    fn host_routing_by_name_port_and_vip_case_insensitively() {
        let cfg = config(
            "[[service]]\nname = \"alpha\"\nvip = \"127.10.1.2:80\"\n\
             [[service]]\nname = \"beta\"\nvip = \"127.10.1.3:8080\"\n\
             [[service]]\nname = \"v6\"\nvip = \"[::1]:80\"\n",
        );
        let s = Snapshot::build(cfg, 2, None);
        for (host, want) in [
            ("alpha", Some(0)),
            ("ALPHA", Some(0)),
            ("alpha:80", Some(0)),
            ("127.10.1.2", Some(0)),
            ("127.10.1.2:80", Some(0)),
            (" beta ", Some(1)),
            ("beta:8080", Some(1)),
            ("127.10.1.3:8080", Some(1)),
            ("127.10.1.3", None),
            ("[::1]", Some(2)),
            ("gamma", None),
        ] {
            assert_eq!(s.by_host(host.as_bytes()), want, "Host: {host:?}");
        }
        assert_eq!(s.by_vip("127.10.1.3:8080".parse().expect("addr")), Some(1));
    }

    #[test]
    fn route_tables_are_shared_until_a_route_changes() {
        let two = |a_endpoint: &str, b_vip: &str| {
            config(&format!(
                "[[service]]\nname = \"a\"\nvip = \"127.10.1.2:80\"\nendpoints = [\"{a_endpoint}\"]\n\
                 [[service]]\nname = \"b\"\nvip = \"{b_vip}\"\n"
            ))
        };
        let s1 = Snapshot::build(two("127.0.0.1:1", "127.10.1.3:80"), 2, None);
        // An endpoint change: a's state is derived again, b's kept, the routes shared.
        let s2 = Snapshot::build(two("127.0.0.1:2", "127.10.1.3:80"), 2, Some(&s1));
        assert!(Arc::ptr_eq(&s1.routes, &s2.routes));
        assert!(!Arc::ptr_eq(&s1.services[0], &s2.services[0]) && Arc::ptr_eq(&s1.services[1], &s2.services[1]));
        // A new VIP: the routes are built again.
        let s3 = Snapshot::build(two("127.0.0.1:2", "127.10.1.4:80"), 2, Some(&s2));
        assert!(!Arc::ptr_eq(&s2.routes, &s3.routes));
        assert_eq!((s3.by_vip("127.10.1.4:80".parse().expect("addr")), s3.by_host(b"127.10.1.3")), (Some(1), None));
        // A service added before the others moves them: built again, every index right.
        let mut three = two("127.0.0.1:2", "127.10.1.4:80");
        let first = config("[[service]]\nname = \"z\"\nvip = \"127.10.1.9:80\"\n").services[0].clone();
        three.services.insert(0, first);
        let s4 = Snapshot::build(three, 2, Some(&s3));
        assert_eq!((s4.service_index("z"), s4.service_index("a"), s4.by_host(b"b")), (Some(0), Some(1), Some(2)));
        assert!(Arc::ptr_eq(&s3.services[1], &s4.services[2]), "b moved, and kept its state");
    }

    #[test]
    fn a_discovered_services_aliases_route() {
        let mut cfg = config("[[service]]\nname = \"web.shop\"\nvip = \"127.10.1.2:8080\"\n");
        Arc::make_mut(&mut cfg.services[0]).aliases = weir_core::config::ServiceAliases {
            vips: vec!["[::1]:8080".parse().expect("addr")],
            hosts: vec!["web.shop.svc".into(), "web.shop.svc.cluster.local:8080".into()],
        };
        let s = Snapshot::build(cfg, 2, None);
        for host in ["web.shop", "web.shop:8080", "Web.Shop.Svc", "web.shop.svc.cluster.local:8080", "[::1]:8080"] {
            assert_eq!(s.by_host(host.as_bytes()), Some(0), "Host: {host:?}");
        }
        assert_eq!(s.by_vip("[::1]:8080".parse().expect("addr")), Some(0));
        assert_eq!(s.by_host(b"web.shop.svc.cluster.local"), None);
    }

    #[test]
    fn policies_are_precomputed_and_health_carried_across_a_rebuild() {
        let one = "[[service]]\nname = \"a\"\nvip = \"127.10.1.2:80\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
                   [service.retry]\nattempts = 5\n[service.limits]\nmax_pending_requests = 9\n";
        let s1 = Snapshot::build(config(one), 2, None);
        let svc = &s1.services[0];
        assert_eq!((svc.retry.attempts, svc.max_pending_per_worker), (5, 5));
        let s2 = Snapshot::build(config(one), 2, Some(&s1));
        assert_eq!(s2.generation, 2);
        assert_eq!(s2.services[0].backends[0].health.addresses(), s1.services[0].backends[0].health.addresses());
    }

    #[test]
    fn backends_routes_and_limits_are_derived_and_kept_across_reloads() {
        let shop = SHOP;
        let s1 = Snapshot::build(config(shop), 2, None);
        let svc = &s1.services[0];
        let names: Vec<&str> = svc.backends.iter().map(|b| &*b.name).collect();
        assert_eq!(names, ["stable", "canary"]);
        assert!(svc.routed);
        assert_eq!((&*svc.routes[0].weights, &*svc.routes[1].weights), (&[0, 1][..], &[90, 10][..]));
        assert_eq!(svc.routes[0].request_timeout, Duration::from_secs(2));
        assert_eq!(s1.names.get(svc.backends[1].log_id).as_deref(), Some("canary"));
        assert!(!svc.backends[0].health.is_usable(1), "checked endpoints wait for their first check");
        assert!(svc.backends[0].health.mark_up_first(0));
        // Another split: the service is derived again, its rate limit and health state kept.
        let s2 = Snapshot::build(
            config(&shop.replace("stable = 90, canary = 10", "stable = 50, canary = 50")),
            2,
            Some(&s1),
        );
        let svc2 = &s2.services[0];
        assert!(!Arc::ptr_eq(&s1.services[0], svc2));
        assert_eq!(&*svc2.routes[1].weights, &[50, 50]);
        assert!(Arc::ptr_eq(svc.rate_limit.as_ref().expect("limit"), svc2.rate_limit.as_ref().expect("limit")));
        assert!(!svc2.backends[0].health.is_usable(1), "an unhealthy endpoint stays so");
        assert!(svc2.backends[0].health.is_usable(0), "a checked one stays in");
        assert_eq!(svc2.backends[1].log_id, svc.backends[1].log_id);
        // A plain service: one backend, one route matching everything, nothing routed.
        let plain = Snapshot::build(config("[[service]]\nname = \"p\"\nvip = \"127.10.1.9:80\"\n"), 2, None);
        let p = &plain.services[0];
        assert_eq!((p.backends.len(), p.routes.len(), p.routed, &*p.backends[0].name), (1, 1, false, "default"));
    }
}
