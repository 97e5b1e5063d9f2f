//! The access-log shipper: one thread that drains every worker's ring, formats NDJSON lines in
//! batches and writes them to the sink (stdout, a file reopened on SIGUSR1, TCP or a unix
//! socket, reconnected with back-off). Owns the gap accounting: records dropped because a ring
//! was full or the sink failed are counted, and the next shipped line carries how many were
//! lost before it (`dropped_before`). A network sink that takes nothing is written at most
//! [`MAX_UNCONFIRMED_BYTES`] per connection and, once it has taken nothing for
//! [`SINK_WRITE_TIMEOUT`], dropped and retried with back-off that only a sink taking lines
//! resets; while there is no sink to write to, records are drained and counted, not formatted.
//! So a stalled sink costs the node neither CPU nor megabytes of loopback traffic.
//! Must not: make a worker wait: a slow, dead or never-reading sink only stalls this thread,
//! and the rings absorb or drop.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_core::config::LogSink;
use weir_proxy::LogSource;

/// Records formatted per write.
const BATCH_RECORDS: usize = 512;
/// How long a write to a network sink may block before the batch is dropped, and how long a
/// connected network sink may take nothing before it is given up as stalled.
const SINK_WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Bytes written to a network sink connection that its peer has not taken yet, at most: a
/// sink that stops reading gets no more than this, not the socket buffers' megabytes.
pub const MAX_UNCONFIRMED_BYTES: u64 = 1 << 20;
/// A network sink connection that has taken lines for this long resets the back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Counters the admin server reads.
#[derive(Debug, Default)]
pub struct ShipperStats {
    /// Lines the sink has taken (for a network sink: acknowledged by its side of the socket).
    pub shipped: AtomicU64,
    /// Records lost because the sink failed (ring drops are counted by the workers).
    pub sink_dropped: AtomicU64,
    /// Set by SIGUSR1: reopen the file sink (after logrotate moved it).
    pub reopen: AtomicBool,
}

/// The running shipper.
#[derive(Debug)]
pub struct Shipper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Shared counters.
    pub stats: Arc<ShipperStats>,
    ring_dropped: Vec<Arc<AtomicU64>>,
}

impl Shipper {
    /// Starts shipping from `sources` to `sink`.
    /// `drop_caps`: the thread gives up every capability first (it needs none).
    pub fn start(sink: LogSink, sources: Vec<LogSource>, drop_caps: bool) -> std::io::Result<Shipper> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ShipperStats::default());
        let ring_dropped = sources.iter().map(|s| s.dropped.clone()).collect();
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new().name("weir-logship".into()).spawn(move || {
                if drop_caps && let Err(e) = crate::privileges::drop_thread_caps(&Default::default()) {
                    tracing::warn!("log shipper: cannot drop capabilities: {e}");
                }
                run(sink, sources, stop, stats)
            })?
        };
        Ok(Shipper { stop, thread: Some(thread), stats, ring_dropped })
    }

    /// Records dropped in total (full rings + sink failures).
    pub fn dropped(&self) -> u64 {
        self.ring_dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>()
            + self.stats.sink_dropped.load(Ordering::Relaxed)
    }

    /// Ships what is queued (bounded by `timeout`) and stops.
    pub fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + timeout;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

enum Writer {
    Stdout(std::io::Stdout),
    File(std::fs::File),
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The sink and its connection state.
struct Sink {
    kind: LogSink,
    writer: Option<Writer>,
    retry_at: Instant,
    backoff: Duration,
    /// Bytes written on the current network connection.
    sent: u64,
    /// Batches written on the current network connection that its peer has not taken yet:
    /// (end offset in `sent`, lines, gap the lines reported). A write only puts bytes in our
    /// socket buffer; they count as shipped once the peer's stack has them (SIOCOUTQ), and as
    /// dropped — with the gap they carried — if the connection is abandoned before that.
    unconfirmed: std::collections::VecDeque<(u64, u64, u64)>,
    /// Bytes of `sent` the peer has taken.
    taken: u64,
    /// When the peer last took bytes (or the connection opened).
    progress_at: Instant,
    /// When the current connection opened.
    opened_at: Instant,
}

/// What the shipper does with the records queued in the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Format them and write them to the sink.
    Write,
    /// Leave them in the rings: a network sink is behind by [`MAX_UNCONFIRMED_BYTES`] but took
    /// bytes within [`SINK_WRITE_TIMEOUT`]. Rings that fill meanwhile drop (and count).
    Hold,
    /// Take them out of the rings and count them lost, without formatting: there is no sink to
    /// write to until the back-off ends.
    Discard,
}

/// What the sink did with lines since the last call of [`Sink::settle`].
#[derive(Default)]
struct Settled {
    shipped: u64,
    /// Lines lost.
    lost: u64,
    /// Lost lines plus the gaps they were to report: what the next shipped line must report.
    gap: u64,
}

impl Sink {
    fn new(kind: LogSink) -> Sink {
        let now = Instant::now();
        Sink {
            kind,
            writer: None,
            retry_at: now,
            backoff: Duration::from_millis(100),
            sent: 0,
            unconfirmed: Default::default(),
            taken: 0,
            progress_at: now,
            opened_at: now,
        }
    }

    fn open(&mut self) -> Option<&mut Writer> {
        if self.writer.is_none() && Instant::now() >= self.retry_at {
            let opened = match &self.kind {
                LogSink::Off => None,
                LogSink::Stdout => Some(Writer::Stdout(std::io::stdout())),
                LogSink::File(p) => {
                    std::fs::OpenOptions::new().create(true).append(true).open(p).ok().map(Writer::File)
                }
                LogSink::Tcp(addr) => std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
                    .ok()
                    .and_then(|mut a| a.next())
                    .and_then(|a| TcpStream::connect_timeout(&a, SINK_WRITE_TIMEOUT).ok())
                    .and_then(|s| s.set_write_timeout(Some(SINK_WRITE_TIMEOUT)).ok().map(|_| Writer::Tcp(s))),
                LogSink::Unix(p) => UnixStream::connect(p)
                    .ok()
                    .and_then(|s| s.set_write_timeout(Some(SINK_WRITE_TIMEOUT)).ok().map(|_| Writer::Unix(s))),
            };
            match opened {
                Some(w) => {
                    // The back-off is reset only by a sink that takes lines (`settle`): one
                    // that accepts connections and never reads keeps backing off.
                    self.writer = Some(w);
                    self.progress_at = Instant::now();
                    self.opened_at = Instant::now();
                }
                None => {
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.writer.as_mut()
    }

    /// Drops the connection and allows an immediate reconnect.
    fn fail_now(&mut self, settled: &mut Settled) {
        self.abandon(settled);
        self.retry_at = Instant::now();
    }

    fn fail(&mut self, settled: &mut Settled) {
        self.abandon(settled);
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    /// Closes the connection; lines its peer never took are lost.
    fn abandon(&mut self, settled: &mut Settled) {
        self.settle(settled);
        for (_, lines, gap) in self.unconfirmed.drain(..) {
            settled.lost += lines;
            settled.gap += lines + gap;
        }
        self.writer = None;
        self.sent = 0;
        self.taken = 0;
    }

    /// Moves lines the peer has taken from unconfirmed to shipped.
    fn settle(&mut self, settled: &mut Settled) {
        let fd = match &self.writer {
            Some(Writer::Tcp(s)) => s.as_raw_fd(),
            Some(Writer::Unix(s)) => s.as_raw_fd(),
            _ => return,
        };
        if self.unconfirmed.is_empty() {
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

    /// Writes one batch of `lines` lines. Returns false when it could not be written (the lines
    /// are lost); lines written to a network sink are reported through `settled` once the peer
    /// has taken them.
    fn write(&mut self, bytes: &[u8], lines: u64, gap: u64, settled: &mut Settled) -> bool {
        // A network sink that has closed its side (FIN) would still accept a write into the
        // socket buffer, silently losing the batch: check first and reconnect instead.
        let closed = match &self.writer {
            Some(Writer::Tcp(s)) => peer_closed(s.as_raw_fd()),
            Some(Writer::Unix(s)) => peer_closed(s.as_raw_fd()),
            _ => false,
        };
        if closed {
            self.fail_now(settled);
        }
        let Some(w) = self.open() else { return false };
        let (ok, network) = match w {
            Writer::Stdout(s) => (s.write_all(bytes).and_then(|_| s.flush()).is_ok(), false),
            Writer::File(f) => (f.write_all(bytes).is_ok(), false),
            Writer::Tcp(s) => (s.write_all(bytes).is_ok(), true),
            Writer::Unix(s) => (s.write_all(bytes).is_ok(), true),
        };
        if !ok {
            // A partial line may have gone out: the connection is dropped and reopened, so
            // the next batch starts on a fresh stream.
            self.fail(settled);
            return false;
        }
        if network {
            self.sent += bytes.len() as u64;
            self.unconfirmed.push_back((self.sent, lines, gap));
            self.settle(settled);
        } else {
            settled.shipped += lines;
        }
        true
    }

    /// What to do with queued records now. A network sink that has taken nothing for
    /// [`SINK_WRITE_TIMEOUT`] while bytes were waiting is given up here (stalled).
    fn next_step(&mut self, settled: &mut Settled) -> Step {
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

    fn reopen(&mut self) {
        if let Some(Writer::File(_)) = self.writer {
            self.writer = None;
            self.retry_at = Instant::now();
        }
    }
}

/// Whether the peer of a stream socket has closed or reset it (a sink never sends data, so
/// anything readable means EOF or an error).
fn peer_closed(fd: std::os::fd::RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: non-blocking peek of one byte into a stack buffer on a valid socket fd.
    let n = unsafe { libc::recv(fd, byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
}

fn run(kind: LogSink, mut sources: Vec<LogSource>, stop: Arc<AtomicBool>, stats: Arc<ShipperStats>) {
    let mut sink = Sink::new(kind);
    let mut seen_dropped = vec![0u64; sources.len()];
    // Lines lost at the sink since the last shipped line (reported by the next one).
    let mut sink_gap = 0u64;
    let mut out = Vec::with_capacity(BATCH_RECORDS * 300);
    loop {
        if stats.reopen.swap(false, Ordering::Relaxed) {
            sink.reopen();
        }
        let stopping = stop.load(Ordering::SeqCst);
        let mut settled = Settled::default();
        let step = sink.next_step(&mut settled);
        let mut lines = 0u64;
        let mut embedded_gap = 0u64;
        if step != Step::Hold {
            for (i, src) in sources.iter_mut().enumerate() {
                let n = src.consumer.slots().min(BATCH_RECORDS);
                if n == 0 {
                    continue;
                }
                let Ok(chunk) = src.consumer.read_chunk(n) else { continue };
                for record in chunk {
                    let dropped_now = src.dropped.load(Ordering::Relaxed);
                    let gap = dropped_now - seen_dropped[i] + std::mem::take(&mut sink_gap);
                    seen_dropped[i] = dropped_now;
                    embedded_gap += gap;
                    if step == Step::Write {
                        record.write_json(gap, &mut out);
                    }
                    lines += 1;
                }
            }
        }
        if lines > 0 {
            if step == Step::Discard || !sink.write(&out, lines, embedded_gap, &mut settled) {
                settled.lost += lines;
                settled.gap += lines + embedded_gap;
            }
            out.clear();
        }
        sink_gap += settled.gap;
        stats.shipped.fetch_add(settled.shipped, Ordering::Relaxed);
        stats.sink_dropped.fetch_add(settled.lost, Ordering::Relaxed);
        if lines == 0 {
            if stopping {
                return;
            }
            std::thread::sleep(IDLE_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_to(addr: std::net::SocketAddr) -> Sink {
        Sink::new(LogSink::Tcp(addr.to_string()))
    }

    /// Writes 64 KiB batches whenever the sink says so until it gives the connection up
    /// (bounded); checks on the way that it never has more than the cap plus one batch
    /// waiting, and that it held at least once. Returns the bytes the sink took.
    fn write_until_given_up(sink: &mut Sink, settled: &mut Settled) -> u64 {
        let batch = vec![b'x'; 64 * 1024];
        let (mut held, mut taken) = (false, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "a sink that never reads was not given up");
            taken = taken.max(sink.taken);
            match sink.next_step(settled) {
                Step::Write => {
                    assert!(sink.write(&batch, 1, 0, settled), "write failed");
                    let waiting = sink.sent - sink.taken;
                    assert!(waiting <= MAX_UNCONFIRMED_BYTES + batch.len() as u64, "{waiting} bytes waiting");
                }
                Step::Hold => {
                    held = true;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Step::Discard => break,
            }
        }
        assert!(held, "the writer never held back");
        assert!(sink.writer.is_none(), "the stalled connection was kept");
        taken
    }

    #[test]
    fn a_sink_that_never_reads_gets_a_bounded_amount_then_backs_off_without_reset() {
        // Accepts and never reads.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let addr = listener.local_addr().expect("addr");
        let held = std::thread::spawn(move || listener.incoming().take(2).flatten().collect::<Vec<_>>());
        let mut sink = sink_to(addr);
        let mut settled = Settled::default();

        // Given up after taking nothing for SINK_WRITE_TIMEOUT: its lines lost, back-off.
        let taken = write_until_given_up(&mut sink, &mut settled);
        assert!(settled.lost > 0 && settled.gap >= settled.lost, "lost {} gap {}", settled.lost, settled.gap);
        assert!(taken < 64 << 20, "the sink's socket took {taken} bytes without reading");
        assert_eq!(sink.backoff, Duration::from_millis(200));
        assert_eq!(sink.next_step(&mut settled), Step::Discard, "reconnected before the back-off");

        // It reconnects after the back-off; connecting alone does not reset the back-off.
        std::thread::sleep(Duration::from_millis(110));
        write_until_given_up(&mut sink, &mut settled);
        assert_eq!(sink.backoff, Duration::from_millis(400), "a stalled sink must keep backing off");
        assert_eq!(held.join().expect("accepted").len(), 2);
    }

    #[test]
    fn a_sink_that_reads_resets_the_back_off() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let addr = listener.local_addr().expect("addr");
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let mut sink = sink_to(addr);
        sink.backoff = Duration::from_secs(5);
        let mut settled = Settled::default();
        // 2 MiB in 64 KiB lines: more than a sink that never reads could take.
        let line = vec![b'x'; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut written = 0;
        while written < 32 {
            assert!(Instant::now() < deadline, "the reading sink did not keep up");
            match sink.next_step(&mut settled) {
                Step::Write => {
                    assert!(sink.write(&line, 1, 0, &mut settled));
                    written += 1;
                }
                Step::Hold => std::thread::sleep(Duration::from_millis(1)),
                Step::Discard => panic!("a reading sink was given up"),
            }
        }
        while settled.shipped < 32 {
            assert!(Instant::now() < deadline, "the reading sink never took every line");
            std::thread::sleep(Duration::from_millis(1));
            sink.settle(&mut settled);
        }
        assert_eq!(sink.backoff, Duration::from_millis(100), "a sink that takes lines resets the back-off");
        sink.writer = None;
        assert_eq!(reader.join().expect("reader"), 32 * 64 * 1024);
    }
}
