//! Serialisation: forwarded heads are rebuilt from what was parsed (never copied byte for byte),
//! chunk framing, and the small error responses weir generates itself. Owns: which fields are
//! forwarded, the framing and `Connection` handling the client sees. Must not: parse, validate
//! client input (the parsers did), or allocate beyond growing the caller's `out`.

use super::syntax::{is_field_value, is_token};
use super::{BodyFraming, HeadError, HeaderField, RequestHead, ResponseHead, Version};

/// The last chunk and the empty trailer section that end a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// The CRLF that follows each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// Framing of the response body as sent to the client, decided by [`write_response_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownstreamBody {
    /// How to write the body downstream: `Chunked` means re-chunk what is read upstream
    /// (decoding upstream chunks first if the upstream body is chunked); `CloseDelimited`
    /// means write raw bytes and close at the end.
    pub framing: BodyFraming,
    /// Close the client connection after this response.
    pub close: bool,
}

/// Write the request line, forwarded fields, framing fields, `extra_headers` and the blank line.
/// Always speaks HTTP/1.1 upstream, in origin-form (an absolute-form target is rewritten and
/// its authority sent as Host, RFC 9112 3.2.2); hop-by-hop fields (Connection, Keep-Alive,
/// Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, HTTP2-Settings, every name listed
/// in Connection) are dropped; framing comes from `head.body` (set it to re-frame, e.g. a fully
/// buffered chunked body as `ContentLength`). A request with no host at all (HTTP/1.0,
/// `head.host == None`) needs it in `extra_headers`. Extra fields with an invalid name or value
/// are skipped.
pub fn write_request_head(head: &RequestHead, src: &[u8], out: &mut Vec<u8>, extra_headers: &[(&[u8], &[u8])]) {
    write_request_head_with(head, src, out, extra_headers, &[]);
}

/// [`write_request_head`] with `set` fields (a route's, whose names the caller stopped
/// forwarding from the head) written after `extra_headers`. Invalid ones are skipped.
pub fn write_request_head_with(
    head: &RequestHead,
    src: &[u8],
    out: &mut Vec<u8>,
    extra_headers: &[(&[u8], &[u8])],
    set: &[(String, String)],
) {
    out.extend_from_slice(head.method_span.get(src));
    out.push(b' ');
    // An absolute-form target's path may be empty or start with its query (RFC 9112 3.2.2).
    let path = head.path.get(src);
    if path.first() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(&head.headers, src, out);
    if let Some(host) = head.host.filter(|_| head.host_from_target) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.get(src));
        out.extend_from_slice(b"\r\n");
    }
    match head.body {
        BodyFraming::ContentLength(n) => write_content_length(n, out),
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::CloseDelimited => {}
    }
    write_extra(extra_headers, out);
    for (name, value) in set {
        write_extra(&[(name.as_bytes(), value.as_bytes())], out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Write a response head for a client that spoke `client` and return the body framing to use.
///
/// `close`: the caller's decision (client did not ask for keep-alive, drain, error); the
/// result may force it (HTTP/1.0 client without a Content-Length body). Always answers
/// `HTTP/1.1`; sends `connection: close` when closing and `connection: keep-alive` to a 1.0
/// client kept open. A close-delimited or chunked upstream body is sent chunked to a 1.1
/// client and close-delimited to a 1.0 client. Interim 1xx heads get no framing or Connection
/// field (never send them to a 1.0 client).
pub fn write_response_head(
    head: &ResponseHead,
    src: &[u8],
    out: &mut Vec<u8>,
    extra_headers: &[(&[u8], &[u8])],
    client: Version,
    close: bool,
) -> DownstreamBody {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_dec(u64::from(head.code), out);
    out.push(b' ');
    match head.reason.get(src) {
        [] => out.extend_from_slice(reason_phrase(head.code).as_bytes()),
        r => out.extend_from_slice(r),
    }
    out.extend_from_slice(b"\r\n");
    write_fields(&head.headers, src, out);
    let http11 = client == Version::Http11;
    let mut res = DownstreamBody { framing: head.body, close };
    match head.body {
        _ if head.is_interim() || head.is_switch() => res = DownstreamBody { framing: BodyFraming::None, close: false },
        BodyFraming::None => {
            // HEAD and 304 responses keep their metadata; 204 must not carry Content-Length.
            if let Some(n) = head.content_length.filter(|_| head.code != 204) {
                write_content_length(n, out);
            } else if head.chunked && http11 && head.code != 204 && head.code != 304 {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
        BodyFraming::ContentLength(n) => write_content_length(n, out),
        BodyFraming::Chunked | BodyFraming::CloseDelimited if http11 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            res.framing = BodyFraming::Chunked;
        }
        BodyFraming::Chunked | BodyFraming::CloseDelimited => {
            res = DownstreamBody { framing: BodyFraming::CloseDelimited, close: true };
        }
    }
    if !head.is_interim() && !head.is_switch() {
        if res.close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if !http11 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    write_extra(extra_headers, out);
    out.extend_from_slice(b"\r\n");
    res
}

fn write_fields(fields: &[HeaderField], src: &[u8], out: &mut Vec<u8>) {
    for h in fields.iter().filter(|h| h.forward) {
        out.extend_from_slice(h.name.get(src));
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(src));
        out.extend_from_slice(b"\r\n");
    }
}

fn write_extra(extra: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    for &(name, value) in extra {
        if is_token(name) && is_field_value(value) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn write_content_length(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    push_dec(n, out);
    out.extend_from_slice(b"\r\n");
}

/// Write the size line of a chunk of `len` bytes (`{hex}\r\n`); the caller then writes the
/// data and [`CHUNK_END`]. Writes nothing for `len == 0` (that would end the body: use
/// [`write_last_chunk`]).
pub fn write_chunk_header(len: u64, out: &mut Vec<u8>) {
    if len == 0 {
        return;
    }
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = len;
    while n > 0 {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
    out.extend_from_slice(&tmp[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Write one whole chunk (size line, data, CRLF); nothing for empty `data`.
pub fn write_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(data.len() as u64, out);
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}

/// Write [`LAST_CHUNK`] (`0\r\n\r\n`, no trailers).
pub fn write_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(LAST_CHUNK);
}

fn push_dec(n: u64, out: &mut Vec<u8>) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// A response weir generates itself (errors, shedding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    /// Status code (outside 100..=599 is written as 500).
    pub status: u16,
    /// Stable kebab-case reason for `x-weir-error` (bytes outside `[A-Za-z0-9._-]` become `-`).
    pub reason: &'a str,
    /// One-line body text (CTLs and non-ASCII become spaces / `?`; cut at 512 bytes).
    pub detail: &'a str,
    /// Add `connection: close`.
    pub close: bool,
    /// Add `retry-after: N` (load shedding 503).
    pub retry_after_secs: Option<u32>,
    /// Answer to a HEAD request: keep `content-length`, send no body.
    pub omit_body: bool,
}

const MAX_DETAIL: usize = 512;

impl<'a> ErrorResponse<'a> {
    /// A response with a body, kept open, no Retry-After.
    pub fn new(status: u16, reason: &'a str, detail: &'a str) -> Self {
        Self { status, reason, detail, close: false, retry_after_secs: None, omit_body: false }
    }

    /// Append the complete response to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let status = if (100..=599).contains(&self.status) { self.status } else { 500 };
        let detail = &self.detail.as_bytes()[..self.detail.len().min(MAX_DETAIL)];
        out.extend_from_slice(b"HTTP/1.1 ");
        push_dec(u64::from(status), out);
        out.push(b' ');
        out.extend_from_slice(reason_phrase(status).as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: text/plain\r\n");
        write_content_length(detail.len() as u64 + 1, out);
        out.extend_from_slice(b"x-weir-error: ");
        if self.reason.is_empty() {
            out.extend_from_slice(b"error");
        }
        out.extend(
            self.reason
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') { b } else { b'-' }),
        );
        out.extend_from_slice(b"\r\n");
        if let Some(secs) = self.retry_after_secs {
            out.extend_from_slice(b"retry-after: ");
            push_dec(u64::from(secs), out);
            out.extend_from_slice(b"\r\n");
        }
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.omit_body {
            out.extend(detail.iter().map(|&b| match b {
                0x20..=0x7e => b,
                0x80.. => b'?',
                _ => b' ',
            }));
            out.push(b'\n');
        }
    }
}

/// Append a complete error response: standard reason phrase, `content-type: text/plain`,
/// `content-length`, `x-weir-error: <reason>`, optional `connection: close`, body `detail`.
pub fn write_error_response(status: u16, reason: &str, detail: &str, close: bool, out: &mut Vec<u8>) {
    ErrorResponse { close, ..ErrorResponse::new(status, reason, detail) }.write(out);
}

/// Answer a head parse error: its status, reason and detail, with `connection: close` (after a
/// bad head the connection's framing is unknown, so it is always closed).
pub fn write_head_error(err: &HeadError, out: &mut Vec<u8>) {
    write_error_response(err.status(), err.reason(), err.detail(), true, out);
}

/// Standard reason phrase of a status code (RFC 9110 15); empty for unknown codes.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
