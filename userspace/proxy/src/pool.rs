//! Upstream connections of one worker: the counted connection type ([`UpConn`], which keeps
//! the `weir_upstream_connections` gauge right however it is closed) and the idle pool per
//! endpoint. The pool owns reuse (most recently used first, so idle ones age out), the idle
//! timeout (a connection idle longer than the service's `upstream_idle` is closed, not reused,
//! which keeps weir below the endpoint's own keep-alive timeout), the cap on idle connections
//! kept, and the rule that a connection on which the endpoint sent anything (or closed) while
//! it was idle is never reused: with no request outstanding, those bytes are not a response to
//! anyone (RFC 9112 9.2), and parsing them as the next request's response would hand it to the
//! wrong client. Must not: be shared between workers or do I/O of its own beyond a
//! non-blocking staleness peek.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use weir_core::outcome::Outcome;

use crate::io::{Conn, ConnectOptions};

/// Open upstream connections of one service on one worker (a gauge).
pub(crate) type Gauge = Rc<Cell<i64>>;

/// A connection to an endpoint, counted in its service's gauge from connect to drop.
#[derive(Debug)]
pub(crate) struct UpConn {
    pub conn: Conn,
    gauge: Gauge,
}

impl UpConn {
    /// Counts `conn` in `gauge` until it is dropped.
    pub fn new(conn: Conn, gauge: &Gauge) -> UpConn {
        gauge.set(gauge.get() + 1);
        UpConn { conn, gauge: gauge.clone() }
    }
}

impl UpConn {
    /// Closes with a reset: for a connection abandoned mid-request or mid-response, whose
    /// queued bytes nobody will read (a graceful close could wait on them indefinitely).
    pub fn abort(self) {
        let _ = self.conn.set_zero_linger();
    }
}

impl Drop for UpConn {
    fn drop(&mut self) {
        self.gauge.set(self.gauge.get() - 1);
    }
}

/// Opens a connection to `addr` within `timeout`, counted in `gauge`. A failure is classified:
/// weir's own resource limits (descriptors, buffers, local ports, memory) are
/// [`Outcome::LocalResource`], never the endpoint's failure.
pub(crate) async fn connect(
    addr: SocketAddr,
    opts: ConnectOptions,
    timeout: Duration,
    gauge: &Gauge,
) -> Result<UpConn, Outcome> {
    match Conn::connect(addr, opts, timeout).await {
        Ok(c) => Ok(UpConn::new(c, gauge)),
        Err(e) => Err(connect_outcome(&e)),
    }
}

fn connect_outcome(e: &std::io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL) => {
            Outcome::LocalResource
        }
        _ if e.kind() == std::io::ErrorKind::TimedOut => Outcome::ConnectTimeout,
        _ => Outcome::ConnectFailure,
    }
}

/// Idle connections to one endpoint, on one worker.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Vec<(UpConn, Instant)>,
}

impl Pool {
    /// A reusable connection, if one is idle and younger than `max_idle`. Every candidate is
    /// checked before reuse (one non-blocking peek): one the endpoint closed, reset or wrote
    /// to while it was idle is dropped on the way.
    pub fn take(&mut self, now: Instant, max_idle: Duration) -> Option<UpConn> {
        while let Some((up, since)) = self.idle.pop() {
            let idle = now.saturating_duration_since(since);
            if idle >= max_idle || up.conn.is_stale() {
                continue; // dropped: closes the socket
            }
            return Some(up);
        }
        None
    }

    /// Returns a connection after a complete exchange. Keeps at most `cap` idle connections,
    /// dropping the oldest.
    pub fn put(&mut self, up: UpConn, now: Instant, cap: usize) {
        if cap == 0 {
            return;
        }
        if self.idle.len() >= cap {
            self.idle.remove(0);
        }
        self.idle.push((up, now));
    }

    /// Closes connections idle for `max_idle` or longer. Returns how many were closed.
    pub fn expire(&mut self, now: Instant, max_idle: Duration) -> usize {
        let before = self.idle.len();
        self.idle.retain(|(_, since)| now.saturating_duration_since(*since) < max_idle);
        before - self.idle.len()
    }

    /// Idle connections held.
    pub fn len(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{ConnectOptions, Runtime};

    /// A connected pair on loopback: (weir's side, the endpoint's side).
    async fn pair() -> (Conn, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = Conn::connect(addr, ConnectOptions::default(), Duration::from_secs(1)).await.expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    #[test]
    fn take_put_expire_with_injected_time_and_the_gauge_follows() {
        Runtime::new().expect("runtime").block_on(async {
            let gauge = Gauge::default();
            let mut pool = Pool::default();
            let t0 = Instant::now();
            let max_idle = Duration::from_secs(3);
            let mut peers = Vec::new();
            for _ in 0..3 {
                let (c, s) = pair().await;
                peers.push(s);
                pool.put(UpConn::new(c, &gauge), t0, 2);
            }
            assert_eq!((pool.len(), gauge.get()), (2, 2), "over the cap the oldest is closed");
            let taken = pool.take(t0 + Duration::from_secs(1), max_idle).expect("a fresh idle connection");
            assert_eq!(gauge.get(), 2, "taken, still open");
            pool.put(taken, t0 + Duration::from_secs(2), 2);
            assert_eq!(pool.expire(t0 + Duration::from_secs(4), max_idle), 1, "the one idle since t0 expired");
            assert_eq!((pool.len(), gauge.get()), (1, 1));
            assert!(pool.take(t0 + Duration::from_secs(6), max_idle).is_none(), "idle too long: closed, not reused");
            assert_eq!((pool.len(), gauge.get()), (0, 0));
        });
    }

    #[test]
    fn a_connection_the_endpoint_wrote_to_or_closed_while_idle_is_never_reused() {
        use std::io::Write;
        Runtime::new().expect("runtime").block_on(async {
            let gauge = Gauge::default();
            let mut pool = Pool::default();
            let now = Instant::now();
            let (a, mut sa) = pair().await;
            let (b, sb) = pair().await;
            let (c, _sc) = pair().await;
            pool.put(UpConn::new(c, &gauge), now, 8);
            pool.put(UpConn::new(b, &gauge), now, 8);
            pool.put(UpConn::new(a, &gauge), now, 8);
            sa.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL").expect("unsolicited bytes");
            drop(sb); // FIN
            // Both are seen at once, however short the idle time.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !(pool.idle[2].0.conn.is_stale() && pool.idle[1].0.conn.is_stale()) {
                assert!(Instant::now() < deadline, "the kernel never reported the bytes and the FIN");
                std::thread::yield_now();
            }
            let up = pool.take(now, Duration::from_secs(3)).expect("the healthy one");
            assert_eq!((pool.len(), gauge.get()), (0, 1), "the two stale ones were closed");
            drop(up);
            assert_eq!(gauge.get(), 0);
        });
    }
}
