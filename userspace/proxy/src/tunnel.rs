//! Two connections joined byte for byte: a TCP service's relay, and an HTTP/1.1 upgrade
//! (WebSocket) after its `101`. Half-close is passed through (a FIN from one side becomes a FIN
//! to the other while the other direction keeps flowing); both directions idle for the timeout
//! reset both. Must not: parse or buffer the stream beyond one read.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::io::{Conn, until};
use crate::pool::UpConn;

const RELAY_BUF_BYTES: usize = 16 * 1024;

/// Relays both directions until each has seen EOF (or an error, or `idle` without traffic in
/// either direction); bytes already read from a side (`client_read`, `upstream_read`) go
/// first. Returns bytes client→endpoint and endpoint→client.
pub(crate) async fn pipe(
    client: Conn,
    client_read: Vec<u8>,
    upstream: UpConn,
    upstream_read: Vec<u8>,
    idle: Duration,
) -> (u64, u64) {
    let last_activity = Rc::new(Cell::new(crate::io::now()));
    let (c_read, c_write) = (client.try_clone(), client);
    let (u_read, u_write) = (upstream.conn.try_clone(), upstream.conn.try_clone());
    let up = copy(c_read, u_write, client_read, idle, last_activity.clone());
    let down = copy(u_read, c_write, upstream_read, idle, last_activity);
    let (a, b) = futures_util::future::join(up, down).await;
    drop(upstream);
    (a, b)
}

/// Copies `read` and then `from` → `to` until EOF, then passes the EOF on (shutdown of the
/// write side).
async fn copy(mut from: Conn, mut to: Conn, read: Vec<u8>, idle: Duration, last: Rc<Cell<Instant>>) -> u64 {
    let mut total = read.len() as u64;
    if !read.is_empty() {
        let (res, _) = to.write_all(read).await;
        if res.is_err() {
            from.abort_ref();
            return total;
        }
    }
    let mut buf = Vec::with_capacity(RELAY_BUF_BYTES);
    loop {
        buf.clear();
        let deadline = last.get() + idle;
        let read = match until(deadline, from.read(buf)).await {
            Some(r) => r,
            None => {
                // Idle here; if the other direction moved meanwhile, keep waiting.
                if last.get() + idle > crate::io::now() {
                    buf = Vec::with_capacity(RELAY_BUF_BYTES);
                    continue;
                }
                to.abort_ref();
                from.abort_ref();
                return total;
            }
        };
        let (res, b) = read;
        buf = b;
        match res {
            Ok(0) => {
                let _ = to.shutdown_write().await;
                return total;
            }
            Ok(n) => {
                total += n as u64;
                last.set(crate::io::now());
                let (res, b) = to.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    from.abort_ref();
                    return total;
                }
            }
            Err(_) => {
                to.abort_ref();
                return total;
            }
        }
    }
}
