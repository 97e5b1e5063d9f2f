use std::net::IpAddr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weir_core::config::Protocol;

use super::*;
use crate::record::{EndpointRecord, PortRecord, key};

fn svc(name: &str, ips: &[&str], ports: &[(&str, u16)]) -> ServiceRecord {
    ServiceRecord {
        namespace: "ns".into(),
        name: name.into(),
        skip: None,
        cluster_ips: ips.iter().map(|i| i.parse().expect("ip")).collect(),
        ports: ports
            .iter()
            .map(|(n, p)| PortRecord { name: (*n).into(), port: *p, protocol: Protocol::Http })
            .collect(),
        local_only: false,
        policy: None,
    }
}

fn ep(addr: &str, ready: bool, serving: bool, terminating: bool) -> EndpointRecord {
    EndpointRecord { addr: addr.parse().expect("ip"), ready, serving, terminating, local: false, zones: None }
}

fn slice(service: &str, ports: &[(&str, u16)], endpoints: Vec<EndpointRecord>) -> SliceRecord {
    SliceRecord {
        service: key("ns", service),
        ports: ports.iter().map(|(n, p)| ((*n).into(), *p)).collect(),
        endpoints,
    }
}

fn addrs(c: &Cluster, name: &str) -> Vec<String> {
    let all = c.services();
    let s = all.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no service {name} in {all:?}"));
    s.endpoints.iter().map(|e| e.addr.to_string()).collect()
}

#[test]
fn slices_merge_deduplicate_and_match_ports_by_name() {
    let mut c = Cluster::new();
    c.apply_service(key("ns", "web"), svc("web", &["127.10.0.1", "::1"], &[("http", 80), ("admin", 9000)]));
    c.apply_slice(
        key("ns", "web-a"),
        slice("web", &[("http", 8080), ("admin", 9001)], vec![ep("10.0.0.1", true, true, false)]),
    );
    c.apply_slice(
        key("ns", "web-b"),
        slice("web", &[("http", 8080)], vec![ep("10.0.0.1", false, false, false), ep("10.0.0.2", true, true, false)]),
    );
    c.resolve();
    assert_eq!(addrs(&c, "web.ns:http"), ["10.0.0.1:8080", "10.0.0.2:8080"], "merged, de-duplicated, ready wins");
    assert_eq!(addrs(&c, "web.ns:admin"), ["10.0.0.1:9001"]);
    let http = c.services().into_iter().find(|s| s.name == "web.ns:http").expect("http port");
    assert_eq!(http.vip.to_string(), "127.10.0.1:80");
    assert_eq!(http.aliases.vips, ["[::1]:80".parse::<SocketAddr>().expect("v6")]);
    for h in ["web.ns", "web.ns:80", "web.ns.svc", "web.ns.svc.cluster.local", "web.ns.svc.cluster.local:80"] {
        assert!(http.aliases.hosts.iter().any(|x| x == h), "{h} missing from {:?}", http.aliases.hosts);
    }
    let admin = c.services().into_iter().find(|s| s.name == "web.ns:admin").expect("admin port");
    assert!(!admin.aliases.hosts.iter().any(|h| h == "web.ns.svc"), "only port 80 gets the bare host");
}

#[test]
fn ready_endpoints_first_then_serving_terminating_only_when_none_is_ready() {
    let mut c = Cluster::new();
    c.apply_service(key("ns", "a"), svc("a", &["127.10.0.2"], &[("", 80)]));
    let eps =
        vec![ep("10.0.0.1", true, true, false), ep("10.0.0.2", false, true, true), ep("10.0.0.3", false, false, true)];
    c.apply_slice(key("ns", "a-1"), slice("a", &[("", 8080)], eps));
    c.resolve();
    assert_eq!(addrs(&c, "a.ns"), ["10.0.0.1:8080"]);
    c.apply_slice(
        key("ns", "a-1"),
        slice("a", &[("", 8080)], vec![ep("10.0.0.2", false, true, true), ep("10.0.0.3", false, false, true)]),
    );
    c.resolve();
    assert_eq!(addrs(&c, "a.ns"), ["10.0.0.2:8080"], "the serving terminating endpoint, as kube-proxy does");
}

#[test]
fn local_traffic_policy_and_topology_hints() {
    let mut c = Cluster::new();
    let mut local = svc("l", &["127.10.0.3"], &[("", 80)]);
    local.local_only = true;
    c.apply_service(key("ns", "l"), local);
    let mut mine = ep("10.0.0.1", true, true, false);
    mine.local = true;
    c.apply_slice(key("ns", "l-1"), slice("l", &[("", 80)], vec![mine, ep("10.0.0.2", true, true, false)]));
    c.apply_service(key("ns", "h"), svc("h", &["127.10.0.4"], &[("", 80)]));
    let hinted = |a: &str, z: &str| EndpointRecord { zones: Some(vec![z.into()].into()), ..ep(a, true, true, false) };
    c.apply_slice(key("ns", "h-1"), slice("h", &[("", 80)], vec![hinted("10.0.1.1", "z1"), hinted("10.0.1.2", "z2")]));
    c.resolve();
    assert_eq!(addrs(&c, "l.ns"), ["10.0.0.1:80"]);
    assert_eq!(addrs(&c, "h.ns").len(), 2, "zone unknown: hints unused");
    c.set_zone(Some("z2"));
    c.resolve();
    assert_eq!(addrs(&c, "h.ns"), ["10.0.1.2:80"]);
    c.set_zone(Some("z9"));
    c.resolve();
    assert_eq!(addrs(&c, "h.ns").len(), 2, "no endpoint for this zone: hints unused");
    c.apply_slice(key("ns", "h-2"), slice("h", &[("", 80)], vec![ep("10.0.1.3", true, true, false)]));
    c.set_zone(Some("z1"));
    c.resolve();
    assert_eq!(addrs(&c, "h.ns").len(), 3, "one endpoint without a hint: hints unused");
}

#[test]
fn a_service_whose_last_slice_is_gone_keeps_nothing() {
    let mut c = Cluster::new();
    c.apply_service(key("ns", "a"), svc("a", &["127.10.0.2"], &[("", 80)]));
    c.apply_slice(key("ns", "a-1"), slice("a", &[("", 80)], vec![ep("10.0.0.1", true, true, false)]));
    c.resolve();
    c.delete_slice(&key("ns", "a-1"));
    c.resolve();
    assert!(addrs(&c, "a.ns").is_empty());
    assert_eq!((c.endpoint_count(), c.slices_of.len()), (0, 0), "no state left for the slice");
    c.delete_service(&key("ns", "a"));
    c.resolve();
    assert!(c.services().is_empty() && c.resolved.is_empty());
}

#[test]
fn an_unchanged_service_is_handed_over_as_the_same_value() {
    let mut c = Cluster::new();
    c.apply_service(key("ns", "a"), svc("a", &["127.10.0.1"], &[("", 80)]));
    c.apply_slice(key("ns", "a-1"), slice("a", &[("", 80)], vec![ep("10.0.0.1", true, true, false)]));
    c.apply_service(key("ns", "b"), svc("b", &["127.10.0.2"], &[("web", 80), ("admin", 9000)]));
    c.apply_slice(
        key("ns", "b-1"),
        slice("b", &[("web", 8080), ("admin", 9001)], vec![ep("10.0.0.2", true, true, false)]),
    );
    c.resolve();
    let before = c.services();
    // b's web port moves; a, b's admin port stay.
    c.apply_slice(
        key("ns", "b-1"),
        slice("b", &[("web", 8081), ("admin", 9001)], vec![ep("10.0.0.2", true, true, false)]),
    );
    // A relist that lists a again unchanged.
    c.begin_service_relist();
    c.apply_service(key("ns", "a"), svc("a", &["127.10.0.1"], &[("", 80)]));
    c.apply_service(key("ns", "b"), svc("b", &["127.10.0.2"], &[("web", 80), ("admin", 9000)]));
    c.end_service_relist();
    assert!(c.resolve().changed);
    let after = c.services();
    let same = |name: &str| {
        let find = |v: &[Arc<ServiceConfig>]| v.iter().find(|s| s.name == name).cloned().expect("service");
        Arc::ptr_eq(&find(&before), &find(&after))
    };
    assert!(same("a.ns"), "an unchanged Service keeps its value");
    assert!(same("b.ns:admin"), "an unchanged port of a changed Service keeps its value");
    assert!(!same("b.ns:web"), "the changed port is a new value");
    assert!(!c.resolve().changed, "nothing left to resolve");
}

/// A random HTTPRoute in `ns` attached to one of the Services, sending to others.
fn random_route(rng: &mut SmallRng) -> (ObjectKey, crate::gateway::RouteRecord) {
    let port = |rng: &mut SmallRng| [80u16, 1080, 81][rng.random_range(0..3)];
    let parent_port = if rng.random_bool(0.5) { serde_json::json!(port(rng)) } else { serde_json::Value::Null };
    let rules: Vec<serde_json::Value> = (0..rng.random_range(1..3))
        .map(|i| {
            let backends: Vec<serde_json::Value> = (0..rng.random_range(1..3))
                .map(|_| {
                    serde_json::json!({"name": format!("s{}", rng.random_range(0..6)), "port": port(rng),
                        "weight": rng.random_range(0..3)})
                })
                .collect();
            serde_json::json!({"matches": [{"path": {"value": format!("/p{i}")}}], "backendRefs": backends})
        })
        .collect();
    let r: crate::gateway::HttpRoute = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "ns", "name": format!("r{}", rng.random_range(0..3)),
            "creationTimestamp": format!("2026-01-0{}T00:00:00Z", rng.random_range(1..4))},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": format!("s{}", rng.random_range(0..6)),
            "port": parent_port}], "rules": rules},
    }))
    .expect("an HTTPRoute");
    crate::gateway::route(&r).expect("attached")
}

/// One random change to a small cluster: Services, slices and HTTPRoutes come, change and go,
/// and relists happen.
fn random_change(rng: &mut SmallRng, c: &mut Cluster) {
    let s = format!("s{}", rng.random_range(0..6));
    match rng.random_range(0..13) {
        10..=11 => {
            let (k, r) = random_route(rng);
            c.apply_route(k, r);
        }
        12 => c.delete_route(&key("ns", &format!("r{}", rng.random_range(0..3)))),
        0..=2 => {
            let ports: Vec<(String, u16)> = (0..rng.random_range(1..3))
                .map(|i| (format!("p{i}"), 80 + rng.random_range(0..2) * 1000 + i))
                .collect();
            let ports: Vec<(&str, u16)> = ports.iter().map(|(n, p)| (n.as_str(), *p)).collect();
            let mut rec = svc(&s, &[&format!("127.10.0.{}", rng.random_range(1..8))], &ports);
            rec.local_only = rng.random_bool(0.2);
            c.apply_service(key("ns", &s), rec);
        }
        3 => c.delete_service(&key("ns", &s)),
        4..=7 => {
            let eps = (0..rng.random_range(0..4))
                .map(|_| EndpointRecord {
                    addr: IpAddr::from([10, 0, 0, rng.random_range(1..6)]),
                    ready: rng.random_bool(0.6),
                    serving: rng.random_bool(0.7),
                    terminating: rng.random_bool(0.3),
                    local: rng.random_bool(0.5),
                    zones: rng.random_bool(0.3).then(|| vec![format!("z{}", rng.random_range(0..2)).into()].into()),
                })
                .collect();
            let name = format!("{s}-{}", rng.random_range(0..3));
            c.apply_slice(key("ns", &name), slice(&s, &[("p0", 8080), ("p1", 9090)], eps));
        }
        8 => c.delete_slice(&key("ns", &format!("{s}-{}", rng.random_range(0..3)))),
        _ => c.set_zone(Some(&format!("z{}", rng.random_range(0..3)))),
    }
}

#[test]
fn which_duplicate_wins_does_not_depend_on_the_order_of_the_slices() {
    // The same address in two slices: serving and terminating in one, serving and not
    // terminating (a new pod that reused the IP, not ready yet) in the other. The one not
    // terminating wins whichever slice is visited first, so no endpoint is ready or serving
    // while terminating: the service has none. Each cluster's slice set iterates in an order
    // of its own, so many clusters visit the two slices both ways.
    let zoned = |addr: &str, zone: &str| EndpointRecord {
        zones: Some(vec![zone.into()].into()),
        ..ep(addr, true, true, false)
    };
    for round in 0..64 {
        let mut c = Cluster::new();
        c.apply_service(key("ns", "web"), svc("web", &["127.10.0.1"], &[("http", 80)]));
        let (a, b) = (ep("10.0.0.9", false, true, true), ep("10.0.0.9", false, true, false));
        let (first, second) = if round % 2 == 0 { (a, b) } else { (b, a) };
        c.apply_slice(key("ns", "web-a"), slice("web", &[("http", 8080)], vec![first]));
        c.apply_slice(key("ns", "web-b"), slice("web", &[("http", 8080)], vec![second]));
        c.resolve();
        assert_eq!(addrs(&c, "web.ns"), Vec::<String>::new(), "round {round}");
        // Ready duplicates that differ only in their hints: the same one wins every time (the
        // larger zone list, here "z2"), so on this z1 node only the other endpoint is used.
        let (z1, z2) = (zoned("10.0.0.8", "z1"), zoned("10.0.0.8", "z2"));
        let (first, second) = if round % 2 == 0 { (z1, z2) } else { (z2, z1) };
        c.apply_slice(key("ns", "web-a"), slice("web", &[("http", 8080)], vec![first, zoned("10.0.0.7", "z1")]));
        c.apply_slice(key("ns", "web-b"), slice("web", &[("http", 8080)], vec![second]));
        c.set_zone(Some("z1"));
        c.resolve();
        assert_eq!(addrs(&c, "web.ns"), ["10.0.0.7:8080"], "round {round}");
    }
}

#[test]
fn incremental_updates_equal_a_fresh_full_sync() {
    let mut routed = 0;
    for seed in 0..200u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut live = Cluster::new();
        for step in 0..60 {
            random_change(&mut rng, &mut live);
            if rng.random_bool(0.3) || step == 59 {
                live.resolve();
            }
        }
        live.resolve();
        // A fresh cluster that lists the same objects once (as a restart would).
        let mut fresh = Cluster::new();
        fresh.set_zone(live.zone.as_deref());
        for (k, (s, _)) in &live.services {
            fresh.apply_service(k.clone(), s.clone());
        }
        for (k, (s, _)) in &live.slices {
            fresh.apply_slice(k.clone(), s.clone());
        }
        for (k, (r, _)) in &live.routes {
            fresh.apply_route(k.clone(), r.clone());
        }
        fresh.resolve();
        assert_eq!(live.services(), fresh.services(), "seed {seed}");
        routed += live.services().iter().filter(|s| !s.routes.is_empty()).count();
        assert_eq!(live.endpoint_count(), fresh.endpoint_count(), "seed {seed}");
        // And a relist that lists only half the objects leaves exactly that half.
        let keep: Vec<(ObjectKey, SliceRecord)> =
            live.slices.iter().filter(|_| rng.random_bool(0.5)).map(|(k, (s, _))| (k.clone(), s.clone())).collect();
        live.begin_slice_relist();
        for (k, s) in keep.iter().cloned() {
            live.apply_slice(k, s);
        }
        live.end_slice_relist();
        live.resolve();
        let mut half = Cluster::new();
        half.set_zone(live.zone.as_deref());
        for (k, (s, _)) in &live.services {
            half.apply_service(k.clone(), s.clone());
        }
        for (k, s) in keep {
            half.apply_slice(k, s);
        }
        for (k, (r, _)) in &live.routes {
            half.apply_route(k.clone(), r.clone());
        }
        half.resolve();
        assert_eq!(live.services(), half.services(), "seed {seed}: relist");
    }
    assert!(routed > 50, "only {routed} services with HTTPRoutes over all seeds: the routes are not exercised");
}
