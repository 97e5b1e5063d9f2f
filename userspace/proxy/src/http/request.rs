//! Request head parsing: httparse tokenises, then weir's strict checks (docs/OPERATING.md) decide
//! whether the request can only be read one way, and derive its framing and connection
//! handling. Owns: request-side statuses (400/414/417/431/501/505). Must not: allocate beyond
//! the reusable `Vec`s of [`RequestHead`], or look at bytes past the head.
//!
//! Partial input gives the same answer as whole input: every check made before the head is
//! complete depends only on bytes that are already final (method, target, version), the 414
//! and 431 limits are evaluated on the exact prefix at which they are crossed, and everything
//! else runs only on a complete head.

use std::mem::MaybeUninit;

use super::fields::{self, FieldScan, Known, strict_httparse};
use super::syntax::{
    TargetForm, VersionClass, classify_version, has_bare_lf, is_valid_host, same_authority, validate_target,
};
use super::{BodyFraming, HeadError, HeadLimits, HeaderField, MAX_HEADERS_CAP, Span, Status, Version};

/// Request method. Methods are case-sensitive: `get` is [`Method::Other`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// GET
    #[default]
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// CONNECT (refused with 501 by the parser).
    Connect,
    /// Any other token; its bytes are in [`RequestHead::method_span`].
    Other,
}

impl Method {
    /// Classify method bytes.
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// The method's name (`None` for [`Method::Other`], whose bytes only the head has).
    pub fn as_bytes(self) -> Option<&'static [u8]> {
        Some(match self {
            Method::Get => b"GET",
            Method::Head => b"HEAD",
            Method::Post => b"POST",
            Method::Put => b"PUT",
            Method::Delete => b"DELETE",
            Method::Options => b"OPTIONS",
            Method::Trace => b"TRACE",
            Method::Patch => b"PATCH",
            Method::Connect => b"CONNECT",
            Method::Other => return None,
        })
    }

    /// Safe to retry, by weir's one definition ([`weir_core::retry::is_idempotent_method`]).
    pub fn is_idempotent(self) -> bool {
        self.as_bytes().is_some_and(weir_core::retry::is_idempotent_method)
    }
}

/// A parsed request head: spans into the buffer given to [`parse_request`]. Reuse one per
/// connection; its `Vec`s keep their capacity. Contents are meaningful only after
/// [`Status::Complete`].
#[derive(Clone, Debug, Default)]
pub struct RequestHead {
    /// Method class.
    pub method: Method,
    /// Method bytes as received.
    pub method_span: Span,
    /// Request target as received (origin-form, absolute-form or `*`), validated.
    pub target: Span,
    /// The target forwarded to the endpoint: the origin-form part of an absolute-form target
    /// (empty for `http://host` alone, which is forwarded as `/`), else the target itself.
    pub path: Span,
    /// Version the client spoke (HTTP/1.2 and later 1.x are processed as HTTP/1.1).
    pub version: Version,
    /// The minor version digit received (`0` for 1.0, `1` for 1.1, `2` for 1.2…), for `Via`.
    pub minor: u8,
    /// Field lines in order.
    pub headers: Vec<HeaderField>,
    /// Options listed in `Connection` (all are hop-by-hop field names or `close`/`keep-alive`).
    pub connection_options: Vec<Span>,
    /// Host value; for an HTTP/1.0 absolute-form request without Host, the target authority.
    /// `None` only for HTTP/1.0 without either.
    pub host: Option<Span>,
    /// How the body is delimited.
    pub body: BodyFraming,
    /// The client wants the connection kept open after the response (1.1: unless
    /// `Connection: close`; 1.0: only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// HTTP/1.1 `Expect: 100-continue` (forwarded; ignored and dropped for HTTP/1.0).
    pub expect_continue: bool,
    /// The client offered to switch protocols (`Upgrade` listed in `Connection`). weir performs
    /// no upgrade: the request is forwarded without `Upgrade` (never forwarded, as a hop-by-hop
    /// field), which RFC 9110 7.8 allows.
    pub upgrade: bool,
    /// Length of the head; the body starts here.
    pub head_len: usize,
    /// `host` comes from the target authority (absolute-form): the serialiser emits it, and
    /// the client's own Host field is not forwarded.
    pub(crate) host_from_target: bool,
}

impl RequestHead {
    /// An empty head with room for `headers` fields, so the first requests do not allocate.
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

    /// Whether a retry of this request is safe by method.
    pub fn is_idempotent(&self) -> bool {
        self.method.is_idempotent()
    }

    /// Value of the first field called `name` (case-insensitive), forwarded or not.
    pub fn header<'a>(&self, src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        fields::find(&self.headers, src, name)
    }

    /// Stop forwarding every field called `name` (e.g. to replace it via `extra_headers`);
    /// returns how many were removed.
    pub fn remove_header(&mut self, src: &[u8], name: &[u8]) -> usize {
        fields::unforward(&mut self.headers, src, name)
    }
}

/// Parse the request head at the start of `buf` into `out`.
///
/// Call again with the whole (grown) buffer after [`Status::Partial`]; httparse re-scans from
/// the start, so read in large chunks (the header read timeout bounds slow clients). On error,
/// answer `err.status()` with `x-weir-error: err.reason()` and close the connection.
/// The HTTP/2 preface (`PRI * HTTP/2.0`) is answered 505 ([`HeadError::Http2Preface`]).
/// `HTTP/1.2` and later minor versions are processed as HTTP/1.1 (RFC 9112 2.3).
pub fn parse_request(buf: &[u8], limits: &HeadLimits, out: &mut RequestHead) -> Result<Status, HeadError> {
    match parse_limited(buf, limits, out) {
        Err(HeadError::HigherMinorVersion { at, minor }) => {
            // Rare: parse a copy that says 1.1. Spans are offsets, so they hold for `buf` too.
            let mut copy = buf.to_vec();
            copy[at as usize] = b'1';
            let res = parse_limited(&copy, limits, out);
            out.minor = minor;
            res
        }
        other => other,
    }
}

fn parse_limited(buf: &[u8], limits: &HeadLimits, out: &mut RequestHead) -> Result<Status, HeadError> {
    let max_head = limits.head_bytes();
    let view = buf.get(..max_head).unwrap_or(buf);
    if let Some((start, len)) = target_so_far(view)
        && len > limits.max_uri_bytes
    {
        // Decide on the prefix that first crosses the limit, so an earlier error still wins.
        let cut = start.saturating_add(limits.max_uri_bytes).saturating_add(1);
        return match parse_inner(view.get(..cut).unwrap_or(view), limits, out) {
            Err(e) => Err(e),
            Ok(_) => Err(HeadError::UriTooLong),
        };
    }
    match parse_inner(view, limits, out)? {
        Status::Partial if buf.len() > max_head => Err(HeadError::HeadTooLarge),
        status => Ok(status),
    }
}

/// Offset and length of the target seen so far: from after the first SP to the next SP, CR, LF
/// or the end of the buffer.
fn target_so_far(view: &[u8]) -> Option<(usize, usize)> {
    let start = view.iter().position(|&b| b == b' ')? + 1;
    let rest = view.get(start..)?;
    let len = rest.iter().position(|&b| matches!(b, b' ' | b'\r' | b'\n')).unwrap_or(rest.len());
    Some((start, len))
}

fn parse_inner(buf: &[u8], limits: &HeadLimits, out: &mut RequestHead) -> Result<Status, HeadError> {
    out.reset();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let mut req = httparse::Request::new(&mut []);
    let res = strict_httparse().parse_request_with_uninit_headers(&mut req, buf, &mut slots[..limits.headers()]);

    // Checks on parts that are already final, in the order they appear on the wire.
    if let Some(m) = req.method {
        out.method = Method::from_bytes(m.as_bytes());
        out.method_span = Span::of(buf, m.as_bytes());
        if out.method == Method::Connect {
            return Err(HeadError::ConnectNotSupported);
        }
    }
    let mut form = TargetForm::Origin;
    if let Some(p) = req.path {
        if out.method_span.get(buf) == b"PRI"
            && p == "*"
            && buf[out.method_span.end as usize..].starts_with(b" * HTTP/2")
        {
            return Err(HeadError::Http2Preface);
        }
        form = validate_target(p.as_bytes())?;
        out.target = Span::of(buf, p.as_bytes());
        out.path = out.target;
    }
    let head_len = match res {
        Ok(httparse::Status::Partial) => return Ok(Status::Partial),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::Version) if req.path.is_some() => {
            let rest = buf.get(out.target.end as usize + 1..).unwrap_or(&[]);
            return match classify_version(rest) {
                VersionClass::Partial => Ok(Status::Partial),
                VersionClass::Http1Minor(minor) => {
                    Err(HeadError::HigherMinorVersion { at: out.target.end + 1 + 7, minor })
                }
                VersionClass::Unsupported => Err(HeadError::UnsupportedVersion),
                VersionClass::Invalid => Err(HeadError::InvalidVersion),
            };
        }
        Err(httparse::Error::Token) if req.method.is_some() => {
            return Err(HeadError::InvalidTarget);
        }
        Err(e) => return Err(HeadError::from_httparse(e)),
    };

    // The head is complete: whole-head checks.
    out.head_len = head_len;
    out.version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };
    out.minor = req.version.unwrap_or(1);
    if has_bare_lf(buf.get(..head_len).unwrap_or(buf)) {
        return Err(HeadError::InvalidLineEnding);
    }
    let fs = fields::scan(true, buf, req.headers, &mut out.headers, &mut out.connection_options)?;
    let http10 = out.version == Version::Http10;
    out.body = request_framing(&fs, http10)?;
    finish(buf, fs, form, http10, out)?;
    Ok(Status::Complete(head_len))
}

/// RFC 9112 6.3 for requests, refusing every ambiguous combination.
fn request_framing(fs: &FieldScan, http10: bool) -> Result<BodyFraming, HeadError> {
    match (fs.te, fs.content_length) {
        (Some(_), Some(_)) => Err(HeadError::ContentLengthWithTransferEncoding),
        (Some(_), None) if http10 => Err(HeadError::TransferEncodingInHttp10),
        (Some(te), None) => {
            if te.chunked_count > 1 {
                Err(HeadError::ChunkedTwice)
            } else if !te.last_is_chunked {
                Err(HeadError::ChunkedNotFinal)
            } else if te.other_codings {
                Err(HeadError::UnsupportedTransferCoding)
            } else {
                Ok(BodyFraming::Chunked)
            }
        }
        (None, Some(n)) => Ok(BodyFraming::ContentLength(n)),
        (None, None) => Ok(BodyFraming::None),
    }
}

/// Host, target form, connection and expectation handling of a complete head.
fn finish(buf: &[u8], fs: FieldScan, form: TargetForm, http10: bool, out: &mut RequestHead) -> Result<(), HeadError> {
    match fs.host {
        Some(h) if !is_valid_host(h.get(buf)) => return Err(HeadError::InvalidHost),
        None if !http10 => return Err(HeadError::MissingHost),
        _ => {}
    }
    out.host = fs.host;
    match form {
        TargetForm::Asterisk if out.method != Method::Options => {
            return Err(HeadError::AsteriskTarget);
        }
        TargetForm::Absolute { authority: (a, b), path, https } => {
            // RFC 9112 3.2.2: the target's authority replaces Host; forwarded in origin-form.
            let authority = Span { start: out.target.start + a as u32, end: out.target.start + b as u32 };
            if let Some(h) = fs.host
                && !same_authority(h.get(buf), authority.get(buf), https)
            {
                return Err(HeadError::HostMismatch);
            }
            for f in &mut out.headers {
                if Known::of(f.name.get(buf)) == Known::Host {
                    f.forward = false;
                }
            }
            out.host = Some(authority);
            out.host_from_target = true;
            out.path = Span { start: out.target.start + path as u32, end: out.target.end };
        }
        _ => {}
    }
    out.keep_alive = if http10 { fs.conn_keep_alive && !fs.conn_close } else { !fs.conn_close };
    out.upgrade = fs.conn_upgrade && fs.upgrade_field;
    match fs.expect {
        // RFC 9110 10.1.1: a 1.0 request's expectation is ignored; do not pass it on either.
        Some(_) if http10 => {
            for h in &mut out.headers {
                if Known::of(h.name.get(buf)) == Known::Expect {
                    h.forward = false;
                }
            }
        }
        Some(false) => return Err(HeadError::UnsupportedExpectation),
        Some(true) => out.expect_continue = true,
        None => {}
    }
    Ok(())
}
