//! The one classification of what happened to an attempt ([`Outcome`]) and the one mapping from
//! a failure to what the client sees ([`ErrorReason`]: HTTP status + `x-weir-error` value +
//! metric label).
//!
//! Owns: the outcome vocabulary shared by retries (`retry`), outlier detection (`outlier`),
//! RED metrics and the access log; the fixed set of reasons weir generates responses for.
//! Must not: hold state, read clocks, or know about sockets. Every function here is `const` or a
//! plain match: safe to call on the hot path.

use serde::Serialize;
use std::fmt;

/// Name of the response header that marks a response weir generated itself. Its value is
/// [`ErrorReason::as_str`], the same word as the `reason` metric label and the access-log field.
pub const ERROR_HEADER: &str = "x-weir-error";

/// `Retry-After` value (seconds) weir sends with [`ErrorReason::Overloaded`] unless the caller
/// has a better estimate. Default: 1 s.
pub const DEFAULT_SHED_RETRY_AFTER_SECS: u32 = 1;

/// What happened to one attempt (one try of a request against one endpoint).
///
/// Proxy-local failures (connect, reset) are kept apart from the endpoint's own responses so that
/// retry safety and ejection can tell "the endpoint never saw it" from "the endpoint failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A complete response head arrived from the endpoint (the body may still be streaming; a
    /// failure mid-body is [`Outcome::ResetAfterResponseStarted`]).
    Response {
        /// HTTP status code as received.
        status: u16,
    },
    /// A gRPC endpoint answered with a non-OK `grpc-status` before anything of the response was
    /// relayed (a trailers-only response): a response, but one the policy may retry.
    Grpc {
        /// The `grpc-status` code (1..=16).
        code: u8,
    },
    /// The endpoint refused the connection (RST, unreachable, ...). Nothing was sent.
    ConnectFailure,
    /// The connect did not complete within the connect timeout (default 1 s). Nothing was sent.
    ConnectTimeout,
    /// A reused pooled (keep-alive) connection was closed or reset before any request byte was
    /// written. Nothing was sent; this is the keep-alive race, *not* an endpoint failure.
    ResetBeforeWrite,
    /// The connection was reset or closed after the request was (partly) sent and before a
    /// complete response head arrived.
    ResetAfterWrite,
    /// The connection failed after the response head was forwarded to the client: the client
    /// connection is closed mid-body. Never retried.
    ResetAfterResponseStarted,
    /// The response head did not arrive within the per-attempt timeout or the request deadline.
    Timeout,
    /// The endpoint answered with something that is not valid HTTP/1.1 (malformed head,
    /// impossible framing). The request was sent.
    ProtocolError,
    /// weir ran out of a local resource (file descriptors, socket buffers, local ports, memory)
    /// before anything was sent. Not the endpoint's fault: never retried, never an ejection;
    /// the client gets `503 overloaded` with `Retry-After`.
    LocalResource,
    /// weir itself failed (internal bug). Not the endpoint's fault.
    LocalError,
}

impl Outcome {
    /// A "gateway failure" in the outlier-detection sense (docs/OPERATING.md: 502/503/504, connect
    /// failure, reset, timeout): evidence that the *endpoint* is unwell. `ResetBeforeWrite` (the
    /// keep-alive race) and `LocalError` are not; neither is any other status. A reset after the
    /// response started counts: the endpoint died mid-response. A protocol error counts: the
    /// endpoint is broken.
    pub const fn is_gateway_failure(&self) -> bool {
        match *self {
            Outcome::Response { status } => matches!(status, 502..=504),
            Outcome::Grpc { code } => code == crate::grpc::UNAVAILABLE,
            Outcome::ConnectFailure
            | Outcome::ConnectTimeout
            | Outcome::ResetAfterWrite
            | Outcome::ResetAfterResponseStarted
            | Outcome::Timeout
            | Outcome::ProtocolError => true,
            Outcome::ResetBeforeWrite | Outcome::LocalResource | Outcome::LocalError => false,
        }
    }

    /// Stable kebab-case name of the outcome kind, for the access log (`outcome` field).
    pub const fn as_str(&self) -> &'static str {
        match self {
            Outcome::Response { .. } => "response",
            Outcome::Grpc { .. } => "grpc-status",
            Outcome::ConnectFailure => "connect-failure",
            Outcome::ConnectTimeout => "connect-timeout",
            Outcome::ResetBeforeWrite => "reset-before-write",
            Outcome::ResetAfterWrite => "reset-after-write",
            Outcome::ResetAfterResponseStarted => "reset-after-response-started",
            Outcome::Timeout => "timeout",
            Outcome::ProtocolError => "protocol-error",
            Outcome::LocalResource => "local-resource",
            Outcome::LocalError => "local-error",
        }
    }
}

/// Every reason for which weir answers a request itself. The string ([`ErrorReason::as_str`],
/// kebab-case, as in `x-weir-error: connect-failure`) is used unchanged as the `x-weir-error`
/// header value, the `reason` metric label and the access-log `error` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorReason {
    /// No connection could be made (refused, connect timeout, or the connection was closed
    /// before anything was sent) on the last attempt. 503.
    ConnectFailure,
    /// The endpoint reset or closed after the request was sent, before a response head. 502.
    UpstreamReset,
    /// The endpoint's response was not valid HTTP/1.1. 502.
    UpstreamProtocolError,
    /// No response head before the per-attempt timeout or the request deadline. 504.
    Timeout,
    /// The service has no endpoint to send to (none configured, or all ejected with panic mode
    /// disabled). 503.
    NoHealthyEndpoint,
    /// The destination is not a known service. 404 (TCP: the connection is closed).
    NoRoute,
    /// Malformed or ambiguous request (RFC 9112 strict parsing). 400, connection closed.
    BadRequest,
    /// Request head over the limit (default 60 KiB or 100 headers). 431, connection closed.
    HeadTooLarge,
    /// Request target over the limit. 414, connection closed.
    UriTooLong,
    /// The client did not send a complete head within the header read timeout (default 10 s).
    /// 408, connection closed.
    HeaderReadTimeout,
    /// A configured connection or pending-request limit was reached. 503 with `Retry-After`.
    Overloaded,
    /// Something weir does not implement (CONNECT, a transfer coding other than chunked). 501,
    /// connection closed.
    NotImplemented,
    /// An `Expect` other than `100-continue`. 417, connection closed.
    ExpectationFailed,
    /// An HTTP version other than 1.x (HTTP/2 prior knowledge, HTTP/3.0). 505, connection
    /// closed.
    VersionNotSupported,
    /// weir is draining (SIGTERM) and refuses new work. 503, connection closed.
    Draining,
    /// weir itself failed ([`Outcome::LocalError`]). 500.
    InternalError,
    /// The service's `[service.rate_limit]` was exceeded. 429 with `Retry-After`.
    RateLimited,
    /// A route's `fault` aborted the request on purpose (its `abort_status`, default 503).
    /// Never retried.
    FaultInjected,
}

impl ErrorReason {
    /// All reasons, for pre-registering metric label values.
    pub const ALL: [ErrorReason; 18] = [
        ErrorReason::ConnectFailure,
        ErrorReason::UpstreamReset,
        ErrorReason::UpstreamProtocolError,
        ErrorReason::Timeout,
        ErrorReason::NoHealthyEndpoint,
        ErrorReason::NoRoute,
        ErrorReason::BadRequest,
        ErrorReason::HeadTooLarge,
        ErrorReason::UriTooLong,
        ErrorReason::HeaderReadTimeout,
        ErrorReason::Overloaded,
        ErrorReason::NotImplemented,
        ErrorReason::ExpectationFailed,
        ErrorReason::VersionNotSupported,
        ErrorReason::Draining,
        ErrorReason::InternalError,
        ErrorReason::RateLimited,
        ErrorReason::FaultInjected,
    ];

    /// kebab-case name: the `x-weir-error` header value and the `reason` metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorReason::ConnectFailure => "connect-failure",
            ErrorReason::UpstreamReset => "upstream-reset",
            ErrorReason::UpstreamProtocolError => "upstream-protocol-error",
            ErrorReason::Timeout => "timeout",
            ErrorReason::NoHealthyEndpoint => "no-healthy-endpoint",
            ErrorReason::NoRoute => "no-route",
            ErrorReason::BadRequest => "bad-request",
            ErrorReason::HeadTooLarge => "head-too-large",
            ErrorReason::UriTooLong => "uri-too-long",
            ErrorReason::HeaderReadTimeout => "header-read-timeout",
            ErrorReason::Overloaded => "overloaded",
            ErrorReason::NotImplemented => "not-implemented",
            ErrorReason::ExpectationFailed => "expectation-failed",
            ErrorReason::VersionNotSupported => "version-not-supported",
            ErrorReason::Draining => "draining",
            ErrorReason::InternalError => "internal-error",
            ErrorReason::RateLimited => "rate-limited",
            ErrorReason::FaultInjected => "fault-injected",
        }
    }

    /// The HTTP status weir answers with.
    pub const fn status(self) -> u16 {
        match self {
            ErrorReason::ConnectFailure
            | ErrorReason::NoHealthyEndpoint
            | ErrorReason::Overloaded
            | ErrorReason::Draining
            | ErrorReason::FaultInjected => 503,
            ErrorReason::UpstreamReset | ErrorReason::UpstreamProtocolError => 502,
            ErrorReason::Timeout => 504,
            ErrorReason::NoRoute => 404,
            ErrorReason::BadRequest => 400,
            ErrorReason::HeadTooLarge => 431,
            ErrorReason::UriTooLong => 414,
            ErrorReason::HeaderReadTimeout => 408,
            ErrorReason::NotImplemented => 501,
            ErrorReason::ExpectationFailed => 417,
            ErrorReason::VersionNotSupported => 505,
            ErrorReason::InternalError => 500,
            ErrorReason::RateLimited => 429,
        }
    }

    /// One-line, human-readable body text saying why (sent as `text/plain`).
    pub const fn message(self) -> &'static str {
        match self {
            ErrorReason::ConnectFailure => "weir: could not connect to any endpoint of the service",
            ErrorReason::UpstreamReset => "weir: the endpoint closed the connection before responding",
            ErrorReason::UpstreamProtocolError => "weir: the endpoint sent an invalid response",
            ErrorReason::Timeout => "weir: the endpoint did not respond in time",
            ErrorReason::NoHealthyEndpoint => "weir: the service has no healthy endpoint",
            ErrorReason::NoRoute => "weir: no service is configured for this destination",
            ErrorReason::BadRequest => "weir: malformed or ambiguous request",
            ErrorReason::HeadTooLarge => "weir: request header fields too large",
            ErrorReason::UriTooLong => "weir: request target too long",
            ErrorReason::HeaderReadTimeout => "weir: request head not received in time",
            ErrorReason::Overloaded => "weir: overloaded, retry later",
            ErrorReason::NotImplemented => "weir: not implemented",
            ErrorReason::ExpectationFailed => "weir: unsupported expectation (only 100-continue)",
            ErrorReason::VersionNotSupported => "weir: HTTP version not supported (only HTTP/1.x)",
            ErrorReason::Draining => "weir: shutting down",
            ErrorReason::InternalError => "weir: internal error",
            ErrorReason::RateLimited => "weir: rate limit exceeded, retry later",
            ErrorReason::FaultInjected => "weir: fault injected",
        }
    }

    /// Whether the response must carry `Connection: close` and the downstream connection be
    /// closed after it (the request stream can no longer be framed reliably, or weir drains).
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorReason::BadRequest
                | ErrorReason::HeadTooLarge
                | ErrorReason::UriTooLong
                | ErrorReason::HeaderReadTimeout
                | ErrorReason::NotImplemented
                | ErrorReason::ExpectationFailed
                | ErrorReason::VersionNotSupported
                | ErrorReason::Draining
        )
    }

    /// Whether the response carries `Retry-After` (see [`DEFAULT_SHED_RETRY_AFTER_SECS`]; a
    /// rate limit says when its next request would pass).
    pub const fn sets_retry_after(self) -> bool {
        matches!(self, ErrorReason::Overloaded | ErrorReason::RateLimited)
    }

    /// The one mapping from the final attempt's outcome to the response weir generates.
    ///
    /// `None` when weir does not generate a response: the endpoint's own response is passed
    /// through ([`Outcome::Response`], including a 503 that survived its retries), or the
    /// response head was already forwarded ([`Outcome::ResetAfterResponseStarted`]: the caller
    /// closes the downstream connection, and the access log records [`Outcome::as_str`]).
    pub const fn from_outcome(outcome: &Outcome) -> Option<ErrorReason> {
        match outcome {
            Outcome::Response { .. } | Outcome::Grpc { .. } | Outcome::ResetAfterResponseStarted => None,
            // Nothing reached the endpoint: for the client this is a failed connect.
            Outcome::ConnectFailure | Outcome::ConnectTimeout | Outcome::ResetBeforeWrite => {
                Some(ErrorReason::ConnectFailure)
            }
            Outcome::ResetAfterWrite => Some(ErrorReason::UpstreamReset),
            Outcome::Timeout => Some(ErrorReason::Timeout),
            Outcome::ProtocolError => Some(ErrorReason::UpstreamProtocolError),
            Outcome::LocalResource => Some(ErrorReason::Overloaded),
            Outcome::LocalError => Some(ErrorReason::InternalError),
        }
    }

    /// What weir answers when a request's attempts ended without a response to relay: the
    /// last attempt's failure; `no-healthy-endpoint` when no attempt could be made, or when
    /// the last was an endpoint's response discarded for a retry that then found no endpoint.
    pub const fn for_failed_request(last: Option<&Outcome>) -> ErrorReason {
        match last {
            None | Some(Outcome::Response { .. } | Outcome::Grpc { .. }) => ErrorReason::NoHealthyEndpoint,
            Some(o) => match ErrorReason::from_outcome(o) {
                Some(r) => r,
                None => ErrorReason::UpstreamReset,
            },
        }
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_OUTCOMES: [Outcome; 11] = [
        Outcome::Grpc { code: 14 },
        Outcome::Response { status: 200 },
        Outcome::ConnectFailure,
        Outcome::ConnectTimeout,
        Outcome::ResetBeforeWrite,
        Outcome::ResetAfterWrite,
        Outcome::ResetAfterResponseStarted,
        Outcome::Timeout,
        Outcome::ProtocolError,
        Outcome::LocalResource,
        Outcome::LocalError,
    ];

    #[test]
    fn gateway_failures_follow_the_outlier_row() {
        for status in [502, 503, 504] {
            assert!(Outcome::Response { status }.is_gateway_failure(), "{status}");
        }
        for status in [200, 204, 301, 404, 429, 500, 501, 505] {
            assert!(!Outcome::Response { status }.is_gateway_failure(), "{status}");
        }
        assert!(Outcome::ConnectFailure.is_gateway_failure());
        assert!(Outcome::ConnectTimeout.is_gateway_failure());
        assert!(Outcome::ResetAfterWrite.is_gateway_failure());
        assert!(Outcome::Timeout.is_gateway_failure());
        assert!(!Outcome::ResetBeforeWrite.is_gateway_failure(), "the keep-alive race is not the endpoint's failure");
        assert!(!Outcome::LocalError.is_gateway_failure());
        assert!(!Outcome::LocalResource.is_gateway_failure(), "weir's own limits never blame an endpoint");
    }

    #[test]
    fn reason_statuses_match_the_failure_matrix() {
        use ErrorReason as R;
        let expected = [
            (R::ConnectFailure, 503),
            (R::UpstreamReset, 502),
            (R::UpstreamProtocolError, 502),
            (R::Timeout, 504),
            (R::NoHealthyEndpoint, 503),
            (R::NoRoute, 404),
            (R::BadRequest, 400),
            (R::HeadTooLarge, 431),
            (R::UriTooLong, 414),
            (R::HeaderReadTimeout, 408),
            (R::Overloaded, 503),
            (R::NotImplemented, 501),
            (R::ExpectationFailed, 417),
            (R::VersionNotSupported, 505),
            (R::Draining, 503),
            (R::InternalError, 500),
            (R::RateLimited, 429),
            (R::FaultInjected, 503),
        ];
        assert_eq!(expected.len(), R::ALL.len(), "every reason has an expected status");
        for (reason, status) in expected {
            assert_eq!(reason.status(), status, "{reason}");
        }
        assert!(R::Overloaded.sets_retry_after() && R::RateLimited.sets_retry_after());
        assert!(R::BadRequest.closes_connection());
        assert!(!R::ConnectFailure.closes_connection());
    }

    #[test]
    fn reason_strings_are_unique_kebab_case_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for reason in ErrorReason::ALL {
            let s = reason.as_str();
            assert!(seen.insert(s), "duplicate reason string {s}");
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{s}");
            let json = serde_json::to_string(&reason).expect("reason serialises");
            assert_eq!(json, format!("\"{s}\""), "serde name equals as_str");
            assert_eq!(reason.to_string(), s);
        }
    }

    #[test]
    fn final_outcome_maps_to_one_reason() {
        use ErrorReason as R;
        assert_eq!(R::from_outcome(&Outcome::Response { status: 503 }), None);
        assert_eq!(R::from_outcome(&Outcome::ResetAfterResponseStarted), None);
        assert_eq!(R::from_outcome(&Outcome::ConnectFailure), Some(R::ConnectFailure));
        assert_eq!(R::from_outcome(&Outcome::ConnectTimeout), Some(R::ConnectFailure));
        assert_eq!(R::from_outcome(&Outcome::ResetBeforeWrite), Some(R::ConnectFailure));
        assert_eq!(R::from_outcome(&Outcome::ResetAfterWrite), Some(R::UpstreamReset));
        assert_eq!(R::from_outcome(&Outcome::Timeout), Some(R::Timeout));
        assert_eq!(R::from_outcome(&Outcome::ProtocolError), Some(R::UpstreamProtocolError));
        assert_eq!(R::from_outcome(&Outcome::LocalError), Some(R::InternalError));
        assert_eq!(R::from_outcome(&Outcome::LocalResource), Some(R::Overloaded));
        assert_eq!(R::for_failed_request(None), R::NoHealthyEndpoint);
        assert_eq!(R::for_failed_request(Some(&Outcome::Response { status: 503 })), R::NoHealthyEndpoint);
        assert_eq!(R::for_failed_request(Some(&Outcome::Timeout)), R::Timeout);
        assert_eq!(R::for_failed_request(Some(&Outcome::ResetAfterResponseStarted)), R::UpstreamReset);
        let mut names = std::collections::HashSet::new();
        for o in ALL_OUTCOMES {
            assert!(names.insert(o.as_str()), "duplicate outcome name {}", o.as_str());
        }
    }
}
