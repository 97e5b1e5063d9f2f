//! The shipper's sink: the file, stdout or connection lines go to, the formatted lines waiting
//! for it, and what became of them (taken, or lost and owed to the next line as a gap). Owns
//! the whole-line rule: a sink never gets part of a record followed by the start of another.
//! A file write that fails mid-line (a full disk) is cut back to the start of that line
//! (ftruncate); stdout continues the line where it stopped once it takes bytes again. Sockets
//! are written without blocking; a connection that stops taking bytes is given up only between
//! two lines: one stalled in the middle of a line is kept until it takes the rest of the line
//! (or closes). Lines a failed sink did not take are lost and counted, and the next line
//! shipped reports them. A file that ends mid-line when weir opens it (a crash, another
//! writer) gets a newline first.
//! Must not: block the shipper on a socket, or hold more than [`super::MAX_PENDING_BYTES`]
//! plus one batch of lines.

use std::collections::VecDeque;
use std::io::{Seek, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use weir_core::accesslog::{LineNames, LogRecord};
use weir_core::config::LogSink;

use super::{HEALTHY_AFTER, MAX_UNCONFIRMED_BYTES, SINK_WRITE_TIMEOUT};

pub(super) enum Writer {
    /// File descriptor 1, written directly (std's `Stdout` buffers partial lines itself).
    Stdout,
    File(std::fs::File),
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Writer {
    fn socket(&self) -> Option<RawFd> {
        match self {
            Writer::Tcp(s) => Some(s.as_raw_fd()),
            Writer::Unix(s) => Some(s.as_raw_fd()),
            _ => None,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Writer::Stdout => {
                // SAFETY: write(2) of an initialised buffer to fd 1.
                let n = unsafe { libc::write(libc::STDOUT_FILENO, bytes.as_ptr().cast(), bytes.len()) };
                if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
            }
            Writer::File(f) => f.write(bytes),
            Writer::Tcp(s) => s.write(bytes),
            Writer::Unix(s) => s.write(bytes),
        }
    }
}

/// What the shipper does with the records queued in the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Format them for the sink.
    Write,
    /// Leave them in the rings: lines are still waiting to be written, or a network sink is
    /// behind by [`MAX_UNCONFIRMED_BYTES`]. Rings that fill meanwhile drop (and count).
    Hold,
    /// Take them out of the rings and count them lost, without formatting: there is no sink to
    /// write to until the back-off ends.
    Discard,
}

/// What the sink did with lines since the caller last looked.
#[derive(Debug, Default)]
pub(super) struct Settled {
    pub shipped: u64,
    /// Lines lost.
    pub lost: u64,
    /// Lost lines plus the gaps they were to report: what the next shipped line must report.
    pub gap: u64,
}

/// The sink and its connection state.
pub(super) struct Sink {
    kind: LogSink,
    pub(super) writer: Option<Writer>,
    retry_at: Instant,
    pub(super) backoff: Duration,
    /// Bytes written on the current network connection.
    pub(super) sent: u64,
    /// Lines written on the current network connection that its peer has not taken yet:
    /// (end offset in `sent`, lines, gap the lines reported). A write only puts bytes in our
    /// socket buffer; they count as shipped once the peer's stack has them (SIOCOUTQ), and as
    /// lost — with the gap they carried — if the connection is given up before that.
    unconfirmed: VecDeque<(u64, u64, u64)>,
    /// Bytes of `sent` the peer has taken.
    pub(super) taken: u64,
    /// When the peer last took bytes (or the connection opened).
    progress_at: Instant,
    /// When the current connection opened.
    opened_at: Instant,
    /// Formatted lines; `pending[written..]` is not written yet.
    pending: Vec<u8>,
    /// Each line of `pending`: (end offset, gap it reports).
    lines: Vec<(usize, u64)>,
    /// The first line of `lines` not written whole yet.
    next_line: usize,
    written: usize,
}

impl Sink {
    pub(super) fn new(kind: LogSink) -> Sink {
        let now = Instant::now();
        Sink {
            kind,
            writer: None,
            retry_at: now,
            backoff: Duration::from_millis(100),
            sent: 0,
            unconfirmed: VecDeque::new(),
            taken: 0,
            progress_at: now,
            opened_at: now,
            pending: Vec::with_capacity(super::MAX_PENDING_BYTES + 4096),
            lines: Vec::with_capacity(super::BATCH_RECORDS),
            next_line: 0,
            written: 0,
        }
    }

    fn network(&self) -> bool {
        matches!(self.kind, LogSink::Tcp(_) | LogSink::Unix(_))
    }

    /// Lines are waiting to be written.
    pub(super) fn has_pending(&self) -> bool {
        self.written < self.pending.len()
    }

    /// Bytes of lines waiting to be written.
    pub(super) fn pending_bytes(&self) -> usize {
        self.pending.len() - self.written
    }

    /// Formats `record` as the next line; `gap` is what its `dropped_before` reports.
    pub(super) fn queue(&mut self, record: &LogRecord, gap: u64, names: LineNames<'_>) {
        record.write_json(gap, names, &mut self.pending);
        self.lines.push((self.pending.len(), gap));
    }

    /// Queues an already formatted line (it must end with a newline).
    #[cfg(test)]
    pub(super) fn queue_line(&mut self, line: &[u8], gap: u64) {
        debug_assert_eq!(line.last(), Some(&b'\n'));
        self.pending.extend_from_slice(line);
        self.lines.push((self.pending.len(), gap));
    }

    /// Where the line being written starts in `pending`.
    fn line_start(&self) -> usize {
        self.next_line.checked_sub(1).map_or(0, |i| self.lines[i].0)
    }

    /// Part of a line has been written, not all of it.
    pub(super) fn mid_line(&self) -> bool {
        self.written > self.line_start()
    }

    fn open(&mut self) -> Option<&mut Writer> {
        if self.writer.is_none() && Instant::now() >= self.retry_at {
            let opened = match &self.kind {
                LogSink::Off => None,
                LogSink::Stdout => Some(Writer::Stdout),
                LogSink::File(p) => {
                    std::fs::OpenOptions::new().create(true).read(true).append(true).open(p).ok().map(|mut f| {
                        start_on_a_new_line(&mut f);
                        Writer::File(f)
                    })
                }
                LogSink::Tcp(addr) => std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
                    .ok()
                    .and_then(|mut a| a.next())
                    .and_then(|a| TcpStream::connect_timeout(&a, SINK_WRITE_TIMEOUT).ok())
                    .and_then(|s| s.set_nonblocking(true).ok().map(|_| Writer::Tcp(s))),
                LogSink::Unix(p) => {
                    UnixStream::connect(p).ok().and_then(|s| s.set_nonblocking(true).ok().map(|_| Writer::Unix(s)))
                }
            };
            match opened {
                Some(w) => {
                    // The back-off is reset only by a sink that takes lines (`settle`): one
                    // that accepts connections and never reads keeps backing off.
                    self.writer = Some(w);
                    self.progress_at = Instant::now();
                    self.opened_at = Instant::now();
                }
                None => self.back_off(),
            }
        }
        self.writer.as_mut()
    }

    fn back_off(&mut self) {
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    /// Gives the connection up and allows an immediate reconnect (its peer closed it).
    fn fail_now(&mut self, settled: &mut Settled) {
        self.abandon(settled);
        self.retry_at = Instant::now();
    }

    /// Gives the connection up and backs off.
    fn fail(&mut self, settled: &mut Settled) {
        self.abandon(settled);
        self.back_off();
    }

    /// Closes the connection; lines its peer never took, and lines not written yet, are lost.
    fn abandon(&mut self, settled: &mut Settled) {
        self.settle(settled);
        for (_, lines, gap) in self.unconfirmed.drain(..) {
            settled.lost += lines;
            settled.gap += lines + gap;
        }
        self.drop_pending(settled);
        self.writer = None;
        self.sent = 0;
        self.taken = 0;
    }

    /// Counts every line not written whole as lost, with the gap it was to report.
    fn drop_pending(&mut self, settled: &mut Settled) {
        for &(_, gap) in &self.lines[self.next_line..] {
            settled.lost += 1;
            settled.gap += 1 + gap;
        }
        self.pending.clear();
        self.lines.clear();
        self.next_line = 0;
        self.written = 0;
    }

    /// Moves lines the peer has taken from unconfirmed to shipped.
    pub(super) fn settle(&mut self, settled: &mut Settled) {
        let Some(fd) = self.writer.as_ref().and_then(Writer::socket) else { return };
        if self.unconfirmed.is_empty() && self.sent == self.taken {
            return;
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int: the bytes the peer has not acknowledged (TCP) or
        // not read (unix stream).
        if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
            return;
        }
        let taken = self.sent.saturating_sub(queued.max(0) as u64);
        if taken > self.taken {
            self.taken = taken;
            self.progress_at = Instant::now();
            // A sink that never reads still takes its socket's receive buffer (~128 KiB), so
            // only a sink that took more than that, or kept up for a while, counts as healthy.
            if self.taken >= MAX_UNCONFIRMED_BYTES || self.opened_at.elapsed() >= HEALTHY_AFTER {
                self.backoff = Duration::from_millis(100);
            }
        }
        while let Some(&(end, lines, _)) = self.unconfirmed.front() {
            if end > taken {
                break;
            }
            settled.shipped += lines;
            self.unconfirmed.pop_front();
        }
    }

    /// Writes what is waiting, as far as the sink takes it without blocking a socket. Lines
    /// written whole are shipped (a file, stdout) or wait for the peer to take them (a socket).
    pub(super) fn flush(&mut self, settled: &mut Settled) {
        if !self.has_pending() {
            return;
        }
        // A network sink that has closed its side (FIN) would still accept a write into the
        // socket buffer, silently losing it: check first and reconnect instead.
        if self.writer.as_ref().and_then(Writer::socket).is_some_and(peer_closed) {
            self.fail_now(settled);
        }
        let start = self.written;
        if self.open().is_none() {
            return;
        }
        let Some(w) = self.writer.as_mut() else { return };
        let mut error = None;
        while self.written < self.pending.len() {
            match w.write(&self.pending[self.written..]) {
                Ok(0) => {
                    error = Some(std::io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let network = self.network();
        if network {
            self.sent += (self.written - start) as u64;
        }
        let (mut lines, mut gap) = (0, 0);
        while self.next_line < self.lines.len() && self.lines[self.next_line].0 <= self.written {
            gap += self.lines[self.next_line].1;
            lines += 1;
            self.next_line += 1;
        }
        if lines > 0 {
            if network {
                let end = self.sent - (self.written - self.line_start()) as u64;
                self.unconfirmed.push_back((end, lines, gap));
            } else {
                settled.shipped += lines;
            }
        }
        if let Some(e) = error {
            self.write_failed(&e, settled);
        }
        if network {
            self.settle(settled);
        }
        if !self.has_pending() {
            self.pending.clear();
            self.lines.clear();
            self.next_line = 0;
            self.written = 0;
        }
    }

    /// A write failed (not a full socket buffer: an error).
    fn write_failed(&mut self, e: &std::io::Error, settled: &mut Settled) {
        let fragment = (self.written - self.line_start()) as u64;
        match self.writer.as_mut() {
            Some(Writer::File(f)) => {
                // A full disk takes part of a line: cut the file back to where the line started.
                // The lines not written are lost, and the next line shipped reports them.
                if fragment > 0 {
                    let cut = f.stream_position().ok().and_then(|end| end.checked_sub(fragment));
                    if let Err(te) = cut.map_or(Err(std::io::ErrorKind::Other.into()), |len| f.set_len(len)) {
                        // The next open starts on a new line.
                        tracing::warn!("access log: cannot remove a partial line after a write error ({e}): {te}");
                    }
                }
                self.drop_pending(settled);
                self.writer = None;
                self.back_off();
            }
            // The same descriptor continues the line once it takes bytes again.
            Some(Writer::Stdout) => {
                self.writer = None;
                self.back_off();
            }
            Some(Writer::Tcp(_) | Writer::Unix(_)) => self.fail(settled),
            None => {}
        }
    }

    /// What to do with queued records now. A network sink that has taken nothing for
    /// [`SINK_WRITE_TIMEOUT`] while bytes were waiting is given up here (stalled), but only
    /// between lines: one stalled in the middle of a line is kept until it takes the rest.
    pub(super) fn next_step(&mut self, settled: &mut Settled) -> Step {
        if self.has_pending() {
            if self.writer.as_ref().and_then(Writer::socket).is_none() {
                return Step::Hold;
            }
            self.settle(settled);
            if self.progress_at.elapsed() < SINK_WRITE_TIMEOUT || self.mid_line() {
                return Step::Hold;
            }
            self.fail(settled);
            return Step::Discard;
        }
        if self.writer.is_none() {
            return if Instant::now() >= self.retry_at { Step::Write } else { Step::Discard };
        }
        self.settle(settled);
        let waiting = self.sent - self.taken;
        if waiting == 0 {
            return Step::Write;
        }
        if self.progress_at.elapsed() >= SINK_WRITE_TIMEOUT {
            self.fail(settled);
            return Step::Discard;
        }
        if waiting < MAX_UNCONFIRMED_BYTES { Step::Write } else { Step::Hold }
    }

    /// Waits up to `timeout`, less when a socket with lines waiting for it becomes writable.
    pub(super) fn wait(&self, timeout: Duration) {
        match self.writer.as_ref().and_then(Writer::socket).filter(|_| self.has_pending()) {
            Some(fd) => {
                let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: poll(2) on one valid pollfd on the stack.
                unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
            }
            None => std::thread::sleep(timeout),
        }
    }

    /// Lines are waiting and there is a sink to write them to.
    pub(super) fn flushing(&self) -> bool {
        self.has_pending() && self.writer.is_some()
    }

    /// Reopens a `file:` sink (after logrotate moved it), once no line is half-written to the
    /// old file; returns false when the reopen has to wait for that.
    pub(super) fn reopen(&mut self) -> bool {
        if !matches!(self.writer, Some(Writer::File(_))) {
            return true;
        }
        if self.mid_line() {
            return false;
        }
        self.writer = None;
        self.retry_at = Instant::now();
        true
    }
}

/// Whether the peer of a stream socket has closed or reset it (a sink never sends data, so
/// anything readable means EOF or an error).
fn peer_closed(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: non-blocking peek of one byte into a stack buffer on a valid socket fd.
    let n = unsafe { libc::recv(fd, byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
}

/// A file that ends in the middle of a line (a crash, another writer, a cut that failed) gets a
/// newline, so that the first line weir writes is a line of its own.
fn start_on_a_new_line(f: &mut std::fs::File) {
    let Ok(len) = f.metadata().map(|m| m.len()) else { return };
    let mut last = [0u8; 1];
    if len > 0 && f.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
        let _ = f.write_all(b"\n");
    }
}
