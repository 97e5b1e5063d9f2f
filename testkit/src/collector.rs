//! A recording OTLP/HTTP collector on loopback for weir's `[tracing] otlp_endpoint`: it
//! accepts keep-alive connections, reads each POST whole (head and `Content-Length` body) and
//! keeps it, then answers `200` with an empty body (or the status set with
//! [`Collector::answer`]). [`Collector::stall`] makes it stop reading and answering on every
//! connection (a collector that hangs), until [`Collector::resume`]. It does not decode
//! anything: tests decode the (gzip) protobuf bodies with the types they trust. Stops on drop.
//! Must not: block the test that owns it (it runs on its own threads).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request the collector received.
#[derive(Debug, Clone)]
pub struct Post {
    /// Request target.
    pub path: String,
    /// Header fields, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as sent (still gzip when `content-encoding: gzip`).
    pub body: Vec<u8>,
}

impl Post {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Inner {
    posts: Mutex<Vec<Post>>,
    /// Keep what is received (tests), or only count it (benchmarks: memory stays flat).
    keep: bool,
    received: AtomicU64,
    stalled: AtomicBool,
    status: AtomicU16,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// The running collector.
#[derive(Debug)]
pub struct Collector {
    /// Its address (`http://ADDR` is the OTLP endpoint).
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Starts on a free loopback port, keeping every request.
    pub fn start() -> std::io::Result<Collector> {
        Collector::start_with(true)
    }

    /// Starts on a free loopback port, counting requests without keeping them.
    pub fn counting() -> std::io::Result<Collector> {
        Collector::start_with(false)
    }

    fn start_with(keep: bool) -> std::io::Result<Collector> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner { status: AtomicU16::new(200), keep, ..Inner::default() });
        let thread = {
            let inner = inner.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if inner.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Ok(c) = conn.try_clone() {
                        inner.conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                    }
                    let inner = inner.clone();
                    std::thread::spawn(move || serve(conn, &inner));
                }
            })
        };
        Ok(Collector { addr, inner, thread: Some(thread) })
    }

    /// The endpoint URL for `[tracing] otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn posts(&self) -> Vec<Post> {
        self.inner.posts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests received so far.
    pub fn count(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// Answer this status from now on.
    pub fn answer(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    /// Stop reading and answering (connections stay open, requests hang).
    pub fn stall(&self) {
        self.inner.stalled.store(true, Ordering::SeqCst);
    }

    /// Read and answer again.
    pub fn resume(&self) {
        self.inner.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.stalled.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = t.join();
        }
        for c in self.inner.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Serves one connection: requests in order until it closes or the collector stops.
fn serve(mut conn: TcpStream, inner: &Inner) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // A stalled collector takes nothing more from the socket: the sender's writes and its
        // wait for an answer hang, as they would on a hung collector.
        while inner.stalled.load(Ordering::SeqCst) && !inner.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10)); // the behaviour under test: a hang
        }
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some((post, used)) = parse(&buf) {
            buf.drain(..used);
            inner.received.fetch_add(1, Ordering::Relaxed);
            if inner.keep {
                inner.posts.lock().unwrap_or_else(|e| e.into_inner()).push(post);
            }
            let status = inner.status.load(Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                if status == 200 { "OK" } else { "Error" }
            );
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A whole request at the start of `buf`, and its length.
fn parse(buf: &[u8]) -> Option<(Post, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let body = buf.get(end..end + len)?.to_vec();
    Some((Post { path, headers, body }, end + len))
}
