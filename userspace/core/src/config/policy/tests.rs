//! Traffic policy in the config: the issue's example parses with every default filled in, and
//! each mistake is named with its line and field.

use std::path::Path;

use super::super::{Config, ConfigError, ConfigIssue};
use super::*;

/// The example operators write (routes, split, header edits, fault, rate limit, checks).
pub(crate) const SHOP: &str = r#"
[[service]]
name = "shop"
vip = "127.10.0.5:80"

[[service.backend]]
name = "stable"
endpoints = ["127.0.0.1:18101", "127.0.0.1:18102"]
[[service.backend]]
name = "canary"
endpoints = ["127.0.0.1:18103"]

[[service.route]]
match = { path_prefix = "/v2/" }
backends = { canary = 1 }
[service.route.timeouts]
request_ms = 2000

[[service.route]]
match = { path_prefix = "/" }
backends = { stable = 90, canary = 10 }
request_headers = { set = { "x-weir-route" = "default" }, remove = ["x-debug"] }
fault = { abort_percent = 0, abort_status = 503, delay_percent = 0, delay_ms = 0 }

[service.rate_limit]
requests_per_second = 100
burst = 50
per = "service"

[service.health_check]
path = "/healthz"
interval_ms = 1000
timeout_ms = 500
unhealthy_after = 2
healthy_after = 2
"#;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(src, Path::new("weir.toml"))
}

fn issues(src: &str) -> Vec<ConfigIssue> {
    parse(src).expect_err("config should be rejected").issues
}

fn only_issue(src: &str) -> ConfigIssue {
    let mut all = issues(src);
    assert_eq!(all.len(), 1, "expected one issue, got {all:?}");
    all.remove(0)
}

/// `SHOP` with `from` replaced by `to` (which must occur).
fn shop_with(from: &str, to: &str) -> String {
    assert!(SHOP.contains(from), "{from:?} is not in SHOP");
    SHOP.replacen(from, to, 1)
}

fn line_of(src: &str, needle: &str) -> usize {
    src.lines().position(|l| l.contains(needle)).map(|i| i + 1).expect("needle in source")
}

#[test]
fn the_example_parses_with_its_policy() {
    let c = parse(SHOP).expect("valid");
    let s = &c.services[0];
    assert!(s.endpoints.is_empty());
    let groups: Vec<(&str, usize)> = s.backend_groups().map(|(n, e)| (n, e.len())).collect();
    assert_eq!(groups, [("stable", 2), ("canary", 1)]);
    assert_eq!(s.routes.len(), 2);
    assert_eq!(s.routes[0].matcher.path_prefix.as_deref(), Some("/v2/"));
    assert_eq!(s.routes[0].timeouts.request, Some(Duration::from_secs(2)));
    assert_eq!(s.route_request_timeout(&s.routes[0]), Duration::from_secs(2));
    assert_eq!(s.route_request_timeout(&s.routes[1]), Duration::from_secs(15), "the service's");
    assert_eq!(s.routes[1].backends.get("stable"), Some(&90));
    assert_eq!(s.routes[1].request_headers.set, [("x-weir-route".to_string(), "default".to_string())]);
    assert_eq!(s.routes[1].request_headers.remove, ["x-debug"]);
    assert!(!s.routes[1].fault.any());
    let rl = s.rate_limit.as_ref().expect("rate limit");
    assert_eq!((rl.requests_per_second, rl.burst(), rl.per), (100, 50, RateLimitPer::Service));
    let hc = s.health_check.as_ref().expect("health check");
    assert_eq!((hc.path.as_deref(), hc.tcp, hc.unhealthy_after), (Some("/healthz"), false, 2));
}

#[test]
fn defaults_of_the_policy_tables() {
    let c = parse(
        "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\n[[service.route]]\n\
         [service.rate_limit]\nrequests_per_second = 7\n[service.health_check]\n",
    )
    .expect("valid");
    let s = &c.services[0];
    assert_eq!(s.backend_groups().map(|(n, _)| n).collect::<Vec<_>>(), ["default"], "the service's endpoints");
    let r = &s.routes[0];
    assert_eq!(r.matcher, crate::route::RouteMatch::default());
    assert!(r.backends.is_empty() && r.request_headers.is_empty());
    assert_eq!((r.fault.abort_status, r.fault.abort_percent, r.fault.delay), (503, 0.0, Duration::ZERO));
    assert_eq!(s.route_retry_policy(r), s.retry_policy());
    let rl = s.rate_limit.as_ref().expect("rate limit");
    assert_eq!((rl.burst, rl.burst(), rl.per), (None, 7, RateLimitPer::Service));
    let hc = s.health_check.as_ref().expect("checks");
    assert_eq!(hc.path.as_deref(), Some(DEFAULT_HEALTH_PATH));
    assert_eq!((hc.interval, hc.timeout, hc.healthy_after), (Duration::from_secs(1), Duration::from_millis(500), 2));
}

#[test]
fn route_overrides_of_retries() {
    let c = parse(&shop_with(
        "[service.route.timeouts]\nrequest_ms = 2000\n",
        "[service.route.timeouts]\nrequest_ms = 2000\nattempt_ms = 300\n[service.route.retry]\nattempts = 1\non_server_error = false\n",
    ))
    .expect("valid");
    let s = &c.services[0];
    let p = s.route_retry_policy(&s.routes[0]);
    assert_eq!((p.attempts, p.per_attempt_timeout), (1, Some(Duration::from_millis(300))));
    assert_eq!(s.route_retry_policy(&s.routes[1]).attempts, 3);
}

#[test]
fn a_route_naming_an_unknown_backend_is_located() {
    let src = shop_with("backends = { canary = 1 }", "backends = { canery = 1 }");
    let issue = only_issue(&src);
    assert_eq!(issue.field, "service[0].route[0].backends.canery");
    assert_eq!(issue.line, line_of(&src, "canery"));
    assert!(issue.message.contains("stable, canary"), "{}", issue.message);
    assert!(parse(&src).expect_err("bad").to_string().starts_with(&format!("weir.toml:{}:", issue.line)));
}

#[test]
fn weights_all_zero_are_a_mistake() {
    let src = shop_with("backends = { stable = 90, canary = 10 }", "backends = { stable = 0, canary = 0 }");
    let issue = only_issue(&src);
    assert_eq!(issue.field, "service[0].route[1].backends");
    assert_eq!(issue.line, line_of(&src, "stable = 0"));
    assert!(issue.message.contains("every weight is 0"), "{}", issue.message);
}

#[test]
fn an_invalid_regex_is_located() {
    let src = shop_with("match = { path_prefix = \"/v2/\" }", "match = { path_regex = \"/v2/(\" }");
    let issue = only_issue(&src);
    assert_eq!(issue.field, "service[0].route[0].match.path_regex");
    assert_eq!(issue.line, line_of(&src, "path_regex"));
    assert!(issue.message.contains("not a valid regex"), "{}", issue.message);
}

#[test]
fn a_rate_of_0_is_located() {
    let src = shop_with("requests_per_second = 100", "requests_per_second = 0");
    let issue = only_issue(&src);
    assert_eq!(issue.field, "service[0].rate_limit.requests_per_second");
    assert_eq!(issue.line, line_of(&src, "requests_per_second = 0"));
    let issue = only_issue(&shop_with("requests_per_second = 100\nburst = 50", "burst = 5"));
    assert!(issue.message.contains("missing field `requests_per_second`"), "{}", issue.message);
}

#[test]
fn policy_mistakes_name_their_field() {
    let cases: [(&str, &str, &str); 14] = [
        ("name = \"canary\"", "name = \"stable\"", "service[0].backend[1].name"),
        ("name = \"canary\"", "name = \"Canary!\"", "service[0].backend[1].name"),
        ("endpoints = [\"127.0.0.1:18103\"]", "endpoints = [\"nope\"]", "service[0].backend[1].endpoints[0]"),
        ("vip = \"127.10.0.5:80\"", "vip = \"127.10.0.5:80\"\nendpoints = [\"127.0.0.1:1\"]", "service[0].endpoints"),
        (
            "match = { path_prefix = \"/v2/\" }",
            "match = { path_prefix = \"/v2/\", path_exact = \"/v2\" }",
            "service[0].route[0].match",
        ),
        (
            "match = { path_prefix = \"/v2/\" }",
            "match = { path_prefix = \"v2\" }",
            "service[0].route[0].match.path_prefix",
        ),
        ("match = { path_prefix = \"/v2/\" }", "match = { method = \"G ET\" }", "service[0].route[0].match.method"),
        (
            "\"x-weir-route\" = \"default\"",
            "\"content-length\" = \"1\"",
            "service[0].route[1].request_headers.set.content-length",
        ),
        ("remove = [\"x-debug\"]", "remove = [\"x-debug\", \"host\"]", "service[0].route[1].request_headers.remove[1]"),
        ("abort_percent = 0,", "abort_percent = 100.5,", "service[0].route[1].fault.abort_percent"),
        ("abort_status = 503", "abort_status = 99", "service[0].route[1].fault.abort_status"),
        ("delay_percent = 0, delay_ms = 0", "delay_percent = 5, delay_ms = 0", "service[0].route[1].fault.delay_ms"),
        ("path = \"/healthz\"", "path = \"/healthz\"\ntcp = true", "service[0].health_check.tcp"),
        ("unhealthy_after = 2", "unhealthy_after = 0", "service[0].health_check.unhealthy_after"),
    ];
    for (from, to, field) in cases {
        let src = shop_with(from, to);
        // The first issue (a duplicate or invalid backend name also leaves routes naming it).
        let issue = issues(&src).remove(0);
        assert_eq!(issue.field, field, "for {to:?}: {}", issue.message);
        assert!(issue.line > 0, "no line for {field}");
    }
}

#[test]
fn backends_need_a_route_and_an_http_service() {
    let no_route = "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\n[[service.backend]]\nname = \"b\"\n";
    let issue = only_issue(no_route);
    assert_eq!((issue.field.as_str(), issue.line), ("service[0].backend", 4));
    let tcp = "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\nprotocol = \"tcp\"\n[[service.route]]\n\
               [service.rate_limit]\nrequests_per_second = 1\n";
    let fields: Vec<String> = issues(tcp).into_iter().map(|i| i.field).collect();
    assert_eq!(fields, ["service[0].route", "service[0].rate_limit"]);
    let plain = "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\n[[service.route]]\nbackends = { x = 1 }\n";
    assert_eq!(only_issue(plain).field, "service[0].route[0].backends");
    let grpc = "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\nprotocol = \"grpc\"\n[service.health_check]\n";
    assert_eq!(only_issue(grpc).field, "service[0].health_check.path");
    parse(
        "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\nprotocol = \"grpc\"\n[service.health_check]\ntcp = true\n",
    )
    .expect("a connect check suits any service");
}

#[test]
fn percentages_may_be_integers_or_fractions() {
    let c = parse(&shop_with("abort_percent = 0,", "abort_percent = 12.5,")).expect("valid");
    assert_eq!(c.services[0].routes[1].fault.abort_percent, 12.5);
    assert!(c.services[0].routes[1].fault.any());
}
