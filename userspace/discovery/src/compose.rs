//! The config weir publishes: the file's config with the discovered services beside its own.
//! A clash is an error of the file entry, never a crash: a file `[[service]]` whose name, VIP
//! or `listen` is also a discovered service's name or VIP is left out (the discovered service
//! is served, as the cluster says) and named in a conflict message. Two discovered services
//! with one VIP (a ClusterIP reused while the old Service's deletion is still on its way) keep
//! the first by name. Must not: change a file service it keeps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use weir_core::config::{Config, ServiceConfig};

/// A config to publish, and what was left out of it.
#[derive(Debug, Clone)]
pub struct Composed {
    /// The file's config, its clashing services left out, then the discovered services.
    pub config: Config,
    /// One message per service left out.
    pub conflicts: Vec<String>,
}

/// The file's config (`file`, as validated) with `discovered` added. Services are shared, not
/// copied: the composed config holds the very `Arc`s it was given.
pub fn compose(file: &Config, discovered: &[Arc<ServiceConfig>]) -> Composed {
    let mut conflicts = Vec::new();
    let mut names: HashMap<&str, &str> = HashMap::with_capacity(discovered.len());
    let mut vips: HashMap<SocketAddr, &str> = HashMap::with_capacity(discovered.len());
    let reserved = [file.proxy.listen, file.admin.listen];
    let mut kept: Vec<&Arc<ServiceConfig>> = Vec::with_capacity(discovered.len());
    for d in discovered {
        if let Some(v) = d.vips().find(|v| reserved.contains(v)) {
            conflicts.push(format!(
                "discovered service {:?} is not served: its VIP {v} is weir's own listen address",
                d.name
            ));
            continue;
        }
        if let Some((v, other)) = d.vips().find_map(|v| vips.get(&v).map(|o| (v, *o))) {
            conflicts.push(format!(
                "discovered service {:?} is not served: its VIP {v} is also {other:?}'s (a Service being replaced?)",
                d.name
            ));
            continue;
        }
        names.insert(&d.name, &d.name);
        for v in d.vips() {
            vips.insert(v, &d.name);
        }
        kept.push(d);
    }
    let mut services = Vec::with_capacity(file.services.len() + kept.len());
    for (i, s) in file.services.iter().enumerate() {
        let clash = if names.contains_key(s.name.as_str()) {
            Some("its name is a discovered Kubernetes service's".to_string())
        } else if let Some(other) = vips.get(&s.vip) {
            Some(format!("its vip {} is discovered Kubernetes service {other:?}'s", s.vip))
        } else {
            s.listen
                .and_then(|l| vips.get(&l))
                .map(|other| format!("its listen address is discovered Kubernetes service {other:?}'s VIP"))
        };
        match clash {
            Some(why) => conflicts.push(format!(
                "service[{i}] {:?} of the config file is not served: {why}; the discovered service is served instead (rename it or change its vip)",
                s.name
            )),
            None => services.push(s.clone()),
        }
    }
    services.extend(kept.into_iter().cloned());
    let config = Config {
        proxy: file.proxy.clone(),
        admin: file.admin.clone(),
        steering: file.steering.clone(),
        access_log: file.access_log.clone(),
        kubernetes: file.kubernetes.clone(),
        tracing: file.tracing.clone(),
        metrics: file.metrics.clone(),
        services,
    };
    Composed { config, conflicts }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn discovered(name: &str, vip: &str) -> Arc<ServiceConfig> {
        Arc::new(ServiceConfig { name: name.into(), vip: vip.parse().expect("vip"), ..ServiceConfig::defaults() })
    }

    #[test]
    fn a_file_service_that_clashes_is_left_out_and_named() {
        let file = Config::parse(
            "[[service]]\nname = \"keep\"\nvip = \"127.10.0.1:80\"\n\
             [[service]]\nname = \"web.shop\"\nvip = \"127.10.0.2:80\"\n\
             [[service]]\nname = \"other\"\nvip = \"127.10.9.9:80\"\n",
            Path::new("t"),
        )
        .expect("valid");
        let d = [discovered("web.shop", "127.10.5.5:80"), discovered("api.shop", "127.10.9.9:80")];
        let c = compose(&file, &d);
        let names: Vec<&str> = c.config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["keep", "web.shop", "api.shop"]);
        assert_eq!(c.config.services[1].vip, d[0].vip, "the discovered web.shop is served");
        assert_eq!(c.conflicts.len(), 2, "{:?}", c.conflicts);
        assert!(
            c.conflicts[0].contains("service[1] \"web.shop\" of the config file is not served"),
            "{:?}",
            c.conflicts
        );
        assert!(c.conflicts[1].contains("its vip 127.10.9.9:80 is discovered Kubernetes service \"api.shop\"'s"));
    }

    #[test]
    fn two_discovered_services_with_one_vip_keep_the_first() {
        let file = Config::parse("", Path::new("t")).expect("valid");
        let c = compose(&file, &[discovered("a.x", "127.10.0.1:80"), discovered("b.x", "127.10.0.1:80")]);
        assert_eq!(c.config.services.len(), 1);
        assert!(c.conflicts[0].contains("\"b.x\" is not served"), "{:?}", c.conflicts);
    }
}
