//! `weir-workload`: the steered workload of the takeover tests. Joins a cgroup (so that eBPF
//! steering applies to it), then until `--duration-ms` passes, `--max-requests` were sent or
//! `--stop-file` exists, runs at once:
//!
//! - `--rate` GETs per second to `--http`, spread over `--keepalive` threads that reuse their
//!   connection and `--fresh` threads that open one per request;
//! - `--slow-clients` threads sending GETs one after another to `--slow` (a slow service);
//! - one long-lived connection to the TCP service `--tcp`: a line every 100 ms, echoed;
//! - one long-lived HTTP connection to `--stream` reading a response that never ends.
//!
//! A long-lived connection that ends is recorded (when, how) and opened again. The client
//! behaves as HTTP/1.1 clients with a connection pool do: it honours `Connection: close`,
//! checks a pooled connection before reusing it, and resends a GET once on a new connection
//! when a reused one was closed before any byte of the answer (RFC 9112 9.3.1; counted as
//! `retried`). Prints one JSON object at the end.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
}

fn addr(args: &[String], name: &str) -> Option<SocketAddr> {
    arg(args, name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes IP:PORT")))
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Whether an error means the peer reset the connection.
fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe
    )
}

/// What every thread adds to.
#[derive(Default)]
struct Totals {
    ok: AtomicU64,
    failed: AtomicU64,
    resets: AtomicU64,
    retried: AtomicU64,
    closes_seen: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// (start, µs since the Unix epoch; latency, µs) of every request that succeeded.
    latencies: Mutex<Vec<(u64, u64)>>,
    slow_ok: AtomicU64,
    slow_failed: AtomicU64,
    slow_max_ms: AtomicU64,
    long_lived: Mutex<Vec<serde_json::Value>>,
}

impl Totals {
    fn error(&self, what: String) {
        let mut e = self.errors.lock().expect("errors");
        if e.len() < 50 {
            e.push(what);
        }
    }
}

struct Stop {
    flag: AtomicBool,
    deadline: Instant,
    max_requests: u64,
    file: Option<std::path::PathBuf>,
}

impl Stop {
    fn now(&self, totals: &Totals) -> bool {
        if self.flag.load(Ordering::Relaxed) {
            return true;
        }
        let done = Instant::now() >= self.deadline
            || totals.ok.load(Ordering::Relaxed) + totals.failed.load(Ordering::Relaxed) >= self.max_requests
            || self.file.as_ref().is_some_and(|f| f.exists());
        if done {
            self.flag.store(true, Ordering::Relaxed);
        }
        done
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(cg) = arg(&args, "--cgroup") {
        std::fs::write(std::path::Path::new(&cg).join("cgroup.procs"), "0").expect("join cgroup");
    }
    let stop = Arc::new(Stop {
        flag: AtomicBool::new(false),
        deadline: Instant::now() + Duration::from_millis(num(&args, "--duration-ms", 30_000)),
        max_requests: num(&args, "--max-requests", 200_000),
        file: arg(&args, "--stop-file").map(std::path::PathBuf::from),
    });
    let totals = Arc::new(Totals::default());
    let mut threads = Vec::new();
    if let Some(http) = addr(&args, "--http") {
        let (keepalive, fresh) = (num(&args, "--keepalive", 6), num(&args, "--fresh", 2));
        let rate = num(&args, "--rate", 2000).max(1);
        let interval = Duration::from_secs_f64((keepalive + fresh) as f64 / rate as f64);
        for i in 0..keepalive + fresh {
            let (stop, totals) = (stop.clone(), totals.clone());
            let reuse = i < keepalive;
            threads.push(std::thread::spawn(move || load(http, "web", interval, reuse, &stop, &totals)));
        }
    }
    if let Some(slow) = addr(&args, "--slow") {
        for _ in 0..num(&args, "--slow-clients", 2) {
            let (stop, totals) = (stop.clone(), totals.clone());
            threads.push(std::thread::spawn(move || slow_requests(slow, &stop, &totals)));
        }
    }
    if let Some(tcp) = addr(&args, "--tcp") {
        let (stop, totals) = (stop.clone(), totals.clone());
        threads.push(std::thread::spawn(move || long_lived_tcp(tcp, &stop, &totals)));
    }
    if let Some(stream) = addr(&args, "--stream") {
        let (stop, totals) = (stop.clone(), totals.clone());
        threads.push(std::thread::spawn(move || long_lived_stream(stream, &stop, &totals)));
    }
    for t in threads {
        t.join().expect("workload thread");
    }
    report(&totals);
}

fn report(t: &Totals) {
    let mut lat = t.latencies.lock().expect("latencies").clone();
    let mut by_latency: Vec<u64> = lat.iter().map(|(_, l)| *l).collect();
    by_latency.sort_unstable();
    let q = |q: f64| by_latency.get(((by_latency.len() as f64 * q) as usize).min(by_latency.len().saturating_sub(1)));
    lat.sort_by_key(|(_, l)| std::cmp::Reverse(*l));
    lat.truncate(2000);
    // Requests started per 10 ms (by Unix time / 10 ms), to count those in a given window.
    let mut per_10ms: BTreeMap<u64, u64> = BTreeMap::new();
    for (start, _) in t.latencies.lock().expect("latencies").iter() {
        *per_10ms.entry(start / 10_000).or_default() += 1;
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": t.ok.load(Ordering::Relaxed),
            "failed": t.failed.load(Ordering::Relaxed),
            "resets": t.resets.load(Ordering::Relaxed),
            "retried": t.retried.load(Ordering::Relaxed),
            "closes_seen": t.closes_seen.load(Ordering::Relaxed),
            "errors": *t.errors.lock().expect("errors"),
            "latency_us": { "p50": q(0.5), "p99": q(0.99), "max": by_latency.last() },
            "slowest": lat,
            "per_10ms": per_10ms,
            "slow": {
                "ok": t.slow_ok.load(Ordering::Relaxed),
                "failed": t.slow_failed.load(Ordering::Relaxed),
                "max_ms": t.slow_max_ms.load(Ordering::Relaxed),
            },
            "long_lived": *t.long_lived.lock().expect("long-lived"),
        })
    );
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// Whether the server closed (or wrote to) this idle connection: then it is not reused.
    fn stale(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut b = [0u8; 1];
        if !self.reader.buffer().is_empty() {
            return true;
        }
        // SAFETY: a non-blocking peek into a 1-byte buffer on a live socket.
        let n = unsafe {
            libc::recv(self.writer.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
    }
}

/// What reading a response ended with.
enum Outcome {
    /// Status, and whether the server closes the connection after it.
    Response(u16, bool),
    /// Failed after `got_any` bytes of the answer.
    Failed(std::io::Error, bool),
}

fn exchange(c: &mut Conn, host: &str) -> Outcome {
    if let Err(e) = write!(c.writer, "GET / HTTP/1.1\r\nhost: {host}\r\n\r\n") {
        return Outcome::Failed(e, false);
    }
    let mut line = String::new();
    match c.reader.read_line(&mut line) {
        Ok(0) => return Outcome::Failed(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"), false),
        Ok(_) => {}
        Err(e) => return Outcome::Failed(e, false),
    }
    let status: u16 = line.get(9..12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        if let Err(e) = c.reader.read_line(&mut line) {
            return Outcome::Failed(e, true);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((n, v)) = l.split_once(':') else { continue };
        match n.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "connection" => close = v.trim().eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    match c.reader.read_exact(&mut body) {
        Ok(()) => Outcome::Response(status, close),
        Err(e) => Outcome::Failed(e, true),
    }
}

/// One GET as a pooled client does it: a stale pooled connection is replaced, and a GET whose
/// reused connection closed before any byte of the answer is sent again once.
fn get(conn: &mut Option<Conn>, addr: SocketAddr, host: &str, totals: &Totals) -> Result<u16, String> {
    for attempt in 0..2 {
        if conn.as_ref().is_some_and(Conn::stale) {
            *conn = None;
        }
        let reused = conn.is_some();
        if conn.is_none() {
            match Conn::open(addr) {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    if is_reset(&e) {
                        totals.resets.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(format!("connect {addr}: {e}"));
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        match exchange(c, host) {
            Outcome::Response(status, close) => {
                if close {
                    totals.closes_seen.fetch_add(1, Ordering::Relaxed);
                    *conn = None;
                }
                return Ok(status);
            }
            Outcome::Failed(e, got_any) => {
                *conn = None;
                if is_reset(&e) {
                    totals.resets.fetch_add(1, Ordering::Relaxed);
                }
                if reused && !got_any && attempt == 0 {
                    totals.retried.fetch_add(1, Ordering::Relaxed);
                    totals.error(format!("retried after a reused connection closed: {e}"));
                    continue;
                }
                return Err(format!("request to {addr} ({}): {e}", if reused { "reused" } else { "new" }));
            }
        }
    }
    Err("unreachable".into())
}

fn load(addr: SocketAddr, host: &str, interval: Duration, reuse: bool, stop: &Stop, totals: &Totals) {
    let mut conn = None;
    let mut next = Instant::now();
    let mut mine = Vec::with_capacity(4096);
    while !stop.now(totals) {
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (start, t0) = (unix_us(), Instant::now());
        match get(&mut conn, addr, host, totals) {
            Ok(200) => {
                totals.ok.fetch_add(1, Ordering::Relaxed);
                mine.push((start, t0.elapsed().as_micros() as u64));
            }
            Ok(status) => {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                totals.error(format!("status {status}"));
            }
            Err(e) => {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                totals.error(e);
            }
        }
        if !reuse {
            conn = None;
        }
    }
    totals.latencies.lock().expect("latencies").extend(mine);
}

fn slow_requests(addr: SocketAddr, stop: &Stop, totals: &Totals) {
    let mut conn = None;
    while !stop.now(totals) {
        let t0 = Instant::now();
        match get(&mut conn, addr, "slow", totals) {
            Ok(200) => {
                totals.slow_ok.fetch_add(1, Ordering::Relaxed);
                totals.slow_max_ms.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            other => {
                totals.slow_failed.fetch_add(1, Ordering::Relaxed);
                totals.error(format!("slow request: {other:?}"));
            }
        }
    }
}

/// How a long-lived connection ended.
fn ending(e: &std::io::Error) -> String {
    if is_reset(e) { format!("reset: {e}") } else { format!("error: {e}") }
}

fn record_long_lived(totals: &Totals, kind: &str, opened: u64, exchanges: u64, end: &str) {
    if end.starts_with("reset") {
        totals.resets.fetch_add(1, Ordering::Relaxed);
    }
    totals.long_lived.lock().expect("long-lived").push(serde_json::json!({
        "kind": kind, "opened_ms": opened / 1000, "closed_ms": unix_us() / 1000, "exchanges": exchanges, "end": end,
    }));
}

/// One TCP connection at a time, a line every 100 ms; a new one when it ends.
fn long_lived_tcp(addr: SocketAddr, stop: &Stop, totals: &Totals) {
    while !stop.now(totals) {
        let opened = unix_us();
        let (mut reader, mut writer) = match TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .and_then(|s| s.set_read_timeout(Some(Duration::from_secs(5))).map(|_| s))
            .and_then(|s| Ok((BufReader::new(s.try_clone()?), s)))
        {
            Ok(c) => c,
            Err(e) => {
                record_long_lived(totals, "tcp", opened, 0, &format!("connect {}", ending(&e)));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut n = 0u64;
        let end = loop {
            if stop.now(totals) {
                break "stopped".to_string();
            }
            // As a client that reads its connection would: a close by the other side is seen
            // before the next write (writing after it would only earn a reset).
            if closed_by_peer(&writer) {
                break "eof".to_string();
            }
            let mut line = String::new();
            match writer.write_all(format!("ping {n}\n").as_bytes()).and_then(|_| reader.read_line(&mut line)) {
                Ok(0) => break "eof".to_string(),
                Ok(_) if line.starts_with("echo:") => n += 1,
                Ok(_) => break format!("unexpected {line:?}"),
                Err(e) => break ending(&e),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        record_long_lived(totals, "tcp", opened, n, &end);
    }
}

/// Whether the peer has closed (or reset) `s`, without waiting.
fn closed_by_peer(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: a non-blocking peek into a 1-byte buffer on a live socket.
    let n = unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
}

/// One HTTP connection at a time reading an endless chunked response; a new one when it ends.
fn long_lived_stream(addr: SocketAddr, stop: &Stop, totals: &Totals) {
    while !stop.now(totals) {
        let opened = unix_us();
        let mut conn = match Conn::open(addr) {
            Ok(c) => c,
            Err(e) => {
                record_long_lived(totals, "stream", opened, 0, &format!("connect {}", ending(&e)));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = conn.writer.set_read_timeout(Some(Duration::from_millis(500)));
        let mut chunks = 0u64;
        let end = match write!(conn.writer, "GET /stream HTTP/1.1\r\nhost: feed\r\n\r\n") {
            Err(e) => ending(&e),
            Ok(()) => loop {
                if stop.now(totals) {
                    break "stopped".to_string();
                }
                let mut line = String::new();
                match conn.reader.read_line(&mut line) {
                    Ok(0) => break "eof".to_string(),
                    Ok(_) => {
                        if line.starts_with("tick") {
                            chunks += 1;
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => break ending(&e),
                }
            },
        };
        record_long_lived(totals, "stream", opened, chunks, &end);
    }
}
