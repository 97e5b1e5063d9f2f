//! What one HTTP/1.1 request carries through its attempts: the client side ([`Downstream`]:
//! the connection, its caller and the request's trace decision), the plan of what does not
//! change between attempts ([`Plan`]: deadlines, body handling, forwarding headers including
//! the `traceparent` naming weir's span, how the head is written), and the bundle every step
//! reads ([`Call`]). Must not: do I/O or touch per-worker state.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir_core::config::ForwardedHeaders;
use weir_core::outcome::Outcome;

use crate::ctx::Ctx;
use crate::http::{self, BodyFraming, HeadLimits, Method, RequestHead, Version};
use crate::io::Conn;
use crate::state::{Picked, Scope};
use crate::trace::{TRACEPARENT_LEN, Trace};

/// `Via` values by the minor version received (`1.0 weir` … `1.9 weir`).
const VIA: [&[u8]; 10] = [
    b"1.0 weir",
    b"1.1 weir",
    b"1.2 weir",
    b"1.3 weir",
    b"1.4 weir",
    b"1.5 weir",
    b"1.6 weir",
    b"1.7 weir",
    b"1.8 weir",
    b"1.9 weir",
];

pub(crate) fn via(minor: u8) -> &'static [u8] {
    VIA[usize::from(minor.min(9))]
}

/// The client side of an exchange: the connection and its unconsumed bytes (`buf[..]`, head
/// first once parsed).
#[derive(Debug)]
pub(crate) struct Downstream {
    pub conn: Conn,
    pub buf: Vec<u8>,
    pub peer: SocketAddr,
    /// The caller's cgroup id, for a steered connection.
    pub caller: Option<u64>,
    /// The current request's trace decision (`crate::trace::decide`).
    pub trace: Trace,
}

/// What does not change between a request's attempts.
#[derive(Debug)]
pub(crate) struct Plan {
    pub deadline: Instant,
    pub attempt_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// Longest wait for the next byte of a response body.
    pub response_idle: Duration,
    /// Longest a write to the client may make no progress.
    pub write_timeout: Duration,
    pub response_limits: HeadLimits,
    /// The request body is held whole in the client buffer (replayable), or there is none.
    pub buffered_body: bool,
    /// Length of a held body.
    pub body_len: u64,
    pub idempotent: bool,
    pub client_version: Version,
    pub client_keep_alive: bool,
    pub is_head: bool,
    /// weir answered `Expect: 100-continue` itself: the endpoint's 100 is not relayed.
    pub swallow_100: bool,
    /// The protocols an upgrade request offers (`Upgrade`, forwarded with `Connection:
    /// upgrade`): a `101` answer turns the exchange into a tunnel. `None` for other requests,
    /// and for offers weir does not carry (`h2c` alone, HTTP/1.0, non-HTTP/1.1 services).
    pub upgrade: Option<Vec<u8>>,
    via: &'static [u8],
    forwarded: ForwardedHeaders,
    /// Values of the forwarding headers (X-Forwarded-For, Forwarded), when configured.
    fwd: Vec<u8>,
    fwd_split: usize,
    xfp: bool,
    /// The `traceparent` forwarded in place of the client's, when weir makes a span.
    traceparent: Option<[u8; TRACEPARENT_LEN]>,
    /// weir started the trace: the client's `tracestate` (of no trace it joined) is not
    /// forwarded.
    drop_tracestate: bool,
}

/// Up to eight `(name, value)` fields weir adds to a forwarded request; the count in use beside it.
pub(crate) type AddedFields<'a> = [(&'a [u8], &'a [u8]); 8];

impl Plan {
    pub(crate) fn new(scope: &Scope, head: &mut RequestHead, down: &Downstream, started: Instant) -> Plan {
        let (src, peer) = (&down.buf[..], down.peer);
        let cfg = scope.config();
        let proxy = &scope.snapshot().config.proxy;
        let retry = scope.retry();
        let buffered_body = match head.body {
            BodyFraming::None => true,
            BodyFraming::ContentLength(n) => retry.body_is_replayable(n, true),
            _ => false,
        };
        let mut plan = Plan {
            deadline: started + scope.request_timeout(),
            attempt_timeout: retry.per_attempt_timeout,
            connect_timeout: cfg.timeouts.connect,
            response_idle: scope.request_timeout(),
            write_timeout: proxy.downstream_write_timeout,
            response_limits: HeadLimits {
                max_head_bytes: proxy.max_request_head_bytes.max(64 * 1024),
                max_headers: http::MAX_HEADERS_CAP,
                max_uri_bytes: usize::MAX,
            },
            buffered_body,
            body_len: match head.body {
                BodyFraming::ContentLength(n) if buffered_body => n,
                _ => 0,
            },
            idempotent: head.is_idempotent(),
            client_version: head.version,
            client_keep_alive: head.keep_alive,
            is_head: head.method == Method::Head,
            swallow_100: false,
            upgrade: upgrade_offer(head, src, cfg.protocol),
            via: via(head.minor),
            forwarded: cfg.forwarded_headers,
            fwd: Vec::new(),
            fwd_split: 0,
            xfp: false,
            traceparent: None,
            drop_tracestate: false,
        };
        if plan.forwarded.any() {
            plan.forwarding_values(head, src, peer);
        }
        // weir's span becomes the parent of what the endpoint does. A trace weir started has
        // no business carrying another trace's vendor state.
        if let Trace::Span(span) = down.trace {
            head.remove_header(src, b"traceparent");
            if span.started_here() {
                head.remove_header(src, b"tracestate");
            }
            plan.traceparent = Some(span.traceparent());
            plan.drop_tracestate = span.started_here();
        }
        if plan.upgrade.is_some() {
            // Once sent, an upgrade may have switched the endpoint's connection: never resent.
            plan.idempotent = false;
        }
        plan
    }

    /// The plan of an HTTP/2 client's request (`method`; its body, if any, streams and is kept
    /// for replay up to the service's limit; `trace`: its trace decision, `trace::decide_h2`).
    pub(crate) fn for_h2(scope: &Scope, method: &::http::Method, started: Instant, trace: Trace) -> Plan {
        let cfg = scope.config();
        let proxy = &scope.snapshot().config.proxy;
        let retry = scope.retry();
        Plan {
            deadline: started + scope.request_timeout(),
            attempt_timeout: retry.per_attempt_timeout,
            connect_timeout: cfg.timeouts.connect,
            response_idle: scope.request_timeout(),
            write_timeout: proxy.downstream_write_timeout,
            response_limits: HeadLimits {
                max_head_bytes: proxy.max_request_head_bytes.max(64 * 1024),
                max_headers: http::MAX_HEADERS_CAP,
                max_uri_bytes: usize::MAX,
            },
            buffered_body: true,
            body_len: 0,
            idempotent: weir_core::retry::is_idempotent_method(method.as_str().as_bytes()),
            client_version: Version::Http11,
            client_keep_alive: true,
            is_head: method == ::http::Method::HEAD,
            swallow_100: false,
            upgrade: None,
            via: b"2 weir",
            forwarded: cfg.forwarded_headers,
            fwd: Vec::new(),
            fwd_split: 0,
            xfp: false,
            traceparent: match trace {
                Trace::Span(span) => Some(span.traceparent()),
                Trace::None => None,
            },
            drop_tracestate: matches!(trace, Trace::Span(span) if span.started_here()),
        }
    }

    /// The headers weir adds to a request it forwards that did not come over HTTP/1.1 (`via`,
    /// the forwarding headers the service asks for, computed from `existing` values, and the
    /// `traceparent` naming weir's span, in place of the client's: see [`Plan::retrace_h2`]).
    pub(crate) fn extra_h2(&self, peer: SocketAddr, existing: &::http::HeaderMap) -> Vec<(&'static [u8], Vec<u8>)> {
        let mut out: Vec<(&'static [u8], Vec<u8>)> = vec![(b"via", self.via.to_vec())];
        if let Some(tp) = &self.traceparent {
            out.push((b"traceparent", tp.to_vec()));
        }
        let ip = peer.ip().to_canonical();
        let join = |name: &str, add: String| -> Vec<u8> {
            let mut v: Vec<u8> = Vec::new();
            for x in existing.get_all(name) {
                v.extend_from_slice(x.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(add.as_bytes());
            v
        };
        if self.forwarded.x_forwarded_for {
            out.push((b"x-forwarded-for", join("x-forwarded-for", ip.to_string())));
        }
        if self.forwarded.forwarded {
            let me = match ip {
                std::net::IpAddr::V4(v4) => format!("for={v4};proto=http"),
                std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
            };
            out.push((b"forwarded", join("forwarded", me)));
        }
        if self.forwarded.x_forwarded_proto && existing.get("x-forwarded-proto").is_none() {
            out.push((b"x-forwarded-proto", b"http".to_vec()));
        }
        out
    }

    /// Removes from an HTTP/2 client's fields what weir's span replaces: its `traceparent`
    /// (when weir makes a span; [`Plan::extra_h2`] adds weir's) and, for a trace weir started,
    /// its `tracestate`. An unsampled trace passes untouched.
    pub(crate) fn retrace_h2(&self, headers: &mut ::http::HeaderMap) {
        if self.traceparent.is_some() {
            headers.remove("traceparent");
            if self.drop_tracestate {
                headers.remove("tracestate");
            }
        }
    }

    /// X-Forwarded-For and Forwarded: the client's values (every field line, in order) with the
    /// caller appended; X-Forwarded-Proto only when the request has none.
    fn forwarding_values(&mut self, head: &mut RequestHead, src: &[u8], peer: SocketAddr) {
        let ip = peer.ip().to_canonical();
        let join = |head: &RequestHead, name: &[u8], out: &mut Vec<u8>| {
            for h in head.headers.iter().filter(|h| h.forward && h.name.get(src).eq_ignore_ascii_case(name)) {
                out.extend_from_slice(h.value.get(src));
                out.extend_from_slice(b", ");
            }
        };
        if self.forwarded.x_forwarded_for {
            join(head, b"x-forwarded-for", &mut self.fwd);
            self.fwd.extend_from_slice(ip.to_string().as_bytes());
            head.remove_header(src, b"x-forwarded-for");
        }
        self.fwd_split = self.fwd.len();
        if self.forwarded.forwarded {
            join(head, b"forwarded", &mut self.fwd);
            match ip {
                std::net::IpAddr::V4(v4) => self.fwd.extend_from_slice(format!("for={v4};proto=http").as_bytes()),
                std::net::IpAddr::V6(v6) => self.fwd.extend_from_slice(format!("for=\"[{v6}]\";proto=http").as_bytes()),
            }
            head.remove_header(src, b"forwarded");
        }
        self.xfp = self.forwarded.x_forwarded_proto && head.header(src, b"x-forwarded-proto").is_none();
    }

    /// The deadline of an attempt starting at `now`.
    pub(crate) fn attempt_deadline(&self, now: Instant) -> Instant {
        self.attempt_timeout.map_or(self.deadline, |t| self.deadline.min(now + t))
    }

    /// The fields weir adds to a forwarded HTTP/1.1 request (`via`, and the forwarding
    /// headers the service asks for); `host` for `endpoint` when the request has none.
    pub(crate) fn added_fields<'a>(&'a self, head: &RequestHead, host: &'a str) -> (AddedFields<'a>, usize) {
        let mut extra: [(&[u8], &[u8]); 8] =
            [(b"via", self.via), (b"", b""), (b"", b""), (b"", b""), (b"", b""), (b"", b""), (b"", b""), (b"", b"")];
        let mut n = 1;
        if let Some(offer) = &self.upgrade {
            extra[n] = (b"connection", b"upgrade");
            extra[n + 1] = (b"upgrade", offer);
            n += 2;
        }
        if head.host.is_none() {
            extra[n] = (b"host", host.as_bytes());
            n += 1;
        }
        if self.forwarded.x_forwarded_for {
            extra[n] = (b"x-forwarded-for", &self.fwd[..self.fwd_split]);
            n += 1;
        }
        if self.forwarded.forwarded {
            extra[n] = (b"forwarded", &self.fwd[self.fwd_split..]);
            n += 1;
        }
        if self.xfp {
            extra[n] = (b"x-forwarded-proto", b"http");
            n += 1;
        }
        if let Some(tp) = &self.traceparent {
            extra[n] = (b"traceparent", tp);
            n += 1;
        }
        (extra, n)
    }

    /// Writes the request head for `endpoint` (and a held body) into `out`, with the fields
    /// the route sets (`set`).
    pub(crate) fn write_head(
        &self,
        head: &RequestHead,
        src: &[u8],
        endpoint: SocketAddr,
        set: &[(String, String)],
        out: &mut Vec<u8>,
    ) {
        let host = if head.host.is_none() { endpoint.to_string() } else { String::new() };
        let (extra, n) = self.added_fields(head, &host);
        http::write_request_head_with(head, src, out, &extra[..n], set);
        if self.buffered_body && self.body_len > 0 {
            out.extend_from_slice(&src[head.head_len..head.head_len + self.body_len as usize]);
        }
    }
}

/// The upgrade a request offers that weir carries: an HTTP/1.1 request to an HTTP/1.1 service
/// with `Upgrade` listed in `Connection`, offering something other than `h2c` (weir does not
/// perform h2c upgrades: the request goes on without the offer).
fn upgrade_offer(head: &RequestHead, src: &[u8], protocol: weir_core::config::Protocol) -> Option<Vec<u8>> {
    if !head.upgrade || head.version != Version::Http11 || protocol != weir_core::config::Protocol::Http {
        return None;
    }
    let offer = head.header(src, b"upgrade")?;
    let only_h2c = offer.split(|b| *b == b',').all(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!only_h2c).then(|| offer.to_vec())
}

/// What every step of one exchange reads: the worker, the request's service and its plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub ctx: &'a Ctx,
    pub scope: &'a Scope,
    pub plan: &'a Plan,
}

/// What happened to one attempt.
#[derive(Debug)]
pub(crate) struct AttemptResult<U> {
    pub outcome: Outcome,
    /// The upstream side holding a final response head (a connection, an HTTP/2 stream).
    pub conn: Option<U>,
    /// A pooled connection was used.
    pub reused: bool,
    /// Request bytes may have reached the endpoint's application.
    pub written: bool,
    /// Time from the request write to the response head.
    pub latency: Option<Duration>,
    /// The response came before the request body was sent in full, and says the endpoint
    /// does not want it (an error status, or `Connection: close`): the client's request stream
    /// is not consumed, so its connection closes after the response.
    pub early: bool,
    /// Request body bytes sent.
    pub body_bytes: u64,
    /// A failure on the client's side.
    pub client: ClientFault,
}

/// A failure on the client's side of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    None,
    /// The client closed, reset or stalled while sending its body: nothing to answer.
    Gone,
    /// The client's chunked body was malformed: 400.
    Malformed,
}

impl<U> AttemptResult<U> {
    /// A result without a response.
    pub(crate) fn failed(outcome: Outcome, reused: bool, written: bool) -> AttemptResult<U> {
        AttemptResult {
            outcome,
            conn: None,
            reused,
            written,
            latency: None,
            early: false,
            body_bytes: 0,
            client: ClientFault::None,
        }
    }
}

/// The codec-specific side of a request's attempts: how one attempt is made, and what its
/// response says about waiting before a retry. The loop ([`attempts`]) does not care which
/// codec carried the request or speaks to the endpoint.
pub(crate) trait Attempter {
    /// What a response-bearing attempt holds (a connection, an HTTP/2 stream).
    type Up;

    /// Runs one attempt against `picked` (`fresh`: not on a pooled connection).
    fn run(&mut self, call: Call<'_>, picked: &Picked, fresh: bool) -> impl Future<Output = AttemptResult<Self::Up>>;

    /// The wait the endpoint asked for before a retry (`Retry-After` on a 503 or 429, gRPC's
    /// pushback); `Duration::MAX` when it asked not to be retried.
    fn retry_after(&self, r: &AttemptResult<Self::Up>) -> Option<Duration>;

    /// Whether the request can still be sent again whole.
    fn replayable(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_names_the_version_received() {
        assert_eq!(via(0), b"1.0 weir");
        assert_eq!(via(1), b"1.1 weir");
        assert_eq!(via(2), b"1.2 weir");
        assert_eq!(via(200), b"1.9 weir");
    }
}
