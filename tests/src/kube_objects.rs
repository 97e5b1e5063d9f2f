//! Kubernetes objects for the discovery tests and the test API server, made from the
//! `kubectl`-printed fixtures in tests/fixtures/kubernetes: a Service with the test's name,
//! cluster IPs and ports; an EndpointSlice with the test's endpoints; an HTTPRoute with the
//! test's rules. Must not: be used by
//! product code.

use serde_json::{Value, json};

/// A fixture file of tests/fixtures/kubernetes, parsed.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// A ClusterIP Service (kubectl's `create service clusterip`) with these cluster IPs and
/// `(name, port)` TCP ports.
pub fn service(namespace: &str, name: &str, cluster_ips: &[&str], ports: &[(&str, u16)]) -> Value {
    let mut s = fixture("service-clusterip.json");
    s["metadata"]["namespace"] = json!(namespace);
    s["metadata"]["name"] = json!(name);
    s["metadata"]["labels"] = json!({"app": name});
    s["spec"]["selector"] = json!({"app": name});
    s["spec"]["clusterIP"] = json!(cluster_ips[0]);
    s["spec"]["clusterIPs"] = json!(cluster_ips);
    s["spec"]["ports"] = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "protocol": "TCP", "port": p, "targetPort": p}))
        .collect::<Vec<_>>()
        .into();
    s
}

/// One endpoint of a slice.
#[derive(Debug, Clone)]
pub struct Ep {
    /// Its address.
    pub addr: String,
    /// `conditions` (ready, serving, terminating); `None` leaves `conditions` out.
    pub conditions: Option<(Option<bool>, Option<bool>, Option<bool>)>,
    /// `nodeName`.
    pub node: Option<String>,
    /// `hints.forZones`.
    pub zones: Option<Vec<String>>,
}

impl Ep {
    /// A ready endpoint.
    pub fn ready(addr: &str) -> Ep {
        Ep { addr: addr.into(), conditions: Some((Some(true), Some(true), Some(false))), node: None, zones: None }
    }

    /// A terminating endpoint still serving its in-flight requests.
    pub fn terminating(addr: &str) -> Ep {
        Ep { conditions: Some((Some(false), Some(true), Some(true))), ..Ep::ready(addr) }
    }

    /// An endpoint that is not ready (and not terminating).
    pub fn not_ready(addr: &str) -> Ep {
        Ep { conditions: Some((Some(false), Some(false), Some(false))), ..Ep::ready(addr) }
    }

    /// On node `node`.
    pub fn on(mut self, node: &str) -> Ep {
        self.node = Some(node.into());
        self
    }

    /// With hints for these zones.
    pub fn for_zones(mut self, zones: &[&str]) -> Ep {
        self.zones = Some(zones.iter().map(|z| z.to_string()).collect());
        self
    }
}

/// An EndpointSlice of `service` (the fixture's shape) with `(name, port)` ports.
pub fn slice(namespace: &str, name: &str, service: &str, ports: &[(&str, u16)], endpoints: &[Ep]) -> Value {
    let mut s = fixture("endpointslice.json");
    s["metadata"]["namespace"] = json!(namespace);
    s["metadata"]["name"] = json!(name);
    s["metadata"]["generateName"] = json!(format!("{service}-"));
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(service);
    s["metadata"]["ownerReferences"][0]["name"] = json!(service);
    let v6 = endpoints.first().is_some_and(|e| e.addr.contains(':'));
    s["addressType"] = json!(if v6 { "IPv6" } else { "IPv4" });
    s["ports"] = ports.iter().map(|(n, p)| json!({"name": n, "protocol": "TCP", "port": p})).collect::<Vec<_>>().into();
    s["endpoints"] = endpoints
        .iter()
        .map(|e| {
            let mut v = json!({"addresses": [e.addr]});
            if let Some((r, sv, t)) = e.conditions {
                let mut c = json!({});
                for (k, val) in [("ready", r), ("serving", sv), ("terminating", t)] {
                    if let Some(val) = val {
                        c[k] = json!(val);
                    }
                }
                v["conditions"] = c;
            }
            if let Some(n) = &e.node {
                v["nodeName"] = json!(n);
            }
            if let Some(z) = &e.zones {
                v["hints"] = json!({"forZones": z.iter().map(|z| json!({"name": z})).collect::<Vec<_>>()});
            }
            v
        })
        .collect::<Vec<_>>()
        .into();
    s
}

/// An HTTPRoute (the fixture's shape) in `namespace`, created at `created` (RFC 3339), attached
/// to Service `parent` (port `port`), with these `rules`.
pub fn http_route(namespace: &str, name: &str, created: &str, parent: &str, port: u16, rules: Value) -> Value {
    let mut r = fixture("httproute.json");
    r["metadata"]["namespace"] = json!(namespace);
    r["metadata"]["name"] = json!(name);
    r["metadata"]["creationTimestamp"] = json!(created);
    r["spec"]["parentRefs"] = json!([{"group": "", "kind": "Service", "name": parent, "port": port}]);
    r["spec"]["rules"] = rules;
    r
}
