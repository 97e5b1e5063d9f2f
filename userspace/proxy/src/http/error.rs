//! Parse errors of the HTTP codec and their one mapping to a status code and an `x-weir-error`
//! reason. Owns: which status each failure gets. Must not: format or allocate (every detail is a
//! `&'static str`, so an error can be answered without building a string).

use thiserror::Error;

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
    /// A well-formed version other than 1.0 / 1.1 (includes the HTTP/2 preface).
    UnsupportedVersion,
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
    /// Never returned by the parser: for the caller refusing `Connection: upgrade`
    /// ([`crate::http::RequestHead::upgrade`]).
    UpgradeNotSupported,
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
    /// Status code weir answers the client with.
    pub fn status(&self) -> u16 {
        use HeadError::*;
        match self {
            UnsupportedVersion => 505,
            UnsupportedTransferCoding | ConnectNotSupported | UpgradeNotSupported => 501,
            UnsupportedExpectation => 417,
            HeadTooLarge | TooManyHeaders => 431,
            UriTooLong => 414,
            UpstreamProtocol(_) => 502,
            _ => 400,
        }
    }

    /// Short stable kebab-case reason for `x-weir-error` and the access log.
    pub fn reason(&self) -> &'static str {
        use HeadError::*;
        match self {
            UnsupportedVersion => "version-not-supported",
            UnsupportedTransferCoding => "unsupported-transfer-coding",
            ConnectNotSupported => "connect-not-supported",
            UpgradeNotSupported => "upgrade-not-supported",
            UnsupportedExpectation => "expectation-failed",
            HeadTooLarge => "head-too-large",
            TooManyHeaders => "too-many-headers",
            UriTooLong => "uri-too-long",
            UpstreamProtocol(_) => "upstream-protocol-error",
            _ => "bad-request",
        }
    }

    /// One-line human description (also the `Display` text and the error-response body).
    pub fn detail(&self) -> &'static str {
        use HeadError::*;
        match self {
            InvalidMethod => "invalid method",
            InvalidTarget => "invalid request target",
            AsteriskTarget => "asterisk-form target is only allowed with OPTIONS",
            InvalidVersion => "malformed HTTP version",
            UnsupportedVersion => "HTTP version not supported (only HTTP/1.0 and HTTP/1.1)",
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
            UpgradeNotSupported => "protocol upgrade is not supported",
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
    /// Status weir answers with: 400 for a client's body, 502 for an endpoint's.
    pub fn status(&self, peer: Peer) -> u16 {
        match peer {
            Peer::Downstream => 400,
            Peer::Upstream => 502,
        }
    }

    /// `x-weir-error` reason.
    pub fn reason(&self, peer: Peer) -> &'static str {
        match peer {
            Peer::Downstream => "bad-request",
            Peer::Upstream => "upstream-protocol-error",
        }
    }
}
