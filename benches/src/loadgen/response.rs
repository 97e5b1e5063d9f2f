//! Just enough HTTP/1.1 response parsing for a load generator: find the end of a response in
//! a buffer (status line, `Content-Length` body, `Connection: close`). The servers under test
//! answer small fixed bodies; anything else (chunked, no length) is reported as unsupported.
//! Must not: allocate or copy; it reads the caller's buffer.

/// A complete response found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Status code.
    pub status: u16,
    /// Bytes the whole response (head + body) occupies.
    pub len: usize,
    /// The server will close the connection after it.
    pub close: bool,
}

/// Why a buffer does not hold a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not an HTTP/1.x status line.
    BadStatusLine,
    /// A body framing this parser does not follow (chunked, or no Content-Length).
    UnsupportedFraming,
    /// The head is larger than the buffer can hold.
    HeadTooLarge,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParseError::BadStatusLine => "bad status line",
            ParseError::UnsupportedFraming => "response without Content-Length (chunked or close-delimited)",
            ParseError::HeadTooLarge => "response head larger than 16 KiB",
        })
    }
}

/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Looks for one complete response at the start of `buf`: `Ok(None)` means read more.
pub fn parse(buf: &[u8]) -> Result<Option<Parsed>, ParseError> {
    let Some(head_end) = find_head_end(buf) else {
        return if buf.len() >= MAX_HEAD_BYTES { Err(ParseError::HeadTooLarge) } else { Ok(None) };
    };
    let head = &buf[..head_end];
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with(b"HTTP/1.") || status_line.len() < 12 {
        return Err(ParseError::BadStatusLine);
    }
    let status =
        std::str::from_utf8(&status_line[9..12]).ok().and_then(|s| s.parse().ok()).ok_or(ParseError::BadStatusLine)?;
    let http10 = status_line.starts_with(b"HTTP/1.0");
    let (mut length, mut close, mut keep_alive) = (None, false, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<usize>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(ParseError::UnsupportedFraming);
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= contains_ci(value, b"close");
            keep_alive |= contains_ci(value, b"keep-alive");
        }
    }
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let body = match (length, no_body) {
        (_, true) => 0,
        (Some(n), false) => n,
        (None, false) => return Err(ParseError::UnsupportedFraming),
    };
    let len = head_end + body;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Parsed { status, len, close: close || (http10 && !keep_alive) }))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &v[start..end]
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_responses_are_found_whole() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nvia: 1.1 weir\r\n\r\nok\nHTTP/1.1";
        let p = parse(r).expect("valid").expect("complete");
        assert_eq!((p.status, p.len, p.close), (200, r.len() - 8, false));
        assert_eq!(parse(&r[..20]), Ok(None));
        assert_eq!(parse(&r[..p.len - 1]), Ok(None));
    }

    #[test]
    fn close_and_framing_are_reported() {
        let r = b"HTTP/1.1 503 x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(parse(r).expect("valid").expect("complete").close);
        let r = b"HTTP/1.0 200 x\r\ncontent-length: 0\r\n\r\n";
        assert!(parse(r).expect("valid").expect("complete").close);
        let r = b"HTTP/1.1 200 x\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(parse(r), Err(ParseError::UnsupportedFraming));
        assert_eq!(parse(b"SSH-2.0\r\n\r\n"), Err(ParseError::BadStatusLine));
        assert_eq!(parse(b"HTTP/1.1 204 x\r\n\r\n").expect("valid").expect("complete").len, 18);
    }
}
