//! Parse errors of the HTTP codec and their one mapping to weir's error vocabulary
//! ([`ErrorReason`]: status, `x-weir-error`, metric label), by type. Owns: which reason each
//! failure gets and the detail the response body gives. Must not: format or allocate (every
//! detail is a `&'static str`, so an error can be answered without building a string).

use thiserror::Error;
use weir_core::outcome::ErrorReason;

/// Why a head could not be accepted. Request-side variants map to 4xx/5xx answers to the
/// client; every failure of an upstream response is folded into [`HeadError::UpstreamProtocol`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("{}", self.detail())]
pub enum HeadError {
    /// Method is not a token.
    InvalidMethod,
    /// Request target has a byte outside RFC 3986, a bad `%` escape, a fragment, or an
    /// unknown form.
    InvalidTarget,
    /// `*` target with a method other than OPTIONS.
    AsteriskTarget,
    /// Version is not `HTTP/DIGIT.DIGIT`.
    InvalidVersion,
    /// A well-formed version other than 1.x.
    UnsupportedVersion,
    /// The HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0`).
    Http2Preface,
    /// Never returned by [`crate::http::parse_request`] (which then parses the head as 1.1):
    /// `HTTP/1.<minor>` with minor >= 2, whose minor digit is at byte `at`.
    HigherMinorVersion {
        /// Offset of the minor digit.
        at: u32,
        /// The digit.
        minor: u8,
    },
    /// Bad byte in a field name, whitespace before the colon or before the first field line,
    /// or obs-fold (httparse cannot tell these apart; all are 400).
    InvalidHeaderName,
    /// CTL (NUL, bare CR, …) in a field value.
    InvalidHeaderValue,
    /// Bare CR or bare LF as a line terminator.
    InvalidLineEnding,
    /// Content-Length that is not a plain decimal number fitting in u64 (signs, lists, spaces).
    InvalidContentLength,
    /// More than one Content-Length field, even with equal values.
    DuplicateContentLength,
    /// Content-Length together with Transfer-Encoding.
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding that is not a comma-separated list of plain tokens.
    InvalidTransferEncoding,
    /// Transfer-Encoding whose final coding is not chunked.
    ChunkedNotFinal,
    /// `chunked` listed more than once.
    ChunkedTwice,
    /// Transfer-Encoding in an HTTP/1.0 request.
    TransferEncodingInHttp10,
    /// A valid transfer coding weir does not implement (e.g. `gzip, chunked`).
    UnsupportedTransferCoding,
    /// HTTP/1.1 request without Host.
    MissingHost,
    /// More than one Host field.
    DuplicateHost,
    /// Host value that is not `host[:port]`.
    InvalidHost,
    /// Absolute-form target whose authority differs from Host.
    HostMismatch,
    /// Connection field that is not a list of tokens, or lists more than 32 options.
    InvalidConnection,
    /// Expect other than `100-continue`.
    UnsupportedExpectation,
    /// CONNECT: weir does not tunnel.
    ConnectNotSupported,
    /// Head larger than `max_head_bytes`.
    HeadTooLarge,
    /// More than `max_headers` field lines.
    TooManyHeaders,
    /// Request target longer than `max_uri_bytes`.
    UriTooLong,
    /// The upstream's response head is malformed or ambiguous; the detail says why.
    UpstreamProtocol(&'static str),
}

impl HeadError {
    /// The reason weir answers with: its status, `x-weir-error` value and metric label.
    pub fn error_reason(&self) -> ErrorReason {
        use HeadError::*;
        match self {
            UnsupportedVersion | Http2Preface | HigherMinorVersion { .. } => ErrorReason::VersionNotSupported,
            UnsupportedTransferCoding | ConnectNotSupported => ErrorReason::NotImplemented,
            UnsupportedExpectation => ErrorReason::ExpectationFailed,
            HeadTooLarge | TooManyHeaders => ErrorReason::HeadTooLarge,
            UriTooLong => ErrorReason::UriTooLong,
            UpstreamProtocol(_) => ErrorReason::UpstreamProtocolError,
            InvalidMethod
            | InvalidTarget
            | AsteriskTarget
            | InvalidVersion
            | InvalidHeaderName
            | InvalidHeaderValue
            | InvalidLineEnding
            | InvalidContentLength
            | DuplicateContentLength
            | ContentLengthWithTransferEncoding
            | InvalidTransferEncoding
            | ChunkedNotFinal
            | ChunkedTwice
            | TransferEncodingInHttp10
            | MissingHost
            | DuplicateHost
            | InvalidHost
            | HostMismatch
            | InvalidConnection => ErrorReason::BadRequest,
        }
    }

    /// Status code weir answers the client with.
    pub fn status(&self) -> u16 {
        self.error_reason().status()
    }

    /// Short stable kebab-case reason for `x-weir-error` and the access log.
    pub fn reason(&self) -> &'static str {
        self.error_reason().as_str()
    }

    /// One-line human description (also the `Display` text and the error-response body).
    pub fn detail(&self) -> &'static str {
        use HeadError::*;
        match self {
            InvalidMethod => "invalid method",
            InvalidTarget => "invalid request target",
            AsteriskTarget => "asterisk-form target is only allowed with OPTIONS",
            InvalidVersion => "malformed HTTP version",
            UnsupportedVersion => "HTTP version not supported (only HTTP/1.x)",
            Http2Preface => "the HTTP/2 preface must open a connection: this one already spoke HTTP/1.1",
            HigherMinorVersion { .. } => "HTTP/1.x minor version (processed as HTTP/1.1)",
            InvalidHeaderName => "invalid header name, whitespace before a colon or first header, or obs-fold",
            InvalidHeaderValue => "control character in a header value",
            InvalidLineEnding => "bare CR or LF in the head",
            InvalidContentLength => "invalid Content-Length",
            DuplicateContentLength => "repeated Content-Length",
            ContentLengthWithTransferEncoding => "Content-Length together with Transfer-Encoding",
            InvalidTransferEncoding => "malformed Transfer-Encoding",
            ChunkedNotFinal => "final transfer coding is not chunked",
            ChunkedTwice => "chunked applied more than once",
            TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            UnsupportedTransferCoding => "transfer coding not implemented (only chunked)",
            MissingHost => "missing Host header",
            DuplicateHost => "more than one Host header",
            InvalidHost => "invalid Host header",
            HostMismatch => "Host header differs from the absolute-form target authority",
            InvalidConnection => "malformed Connection header",
            UnsupportedExpectation => "unsupported Expect (only 100-continue)",
            ConnectNotSupported => "CONNECT is not supported",
            HeadTooLarge => "request head too large",
            TooManyHeaders => "too many header fields",
            UriTooLong => "request target too long",
            UpstreamProtocol(d) => d,
        }
    }

    /// The same failure seen in an upstream response: always a 502.
    pub(crate) fn upstream(self) -> HeadError {
        match self {
            HeadError::UpstreamProtocol(_) => self,
            HeadError::HeadTooLarge => HeadError::UpstreamProtocol("response head too large"),
            other => HeadError::UpstreamProtocol(other.detail()),
        }
    }

    pub(crate) fn from_httparse(e: httparse::Error) -> HeadError {
        match e {
            httparse::Error::HeaderName => HeadError::InvalidHeaderName,
            httparse::Error::HeaderValue => HeadError::InvalidHeaderValue,
            httparse::Error::NewLine => HeadError::InvalidLineEnding,
            httparse::Error::Token => HeadError::InvalidMethod,
            httparse::Error::Version => HeadError::InvalidVersion,
            httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
            httparse::Error::Status => HeadError::UpstreamProtocol("malformed status line"),
        }
    }
}

/// Which side of the proxy sent a malformed body: decides who is blamed and the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The client of the proxy (request bodies): 400.
    Downstream,
    /// The endpoint (response bodies): 502.
    Upstream,
}

/// A malformed chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ChunkError {
    /// Chunk size missing or not hexadecimal, or whitespace not followed by an extension.
    #[error("invalid chunk size")]
    InvalidChunkSize,
    /// More than 16 hex digits in a chunk size (would overflow u64).
    #[error("chunk size too long")]
    ChunkSizeTooLong,
    /// Chunk extension not of the form `;name[=token|quoted-string]`.
    #[error("malformed chunk extension")]
    InvalidExtension,
    /// Chunk-size line (size + extensions) longer than [`crate::http::MAX_CHUNK_LINE_BYTES`].
    #[error("chunk extensions too long")]
    ExtensionTooLong,
    /// Bare CR or LF, or chunk data not followed by CRLF.
    #[error("bad line ending in chunked body")]
    InvalidLineEnding,
    /// Malformed trailer field line (bad name, whitespace before colon, obs-fold, CTL).
    #[error("malformed trailer field")]
    InvalidTrailer,
    /// Trailer section larger than [`crate::http::MAX_TRAILER_BYTES`].
    #[error("trailer section too large")]
    TrailersTooLarge,
}

impl ChunkError {
    /// The reason weir answers with: 400 `bad-request` for a client's body, 502
    /// `upstream-protocol-error` for an endpoint's.
    pub fn error_reason(&self, peer: Peer) -> ErrorReason {
        match peer {
            Peer::Downstream => ErrorReason::BadRequest,
            Peer::Upstream => ErrorReason::UpstreamProtocolError,
        }
    }

    /// Status weir answers with.
    pub fn status(&self, peer: Peer) -> u16 {
        self.error_reason(peer).status()
    }

    /// `x-weir-error` reason.
    pub fn reason(&self, peer: Peer) -> &'static str {
        self.error_reason(peer).as_str()
    }
}
