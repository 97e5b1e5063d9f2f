//! The one blocking HTTP/1.1 client of the tests, the demo and the bench's control side: raw
//! writes (so malformed requests can be sent on purpose), a response reader that understands
//! Content-Length, chunked and close-delimited bodies and interim 1xx responses, and
//! [`get_once`] for one-off requests to an admin API. Must not: measure latency for a report
//! (the load generator in `benches` has its own zero-copy parser for that).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn body_string(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to `addr` (5 s connect timeout, 20 s read timeout); panics on failure.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects, returning the error.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        Client::try_connect_timeout(addr, Duration::from_secs(5), Duration::from_secs(20))
    }

    /// Connects within `connect`, with `read` as the read timeout.
    pub fn try_connect_timeout(addr: SocketAddr, connect: Duration, read: Duration) -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, connect)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(read))?;
        Ok(Client { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// The address the connection ended up connected to (after any eBPF rewrite).
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.writer.peer_addr()
    }

    /// Sets the read timeout.
    pub fn set_read_timeout(&self, t: Duration) {
        self.writer.set_read_timeout(Some(t)).expect("set timeout");
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write request");
    }

    /// Shuts down the write side (FIN).
    pub fn shutdown_write(&self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Write);
    }

    /// `GET path` with `Host: host`; panics when no response comes.
    pub fn get(&mut self, path: &str, host: &str) -> Response {
        self.send_raw(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes());
        self.read_response(false).expect("response")
    }

    /// A request with a Content-Length body.
    pub fn request(&mut self, method: &str, path: &str, host: &str, body: &[u8]) -> std::io::Result<Response> {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(body);
        self.writer.write_all(&req)?;
        self.read_response(method == "HEAD")
    }

    /// Reads one response (`head_request`: the request was HEAD, so no body).
    pub fn read_response(&mut self, head_request: bool) -> std::io::Result<Response> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            let status: u16 = line.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&line))?;
            let mut headers = Vec::new();
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let l = line.trim_end_matches(['\r', '\n']);
                if l.is_empty() {
                    break;
                }
                let (n, v) = l.split_once(':').ok_or_else(|| bad(l))?;
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            if (100..200).contains(&status) {
                continue; // interim response
            }
            let mut r = Response { status, headers, body: Vec::new() };
            if head_request || status == 204 || status == 304 {
                return Ok(r);
            }
            if r.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                loop {
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| bad(&line))?;
                    if size == 0 {
                        line.clear();
                        self.reader.read_line(&mut line)?;
                        break;
                    }
                    let start = r.body.len();
                    r.body.resize(start + size, 0);
                    self.reader.read_exact(&mut r.body[start..])?;
                    line.clear();
                    self.reader.read_line(&mut line)?;
                }
            } else if let Some(n) = r.header("content-length") {
                let n: usize = n.parse().map_err(|_| bad(n))?;
                r.body.resize(n, 0);
                self.reader.read_exact(&mut r.body)?;
            } else {
                self.reader.read_to_end(&mut r.body)?;
            }
            return Ok(r);
        }
    }

    /// Whether the server closed (or reset) the connection within `wait`.
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        self.set_read_timeout(wait);
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

/// One `GET path` with `Host: host` and `Connection: close` on a fresh connection, everything
/// bounded by `timeout` (connect, and each read).
pub fn get_once(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> std::io::Result<Response> {
    let mut c = Client::try_connect_timeout(addr, timeout, timeout)?;
    c.writer.write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())?;
    c.read_response(false)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed response line {what:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Behavior, Endpoint};

    #[test]
    fn reads_length_chunked_and_one_off_responses() {
        let ep = Endpoint::start("t");
        let mut c = Client::connect(ep.addr);
        let r = c.get("/", "t");
        assert_eq!((r.status, r.header("x-endpoint"), r.body_string().as_str()), (200, Some("t"), "hello from t\n"));
        let r = c.get("/chunked/70000", "t");
        assert_eq!((r.header("transfer-encoding"), r.body.len()), (Some("chunked"), 70_000));
        assert_eq!(c.request("POST", "/", "t", b"abc").expect("post").header("x-body-bytes"), Some("3"));
        assert_eq!(c.peer_addr().expect("peer"), ep.addr);
        ep.set(Behavior::Status(503));
        let r = get_once(ep.addr, "t", "/bytes/10", Duration::from_secs(5)).expect("one-off GET");
        assert_eq!((r.status, r.body.len()), (503, 10));
        assert_eq!(ep.requests(), 4);
    }
}
