//! Idle upstream connections of one worker, per endpoint. Owns: reuse (most recently used
//! first, so idle ones age out), the idle timeout (a connection idle longer than the service's
//! `upstream_idle` is closed, not reused, which keeps weir below the endpoint's own keep-alive
//! timeout), and the cap on idle connections kept. Must not: be shared between workers or do
//! I/O of its own beyond a non-blocking staleness peek.

use std::time::{Duration, Instant};

use crate::io::Conn;

/// Pooled connections idle at least this long are checked for a close by the endpoint before
/// reuse.
pub const STALE_CHECK_AFTER: Duration = Duration::from_millis(100);

/// Idle connections to one endpoint, on one worker.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Vec<(Conn, Instant)>,
}

impl Pool {
    /// A reusable connection, if one is idle and younger than `max_idle`. Stale ones (closed or
    /// reset by the endpoint while idle) are dropped on the way. The staleness check is a
    /// syscall, so it is made only for connections idle long enough that an endpoint's
    /// keep-alive timeout may have closed them ([`STALE_CHECK_AFTER`]); the rare close of a
    /// busier connection is the keep-alive race, which the retry logic handles.
    pub fn take(&mut self, now: Instant, max_idle: Duration) -> Option<Conn> {
        while let Some((conn, since)) = self.idle.pop() {
            let idle = now.saturating_duration_since(since);
            if idle >= max_idle || (idle >= STALE_CHECK_AFTER && conn.is_stale()) {
                continue; // dropped: closes the socket
            }
            return Some(conn);
        }
        None
    }

    /// Returns a connection after a complete exchange. Keeps at most `cap` idle connections.
    pub fn put(&mut self, conn: Conn, now: Instant, cap: usize) {
        if self.idle.len() >= cap {
            // Keep the fresher ones: drop the oldest idle connection.
            if cap == 0 {
                return;
            }
            self.idle.remove(0);
        }
        self.idle.push((conn, now));
    }

    /// Closes connections idle for `max_idle` or longer. Returns how many were closed.
    pub fn expire(&mut self, now: Instant, max_idle: Duration) -> usize {
        let before = self.idle.len();
        self.idle.retain(|(_, since)| now.saturating_duration_since(*since) < max_idle);
        before - self.idle.len()
    }
}
