//! Multishot receive: one io_uring receive stays armed on a connection and the kernel picks a
//! buffer from the worker's provided-buffer ring for each arrival, instead of weir submitting
//! a receive (and the kernel arming a readiness poll for it) for every read. A keep-alive
//! exchange then costs the kernel no poll arm and weir no operation record per read: the
//! request and the response each arrive as one completion on the receive armed since the last
//! one. Bytes are copied from the ring's buffer into the reader's own buffer (a request head is
//! a few hundred bytes; what does not fit is kept for the next read).
//!
//! One receiver per socket, shared by every handle of it ([`super::Conn::try_clone`]): two
//! handles reading at once would split the stream, so at most one reads at a time (the data
//! path reads each direction of a socket from one future). Must not: be armed on a socket that
//! is later driven by readiness (`PollIo`), since what it received would be lost; nor keep more
//! of the ring per socket than what the kernel filled and one partly read buffer.
//!
//! When the ring is empty the kernel ends the receive with `ENOBUFS`; that read falls back to an
//! ordinary one into the reader's buffer and the next read arms a new receive, so a worker
//! whose ring ran dry only loses the saving, never data.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use compio::driver::op::RecvMulti;
use compio::driver::{BufferRef, SharedFd};
use compio::runtime::SubmitMultiManaged;
use futures_util::Stream;

/// Buffers in a worker's provided-buffer ring (a power of two).
pub(super) const RING_BUFFERS: u16 = 128;
/// Bytes per buffer of the ring.
pub(super) const RING_BUFFER_BYTES: usize = 8 * 1024;

type Op = SubmitMultiManaged<RecvMulti<SharedFd<socket2::Socket>>, BufferRef>;

/// What a read on the receiver ended with.
pub(super) enum Received {
    /// Bytes were appended to the reader's buffer (`Ok(0)`: the peer closed its side, or the
    /// buffer had no spare capacity), or the socket failed.
    Done(io::Result<usize>),
    /// The ring had no buffer for what arrived: read once the ordinary way.
    RingEmpty,
}

/// The armed receive of one socket and what it received beyond the last read.
pub(super) struct Receiver {
    fd: SharedFd<socket2::Socket>,
    op: Option<Op>,
    /// A ring buffer whose bytes from `held_from` on are not read yet.
    held: Option<BufferRef>,
    held_from: usize,
    /// The peer closed its side: every further read ends at once.
    eof: bool,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("armed", &self.op.is_some())
            .field("held", &self.held.as_ref().map(|b| b.len() - self.held_from))
            .field("eof", &self.eof)
            .finish()
    }
}

impl Receiver {
    pub(super) fn new(fd: SharedFd<socket2::Socket>) -> Receiver {
        Receiver { fd, op: None, held: None, held_from: 0, eof: false }
    }

    /// Whether multishot receive can run on this thread's runtime (io_uring; the epoll
    /// fallback has no provided buffers).
    pub(super) fn supported() -> bool {
        compio::runtime::Runtime::try_with_current(|rt| rt.driver_type().is_iouring()).unwrap_or(false)
    }

    /// Appends what was received to the spare capacity of `buf` (never growing it).
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<Received> {
        let spare = buf.capacity() - buf.len();
        if spare == 0 {
            return Poll::Ready(Received::Done(Ok(0)));
        }
        loop {
            if self.held.is_some() {
                return Poll::Ready(Received::Done(Ok(self.copy_held(buf, spare))));
            }
            if self.eof {
                return Poll::Ready(Received::Done(Ok(0)));
            }
            let op = match &mut self.op {
                Some(op) => op,
                None => match self.arm() {
                    Ok(op) => self.op.insert(op),
                    Err(e) => return Poll::Ready(Received::Done(Err(e))),
                },
            };
            let item = std::task::ready!(Pin::new(op).poll_next(cx));
            match self.settle(item) {
                // Kept (bytes) or noted (the end): the top of the loop answers.
                Some(Ok(())) => {}
                Some(Err(e)) if ring_empty(&e) => {
                    #[cfg(test)]
                    tests::RING_EMPTY.with(|n| n.set(n.get() + 1));
                    return Poll::Ready(Received::RingEmpty);
                }
                Some(Err(e)) => return Poll::Ready(Received::Done(Err(e))),
                // The receive ended without a result of its own (the kernel stops a multishot
                // receive now and then): the loop arms another.
                None => {}
            }
        }
    }

    /// Whether anything arrived (bytes, the end of the stream or an error) since the last
    /// read, without waiting; what arrived is kept for the next read. `None` when no receive
    /// is armed (then the socket itself must be asked).
    pub(super) fn has_arrived(&mut self) -> Option<bool> {
        if self.held.is_some() || self.eof {
            return Some(true);
        }
        let op = self.op.as_mut()?;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(op).poll_next(&mut cx) {
            Poll::Pending => Some(false),
            Poll::Ready(item) => match self.settle(item) {
                Some(Ok(())) => Some(true),
                // The receive ended (an error, or the ring ran dry): ask the socket.
                Some(Err(_)) | None => None,
            },
        }
    }

    /// Takes one result of the armed receive: bytes are held for the next read, the end of the
    /// stream is noted (`Ok`); an error is handed back; `None` when the receive ended without a
    /// result. A receive that ended (any but bytes) is dropped, so the next read arms another.
    fn settle(&mut self, item: Option<io::Result<Option<BufferRef>>>) -> Option<io::Result<()>> {
        match item {
            Some(Ok(Some(b))) if !b.is_empty() => {
                self.held = Some(b);
                self.held_from = 0;
                Some(Ok(()))
            }
            Some(Ok(_)) => {
                self.op = None;
                self.eof = true;
                Some(Ok(()))
            }
            Some(Err(e)) => {
                self.op = None;
                Some(Err(e))
            }
            None => {
                self.op = None;
                None
            }
        }
    }

    /// Whether a receive is armed (the socket must not be handed to readiness-based I/O).
    pub(super) fn is_armed(&self) -> bool {
        self.op.is_some() || self.held.is_some()
    }

    /// Copies from the held buffer into `buf` (at most `spare` bytes); gives the buffer back to
    /// the ring once it is all read.
    fn copy_held(&mut self, buf: &mut Vec<u8>, spare: usize) -> usize {
        let held = self.held.as_ref().expect("a held buffer");
        let n = spare.min(held.len() - self.held_from);
        buf.extend_from_slice(&held[self.held_from..self.held_from + n]);
        self.held_from += n;
        if self.held_from == held.len() {
            self.held = None;
        }
        n
    }

    fn arm(&self) -> io::Result<Op> {
        compio::runtime::Runtime::with_current(|rt| {
            let pool = rt.buffer_pool()?;
            let op = RecvMulti::new(self.fd.clone(), &pool, 0, rustix::net::RecvFlags::empty())?;
            Ok(rt.submit_multi(op).into_managed(pool))
        })
    }
}

/// The kernel's `ENOBUFS` for a provided-buffer ring with no buffer left (compio reports it as
/// an error of its own, `ResourceBusy` without an OS code).
fn ring_empty(e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(code) => code == libc::ENOBUFS,
        None => e.kind() == io::ErrorKind::ResourceBusy,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;
    use std::io::Write;
    use std::time::{Duration, Instant};

    use crate::io::{Conn, ConnectOptions, Runtime, yield_now};

    thread_local! {
        /// Reads that found the ring empty, on this thread.
        pub(in crate::io) static RING_EMPTY: Cell<u64> = const { Cell::new(0) };
    }

    fn byte(conn: usize, at: usize) -> u8 {
        (conn * 7 + at * 13) as u8
    }

    async fn connected(l: &std::net::TcpListener) -> (Conn, std::net::TcpStream) {
        let addr = l.local_addr().expect("addr");
        let mut c = Conn::connect(addr, &ConnectOptions::default(), Duration::from_secs(1)).await.expect("connect");
        c.receive_multishot();
        let (peer, _) = l.accept().expect("accept");
        (c, peer)
    }

    #[test]
    fn a_ring_that_runs_dry_loses_nothing_and_keeps_every_stream_in_order() {
        const CONNS: usize = 300;
        const BYTES: usize = 24 * 1024;
        Runtime::new().expect("runtime").block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut pairs = Vec::new();
            for _ in 0..CONNS {
                pairs.push(connected(&l).await);
            }
            // Arm every receive: each reads its first byte.
            for (i, (c, peer)) in pairs.iter_mut().enumerate() {
                peer.write_all(&[byte(i, 0)]).expect("write");
                let (res, buf) = c.read(Vec::with_capacity(1)).await;
                assert_eq!(res.expect("read"), 1);
                assert_eq!(buf, [byte(i, 0)]);
            }
            // The rest at once: 7 MiB, more than the ring's 1 MiB.
            let before = RING_EMPTY.with(Cell::get);
            for (i, (_, peer)) in pairs.iter_mut().enumerate() {
                let rest: Vec<u8> = (1..BYTES).map(|at| byte(i, at)).collect();
                peer.write_all(&rest).expect("write");
            }
            for (i, (c, _)) in pairs.iter_mut().enumerate() {
                let mut got = vec![byte(i, 0)];
                while got.len() < BYTES {
                    let (res, buf) = c.read(Vec::with_capacity(3000)).await;
                    assert!(res.expect("read") > 0, "connection {i} ended after {} bytes", got.len());
                    got.extend_from_slice(&buf);
                }
                let want: Vec<u8> = (0..BYTES).map(|at| byte(i, at)).collect();
                assert!(got == want, "connection {i}: the bytes differ from what was sent");
            }
            assert!(RING_EMPTY.with(Cell::get) > before, "the ring never ran dry: the test proves nothing");
        });
    }

    #[test]
    fn an_armed_idle_connection_is_stale_once_its_peer_closes_and_not_before() {
        Runtime::new().expect("runtime").block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let (mut c, mut peer) = connected(&l).await;
            peer.write_all(b"x").expect("write");
            let (res, _) = c.read(Vec::with_capacity(16)).await;
            assert_eq!(res.expect("read"), 1);
            // Armed and idle: nothing arrived.
            yield_now().await;
            assert!(!c.is_stale(), "an idle connection was judged stale");
            assert!(c.try_clone().into_poll_io().is_err(), "readiness-based I/O on an armed receive");
            drop(peer);
            let until = Instant::now() + Duration::from_secs(5);
            while !c.is_stale() {
                assert!(Instant::now() < until, "the peer's close never showed");
                yield_now().await;
            }
            let (res, _) = c.read(Vec::with_capacity(16)).await;
            assert_eq!(res.expect("read"), 0, "the end of the stream is read after the check");
        });
    }
}
