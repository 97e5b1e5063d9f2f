//! RED metrics with exact deltas for known traffic, the Prometheus exposition passing
//! `promtool check metrics`, and the admin endpoints.

use std::time::Duration;

use weir_tests::{Behavior, Client, Endpoint, Weir};

use crate::data_path::{config, service};

#[test]
fn known_traffic_moves_counters_and_histogram_by_exactly_that_much() {
    let ok = Endpoint::start("ok");
    let weir = Weir::start(&config(&service("red", "127.10.5.1:80", &[&ok], "[service.retry]\nattempts = 1\n")));
    let mut c = Client::connect(weir.proxy);
    for _ in 0..30 {
        assert_eq!(c.get("/", "red").status, 200);
    }
    ok.set(Behavior::Status(500));
    for _ in 0..7 {
        assert_eq!(c.get("/", "red").status, 500);
    }
    weir.wait_metric("weir_requests_total{service=\"red\",source=\"direct\",code=\"200\"}", 30.0);
    weir.wait_metric("weir_requests_total{service=\"red\",source=\"direct\",code=\"500\"}", 7.0);
    weir.wait_metric("weir_request_duration_seconds_count{service=\"red\",source=\"direct\"}", 37.0);
    assert_eq!(
        weir.metric("weir_request_duration_seconds_bucket{service=\"red\",source=\"direct\",le=\"+Inf\"}"),
        37.0
    );
    // 500s from the endpoint are passed through, not weir's own errors.
    assert_eq!(weir.metric("weir_request_errors_total{service=\"red\",reason=\"connect-failure\"}"), 0.0);
}

#[test]
fn a_50ms_endpoint_lands_in_the_right_bucket() {
    let slow = Endpoint::start("slow");
    slow.set(Behavior::Delay(Duration::from_millis(50)));
    let weir = Weir::start(&config(&service("lat", "127.10.5.2:80", &[&slow], "")));
    let mut c = Client::connect(weir.proxy);
    for _ in 0..5 {
        assert_eq!(c.get("/", "lat").status, 200);
    }
    weir.wait_metric("weir_request_duration_seconds_count{service=\"lat\",source=\"direct\"}", 5.0);
    assert_eq!(weir.metric("weir_request_duration_seconds_bucket{service=\"lat\",source=\"direct\",le=\"0.05\"}"), 0.0);
    assert_eq!(weir.metric("weir_request_duration_seconds_bucket{service=\"lat\",source=\"direct\",le=\"0.1\"}"), 5.0);
    let sum = weir.metric("weir_request_duration_seconds_sum{service=\"lat\",source=\"direct\"}");
    assert!((0.25..0.5).contains(&sum), "sum {sum}");
}

#[test]
fn errors_are_counted_by_reason() {
    let dead = Endpoint::start("dead");
    dead.kill();
    let weir = Weir::start(&config(&service("err", "127.10.5.3:80", &[&dead], "")));
    let mut c = Client::connect(weir.proxy);
    for _ in 0..3 {
        assert_eq!(c.get("/", "err").status, 503);
    }
    assert_eq!(c.get("/", "nope").status, 404);
    weir.wait_metric("weir_request_errors_total{service=\"err\",reason=\"connect-failure\"}", 3.0);
    weir.wait_metric("weir_requests_total{service=\"err\",source=\"direct\",code=\"503\"}", 3.0);
    weir.wait_metric("weir_unrouted_requests_total", 1.0);
}

#[test]
fn metrics_pass_promtool() {
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&service("prom", "127.10.5.4:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    assert_eq!(c.get("/", "prom").status, 200);
    weir.wait_metric("weir_requests_total{service=\"prom\",source=\"direct\",code=\"200\"}", 1.0);
    let text = weir.metrics();
    for name in [
        "weir_requests_total",
        "weir_request_duration_seconds_bucket",
        "weir_request_errors_total",
        "weir_retries_total",
        "weir_retry_budget_exhausted_total",
        "weir_outlier_ejections_total",
        "weir_endpoints",
        "weir_upstream_connections",
        "weir_downstream_connections",
        "weir_access_log_records_total",
        "weir_config_reloads_total",
        "weir_config_last_reload_timestamp_seconds",
        "weir_build_info",
    ] {
        assert!(text.contains(&format!("\n{name}")), "missing {name}");
    }
    let promtool = ["/usr/bin/promtool", "/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("promtool is missing: `cargo xtask setup` installs the Debian package prometheus");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn admin_endpoints_answer() {
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&service("adm", "127.10.5.5:80", &[&ep], "")));
    assert_eq!(weir.admin_get("/ready"), (200, "ready\n".to_string()));
    let (status, body) = weir.admin_get("/config");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["config"]["services"][0]["name"], "adm");
    let (status, body) = weir.admin_get("/endpoints");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["endpoints"][0]["state"], "active");
    assert_eq!(weir.admin_get("/nope").0, 404);
}
