use serde_json::json;
use weir_core::config::Protocol;

use super::*;
use crate::cluster::{Cluster, RouteApplied};
use crate::record::{EndpointRecord, PortRecord, ServiceRecord, SliceRecord};

fn http_route(name: &str, created: &str, spec: Value) -> HttpRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": name, "creationTimestamp": created},
        "spec": spec,
    }))
    .expect("an HTTPRoute")
}

fn parent() -> Value {
    json!([{"group": "", "kind": "Service", "name": "web", "port": 80}])
}

#[test]
fn a_rule_converts_with_its_matches_backends_headers_and_timeouts() {
    let r = http_route(
        "split",
        "2026-01-01T00:00:00Z",
        json!({
            "parentRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
                {"group": "", "kind": "Service", "name": "web", "port": 80},
                {"group": "core", "kind": "Service", "name": "api"},
            ],
            "rules": [{
                "matches": [
                    {"path": {"type": "PathPrefix", "value": "/v2/"}, "method": "GET",
                     "headers": [{"name": "X-Canary", "value": "yes"}, {"name": "x-canary", "value": "no"}],
                     "queryParams": [{"name": "debug", "value": "1"}]},
                    {"path": {"type": "Exact", "value": "/health"}},
                ],
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Route", "value": "v2"}],
                    "add": [{"name": "X-Added", "value": "a"}],
                    "remove": ["X-Debug"],
                }}],
                "backendRefs": [
                    {"name": "web-v2", "port": 8080, "weight": 90},
                    {"kind": "Service", "name": "web", "port": 80},
                    {"name": "other", "namespace": "elsewhere", "port": 80},
                ],
                "timeouts": {"request": "1m30s", "backendRequest": "500ms"},
                "sessionPersistence": {"sessionName": "s"},
            }],
        }),
    );
    let (key, rec) = route(&r).expect("attached to Services");
    assert_eq!(&*key, "shop/split");
    assert_eq!(
        rec.parents,
        [
            ParentRecord { service: crate::record::key("shop", "web"), port: Some(80), section: None },
            ParentRecord { service: crate::record::key("shop", "api"), port: None, section: None },
        ],
        "the Gateway parent is not weir's"
    );
    assert!(!rec.invalid);
    let rule = &rec.rules[0];
    // PathPrefix /v2/ is /v2 itself and everything under /v2/, with the same precedence.
    let m: Vec<(Option<&str>, Option<&str>)> =
        rule.matches.iter().map(|(_, m)| (m.path_exact.as_deref(), m.path_prefix.as_deref())).collect();
    assert_eq!(m, [(Some("/v2"), None), (None, Some("/v2/")), (Some("/health"), None)]);
    assert_eq!(rule.matches[0].0, rule.matches[1].0);
    let first = &rule.matches[0].1;
    assert_eq!(first.method.as_deref(), Some("GET"));
    assert_eq!(first.headers, [("x-canary".to_string(), "yes".to_string())], "the first of one name counts");
    assert_eq!(first.query, [("debug".to_string(), "1".to_string())]);
    assert_eq!(rule.headers.set, [("x-route".to_string(), "v2".to_string()), ("x-added".to_string(), "a".to_string())]);
    assert_eq!(rule.headers.remove, ["x-debug"]);
    let b: Vec<(Option<&str>, u16, u32, &str)> =
        rule.backends.iter().map(|b| (b.service.as_deref(), b.port, b.weight, &*b.name)).collect();
    assert_eq!(
        b,
        [
            (Some("shop/web-v2"), 8080, 90, "web-v2-8080"),
            (Some("shop/web"), 80, 1, "web-80"),
            (None, 80, 1, "other.elsewhere-80")
        ]
    );
    assert_eq!(rule.request_timeout, Some(Duration::from_secs(90)));
    assert_eq!(rule.attempt_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        rec.problems,
        [
            "HTTPRoute shop/split rule 0: sessionPersistence: not implemented by weir: ignored",
            "HTTPRoute shop/split rule 0: backendRefs[2]: namespace \"elsewhere\": another namespace's Service needs a ReferenceGrant, which weir does not read: its share of requests finds no endpoint",
        ]
    );
}

#[test]
fn unsafe_rules_are_skipped_with_their_location_and_safe_ones_served() {
    let r = http_route(
        "mixed",
        "2026-01-01T00:00:00Z",
        json!({
            "parentRefs": parent(),
            "rules": [
                {"matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9+"}}], "backendRefs": [{"name": "a", "port": 1}]},
                {"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}}}], "backendRefs": [{"name": "a", "port": 1}]},
                {"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": ".*"}]}], "backendRefs": [{"name": "a", "port": 1}]},
                {"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 1}}}], "backendRefs": [{"name": "a", "port": 1}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"}}], "backendRefs": [{"name": "a", "port": 1, "weight": 0}]},
            ],
        }),
    );
    let (_, rec) = route(&r).expect("converts");
    assert!(rec.invalid, "an invalid regex is an invalid value");
    assert_eq!(rec.rules.iter().map(|r| r.index).collect::<Vec<_>>(), [3, 4]);
    let at = [
        "HTTPRoute shop/mixed rule 0: matches[0].path.value: ",
        "HTTPRoute shop/mixed rule 1: filters[0].type: ",
        "HTTPRoute shop/mixed rule 2: matches[0].headers[0].type: ",
        "HTTPRoute shop/mixed rule 3: filters[0]: ",
        "HTTPRoute shop/mixed rule 4: backendRefs: ",
    ];
    assert_eq!(rec.problems.len(), at.len(), "{:#?}", rec.problems);
    for (p, at) in rec.problems.iter().zip(at) {
        assert!(p.starts_with(at), "{p:?} is not located at {at:?}");
    }
    assert!(
        rec.problems[0].contains("is not a valid regex") && rec.problems[0].ends_with("rule skipped"),
        "{}",
        rec.problems[0]
    );
    assert_eq!(rec.rules[1].matches[0].0.path_kind, 1);
}

#[test]
fn gateway_durations() {
    assert_eq!(duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(duration("1h2m3s4ms"), Some(Duration::from_millis(3_723_004)));
    assert_eq!(duration("0s"), Some(Duration::ZERO));
    for bad in ["", "10", "1d", "s", "123456s", "1.5s"] {
        assert_eq!(duration(bad), None, "{bad:?}");
    }
}

fn svc(name: &str, ip: &str, port: u16) -> ServiceRecord {
    ServiceRecord {
        namespace: "shop".into(),
        name: name.into(),
        skip: None,
        cluster_ips: vec![ip.parse().expect("ip")],
        ports: vec![PortRecord { name: "http".into(), port, protocol: Protocol::Http }],
        local_only: false,
        policy: None,
    }
}

fn slice(service: &str, port: u16, addrs: &[&str]) -> SliceRecord {
    SliceRecord {
        service: crate::record::key("shop", service),
        ports: vec![("http".into(), port)],
        endpoints: addrs
            .iter()
            .map(|a| EndpointRecord {
                addr: a.parse().expect("ip"),
                ready: true,
                serving: true,
                terminating: false,
                local: false,
                zones: None,
            })
            .collect(),
    }
}

fn web(c: &Cluster) -> std::sync::Arc<weir_core::config::ServiceConfig> {
    c.services().into_iter().find(|s| s.name == "web.shop").expect("web.shop")
}

#[test]
fn routes_merge_by_precedence_follow_backend_endpoints_and_keep_the_last_good_version() {
    let k = crate::record::key;
    let mut c = Cluster::new();
    c.apply_service(k("shop", "web"), svc("web", "127.10.0.1", 80));
    c.apply_service(k("shop", "web-v2"), svc("web-v2", "127.10.0.2", 80));
    c.apply_slice(k("shop", "web-1"), slice("web", 8080, &["10.0.0.1"]));
    c.apply_slice(k("shop", "web-v2-1"), slice("web-v2", 8080, &["10.0.0.2"]));
    let split = json!({"parentRefs": parent(), "rules": [{"backendRefs": [
        {"name": "web", "port": 80, "weight": 90}, {"name": "web-v2", "port": 80, "weight": 10}]}]});
    let (key_a, a) = route(&http_route("a-split", "2026-01-02T00:00:00Z", split)).expect("a");
    // Older, so its equal-precedence rules come first; its exact match comes first anyway.
    let v2 = json!({"parentRefs": parent(), "rules": [
        {"matches": [{"path": {"value": "/"}}], "backendRefs": [{"name": "web", "port": 80}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v2/"}}], "backendRefs": [{"name": "web-v2", "port": 80}]}]});
    let (key_b, b) = route(&http_route("b-v2", "2026-01-01T00:00:00Z", v2)).expect("b");
    assert_eq!(c.apply_route(key_a.clone(), a), RouteApplied::Applied);
    assert_eq!(c.apply_route(key_b.clone(), b.clone()), RouteApplied::Applied);
    c.resolve();
    let s = web(&c);
    let names: Vec<&str> = s.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["web-80", "web-v2-80"]);
    assert_eq!(s.backends[1].endpoints[0].addr.to_string(), "10.0.0.2:8080");
    assert!(s.endpoints.is_empty());
    type Row<'a> = (Option<&'a str>, Option<&'a str>, Vec<(&'a str, u32)>);
    let order: Vec<Row<'_>> = s
        .routes
        .iter()
        .map(|r| {
            (
                r.matcher.path_exact.as_deref(),
                r.matcher.path_prefix.as_deref(),
                r.backends.iter().map(|(n, w)| (n.as_str(), *w)).collect(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (Some("/v2"), None, vec![("web-v2-80", 1)]),
            (None, Some("/v2/"), vec![("web-v2-80", 1)]),
            (None, Some("/"), vec![("web-80", 1)]),
            (None, Some("/"), vec![("web-80", 90), ("web-v2-80", 10)]),
        ],
        "longest prefix first, then the older route's catch-all"
    );

    // A backend's endpoints change: its parent is recomputed.
    c.apply_slice(k("shop", "web-v2-1"), slice("web-v2", 8080, &["10.0.0.3"]));
    c.resolve();
    assert_eq!(web(&c).backends[1].endpoints[0].addr.to_string(), "10.0.0.3:8080");

    // A version with an invalid regex does not replace the one serving.
    let broken = json!({"parentRefs": parent(), "rules": [
        {"matches": [{"path": {"type": "RegularExpression", "value": "("}}], "backendRefs": [{"name": "web", "port": 80}]}]});
    let (_, bad) = route(&http_route("b-v2", "2026-01-01T00:00:00Z", broken)).expect("bad");
    assert_eq!(c.apply_route(key_b.clone(), bad), RouteApplied::KeptPrevious);
    c.resolve();
    assert_eq!(web(&c).routes.len(), 4);

    // Deleted: a plain Service again.
    c.delete_route(&key_a);
    c.delete_route(&key_b);
    c.resolve();
    let s = web(&c);
    assert!(s.routes.is_empty() && s.backends.is_empty());
    assert_eq!(s.endpoints[0].addr.to_string(), "10.0.0.1:8080");
    // Nothing left pointing at web-v2.
    c.apply_slice(k("shop", "web-v2-1"), slice("web-v2", 8080, &["10.0.0.4"]));
    assert_eq!(c.resolve().recomputed, 1);
}
