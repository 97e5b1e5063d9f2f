//! Routing within a service: which `[[service.route]]` a request matches ([`RouteMatch`], over
//! any codec's view of the request, [`RouteInput`]), and which backend of the route's split it
//! goes to ([`smooth_pick`]: smooth weighted round robin, exact in the long run).
//!
//! Owns: the match rules (path prefix, exact path or regex — the path without its query —,
//! method, header and query-parameter values, all of them ANDed) and the split. Must not:
//! allocate or lock while matching (a regex is searched with the caller's own [`RegexCache`],
//! one per worker), read the clock, or know a codec.

use std::fmt;

use regex_automata::meta::{Cache, Regex};
use regex_automata::{Anchored, Input};
use serde::Serialize;

/// What routing reads of a request, whatever codec carried it.
pub trait RouteInput {
    /// The method token, as sent (`GET`).
    fn method(&self) -> &[u8];
    /// The origin-form target: path and query (`/v2/items?id=7`).
    fn target(&self) -> &[u8];
    /// Whether a field named `name` (lower case) has exactly `value` (surrounding whitespace
    /// aside). Any of the request's field lines with that name may match.
    fn has_header(&self, name: &str, value: &[u8]) -> bool;
}

/// A `path_regex`, compiled when the config is loaded; equal when the pattern is.
#[derive(Clone)]
pub struct PathRegex {
    pattern: String,
    regex: Regex,
}

impl PathRegex {
    /// Compiles `pattern`, which must match a whole path (it is anchored at both ends).
    pub fn new(pattern: &str) -> Result<PathRegex, String> {
        let regex = Regex::new(&format!(r"\A(?:{pattern})\z")).map_err(|e| {
            // The syntax error's last line says what is wrong ("unclosed group"); its other
            // lines draw the (wrapped) pattern.
            let why = e.syntax_error().map(|s| s.to_string()).and_then(|t| {
                t.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim().trim_start_matches("error: ").to_string())
            });
            format!("{pattern:?} is not a valid regex: {}", why.unwrap_or_else(|| e.to_string()))
        })?;
        Ok(PathRegex { pattern: pattern.to_string(), regex })
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// A cache for searching this regex (one per worker: searching with it never locks).
    pub fn cache(&self) -> Cache {
        self.regex.create_cache()
    }

    /// Whether `path` matches, whole.
    pub fn is_match(&self, path: &[u8], cache: &mut Cache) -> bool {
        self.regex.search_with(cache, &Input::new(path).anchored(Anchored::Yes)).is_some()
    }
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl fmt::Debug for PathRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.pattern)
    }
}

impl Serialize for PathRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

/// A worker's search state for one route's regex (`None` when the route has none).
pub type RegexCache = Option<Cache>;

/// A route's `match`: every condition given must hold; none given matches every request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteMatch {
    /// The path (without the query) starts with this.
    pub path_prefix: Option<String>,
    /// The path is exactly this.
    pub path_exact: Option<String>,
    /// The whole path matches this regex.
    pub path_regex: Option<PathRegex>,
    /// The method is exactly this (case-sensitive, as HTTP methods are).
    pub method: Option<String>,
    /// Each named field (lower case) has this exact value.
    #[serde(serialize_with = "as_map")]
    pub headers: Vec<(String, String)>,
    /// Each named query parameter has this exact value, compared as sent (not percent-decoded).
    #[serde(serialize_with = "as_map")]
    pub query: Vec<(String, String)>,
}

fn as_map<S: serde::Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

impl RouteMatch {
    /// A search cache for this match's regex, if it has one.
    pub fn cache(&self) -> RegexCache {
        self.path_regex.as_ref().map(PathRegex::cache)
    }

    /// Whether `req` matches. Allocation-free; a regex is searched with `cache` (made by
    /// [`RouteMatch::cache`]; without one, a regex never matches).
    pub fn matches(&self, req: &impl RouteInput, cache: &mut RegexCache) -> bool {
        let target = req.target();
        let (path, query) = match target.iter().position(|b| *b == b'?') {
            Some(q) => (&target[..q], &target[q + 1..]),
            None => (target, &b""[..]),
        };
        if let Some(p) = &self.path_prefix
            && !path.starts_with(p.as_bytes())
        {
            return false;
        }
        if let Some(p) = &self.path_exact
            && path != p.as_bytes()
        {
            return false;
        }
        if let Some(re) = &self.path_regex
            && !cache.as_mut().is_some_and(|c| re.is_match(path, c))
        {
            return false;
        }
        if let Some(m) = &self.method
            && req.method() != m.as_bytes()
        {
            return false;
        }
        if !self.headers.iter().all(|(n, v)| req.has_header(n, v.as_bytes())) {
            return false;
        }
        self.query.iter().all(|(n, v)| has_param(query, n.as_bytes(), v.as_bytes()))
    }
}

/// Whether `query` (`a=1&b=2`) has a parameter `name` with exactly `value` (`name` alone is
/// an empty value).
fn has_param(query: &[u8], name: &[u8], value: &[u8]) -> bool {
    query.split(|b| *b == b'&').any(|pair| {
        let (n, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        n == name && v == value
    })
}

/// Smooth weighted round robin (nginx) over `weights`: every entry gains its weight, the
/// largest current value wins (the first on ties) and pays back the total. Over any
/// `sum(weights)` consecutive picks each entry is chosen exactly its weight's times, spread
/// evenly. `current` is the caller's state, as long as `weights` (zeros on a new split).
/// Entries of weight 0 are never chosen; `None` when every weight is 0.
pub fn smooth_pick(weights: &[u32], current: &mut [i64]) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for (i, (&w, c)) in weights.iter().zip(current.iter_mut()).enumerate() {
        if w == 0 {
            continue;
        }
        *c += i64::from(w);
        total += i64::from(w);
        if best.is_none_or(|(_, value)| *c > value) {
            best = Some((i, *c));
        }
    }
    let (chosen, _) = best?;
    current[chosen] -= total;
    Some(chosen)
}

#[cfg(test)]
mod tests;
