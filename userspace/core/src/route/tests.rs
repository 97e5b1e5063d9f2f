//! Route matching on every condition, and the split's exactness.

use super::*;

struct Req {
    method: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

impl RouteInput for Req {
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn target(&self) -> &[u8] {
        self.target.as_bytes()
    }
    fn has_header(&self, name: &str, value: &[u8]) -> bool {
        self.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && v.trim().as_bytes() == value)
    }
}

fn get(target: &'static str) -> Req {
    Req { method: "GET", target, headers: &[] }
}

#[test]
fn an_empty_match_matches_everything() {
    let m = RouteMatch::default();
    let mut cache = m.cache();
    assert!(cache.is_none());
    assert!(m.matches(&get("/"), &mut cache));
    assert!(m.matches(&Req { method: "POST", target: "/x?y", headers: &[] }, &mut cache));
}

#[test]
fn paths_are_matched_without_the_query() {
    let prefix = RouteMatch { path_prefix: Some("/v2/".into()), ..Default::default() };
    let exact = RouteMatch { path_exact: Some("/health".into()), ..Default::default() };
    let mut none = None;
    assert!(prefix.matches(&get("/v2/items?id=1"), &mut none));
    assert!(!prefix.matches(&get("/v2"), &mut none));
    assert!(!prefix.matches(&get("/x?/v2/"), &mut none), "the query is not the path");
    assert!(exact.matches(&get("/health?verbose"), &mut none));
    assert!(!exact.matches(&get("/health/"), &mut none));
}

#[test]
fn a_regex_must_match_the_whole_path() {
    let re = PathRegex::new(r"/users/[0-9]+").expect("valid regex");
    let m = RouteMatch { path_regex: Some(re), ..Default::default() };
    let mut cache = m.cache();
    assert!(m.matches(&get("/users/42?x=1"), &mut cache));
    assert!(!m.matches(&get("/users/42/orders"), &mut cache), "anchored at the end");
    assert!(!m.matches(&get("/api/users/42"), &mut cache), "anchored at the start");
    assert!(!m.matches(&get("/users/42"), &mut None), "no cache, no regex match");
    let err = PathRegex::new("/users/(").expect_err("invalid");
    assert!(err.contains("is not a valid regex: unclosed group"), "{err}");
    assert_eq!(PathRegex::new("/a").expect("valid"), PathRegex::new("/a").expect("valid"));
}

#[test]
fn method_headers_and_query_must_all_hold() {
    let m = RouteMatch {
        method: Some("POST".into()),
        headers: vec![("x-canary".into(), "yes".into())],
        query: vec![("debug".into(), "".into()), ("v".into(), "2".into())],
        ..Default::default()
    };
    let mut none = None;
    let ok = Req { method: "POST", target: "/a?v=2&debug", headers: &[("X-Canary", " yes ")] };
    assert!(m.matches(&ok, &mut none));
    assert!(!m.matches(&Req { method: "post", ..ok }, &mut none), "methods are case-sensitive");
    assert!(!m.matches(&Req { target: "/a?v=3&debug", ..ok }, &mut none));
    assert!(!m.matches(&Req { target: "/a?v=2", ..ok }, &mut none));
    assert!(!m.matches(&Req { headers: &[("x-canary", "no")], ..ok }, &mut none));
}

#[test]
fn the_split_is_exact_and_smooth() {
    let weights = [90, 10];
    let mut current = [0i64; 2];
    let mut counts = [0usize; 2];
    let mut longest_run = 0;
    let mut run = 0;
    for _ in 0..10_000 {
        let i = smooth_pick(&weights, &mut current).expect("a weight is non-zero");
        counts[i] += 1;
        run = if i == 0 { run + 1 } else { 0 };
        longest_run = longest_run.max(run);
    }
    assert_eq!(counts, [9_000, 1_000]);
    assert!(longest_run <= 9, "canary requests are spread out, not bunched: {longest_run}");
    let mut c = [0i64; 3];
    assert_eq!(smooth_pick(&[0, 0, 0], &mut c), None);
    for _ in 0..10 {
        assert_eq!(smooth_pick(&[0, 5, 0], &mut c), Some(1), "a zero weight is never chosen");
    }
}
