//! Root tier: caller identity. Workloads in cgroups under a steered directory — one named like
//! a systemd unit, one like a Kubernetes pod (systemd cgroup driver) — call the same service
//! through weir; RED (`source`), the access log (`source_workload`, `source_cgroup_id`) and
//! `/callers` name each caller, and a client that dials weir directly is `direct`. With 200
//! callers and `max_sources = 50`, exactly 51 `source` values exist: 50 names and `other`.
//! A `per = "client"` rate limit gives each steered workload its own bucket, though all
//! connect from one address, and keys a direct client by its address.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use weir_tests::root::{Cgroup, probe, require_root};
use weir_tests::{Client, Endpoint, LineSink, Weir, eventually};

use super::steering::steered_config;

const PROBE: &str = env!("CARGO_BIN_EXE_weir-probe");
pub(super) const POD_UID: &str = "1b4e2c5a-9f7d-4c2e-8a1b-3c5d7e9f1a2b";

/// A child cgroup of `parent` (removed on drop, before its parent when declared after it).
pub(super) fn child(parent: &Cgroup, name: &str) -> Cgroup {
    Cgroup::try_create_in(&parent.path, name).unwrap_or_else(|e| panic!("cgroup {name}: {e}"))
}

/// The pod cgroup name the kubelet's systemd driver gives a BestEffort pod.
pub(super) fn pod_cgroup_name(uid: &str) -> String {
    format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"))
}

/// `/callers` as JSON.
pub(super) fn callers(weir: &Weir) -> serde_json::Value {
    let (status, body) = weir.admin_get("/callers");
    assert_eq!(status, 200, "/callers: {body}");
    serde_json::from_str(&body).expect("/callers is JSON")
}

/// Waits until weir has read every workload in `want` from the cgroup tree; returns `/callers`.
pub(super) fn wait_known(weir: &Weir, want: &[&str]) -> serde_json::Value {
    eventually(Duration::from_secs(15), &format!("weir knows the workloads {want:?}"), || {
        let v = callers(weir);
        let known: BTreeSet<String> = v["workloads"]
            .as_array()?
            .iter()
            .filter(|w| w["cgroups"].as_array().is_some_and(|c| !c.is_empty()))
            .filter_map(|w| w["workload"].as_str().map(String::from))
            .collect();
        want.iter().all(|w| known.contains(*w)).then_some(v)
    })
}

fn cgroup_id(cg: &Cgroup) -> u64 {
    std::fs::metadata(&cg.path).expect("cgroup dir").ino()
}

#[test]
fn two_workloads_are_told_apart_in_red_the_access_log_and_callers() {
    require_root();
    let root = Cgroup::create("ident");
    let unit = child(&root, "myapp.service");
    let pod = child(&root, &pod_cgroup_name(POD_UID));
    let pod_workload = format!("pod/{POD_UID}");
    let ep = Endpoint::start("a");
    let (sink, lines) = LineSink::start().expect("log sink");
    let svc = format!("[[service]]\nname = \"checkout\"\nvip = \"127.10.13.1:80\"\nendpoints = [\"{}\"]\n", ep.addr);
    let toml = steered_config(&root, &svc).replace("sink = \"off\"", &format!("sink = \"tcp:{}\"", sink.addr));
    let weir = Weir::start(&toml);
    let v = wait_known(&weir, &["myapp.service", &pod_workload]);
    // Two workloads fit in the 50 names: each has its own from the moment weir saw it.
    for w in v["workloads"].as_array().expect("workloads") {
        assert_eq!(w["source"], w["workload"], "{w}");
    }

    let a = probe(PROBE, Some(&unit), &["--addr", "127.10.13.1:80", "--requests", "30", "--connections", "3"]);
    assert_eq!((a.num("ok"), a.num("via")), (30, 30), "{:?}", a.json);
    let b = probe(PROBE, Some(&pod), &["--addr", "127.10.13.1:80", "--requests", "20", "--connections", "2"]);
    assert_eq!((b.num("ok"), b.num("via")), (20, 20), "{:?}", b.json);
    let mut direct = Client::connect(weir.proxy);
    for _ in 0..5 {
        assert_eq!(direct.get("/", "checkout").status, 200);
    }

    weir.wait_metric("weir_requests_total{service=\"checkout\",source=\"myapp.service\",code=\"200\"}", 30.0);
    weir.wait_metric(
        &format!("weir_requests_total{{service=\"checkout\",source=\"{pod_workload}\",code=\"200\"}}"),
        20.0,
    );
    weir.wait_metric("weir_requests_total{service=\"checkout\",source=\"direct\",code=\"200\"}", 5.0);
    assert_eq!(weir.metric("weir_requests_total{service=\"checkout\",source=\"other\",code=\"200\"}"), 0.0);
    weir.wait_metric("weir_request_duration_seconds_count{service=\"checkout\",source=\"myapp.service\"}", 30.0);

    // Every access-log line names its caller.
    let (unit_id, pod_id) = (cgroup_id(&unit), cgroup_id(&pod));
    let mut seen = std::collections::BTreeMap::<(String, Option<u64>), u64>::new();
    for _ in 0..55 {
        let line = lines.recv_timeout(Duration::from_secs(5)).expect("an access-log line");
        let j: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let key = (j["source_workload"].as_str().unwrap_or("null").to_string(), j["source_cgroup_id"].as_u64());
        *seen.entry(key).or_default() += 1;
    }
    let want = std::collections::BTreeMap::from([
        (("myapp.service".to_string(), Some(unit_id)), 30),
        ((pod_workload.clone(), Some(pod_id)), 20),
        (("direct".to_string(), None), 5),
    ]);
    assert_eq!(seen, want, "access-log callers");

    // /callers: per service, per caller.
    let v = eventually(Duration::from_secs(5), "/callers counts every caller", || {
        let v = callers(&weir);
        let list = v["services"].as_array()?.iter().find(|s| s["service"] == "checkout")?["callers"].clone();
        let requests = |source: &str| {
            list.as_array().and_then(|l| l.iter().find(|c| c["source"] == source)).and_then(|c| c["requests"].as_u64())
        };
        (requests("myapp.service") == Some(30) && requests(&pod_workload) == Some(20) && requests("direct") == Some(5))
            .then_some(v)
    });
    let checkout =
        v["services"].as_array().and_then(|s| s.iter().find(|s| s["service"] == "checkout")).expect("checkout");
    for c in checkout["callers"].as_array().expect("callers") {
        assert!(c["p50_seconds"].as_f64().is_some_and(|p| p > 0.0), "{c}");
        assert!(c["p99_seconds"].as_f64().is_some_and(|p| p > 0.0), "{c}");
        assert_eq!(c["errors"], 0, "{c}");
        assert!(c["rate_per_second"].as_f64().is_some(), "{c}");
    }
    let unit_view = v["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["workload"] == "myapp.service"))
        .expect("myapp.service in /callers");
    assert_eq!(unit_view["cgroups"][0]["id"].as_u64(), Some(unit_id));
    drop((pod, unit));
}

#[test]
fn a_per_client_rate_limit_keys_steered_callers_by_cgroup_and_direct_ones_by_address() {
    require_root();
    let root = Cgroup::create("rlclient");
    let noisy = child(&root, "noisy.service");
    let quiet = child(&root, "quiet.service");
    let ep = Endpoint::start("a");
    // One token a second and a burst of 10: a flood drains its bucket, a caller with a bucket
    // of its own still has 10 tokens. Every caller here connects from 127.0.0.1.
    let svc = format!(
        "[[service]]\nname = \"lim\"\nvip = \"127.10.13.6:80\"\nendpoints = [\"{}\"]\n\
         [service.rate_limit]\nrequests_per_second = 1\nburst = 10\nper = \"client\"\n",
        ep.addr
    );
    let weir = Weir::start(&steered_config(&root, &svc));
    wait_known(&weir, &["noisy.service", "quiet.service"]);

    let flood = probe(PROBE, Some(&noisy), &["--addr", "127.10.13.6:80", "--requests", "60", "--connections", "2"]);
    let (ok, limited) = (flood.json["statuses"]["200"].as_u64(), flood.json["statuses"]["429"].as_u64());
    let through_weir = flood.json["peers"].as_object().is_some_and(|p| p.keys().all(|k| *k == weir.proxy.to_string()));
    assert!(through_weir && flood.num("via") == flood.num("ok"), "the flood was not steered: {:?}", flood.json);
    assert!(limited.is_some_and(|l| l > 0) && ok.unwrap_or(0) + limited.unwrap_or(0) == 60, "{:?}", flood.json);
    // Same address, another cgroup: its own bucket, untouched by the flood. (Keyed by the
    // address, it would share the drained one.)
    let calm = probe(PROBE, Some(&quiet), &["--addr", "127.10.13.6:80", "--requests", "9", "--connections", "1"]);
    assert_eq!((calm.num("ok"), calm.num("via")), (9, 9), "the quiet workload was limited: {:?}", calm.json);
    // A client that dialed weir directly has no cgroup weir knows: keyed by its address, which
    // no steered caller's requests were counted against; then it floods and is limited itself.
    let mut direct = Client::connect(weir.proxy);
    for i in 0..9 {
        assert_eq!(direct.get("/", "lim").status, 200, "direct request {i}");
    }
    let direct_limited = (0..40).filter(|_| direct.get("/", "lim").status == 429).count() as f64;
    assert!(direct_limited > 0.0, "the direct client's own bucket never ran dry");

    // The refusals are counted under each caller's `source`.
    let limited = limited.unwrap_or(0) as f64;
    weir.wait_metric("weir_requests_total{service=\"lim\",source=\"noisy.service\",code=\"429\"}", limited);
    weir.wait_metric("weir_requests_total{service=\"lim\",source=\"quiet.service\",code=\"200\"}", 9.0);
    weir.wait_metric("weir_requests_total{service=\"lim\",source=\"direct\",code=\"429\"}", direct_limited);
    assert_eq!(weir.metric("weir_requests_total{service=\"lim\",source=\"quiet.service\",code=\"429\"}"), 0.0);
    weir.wait_metric("weir_request_errors_total{service=\"lim\",reason=\"rate-limited\"}", limited + direct_limited);
    drop((quiet, noisy));
}

/// Runs one probe per cgroup (`requests` each), eight at a time.
fn from_each(cgroups: &[Cgroup], vip: &str, requests: u32) {
    std::thread::scope(|s| {
        for chunk in cgroups.chunks(cgroups.len().div_ceil(8)) {
            s.spawn(move || {
                for cg in chunk {
                    let r = probe(PROBE, Some(cg), &["--addr", vip, "--requests", &requests.to_string()]);
                    assert_eq!(r.num("via"), u64::from(requests), "{}: {:?}", cg.path.display(), r.json);
                }
            });
        }
    });
}

fn sources_in(metrics: &str, prefix: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split("source=\"").nth(1)?.split('"').next().map(String::from))
        .collect()
}

#[test]
fn two_hundred_callers_with_fifty_names_make_exactly_fifty_one_source_values() {
    require_root();
    let root = Cgroup::create("fan");
    let jobs: Vec<Cgroup> = (0..200).map(|i| child(&root, &format!("job-{i:03}"))).collect();
    let ep = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"fan\"\nvip = \"127.10.13.2:80\"\nendpoints = [\"{}\"]\n", ep.addr);
    let weir = Weir::start(&format!("{}[metrics]\nmax_sources = 50\n", steered_config(&root, &svc)));
    let names: Vec<String> = (0..200).map(|i| format!("job-{i:03}")).collect();
    let v = wait_known(&weir, &names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(v["named_sources"], 0, "200 callers do not fit in 50 names: none is named before traffic");

    // Traffic names the busiest fifty; then every caller calls again.
    from_each(&jobs, "127.10.13.2:80", 2);
    eventually(Duration::from_secs(10), "fifty names given", || {
        (callers(&weir)["named_sources"].as_u64() == Some(50)).then_some(())
    });
    from_each(&jobs, "127.10.13.2:80", 1);
    let total = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("weir_requests_total{service=\"fan\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    eventually(Duration::from_secs(10), "all 600 requests counted", || (total(&weir.metrics()) == 600.0).then_some(()));
    let m = weir.metrics();
    let requests = sources_in(&m, "weir_requests_total{service=\"fan\"");
    assert_eq!(requests.len(), 51, "source values: {requests:?}");
    assert!(requests.contains("other") && !requests.contains("direct"));
    let durations = sources_in(&m, "weir_request_duration_seconds_count{service=\"fan\"");
    assert_eq!(durations, requests, "the histogram has the same bounded sources");
    // Names stick: more traffic from the unnamed callers changes nothing.
    from_each(&jobs[150..], "127.10.13.2:80", 3);
    eventually(Duration::from_secs(10), "the last round counted", || (total(&weir.metrics()) == 750.0).then_some(()));
    assert_eq!(sources_in(&weir.metrics(), "weir_requests_total{service=\"fan\""), requests);
    assert_eq!(callers(&weir)["named_sources"], 50);
    drop(jobs);
}

#[test]
fn a_weir_process_that_dropped_its_capabilities_still_names_its_callers() {
    require_root();
    let root = Cgroup::create("identproc");
    let unit = child(&root, "billing.service");
    let ep = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"pay\"\nvip = \"127.10.13.4:80\"\nendpoints = [\"{}\"]\n", ep.addr);
    // `weir run` drops every capability on the identity thread: reading the cgroup tree
    // needs none.
    let weir = weir_tests::WeirProcess::start(env!("CARGO_BIN_EXE_weir-cli"), &steered_config(&root, &svc), None);
    let metrics = || weir_tests::Client::connect(weir.admin).get("/metrics", "admin").body_string();
    eventually(Duration::from_secs(15), "weir knows billing.service", || {
        let body = weir_tests::Client::connect(weir.admin).get("/callers", "admin").body_string();
        body.contains("\"workload\": \"billing.service\"").then_some(())
    });
    let r = probe(PROBE, Some(&unit), &["--addr", "127.10.13.4:80", "--requests", "7"]);
    assert_eq!(r.num("via"), 7, "{:?}", r.json);
    eventually(Duration::from_secs(5), "billing.service counted under its name", || {
        let v = weir_tests::metric_value(
            &metrics(),
            "weir_requests_total{service=\"pay\",source=\"billing.service\",code=\"200\"}",
        );
        (v == 7.0).then_some(())
    });
    drop(weir);
    drop(unit);
}

#[test]
fn grpc_callers_over_http2_are_named_and_their_spans_carry_the_caller() {
    use crate::traces::{PARENT, TRACE, attr, spans, traced_metadata, weirs_span};
    use weir_tests::clients::{grpc_js_in, grpc_py_in, grpc_server};

    require_root();
    let root = Cgroup::create("identgrpc");
    let unit = child(&root, "orders.service");
    let pod = child(&root, &pod_cgroup_name(POD_UID));
    let pod_workload = format!("pod/{POD_UID}");
    let server = grpc_server("a", &[]);
    let collector = weir_tests::Collector::start().expect("collector");
    let svc = format!(
        "[[service]]\nname = \"ledger\"\nvip = \"127.10.13.5:80\"\nprotocol = \"grpc\"\nendpoints = [\"{}\"]\n",
        server.addr
    );
    let toml = format!("{}[tracing]\notlp_endpoint = \"{}\"\n", steered_config(&root, &svc), collector.endpoint());
    let weir = Weir::start(&toml);
    wait_known(&weir, &["orders.service", &pod_workload]);
    let vip: std::net::SocketAddr = "127.10.13.5:80".parse().expect("vip");

    // grpcio from a systemd unit, grpc-js from a pod: each one HTTP/2 connection, steered.
    let out = grpc_py_in(Some(&unit.path), vip, "-", &["calls", "12"]);
    assert_eq!(out["codes"]["OK"].as_u64(), Some(12), "{out}");
    let js = grpc_js_in(Some(&pod.path), vip, "-", 8);
    let js_calls = js["codes"]["OK"].as_u64().expect("grpc-js calls") + 1; // and its one stream
    assert_eq!(js["stream"].as_u64(), Some(5), "{js}");
    // A sampled call: weir's span names the caller, and its id is the forwarded parent.
    let tp = format!("traceparent=00-{TRACE}-{PARENT}-01");
    let out = grpc_py_in(Some(&unit.path), vip, "-", &["inspect", "10", &tp]);
    assert_eq!(out["code"], "OK", "{out}");
    let (forwarded, _) = traced_metadata(&out["seen"]);

    weir.wait_metric("weir_requests_total{service=\"ledger\",source=\"orders.service\",code=\"200\"}", 13.0);
    weir.wait_metric(
        &format!("weir_requests_total{{service=\"ledger\",source=\"{pod_workload}\",code=\"200\"}}"),
        js_calls as f64,
    );
    weir.wait_metric("weir_grpc_responses_total{service=\"ledger\",grpc_code=\"ok\"}", 13.0 + js_calls as f64);
    for source in ["other", "direct"] {
        let sample = format!("weir_requests_total{{service=\"ledger\",source=\"{source}\",code=\"200\"}}");
        assert_eq!(weir.metric(&sample), 0.0, "{sample}");
    }
    let span = eventually(Duration::from_secs(10), "the sampled call's span", || {
        spans(&collector).into_iter().map(|(_, s)| s).find(|s| s.parent_span_id.iter().any(|b| *b != 0))
    });
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!((hex(&span.trace_id), hex(&span.span_id)), (TRACE.to_string(), weirs_span(&forwarded)));
    assert_eq!(attr(&span, "weir.source").as_deref(), Some("orders.service"), "{:?}", span.attributes);
    assert_eq!(spans(&collector).len(), 1, "only the sampled call has a span");
    drop((pod, unit));
}
