//! A raw-socket endpoint for the HTTP/1.1 correctness tests: each connection is handed to a
//! test-written script that reads request heads and writes exactly the bytes it wants, so an
//! endpoint can misbehave precisely (bytes after a response, early answers, idle closes, never
//! reading). It counts connections accepted and closed and keeps every request head it read.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// One request head as the endpoint read it.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub target: String,
    pub version: String,
    /// Field lines as received (name as sent, value trimmed).
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of field `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Content-Length, 0 when absent.
    pub(crate) fn content_length(&self) -> u64 {
        self.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Whether the body is chunked.
    pub(crate) fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
    heads: Mutex<Vec<Head>>,
}

/// One accepted connection, as the script sees it.
pub(crate) struct RawConn {
    reader: BufReader<TcpStream>,
    /// Write side (the same socket).
    pub stream: TcpStream,
    counters: Arc<Counters>,
}

impl RawConn {
    /// Reads one request head; `None` at EOF or on an error.
    pub(crate) fn read_head(&mut self) -> Option<Head> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let mut parts = line.trim_end_matches(['\r', '\n']).splitn(3, ' ');
        let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        let mut head = Head { target: target.into(), version: version.into(), headers: Vec::new() };
        loop {
            line.clear();
            self.reader.read_line(&mut line).ok()?;
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':')?;
            head.headers.push((n.to_string(), v.trim().to_string()));
        }
        self.counters.heads.lock().push(head.clone());
        Some(head)
    }

    /// Reads and discards the body `head` announces; returns its length.
    pub(crate) fn read_body(&mut self, head: &Head) -> Option<u64> {
        if head.chunked() {
            let mut total = 0;
            let mut line = String::new();
            loop {
                line.clear();
                self.reader.read_line(&mut line).ok()?;
                let size = u64::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
                if size == 0 {
                    line.clear();
                    self.reader.read_line(&mut line).ok()?;
                    return Some(total);
                }
                total += std::io::copy(&mut self.reader.by_ref().take(size), &mut std::io::sink()).ok()?;
                line.clear();
                self.reader.read_line(&mut line).ok()?;
            }
        }
        let n = head.content_length();
        let got = std::io::copy(&mut self.reader.by_ref().take(n), &mut std::io::sink()).ok()?;
        (got == n).then_some(n)
    }

    /// Writes `bytes` (errors ignored: the peer may be gone, which the test observes elsewhere).
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// A complete 200 response with `body`.
    pub(crate) fn ok(&mut self, body: &str) {
        self.write(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    /// Graceful close (FIN).
    pub(crate) fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Waits, without reading a byte, until the peer closes or resets the connection or `limit`
    /// passes; returns whether it did.
    pub(crate) fn wait_peer_close_unread(&self, limit: std::time::Duration) -> bool {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let mut p = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
            // SAFETY: poll(2) on one valid pollfd for at most 100 ms.
            let n = unsafe { libc::poll(&mut p, 1, 100) };
            if n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                return true;
            }
        }
        false
    }
}

/// A running raw endpoint.
pub(crate) struct RawEndpoint {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
}

impl RawEndpoint {
    /// Starts an endpoint that runs `script` on each accepted connection (one thread each).
    pub(crate) fn start(script: impl Fn(RawConn) + Send + Sync + 'static) -> RawEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw endpoint");
        let addr = listener.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        let script = Arc::new(script);
        {
            let counters = counters.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_nodelay(true);
                    counters.accepted.fetch_add(1, Ordering::SeqCst);
                    let (script, counters) = (script.clone(), counters.clone());
                    std::thread::spawn(move || {
                        let Ok(read) = conn.try_clone() else { return };
                        let raw = RawConn { reader: BufReader::new(read), stream: conn, counters: counters.clone() };
                        script(raw);
                        counters.closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        }
        RawEndpoint { addr, counters }
    }

    /// Connections whose script has returned (the socket is closed).
    pub(crate) fn closed(&self) -> u64 {
        self.counters.closed.load(Ordering::SeqCst)
    }

    /// Every request head read so far.
    pub(crate) fn heads(&self) -> Vec<Head> {
        self.counters.heads.lock().clone()
    }
}

/// weir's config with one HTTP service `s` (VIP 127.10.19.x:80) over `endpoints`, 1 worker (so
/// that every client shares one upstream pool), access log off; `extra` goes into the service.
pub(crate) fn one_service(vip_last: u8, endpoints: &[SocketAddr], proxy_extra: &str, extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 1\n{proxy_extra}\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n[[service]]\nname = \"s\"\nvip = \"127.10.19.{vip_last}:80\"\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}

/// A final response as [`RawClient::read_response`] reads it: status, fields (names lowercased),
/// body.
pub(crate) type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// A client-side reader for tests that drive the socket by hand.
pub(crate) struct RawClient {
    reader: BufReader<TcpStream>,
    /// Write side (the same socket).
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects to `addr` (10 s read timeout).
    pub(crate) fn connect(addr: SocketAddr) -> RawClient {
        let s = TcpStream::connect(addr).expect("connect to weir");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        RawClient { reader: BufReader::new(s.try_clone().expect("clone")), stream: s }
    }

    /// Writes `bytes`.
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one head (interim ones included): status and fields (names lower-cased).
    pub(crate) fn read_head(&mut self) -> std::io::Result<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a head"));
        }
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut fields = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                return Ok((status, fields));
            }
            if let Some((n, v)) = l.split_once(':') {
                fields.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }

    /// Reads a final response with a Content-Length body: status, fields, body.
    pub(crate) fn read_response(&mut self) -> std::io::Result<Response> {
        loop {
            let (status, fields) = self.read_head()?;
            if (100..200).contains(&status) {
                continue;
            }
            let n: usize =
                fields.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; n];
            self.reader.read_exact(&mut body)?;
            return Ok((status, fields, body));
        }
    }
}

/// Value of `name` in `fields`.
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}
