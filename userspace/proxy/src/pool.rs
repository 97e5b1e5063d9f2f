//! Upstream connections of one worker: the counted connection type ([`UpConn`], which keeps
//! the `weir_upstream_connections` gauge right however it is closed) and the idle pool per
//! endpoint. The pool owns reuse (most recently used first, so idle ones age out), the idle
//! timeout (a connection idle longer than the service's `upstream_idle` is closed, not reused,
//! which keeps weir below the endpoint's own keep-alive timeout), the cap on idle connections
//! kept, and the rule that a connection on which the endpoint sent anything (or closed) while
//! it was idle is never reused: with no request outstanding, those bytes are not a response to
//! anyone (RFC 9112 9.2), and parsing them as the next request's response would hand it to the
//! wrong client. For HTTP/2 endpoints the pool holds multiplexed connections instead
//! ([`H2Pool`]): a request takes a stream on one that has room under the endpoint's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, and another connection is opened when every one is full.
//! Must not: be shared between workers, or do I/O of its own beyond a non-blocking staleness
//! peek and opening connections.

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
    pub(crate) fn new(conn: Conn, gauge: &Gauge) -> UpConn {
        gauge.set(gauge.get() + 1);
        UpConn { conn, gauge: gauge.clone() }
    }
}

impl UpConn {
    /// Closes with a reset: for a connection abandoned mid-request or mid-response, whose
    /// queued bytes nobody will read (a graceful close could wait on them indefinitely).
    pub(crate) fn abort(self) {
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
    opts: &ConnectOptions,
    timeout: Duration,
    gauge: &Gauge,
) -> Result<UpConn, Outcome> {
    match Conn::connect(addr, opts, timeout).await {
        Ok(mut c) => {
            c.receive_multishot();
            Ok(UpConn::new(c, gauge))
        }
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

/// Counts one connection in a gauge until dropped (for connections held by a codec).
#[derive(Debug)]
pub(crate) struct Counted(Gauge);

impl Counted {
    /// Counts one more in `gauge`.
    pub(crate) fn new(gauge: &Gauge) -> Counted {
        gauge.set(gauge.get() + 1);
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// One multiplexed HTTP/2 connection to an endpoint: the handle requests are sent through.
/// Its connection task (driving the socket) ends when the endpoint closes it or every handle
/// is dropped.
#[derive(Debug)]
pub(crate) struct H2Conn {
    send: h2::client::SendRequest<bytes::Bytes>,
    /// Set by the connection task when the connection is gone.
    dead: Rc<Cell<bool>>,
    /// Streams weir has open on it (counted by the leases).
    active: Rc<Cell<usize>>,
    /// When a request last took a stream on it.
    last_used: Instant,
}

/// A stream's claim on an HTTP/2 connection: the handle to send on, counted in the
/// connection's open streams until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    pub send: h2::client::SendRequest<bytes::Bytes>,
    active: Rc<Cell<usize>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.active.set(self.active.get().saturating_sub(1));
    }
}

impl H2Conn {
    /// A lease on this connection (for a request that cannot pool it).
    pub(crate) fn lease(&self) -> Lease {
        self.active.set(self.active.get() + 1);
        Lease { send: self.send.clone(), active: self.active.clone() }
    }

    /// Whether it can take one more stream now (under the endpoint's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    fn has_room(&self) -> bool {
        !self.dead.get() && self.active.get() < self.send.current_max_send_streams()
    }
}

/// The HTTP/2 connections to one endpoint, on one worker.
#[derive(Debug, Default)]
pub(crate) struct H2Pool {
    conns: Vec<H2Conn>,
}

impl H2Pool {
    /// A lease on a connection with room for one more stream, if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> Option<Lease> {
        self.conns.retain(|c| !c.dead.get());
        let c = self.conns.iter_mut().find(|c| c.has_room())?;
        c.last_used = now;
        Some(c.lease())
    }

    /// Adds a new connection.
    pub(crate) fn put(&mut self, conn: H2Conn) {
        self.conns.push(conn);
    }

    /// Drops connections with no stream in flight, idle for `max_idle` or longer; returns how
    /// many are left.
    pub(crate) fn expire(&mut self, now: Instant, max_idle: Duration) -> usize {
        self.conns
            .retain(|c| !c.dead.get() && (c.active.get() > 0 || now.saturating_duration_since(c.last_used) < max_idle));
        self.conns.len()
    }
}

/// Opens an HTTP/2 (prior knowledge) connection to `addr`, counted in `gauge` while its
/// connection task runs. A failure is classified like [`connect`]'s; a failed handshake is a
/// protocol error of the endpoint.
pub(crate) async fn connect_h2(
    addr: SocketAddr,
    opts: &ConnectOptions,
    timeout: Duration,
    gauge: &Gauge,
) -> Result<H2Conn, Outcome> {
    let conn = Conn::connect(addr, opts, timeout).await.map_err(|e| connect_outcome(&e))?;
    let io = conn.into_poll_io().map_err(|_| Outcome::LocalResource)?;
    let handshake = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_reset_streams(64)
        .handshake::<_, bytes::Bytes>(io);
    let (send, connection) = match crate::io::until(crate::io::now() + timeout, handshake).await {
        None => return Err(Outcome::ConnectTimeout),
        Some(Err(_)) => return Err(Outcome::ProtocolError),
        Some(Ok(pair)) => pair,
    };
    let dead = Rc::new(Cell::new(false));
    let counted = Counted::new(gauge);
    {
        let dead = dead.clone();
        crate::io::spawn(async move {
            let _ = connection.await;
            dead.set(true);
            drop(counted);
        });
    }
    Ok(H2Conn { send, dead, active: Rc::new(Cell::new(0)), last_used: crate::io::now() })
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
    pub(crate) fn take(&mut self, now: Instant, max_idle: Duration) -> Option<UpConn> {
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
    pub(crate) fn put(&mut self, up: UpConn, now: Instant, cap: usize) {
        if cap == 0 {
            return;
        }
        if self.idle.len() >= cap {
            self.idle.remove(0);
        }
        self.idle.push((up, now));
    }

    /// Closes connections idle for `max_idle` or longer. Returns how many were closed.
    pub(crate) fn expire(&mut self, now: Instant, max_idle: Duration) -> usize {
        let before = self.idle.len();
        self.idle.retain(|(_, since)| now.saturating_duration_since(*since) < max_idle);
        before - self.idle.len()
    }

    /// Idle connections held.
    pub(crate) fn len(&self) -> usize {
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
        let c = Conn::connect(addr, &ConnectOptions::default(), Duration::from_secs(1)).await.expect("connect");
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
