//! Byte-level grammar helpers shared by the parsers and serialisers: character classes, list
//! splitting, Content-Length, request-target and Host validation. Owns: what a valid token,
//! target or host is. Must not: know about heads, framing decisions or statuses beyond
//! returning a [`HeadError`].

use super::HeadError;

const fn table(kind: u8) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let alnum = b.is_ascii_alphanumeric();
        t[i] = match kind {
            // tchar (RFC 9110 5.6.2)
            0 => {
                alnum
                    || matches!(b, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+')
                    || matches!(b, b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
            }
            // request-target bytes as clients really send them: every visible byte and every
            // byte >= 0x80 (raw UTF-8), which are opaque to a proxy; never a CTL, SP, DEL, or
            // '#' (a fragment is never sent, and an origin must not read one).
            1 => b > 0x20 && b != 0x7f && b != b'#',
            // reg-name / IPv4 bytes of a Host (unreserved / sub-delims / '%')
            2 => {
                alnum
                    || matches!(b, b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'')
                    || matches!(b, b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b'%')
            }
            // field-value bytes: HTAB, SP, VCHAR, obs-text
            _ => b == b'\t' || (b >= 0x20 && b != 0x7f),
        };
        i += 1;
    }
    t
}

static TCHAR: [bool; 256] = table(0);
static TARGET: [bool; 256] = table(1);
static REG_NAME: [bool; 256] = table(2);
static FIELD_VCHAR: [bool; 256] = table(3);

/// `tchar` of RFC 9110.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// A non-empty `token`.
#[inline]
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// HTAB / SP / VCHAR / obs-text (a field value byte).
#[inline]
pub(crate) fn is_field_vchar(b: u8) -> bool {
    FIELD_VCHAR[b as usize]
}

#[inline]
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A value safe to emit as a field value: field bytes only, no leading/trailing whitespace.
pub(crate) fn is_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| is_field_vchar(b))
        && !v.first().is_some_and(|&b| is_ows(b))
        && !v.last().is_some_and(|&b| is_ows(b))
}

/// The coding of one `transfer-coding` list element (RFC 9112 7: `token *( OWS ";" OWS
/// transfer-parameter )`, a parameter being `token BWS "=" BWS ( token / quoted-string )`), or
/// `None` when the element does not follow that grammar.
pub(crate) fn coding_name(element: &[u8]) -> Option<&[u8]> {
    let mut parts = element.split(|&b| b == b';');
    let name = parts.next()?.trim_ascii();
    if !is_token(name) {
        return None;
    }
    for param in parts {
        let (k, v) = param.split_at(param.iter().position(|&b| b == b'=')?);
        let (k, v) = (k.trim_ascii(), v[1..].trim_ascii());
        let quoted = v.len() >= 2
            && v[0] == b'"'
            && v[v.len() - 1] == b'"'
            && v[1..v.len() - 1].iter().all(|&b| b != b'"' && b != b'\\' && is_field_vchar(b));
        if !is_token(k) || !(is_token(v) || quoted) {
            return None;
        }
    }
    Some(name)
}

/// ASCII case-insensitive equality.
#[inline]
pub(crate) fn eq_ci(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Iterator over the elements of a comma-separated list value, as `(start, end)` offsets into
/// the value with OWS trimmed. Empty elements are yielded (callers decide).
pub(crate) struct ListIter<'a> {
    v: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> ListIter<'a> {
    pub(crate) fn new(v: &'a [u8]) -> Self {
        Self { v, pos: 0, done: false }
    }
}

impl Iterator for ListIter<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.done {
            return None;
        }
        let rest = self.v.get(self.pos..).unwrap_or(&[]);
        let len = rest.iter().position(|&b| b == b',').unwrap_or_else(|| {
            self.done = true;
            rest.len()
        });
        let (mut s, mut e) = (self.pos, self.pos + len);
        self.pos = e + 1;
        while s < e && is_ows(self.v[s]) {
            s += 1;
        }
        while e > s && is_ows(self.v[e - 1]) {
            e -= 1;
        }
        Some((s, e))
    }
}

/// Content-Length = 1*DIGIT fitting in u64; anything else (sign, list, inner space) is `None`.
pub(crate) fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Whether `head` holds an LF not preceded by CR (bare CRs are already refused by httparse).
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    let mut prev_cr = false;
    for chunk in head.chunks(32) {
        // Fast skip of LF-free blocks (vectorises); only blocks with an LF are walked.
        if chunk.iter().fold(false, |acc, &b| acc | (b == b'\n')) {
            for (i, &b) in chunk.iter().enumerate() {
                let before = if i == 0 { prev_cr } else { chunk[i - 1] == b'\r' };
                if b == b'\n' && !before {
                    return true;
                }
            }
        }
        prev_cr = chunk.last() == Some(&b'\r');
    }
    false
}

/// Result of looking at a version httparse refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum VersionClass {
    /// A prefix of `HTTP/d.d CRLF`: need more bytes to decide.
    Partial,
    /// `HTTP/1.d` with d >= 2: processed as HTTP/1.1 (RFC 9112 2.3); the minor digit.
    Http1Minor(u8),
    /// Well-formed but not 1.0/1.1: 505.
    Unsupported,
    /// Malformed: 400.
    Invalid,
}

/// Classify `rest` (bytes from the start of the version) against `HTTP/DIGIT.DIGIT CRLF`.
pub(crate) fn classify_version(rest: &[u8]) -> VersionClass {
    const PATTERN: &[u8; 10] = b"HTTP/0.0\r\n";
    for (i, (&b, &p)) in rest.iter().zip(PATTERN.iter()).enumerate() {
        let ok = if i == 5 || i == 7 { b.is_ascii_digit() } else { b == p };
        if !ok {
            return VersionClass::Invalid;
        }
    }
    if rest.len() < PATTERN.len() {
        VersionClass::Partial
    } else if rest[5] == b'1' {
        VersionClass::Http1Minor(rest[7] - b'0')
    } else {
        VersionClass::Unsupported
    }
}

/// Forms of request target weir accepts (RFC 9112 3.2). Authority-form only goes with CONNECT,
/// which is refused before the target is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `*` (OPTIONS only; checked once the head is complete).
    Asterisk,
    /// `scheme://authority/path?query`: the authority as offsets into the target, where the
    /// path (origin-form part, possibly empty) starts, and whether the scheme is `https`.
    Absolute { authority: (usize, usize), path: usize, https: bool },
}

/// Validate a request target: no CTL, SP, DEL or fragment; well-formed `%` escapes; one of the
/// accepted forms. Other bytes (`[]|{}^"<>\` and backtick, raw UTF-8), which libraries and
/// browsers send and other proxies forward, are opaque to weir and forwarded unchanged.
pub(crate) fn validate_target(t: &[u8]) -> Result<TargetForm, HeadError> {
    if t == b"*" {
        return Ok(TargetForm::Asterisk);
    }
    let mut i = 0;
    while i < t.len() {
        let b = t[i];
        if !TARGET[b as usize] {
            return Err(HeadError::InvalidTarget);
        }
        if b == b'%' {
            let hex = |j: usize| t.get(j).is_some_and(|c| c.is_ascii_hexdigit());
            if !(hex(i + 1) && hex(i + 2)) {
                return Err(HeadError::InvalidTarget);
            }
            i += 2;
        }
        i += 1;
    }
    match t.first() {
        Some(b'/') => Ok(TargetForm::Origin),
        Some(b) if b.is_ascii_alphabetic() => absolute_form(t),
        _ => Err(HeadError::InvalidTarget),
    }
}

fn absolute_form(t: &[u8]) -> Result<TargetForm, HeadError> {
    let sep = t.windows(3).position(|w| w == b"://").ok_or(HeadError::InvalidTarget)?;
    let scheme = &t[..sep];
    if !scheme.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) {
        return Err(HeadError::InvalidTarget);
    }
    let start = sep + 3;
    let len = t[start..].iter().position(|&b| b == b'/' || b == b'?').unwrap_or(t.len() - start);
    let authority = &t[start..start + len];
    // userinfo is refused (RFC 9110 4.2.4); the authority must be a valid host[:port].
    if authority.is_empty() || authority.contains(&b'@') || !is_valid_host(authority) {
        return Err(HeadError::InvalidTarget);
    }
    let https = eq_ci(scheme, b"https");
    Ok(TargetForm::Absolute { authority: (start, start + len), path: start + len, https })
}

/// Whether a Host value and an absolute-form authority name the same origin: hosts compared
/// case-insensitively, a missing port read as the scheme's default (80, or 443 for https).
pub(crate) fn same_authority(host: &[u8], authority: &[u8], https: bool) -> bool {
    let default: &[u8] = if https { b"443" } else { b"80" };
    let split = |v: &'_ [u8]| -> (usize, usize) {
        // The port separator is the last ':' after any IPv6 literal.
        let after = v.iter().rposition(|&b| b == b']').map_or(0, |p| p + 1);
        match v[after..].iter().position(|&b| b == b':') {
            Some(c) => (after + c, after + c + 1),
            None => (v.len(), v.len()),
        }
    };
    let ((hc, hp), (ac, ap)) = (split(host), split(authority));
    let port = |v: &'_ [u8], p: usize| if p >= v.len() { default.to_vec() } else { v[p..].to_vec() };
    eq_ci(&host[..hc], &authority[..ac]) && port(host, hp) == port(authority, ap)
}

/// `uri-host [":" port]` (RFC 9110 7.2). An empty value is allowed (RFC 9112 3.2).
pub(crate) fn is_valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let lit = &rest[..close];
        if lit.is_empty() || !lit.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        (&[][..], &rest[close + 1..])
    } else {
        let colon = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        (&v[..colon], &v[colon..])
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    port_ok && host.iter().all(|&b| REG_NAME[b as usize])
}
