//! Kubernetes label selectors (the API's string syntax: `app=web,tier!=db,env in (a,b),!legacy`)
//! and the name rules of Kubernetes objects. Owns parsing and matching, so `[kubernetes]
//! service_selector` is checked when the config is, and a test API server can apply the same
//! rules. Must not: know where labels come from.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key` — the label is present.
    Exists(String),
    /// `!key` — the label is absent.
    Absent(String),
    /// `key=value`, `key==value`, `key in (a,b)` — the label has one of these values.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)` — the label is absent or has none of these values.
    NotIn(String, Vec<String>),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Every requirement must hold.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses the API's selector syntax; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err("an empty requirement (two commas, or a comma at an end)".into());
            }
            requirements.push(requirement(term)?);
        }
        Ok(Selector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, ch) in text.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced parentheses".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::Absent(label_key(key.trim())?));
    }
    for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = term.split_once(op) {
            let value = label_value(v.trim())?;
            let key = label_key(k.trim())?;
            return Ok(if negate { Requirement::NotIn(key, vec![value]) } else { Requirement::In(key, vec![value]) });
        }
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words[..] {
        let rest = rest.trim();
        let (negate, list) = if let Some(l) = rest.strip_prefix("notin") {
            (true, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (false, l)
        } else {
            return Err(format!("{term:?}: expected `in (…)` or `notin (…)` after the key"));
        };
        let list = list
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("{term:?}: the values must be in parentheses"))?;
        let values = list.split(',').map(|v| label_value(v.trim())).collect::<Result<Vec<_>, _>>()?;
        let key = label_key(key)?;
        return Ok(if negate { Requirement::NotIn(key, values) } else { Requirement::In(key, values) });
    }
    Ok(Requirement::Exists(label_key(term)?))
}

fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) || !is_qualified_name_part(name) {
        return Err(format!("{key:?} is not a label key"));
    }
    Ok(key.to_string())
}

fn label_value(value: &str) -> Result<String, String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} is not a label value"))
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters: a label value, a label
/// or annotation name after its prefix.
pub fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// An RFC 1123 label: 1 to 63 of `a-z 0-9 -`, starting and ending alphanumeric (a namespace,
/// a Service name).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253 characters (a node name).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_form_of_the_api_syntax_parses_and_matches() {
        let s = Selector::parse("app=web, tier!=db,env in (a, b),!legacy,team,x notin (y)").expect("valid");
        assert_eq!(s.requirements.len(), 6);
        let ok = labels(&[("app", "web"), ("env", "b"), ("team", "t"), ("x", "z")]);
        assert!(s.matches(&ok));
        for bad in [
            labels(&[("app", "web"), ("env", "c"), ("team", "t")]),
            labels(&[("app", "web"), ("env", "a"), ("team", "t"), ("legacy", "")]),
            labels(&[("app", "web"), ("env", "a"), ("team", "t"), ("tier", "db")]),
            labels(&[("app", "web"), ("env", "a")]),
        ] {
            assert!(!s.matches(&bad), "{bad:?}");
        }
        assert!(Selector::parse("").expect("empty").matches(&labels(&[])));
        assert!(Selector::parse("service.kubernetes.io/headless").is_ok());
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in ["app=", "=web", "a,,b", "env in a,b", "env in (a", "bad key", "x=(y)", "-a"] {
            if bad == "app=" {
                // An empty value is valid (it matches an empty label).
                assert!(Selector::parse(bad).is_ok());
                continue;
            }
            assert!(Selector::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(is_dns_label("kube-system") && !is_dns_label("Kube") && !is_dns_label("-a"));
        assert!(is_dns_subdomain("node-1.example") && !is_dns_subdomain(""));
    }
}
