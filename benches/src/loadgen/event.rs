//! The event loop behind the open- and closed-loop modes: one thread, non-blocking keep-alive
//! connections, level-triggered epoll with nanosecond timeouts (`epoll_pwait2`), at most one
//! request in flight per connection (no pipelining).
//!
//! Open loop: request `i` is *intended* at `start + i / rate`, whatever happened before; it
//! waits in a queue when every connection is busy, and its latency is measured from the
//! intended time, so a stall of the server shows up in full (no coordinated omission). Closed
//! loop: each connection sends its next request as soon as the previous response ends.
//! Must not: pipeline, retry, or leave the loop later than `duration` + the drain limit.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::response::{self, Parsed};
use super::{Errors, new_histogram};

/// How long in-flight requests may take to finish after the schedule ended.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
const READ_BUF_BYTES: usize = 16 * 1024;

/// What the loop runs.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Server address.
    pub addr: SocketAddr,
    /// The request bytes sent every time.
    pub request: Vec<u8>,
    /// Keep-alive connections.
    pub connections: usize,
    /// Requests per second (open loop); `None` = closed loop.
    pub rate: Option<f64>,
    /// Run (and send) this long before recording starts.
    pub warmup: Duration,
    /// Recorded part of the run.
    pub duration: Duration,
}

/// What the loop measured over the recorded part.
#[derive(Debug)]
pub struct LoopResult {
    /// Response latency, ns (open loop: from the intended send time).
    pub latency: Histogram<u64>,
    /// How late requests were sent after their intended time, ns (open loop).
    pub send_lag: Histogram<u64>,
    /// Responses with status 2xx.
    pub ok: u64,
    /// Non-2xx responses, broken connections, requests unfinished at the end.
    pub errors: Errors,
    /// Connections re-opened during the run.
    pub reconnects: u64,
    /// Recorded wall time.
    pub elapsed: Duration,
}

struct Inflight {
    intended: Instant,
    sent: Instant,
}

struct Conn {
    sock: Option<TcpStream>,
    buf: Box<[u8]>,
    filled: usize,
    inflight: Option<Inflight>,
}

struct Epoll(i32);

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing the epoll fd this struct owns.
        unsafe { libc::close(self.0) };
    }
}

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(Epoll(fd)) }
    }

    fn ctl(&self, op: i32, fd: i32, token: usize) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token as u64 };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) };
        if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Waits up to `timeout` (nanosecond precision); returns the ready tokens count.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> std::io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: i64::from(timeout.subsec_nanos()) as libc::c_long,
        };
        // SAFETY: `events` is a valid, writable array of `events.len()` entries; `ts` lives
        // across the call; a null sigmask means "do not change the mask".
        let rc = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.0,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => Ok(0),
            Some(libc::ENOSYS) => {
                // Kernels before 5.11: millisecond timeouts; spin below a millisecond.
                let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
                // SAFETY: as above.
                let rc = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, ms) };
                if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc as usize) }
            }
            _ => Err(err),
        }
    }
}

/// Opens a blocking connection with no Nagle delay (for the sequential and idle modes; the
/// loop switches it to non-blocking).
pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    Ok(s)
}

struct Loop<'a> {
    opts: &'a LoopOptions,
    epoll: Epoll,
    conns: Vec<Conn>,
    idle: VecDeque<usize>,
    result: LoopResult,
    record_from: Instant,
}

impl Loop<'_> {
    fn open(&mut self, i: usize) -> bool {
        match connect(self.opts.addr).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
            Ok(s) => {
                if let Err(e) = self.epoll.ctl(libc::EPOLL_CTL_ADD, s.as_raw_fd(), i) {
                    self.result.errors.add(format!("epoll_ctl: {e}"));
                    return false;
                }
                self.conns[i].sock = Some(s);
                self.conns[i].filled = 0;
                true
            }
            Err(e) => {
                self.result.errors.add(format!("connect {}: {e}", self.opts.addr));
                false
            }
        }
    }

    /// Closes connection `i` (failing its request if `why` is given) and opens it again.
    fn reset(&mut self, i: usize, why: Option<String>) {
        if let Some(s) = self.conns[i].sock.take() {
            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, s.as_raw_fd(), i);
        }
        if let Some(f) = self.conns[i].inflight.take()
            && f.intended >= self.record_from
        {
            self.result.errors.add(why.unwrap_or_else(|| "connection closed with a request in flight".into()));
        }
        self.result.reconnects += 1;
        if self.open(i) {
            self.idle.push_back(i);
        }
    }

    fn send(&mut self, i: usize, intended: Instant) {
        let now = Instant::now();
        let conn = &mut self.conns[i];
        let Some(sock) = conn.sock.as_mut() else { return };
        match sock.write(&self.opts.request) {
            Ok(n) if n == self.opts.request.len() => {
                conn.inflight = Some(Inflight { intended, sent: now });
                if intended >= self.record_from {
                    let lag = now.saturating_duration_since(intended).as_nanos() as u64;
                    self.result.send_lag.saturating_record(lag.max(1));
                }
            }
            Ok(_) => {
                conn.inflight = Some(Inflight { intended, sent: now });
                self.reset(i, Some("partial request write".into()));
            }
            Err(e) => {
                conn.inflight = Some(Inflight { intended, sent: now });
                self.reset(i, Some(format!("write: {e}")));
            }
        }
    }

    /// Reads what connection `i` has; returns whether a response completed.
    fn readable(&mut self, i: usize) -> bool {
        if i >= self.conns.len() {
            return false;
        }
        let conn = &mut self.conns[i];
        let Some(sock) = conn.sock.as_mut() else { return false };
        let n = match sock.read(&mut conn.buf[conn.filled..]) {
            Ok(0) => {
                self.reset(i, None);
                return false;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => return false,
            Err(e) => {
                self.reset(i, Some(format!("read: {e}")));
                return false;
            }
        };
        conn.filled += n;
        match response::parse(&conn.buf[..conn.filled]) {
            Ok(None) => false,
            Ok(Some(p)) => {
                self.complete(i, p);
                true
            }
            Err(e) => {
                self.reset(i, Some(e.to_string()));
                false
            }
        }
    }

    fn complete(&mut self, i: usize, p: Parsed) {
        let now = Instant::now();
        let conn = &mut self.conns[i];
        conn.buf.copy_within(p.len..conn.filled, 0);
        conn.filled -= p.len;
        let Some(f) = conn.inflight.take() else {
            self.reset(i, Some("response without a request".into()));
            return;
        };
        let measured_from = if self.opts.rate.is_some() { f.intended } else { f.sent };
        if f.intended >= self.record_from {
            if (200..300).contains(&p.status) {
                self.result.ok += 1;
                let ns = now.saturating_duration_since(measured_from).as_nanos() as u64;
                self.result.latency.saturating_record(ns.max(1));
            } else {
                self.result.errors.add(format!("status {}", p.status));
            }
        }
        if p.close || conn.filled > 0 {
            self.reset(i, None);
        } else {
            self.idle.push_back(i);
        }
    }
}

/// Runs the loop; fails only if no connection can be opened at the start.
pub fn run(opts: &LoopOptions) -> anyhow::Result<LoopResult> {
    let n = opts.connections.max(1);
    let start = Instant::now();
    let record_from = start + opts.warmup;
    let end = record_from + opts.duration;
    let mut lp = Loop {
        opts,
        epoll: Epoll::new()?,
        conns: (0..n)
            .map(|_| Conn { sock: None, buf: vec![0; READ_BUF_BYTES].into(), filled: 0, inflight: None })
            .collect(),
        idle: VecDeque::with_capacity(n),
        result: LoopResult {
            latency: new_histogram(),
            send_lag: new_histogram(),
            ok: 0,
            errors: Errors::default(),
            reconnects: 0,
            elapsed: opts.duration,
        },
        record_from,
    };
    for i in 0..n {
        if !lp.open(i) {
            anyhow::bail!("cannot connect to {}: {}", opts.addr, lp.result.errors.samples.join("; "));
        }
        lp.idle.push_back(i);
    }
    lp.result.reconnects = 0;
    let interval = opts.rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let mut next_intended = start;
    let mut queue: VecDeque<Instant> = VecDeque::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        let now = Instant::now();
        if let Some(interval) = interval {
            while next_intended <= now && next_intended < end {
                queue.push_back(next_intended);
                next_intended += interval;
            }
            while !queue.is_empty() {
                let Some(i) = lp.idle.pop_front() else { break };
                let intended = queue.pop_front().expect("queue is not empty");
                lp.send(i, intended);
            }
        } else if now < end {
            while let Some(i) = lp.idle.pop_front() {
                lp.send(i, Instant::now());
            }
        }
        let inflight = lp.conns.iter().filter(|c| c.inflight.is_some()).count();
        let scheduling = interval.is_some() && next_intended < end;
        if now >= end && (!scheduling && queue.is_empty() && inflight == 0 || now >= end + DRAIN_LIMIT) {
            break;
        }
        if lp.conns.iter().all(|c| c.sock.is_none()) {
            anyhow::bail!("every connection to {} failed: {}", opts.addr, lp.result.errors.samples.join("; "));
        }
        let wake = match interval {
            Some(_) if scheduling && (queue.is_empty() || !lp.idle.is_empty()) => next_intended,
            _ if now < end => end,
            _ => end + DRAIN_LIMIT,
        };
        let ready = lp.epoll.wait(&mut events, wake.saturating_duration_since(Instant::now()))?;
        for ev in &events[..ready] {
            // A finished connection goes back to `idle`; the top of the loop sends on it.
            lp.readable(ev.u64 as usize);
        }
    }
    let unfinished = queue.iter().filter(|t| **t >= record_from).count()
        + lp.conns.iter().filter(|c| c.inflight.as_ref().is_some_and(|f| f.intended >= record_from)).count();
    for _ in 0..unfinished {
        lp.result.errors.add("no response before the end of the run (+2 s)".into());
    }
    lp.result.elapsed = opts.duration;
    Ok(lp.result)
}
