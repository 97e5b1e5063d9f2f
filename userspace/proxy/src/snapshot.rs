//! The immutable snapshot workers run on: a validated config plus what is derived from it once
//! (route tables) and the per-service state that must be shared by all cores (outlier health).
//! Built by the control thread, published with one atomic swap, read by workers without locks.
//! Must not: change after publication; anything a worker mutates lives in its own `Local`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weir_core::config::{Config, ServiceConfig};
use weir_core::outlier::{OutlierPolicy, ServiceHealth};

/// One published configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated config.
    pub config: Arc<Config>,
    /// Increases with every published snapshot.
    pub generation: u64,
    /// Worker count (fixed for the life of the process).
    pub workers: usize,
    /// Per-service shared state, index-aligned with `config.services`.
    pub services: Vec<ServiceShared>,
    by_vip: HashMap<SocketAddr, usize>,
    by_host: HashMap<String, usize>,
}

/// State of one service that all workers share.
#[derive(Debug)]
pub struct ServiceShared {
    /// Outlier detection; carried across reloads for endpoints that stay.
    pub health: Arc<ServiceHealth>,
}

/// The outlier policy of a service's config.
pub fn outlier_policy(s: &ServiceConfig) -> OutlierPolicy {
    let o = &s.outlier;
    OutlierPolicy {
        enabled: o.enabled,
        consecutive_gateway_failures: o.consecutive_gateway_failures,
        base_ejection_ms: o.base_ejection.as_millis() as u64,
        max_ejection_ms: o.max_ejection.as_millis() as u64,
        max_ejection_percent: o.max_ejection_percent,
        panic_threshold_percent: o.panic_threshold_percent,
        probe_timeout_ms: s.timeouts.request.as_millis() as u64,
        ..OutlierPolicy::default()
    }
}

impl Snapshot {
    /// Builds a snapshot; state of services and endpoints that also exist in `previous` is
    /// carried over (an ejected endpoint stays ejected across a reload).
    pub fn build(config: Config, workers: usize, previous: Option<&Snapshot>, _now_ms: u64) -> Snapshot {
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_vip = HashMap::new();
        let mut by_host = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            let addrs: Vec<SocketAddr> = s.endpoints.iter().map(|e| e.addr).collect();
            let policy = outlier_policy(s);
            let old = previous.and_then(|p| p.service_index(&s.name).map(|j| &p.services[j]));
            let health = match old {
                Some(old) => ServiceHealth::carry_over(&old.health, policy, &addrs),
                None => ServiceHealth::new(policy, &addrs),
            };
            services.push(ServiceShared { health: Arc::new(health) });
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
        }
        Snapshot {
            config: Arc::new(config),
            generation: previous.map_or(1, |p| p.generation + 1),
            workers,
            services,
            by_vip,
            by_host,
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
        self.config.services.iter().position(|s| s.name == name)
    }
}

fn host_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

impl Snapshot {
    /// Index of the service `r` refers to in this snapshot: its own index when `r` was taken
    /// from this snapshot, else found by name (the service may have moved or gone).
    pub(crate) fn service_index_fast(&self, r: &crate::local::ServiceRef) -> Option<usize> {
        if r.generation == self.generation { Some(r.index) } else { self.service_index(&r.name) }
    }
}
