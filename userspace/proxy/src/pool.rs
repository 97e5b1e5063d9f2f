//! Idle upstream connections of one worker, per endpoint. Owns: reuse (most recently used
//! first, so idle ones age out), the idle timeout (a connection idle longer than the service's
//! `upstream_idle` is closed, not reused, which keeps weir below the endpoint's own keep-alive
//! timeout), the cap on idle connections kept, and the rule that a connection on which the
//! endpoint sent anything (or closed) while it was idle is never reused: with no request
//! outstanding, those bytes are not a response to anyone (RFC 9112 9.2), and parsing them as
//! the next request's response would hand it to the wrong client. Must not: be shared between
//! workers or do I/O of its own beyond a non-blocking staleness peek.

use std::time::{Duration, Instant};

use crate::io::Conn;

/// Idle connections to one endpoint, on one worker.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Vec<(Conn, Instant)>,
}

impl Pool {
    /// A reusable connection, if one is idle and younger than `max_idle`. Every candidate is
    /// checked before reuse (one non-blocking peek): one the endpoint closed, reset or wrote
    /// to while it was idle is dropped on the way.
    pub fn take(&mut self, now: Instant, max_idle: Duration) -> Option<Conn> {
        while let Some((conn, since)) = self.idle.pop() {
            let idle = now.saturating_duration_since(since);
            if idle >= max_idle || conn.is_stale() {
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
