//! Why a retry was made and why weir closed an HTTP/2 client connection: the fixed label
//! values of `weir_retries_total` and `weir_http2_connections_closed_total`, counted by
//! [`super::ServiceStats`] and [`super::WorkerCounters`]. Must not: grow a value that is not a
//! bounded label.

use crate::outcome::Outcome;

/// Why a retry was made (the `reason` label of `weir_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// Nothing could be sent: refused, connect timeout.
    ConnectFailure,
    /// A reused idle connection was closed by the endpoint before anything was written.
    KeepaliveRace,
    /// The endpoint reset the connection after the request was sent (idempotent only).
    Reset,
    /// No response head in time (idempotent only).
    Timeout,
    /// The endpoint answered 503.
    Status503,
    /// The endpoint answered another 5xx (idempotent only).
    Status5xx,
    /// A gRPC endpoint answered a retryable `grpc-status` (trailers-only).
    GrpcStatus,
}

impl RetryReason {
    /// Every reason, in label order.
    pub const ALL: [RetryReason; 7] = [
        RetryReason::ConnectFailure,
        RetryReason::KeepaliveRace,
        RetryReason::Reset,
        RetryReason::Timeout,
        RetryReason::Status503,
        RetryReason::Status5xx,
        RetryReason::GrpcStatus,
    ];

    /// Why a retry after `outcome` is made (the one mapping from an outcome to a retry reason).
    pub const fn for_outcome(outcome: &Outcome) -> RetryReason {
        match outcome {
            Outcome::ConnectFailure | Outcome::ConnectTimeout => RetryReason::ConnectFailure,
            Outcome::ResetBeforeWrite => RetryReason::KeepaliveRace,
            Outcome::Timeout => RetryReason::Timeout,
            Outcome::Response { status: 503 } => RetryReason::Status503,
            Outcome::Response { .. } => RetryReason::Status5xx,
            Outcome::Grpc { .. } => RetryReason::GrpcStatus,
            Outcome::ResetAfterWrite
            | Outcome::ResetAfterResponseStarted
            | Outcome::ProtocolError
            | Outcome::LocalResource
            | Outcome::LocalError => RetryReason::Reset,
        }
    }

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect-failure",
            RetryReason::KeepaliveRace => "keepalive-race",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Status503 => "status-503",
            RetryReason::Status5xx => "status-5xx",
            RetryReason::GrpcStatus => "grpc-status",
        }
    }
}

/// Why weir closed an HTTP/2 client connection for its behaviour (the `reason` label of
/// `weir_http2_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Http2Close {
    /// The frame-rate guard: too many frames that do no work (PING, SETTINGS, RST_STREAM,
    /// PRIORITY, empty DATA, implausible WINDOW_UPDATE).
    ControlFlood,
    /// The HTTP/2 server's own abuse limits (`ENHANCE_YOUR_CALM`): streams reset before they
    /// were accepted (rapid reset), too many CONTINUATION frames, too many streams reset for
    /// the client's errors, a header list far over the limit.
    EnhanceYourCalm,
    /// Any other connection error the client caused (`PROTOCOL_ERROR`, `FLOW_CONTROL_ERROR`,
    /// `COMPRESSION_ERROR`, `FRAME_SIZE_ERROR`, …).
    ProtocolError,
    /// The client did not take its GOAWAY (or answer its PING) in time after weir began to
    /// close the connection: it was closed without waiting any longer.
    GoawayTimeout,
}

impl Http2Close {
    /// Every reason, in label order.
    pub const ALL: [Http2Close; 4] =
        [Http2Close::ControlFlood, Http2Close::EnhanceYourCalm, Http2Close::ProtocolError, Http2Close::GoawayTimeout];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Http2Close::ControlFlood => "control-flood",
            Http2Close::EnhanceYourCalm => "enhance-your-calm",
            Http2Close::ProtocolError => "protocol-error",
            Http2Close::GoawayTimeout => "goaway-timeout",
        }
    }
}
