//! API objects to records, at once, as each arrives: the Service and EndpointSlice fields weir
//! routes on and nothing else. Owns the per-object rules: which Services are skipped (headless,
//! ExternalName, another proxy's, `default/kubernetes`, excluded namespaces), a port's protocol
//! (`appProtocol`, then the name's prefix, then the default: HTTP/1.1, HTTP/2, gRPC or TCP), an endpoint's conditions (missing
//! ready means ready), and which node and zones it is for. Must not: combine objects (that is
//! `cluster`), or keep the object.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use weir_core::config::Protocol;

use crate::annotations::{self, Rejected};
use crate::record::{EndpointRecord, ObjectKey, PortRecord, ServiceRecord, Skip, SliceRecord, key};

/// The label that names a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label of Services another service proxy serves (kube-proxy skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// What conversion needs to know about this node and the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name (`[kubernetes] node_name` or `NODE_NAME`); `None`: unknown, so no
    /// endpoint counts as local.
    pub node_name: Option<String>,
    /// Namespaces never served.
    pub exclude_namespaces: Vec<String>,
    /// A port's protocol when neither `appProtocol` nor its name says.
    pub default_protocol: Protocol,
}

/// A Service as a record, with the annotations that were not applied.
pub fn service(svc: &Service, settings: &Settings) -> Option<(ObjectKey, ServiceRecord, Vec<Rejected>)> {
    let namespace = svc.metadata.namespace.as_deref()?;
    let name = svc.metadata.name.as_deref()?;
    let spec = svc.spec.as_ref();
    let labels = svc.metadata.labels.as_ref();
    let cluster_ips: Vec<IpAddr> = match spec.and_then(|s| s.cluster_ips.as_ref()) {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        _ => spec.and_then(|s| s.cluster_ip.as_deref()).and_then(|ip| ip.parse().ok()).into_iter().collect(),
    };
    let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    let ports: Vec<PortRecord> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
            let name = p.name.clone().unwrap_or_default();
            let protocol = protocol(p.app_protocol.as_deref(), &name, settings.default_protocol);
            Some(PortRecord { name: name.into(), port, protocol })
        })
        .collect();
    let skip = if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        Some(Skip::ExternalName)
    } else if headless || cluster_ips.is_empty() {
        Some(Skip::Headless)
    } else if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        Some(Skip::OtherProxy)
    } else if namespace == "default" && name == "kubernetes" {
        Some(Skip::ApiServer)
    } else if settings.exclude_namespaces.iter().any(|n| n == namespace) {
        Some(Skip::ExcludedNamespace)
    } else if ports.is_empty() {
        Some(Skip::NoTcpPort)
    } else {
        None
    };
    let empty = BTreeMap::new();
    let (policy, rejected) = match skip {
        None => annotations::policy(svc.metadata.annotations.as_ref().unwrap_or(&empty)),
        Some(_) => (None, Vec::new()),
    };
    let local_only = spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local");
    let record = match skip {
        // A skipped Service keeps only why, so its slices resolve to nothing.
        Some(_) => ServiceRecord {
            namespace: namespace.into(),
            name: name.into(),
            skip,
            cluster_ips: Vec::new(),
            ports: Vec::new(),
            local_only: false,
            policy: None,
        },
        None => ServiceRecord {
            namespace: namespace.into(),
            name: name.into(),
            skip,
            cluster_ips,
            ports,
            local_only,
            policy,
        },
    };
    Some((key(namespace, name), record, rejected))
}

/// A port's protocol: `appProtocol`, else the port name's protocol prefix (Istio's
/// `PROTOCOL[-SUFFIX]` convention), else `default`.
///
/// | | HTTP/1.1 | HTTP/2 (h2c) | gRPC | TCP |
/// |---|---|---|---|---|
/// | `appProtocol` | `http` | `kubernetes.io/h2c`, `h2c`, `http2` | `grpc` | `tcp` and any other |
/// | port name | `http`, `http-…`, `grpc-web…` | `http2`, `h2c` (and `-…`) | `grpc`, `grpc-…` | `tcp`, `tcp-…` |
///
/// Any other `appProtocol` (`https`, `kubernetes.io/ws`, `mysql`, …) is relayed byte for byte:
/// weir cannot speak it, and a relay is always safe. gRPC-Web is HTTP to weir (its clients
/// speak HTTP/1.1 or HTTP/2 with gRPC-Web bodies, not gRPC's framing).
pub fn protocol(app_protocol: Option<&str>, port_name: &str, default: Protocol) -> Protocol {
    if let Some(app) = app_protocol {
        return match app.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "kubernetes.io/h2c" | "h2c" | "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            _ => Protocol::Tcp,
        };
    }
    if port_name == "grpc-web" || port_name.starts_with("grpc-web-") {
        return Protocol::Http;
    }
    match port_name.split('-').next().unwrap_or_default() {
        "http" => Protocol::Http,
        "http2" | "h2c" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "tcp" => Protocol::Tcp,
        _ => default,
    }
}

/// An EndpointSlice as a record, keyed by its own `namespace/name`; `None` for a slice that
/// names no Service.
pub fn slice(slice: &EndpointSlice, settings: &Settings) -> Option<(ObjectKey, SliceRecord)> {
    let namespace = slice.metadata.namespace.as_deref()?;
    let name = slice.metadata.name.as_deref()?;
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        // FQDN slices (deprecated) carry no address weir can dial.
        return Some((
            key(namespace, name),
            SliceRecord { service: key(namespace, service), ports: vec![], endpoints: vec![] },
        ));
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some((p.name.clone().unwrap_or_default().into(), u16::try_from(p.port?).ok().filter(|p| *p != 0)?))
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let addr: IpAddr = e.addresses.first()?.parse().ok()?;
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = settings.node_name.is_some() && e.node_name.as_deref() == settings.node_name.as_deref();
            let zones = e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .filter(|z| !z.is_empty())
                .map(|z| z.iter().map(|z| Box::from(z.name.as_str())).collect());
            Some(EndpointRecord { addr, ready, serving, terminating, local, zones })
        })
        .collect();
    Some((key(namespace, name), SliceRecord { service: key(namespace, service), ports, endpoints }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            node_name: Some("node-a".into()),
            exclude_namespaces: vec!["kube-system".into()],
            default_protocol: Protocol::Tcp,
        }
    }

    /// A kubectl-printed fixture (tests/fixtures/kubernetes), with a cluster IP as the API
    /// server would have allocated.
    fn kubectl_service(json: &str, cluster_ip: Option<&str>) -> Service {
        let mut v: serde_json::Value = serde_json::from_str(json).expect("fixture JSON");
        if let Some(ip) = cluster_ip {
            v["spec"]["clusterIP"] = serde_json::json!(ip);
        }
        serde_json::from_value(v).expect("a Service")
    }

    #[test]
    fn kubectl_fixtures_convert_as_kube_proxy_would_serve_them() {
        let f = |name: &str| {
            std::fs::read_to_string(format!("{}/../../tests/fixtures/kubernetes/{name}", env!("CARGO_MANIFEST_DIR")))
                .expect("fixture")
        };
        let s = settings();
        let (key, web, rejected) =
            service(&kubectl_service(&f("service-clusterip.json"), Some("127.10.0.1")), &s).expect("web");
        assert_eq!((&*key, web.skip, web.ports.len(), rejected.len()), ("shop/web", None, 1, 0));
        assert_eq!(web.ports[0].protocol, Protocol::Tcp, "port name 80-8080: the default protocol");
        let (_, two, _) = service(&kubectl_service(&f("service-two-ports.json"), Some("127.10.0.2")), &s).expect("api");
        assert_eq!(two.ports.iter().map(|p| p.port).collect::<Vec<_>>(), [80, 9090]);
        let (_, edge, _) =
            service(&kubectl_service(&f("service-nodeport.json"), Some("127.10.0.3")), &s).expect("edge");
        assert_eq!(edge.skip, None, "a NodePort Service is served on its ClusterIP");
        let (_, db, _) = service(&kubectl_service(&f("service-headless.json"), None), &s).expect("db");
        assert_eq!(db.skip, Some(Skip::Headless));
        let (_, ext, _) = service(&kubectl_service(&f("service-externalname.json"), None), &s).expect("ext");
        assert_eq!(ext.skip, Some(Skip::ExternalName));
        let es: EndpointSlice = serde_json::from_str(&f("endpointslice.json")).expect("a slice");
        let (key, rec) = slice(&es, &s).expect("slice");
        assert_eq!((&*key, &*rec.service), ("shop/web-x7k2p", "shop/web"));
        assert_eq!(rec.ports, [("80-8080".into(), 8080)]);
        let e = &rec.endpoints[0];
        assert_eq!(
            (e.addr.to_string(), e.ready, e.serving, e.terminating, e.local),
            ("10.244.1.7".into(), true, true, false, true)
        );
    }

    #[test]
    fn a_services_ports_get_their_protocols_from_app_protocol_and_names() {
        let mut v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "{}/../../tests/fixtures/kubernetes/service-two-ports.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("fixture"),
        )
        .expect("JSON");
        v["spec"]["clusterIP"] = serde_json::json!("127.10.0.9");
        v["spec"]["ports"] = serde_json::json!([
            {"name": "api", "port": 50051, "protocol": "TCP", "appProtocol": "grpc"},
            {"name": "h2c-internal", "port": 8081, "protocol": "TCP"},
            {"name": "web", "port": 80, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
            {"name": "grpc-health", "port": 8082, "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "protocol": "TCP"},
        ]);
        let svc: Service = serde_json::from_value(v).expect("a Service");
        let (_, rec, _) = service(&svc, &settings()).expect("converts");
        let got: Vec<(&str, Protocol)> = rec.ports.iter().map(|p| (&*p.name, p.protocol)).collect();
        assert_eq!(
            got,
            [
                ("api", Protocol::Grpc),
                ("h2c-internal", Protocol::Http2),
                ("web", Protocol::Http2),
                ("grpc-health", Protocol::Grpc),
                ("metrics", Protocol::Tcp),
            ]
        );
    }

    #[test]
    fn the_protocol_comes_from_app_protocol_then_the_name_then_the_default() {
        let d = Protocol::Tcp;
        assert_eq!(protocol(Some("http"), "tcp-x", d), Protocol::Http);
        assert_eq!(protocol(Some("HTTP"), "", d), Protocol::Http);
        assert_eq!(protocol(Some("kubernetes.io/h2c"), "http", d), Protocol::Http2);
        assert_eq!(protocol(Some("h2c"), "", d), Protocol::Http2);
        assert_eq!(protocol(Some("http2"), "tcp", d), Protocol::Http2);
        assert_eq!(protocol(Some("grpc"), "", d), Protocol::Grpc);
        assert_eq!(protocol(Some("tcp"), "http", Protocol::Http), Protocol::Tcp);
        for other in ["https", "kubernetes.io/ws", "kubernetes.io/wss", "mysql", "grpc-web"] {
            assert_eq!(protocol(Some(other), "http", Protocol::Http), Protocol::Tcp, "appProtocol {other}");
        }
        assert_eq!(protocol(None, "http-web", d), Protocol::Http);
        assert_eq!(protocol(None, "http", d), Protocol::Http);
        assert_eq!(protocol(None, "http2", d), Protocol::Http2);
        assert_eq!(protocol(None, "http2-api", d), Protocol::Http2);
        assert_eq!(protocol(None, "h2c", d), Protocol::Http2);
        assert_eq!(protocol(None, "grpc", d), Protocol::Grpc);
        assert_eq!(protocol(None, "grpc-api", Protocol::Http), Protocol::Grpc);
        assert_eq!(protocol(None, "grpc-web", d), Protocol::Http);
        assert_eq!(protocol(None, "grpc-web-ui", d), Protocol::Http);
        assert_eq!(protocol(None, "grpcx", d), Protocol::Tcp);
        assert_eq!(protocol(None, "tcp-db", Protocol::Http), Protocol::Tcp);
        assert_eq!(protocol(None, "web", d), Protocol::Tcp);
        assert_eq!(protocol(None, "web", Protocol::Grpc), Protocol::Grpc);
        assert_eq!(protocol(None, "httpx", d), Protocol::Tcp);
    }
}
