//! weir's HTTP/1.1 codec: strict request/response head parsing, streaming chunked decoding,
//! re-serialisation of forwarded heads, and the error responses weir generates itself.
//!
//! Owns: the byte-level rules of RFC 9112/9110 as weir applies them (see the strict-parsing
//! section of docs/OPERATING.md), the mapping of a parse failure to a status and an `x-weir-error`
//! reason. Must not: do I/O, await, read the clock, log, or allocate per request once the
//! caller's reusable `Vec`s are warm. Parsers return [`Span`]s into the caller's buffer; the
//! caller keeps that buffer alive and unchanged while it uses the parsed head.
//!
//! Flow for one proxied exchange:
//! 1. [`parse_request`] on the downstream read buffer until [`Status::Complete`]; an error maps
//!    to [`HeadError::status`] + [`HeadError::reason`], answer with [`write_head_error`] and close.
//! 2. [`write_request_head`] re-serialises what was understood (never the raw bytes); the body
//!    follows as `Content-Length` bytes, or via [`ChunkedDecoder`] + [`write_chunk_header`].
//! 3. [`parse_response`] on the upstream buffer; interim 1xx heads are forwarded (HTTP/1.1
//!    clients only) and parsing starts again after them.
//! 4. [`write_response_head`] picks the downstream framing (it may turn a close-delimited or
//!    chunked upstream body into chunked / close-delimited for the client's version).

mod chunked;
mod error;
mod fields;
mod fuzz;
mod request;
mod response;
mod syntax;
mod write;

#[cfg(test)]
mod tests;

use std::ops::Range;

pub use chunked::{ChunkEvent, ChunkedDecoder, MAX_CHUNK_LINE_BYTES, MAX_TRAILER_BYTES};
pub use error::{ChunkError, HeadError, Peer};
pub use fuzz::fuzz_request;
pub use request::{Method, RequestHead, parse_request};
pub use response::{ResponseHead, parse_response};
pub use write::{
    CHUNK_END, DownstreamBody, ErrorResponse, LAST_CHUNK, reason_phrase, write_chunk, write_chunk_header,
    write_error_response, write_head_error, write_last_chunk, write_request_head, write_request_head_with,
    write_response_head,
};

/// Hard ceiling on [`HeadLimits::max_headers`]: the parser's header table lives on the stack.
pub const MAX_HEADERS_CAP: usize = 256;

/// Hard ceiling on [`HeadLimits::max_head_bytes`], so that every [`Span`] fits in `u32`.
pub const MAX_HEAD_BYTES_CAP: usize = 16 * 1024 * 1024;

/// Size limits applied while parsing a head (request or response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head (start line + fields + final CRLF) accepted; larger is 431 for requests.
    /// Clamped to [`MAX_HEAD_BYTES_CAP`].
    pub max_head_bytes: usize,
    /// Most field lines accepted; more is 431 for requests. Clamped to [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
    /// Longest request target accepted; longer is 414. Ignored for responses.
    pub max_uri_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self { max_head_bytes: 60 * 1024, max_headers: 100, max_uri_bytes: 8 * 1024 }
    }
}

impl HeadLimits {
    pub(crate) fn head_bytes(&self) -> usize {
        self.max_head_bytes.min(MAX_HEAD_BYTES_CAP)
    }
    pub(crate) fn headers(&self) -> usize {
        self.max_headers.min(MAX_HEADERS_CAP)
    }
}

/// Outcome of a head parse that did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The head is not complete yet: read more and call again with the whole buffer.
    Partial,
    /// The head is complete and `head_len` bytes long; the body (if any) starts there.
    Complete(usize),
}

/// A byte range into the buffer a head was parsed from (offsets fit in `u32` because heads are
/// capped at [`MAX_HEAD_BYTES_CAP`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// The empty span at offset 0.
    pub const EMPTY: Span = Span { start: 0, end: 0 };

    /// The bytes of this span in `src` (the buffer the head was parsed from); empty if `src`
    /// is not that buffer and is too short.
    #[inline]
    pub fn get(self, src: &[u8]) -> &[u8] {
        src.get(self.range()).unwrap_or(&[])
    }

    /// The span as a `usize` range.
    #[inline]
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Length in bytes.
    #[inline]
    pub fn len(self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// Whether the span covers no byte.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Span of `part`, a sub-slice of `base`; [`Span::EMPTY`] if it is not one.
    #[inline]
    pub(crate) fn of(base: &[u8], part: &[u8]) -> Span {
        let off = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        match off.checked_add(part.len()) {
            // Heads are parsed from at most MAX_HEAD_BYTES_CAP bytes, so both ends fit in u32.
            Some(end) if end <= base.len() => Span { start: off as u32, end: end as u32 },
            _ => Span::EMPTY,
        }
    }
}

/// HTTP version of a parsed message. Anything else is refused at parse time (505 / 502).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: connections close by default, no chunked coding, no 1xx.
    Http10,
    /// HTTP/1.1.
    #[default]
    Http11,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body follows the head.
    #[default]
    None,
    /// Exactly this many bytes follow (may be 0; kept so `content-length: 0` is re-emitted).
    ContentLength(u64),
    /// `Transfer-Encoding: chunked`; decode with [`ChunkedDecoder`].
    Chunked,
    /// Responses only: the body runs until the upstream closes the connection.
    CloseDelimited,
}

impl BodyFraming {
    /// Whether body bytes may follow the head.
    pub fn has_body(self) -> bool {
        !matches!(self, BodyFraming::None | BodyFraming::ContentLength(0))
    }
}

/// One field line of a parsed head, as spans into the parsed buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderField {
    /// Field name as received (validated token; compare case-insensitively).
    pub name: Span,
    /// Field value without surrounding whitespace (validated: no CR, LF, NUL or other CTL).
    pub value: Span,
    /// Whether the serialisers re-emit this field. False for hop-by-hop fields, names listed in
    /// `Connection`, framing fields (regenerated from [`BodyFraming`]), and fields the caller
    /// removed.
    pub forward: bool,
}
