//! Per-service policy from a Service's `weir.dev/` annotations. An annotation
//! `weir.dev/TABLE.FIELD` sets the `[service.TABLE] FIELD` of the configuration reference
//! (`weir.dev/retry.attempts: "2"`, `weir.dev/timeouts.request_ms: "5000"`), and `weir.dev/lb`
//! and `weir.dev/socket_redirect` set `lb` and `socket_redirect`. Values are checked by the
//! config parser itself, so an annotation obeys exactly the rules of the file: a bad one
//! (unknown field, wrong type, out of range, or in conflict with another) is left out, the
//! service keeps the default for it, and the caller logs and counts it. Must not: accept
//! anything the file would refuse.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use weir_core::config::{Config, ServiceConfig};

/// The annotation prefix.
pub const PREFIX: &str = "weir.dev/";

/// Tables of a `[[service]]` an annotation may set.
const TABLES: [&str; 4] = ["timeouts", "retry", "outlier", "limits"];
/// Fields of a `[[service]]` itself an annotation may set.
const FIELDS: [&str; 2] = ["lb", "socket_redirect"];

/// A `weir.dev/` annotation weir did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The annotation's key.
    pub key: String,
    /// What was wrong.
    pub reason: String,
}

/// The policy the annotations describe (`None` when there is none, so services without
/// annotations share the defaults), and the annotations left out.
pub fn policy(annotations: &BTreeMap<String, String>) -> (Option<Arc<ServiceConfig>>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut accepted: Vec<(&str, Option<&str>, &str, String)> = Vec::new();
    for (key, value) in annotations.range(PREFIX.to_string()..).take_while(|(k, _)| k.starts_with(PREFIX)) {
        let field = &key[PREFIX.len()..];
        let (table, name) = match field.split_once('.') {
            Some((t, n)) if TABLES.contains(&t) && !n.is_empty() => (Some(t), n),
            None if FIELDS.contains(&field) => (None, field),
            _ => {
                rejected.push(Rejected {
                    key: key.clone(),
                    reason: format!(
                        "unknown: weir reads {PREFIX}lb, {PREFIX}socket_redirect and {PREFIX}TABLE.FIELD for TABLE in timeouts, retry, outlier, limits"
                    ),
                });
                continue;
            }
        };
        let candidate = (key.as_str(), table, name, literal(value));
        // Each annotation on its own first, so the reason names it.
        match parse(std::slice::from_ref(&candidate)) {
            Ok(_) => accepted.push(candidate),
            Err(e) => rejected.push(Rejected { key: key.clone(), reason: e }),
        }
    }
    if accepted.is_empty() {
        return (None, rejected);
    }
    // Then together (e.g. attempt_ms above request_ms): drop the later ones that conflict.
    let mut kept: Vec<(&str, Option<&str>, &str, String)> = Vec::new();
    for a in accepted {
        kept.push(a);
        if let Err(e) = parse(&kept) {
            let (key, ..) = kept.pop().expect("just pushed");
            rejected.push(Rejected { key: key.to_string(), reason: e });
        }
    }
    match parse(&kept) {
        Ok(s) => (Some(s), rejected),
        Err(_) => (None, rejected),
    }
}

/// A TOML literal for an annotation value: numbers and booleans as they are, anything else a
/// string.
fn literal(value: &str) -> String {
    let v = value.trim();
    if v == "true" || v == "false" || v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok_and(f64::is_finite) {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

fn parse(fields: &[(&str, Option<&str>, &str, String)]) -> Result<Arc<ServiceConfig>, String> {
    let mut doc = String::from("[[service]]\nname = \"annotations\"\nvip = \"127.0.0.1:1\"\n");
    for (_, table, name, value) in fields.iter().filter(|f| f.1.is_none()) {
        let _ = table;
        doc.push_str(&format!("{name} = {value}\n"));
    }
    for t in TABLES {
        let in_table: Vec<_> = fields.iter().filter(|f| f.1 == Some(t)).collect();
        if !in_table.is_empty() {
            doc.push_str(&format!("[service.{t}]\n"));
            for (_, _, name, value) in in_table {
                doc.push_str(&format!("{name} = {value}\n"));
            }
        }
    }
    let config = Config::parse(&doc, Path::new("annotations")).map_err(|e| {
        e.issues.iter().map(|i| i.message.clone()).collect::<Vec<_>>().join("; ").replace("`service[0].", "`")
    })?;
    config.services.into_iter().next().ok_or_else(|| "internal: no service".to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_core::balance::LbPolicy;

    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn annotations_set_the_fields_of_the_configuration_reference() {
        let (p, rejected) = policy(&annotations(&[
            ("weir.dev/lb", "round_robin"),
            ("weir.dev/retry.attempts", "5"),
            ("weir.dev/timeouts.request_ms", "2000"),
            ("weir.dev/outlier.enabled", "false"),
            ("weir.dev/retry.budget_ratio", "0.5"),
            ("weir.dev/socket_redirect", "false"),
            ("other.io/x", "y"),
        ]));
        assert!(rejected.is_empty(), "{rejected:?}");
        let p = p.expect("a policy");
        assert_eq!(p.lb, LbPolicy::RoundRobin);
        assert_eq!(p.retry.attempts, 5);
        assert_eq!(p.timeouts.request, Duration::from_millis(2000));
        assert!(!p.outlier.enabled);
        assert_eq!(p.retry.budget_ratio, 0.5);
        assert!(!p.socket_redirect);
        assert_eq!(policy(&annotations(&[("app", "x")])), (None, vec![]));
        let (_, rejected) = policy(&annotations(&[("weir.dev/socket_redirect", "no")]));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].reason.contains("expected a boolean"), "{rejected:?}");
    }

    #[test]
    fn a_bad_annotation_keeps_the_default_and_is_named() {
        let defaults = ServiceConfig::defaults();
        let (p, rejected) = policy(&annotations(&[
            ("weir.dev/retry.attempts", "99"),
            ("weir.dev/retry.nonsense", "1"),
            ("weir.dev/lb", "fastest"),
            ("weir.dev/timeouts.connect_ms", "abc"),
            ("weir.dev/listen", "127.0.0.1:1"),
            ("weir.dev/timeouts.request_ms", "3000"),
        ]));
        let keys: Vec<&str> = rejected.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "weir.dev/lb",
                "weir.dev/listen",
                "weir.dev/retry.attempts",
                "weir.dev/retry.nonsense",
                "weir.dev/timeouts.connect_ms"
            ]
        );
        assert!(rejected[2].reason.contains("outside 1..=10"), "{:?}", rejected[2]);
        let p = p.expect("the good one applies");
        assert_eq!(p.timeouts.request, Duration::from_millis(3000));
        assert_eq!(
            (p.retry.attempts, p.lb, p.timeouts.connect),
            (defaults.retry.attempts, defaults.lb, defaults.timeouts.connect)
        );
    }

    #[test]
    fn annotations_that_conflict_keep_the_first() {
        let (p, rejected) =
            policy(&annotations(&[("weir.dev/timeouts.attempt_ms", "9000"), ("weir.dev/timeouts.request_ms", "1000")]));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].key, "weir.dev/timeouts.request_ms");
        assert_eq!(p.expect("policy").timeouts.attempt, Some(Duration::from_millis(9000)));
    }
}
