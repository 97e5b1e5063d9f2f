//! Root tier: Prometheus itself (the Debian `prometheus` package, which `cargo xtask setup`
//! installs for promtool) scrapes weir — over OpenMetrics, which it asks for first, so weir's
//! OpenMetrics exposition and its exemplars are parsed by the real thing — and PromQL over the
//! per-caller series returns what the traffic was: `sum by (source)` of the requests, and
//! `histogram_quantile` over the service's buckets, per caller and in all. The exemplars
//! Prometheus stored are the trace ids of the sampled requests.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_tests::root::{Cgroup, probe, require_root};
use weir_tests::{Behavior, Client, Collector, Endpoint, ReservedPort, Weir, eventually, scratch_dir};

use super::identity::{POD_UID, child, pod_cgroup_name, wait_known};
use super::steering::steered_config;

const PROBE: &str = env!("CARGO_BIN_EXE_weir-probe");

/// A Prometheus server scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _port: ReservedPort,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let bin = ["/usr/bin/prometheus", "/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus is missing: `cargo xtask setup` installs the Debian package prometheus");
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        // Go listeners set SO_REUSEADDR: Prometheus binds the port this holds.
        let port = ReservedPort::loopback().expect("a port for prometheus");
        let addr = port.addr();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, _port: port };
        eventually(Duration::from_secs(30), "prometheus ready", || {
            weir_tests::testkit::client::get_once(p.addr, "prometheus", "/-/ready", Duration::from_secs(2))
                .ok()
                .filter(|r| r.status == 200)
        });
        p
    }

    /// An instant query's result: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut c = Client::connect(self.addr);
        let r = c.get(&format!("/api/v1/query?query={}", encode(promql)), "prometheus");
        assert_eq!(r.status, 200, "{promql}: {}", r.body_string());
        let v: serde_json::Value = serde_json::from_str(&r.body_string()).expect("JSON");
        v["data"]["result"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|s| {
                        let labels = s["metric"]
                            .as_object()
                            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                            .unwrap_or_default();
                        let value = s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
                        (labels, value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn exemplar_trace_ids(&self, selector: &str) -> Vec<String> {
        let mut c = Client::connect(self.addr);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let path = format!("/api/v1/query_exemplars?query={}&start={}&end={}", encode(selector), now - 600, now + 60);
        let r = c.get(&path, "prometheus");
        let v: serde_json::Value = serde_json::from_str(&r.body_string()).expect("JSON");
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(String::from))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn prometheus_scrapes_weir_and_promql_sees_each_caller() {
    require_root();
    let root = Cgroup::create("prom");
    let unit = child(&root, "myapp.service");
    let pod = child(&root, &pod_cgroup_name(POD_UID));
    let pod_workload = format!("pod/{POD_UID}");
    let collector = Collector::start().expect("collector");
    // Every request takes 60 ms at the endpoint: all land in the (0.05, 0.1] bucket.
    let ep = Endpoint::start("a");
    ep.set(Behavior::Delay(Duration::from_millis(60)));
    let svc = format!("[[service]]\nname = \"checkout\"\nvip = \"127.10.13.3:80\"\nendpoints = [\"{}\"]\n", ep.addr);
    let toml = format!(
        "{}[tracing]\nsample_percent = 100.0\notlp_endpoint = \"{}\"\n",
        steered_config(&root, &svc),
        collector.endpoint()
    );
    let weir = Weir::start(&toml);
    wait_known(&weir, &["myapp.service", &pod_workload]);
    let a = probe(PROBE, Some(&unit), &["--addr", "127.10.13.3:80", "--requests", "40", "--connections", "4"]);
    assert_eq!(a.num("via"), 40, "{:?}", a.json);
    let b = probe(PROBE, Some(&pod), &["--addr", "127.10.13.3:80", "--requests", "20", "--connections", "2"]);
    assert_eq!(b.num("via"), 20, "{:?}", b.json);
    weir.wait_metric(
        &format!("weir_requests_total{{service=\"checkout\",source=\"{pod_workload}\",code=\"200\"}}"),
        20.0,
    );
    weir.wait_metric("weir_requests_total{service=\"checkout\",source=\"myapp.service\",code=\"200\"}", 40.0);

    let prom = Prometheus::start(weir.admin);
    let by_source = eventually(Duration::from_secs(30), "Prometheus has scraped every caller", || {
        let r = prom.query("sum by (source) (weir_requests_total{service=\"checkout\"})");
        let m: BTreeMap<String, f64> =
            r.into_iter().map(|(l, v)| (l.get("source").cloned().unwrap_or_default(), v)).collect();
        (m.len() == 2 && m.values().sum::<f64>() == 60.0).then_some(m)
    });
    assert_eq!(by_source, BTreeMap::from([("myapp.service".to_string(), 40.0), (pod_workload.clone(), 20.0)]));

    // Every observation is in (0.05, 0.1]: histogram_quantile interpolates linearly inside it.
    let p50 = prom.query(
        "histogram_quantile(0.5, sum by (source, le) (weir_request_duration_seconds_bucket{service=\"checkout\"}))",
    );
    assert_eq!(p50.len(), 2, "{p50:?}");
    for (labels, v) in &p50 {
        assert!((v - 0.075).abs() < 1e-9, "p50 of {labels:?}: {v}");
    }
    let p99 = prom
        .query("histogram_quantile(0.99, sum by (le) (weir_request_duration_seconds_bucket{service=\"checkout\"}))");
    assert_eq!(p99.len(), 1, "{p99:?}");
    assert!((p99[0].1 - 0.0995).abs() < 1e-9, "p99: {}", p99[0].1);
    // weir's own /callers computes the same from the same buckets.
    let (_, body) = weir.admin_get("/callers");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let callers =
        v["services"].as_array().and_then(|s| s.iter().find(|s| s["service"] == "checkout")).expect("checkout");
    for c in callers["callers"].as_array().expect("callers") {
        assert!(c["p50_seconds"].as_f64().is_some_and(|p| (p - 0.075).abs() < 1e-9), "{c}");
    }

    // Prometheus read the exemplars: trace ids of sampled requests the collector received.
    let ids = eventually(Duration::from_secs(30), "exemplars stored by Prometheus", || {
        let ids = prom.exemplar_trace_ids("weir_request_duration_seconds_bucket{service=\"checkout\"}");
        (!ids.is_empty()).then_some(ids)
    });
    let exported = eventually(Duration::from_secs(10), "spans at the collector", || {
        let s = crate::traces::spans(&collector);
        (s.len() >= 60).then_some(s)
    });
    let traced: std::collections::BTreeSet<String> =
        exported.iter().map(|(_, s)| s.trace_id.iter().map(|b| format!("{b:02x}")).collect()).collect();
    for id in &ids {
        assert!(traced.contains(id), "exemplar {id} is not the trace of a request weir exported");
    }
    drop((pod, unit));
}
