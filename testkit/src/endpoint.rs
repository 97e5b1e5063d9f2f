//! A scriptable test endpoint: a real HTTP/1.1 keep-alive server on loopback (one thread per
//! connection) whose behaviour a test sets and changes at any time: answer, answer with a
//! status, answer slowly, hang, reset, cut a response short, close idle connections, refuse
//! connections. It counts what it received, so tests can prove what reached an endpoint.
//!
//! Paths: `/bytes/N` answers N bytes (Content-Length), `/chunked/N` answers N bytes chunked;
//! anything else answers a short text. Every response carries `x-endpoint: NAME` and echoes
//! the request's `via` as `x-seen-via` and body length as `x-body-bytes`. The demo serves its
//! endpoints with it too, and the load generator's tests run against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What the endpoint does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// 200.
    Ok,
    /// Answer with this status.
    Status(u16),
    /// Wait this long, then 200.
    Delay(Duration),
    /// Never answer (keep the connection open).
    Hang,
    /// Read the request, then reset the connection without answering.
    ResetAfterRequest,
    /// Send the head and half the body, then reset.
    ResetMidResponse,
    /// Answer 200, then close keep-alive connections idle for this long.
    CloseIdleAfter(Duration),
    /// Answer with a malformed response head.
    Malformed,
    /// 200, but every `every`-th request (counted over all connections) waits `stall` first.
    StallEvery {
        /// Which requests stall (every n-th).
        every: u64,
        /// How long.
        stall: Duration,
    },
}

/// Locks `m`, ignoring poisoning (a panicking connection thread must not take the endpoint
/// down with it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct State {
    behavior: Mutex<Behavior>,
    requests: AtomicU64,
    connections: AtomicU64,
    stop: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
    name: String,
    /// The field lines of the last request received.
    last_headers: Mutex<Vec<(String, String)>>,
}

/// A running test endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<State>,
    /// The accept thread (it owns the listener); taken by `kill`.
    accept: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Endpoint {
    /// Starts an endpoint named `name` on a free loopback port.
    pub fn start(name: &str) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind endpoint");
        Endpoint::serve(name, listener)
    }

    /// Starts an endpoint on `addr`; panics if it cannot bind.
    pub fn start_at(name: &str, addr: SocketAddr) -> Endpoint {
        Endpoint::try_start_at(name, addr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts an endpoint on `addr`, returning the bind error.
    pub fn try_start_at(name: &str, addr: SocketAddr) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind endpoint {name} on {addr}: {e}")))?;
        Ok(Endpoint::serve(name, listener))
    }

    fn serve(name: &str, listener: TcpListener) -> Endpoint {
        let addr = listener.local_addr().expect("endpoint addr");
        let state = Arc::new(State {
            behavior: Mutex::new(Behavior::Ok),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            name: name.to_string(),
            last_headers: Mutex::new(Vec::new()),
        });
        let accept = {
            let state = state.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if state.stop.load(Ordering::SeqCst) {
                        return; // drops the listener: connects are refused from now on
                    }
                    let Ok(conn) = conn else { continue };
                    state.connections.fetch_add(1, Ordering::Relaxed);
                    if let Ok(c) = conn.try_clone() {
                        lock(&state.open).push(c);
                    }
                    let state = state.clone();
                    std::thread::spawn(move || handle(conn, &state));
                }
            })
        };
        Endpoint { addr, state, accept: Mutex::new(Some(accept)) }
    }

    /// Changes the behaviour for the next requests.
    pub fn set(&self, b: Behavior) {
        *lock(&self.state.behavior) = b;
    }

    /// The field lines of the last request received (names lower-cased, in order).
    pub fn last_headers(&self) -> Vec<(String, String)> {
        lock(&self.state.last_headers).clone()
    }

    /// Requests received (complete heads).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Kills the endpoint: stops listening (new connects are refused once this returns) and
    /// ends every open connection.
    pub fn kill(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.accept).take() {
            // Wake the accept loop so it sees `stop` and closes the listener; wait for that.
            let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
            if woken || t.is_finished() {
                let _ = t.join();
            }
        }
        for c in lock(&self.state.open).drain(..) {
            reset(&c);
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

fn reset(c: &TcpStream) {
    // SO_LINGER 0 then close: the peer sees RST.
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a correctly sized linger struct on a valid fd.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    let _ = c.shutdown(Shutdown::Both);
}

fn handle(conn: TcpStream, state: &State) {
    let _ = conn.set_nodelay(true);
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut writer = conn;
    loop {
        if let Behavior::CloseIdleAfter(d) = *lock(&state.behavior) {
            let _ = writer.set_read_timeout(Some(d));
        } else {
            let _ = writer.set_read_timeout(None);
        }
        let Some(req) = read_request(&mut reader) else {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        };
        if state.stop.load(Ordering::SeqCst) {
            reset(&writer);
            return;
        }
        *lock(&state.last_headers) = req.headers.clone();
        let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let behavior = *lock(&state.behavior);
        // Generated bodies are streamed from one static block, never held whole.
        let (body_len, text) = match req.path.as_str() {
            p if p.starts_with("/bytes/") || p.starts_with("/chunked/") => {
                (p.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0usize), None)
            }
            _ => {
                let t = format!("hello from {}\n", state.name).into_bytes();
                (t.len(), Some(t))
            }
        };
        let status = match behavior {
            Behavior::Status(s) => s,
            _ => 200,
        };
        match behavior {
            Behavior::Hang => {
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            Behavior::ResetAfterRequest => {
                reset(&writer);
                return;
            }
            Behavior::Delay(d) => std::thread::sleep(d),
            Behavior::StallEvery { every, stall } if every > 0 && n.is_multiple_of(every) => std::thread::sleep(stall),
            Behavior::Malformed => {
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!");
                continue;
            }
            _ => {}
        }
        let chunked = req.path.starts_with("/chunked/");
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nx-endpoint: {}\r\nx-seen-via: {}\r\nx-body-bytes: {}\r\n",
            state.name,
            req.via.as_deref().unwrap_or(""),
            req.body_len
        );
        if chunked {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
        } else {
            head.push_str(&format!("content-length: {body_len}\r\n\r\n"));
        }
        // A short text answer goes out with its head in one write, as servers send small
        // responses: the reader sees the whole response at once, not the head alone first.
        let whole = !chunked && behavior != Behavior::ResetMidResponse;
        if let Some(t) = text.as_deref().filter(|_| whole) {
            let mut response = head.into_bytes();
            response.extend_from_slice(t);
            if writer.write_all(&response).is_err() || req.close {
                return;
            }
            continue;
        }
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        if behavior == Behavior::ResetMidResponse {
            let _ = write_body(&mut writer, text.as_deref(), body_len / 2, false);
            let _ = writer.flush();
            // The half body must reach the peer before the reset, which discards what is
            // still unsent: wait until the socket's send queue is empty.
            crate::wait_until(Duration::from_secs(2), || (crate::net::unsent_bytes(&writer) == Some(0)).then_some(()));
            reset(&writer);
            return;
        }
        let ok = write_body(&mut writer, text.as_deref(), body_len, chunked);
        if ok.is_err() || req.close {
            return;
        }
    }
}

static BLOCK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// Writes `len` body bytes (`text`, or generated), chunked or raw.
fn write_body(w: &mut TcpStream, text: Option<&[u8]>, len: usize, chunked: bool) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let part = match text {
            Some(t) => &t[len - left..],
            None => &BLOCK[..left.min(BLOCK.len())],
        };
        let part = &part[..part.len().min(left)];
        if chunked {
            w.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
        }
        w.write_all(part)?;
        if chunked {
            w.write_all(b"\r\n")?;
        }
        left -= part.len();
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

/// A TCP echo endpoint: answers each line with `echo:NAME:LINE`; passes on half-close (after
/// the client's FIN it writes `bye:NAME` and closes).
#[derive(Debug)]
pub struct TcpEcho {
    /// Its address.
    pub addr: SocketAddr,
}

impl TcpEcho {
    /// Starts on a free port.
    pub fn start(name: &str) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let name = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let Ok(r) = conn.try_clone() else { return };
                    let mut reader = BufReader::new(r);
                    let mut w = conn;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => {
                                let _ = w.write_all(format!("bye:{name}\n").as_bytes());
                                let _ = w.shutdown(Shutdown::Write);
                                return;
                            }
                            Ok(_) => {
                                if w.write_all(format!("echo:{name}:{}", line).as_bytes()).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        TcpEcho { addr }
    }
}

struct Request {
    path: String,
    via: Option<String>,
    body_len: u64,
    close: bool,
    /// Every field line, names lower-cased, in order.
    headers: Vec<(String, String)>,
}

/// Reads one request (head and body, Content-Length or chunked); `None` on EOF/error/timeout.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split(' ').nth(1)?.to_string();
    let (mut cl, mut chunked, mut via, mut close) = (0u64, false, None, false);
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        let (n, v) = (n.trim().to_ascii_lowercase(), v.trim());
        headers.push((n.clone(), v.to_string()));
        match n.as_str() {
            "content-length" => cl = v.parse().ok()?,
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "via" => via = Some(v.to_string()),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body_len = 0u64;
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let size = u64::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                line.clear();
                reader.read_line(&mut line).ok()?;
                break;
            }
            body_len += std::io::copy(&mut reader.by_ref().take(size), &mut std::io::sink()).ok()?;
            line.clear();
            reader.read_line(&mut line).ok()?;
        }
    } else if cl > 0 {
        body_len = std::io::copy(&mut reader.by_ref().take(cl), &mut std::io::sink()).ok()?;
        if body_len != cl {
            return None;
        }
    }
    Some(Request { path, via, body_len, close, headers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Client;
    use std::time::Instant;

    #[test]
    fn stall_every_delays_only_every_nth_request() {
        let ep = Endpoint::start("s");
        ep.set(Behavior::StallEvery { every: 3, stall: Duration::from_millis(200) });
        let mut c = Client::connect(ep.addr);
        let took: Vec<Duration> = (0..6)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(c.get("/", "s").status, 200);
                t.elapsed()
            })
            .collect();
        let slow: Vec<usize> = (0..6).filter(|&i| took[i] >= Duration::from_millis(200)).collect();
        assert_eq!(slow, [2, 5], "request latencies {took:?}");
    }

    #[test]
    fn reset_mid_response_delivers_half_the_body_then_ends_the_connection() {
        let ep = Endpoint::start("r");
        ep.set(Behavior::ResetMidResponse);
        let mut s = TcpStream::connect(ep.addr).expect("connect");
        s.write_all(b"GET /bytes/100000 HTTP/1.1\r\nhost: r\r\n\r\n").expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; 65536];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("after {} bytes: {e}", got.len()),
            }
        }
        let head = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
        assert_eq!(got.len() - head, 50_000, "the half body arrives before the connection ends");
    }

    #[test]
    fn a_killed_endpoint_refuses_and_resets() {
        let ep = Endpoint::start("k");
        let mut c = Client::connect(ep.addr);
        assert_eq!(c.get("/", "k").status, 200);
        ep.kill();
        assert!(c.is_closed(Duration::from_secs(2)), "an open connection survived the kill");
        assert!(TcpStream::connect(ep.addr).is_err(), "a killed endpoint still accepts");
        assert_eq!((ep.requests(), ep.connections()), (1, 1));
    }
}
