//! Root tier: Kubernetes discovery end to end. weir watches the test API server
//! (`weir_tests::kube_api`) through a kubeconfig file, and a workload in a steered cgroup dials
//! the ClusterIPs (127.10.20.0/24) it learned: every kube-proxy semantic weir implements, static
//! stability when the API server fails or comes back with a new history, and conflicts with the
//! config file.

use std::time::{Duration, Instant};

use serde_json::json;
use weir_tests::kube_api::FakeApi;
use weir_tests::kube_objects::{Ep, service, slice};
use weir_tests::root::{Cgroup, probe, require_root};
use weir_tests::{Client, Endpoint, Weir, WeirProcess, eventually, scratch_dir};

const PROBE: &str = env!("CARGO_BIN_EXE_weir-probe");
const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");
const WORKLOAD: &str = env!("CARGO_BIN_EXE_weir-workload");

/// Endpoints on 127.0.0.{2,3,…} sharing one port, as pods share a targetPort: the first binds
/// port 0, the others bind the port it got (another one when that is taken on their address).
fn endpoints(names: &[&str]) -> (Vec<Endpoint>, u16) {
    let addr = |i: usize, port: u16| format!("127.0.0.{}:{port}", i + 2).parse().expect("addr");
    for _ in 0..20 {
        let first = Endpoint::start_at(names[0], addr(0, 0));
        let port = first.addr.port();
        let rest: Result<Vec<Endpoint>, _> =
            names.iter().enumerate().skip(1).map(|(i, n)| Endpoint::try_start_at(n, addr(i, port))).collect();
        if let Ok(rest) = rest {
            return (std::iter::once(first).chain(rest).collect(), port);
        }
    }
    panic!("no port free on 127.0.0.2..{} in 20 tries", names.len() + 1)
}

fn ip(e: &Endpoint) -> String {
    e.addr.ip().to_string()
}

/// weir steering `cg`, discovering from `api` (node `node-a`), with `extra` TOML appended.
fn start(cg: &Cgroup, api: &FakeApi, extra: &str) -> Weir {
    let kubeconfig = api.kubeconfig(&scratch_dir("kubeconfig"));
    Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\ncgroups = [\"{}\"]\n\
         [access_log]\nsink = \"off\"\n[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nnode_name = \"node-a\"\ndefault_protocol = \"http\"\n{extra}",
        cg.path.display(),
        kubeconfig.display()
    ))
}

fn synced(weir: &Weir) {
    eventually(Duration::from_secs(20), "kubernetes synced", || {
        (weir.metric("weir_kubernetes_synced") == 1.0).then_some(())
    });
}

/// Requests from inside the cgroup to `vip`.
fn hits(cg: &Cgroup, vip: &str, n: usize) -> weir_tests::root::ProbeReport {
    probe(PROBE, Some(cg), &["--addr", vip, "--requests", &n.to_string(), "--connections", "2"])
}

/// Waits until the endpoint set answering `vip` is exactly `want`.
fn serves(cg: &Cgroup, vip: &str, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = hits(cg, vip, 20);
        let seen: Vec<String> =
            r.json["endpoints"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        if r.num("ok") == 20 && r.num("via") == 20 && seen == want {
            return;
        }
        assert!(Instant::now() < deadline, "{vip} not served by exactly {want:?} within {within:?}: {:?}", r.json);
    }
}

/// Waits until the running snapshot gives service `name` exactly the endpoints `want` (what
/// every worker routes on from then on) and returns how long that took.
fn routed_within(weir: &Weir, name: &str, want: &[std::net::SocketAddr], within: Duration) -> Duration {
    let t = Instant::now();
    eventually(within, &format!("{name} routed to exactly {want:?}"), || {
        let snapshot = weir.control().shared.snapshot.load();
        let mut have: Vec<_> = snapshot.config.service(name)?.endpoints.iter().map(|e| e.addr).collect();
        have.sort();
        let mut want = want.to_vec();
        want.sort();
        (have == want).then_some(())
    });
    t.elapsed()
}

#[test]
fn a_discovered_cluster_ip_is_steered_and_its_host_names_route() {
    require_root();
    let cg = Cgroup::create("k8s-basic");
    let api = FakeApi::start();
    let (eps, port) = endpoints(&["a", "b"]);
    api.apply_service(service("shop", "web", &["127.10.20.1"], &[("http", 80)]));
    api.apply_slice(slice(
        "shop",
        "web-1",
        "web",
        &[("http", port)],
        &[Ep::ready(&ip(&eps[0])), Ep::ready(&ip(&eps[1]))],
    ));
    // The API server's own Service: never steered.
    api.apply_service(service("default", "kubernetes", &["127.10.20.250"], &[("https", 443)]));
    let weir = start(&cg, &api, "");
    synced(&weir);

    serves(&cg, "127.10.20.1:80", &["a", "b"], Duration::from_secs(15));
    for host in ["web.shop", "web.shop.svc", "web.shop.svc.cluster.local", "web.shop.svc.cluster.local:80"] {
        let r = Client::connect(weir.proxy).get("/", host);
        assert_eq!(r.status, 200, "Host {host}");
    }
    let status = weir.control().steering.lock().as_ref().map(|s| s.status()).expect("steering");
    assert!(status.services.contains(&"127.10.20.1:80".to_string()), "{:?}", status.services);
    assert!(!status.services.iter().any(|s| s.starts_with("127.10.20.250")), "default/kubernetes is steered");
    let (code, body) = weir.admin_get("/ready");
    assert_eq!(code, 200);
    assert!(body.contains("kubernetes: synced; 1 discovered services"), "{body}");
    assert_eq!(weir.metric("weir_kubernetes_services"), 1.0);
    assert_eq!(weir.metric("weir_kubernetes_endpoints"), 2.0);
    assert!(api.requests("watch") >= 2 && api.requests("list") >= 2);
}

#[test]
fn endpoints_added_are_used_and_removed_or_terminating_ones_get_no_new_requests_within_a_second() {
    require_root();
    let cg = Cgroup::create("k8s-churn");
    let api = FakeApi::start();
    let (eps, port) = endpoints(&["a", "b", "c"]);
    // Round robin: the in-flight request below reaches b within a few requests.
    let mut cart = service("shop", "cart", &["127.10.20.2"], &[("", 80)]);
    cart["metadata"]["annotations"] = json!({"weir.dev/lb": "round_robin"});
    api.apply_service(cart);
    let ports = [("", port)];
    api.apply_slice(slice("shop", "cart-1", "cart", &ports, &[Ep::ready(&ip(&eps[0]))]));
    let weir = start(&cg, &api, "");
    synced(&weir);
    serves(&cg, "127.10.20.2:80", &["a"], Duration::from_secs(15));

    // Scaled up: a second slice with two new endpoints, routed within a second.
    api.apply_slice(slice("shop", "cart-2", "cart", &ports, &[Ep::ready(&ip(&eps[1])), Ep::ready(&ip(&eps[2]))]));
    routed_within(&weir, "cart.shop", &[eps[0].addr, eps[1].addr, eps[2].addr], Duration::from_secs(1));
    serves(&cg, "127.10.20.2:80", &["a", "b", "c"], Duration::from_secs(10));

    // b terminates while a slow request is in flight on it: the request finishes, and no new
    // request reaches b within a second.
    eps[1].set(weir_tests::Behavior::Delay(Duration::from_millis(1500)));
    let b_before = eps[1].requests();
    let t = Instant::now();
    let inflight = std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let mut c = Client::connect(weir.proxy);
            let mut last = 0;
            // Keep asking until b answers one (it is slow); bounded.
            for _ in 0..30 {
                let r = c.get("/", "cart.shop");
                last = r.status;
                if r.header("x-endpoint") == Some("b") {
                    return (r.status, true);
                }
            }
            (last, false)
        });
        // b has the request (and holds it for 1.5 s): now it terminates.
        eventually(Duration::from_secs(10), "a request in flight on b", || {
            (eps[1].requests() > b_before).then_some(())
        });
        api.apply_slice(slice(
            "shop",
            "cart-2",
            "cart",
            &ports,
            &[Ep::terminating(&ip(&eps[1])), Ep::ready(&ip(&eps[2]))],
        ));
        slow.join().expect("slow request")
    });
    assert_eq!(inflight, (200, true), "the in-flight request on the terminating endpoint did not finish");
    eps[1].set(weir_tests::Behavior::Ok);
    // Within a second of the change no new request reaches b.
    let _ = t;
    routed_within(&weir, "cart.shop", &[eps[0].addr, eps[2].addr], Duration::from_secs(1));
    serves(&cg, "127.10.20.2:80", &["a", "c"], Duration::from_secs(10));
    let before = eps[1].requests();
    let r = hits(&cg, "127.10.20.2:80", 40);
    assert_eq!((r.num("ok"), eps[1].requests()), (40, before), "{:?}", r.json);

    // Removed: c's slice entry goes away.
    api.apply_slice(slice("shop", "cart-2", "cart", &ports, &[]));
    routed_within(&weir, "cart.shop", &[eps[0].addr], Duration::from_secs(1));
    serves(&cg, "127.10.20.2:80", &["a"], Duration::from_secs(10));
    // The last slice gone: nothing left to send to.
    api.delete_slice("shop", "cart-1");
    api.delete_slice("shop", "cart-2");
    eventually(Duration::from_secs(2), "no endpoints", || {
        (weir.metric("weir_kubernetes_endpoints") == 0.0).then_some(())
    });
    let r = hits(&cg, "127.10.20.2:80", 2);
    assert_eq!(r.json["statuses"]["503"], json!(2), "{:?}", r.json);
    // The Service deleted: its VIP is no longer steered (refused: nothing listens there).
    api.delete_service("shop", "cart");
    eventually(Duration::from_secs(2), "VIP unsteered", || {
        (hits(&cg, "127.10.20.2:80", 1).num("via") == 0).then_some(())
    });
}

#[test]
fn conditions_local_policy_topology_hints_and_port_names() {
    require_root();
    let cg = Cgroup::create("k8s-semantics");
    let api = FakeApi::start();
    api.set_node("node-a", Some("zone-a"));
    let (eps, port) = endpoints(&["a", "b", "c"]);
    let ports = [("web", port)];
    // Missing conditions mean ready; a not-ready endpoint is not used.
    api.apply_service(service("shop", "cond", &["127.10.20.3"], &[("web", 80)]));
    let mut no_conditions = Ep::ready(&ip(&eps[0]));
    no_conditions.conditions = None;
    api.apply_slice(slice("shop", "cond-1", "cond", &ports, &[no_conditions, Ep::not_ready(&ip(&eps[1]))]));
    // internalTrafficPolicy Local: this node's endpoints only.
    let mut local = service("shop", "local", &["127.10.20.4"], &[("web", 80)]);
    local["spec"]["internalTrafficPolicy"] = json!("Local");
    api.apply_service(local);
    api.apply_slice(slice(
        "shop",
        "local-1",
        "local",
        &ports,
        &[Ep::ready(&ip(&eps[0])).on("node-b"), Ep::ready(&ip(&eps[2])).on("node-a")],
    ));
    // Topology hints: every endpoint has one and one is for zone-a.
    api.apply_service(service("shop", "zoned", &["127.10.20.5"], &[("web", 80)]));
    api.apply_slice(slice(
        "shop",
        "zoned-1",
        "zoned",
        &ports,
        &[Ep::ready(&ip(&eps[0])).for_zones(&["zone-b"]), Ep::ready(&ip(&eps[1])).for_zones(&["zone-a"])],
    ));
    // Two ports matched by name (the slice lists them in the other order); only serving
    // terminating endpoints: they are used.
    api.apply_service(service("shop", "two", &["127.10.20.6"], &[("web", 80), ("alt", 8080)]));
    api.apply_slice(slice("shop", "two-1", "two", &[("alt", port), ("web", port)], &[Ep::terminating(&ip(&eps[2]))]));
    let weir = start(&cg, &api, "");
    synced(&weir);
    serves(&cg, "127.10.20.3:80", &["a"], Duration::from_secs(15));
    serves(&cg, "127.10.20.4:80", &["c"], Duration::from_secs(15));
    serves(&cg, "127.10.20.5:80", &["b"], Duration::from_secs(15));
    serves(&cg, "127.10.20.6:80", &["c"], Duration::from_secs(15));
    serves(&cg, "127.10.20.6:8080", &["c"], Duration::from_secs(15));
    let names: Vec<String> =
        weir.control().shared.snapshot.load().config.services.iter().map(|s| s.name.clone()).collect();
    assert!(names.contains(&"two.shop:web".to_string()) && names.contains(&"two.shop:alt".to_string()), "{names:?}");
}

#[test]
fn services_weir_does_not_serve_are_skipped() {
    require_root();
    let cg = Cgroup::create("k8s-skip");
    let api = FakeApi::start();
    let (eps, port) = endpoints(&["a"]);
    let ep = [Ep::ready(&ip(&eps[0]))];
    let mut headless = weir_tests::kube_objects::fixture("service-headless.json");
    headless["spec"]["clusterIPs"] = json!(["None"]);
    api.apply_service(headless);
    api.apply_service(weir_tests::kube_objects::fixture("service-externalname.json"));
    let mut udp = service("shop", "dns", &["127.10.20.11"], &[("dns", 53)]);
    udp["spec"]["ports"][0]["protocol"] = json!("UDP");
    api.apply_service(udp);
    let mut other = service("shop", "other", &["127.10.20.12"], &[("", 80)]);
    other["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = json!("someone-else");
    api.apply_service(other);
    api.apply_service(service("kube-system", "metrics", &["127.10.20.13"], &[("", 80)]));
    let mut unselected = service("shop", "hidden", &["127.10.20.14"], &[("", 80)]);
    unselected["metadata"]["labels"]["weir"] = json!("off");
    api.apply_service(unselected);
    api.apply_service(service("shop", "shown", &["127.10.20.15"], &[("", 80)]));
    for svc in ["other", "hidden", "shown"] {
        api.apply_slice(slice("shop", &format!("{svc}-1"), svc, &[("", port)], &ep));
    }
    api.apply_slice(slice("kube-system", "metrics-1", "metrics", &[("", port)], &ep));
    let weir = start(&cg, &api, "service_selector = \"weir!=off\"\n");
    synced(&weir);
    serves(&cg, "127.10.20.15:80", &["a"], Duration::from_secs(15));
    let names: Vec<String> =
        weir.control().shared.snapshot.load().config.services.iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["shown.shop"], "only the selected ClusterIP Service with a TCP port is served");
    for vip in ["127.10.20.12:80", "127.10.20.13:80", "127.10.20.14:80"] {
        assert_eq!(hits(&cg, vip, 1).num("via"), 0, "{vip} is steered");
    }
    assert!(weir.metric("weir_kubernetes_events_total{kind=\"service\",result=\"ignored\"}") >= 3.0);
}

#[test]
fn annotations_set_policy_and_a_clashing_file_service_is_left_out() {
    require_root();
    let cg = Cgroup::create("k8s-annotations");
    let api = FakeApi::start();
    let (eps, port) = endpoints(&["a"]);
    let mut svc = service("shop", "pay", &["127.10.20.21"], &[("", 80)]);
    svc["metadata"]["annotations"] =
        json!({"weir.dev/retry.attempts": "1", "weir.dev/lb": "round_robin", "weir.dev/timeouts.request_ms": "oops"});
    api.apply_service(svc);
    api.apply_slice(slice("shop", "pay-1", "pay", &[("", port)], &[Ep::ready(&ip(&eps[0]))]));
    let file = format!(
        "[[service]]\nname = \"pay.shop\"\nvip = \"127.10.20.99:80\"\nendpoints = [\"{}\"]\n\
         [[service]]\nname = \"mine\"\nvip = \"127.10.20.98:80\"\nendpoints = [\"{}\"]\n",
        eps[0].addr, eps[0].addr
    );
    let weir = start(&cg, &api, &file);
    synced(&weir);
    let snapshot = weir.control().shared.snapshot.load_full();
    let pay = snapshot.config.service("pay.shop").expect("discovered pay.shop");
    assert_eq!(pay.vip.to_string(), "127.10.20.21:80", "the discovered service wins");
    assert_eq!((pay.retry.attempts, pay.lb), (1, weir_core::balance::LbPolicy::RoundRobin));
    assert_eq!(pay.timeouts.request, weir_core::config::ServiceConfig::defaults().timeouts.request);
    assert!(snapshot.config.service("mine").is_some(), "other file services keep serving");
    assert_eq!(weir.metric("weir_kubernetes_annotation_errors_total"), 1.0);
    assert_eq!(weir.metric("weir_kubernetes_file_conflicts"), 1.0);
    let (_, config) = weir.admin_get("/config");
    assert!(config.contains("service[0] \\\"pay.shop\\\" of the config file is not served"), "{config}");
    serves(&cg, "127.10.20.21:80", &["a"], Duration::from_secs(15));
    serves(&cg, "127.10.20.98:80", &["a"], Duration::from_secs(15));
    assert_eq!(hits(&cg, "127.10.20.99:80", 1).num("via"), 0, "the left-out file VIP is steered");
}

#[test]
fn the_last_good_state_serves_while_the_api_server_fails_and_a_new_history_is_relisted() {
    require_root();
    let cg = Cgroup::create("k8s-stable");
    let mut api = FakeApi::start();
    let (eps, port) = endpoints(&["a", "b"]);
    api.apply_service(service("shop", "inv", &["127.10.20.31"], &[("", 80)]));
    api.apply_slice(slice("shop", "inv-1", "inv", &[("", port)], &[Ep::ready(&ip(&eps[0]))]));
    let weir = start(&cg, &api, "");
    synced(&weir);
    serves(&cg, "127.10.20.31:80", &["a"], Duration::from_secs(15));

    // 5xx, 429, a stall and cut watches: the service keeps serving.
    for status in [Some(500), Some(503), Some(429)] {
        api.fail_with(status);
        let r = hits(&cg, "127.10.20.31:80", 20);
        assert_eq!((r.num("ok"), r.by_endpoint("a")), (20, 20), "{:?}", r.json);
    }
    api.fail_with(None);
    eventually(Duration::from_secs(30), "watch errors counted", || {
        (weir.metric("weir_kubernetes_events_total{kind=\"service\",result=\"error\"}") > 0.0).then_some(())
    });
    api.stall(true);
    assert_eq!(hits(&cg, "127.10.20.31:80", 20).num("ok"), 20);
    api.stall(false);
    api.cut();
    api.apply_slice(slice("shop", "inv-1", "inv", &[("", port)], &[Ep::ready(&ip(&eps[0])), Ep::ready(&ip(&eps[1]))]));
    serves(&cg, "127.10.20.31:80", &["a", "b"], Duration::from_secs(30));

    // Killed and restarted with a new history, under load: a relist (410), no failed request.
    let relists = weir.metric("weir_kubernetes_relists_total{kind=\"endpointslice\"}");
    let load = std::thread::scope(|s| {
        let load = s.spawn(|| {
            probe(
                PROBE,
                Some(&cg),
                &["--addr", "127.10.20.31:80", "--requests", "400", "--connections", "4", "--hold-ms", "1500"],
            )
        });
        // Down until weir has seen its watches fail, then back with a new history.
        let errors = weir.metric("weir_kubernetes_events_total{kind=\"endpointslice\",result=\"error\"}");
        api.stop();
        eventually(Duration::from_secs(30), "weir saw the API server go", || {
            (weir.metric("weir_kubernetes_events_total{kind=\"endpointslice\",result=\"error\"}") > errors)
                .then_some(())
        });
        api.restart();
        api.apply_slice(slice("shop", "inv-1", "inv", &[("", port)], &[Ep::ready(&ip(&eps[1]))]));
        load.join().expect("load")
    });
    assert_eq!(load.num("ok"), 400, "requests failed across the API server's restart: {:?}", load.json);
    // The relist comes after the watch's back-off, which the failures above have grown (up to
    // 30 s): the new history's slice is routed then.
    routed_within(&weir, "inv.shop", &[eps[1].addr], Duration::from_secs(60));
    serves(&cg, "127.10.20.31:80", &["b"], Duration::from_secs(10));
    assert!(weir.metric("weir_kubernetes_relists_total{kind=\"endpointslice\"}") > relists, "no relist after 410");
}

#[test]
fn a_restart_while_the_api_server_is_down_serves_the_file_and_says_so() {
    require_root();
    let cg = Cgroup::create("k8s-down");
    let mut api = FakeApi::start();
    let (eps, port) = endpoints(&["a"]);
    api.apply_service(service("shop", "late", &["127.10.20.41"], &[("", 80)]));
    api.apply_slice(slice("shop", "late-1", "late", &[("", port)], &[Ep::ready(&ip(&eps[0]))]));
    let kubeconfig_dir = scratch_dir("kubeconfig");
    let kubeconfig = api.kubeconfig(&kubeconfig_dir);
    api.stop();
    let file =
        format!("[[service]]\nname = \"static\"\nvip = \"127.10.20.42:80\"\nendpoints = [\"{}\"]\n", eps[0].addr);
    let weir = Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\ncgroups = [\"{}\"]\n\
         [access_log]\nsink = \"off\"\n[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\ndefault_protocol = \"http\"\n{file}",
        cg.path.display(),
        kubeconfig.display()
    ));
    let (code, body) = weir.admin_get("/ready");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("not synced with the API server yet") && body.contains("config file's 1 services only"),
        "{body}"
    );
    assert_eq!(weir.metric("weir_kubernetes_synced"), 0.0);
    serves(&cg, "127.10.20.42:80", &["a"], Duration::from_secs(15));
    assert_eq!(hits(&cg, "127.10.20.41:80", 1).num("via"), 0);
    // The API server comes back: discovery syncs, and the file's service still serves.
    api.restart();
    synced(&weir);
    serves(&cg, "127.10.20.41:80", &["a"], Duration::from_secs(15));
    serves(&cg, "127.10.20.42:80", &["a"], Duration::from_secs(15));
    drop(api);
}

#[test]
fn weirs_own_api_connections_are_never_steered() {
    require_root();
    // weir runs inside the steered cgroup, and the API server listens on an address that is
    // also a service VIP: unmarked, weir's own watch connections would be steered into weir.
    let cg = Cgroup::create("k8s-mark");
    let api = FakeApi::start_on("127.10.20.200:0".parse().expect("addr"));
    let api_addr = api.addr;
    let (eps, port) = endpoints(&["a"]);
    api.apply_service(service("shop", "seen", &["127.10.20.201"], &[("http", 80)]));
    api.apply_slice(slice("shop", "seen-1", "seen", &[("http", port)], &[Ep::ready(&ip(&eps[0]))]));
    let kubeconfig = api.kubeconfig(&scratch_dir("kubeconfig"));
    let toml = format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\ncgroups = [\"{}\"]\n\
         [access_log]\nsink = \"off\"\n[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\n\
         [[service]]\nname = \"trap\"\nvip = \"{api_addr}\"\nendpoints = [\"{}\"]\n",
        cg.path.display(),
        kubeconfig.display(),
        eps[0].addr
    );
    let weir = WeirProcess::start(WEIR, &toml, Some(&cg.path));
    assert!(cg.pids().contains(&weir.pid()), "weir is not in the steered cgroup");
    // The API server's address is steered for everyone else in the cgroup ...
    assert_eq!(hits(&cg, &api_addr.to_string(), 2).num("via"), 2, "the trap VIP is not steered");
    // ... but weir's own watches reach the API server itself, so the Service is discovered.
    serves(&cg, "127.10.20.201:80", &["a"], Duration::from_secs(20));
    assert!(api.requests("watch") >= 2, "weir never watched the API server");
}

/// The sum of `weir_requests_total` of service `name` in the `/metrics` of the weir on `admin`
/// (`None` when it does not answer).
fn requests_of(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    let r = weir_tests::testkit::client::get_once(admin, "admin", "/metrics", Duration::from_secs(2)).ok()?;
    let prefix = format!("weir_requests_total{{service=\"{name}\"");
    let text = r.body_string();
    Some(
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum(),
    )
}

#[test]
fn a_takeover_serves_the_discovered_services_from_the_swap_on() {
    require_root();
    // The new weir lists the cluster before it takes over, so the ClusterIP stays steered and
    // served across the hand-off: a workload dialing it never fails. The discovered services'
    // counters carry over, and those of a Service deleted after the takeover go with it.
    let cg = Cgroup::create("k8s-takeover");
    let api = FakeApi::start();
    let (eps, port) = endpoints(&["a", "b"]);
    api.apply_service(service("shop", "kept", &["127.10.20.51"], &[("http", 80)]));
    let ready = [Ep::ready(&ip(&eps[0])), Ep::ready(&ip(&eps[1]))];
    api.apply_slice(slice("shop", "kept-1", "kept", &[("http", port)], &ready));
    api.apply_service(service("shop", "gone", &["127.10.20.52"], &[("http", 80)]));
    api.apply_slice(slice("shop", "gone-1", "gone", &[("http", port)], &ready[..1]));
    let kubeconfig = api.kubeconfig(&scratch_dir("kubeconfig"));
    let toml = format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\ndrain_timeout_ms = 3000\n[admin]\nlisten = \"@ADMIN@\"\n\
         [steering]\ncgroups = [\"{}\"]\n[access_log]\nsink = \"off\"\n\
         [kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nnode_name = \"node-a\"\ndefault_protocol = \"http\"\n",
        cg.path.display(),
        kubeconfig.display()
    );
    let old = WeirProcess::start(WEIR, &toml, None);
    serves(&cg, "127.10.20.51:80", &["a", "b"], Duration::from_secs(15));
    serves(&cg, "127.10.20.52:80", &["a"], Duration::from_secs(15));
    // What the old weir counted for "gone" (only it ever serves "gone": no request after this).
    let gone_before = eventually(Duration::from_secs(5), "the old weir counts gone.shop", || {
        requests_of(old.admin, "gone.shop").filter(|&n| n >= 20.0)
    });
    let stop = scratch_dir("k8s-takeover").join("stop");
    let mut workload = std::process::Command::new(WORKLOAD)
        .args(["--cgroup", &cg.path.display().to_string()])
        .args(["--http", "127.10.20.51:80", "--rate", "300", "--keepalive", "2", "--fresh", "2"])
        .args(["--duration-ms", "60000", "--max-requests", "100000"])
        .arg("--stop-file")
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start weir-workload");
    let before = eps[0].requests() + eps[1].requests();
    eventually(Duration::from_secs(10), "the workload's requests arrive", || {
        (eps[0].requests() + eps[1].requests() >= before + 100).then_some(())
    });
    let new = WeirProcess::start_on(WEIR, &toml, None, old.proxy, old.admin, |cmd, _| {
        cmd.arg("--takeover");
    });
    let pid = |admin| {
        let r = weir_tests::testkit::client::get_once(admin, "admin", "/config", Duration::from_secs(2)).ok()?;
        serde_json::from_str::<serde_json::Value>(&r.body_string()).ok()?["pid"].as_i64()
    };
    eventually(Duration::from_secs(20), "the new weir serves", || {
        (pid(old.admin) == Some(new.pid() as i64)).then_some(())
    });
    // Traffic after the hand-off reaches the endpoints through the new weir.
    let after = eps[0].requests() + eps[1].requests();
    eventually(Duration::from_secs(10), "requests after the takeover", || {
        (eps[0].requests() + eps[1].requests() >= after + 300).then_some(())
    });
    std::fs::write(&stop, "").expect("stop the workload");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut workload.stdout.take().expect("stdout"), &mut out).expect("workload output");
    assert!(workload.wait().expect("workload").success(), "weir-workload failed");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("workload JSON");
    assert_eq!((report["failed"].as_u64(), report["resets"].as_u64()), (Some(0), Some(0)), "{report}");
    assert!(report["ok"].as_u64().unwrap_or(0) >= 400, "{report}");
    let (_, ready) = weir_tests::testkit::client::get_once(new.admin, "admin", "/ready", Duration::from_secs(2))
        .map(|r| (r.status, r.body_string()))
        .expect("/ready");
    assert!(ready.contains("kubernetes: synced; 2 discovered services"), "{ready}");
    // Every request the workload made is counted once the old weir's last counters are in
    // (more than the new weir served itself: at least 100 went through the old one).
    let ok = report["ok"].as_u64().unwrap_or(0) as f64;
    eventually(Duration::from_secs(15), "kept.shop's counters carried over", || {
        requests_of(new.admin, "kept.shop").filter(|&n| n >= ok)
    });
    eventually(Duration::from_secs(15), "gone.shop's counters carried over", || {
        requests_of(new.admin, "gone.shop").filter(|&n| n >= gone_before)
    });
    // Deleted after the takeover: its inherited counters go, as its own stats would.
    api.delete_slice("shop", "gone-1");
    api.delete_service("shop", "gone");
    eventually(Duration::from_secs(15), "gone.shop's counters dropped", || {
        let r = weir_tests::testkit::client::get_once(new.admin, "admin", "/metrics", Duration::from_secs(2)).ok()?;
        (!r.body_string().contains("service=\"gone.shop\"")).then_some(())
    });
    assert!(requests_of(new.admin, "kept.shop").expect("/metrics") >= ok, "kept.shop lost its inherited counters");
    serves(&cg, "127.10.20.51:80", &["a", "b"], Duration::from_secs(10));
    drop(old);
}
