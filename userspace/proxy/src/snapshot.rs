//! The immutable snapshot workers run on: a validated config plus what is derived from it once
//! per publication: route tables (VIP, Host) and, per service, its policies precomputed (retry,
//! budget, outlier, per-worker limits) and the state all cores share (outlier health). Built
//! where a config is loaded (at start, or on a reload from the signal loop or the file watcher),
//! published with one atomic swap, read by workers without locks. Must not: change after
//! publication; anything a worker mutates lives in its own `WorkerState`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weir_core::config::{Config, ServiceConfig};
use weir_core::outlier::ServiceHealth;
use weir_core::retry::{BudgetPolicy, RetryPolicy};

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
    by_vip: HashMap<SocketAddr, usize>,
    by_host: HashMap<String, usize>,
    by_name: HashMap<Arc<str>, usize>,
}

/// What a snapshot derives for one service, once, instead of per request.
#[derive(Debug)]
pub struct Service {
    /// The service name (the `service` label).
    pub name: Arc<str>,
    /// Outlier detection, shared by all workers; carried across reloads for endpoints that stay.
    pub health: Arc<ServiceHealth>,
    /// Retry policy (`[service.retry]` + the attempt timeout).
    pub retry: RetryPolicy,
    /// Retry budget policy.
    pub budget: BudgetPolicy,
    /// This worker's share of `max_pending_requests` (each worker gets the same share).
    pub max_pending_per_worker: u32,
    /// Idle pooled connections kept per endpoint per worker.
    pub max_idle_per_endpoint: usize,
}

impl Service {
    fn new(cfg: &ServiceConfig, workers: usize, previous: Option<&Service>) -> Service {
        let addrs: Vec<SocketAddr> = cfg.endpoints.iter().map(|e| e.addr).collect();
        let policy = cfg.outlier_policy();
        let health = match previous {
            Some(old) => ServiceHealth::carry_over(&old.health, policy, &addrs),
            None => ServiceHealth::new(policy, &addrs),
        };
        Service {
            name: Arc::from(cfg.name.as_str()),
            health: Arc::new(health),
            retry: cfg.retry_policy(),
            budget: cfg.budget_policy(),
            max_pending_per_worker: cfg.limits.max_pending_requests.div_ceil(workers.max(1) as u32).max(1),
            max_idle_per_endpoint: cfg.limits.max_idle_per_endpoint as usize,
        }
    }
}

impl Snapshot {
    /// Builds a snapshot incrementally from `previous`: a service whose config is unchanged
    /// keeps its derived state and its config value as they are (the same `Arc`s, so workers
    /// keep their state for it untouched and the duplicate just parsed is freed); a changed one
    /// is derived again, its outlier state carried over by endpoint address (an ejected
    /// endpoint stays ejected across a reload).
    pub fn build(mut config: Config, workers: usize, previous: Option<&Snapshot>) -> Snapshot {
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_vip = HashMap::with_capacity(config.services.len());
        let mut by_host = HashMap::with_capacity(config.services.len() * 4);
        let mut by_name = HashMap::with_capacity(config.services.len());
        for i in 0..config.services.len() {
            let s = &config.services[i];
            let old = previous.and_then(|p| p.service_index(&s.name).map(|j| (p, j)));
            let service = match old {
                Some((p, j)) if Arc::ptr_eq(&p.config.services[j], s) || *p.config.services[j] == **s => {
                    config.services[i] = p.config.services[j].clone();
                    p.services[j].clone()
                }
                Some((p, j)) => Arc::new(Service::new(s, workers, Some(&p.services[j]))),
                None => Arc::new(Service::new(s, workers, None)),
            };
            let s = &config.services[i];
            by_name.insert(service.name.clone(), i);
            services.push(service);
            by_vip.insert(s.vip, i);
            if let Some(l) = s.listen {
                by_vip.insert(l, i);
            }
            // Host header forms a client dialing the proxy directly may use.
            by_host.insert(s.name.clone(), i);
            by_host.insert(format!("{}:{}", s.name, s.vip.port()), i);
            by_host.insert(s.vip.to_string(), i);
            if s.vip.port() == 80 {
                by_host.insert(host_ip(s.vip.ip()), i);
            }
            // A discovered service's further VIPs (dual stack) and Host names.
            for v in &s.aliases.vips {
                by_vip.insert(*v, i);
                by_host.insert(v.to_string(), i);
            }
            for h in &s.aliases.hosts {
                by_host.insert(h.clone(), i);
            }
        }
        Snapshot {
            config: Arc::new(config),
            generation: previous.map_or(1, |p| p.generation + 1),
            workers,
            services,
            by_vip,
            by_host,
            by_name,
        }
    }

    /// The service whose VIP (or dedicated listen address) is `addr`.
    pub fn by_vip(&self, addr: SocketAddr) -> Option<usize> {
        self.by_vip.get(&addr).copied()
    }

    /// The service a `Host` header names: `name`, `name:port`, `vip:port`, or the VIP alone
    /// for port 80. Case-insensitive.
    pub fn by_host(&self, host: &[u8]) -> Option<usize> {
        let host = std::str::from_utf8(host).ok()?.trim();
        if let Some(&i) = self.by_host.get(host) {
            return Some(i);
        }
        self.by_host.get(&host.to_ascii_lowercase()).copied()
    }

    /// Index of the service named `name`.
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
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
    fn policies_are_precomputed_and_health_carried_across_a_rebuild() {
        let one = "[[service]]\nname = \"a\"\nvip = \"127.10.1.2:80\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
                   [service.retry]\nattempts = 5\n[service.limits]\nmax_pending_requests = 9\n";
        let s1 = Snapshot::build(config(one), 2, None);
        let svc = &s1.services[0];
        assert_eq!((svc.retry.attempts, svc.max_pending_per_worker), (5, 5));
        let s2 = Snapshot::build(config(one), 2, Some(&s1));
        assert_eq!(s2.generation, 2);
        assert_eq!(s2.services[0].health.addresses(), s1.services[0].health.addresses());
    }
}
