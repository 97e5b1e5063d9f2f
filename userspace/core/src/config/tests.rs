//! Config parsing and validation: defaults, and one negative test per rule, each asserting the
//! line, field and message the operator will read.

use super::*;

const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:15001"
workers = 2

[admin]
listen = "127.0.0.1:15000"

[steering]
cgroups = ["/sys/fs/cgroup/unified/weir-demo"]

[[service]]
name = "checkout"
vip = "127.10.0.1:80"
endpoints = ["127.0.0.1:18081", { addr = "127.0.0.1:18082", weight = 3 }]
lb = "round_robin"

[service.timeouts]
connect_ms = 500

[[service]]
name = "db"
vip = "127.10.0.2:5432"
protocol = "tcp"
endpoints = ["127.0.0.1:15432"]
"#;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(src, Path::new("weir.toml"))
}

fn only_issue(src: &str) -> ConfigIssue {
    let err = parse(src).expect_err("config should be rejected");
    assert_eq!(err.issues.len(), 1, "expected one issue, got {err}");
    err.issues.into_iter().next().expect("one issue")
}

#[test]
fn good_config_parses_with_defaults_filled_in() {
    let c = parse(GOOD).expect("valid config");
    assert_eq!(c.proxy.workers, 2);
    assert_eq!(c.proxy.drain_timeout, Duration::from_secs(20));
    assert_eq!(c.proxy.max_request_head_bytes, 60 * 1024);
    assert_eq!(c.services.len(), 2);
    let s = &c.services[0];
    assert_eq!(s.lb, LbPolicy::RoundRobin);
    assert_eq!(s.endpoints[1].weight, 3);
    assert_eq!(s.timeouts.connect, Duration::from_millis(500));
    assert_eq!(s.timeouts.request, Duration::from_secs(15));
    assert_eq!(s.timeouts.upstream_idle, Duration::from_secs(3));
    assert_eq!(s.retry.attempts, 3);
    assert_eq!(s.outlier.consecutive_gateway_failures, 5);
    assert_eq!(c.services[1].protocol, Protocol::Tcp);
    assert_eq!(c.access_log.sink, LogSink::Stdout);
    assert_eq!(c.access_log.ring_records, None, "unset: sized from the memory limit at start");
    assert_eq!(c.steering.own_mark, 0x5745);
}

#[test]
fn ring_records_set_in_the_file_is_kept_and_checked() {
    let c = parse("[access_log]\nring_records = 4096\n").expect("valid");
    assert_eq!(c.access_log.ring_records, Some(4096));
    assert_eq!(only_issue("[access_log]\nring_records = 8\n").field, "access_log.ring_records");
}

#[test]
fn empty_file_is_a_valid_config_without_services() {
    let c = parse("").expect("empty config");
    assert!(c.services.is_empty());
    assert_eq!(c.proxy.listen, "127.0.0.1:15001".parse().expect("addr"));
}

#[test]
fn bad_vip_names_line_field_and_value() {
    let src = "[[service]]\nname = \"a\"\nvip = \"127.10.0.1\"\n";
    let issue = only_issue(src);
    assert_eq!(issue.field, "service[0].vip");
    assert_eq!(issue.line, 3);
    assert!(issue.message.contains("\"127.10.0.1\""), "{}", issue.message);
    let shown = parse(src).expect_err("invalid").to_string();
    assert!(shown.starts_with("weir.toml:3:"), "{shown}");
}

#[test]
fn bad_endpoint_is_located_in_its_array() {
    let src = "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\nendpoints = [\n  \"127.0.0.1:1\",\n  \"nope\",\n]\n";
    let issue = only_issue(src);
    assert_eq!(issue.field, "service[0].endpoints[1]");
    assert_eq!(issue.line, 6);
}

#[test]
fn unknown_field_is_a_syntax_error_with_position() {
    let issue = only_issue("[proxy]\nlisten = \"127.0.0.1:1\"\nworkerz = 2\n");
    assert_eq!(issue.line, 3);
    assert!(issue.message.contains("workerz"), "{}", issue.message);
}

#[test]
fn wrong_type_is_reported_with_position() {
    let issue = only_issue("[proxy]\nworkers = \"two\"\n");
    assert_eq!(issue.line, 2);
}

#[test]
fn unknown_lb_policy_lists_the_choices() {
    let issue = only_issue("[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\nlb = \"fastest\"\n");
    assert_eq!(issue.line, 4);
    assert!(issue.message.contains("p2c"), "{}", issue.message);
}

#[test]
fn duplicate_names_and_vips_are_rejected() {
    let src =
        "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\n[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\n";
    let err = parse(src).expect_err("duplicates");
    let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["service[1].name", "service[1].vip"]);
    assert_eq!(err.issues[0].line, 5);
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let src = "[proxy]\nlisten = \"x\"\n[admin]\nlisten = \"y\"\n";
    let err = parse(src).expect_err("two bad addresses");
    assert_eq!(err.issues.len(), 2);
    assert_eq!((err.issues[0].line, err.issues[1].line), (2, 4));
}

#[test]
fn port_0_is_allowed_only_for_the_listeners_weir_binds_itself() {
    let c = parse("[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n").expect("any free port");
    assert_eq!((c.proxy.listen.port(), c.admin.listen.port()), (0, 0));
    let issue = only_issue("[[service]]\nname = \"a\"\nvip = \"127.10.0.1:0\"\n");
    assert_eq!(issue.field, "service[0].vip");
    assert!(issue.message.contains("port 0"), "{}", issue.message);
    let issue = only_issue("[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\nlisten = \"127.0.0.1:0\"\n");
    assert_eq!(issue.field, "service[0].listen");
}

#[test]
fn non_loopback_admin_needs_explicit_consent() {
    let issue = only_issue("[admin]\nlisten = \"0.0.0.0:15000\"\n");
    assert_eq!(issue.field, "admin.listen");
    assert!(issue.message.contains("allow_non_loopback"), "{}", issue.message);
    parse("[admin]\nlisten = \"0.0.0.0:15000\"\nallow_non_loopback = true\n").expect("allowed");
}

#[test]
fn ranges_are_checked() {
    let cases = [
        (
            "[[service]]\nname=\"a\"\nvip=\"127.10.0.1:80\"\n[service.retry]\nattempts = 0\n",
            "service[0].retry.attempts",
        ),
        (
            "[[service]]\nname=\"a\"\nvip=\"127.10.0.1:80\"\n[service.outlier]\nmax_ejection_percent = 101\n",
            "service[0].outlier.max_ejection_percent",
        ),
        (
            "[[service]]\nname=\"a\"\nvip=\"127.10.0.1:80\"\n[service.timeouts]\nconnect_ms = 0\n",
            "service[0].timeouts.connect_ms",
        ),
        (
            "[[service]]\nname=\"a\"\nvip=\"127.10.0.1:80\"\n[service.timeouts]\nrequest_ms = 100\nattempt_ms = 200\n",
            "service[0].timeouts.attempt_ms",
        ),
        ("[[service]]\nname=\"A b\"\nvip=\"127.10.0.1:80\"\n", "service[0].name"),
        (
            "[[service]]\nname=\"a\"\nvip=\"127.10.0.1:80\"\nendpoints=[{addr=\"127.0.0.1:1\", weight=0}]\n",
            "service[0].endpoints[0]",
        ),
        ("[access_log]\nsink = \"syslog\"\n", "access_log.sink"),
        ("[steering]\ncgroups = [\"relative/dir\"]\n", "steering.cgroups[0]"),
        ("[proxy]\nmax_connections = 0\n", "proxy.max_connections"),
    ];
    for (src, field) in cases {
        let issue = only_issue(src);
        assert_eq!(issue.field, field, "for {src:?}");
        assert!(issue.line > 0, "no line for {field}");
    }
}

#[test]
fn endpoint_equal_to_the_listener_would_loop() {
    let issue = only_issue("[[service]]\nname=\"a\"\nvip=\"127.10.0.1:80\"\nendpoints=[\"127.0.0.1:15001\"]\n");
    assert!(issue.message.contains("loop"), "{}", issue.message);
}

#[test]
fn log_sinks_parse() {
    for (s, want) in [
        ("off", LogSink::Off),
        ("file:/var/log/weir.log", LogSink::File("/var/log/weir.log".into())),
        ("tcp:127.0.0.1:5170", LogSink::Tcp("127.0.0.1:5170".into())),
        ("unix:/run/vector.sock", LogSink::Unix("/run/vector.sock".into())),
    ] {
        assert_eq!(LogSink::parse(s).expect(s), want);
    }
    assert!(LogSink::parse("tcp:nohost").is_err());
    assert!(LogSink::parse("file:relative").is_err());
}

#[test]
fn kubernetes_defaults_and_located_errors() {
    let k = parse("").expect("valid").kubernetes;
    assert!(!k.enabled && k.kubeconfig.is_none() && k.node_name.is_none() && k.service_selector.is_empty());
    assert_eq!((k.exclude_namespaces, k.default_protocol), (vec!["kube-system".to_string()], Protocol::Tcp));
    for (src, field) in [
        ("[kubernetes]\nservice_selector = \"env in (a\"\n", "kubernetes.service_selector"),
        ("[kubernetes]\nexclude_namespaces = [\"Kube_System\"]\n", "kubernetes.exclude_namespaces[0]"),
        ("[kubernetes]\nnode_name = \"node a\"\n", "kubernetes.node_name"),
        ("[kubernetes]\nkubeconfig = \"\"\n", "kubernetes.kubeconfig"),
    ] {
        let issue = only_issue(src);
        assert_eq!(issue.field, field, "for {src:?}");
        assert!(issue.line > 0, "no line for {field}");
    }
}

#[test]
fn tracing_and_metrics_defaults_and_located_errors() {
    let c = parse(GOOD).expect("valid config");
    assert_eq!((c.tracing.sample_percent, c.tracing.otlp_endpoint.as_deref()), (0.0, None));
    assert!(!c.tracing.enabled(), "no endpoint: tracing off");
    assert_eq!(c.metrics.max_sources, 50);
    let on = parse("[tracing]\nsample_percent = 12.5\notlp_endpoint = \"http://collector:4318\"\n").expect("valid");
    assert_eq!(
        on.tracing.traces_target(),
        Some(OtlpTarget { host: "collector".into(), port: 4318, path: "/v1/traces".into() })
    );
    for (src, field, says) in [
        (
            "[tracing]\nsample_percent = 101.0\notlp_endpoint = \"http://c:4318\"\n",
            "tracing.sample_percent",
            "percentage",
        ),
        ("[tracing]\nsample_percent = 5.0\n", "tracing.sample_percent", "otlp_endpoint"),
        ("[tracing]\notlp_endpoint = \"https://c:4318\"\n", "tracing.otlp_endpoint", "https"),
        ("[tracing]\notlp_endpoint = \"c:4318\"\n", "tracing.otlp_endpoint", "http URL"),
        ("[tracing]\notlp_endpoint = \"http://c:0\"\n", "tracing.otlp_endpoint", "port"),
        ("[metrics]\nmax_sources = 0\n", "metrics.max_sources", "1..=1000"),
        ("[metrics]\nmax_sources = 1001\n", "metrics.max_sources", "1..=1000"),
    ] {
        let issue = only_issue(src);
        assert_eq!(issue.field, field, "for {src:?}");
        assert!(issue.line > 0, "no line for {src:?}");
        assert!(issue.message.contains(says), "{src:?}: {}", issue.message);
    }
}

#[test]
fn otlp_endpoints_parse() {
    let t = |u: &str| OtlpTarget::parse(u).expect(u);
    assert_eq!(t("http://127.0.0.1:4318").path, "/v1/traces");
    assert_eq!(t("http://127.0.0.1:4318/").path, "/v1/traces");
    assert_eq!(t("http://h/otlp").port, 4318);
    assert_eq!(t("http://h/otlp").path, "/otlp/v1/traces");
    assert_eq!(t("http://h:9/v1/traces").path, "/v1/traces");
    let v6 = t("http://[::1]:4318");
    assert_eq!((v6.host.as_str(), v6.port), ("::1", 4318));
    assert!(OtlpTarget::parse("http://:4318").is_err());
    assert!(OtlpTarget::parse("http://h:4318/v1/traces?x=1").is_err());
}
