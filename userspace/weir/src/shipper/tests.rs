//! The shipper's sink over real sockets and files: a sink that never reads gets a bounded
//! amount and is given up only between lines; one stalled in the middle of a line gets the
//! rest of it when it reads; a sink that reads resets the back-off; a file that ends mid-line
//! gets a newline before weir's first line.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use weir_core::config::LogSink;

use super::sink::{Settled, Sink, Step, Writer};
use super::{MAX_PENDING_BYTES, MAX_UNCONFIRMED_BYTES, SINK_WRITE_TIMEOUT};

fn sink_to(addr: std::net::SocketAddr) -> Sink {
    Sink::new(LogSink::Tcp(addr.to_string()))
}

/// A JSON line of about `len` bytes, numbered.
fn line(n: usize, len: usize) -> Vec<u8> {
    let mut l = format!("{{\"n\":{n},\"pad\":\"").into_bytes();
    l.resize(len.saturating_sub(3).max(l.len()), b'x');
    l.extend_from_slice(b"\"}\n");
    l
}

#[derive(Debug, PartialEq, Eq)]
enum Stalled {
    /// The connection was given up (between two lines).
    GivenUp,
    /// Kept: a line is half-written and the sink takes nothing.
    HeldMidLine,
}

/// Queues 1 KiB lines whenever the sink says so until it gives the connection up or holds it
/// mid-line for three stall timeouts (bounded); checks on the way that it never has more than
/// the cap plus one batch waiting. Returns how it ended and the bytes the sink took.
fn write_until_stalled(sink: &mut Sink, settled: &mut Settled) -> (Stalled, u64) {
    let (mut n, mut taken) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut held_since, mut connected) = (None, false);
    loop {
        assert!(Instant::now() < deadline, "a sink that never reads was neither given up nor held");
        taken = taken.max(sink.taken);
        let step = sink.next_step(settled);
        if connected && sink.writer.is_none() {
            return (Stalled::GivenUp, taken);
        }
        match step {
            Step::Write => {
                while sink.pending_bytes() < 64 * 1024 {
                    sink.queue_line(&line(n, 1024), 0);
                    n += 1;
                }
                held_since = None;
            }
            Step::Hold => {
                if sink.mid_line() {
                    let since = *held_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= 3 * SINK_WRITE_TIMEOUT {
                        return (Stalled::HeldMidLine, taken);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Step::Discard => panic!("records discarded while the sink was connected"),
        }
        sink.flush(settled);
        connected |= sink.writer.is_some();
        let waiting = sink.sent - sink.taken;
        assert!(waiting <= MAX_UNCONFIRMED_BYTES + MAX_PENDING_BYTES as u64, "{waiting} bytes waiting");
    }
}

#[test]
fn a_sink_that_never_reads_gets_a_bounded_amount_and_is_given_up_only_between_lines() {
    // Accepts and never reads.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr");
    let held = std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut conns = Vec::new();
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((c, _)) => conns.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        conns
    });
    let mut sink = sink_to(addr);
    let mut settled = Settled::default();
    let (how, taken) = write_until_stalled(&mut sink, &mut settled);
    assert!(taken < 64 << 20, "the sink's socket took {taken} bytes without reading");
    match how {
        Stalled::GivenUp => {
            assert!(!sink.mid_line(), "given up in the middle of a line");
            // Lines written and not taken, and lines not written, are lost (and owed as a gap).
            assert!(settled.lost > 0 && settled.gap >= settled.lost, "lost {} gap {}", settled.lost, settled.gap);
            assert!(!sink.has_pending());
            assert_eq!(sink.backoff, Duration::from_millis(200), "connecting alone must not reset the back-off");
            assert_eq!(sink.next_step(&mut settled), Step::Discard, "reconnected before the back-off");
            assert!(sink.writer.is_none(), "reconnected before the back-off");
        }
        Stalled::HeldMidLine => {
            // Kept, not replaced by a new connection, and the back-off neither reset nor grown.
            assert!(sink.writer.is_some());
            assert_eq!(sink.backoff, Duration::from_millis(100));
        }
    }
    let accepted = held.join().expect("accepted").len();
    assert!(accepted <= 2, "{accepted} connections to a sink that never reads, within 3 s");
}

#[test]
fn a_sink_stalled_in_the_middle_of_a_line_gets_the_rest_of_it_when_it_reads() {
    let (ours, mut theirs) = UnixStream::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("nonblocking");
    let mut sink = Sink::new(LogSink::Unix("/nonexistent/sink.sock".into()));
    sink.writer = Some(Writer::Unix(ours));
    let mut settled = Settled::default();
    // One line larger than the socket's buffers, and two after it.
    let lines: Vec<Vec<u8>> = vec![line(0, 1 << 20), line(1, 300), line(2, 300)];
    for l in &lines {
        sink.queue_line(l, 0);
    }
    sink.flush(&mut settled);
    assert!(sink.mid_line(), "the first write took a 1 MiB line whole");
    // Stalled for longer than the timeout: kept, because a line is half-written.
    let stalled = Instant::now();
    while stalled.elapsed() < 2 * SINK_WRITE_TIMEOUT {
        assert_eq!(sink.next_step(&mut settled), Step::Hold);
        assert!(sink.writer.is_some(), "a connection was given up in the middle of a line");
        sink.flush(&mut settled);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The sink reads: the rest of the line, then the next lines.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = theirs.read_to_end(&mut got);
        got
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.has_pending() {
        assert!(Instant::now() < deadline, "the lines were never written");
        sink.next_step(&mut settled);
        sink.flush(&mut settled);
        sink.wait(Duration::from_millis(5));
    }
    while settled.shipped < 3 {
        assert!(Instant::now() < deadline, "the reader never took every line");
        sink.settle(&mut settled);
        std::thread::sleep(Duration::from_millis(1));
    }
    sink.writer = None;
    assert_eq!(reader.join().expect("reader"), lines.concat(), "the sink did not get exactly the whole lines");
    assert_eq!((settled.shipped, settled.lost), (3, 0));
}

#[test]
fn a_sink_that_reads_resets_the_back_off() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got.len()
    });
    let mut sink = sink_to(addr);
    sink.backoff = Duration::from_secs(5);
    let mut settled = Settled::default();
    // 2 MiB in 64 KiB lines: more than a sink that never reads could take.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut queued = 0;
    while queued < 32 || sink.has_pending() {
        assert!(Instant::now() < deadline, "the reading sink did not keep up");
        match sink.next_step(&mut settled) {
            Step::Write if queued < 32 => {
                sink.queue_line(&line(queued, 64 * 1024), 0);
                queued += 1;
            }
            Step::Discard => panic!("a reading sink was given up"),
            _ => {}
        }
        sink.flush(&mut settled);
        sink.wait(Duration::from_millis(1));
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

#[test]
fn a_file_that_ends_in_the_middle_of_a_line_gets_a_newline_before_weirs_first_line() {
    let dir = std::env::temp_dir().join(format!("weir-shipper-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("access.log");
    std::fs::write(&path, b"{\"n\":0}\n{\"n\":1,\"cut").expect("write");
    let mut sink = Sink::new(LogSink::File(path.clone()));
    let mut settled = Settled::default();
    assert_eq!(sink.next_step(&mut settled), Step::Write);
    sink.queue_line(b"{\"n\":2}\n", 0);
    sink.flush(&mut settled);
    assert_eq!(settled.shipped, 1);
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text, "{\"n\":0}\n{\"n\":1,\"cut\n{\"n\":2}\n");
    let _ = std::fs::remove_dir_all(&dir);
}
