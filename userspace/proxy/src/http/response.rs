//! Response head parsing (heads read from endpoints): the same strict tokenising and
//! Content-Length / Transfer-Encoding defences as requests, plus the response framing rules of
//! RFC 9112 6.3. Owns: deciding how an upstream body is delimited and whether the upstream
//! connection can be reused. Must not: decide what the client sees (that is `write.rs`), or
//! accept a head that could be framed two ways — every failure is a 502.

use std::mem::MaybeUninit;

use super::fields::{self, strict_httparse};
use super::syntax::has_bare_lf;
use super::{BodyFraming, HeadError, HeadLimits, HeaderField, MAX_HEADERS_CAP, Span, Status, Version};

/// A parsed response head: spans into the buffer given to [`parse_response`]. Reuse one per
/// upstream connection. Contents are meaningful only after [`Status::Complete`].
#[derive(Clone, Debug, Default)]
pub struct ResponseHead {
    /// Version the endpoint spoke (HTTP/1.2 and later 1.x are processed as HTTP/1.1).
    pub version: Version,
    /// The minor version digit received, for `Via`.
    pub minor: u8,
    /// Status code, 100..=599 (101: the endpoint switched protocols, see [`ResponseHead::is_switch`]).
    pub code: u16,
    /// Reason phrase; empty if absent or if it held non-ASCII bytes.
    pub reason: Span,
    /// Field lines in order.
    pub headers: Vec<HeaderField>,
    /// Options listed in `Connection`.
    pub connection_options: Vec<Span>,
    /// How to read the body from the upstream connection.
    pub body: BodyFraming,
    /// Declared Content-Length (re-emitted for HEAD and 304 responses, which have no body).
    pub content_length: Option<u64>,
    /// Declared `Transfer-Encoding: chunked` (re-emitted for HEAD responses to 1.1 clients).
    pub chunked: bool,
    /// The upstream connection may carry another request after this response's body.
    pub keep_alive: bool,
    /// Length of the head; the body starts here.
    pub head_len: usize,
}

impl ResponseHead {
    /// An empty head with room for `headers` fields.
    pub fn with_capacity(headers: usize) -> Self {
        Self { headers: Vec::with_capacity(headers), ..Self::default() }
    }

    fn reset(&mut self) {
        self.headers.clear();
        self.connection_options.clear();
        let (headers, connection_options) =
            (std::mem::take(&mut self.headers), std::mem::take(&mut self.connection_options));
        *self = Self { headers, connection_options, ..Self::default() };
    }

    /// An interim 1xx response (e.g. 100 Continue): forward it to an HTTP/1.1 client (never to
    /// an HTTP/1.0 one), consume `head_len` bytes and parse the next head from the same
    /// connection. It has no body.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.code) && self.code != 101
    }

    /// `101 Switching Protocols`: the end of HTTP on this connection (the caller accepts it only
    /// for a request that asked to upgrade). It has no body; what follows is the new protocol.
    pub fn is_switch(&self) -> bool {
        self.code == 101
    }

    /// Value of the first field called `name` (case-insensitive), forwarded or not.
    pub fn header<'a>(&self, src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        fields::find(&self.headers, src, name)
    }

    /// Stop forwarding every field called `name`; returns how many were removed.
    pub fn remove_header(&mut self, src: &[u8], name: &[u8]) -> usize {
        fields::unforward(&mut self.headers, src, name)
    }
}

/// Parse the response head at the start of `buf` into `out`. `method_was_head`: the request
/// was HEAD, so no body follows whatever the head says.
///
/// Framing: none for 1xx, 204, 304 and HEAD; otherwise chunked when `Transfer-Encoding` is
/// exactly `chunked`, else Content-Length, else close-delimited. Every malformed or ambiguous
/// head (CL with TE, bad or repeated CL, a coding other than chunked, TE in HTTP/1.0, bare LF,
/// a head over `max_head_bytes`, status outside 100..=599) is
/// [`HeadError::UpstreamProtocol`] (502).
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    method_was_head: bool,
    out: &mut ResponseHead,
) -> Result<Status, HeadError> {
    let max_head = limits.head_bytes();
    let view = buf.get(..max_head).unwrap_or(buf);
    // HTTP/1.2 and later 1.x are processed as 1.1 (RFC 9112 2.3): parse a copy that says 1.1
    // (rare; spans are offsets, so they hold for `buf` too).
    // A head that ends right after the version digit (more to come) is read the same way, so
    // that a prefix never says otherwise than the whole head.
    let minor = match view {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d, rest @ ..]
            if d.is_ascii_digit() && *d >= b'2' && rest.first().is_none_or(|c| *c == b' ') =>
        {
            Some(*d - b'0')
        }
        _ => None,
    };
    let res = match minor {
        Some(m) => {
            let mut copy = view.to_vec();
            copy[7] = b'1';
            let res = parse_inner(&copy, limits, method_was_head, out);
            out.minor = m;
            res
        }
        None => parse_inner(view, limits, method_was_head, out),
    };
    match res.map_err(HeadError::upstream)? {
        Status::Partial if buf.len() > max_head => Err(HeadError::UpstreamProtocol("response head too large")),
        status => Ok(status),
    }
}

fn parse_inner(
    buf: &[u8],
    limits: &HeadLimits,
    method_was_head: bool,
    out: &mut ResponseHead,
) -> Result<Status, HeadError> {
    out.reset();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let mut resp = httparse::Response::new(&mut []);
    let res = strict_httparse().parse_response_with_uninit_headers(&mut resp, buf, &mut slots[..limits.headers()]);
    let head_len = match res {
        Ok(httparse::Status::Partial) => return Ok(Status::Partial),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::Version) => {
            return Err(HeadError::UpstreamProtocol("unsupported or malformed HTTP version"));
        }
        Err(e) => return Err(HeadError::from_httparse(e)),
    };
    out.head_len = head_len;
    out.version = if resp.version == Some(0) { Version::Http10 } else { Version::Http11 };
    out.minor = resp.version.unwrap_or(1);
    out.code = resp.code.unwrap_or(0);
    if !(100..=599).contains(&out.code) {
        return Err(HeadError::UpstreamProtocol("status code outside 100..=599"));
    }
    out.reason = resp.reason.map_or(Span::EMPTY, |r| Span::of(buf, r.as_bytes()));
    if has_bare_lf(buf.get(..head_len).unwrap_or(buf)) {
        return Err(HeadError::InvalidLineEnding);
    }
    let fs = fields::scan(false, buf, resp.headers, &mut out.headers, &mut out.connection_options)?;
    let http10 = out.version == Version::Http10;
    if let Some(te) = fs.te {
        if fs.content_length.is_some() {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        if http10 {
            return Err(HeadError::UpstreamProtocol("Transfer-Encoding in an HTTP/1.0 response"));
        }
        if !te.is_exactly_chunked() {
            // A coding weir cannot remove would reach the client unlabelled: refuse it.
            return Err(HeadError::UpstreamProtocol("transfer coding other than chunked"));
        }
    }
    out.content_length = fs.content_length;
    out.chunked = fs.te.is_some();
    let no_body = method_was_head || out.is_interim() || out.is_switch() || out.code == 204 || out.code == 304;
    out.body = if no_body {
        BodyFraming::None
    } else if out.chunked {
        BodyFraming::Chunked
    } else if let Some(n) = fs.content_length {
        BodyFraming::ContentLength(n)
    } else {
        BodyFraming::CloseDelimited
    };
    let persistent = if http10 { fs.conn_keep_alive && !fs.conn_close } else { !fs.conn_close };
    out.keep_alive = persistent && out.body != BodyFraming::CloseDelimited;
    Ok(Status::Complete(head_len))
}
