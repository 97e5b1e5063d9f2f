//! The exporter's HTTP/1.1 client: one keep-alive connection to the collector, a POST with a
//! gzip protobuf body, the status and the (small) response body back. Blocking, with a connect
//! timeout and a timeout on every read and write, on the exporter thread only. Must not: be
//! used on a worker, or wait longer than its timeouts.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use weir_core::config::OtlpTarget;

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a read or write of one request may make no progress.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response head and body read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What the collector answered.
#[derive(Debug)]
pub(super) struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
}

/// A connection to the collector, made when needed.
#[derive(Debug)]
pub(super) struct Client {
    target: OtlpTarget,
    conn: Option<TcpStream>,
}

impl Client {
    /// A client for `target`; nothing is connected yet.
    pub(super) fn new(target: OtlpTarget) -> Client {
        Client { target, conn: None }
    }

    /// POSTs `body` (gzip protobuf) to the traces path. An error means no answer (connect
    /// failed, timed out, or the connection broke): the connection is dropped.
    pub(super) fn post(&mut self, body: &[u8]) -> std::io::Result<Answer> {
        let result = self.try_post(body);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let addrs = (self.target.host.as_str(), self.target.port).to_socket_addrs()?;
        let mut last = std::io::Error::other(format!("{} resolves to no address", self.target.host));
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_read_timeout(Some(IO_TIMEOUT))?;
                    s.set_write_timeout(Some(IO_TIMEOUT))?;
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_post(&mut self, body: &[u8]) -> std::io::Result<Answer> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        let host = if self.target.host.contains(':') {
            format!("[{}]:{}", self.target.host, self.target.port)
        } else {
            format!("{}:{}", self.target.host, self.target.port)
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/x-protobuf\r\ncontent-encoding: gzip\r\n\
             content-length: {}\r\nuser-agent: weir/{}\r\n\r\n",
            self.target.path,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(body)?;
        let (answer, keep) = read_response(&mut conn)?;
        if keep {
            self.conn = Some(conn);
        }
        Ok(answer)
    }
}

fn broken(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("collector response: {what}"))
}

/// Reads one response; returns it and whether the connection may carry another request.
fn read_response(conn: &mut TcpStream) -> std::io::Result<(Answer, bool)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(broken("head too large"));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(broken("closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| broken("head is not text"))?.to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken("no status line"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = buf.split_off(head_end);
    let keep = if chunked {
        // Read to the terminating chunk; the body is small (a protobuf response or nothing).
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            if body.len() > MAX_RESPONSE_BYTES {
                return Err(broken("body too large"));
            }
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Err(broken("closed inside a chunked body"));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
        !close
    } else if let Some(len) = length {
        if len > MAX_RESPONSE_BYTES {
            return Err(broken("body too large"));
        }
        while body.len() < len {
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Err(broken("closed inside the body"));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
        !close
    } else {
        // Delimited by close.
        while body.len() <= MAX_RESPONSE_BYTES {
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        false
    };
    Ok((Answer { status, body }, keep))
}

fn dechunk(mut src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = src.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&src[..i])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        src = &src[i + 2..];
        if size == 0 || src.len() < size {
            break;
        }
        out.extend_from_slice(&src[..size]);
        src = src.get(size + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(super::dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
