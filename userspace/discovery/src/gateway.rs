//! Gateway API `HTTPRoute`s (`gateway.networking.k8s.io/v1`) whose `parentRef` is a Service
//! (the GAMMA mesh pattern), turned at once into a compact [`RouteRecord`]: the Services they
//! attach to, and per rule its matches (as weir [`RouteMatch`]es, each with its Gateway API
//! precedence), its weighted backend Services, its request header edits and timeouts. The spec
//! is read field by field from JSON, so an object of any shape converts: what weir cannot serve
//! is a located problem (`HTTPRoute NS/NAME rule I: FIELD: why`), and a rule that would behave
//! differently without the unsupported part is skipped; nothing here panics or rejects the
//! watch. Must not: combine routes with Services (that is `routes` and `cluster`), or keep the
//! object.

use std::borrow::Cow;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;
use serde_json::Value;
use weir_core::config::{HeaderEdits, MANAGED_FIELDS};
use weir_core::route::{PathRegex, RouteMatch};

use crate::record::{ObjectKey, key};

/// The API group of Gateway API.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// An `HTTPRoute` as it comes off the watch: its metadata and its spec as JSON (read by
/// [`route`], which never fails on shape).
#[derive(Debug, Clone, Deserialize)]
pub struct HttpRoute {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `spec`, as sent.
    #[serde(default)]
    pub spec: Value,
}

impl kube::Resource for HttpRoute {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("HTTPRoute")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("httproutes")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What weir keeps of one HTTPRoute.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRecord {
    /// `metadata.namespace`.
    pub namespace: Box<str>,
    /// `metadata.name`.
    pub name: Box<str>,
    /// `metadata.creationTimestamp`: older routes take precedence.
    pub created: Option<Time>,
    /// The Services (in the route's namespace) it attaches to.
    pub parents: Vec<ParentRecord>,
    /// The rules weir serves, in the route's order.
    pub rules: Vec<RuleRecord>,
    /// What weir does not serve as written, located.
    pub problems: Vec<String>,
    /// A rule is skipped for an invalid value (not merely an unsupported one): this version
    /// does not replace a previous one that served.
    pub invalid: bool,
}

/// One Service `parentRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRecord {
    /// `namespace/name` of the Service.
    pub service: ObjectKey,
    /// `port`: only the Service port with this number; `None`: every port.
    pub port: Option<u16>,
    /// `sectionName`: only the Service port of this name.
    pub section: Option<Box<str>>,
}

/// One rule weir serves.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRecord {
    /// Its index in `spec.rules`.
    pub index: usize,
    /// Its matches (ORed), each with its precedence; one Gateway `PathPrefix` match may be two
    /// weir matches (the path itself and everything below it).
    pub matches: Vec<(Precedence, RouteMatch)>,
    /// Its `backendRefs`.
    pub backends: Vec<BackendRef>,
    /// `RequestHeaderModifier` (`add` is a `set`: weir replaces the field).
    pub headers: HeaderEdits,
    /// `timeouts.request`.
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`: one attempt.
    pub attempt_timeout: Option<Duration>,
}

/// Gateway API's match precedence, greatest first: an exact path, then a regex, then the
/// longest prefix; then a method; then more header matches; then more query matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    /// 2 exact, 1 regex, 0 prefix.
    pub path_kind: u8,
    /// Characters of the path (prefix or exact).
    pub path_len: usize,
    /// A method is matched.
    pub method: bool,
    /// Header matches.
    pub headers: usize,
    /// Query parameter matches.
    pub query: usize,
}

/// One `backendRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    /// `namespace/name` of the backend Service; `None` when weir cannot resolve the reference
    /// (another kind, another namespace, no port): its share of requests finds no endpoint.
    pub service: Option<ObjectKey>,
    /// The Service port.
    pub port: u16,
    /// `weight` (default 1).
    pub weight: u32,
    /// The weir backend name: `NAME-PORT` (`NAME.NAMESPACE-PORT` in another namespace).
    pub name: Box<str>,
}

/// A problem's message, located in the route.
fn located(ns: &str, name: &str, rule: Option<usize>, field: &str, why: &str) -> String {
    match rule {
        Some(i) => format!("HTTPRoute {ns}/{name} rule {i}: {field}: {why}"),
        None => format!("HTTPRoute {ns}/{name}: {field}: {why}"),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80) && s.trim() == s
}

/// A Gateway API duration (GEP-2257: `1h`, `10s`, `500ms`, `1m30s`).
pub fn duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return None;
        };
        total += unit;
        rest = &rest[len..];
    }
    Some(total)
}

/// The fields of a rule weir reads; any other is reported as ignored.
const RULE_FIELDS: [&str; 5] = ["name", "matches", "filters", "backendRefs", "timeouts"];
/// Rule fields weir ignores safely (they tune behaviour, they do not decide where a request goes).
const SAFE_TO_IGNORE: [&str; 2] = ["retry", "sessionPersistence"];

/// An HTTPRoute as a record; `None` without a namespace and a name, or when no `parentRef`
/// is a Service in the route's own namespace (a Gateway's route is not weir's).
pub fn route(r: &HttpRoute) -> Option<(ObjectKey, RouteRecord)> {
    let ns = r.metadata.namespace.as_deref()?;
    let name = r.metadata.name.as_deref()?;
    let spec = &r.spec;
    let mut problems = Vec::new();
    let mut parents = Vec::new();
    for (i, p) in spec["parentRefs"].as_array().into_iter().flatten().enumerate() {
        let group = p["group"].as_str().unwrap_or(GROUP);
        let kind = p["kind"].as_str().unwrap_or("Gateway");
        if !matches!(group, "" | "core") || kind != "Service" {
            continue;
        }
        let Some(svc) = p["name"].as_str().filter(|n| !n.is_empty()) else {
            problems.push(located(ns, name, None, &format!("parentRefs[{i}].name"), "missing: not attached"));
            continue;
        };
        let pns = p["namespace"].as_str().unwrap_or(ns);
        if pns != ns {
            problems.push(located(
                ns,
                name,
                None,
                &format!("parentRefs[{i}].namespace"),
                &format!("{pns:?}: a consumer route (for callers in {ns}) is not applied: weir applies a route to every caller"),
            ));
            continue;
        }
        let port = match &p["port"] {
            Value::Null => None,
            v => match v.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) {
                Some(p) => Some(p),
                None => {
                    problems.push(located(
                        ns,
                        name,
                        None,
                        &format!("parentRefs[{i}].port"),
                        &format!("{v} is not a port: not attached"),
                    ));
                    continue;
                }
            },
        };
        let section = p["sectionName"].as_str().map(Box::from);
        parents.push(ParentRecord { service: key(ns, svc), port, section });
    }
    if parents.is_empty() && problems.is_empty() {
        return None;
    }
    let mut rules = Vec::new();
    let mut invalid = false;
    for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        match convert_rule(ns, name, i, rule, &mut problems) {
            Ok(r) => rules.push(r),
            Err(Skipped::Invalid) => invalid = true,
            Err(Skipped::Unsupported) => {}
        }
    }
    let record = RouteRecord {
        namespace: ns.into(),
        name: name.into(),
        created: r.metadata.creation_timestamp.clone(),
        parents,
        rules,
        problems,
        invalid,
    };
    Some((key(ns, name), record))
}

/// Why a rule is not served.
enum Skipped {
    /// A value that is wrong (a regex that does not compile, a field name that is not one).
    Invalid,
    /// A field weir does not implement, whose absence would change where requests go.
    Unsupported,
}

fn convert_rule(
    ns: &str,
    name: &str,
    i: usize,
    rule: &Value,
    problems: &mut Vec<String>,
) -> Result<RuleRecord, Skipped> {
    let mut skip: Option<Skipped> = None;
    let mut fail = |problems: &mut Vec<String>, field: String, why: String, kind: Skipped| {
        problems.push(located(ns, name, Some(i), &field, &format!("{why}: rule skipped")));
        if !matches!(skip, Some(Skipped::Invalid)) {
            skip = Some(kind);
        }
    };
    if let Some(obj) = rule.as_object() {
        for k in obj.keys() {
            if SAFE_TO_IGNORE.contains(&k.as_str()) {
                problems.push(located(ns, name, Some(i), k, "not implemented by weir: ignored"));
            } else if !RULE_FIELDS.contains(&k.as_str()) {
                fail(problems, k.clone(), "not implemented by weir".into(), Skipped::Unsupported);
            }
        }
    }

    // Matches: none means every request (PathPrefix /).
    let default_match = [serde_json::json!({})];
    let given = rule["matches"].as_array().map(Vec::as_slice).filter(|m| !m.is_empty());
    let mut matches = Vec::new();
    for (j, m) in given.unwrap_or(&default_match).iter().enumerate() {
        let at = |f: &str| format!("matches[{j}].{f}");
        let mut rm = RouteMatch::default();
        let mut prec = Precedence { path_kind: 0, path_len: 1, method: false, headers: 0, query: 0 };
        let path_type = m["path"]["type"].as_str().unwrap_or("PathPrefix");
        let value = m["path"]["value"].as_str().unwrap_or("/");
        if (!value.starts_with('/') && path_type != "RegularExpression") || !value.bytes().all(|b| b.is_ascii_graphic())
        {
            fail(problems, at("path.value"), format!("{value:?} is not a path"), Skipped::Invalid);
        }
        let mut prefix_below = None;
        match path_type {
            "Exact" => {
                prec.path_kind = 2;
                prec.path_len = value.len();
                rm.path_exact = Some(value.to_string());
            }
            "PathPrefix" => {
                // Element-wise: `/v2` (or `/v2/`) is `/v2` itself and everything under `/v2/`.
                let trimmed = value.trim_end_matches('/');
                prec.path_len = trimmed.len().max(1);
                if trimmed.is_empty() {
                    rm.path_prefix = Some("/".into());
                } else {
                    rm.path_exact = Some(trimmed.to_string());
                    prefix_below = Some(format!("{trimmed}/"));
                }
            }
            "RegularExpression" => {
                prec.path_kind = 1;
                prec.path_len = value.len();
                match PathRegex::new(value) {
                    Ok(re) => rm.path_regex = Some(re),
                    Err(e) => fail(problems, at("path.value"), e, Skipped::Invalid),
                }
            }
            other => fail(problems, at("path.type"), format!("{other:?} is not a path match type"), Skipped::Invalid),
        }
        if let Some(method) = m["method"].as_str() {
            if is_token(method) {
                rm.method = Some(method.to_string());
                prec.method = true;
            } else {
                fail(problems, at("method"), format!("{method:?} is not a method"), Skipped::Invalid);
            }
        }
        for (k, h) in m["headers"].as_array().into_iter().flatten().enumerate() {
            let hn = h["name"].as_str().unwrap_or_default();
            let hv = h["value"].as_str().unwrap_or_default();
            match h["type"].as_str().unwrap_or("Exact") {
                "Exact" => {}
                other => {
                    fail(
                        problems,
                        at(&format!("headers[{k}].type")),
                        format!("{other} is not implemented by weir"),
                        Skipped::Unsupported,
                    );
                    continue;
                }
            }
            if !is_token(hn) || !is_field_value(hv) {
                fail(
                    problems,
                    at(&format!("headers[{k}]")),
                    format!("{hn:?}: {hv:?} is not a field"),
                    Skipped::Invalid,
                );
                continue;
            }
            let lower = hn.to_ascii_lowercase();
            // Gateway API: of two matches of one name, the first counts.
            if !rm.headers.iter().any(|(n, _)| *n == lower) {
                rm.headers.push((lower, hv.to_string()));
            }
        }
        for (k, q) in m["queryParams"].as_array().into_iter().flatten().enumerate() {
            let qn = q["name"].as_str().unwrap_or_default();
            let qv = q["value"].as_str().unwrap_or_default();
            match q["type"].as_str().unwrap_or("Exact") {
                "Exact" => {}
                other => {
                    fail(
                        problems,
                        at(&format!("queryParams[{k}].type")),
                        format!("{other} is not implemented by weir"),
                        Skipped::Unsupported,
                    );
                    continue;
                }
            }
            let bad = |s: &str| s.bytes().any(|b| b == b'&' || b == b'=' || !b.is_ascii_graphic());
            if qn.is_empty() || bad(qn) || qv.bytes().any(|b| b == b'&' || !b.is_ascii_graphic()) {
                fail(
                    problems,
                    at(&format!("queryParams[{k}]")),
                    format!("{qn:?}={qv:?} is not a query parameter"),
                    Skipped::Invalid,
                );
                continue;
            }
            if !rm.query.iter().any(|(n, _)| n == qn) {
                rm.query.push((qn.to_string(), qv.to_string()));
            }
        }
        prec.headers = rm.headers.len();
        prec.query = rm.query.len();
        if let Some(below) = prefix_below {
            let mut under = rm.clone();
            under.path_exact = None;
            under.path_prefix = Some(below);
            matches.push((prec, rm));
            matches.push((prec, under));
        } else {
            matches.push((prec, rm));
        }
    }

    // Filters.
    let mut headers = HeaderEdits::default();
    for (k, f) in rule["filters"].as_array().into_iter().flatten().enumerate() {
        let at = format!("filters[{k}]");
        match f["type"].as_str().unwrap_or_default() {
            "RequestHeaderModifier" => {
                let m = &f["requestHeaderModifier"];
                for (list, what) in [("set", "set"), ("add", "add")] {
                    for (n, h) in m[list].as_array().into_iter().flatten().enumerate() {
                        let hn = h["name"].as_str().unwrap_or_default();
                        let hv = h["value"].as_str().unwrap_or_default();
                        let lower = hn.to_ascii_lowercase();
                        let field = format!("{at}.requestHeaderModifier.{what}[{n}]");
                        if !is_token(hn) || !is_field_value(hv) {
                            fail(problems, field, format!("{hn:?}: {hv:?} is not a field"), Skipped::Invalid);
                        } else if MANAGED_FIELDS.contains(&lower.as_str()) {
                            fail(problems, field, format!("{hn:?} is managed by weir"), Skipped::Invalid);
                        } else if !headers.set.iter().any(|(x, _)| *x == lower) {
                            headers.set.push((lower, hv.to_string()));
                        }
                    }
                }
                for (n, h) in m["remove"].as_array().into_iter().flatten().enumerate() {
                    let hn = h.as_str().unwrap_or_default();
                    let lower = hn.to_ascii_lowercase();
                    let field = format!("{at}.requestHeaderModifier.remove[{n}]");
                    if !is_token(hn) {
                        fail(problems, field, format!("{hn:?} is not a field name"), Skipped::Invalid);
                    } else if MANAGED_FIELDS.contains(&lower.as_str()) {
                        fail(problems, field, format!("{hn:?} is managed by weir"), Skipped::Invalid);
                    } else {
                        headers.remove.push(lower);
                    }
                }
            }
            // A mirror is side traffic: leaving it out changes no answer.
            "RequestMirror" => {
                problems.push(located(ns, name, Some(i), &at, "RequestMirror is not implemented by weir: ignored"))
            }
            other => fail(
                problems,
                format!("{at}.type"),
                format!("{other:?} is not implemented by weir"),
                Skipped::Unsupported,
            ),
        }
    }

    // Backends.
    let mut backends = Vec::new();
    for (k, b) in rule["backendRefs"].as_array().into_iter().flatten().enumerate() {
        let at = format!("backendRefs[{k}]");
        let weight = b["weight"].as_u64().unwrap_or(1).min(1_000_000) as u32;
        if b["filters"].as_array().is_some_and(|f| !f.is_empty()) {
            fail(
                problems,
                format!("{at}.filters"),
                "per-backend filters are not implemented by weir".into(),
                Skipped::Unsupported,
            );
        }
        let bname = b["name"].as_str().unwrap_or_default();
        let bns = b["namespace"].as_str().unwrap_or(ns);
        let port = b["port"].as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
        let group = b["group"].as_str().unwrap_or("");
        let kind = b["kind"].as_str().unwrap_or("Service");
        let why = if !matches!(group, "" | "core") || kind != "Service" {
            Some(format!("{group}/{kind} is not a Service"))
        } else if bname.is_empty() {
            Some("no name".into())
        } else if bns != ns {
            Some(format!(
                "namespace {bns:?}: another namespace's Service needs a ReferenceGrant, which weir does not read"
            ))
        } else if port.is_none() {
            Some("no port".into())
        } else {
            None
        };
        let port = port.unwrap_or(0);
        let label = if bns == ns { format!("{bname}-{port}") } else { format!("{bname}.{bns}-{port}") };
        if let Some(why) = &why {
            problems.push(located(ns, name, Some(i), &at, &format!("{why}: its share of requests finds no endpoint")));
        }
        backends.push(BackendRef { service: why.is_none().then(|| key(bns, bname)), port, weight, name: label.into() });
    }
    if backends.iter().all(|b| b.weight == 0) {
        problems.push(located(
            ns,
            name,
            Some(i),
            "backendRefs",
            "no backend with a weight above 0: its requests find no endpoint",
        ));
    }

    // Timeouts.
    let mut timeout = |field: &str| -> Option<Duration> {
        let v = rule["timeouts"][field].as_str()?;
        match duration(v) {
            Some(d) if d.is_zero() => {
                problems.push(located(
                    ns,
                    name,
                    Some(i),
                    &format!("timeouts.{field}"),
                    "0s (no timeout) is not implemented by weir: the service's timeout applies",
                ));
                None
            }
            Some(d) => Some(d),
            None => {
                problems.push(located(
                    ns,
                    name,
                    Some(i),
                    &format!("timeouts.{field}"),
                    &format!("{v:?} is not a duration: the service's timeout applies"),
                ));
                None
            }
        }
    };
    let request_timeout = timeout("request");
    let attempt_timeout = timeout("backendRequest");

    match skip {
        Some(s) => Err(s),
        None => Ok(RuleRecord { index: i, matches, backends, headers, request_timeout, attempt_timeout }),
    }
}

#[cfg(test)]
mod tests;
