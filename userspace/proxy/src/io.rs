//! The seam between weir's data path and its io_uring runtime (compio). Everything the data
//! path does to a socket or the clock goes through here: listen, accept, connect, read, write,
//! shutdown, sleep, deadlines, and the clock (read once per task poll: `clock.rs`). Must not: grow policy (timeouts are chosen by callers) or leak
//! compio types into the rest of the crate, so that a hand-written `io-uring` loop could
//! replace compio by rewriting this file alone.
//!
//! Buffers are owned `Vec<u8>`s that move into the kernel for the duration of an operation and
//! come back with the result (completion-based I/O); a dropped operation is cancelled and its
//! buffer released by the runtime. HTTP/1.1 and TCP connections receive through a multishot
//! receive instead (`recv.rs`): a read abandoned there leaves what arrives for the next read.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::buf::{BufResult, IntoInner, IoBuf};
use compio::io::{AsyncRead, AsyncWrite};
use compio::net::{TcpListener, TcpSocket, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

mod clock;
mod recv;
mod timer;
use clock::Clocked;
pub use clock::now;
use timer::Sleep;

/// Options for sockets weir opens towards endpoints.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// SO_MARK for the socket (0 = none). eBPF steering never redirects marked sockets.
    pub mark: u32,
    /// The steering layer, told of every marked connection to an endpoint (the socket-level
    /// redirect pairs those on this node: [`crate::OriginalDst::upstream_connecting`]); `None`
    /// for a service that keeps its legs on TCP.
    pub steering: Option<std::sync::Arc<dyn crate::OriginalDst>>,
}

/// A listening socket of one worker.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
}

impl Listener {
    /// Binds `addr` with SO_REUSEPORT, so that every worker has its own accept queue on the
    /// same address. Must be called on a worker's runtime thread.
    pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<Listener> {
        Listener::from_std(bind_reuseport(addr, Some(backlog))?)
    }

    /// Serves an already listening socket (bound here, or received from another process).
    /// Must be called on a worker's runtime thread.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Listener> {
        Ok(Listener { inner: TcpListener::from_std(listener)? })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<(Conn, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        stream.set_nodelay(true)?;
        Ok((Conn { inner: stream, sent: 0, rx: None }, peer))
    }

    /// Accepts one connection unless `stop` is cancelled first: `None` once stopped. Stopping
    /// cancels the pending accept in the kernel and waits for the answer, so a connection the
    /// kernel hands over while the stop is on its way is returned, never dropped: what is not
    /// accepted stays in the socket's queue for whoever else holds the socket.
    pub async fn accept_unless(&self, stop: &CancelToken) -> Option<io::Result<(Conn, SocketAddr)>> {
        use compio::runtime::FutureExt as _;
        if stop.is_cancelled() {
            return None;
        }
        match self.inner.accept().with_cancel(stop.clone()).await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                Some(Ok((Conn { inner: stream, sent: 0, rx: None }, peer)))
            }
            Err(_) if stop.is_cancelled() => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Makes the socket listen (if it does already, only the backlog is set again). A bound
    /// SO_REUSEPORT socket joins its address's group, and can be handed connections, only
    /// from here on.
    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: listen(2) on a valid socket fd.
        if unsafe { libc::listen(self.inner.as_raw_fd(), backlog) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The raw fd (for SO_REUSEPORT socket-array registration by the steering layer).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.inner.as_raw_fd()
    }
}

/// A socket bound to `addr` with SO_REUSEPORT (and TCP_NODELAY, which accepted sockets
/// inherit), listening with `backlog` (or not yet, with `None`: see [`Listener::listen`]), not
/// yet served by any runtime: bind anywhere, serve with [`Listener::from_std`] on a worker
/// thread.
pub fn bind_reuseport(addr: SocketAddr, backlog: Option<i32>) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    if let Some(backlog) = backlog {
        socket.listen(backlog)?;
    }
    Ok(socket.into())
}

/// How long an operation may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until this instant, however much progress is made (a request deadline).
    Until(Instant),
    /// This long for each operation: it fails only when an operation makes no progress for
    /// that long (an idle or no-progress timeout).
    Idle(Duration),
}

impl Wait {
    fn deadline(self) -> Instant {
        match self {
            Wait::Until(t) => t,
            Wait::Idle(d) => crate::io::now() + d,
        }
    }
}

/// A write refused with ENOMEM (see [`Conn::write_range_by`]) is tried again after this…
const ENOMEM_BACKOFF_MIN: Duration = Duration::from_millis(1);
/// …doubling up to this…
const ENOMEM_BACKOFF_MAX: Duration = Duration::from_millis(64);
/// …for at most this long when the write has no deadline of its own.
const ENOMEM_PATIENCE: Duration = Duration::from_secs(5);

/// [`Conn::unacked_since`]'s rule: of `sent` bytes written, TCP carried `acked + queued` (the
/// last ones; the first `sent - acked - queued` were redirected into the peer's queue).
/// Unacknowledged since `sent_before` when none after it was redirected and TCP's
/// acknowledgements do not reach past it. `acked_with_syn` is TCP_INFO's `tcpi_bytes_acked`,
/// which counts the SYN's sequence number too (1 on a connection that sent no data).
fn unacked(sent: u64, sent_before: u64, acked_with_syn: u64, queued: u64) -> bool {
    let acked = acked_with_syn.saturating_sub(1);
    let redirected = sent.saturating_sub(acked + queued);
    redirected <= sent_before && acked <= sent_before - redirected
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no progress before the deadline")
}

/// A connected TCP stream (downstream client or upstream endpoint).
#[derive(Debug)]
pub struct Conn {
    inner: TcpStream,
    /// Bytes written so far (to tell whether a request's bytes reached the peer's kernel).
    sent: u64,
    /// The multishot receive, once [`Conn::receive_multishot`] armed it; shared by every handle
    /// of the socket.
    rx: Option<Rc<RefCell<recv::Receiver>>>,
}

impl Conn {
    /// Connects to `addr` within `timeout`.
    pub async fn connect(addr: SocketAddr, opts: &ConnectOptions, timeout: Duration) -> io::Result<Conn> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if opts.mark != 0 {
            socket.set_mark(opts.mark)?;
        }
        socket.set_tcp_nodelay(true)?;
        // weir's own socket to an endpoint: named to the steering layer for the socket-level
        // redirect before it connects. Whether the endpoint is on this node (its loopback, a
        // local pod, a host-network one) the kernel tells: its side is enrolled only where a
        // weir sock_ops program runs for its cgroup, and weir's side only when it was.
        let pairing = opts
            .steering
            .as_ref()
            .filter(|s| opts.mark != 0 && s.upstream_connecting(std::os::fd::AsRawFd::as_raw_fd(&socket)));
        let socket = TcpSocket::from_std_stream(socket.into())?;
        match until(crate::io::now() + timeout, socket.connect(addr)).await {
            Some(Ok(stream)) => {
                if let Some(steering) = pairing
                    && let Ok(local) = stream.local_addr()
                {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                    if !steering.upstream_connected(fd, local, addr, false) {
                        yield_now().await;
                        steering.upstream_connected(fd, local, addr, true);
                    }
                }
                Ok(Conn { inner: stream, sent: 0, rx: None })
            }
            Some(Err(e)) => Err(e),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    /// Reads into the spare capacity of `buf` (from `len()` to `capacity()`), appending; the
    /// bytes already in `buf` are kept. `Ok(0)` means the peer closed its side (or `buf` has
    /// no spare capacity). (compio reads into the whole buffer from offset 0, so the spare
    /// capacity is passed as a slice.)
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if let Some(rx) = &self.rx {
            match std::future::poll_fn(|cx| rx.borrow_mut().poll_read(cx, &mut buf)).await {
                recv::Received::Done(res) => return (res, buf),
                recv::Received::RingEmpty => {}
            }
        }
        let len = buf.len();
        let BufResult(res, slice) = self.inner.read(buf.slice(len..)).await;
        (res, slice.into_inner())
    }

    /// Reads into the spare capacity of `buf` (as [`Conn::read`]) within `wait`; `None` when
    /// the time ran out first (the read was cancelled and its buffer dropped).
    pub async fn read_by(&mut self, buf: Vec<u8>, wait: Wait) -> Option<(io::Result<usize>, Vec<u8>)> {
        until(wait.deadline(), self.read(buf)).await
    }

    /// Writes all of `buf`, with no deadline.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let len = buf.len();
        self.write_range_by(buf, 0..len, None).await
    }

    /// Writes all of `buf` within `wait`. On a timeout the error kind is `TimedOut` and the
    /// buffer is lost (the connection is not usable any more).
    pub async fn write_all_by(&mut self, buf: Vec<u8>, wait: Wait) -> (io::Result<()>, Vec<u8>) {
        let len = buf.len();
        self.write_range_by(buf, 0..len, Some(wait)).await
    }

    /// Writes `buf[range]` completely (within `wait`, if any) and gives the whole buffer back.
    pub async fn write_range_by(
        &mut self,
        mut buf: Vec<u8>,
        range: std::ops::Range<usize>,
        wait: Option<Wait>,
    ) -> (io::Result<()>, Vec<u8>) {
        let mut pos = range.start;
        let mut backoff = ENOMEM_BACKOFF_MIN;
        // Set at the first ENOMEM only: the clock is not read on the ordinary path.
        let mut enomem_until: Option<Instant> = None;
        while pos < range.end {
            let op = self.inner.write(buf.slice(pos..range.end));
            let BufResult(res, slice) = match wait {
                None => op.await,
                Some(w) => match until(w.deadline(), op).await {
                    Some(r) => r,
                    None => return (Err(timed_out()), Vec::new()),
                },
            };
            buf = slice.into_inner();
            match res {
                Ok(0) => return (Err(io::Error::new(io::ErrorKind::WriteZero, "peer took nothing")), buf),
                Ok(n) => {
                    pos += n;
                    self.sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A socket-level redirect into a peer whose memory is exhausted refuses the
                // bytes instead of blocking (it has no flow control); there is no readiness to
                // wait for, so try again after a pause, within the write's own bounds.
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                    let now = crate::io::now();
                    let until = *enomem_until.get_or_insert_with(|| wait.map_or(now + ENOMEM_PATIENCE, Wait::deadline));
                    if now + backoff >= until {
                        return (Err(e), buf);
                    }
                    compio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ENOMEM_BACKOFF_MAX);
                }
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Bytes written on this connection so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Whether the peer's kernel acknowledged none of the bytes written after the first
    /// `sent_before` (TCP_INFO `tcpi_bytes_acked`): then the peer application cannot have read
    /// them, so a request sent there was never processed and may be sent again elsewhere
    /// whatever its method. False when the kernel cannot say.
    ///
    /// With the socket-level redirect, bytes may have gone straight into the peer's receive
    /// queue instead of through TCP: those count as acknowledged (as TCP's would, once in the
    /// peer's queue). TCP accounts for what it carried (acknowledged + still queued, SIOCOUTQ);
    /// the rest of what was written was redirected, and a direction that took TCP once stays
    /// on it, so the redirected bytes are the first ones.
    pub fn unacked_since(&self, sent_before: u64) -> bool {
        use std::os::fd::AsRawFd;
        let fd = self.inner.as_raw_fd();
        // SAFETY: tcp_info is plain old data; zeroed is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
        let rc = unsafe {
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len)
        };
        let has_field = len as usize >= std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        let rc_q = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || !has_field || rc_q != 0 || queued < 0 {
            return false;
        }
        unacked(self.sent, sent_before, info.tcpi_bytes_acked, queued as u64)
    }

    /// Closes in stages (RFC 9112 9.6), so that a response still queued is not destroyed by a
    /// reset: shuts the write side (FIN after every queued byte), then reads and discards what
    /// the client still sends until it closes, `within` passes, or `max_bytes` were discarded.
    pub async fn close_lingering(mut self, within: Duration, max_bytes: usize) {
        if self.shutdown_write().await.is_err() {
            return;
        }
        let deadline = crate::io::now() + within;
        let mut discarded = 0;
        let mut buf = Vec::with_capacity(4096);
        while discarded < max_bytes {
            match until(deadline, self.read(buf)).await {
                Some((Ok(n), b)) if n > 0 => {
                    discarded += n;
                    buf = b;
                    buf.clear();
                }
                _ => return,
            }
        }
    }

    /// Shuts the write side down (sends FIN); reads still work.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }

    /// Closes the connection with a reset and no FIN before it (SO_LINGER 0, then close): used
    /// when a response is cut short, so that the client cannot mistake a truncated body for a
    /// complete one. Takes effect when the last handle to the socket is dropped.
    pub fn abort(self) {
        let _ = self.inner.set_zero_linger();
        drop(self);
    }

    /// Shuts the write side down now, for every handle (sends FIN after the queued bytes): the
    /// peer reads the end of the stream, while reads on this side go on.
    pub fn shutdown_write_ref(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a valid fd owned by this socket.
        unsafe { libc::shutdown(self.inner.as_raw_fd(), libc::SHUT_WR) };
    }

    /// Makes the final close a reset (SO_LINGER 0) instead of a FIN after queued bytes.
    pub fn set_zero_linger(&self) -> io::Result<()> {
        self.inner.set_zero_linger()
    }

    /// The connection as a readiness-based stream for codecs that poll (HTTP/2): see [`PollIo`].
    pub fn into_poll_io(self) -> io::Result<PollIo> {
        self.into_poll_io_after(Vec::new())
    }

    /// Like [`Conn::into_poll_io`], for a connection whose first bytes (`read`) were already
    /// read: they are read again first.
    pub fn into_poll_io_after(self, read: Vec<u8>) -> io::Result<PollIo> {
        if self.rx.as_ref().is_some_and(|rx| rx.borrow().is_armed()) {
            return Err(io::Error::other("a multishot receive is armed on the connection"));
        }
        Ok(PollIo {
            fd: self.inner.to_poll_fd()?,
            replay: read,
            replayed: 0,
            read_blocked: false,
            write_blocked: false,
            enomem: None,
        })
    }

    /// From now on, reads take what a receive kept armed on the socket received (multishot
    /// receive into the worker's provided-buffer ring: `io/recv.rs`), where the runtime can
    /// (io_uring). For connections that stay HTTP/1.1 or TCP: one that is later handed to
    /// readiness-based I/O ([`Conn::into_poll_io`]) must not have it.
    pub fn receive_multishot(&mut self) {
        if self.rx.is_none() && recv::Receiver::supported() {
            use compio::driver::ToSharedFd;
            self.rx = Some(Rc::new(RefCell::new(recv::Receiver::new(self.inner.to_shared_fd()))));
        }
    }

    /// Another handle to the same socket (to read and write it from two futures at once).
    pub fn try_clone(&self) -> Conn {
        Conn { inner: self.inner.clone(), sent: 0, rx: self.rx.clone() }
    }

    /// Resets the connection for every handle (SO_LINGER 0 + shutdown of both directions):
    /// wakes a read pending on another handle of this socket.
    pub fn abort_ref(&self) {
        use std::os::fd::AsRawFd;
        let _ = self.inner.set_zero_linger();
        // SAFETY: shutdown(2) on a valid fd owned by this socket.
        unsafe { libc::shutdown(self.inner.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Whether the peer has closed or reset the connection, or sent unexpected bytes, without
    /// waiting: used before reusing a pooled idle connection. A healthy idle keep-alive
    /// connection has nothing to read.
    pub fn is_stale(&self) -> bool {
        use std::os::fd::AsRawFd;
        // With a receive armed, whatever arrived is its completion (the socket's queue is
        // empty): nothing in it means nothing arrived.
        if let Some(arrived) = self.rx.as_ref().and_then(|rx| rx.borrow_mut().has_arrived()) {
            return arrived;
        }
        let mut byte = [0u8; 1];
        // SAFETY: recv into a 1-byte stack buffer on a valid fd, non-blocking, peek only.
        let n = unsafe {
            libc::recv(self.inner.as_raw_fd(), byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            err.kind() != io::ErrorKind::WouldBlock
        } else {
            true // EOF (0) or unsolicited bytes: either way not reusable
        }
    }
}

/// How [`read_until`] ended.
#[derive(Debug)]
pub enum ReadUntil {
    /// The read completed (`Ok(0)` = EOF); the buffer is back.
    Done(io::Result<usize>, Vec<u8>),
    /// The deadline passed first; the read was abandoned and its buffer dropped.
    TimedOut,
    /// `cancel` fired first (drain); the read was abandoned and its buffer dropped.
    Cancelled,
}

/// Reads into `buf` (appending) until `deadline`, or until `cancel` fires. One small future
/// (read, timer and cancel raced once), so that an idle connection parked here stays small.
pub async fn read_until(conn: &mut Conn, buf: Vec<u8>, deadline: Instant, cancel: Option<&CancelToken>) -> ReadUntil {
    use futures_util::future::{Either, select};
    let read = std::pin::pin!(conn.read(buf));
    let timer = std::pin::pin!(Sleep::until(deadline));
    let cancelled = std::pin::pin!(async {
        match cancel {
            Some(t) => t.clone().wait().await,
            None => std::future::pending::<()>().await,
        }
    });
    match select(read, select(timer, cancelled)).await {
        Either::Left(((res, buf), _)) => ReadUntil::Done(res, buf),
        Either::Right((Either::Left(_), _)) => ReadUntil::TimedOut,
        Either::Right((Either::Right(_), _)) => ReadUntil::Cancelled,
    }
}

/// Waits until `deadline`, or until `cancel` fires; `true` when cancelled.
pub async fn wait_until(deadline: Instant, cancel: &CancelToken) -> bool {
    use futures_util::future::{Either, select};
    let timer = std::pin::pin!(Sleep::until(deadline));
    let cancelled = std::pin::pin!(cancel.clone().wait());
    matches!(select(timer, cancelled).await, Either::Right(_))
}

/// The drain signal of a worker: cancelled once, when drain starts.
pub use compio::runtime::CancelToken;

/// Lets the worker's other tasks and its event loop run once before going on.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Sleeps for `d`.
pub async fn sleep(d: Duration) {
    Sleep::until(crate::io::now() + d).await
}

/// Runs `fut` until `deadline`; `None` when the deadline passed first (and `fut` was dropped,
/// cancelling its I/O).
pub async fn until<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    use futures_util::future::{Either, select};
    let fut = std::pin::pin!(fut);
    match select(fut, std::pin::pin!(Sleep::until(deadline))).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Spawns a task on the current worker's runtime and lets it run on its own.
pub fn spawn<F: Future + 'static>(fut: F) {
    compio::runtime::spawn(Clocked(fut)).detach();
}

/// A single-threaded runtime for one worker core.
#[derive(Debug)]
pub struct Runtime {
    inner: compio::runtime::Runtime,
}

impl Runtime {
    /// Builds the runtime of the calling thread (io_uring, or epoll where io_uring is blocked).
    pub fn new() -> io::Result<Runtime> {
        let mut proactor = compio::driver::ProactorBuilder::new();
        proactor
            .buffer_pool_size(std::num::NonZeroU16::new(recv::RING_BUFFERS).expect("non-zero"))
            .buffer_pool_buffer_len(recv::RING_BUFFER_BYTES);
        let plain = proactor.clone();
        // Completions' task work runs when the worker next enters the kernel (it does on every
        // turn of its loop) instead of interrupting it: with a receive always armed, arrivals
        // would otherwise interrupt the worker mid-request, one interrupt each (the multishot
        // receive halved the throughput without this). Kernels before 5.19 refuse the flags,
        // and compio then falls back to epoll: such a kernel gets io_uring without them.
        proactor.coop_taskrun(true).taskrun_flag(true);
        let inner = match compio::runtime::RuntimeBuilder::new().with_proactor(proactor).build() {
            Ok(rt) if rt.driver_type().is_iouring() => rt,
            _ => compio::runtime::RuntimeBuilder::new().with_proactor(plain).build()?,
        };
        Ok(Runtime { inner })
    }

    /// Runs `fut` to completion on this thread, driving every spawned task meanwhile.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.inner.block_on(Clocked(fut))
    }

    /// Which driver is in use (`io-uring` or `polling`), for logs.
    pub fn driver_name(&self) -> &'static str {
        if self.inner.driver_type().is_polling() { "epoll" } else { "io_uring" }
    }
}

/// A connection driven by readiness instead of completions, for codecs written against
/// tokio's `AsyncRead`/`AsyncWrite` (h2): each read or write is a non-blocking `recv`/`send`
/// (`MSG_DONTWAIT`, so the socket's own blocking mode does not matter); on `EAGAIN` it waits for
/// readiness with an io_uring poll (`PollFd`), then tries again — a readiness that turns out
/// spurious just waits again. Until that poll completes, further reads (writes) wait on it
/// without a syscall: the codec polls its connection on every wake-up of its task, and most of
/// those find nothing new to read. A short read (write) counts as `EAGAIN` for the next one:
/// the readiness poll is level-triggered, so it completes at once if the socket is ready
/// again. Never mixed with completion-based operations on the same socket.
#[derive(Debug)]
pub struct PollIo {
    fd: compio::runtime::fd::PollFd<socket2::Socket>,
    /// Bytes read before the hand-over, returned by the first reads.
    replay: Vec<u8>,
    replayed: usize,
    /// The last `recv` found nothing, and the readiness poll has not completed since.
    read_blocked: bool,
    /// The last `send` found no room, and the readiness poll has not completed since.
    write_blocked: bool,
    /// Sends are being refused with ENOMEM (see [`Backoff`]).
    enomem: Option<Backoff>,
}

/// Sends refused with ENOMEM: a socket-level redirect into a peer whose socket memory is
/// exhausted refuses the bytes instead of blocking, and no readiness will say when it has room
/// again, so the next send waits for a pause (doubling, as [`Conn::write_range_by`]'s do) and
/// the write fails only after [`ENOMEM_PATIENCE`] of nothing but refusals. Meanwhile the write
/// is pending, as one to a full TCP peer is: HTTP/2's own write timeouts apply.
#[derive(Debug)]
struct Backoff {
    pause: Option<Sleep>,
    next: Duration,
    give_up: Instant,
}

impl PollIo {
    fn raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}

impl tokio::io::AsyncRead for PollIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.replayed < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replayed);
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.read_blocked {
                match this.fd.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => this.read_blocked = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let unfilled = buf.initialize_unfilled();
            // SAFETY: recv writes at most `unfilled.len()` bytes into the initialised slice.
            let n = unsafe { libc::recv(this.raw(), unfilled.as_mut_ptr().cast(), unfilled.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                // A short read emptied the socket: the next read waits for readiness (a poll
                // that completes at once if more arrived meanwhile) instead of a `recv` that
                // would most likely find nothing.
                this.read_blocked = (n as usize) < unfilled.len();
                buf.advance(n as usize);
                return Poll::Ready(Ok(()));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => this.read_blocked = true,
                _ => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for PollIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if let Some(pause) = this.enomem.as_mut().and_then(|b| b.pause.as_mut()) {
                if std::pin::Pin::new(pause).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.enomem.as_mut().expect("pausing").pause = None;
            }
            if this.write_blocked {
                match this.fd.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => this.write_blocked = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // SAFETY: send reads at most `data.len()` bytes from `data`.
            let n = unsafe {
                libc::send(this.raw(), data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                // A short write filled the socket's buffer: the next one waits for room.
                this.write_blocked = (n as usize) < data.len();
                this.enomem = None;
                return Poll::Ready(Ok(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => this.write_blocked = true,
                _ if e.raw_os_error() == Some(libc::ENOMEM) => {
                    let now = crate::io::now();
                    let b = this.enomem.get_or_insert(Backoff {
                        pause: None,
                        next: ENOMEM_BACKOFF_MIN,
                        give_up: now + ENOMEM_PATIENCE,
                    });
                    if now >= b.give_up {
                        this.enomem = None;
                        return Poll::Ready(Err(e));
                    }
                    b.pause = Some(Sleep::until(now + b.next));
                    b.next = (b.next * 2).min(ENOMEM_BACKOFF_MAX);
                }
                _ => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        // SAFETY: shutdown(2) on the fd this value holds.
        let rc = unsafe { libc::shutdown(self.raw(), libc::SHUT_WR) };
        std::task::Poll::Ready(if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirected_bytes_count_as_acknowledged() {
        // `acked` below counts the SYN (+1), as TCP_INFO does.
        // All TCP (no redirect): 300 written, 200 acknowledged, 100 queued.
        assert!(!unacked(300, 100, 201, 100), "bytes after 100 were acknowledged");
        assert!(unacked(300, 200, 201, 100), "nothing after 200 was");
        assert!(unacked(300, 300, 301, 0), "all acknowledged, nothing written since");
        // The first 250 redirected, then TCP carried 50 (none acknowledged yet).
        assert!(!unacked(300, 200, 1, 50), "a request partly redirected reached the peer's queue");
        assert!(unacked(300, 250, 1, 50), "the request after the redirect went by TCP, unacknowledged");
        assert!(!unacked(300, 250, 11, 40), "TCP acknowledged some of it");
        // All redirected.
        assert!(!unacked(300, 0, 1, 0));
    }

    #[test]
    fn tcp_accounts_for_every_byte_written_on_loopback() {
        Runtime::new().expect("runtime").block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            let mut c = Conn::connect(addr, &ConnectOptions::default(), Duration::from_secs(1)).await.expect("connect");
            let (mut s, _) = l.accept().expect("accept");
            assert!(c.unacked_since(0), "nothing written");
            let (res, _) = c.write_all(vec![b'x'; 100]).await;
            res.expect("write");
            let mut got = [0u8; 100];
            std::io::Read::read_exact(&mut s, &mut got).expect("read");
            // The peer read it all, so its kernel acknowledged it: wait for the ACK to land.
            let until = Instant::now() + Duration::from_secs(5);
            while c.unacked_since(0) {
                assert!(Instant::now() < until, "the peer's ACK never reached weir's socket");
                std::thread::yield_now();
            }
            assert!(c.unacked_since(100), "nothing was written after the first 100 bytes");
            assert!(!c.unacked_since(99));
        });
    }
}
