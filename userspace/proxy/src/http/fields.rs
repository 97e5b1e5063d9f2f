//! One pass over the field lines httparse found, shared by requests and responses: copies them
//! as [`HeaderField`] spans, recognises the fields that decide framing and connection handling,
//! and marks hop-by-hop fields as not forwarded. Owns: Content-Length / Transfer-Encoding /
//! Connection syntax. Must not: decide the final framing (that differs between requests and
//! responses) or know statuses.

use super::syntax::{ListIter, coding_name, eq_ci, is_token, parse_content_length};
use super::{HeadError, HeaderField, Span};

/// Most options one `Connection` field set may list; more is refused (bounds the hop-by-hop
/// marking pass).
pub(crate) const MAX_CONNECTION_OPTIONS: usize = 32;

/// Field names the codec gives meaning to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Http2Settings,
    Expect,
    Other,
}

impl Known {
    pub(crate) fn of(name: &[u8]) -> Known {
        let is = |k: &[u8]| eq_ci(name, k);
        match name.len() {
            2 if is(b"te") => Known::Te,
            4 if is(b"host") => Known::Host,
            6 if is(b"expect") => Known::Expect,
            7 if is(b"trailer") => Known::Trailer,
            7 if is(b"upgrade") => Known::Upgrade,
            10 if is(b"connection") => Known::Connection,
            10 if is(b"keep-alive") => Known::KeepAlive,
            14 if is(b"content-length") => Known::ContentLength,
            16 if is(b"proxy-connection") => Known::ProxyConnection,
            14 if is(b"http2-settings") => Known::Http2Settings,
            17 if is(b"transfer-encoding") => Known::TransferEncoding,
            _ => Known::Other,
        }
    }

    /// Never forwarded as received: hop-by-hop (RFC 9110 7.6.1; `HTTP2-Settings` only means
    /// something with the `Upgrade` weir never performs) or regenerated from framing.
    pub(crate) fn is_dropped(self) -> bool {
        !matches!(self, Known::Host | Known::Expect | Known::Other)
    }
}

/// Transfer-Encoding seen across all its field lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TeSummary {
    pub(crate) chunked_count: u32,
    pub(crate) last_is_chunked: bool,
    pub(crate) other_codings: bool,
}

impl TeSummary {
    /// Exactly `chunked`, once, and nothing else.
    pub(crate) fn is_exactly_chunked(&self) -> bool {
        self.chunked_count == 1 && self.last_is_chunked && !self.other_codings
    }
}

/// What the scan learned beyond the field list itself.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FieldScan {
    pub(crate) content_length: Option<u64>,
    pub(crate) te: Option<TeSummary>,
    pub(crate) host: Option<Span>,
    pub(crate) host_count: u32,
    pub(crate) conn_close: bool,
    pub(crate) conn_keep_alive: bool,
    pub(crate) conn_upgrade: bool,
    pub(crate) upgrade_field: bool,
    /// `Some(true)`: only `100-continue` expectations; `Some(false)`: something else.
    pub(crate) expect: Option<bool>,
}

/// Copy `raw` into `out` / `conn_opts` and summarise it. Host and Expect only mean something
/// in a `request`. Errors are request-flavoured; the response parser folds them into
/// [`HeadError::UpstreamProtocol`].
pub(crate) fn scan(
    request: bool,
    base: &[u8],
    raw: &[httparse::Header<'_>],
    out: &mut Vec<HeaderField>,
    conn_opts: &mut Vec<Span>,
) -> Result<FieldScan, HeadError> {
    let mut s = FieldScan::default();
    let mut unknown_option = false;
    out.reserve(raw.len());
    for h in raw {
        let name = Span::of(base, h.name.as_bytes());
        let value = Span::of(base, h.value);
        let kind = Known::of(h.name.as_bytes());
        out.push(HeaderField { name, value, forward: !kind.is_dropped() });
        let v = h.value;
        match kind {
            Known::ContentLength if request => {
                if s.content_length.is_some() {
                    return Err(HeadError::DuplicateContentLength);
                }
                let n = parse_content_length(v).ok_or(HeadError::InvalidContentLength)?;
                s.content_length = Some(n);
            }
            Known::ContentLength => {
                // An endpoint's repeated or listed Content-Length is accepted only when every
                // value is the same (RFC 9110 8.6); it is regenerated once on the way out.
                for (a, b) in ListIter::new(v) {
                    let n = parse_content_length(&v[a..b]).ok_or(HeadError::InvalidContentLength)?;
                    match s.content_length {
                        Some(m) if m != n => return Err(HeadError::DuplicateContentLength),
                        _ => s.content_length = Some(n),
                    }
                }
            }
            Known::TransferEncoding => {
                let te = s.te.get_or_insert_with(TeSummary::default);
                for (a, b) in ListIter::new(v) {
                    // Parameters are allowed (and ignored: weir removes only `chunked`).
                    let Some(coding) = coding_name(&v[a..b]) else {
                        return Err(HeadError::InvalidTransferEncoding);
                    };
                    if eq_ci(coding, b"chunked") {
                        te.chunked_count += 1;
                        te.last_is_chunked = true;
                    } else {
                        te.other_codings = true;
                        te.last_is_chunked = false;
                    }
                }
            }
            Known::Host if request => {
                s.host_count += 1;
                if s.host_count > 1 {
                    return Err(HeadError::DuplicateHost);
                }
                s.host = Some(value);
            }
            Known::Connection => {
                for (a, b) in ListIter::new(v) {
                    let opt = &v[a..b];
                    if opt.is_empty() {
                        continue; // RFC 9110 5.6.1: empty list elements are ignored
                    }
                    if !is_token(opt) || conn_opts.len() >= MAX_CONNECTION_OPTIONS {
                        return Err(HeadError::InvalidConnection);
                    }
                    let opt_kind = Known::of(opt);
                    if eq_ci(opt, b"close") {
                        s.conn_close = true;
                    } else if opt_kind == Known::KeepAlive {
                        s.conn_keep_alive = true;
                    } else if opt_kind == Known::Upgrade {
                        s.conn_upgrade = true;
                    } else if !opt_kind.is_dropped() && opt_kind != Known::Host {
                        unknown_option = true;
                    }
                    conn_opts.push(Span { start: value.start + a as u32, end: value.start + b as u32 });
                }
            }
            Known::Upgrade => s.upgrade_field = true,
            Known::Expect if request => {
                let mut only_continue = s.expect != Some(false);
                for (a, b) in ListIter::new(v) {
                    if !eq_ci(&v[a..b], b"100-continue") {
                        only_continue = false;
                    }
                }
                s.expect = Some(only_continue);
            }
            _ => {}
        }
    }
    if unknown_option {
        mark_connection_listed(base, out, conn_opts);
    }
    Ok(s)
}

/// Fields named in `Connection` are hop-by-hop (RFC 9110 7.6.1), except Host, which weir keeps
/// so a request can never lose its authority on the way.
fn mark_connection_listed(base: &[u8], out: &mut [HeaderField], conn_opts: &[Span]) {
    for f in out.iter_mut().filter(|f| f.forward) {
        let name = f.name.get(base);
        if Known::of(name) != Known::Host && conn_opts.iter().any(|o| eq_ci(o.get(base), name)) {
            f.forward = false;
        }
    }
}

/// httparse configured as strictly as it goes: every leniency off, for requests and responses
/// alike (bare LF, which httparse accepts, is refused separately).
pub(crate) fn strict_httparse() -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    c.allow_spaces_after_header_name_in_responses(false)
        .allow_obsolete_multiline_headers_in_responses(false)
        .allow_multiple_spaces_in_request_line_delimiters(false)
        .allow_multiple_spaces_in_response_status_delimiters(false)
        .allow_space_before_first_header_name(false)
        .ignore_invalid_headers_in_responses(false)
        .ignore_invalid_headers_in_requests(false);
    c
}

/// Value of the first field called `name` (case-insensitive), forwarded or not.
pub(crate) fn find<'a>(headers: &[HeaderField], src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find(|h| eq_ci(h.name.get(src), name)).map(|h| h.value.get(src))
}

/// Stops forwarding every field called `name`; returns how many were forwarded before.
pub(crate) fn unforward(headers: &mut [HeaderField], src: &[u8], name: &[u8]) -> usize {
    let mut n = 0;
    for h in headers.iter_mut().filter(|h| h.forward && eq_ci(h.name.get(src), name)) {
        h.forward = false;
        n += 1;
    }
    n
}
