//! Gateway API HTTPRoutes attached to Services (GAMMA) through weir: weir discovers Services,
//! EndpointSlices and HTTPRoutes from the test API server (`weir_tests::kube_api`, the real wire
//! format) through a kubeconfig file, and a client dials weir's proxy with the Service's host
//! name: a 90/10 split over 10 000 requests, a path sending `/v2/` to another Service with its
//! header edits seen by the endpoint, a backend Service's endpoints changing under a route, a
//! route deleted, a version with an invalid regex located while the previous one serves, a
//! cluster without the HTTPRoute CRD (404) still discovering Services, and a route moved to a
//! Gateway leaving the Service. Unprivileged: no steering, the Host header picks the service.

use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::kube_api::FakeApi;
use weir_tests::kube_objects::{Ep, http_route, service, slice};
use weir_tests::{Client, Endpoint, Weir, eventually, scratch_dir};

/// weir discovering from `api`, no steering.
fn start(api: &FakeApi) -> Weir {
    let kubeconfig = api.kubeconfig(&scratch_dir("routes-kubeconfig"));
    Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[access_log]\nsink = \"off\"\n\
         [kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nnode_name = \"node-a\"\ndefault_protocol = \"http\"\n",
        kubeconfig.display()
    ))
}

/// Service `name` in `shop` on port 80 with one endpoint, `e`.
fn backend(api: &FakeApi, name: &str, vip: &str, e: &Endpoint) {
    api.apply_service(service("shop", name, &[vip], &[("http", 80)]));
    api.apply_slice(slice(
        "shop",
        &format!("{name}-1"),
        name,
        &[("http", e.addr.port())],
        &[Ep::ready(&e.addr.ip().to_string())],
    ));
}

/// The number of routes of weir service `name` in the running snapshot.
fn routes_of(weir: &Weir, name: &str) -> Option<usize> {
    weir.control().shared.snapshot.load().config.service(name).map(|s| s.routes.len())
}

fn wait_routes(weir: &Weir, name: &str, n: usize) {
    eventually(Duration::from_secs(10), &format!("{name} with {n} routes"), || {
        (routes_of(weir, name) == Some(n)).then_some(())
    });
}

/// Which endpoint answers `path` on `web.shop`.
fn answered_by(c: &mut Client, path: &str) -> (u16, Option<String>) {
    let r = c.get(path, "web.shop");
    (r.status, r.header("x-endpoint").map(str::to_string))
}

fn config_kubernetes(weir: &Weir) -> Value {
    let (code, body) = weir.admin_get("/config");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("/config JSON");
    v["kubernetes"].clone()
}

fn canary_rules() -> Value {
    json!([
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/v2/"}}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "x-route", "value": "v2"}],
                "add": [{"name": "x-added", "value": "yes"}],
                "remove": ["x-debug"],
            }}],
            "backendRefs": [{"name": "web-v2", "port": 80}],
        },
        {"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-v2", "port": 80, "weight": 10}]},
    ])
}

#[test]
fn an_httproute_splits_sends_v2_to_another_service_edits_headers_and_its_deletion_restores_the_service() {
    let api = FakeApi::start();
    let (stable, v2, v2b) = (Endpoint::start("stable"), Endpoint::start("v2"), Endpoint::start("v2b"));
    backend(&api, "web", "127.10.61.1", &stable);
    backend(&api, "web-v2", "127.10.61.2", &v2);
    api.apply_route(http_route("shop", "canary", "2026-01-01T00:00:00Z", "web", 80, canary_rules()));
    let weir = start(&api);
    // /v2/ is two weir routes (/v2 and under /v2/), then the split.
    wait_routes(&weir, "web.shop", 3);
    assert_eq!(config_kubernetes(&weir)["httproutes"], "served");

    let mut c = Client::connect(weir.proxy);
    let r = c.request("GET", "/v2/items", "web.shop", b"").expect("request");
    assert_eq!((r.status, r.header("x-endpoint")), (200, Some("v2")));
    // The header edits reach the endpoint.
    let mut raw = std::net::TcpStream::connect(weir.proxy).expect("connect");
    std::io::Write::write_all(
        &mut raw,
        b"GET /v2/x HTTP/1.1\r\nhost: web.shop\r\nx-debug: 1\r\nx-route: mine\r\nconnection: close\r\n\r\n",
    )
    .expect("write");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut raw, &mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("x-endpoint: v2"), "{answer}");
    let seen = v2.last_headers();
    let get =
        |n: &str| seen.iter().filter(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!((get("x-route"), get("x-added"), get("x-debug")), (vec!["v2"], vec!["yes"], vec![]), "{seen:?}");

    // 90/10 over 10 000 requests (one connection: one worker's smooth split, exact).
    let (s0, v0) = (stable.requests(), v2.requests());
    for i in 0..10_000 {
        let r = c.get("/", "web.shop");
        assert_eq!(r.status, 200, "request {i}");
    }
    let (to_stable, to_v2) = (stable.requests() - s0, v2.requests() - v0);
    assert_eq!(to_stable + to_v2, 10_000);
    assert!((8_900..=9_100).contains(&to_stable), "stable {to_stable}, v2 {to_v2}: not 90/10 within ±1%");

    // web-v2's endpoints change: the route follows.
    api.apply_slice(slice(
        "shop",
        "web-v2-1",
        "web-v2",
        &[("http", v2b.addr.port())],
        &[Ep::ready(&v2b.addr.ip().to_string())],
    ));
    eventually(Duration::from_secs(10), "/v2/ answered by v2b", || {
        (answered_by(&mut c, "/v2/a") == (200, Some("v2b".into()))).then_some(())
    });

    // The route deleted: web is a plain Service again, /v2/ included.
    api.delete_route("shop", "canary");
    wait_routes(&weir, "web.shop", 0);
    let before = (v2.requests(), v2b.requests());
    for path in ["/", "/v2/items", "/v2"] {
        assert_eq!(answered_by(&mut c, path), (200, Some("stable".into())), "{path}");
    }
    assert_eq!((v2.requests(), v2b.requests()), before);
}

#[test]
fn an_invalid_httproute_version_is_located_and_the_previous_routes_keep_serving() {
    let api = FakeApi::start();
    let (stable, v2) = (Endpoint::start("stable"), Endpoint::start("v2"));
    backend(&api, "web", "127.10.61.11", &stable);
    backend(&api, "web-v2", "127.10.61.12", &v2);
    // Only /v2/ is routed: anything else matches no route, 404.
    let only_v2 = json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": [{"name": "web-v2", "port": 80}]}]);
    api.apply_route(http_route("shop", "r", "2026-01-01T00:00:00Z", "web", 80, only_v2));
    let weir = start(&api);
    wait_routes(&weir, "web.shop", 2);
    let mut c = Client::connect(weir.proxy);
    assert_eq!(answered_by(&mut c, "/v2/x"), (200, Some("v2".into())));
    let r = c.get("/other", "web.shop");
    assert_eq!((r.status, r.header("x-weir-error")), (404, Some("no-route")));
    assert_eq!(answered_by(&mut c, "/v2x").0, 404, "PathPrefix /v2 is /v2 and under /v2/, not /v2x");

    // A new version whose regex does not compile: located, counted, not applied.
    let broken = json!([
        {"matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9"}}], "backendRefs": [{"name": "web", "port": 80}]},
        {"backendRefs": [{"name": "web", "port": 80}]},
    ]);
    api.apply_route(http_route("shop", "r", "2026-01-01T00:00:00Z", "web", 80, broken));
    let problems = eventually(Duration::from_secs(10), "the broken version reported", || {
        let k = config_kubernetes(&weir);
        let p: Vec<String> =
            k["httproute_problems"].as_array()?.iter().filter_map(|p| p.as_str().map(String::from)).collect();
        (!p.is_empty()).then_some(p)
    });
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("HTTPRoute shop/r rule 0: matches[0].path.value: ")
                && p.contains("not a valid regex")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("the previous version keeps serving")), "{problems:?}");
    assert!(weir.metric("weir_kubernetes_httproute_problems_total") >= 2.0);
    assert_eq!(routes_of(&weir, "web.shop"), Some(2));
    assert_eq!(answered_by(&mut c, "/v2/x"), (200, Some("v2".into())));
    assert_eq!(c.get("/other", "web.shop").status, 404, "the broken version's catch-all is not applied");

    // Fixed: applied, and the problem is gone.
    let fixed = json!([
        {"matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"}}], "backendRefs": [{"name": "web-v2", "port": 80}]},
        {"backendRefs": [{"name": "web", "port": 80}]},
    ]);
    api.apply_route(http_route("shop", "r", "2026-01-01T00:00:00Z", "web", 80, fixed));
    wait_routes(&weir, "web.shop", 2);
    eventually(Duration::from_secs(10), "/other served by the new catch-all", || {
        (answered_by(&mut c, "/other") == (200, Some("stable".into()))).then_some(())
    });
    assert_eq!(answered_by(&mut c, "/v3/x"), (200, Some("v2".into())));
    assert_eq!(config_kubernetes(&weir)["httproute_problems"], json!([]));
}

#[test]
fn a_cluster_without_the_httproute_crd_still_discovers_services_and_reads_routes_once_installed() {
    let api = FakeApi::start();
    api.install_httproutes(false);
    let (stable, v2) = (Endpoint::start("stable"), Endpoint::start("v2"));
    backend(&api, "web", "127.10.61.21", &stable);
    backend(&api, "web-v2", "127.10.61.22", &v2);
    let weir = start(&api);
    eventually(Duration::from_secs(20), "kubernetes synced", || {
        (weir.metric("weir_kubernetes_synced") == 1.0).then_some(())
    });
    let mut c = Client::connect(weir.proxy);
    assert_eq!(answered_by(&mut c, "/v2/x"), (200, Some("stable".into())));
    let k = config_kubernetes(&weir);
    assert!(k["httproutes"].as_str().is_some_and(|s| s.starts_with("not served by this cluster")), "{k}");
    assert!(api.requests("unknown") >= 1, "weir never asked for HTTPRoutes");
    assert!(weir.metric("weir_kubernetes_events_total{kind=\"httproute\",result=\"error\"}") >= 1.0);

    // The CRD is installed and a route applied: read on a later try, without a restart.
    api.install_httproutes(true);
    api.apply_route(http_route("shop", "canary", "2026-01-01T00:00:00Z", "web", 80, canary_rules()));
    eventually(Duration::from_secs(90), "the route read once the CRD is there", || {
        (routes_of(&weir, "web.shop") == Some(3)).then_some(())
    });
    assert_eq!(answered_by(&mut c, "/v2/x"), (200, Some("v2".into())));
    assert_eq!(config_kubernetes(&weir)["httproutes"], "served");

    // The route moves to a Gateway: no longer weir's, the Service is a plain one again.
    let mut moved = http_route("shop", "canary", "2026-01-01T00:00:00Z", "web", 80, canary_rules());
    moved["spec"]["parentRefs"] = json!([{"name": "edge"}]);
    api.apply_route(moved);
    wait_routes(&weir, "web.shop", 0);
    assert_eq!(answered_by(&mut c, "/v2/x"), (200, Some("stable".into())));
}
