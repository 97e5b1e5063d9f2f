//! W3C trace context (`traceparent`, `tracestate`) for one request, and the span weir makes
//! of it. Owns: parsing an incoming `traceparent`, the decision (join a sampled trace, start
//! one at `[tracing] sample_percent`, or leave the headers alone), the `traceparent` weir
//! forwards (naming its own span as the parent), and the fixed-size [`SpanRecord`] a worker
//! pushes into its bounded span ring. Must not: allocate, lock or block; export anything (the
//! binary's exporter thread drains the rings); touch `X-Amzn-Trace-Id`, `b3` or any header
//! but `traceparent` and `tracestate`.

use std::cell::Cell;
use std::net::SocketAddr;

use weir_core::accesslog::{InlineStr, METHOD_BYTES, SERVICE_BYTES, SOURCE_BYTES};
use weir_core::config::TracingConfig;
use weir_core::outcome::ErrorReason;

use crate::http::RequestHead;

/// Length of a version-00 `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// What weir does with one request's trace context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trace {
    /// No span: no trace context, an unsampled one (forwarded untouched), or tracing off.
    #[default]
    None,
    /// weir makes a span and forwards a `traceparent` naming it.
    Span(SpanContext),
}

/// The identity of weir's span for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace (the caller's, or a new one).
    pub trace_id: [u8; 16],
    /// weir's span.
    pub span_id: [u8; 8],
    /// The caller's span; all zero when weir started the trace.
    pub parent_span_id: [u8; 8],
    /// Trace flags forwarded (the sampled bit set).
    pub flags: u8,
}

impl SpanContext {
    /// weir started this trace (no caller span): an incoming `tracestate` is not forwarded.
    pub fn started_here(&self) -> bool {
        self.parent_span_id == [0; 8]
    }

    /// The `traceparent` value to forward: weir's span as the parent.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        hex(&self.trace_id, &mut out[3..35]);
        hex(&self.span_id, &mut out[36..52]);
        hex(&[self.flags], &mut out[53..55]);
        out
    }
}

impl Trace {
    /// The trace id, when weir makes a span.
    pub fn trace_id(&self) -> Option<[u8; 16]> {
        match self {
            Trace::Span(s) => Some(s.trace_id),
            Trace::None => None,
        }
    }
}

/// A parsed, valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Trace id (not all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (not all zero).
    pub span_id: [u8; 8],
    /// Trace flags.
    pub flags: u8,
}

impl Parent {
    /// The sampled flag.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Parses a `traceparent` value (W3C Trace Context, level 1): version 00 exactly 55 bytes; a
/// higher version (not `ff`) at least 55 with the same fields first and `-` after them; lower
/// case hex; trace and span ids not all zero. `None` when invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    unhex(&v[..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0 if v.len() != TRACEPARENT_LEN => return None,
        0 => {}
        _ if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    let mut p = Parent { trace_id: [0; 16], span_id: [0; 8], flags: 0 };
    unhex(&v[3..35], &mut p.trace_id)?;
    unhex(&v[36..52], &mut p.span_id)?;
    let mut flags = [0u8; 1];
    unhex(&v[53..55], &mut flags)?;
    p.flags = flags[0];
    (p.trace_id != [0; 16] && p.span_id != [0; 8]).then_some(p)
}

/// The decision for one request whose head is parsed in `src`: `cfg` is `[tracing]`.
/// `traceparent` sent more than once is invalid (treated as absent).
pub fn decide(cfg: &TracingConfig, head: &RequestHead, src: &[u8]) -> Trace {
    if !cfg.enabled() {
        return Trace::None;
    }
    let mut found = head.headers.iter().filter(|h| h.name.get(src).eq_ignore_ascii_case(b"traceparent"));
    let incoming = match (found.next(), found.next()) {
        (Some(h), None) => parse_traceparent(h.value.get(src)),
        _ => None,
    };
    decide_on(cfg, incoming)
}

/// [`decide`] for an HTTP/2 request's fields (the same rules: one valid `traceparent`, or
/// none).
pub fn decide_h2(cfg: &TracingConfig, headers: &http::HeaderMap) -> Trace {
    if !cfg.enabled() {
        return Trace::None;
    }
    let mut found = headers.get_all("traceparent").iter();
    let incoming = match (found.next(), found.next()) {
        (Some(v), None) => parse_traceparent(v.as_bytes()),
        _ => None,
    };
    decide_on(cfg, incoming)
}

/// The decision, given the request's valid `traceparent` if it has one.
fn decide_on(cfg: &TracingConfig, incoming: Option<Parent>) -> Trace {
    match incoming {
        Some(p) if p.sampled() => Trace::Span(SpanContext {
            trace_id: p.trace_id,
            span_id: random_span_id(),
            parent_span_id: p.span_id,
            flags: p.flags,
        }),
        // The caller decided not to sample: its headers go on untouched.
        Some(_) => Trace::None,
        None if cfg.sample_percent > 0.0 && random_f64() * 100.0 < cfg.sample_percent => {
            let (a, b) = (random_u64(), random_u64());
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&a.to_be_bytes());
            trace_id[8..].copy_from_slice(&b.to_be_bytes());
            if trace_id == [0; 16] {
                trace_id[15] = 1;
            }
            Trace::Span(SpanContext { trace_id, span_id: random_span_id(), parent_span_id: [0; 8], flags: 1 })
        }
        None => Trace::None,
    }
}

/// One finished request's span, fixed size and heap-free: what a worker pushes into its ring
/// and the exporter turns into an OTLP span.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanRecord {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// weir's span id.
    pub span_id: [u8; 8],
    /// The caller's span id; all zero for a trace weir started.
    pub parent_span_id: [u8; 8],
    /// Trace flags.
    pub flags: u8,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// Duration, nanoseconds.
    pub duration_ns: u64,
    /// Service name (empty when unrouted).
    pub service: InlineStr<SERVICE_BYTES>,
    /// Request method.
    pub method: InlineStr<METHOD_BYTES>,
    /// Endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Attempts made.
    pub attempts: u8,
    /// Status sent to the client (0 = none).
    pub status: u16,
    /// Why weir answered itself, if it did.
    pub error: Option<ErrorReason>,
    /// The caller's workload (`direct` when not steered, empty when not resolved yet).
    pub source: InlineStr<SOURCE_BYTES>,
}

impl SpanRecord {
    /// The outcome attribute: `ok`, the `x-weir-error` reason, `status-5xx` for an endpoint's
    /// own 5xx, or `no-response` when nothing was sent.
    pub fn outcome(&self) -> &'static str {
        match (self.error, self.status) {
            (Some(e), _) => e.as_str(),
            (None, 0) => "no-response",
            (None, s) if s >= 500 => "status-5xx",
            _ => "ok",
        }
    }

    /// Whether the span's status is an error (weir's own error, a 5xx, no response).
    pub fn is_error(&self) -> bool {
        self.outcome() != "ok"
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
}

/// Lower-case hex only, as the spec requires.
fn unhex(src: &[u8], out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(src[2 * i])? << 4 | digit(src[2 * i + 1])?;
    }
    Some(())
}

thread_local! {
    /// xorshift64* state of this thread, seeded from the kernel's random pool once.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut s = 0u64;
    // SAFETY: getrandom(2) writes at most 8 bytes into `s`.
    let n = unsafe { libc::getrandom((&mut s as *mut u64).cast(), 8, 0) };
    if n != 8 || s == 0 {
        // No random pool: the clock and the thread's stack address still differ per thread.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        s = t ^ (&s as *const u64 as u64).rotate_left(32) | 1;
    }
    s
}

fn random_u64() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn random_f64() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = random_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadLimits, Status, parse_request};

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn cfg(percent: f64) -> TracingConfig {
        TracingConfig { sample_percent: percent, otlp_endpoint: Some("http://127.0.0.1:4318".into()) }
    }

    fn head(extra: &str) -> (RequestHead, Vec<u8>) {
        let src = format!("GET / HTTP/1.1\r\nhost: a\r\n{extra}\r\n").into_bytes();
        let mut head = RequestHead::default();
        let limits = HeadLimits { max_head_bytes: 8192, max_headers: 64, max_uri_bytes: 1024 };
        assert!(matches!(parse_request(&src, &limits, &mut head), Ok(Status::Complete(_))));
        (head, src)
    }

    #[test]
    fn parses_valid_and_refuses_invalid_traceparents() {
        let p = parse_traceparent(SAMPLED.as_bytes()).expect("valid");
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 with more
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        // A later version may carry more fields after a dash.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-beef").is_some());
    }

    #[test]
    fn a_sampled_trace_gets_a_span_whose_id_is_the_forwarded_parent() {
        let (h, src) = head(&format!("traceparent: {SAMPLED}\r\n"));
        let Trace::Span(s) = decide(&cfg(0.0), &h, &src) else { panic!("no span for a sampled trace") };
        let incoming = parse_traceparent(SAMPLED.as_bytes()).expect("valid");
        assert_eq!((s.trace_id, s.parent_span_id, s.flags), (incoming.trace_id, incoming.span_id, 1));
        assert_ne!(s.span_id, incoming.span_id);
        let fwd = s.traceparent();
        let back = parse_traceparent(&fwd).expect("weir forwards a valid traceparent");
        assert_eq!((back.trace_id, back.span_id), (s.trace_id, s.span_id));
        assert!(!s.started_here());
    }

    #[test]
    fn unsampled_absent_and_off() {
        let unsampled = SAMPLED.replace("-01", "-00");
        let (h, src) = head(&format!("traceparent: {unsampled}\r\n"));
        assert_eq!(decide(&cfg(100.0), &h, &src), Trace::None, "the caller's decision stands");
        let (h, src) = head("");
        assert_eq!(decide(&cfg(0.0), &h, &src), Trace::None);
        let Trace::Span(s) = decide(&cfg(100.0), &h, &src) else { panic!("100% starts a trace") };
        assert!(s.started_here());
        assert_eq!(s.flags, 1);
        let (h, src) = head(&format!("traceparent: {SAMPLED}\r\n"));
        let off = TracingConfig { sample_percent: 0.0, otlp_endpoint: None };
        assert_eq!(decide(&off, &h, &src), Trace::None, "no collector: weir stays out of the trace");
        let (h, src) = head(&format!("traceparent: {SAMPLED}\r\ntraceparent: {SAMPLED}\r\n"));
        assert_eq!(decide(&cfg(0.0), &h, &src), Trace::None, "a repeated traceparent is invalid");
    }

    #[test]
    fn sampling_follows_the_percentage() {
        let (h, src) = head("");
        let n = (0..20_000).filter(|_| decide(&cfg(10.0), &h, &src) != Trace::None).count();
        assert!((1_600..2_400).contains(&n), "{n} of 20000 at 10%");
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..1000).filter_map(|_| decide(&cfg(100.0), &h, &src).trace_id()).collect();
        assert_eq!(ids.len(), 1000, "trace ids repeat");
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn a_span_record_is_320_bytes() {
        // docs/OPERATING.md ("Memory") counts span rings in these.
        assert_eq!(std::mem::size_of::<super::SpanRecord>(), 320);
    }
}
