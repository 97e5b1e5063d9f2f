//! Access-log sinks on loopback for weir's `tcp:` sink: [`LineSink`] reads what it receives
//! (handing every line to a channel, or only counting lines) and can go away and come back on
//! the same address; [`StalledSink`] accepts connections and never reads, with a small receive
//! buffer so the writer stalls quickly. Both stop on drop. Must not: block the test that owns
//! them (each runs on its own threads).

use std::io::{BufRead as _, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Accepts on `listener` until `stop` is set (and a connection wakes it); hands each accepted
/// connection to `each` after recording a clone in `conns`.
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    mut each: impl FnMut(TcpStream) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                return; // drops the listener: the address refuses connections
            }
            let Ok(conn) = conn else { continue };
            if let Ok(c) = conn.try_clone() {
                conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
            }
            each(conn);
        }
    })
}

/// Stops an accept loop: sets `stop`, wakes the blocked accept with a connection, waits for
/// the thread (the listener is closed when it returns), then shuts every accepted connection.
fn stop_accepting(
    addr: SocketAddr,
    stop: &AtomicBool,
    thread: &mut Option<JoinHandle<()>>,
    conns: &Mutex<Vec<TcpStream>>,
) {
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = thread.take() {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        let _ = t.join();
    }
    for c in conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
}

/// A sink that reads: every line received goes down a channel (or is only counted).
#[derive(Debug)]
pub struct LineSink {
    /// Where weir ships to (`tcp:ADDR`).
    pub addr: SocketAddr,
    lines: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl LineSink {
    /// Starts on a fresh loopback port; every line received is sent to the returned channel.
    pub fn start() -> std::io::Result<(LineSink, mpsc::Receiver<String>)> {
        Ok(LineSink::start_on(TcpListener::bind("127.0.0.1:0")?))
    }

    /// Starts on `listener` (e.g. bound again to the address of a sink that went away).
    pub fn start_on(listener: TcpListener) -> (LineSink, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        (LineSink::serve(listener, Some(tx)), rx)
    }

    /// Starts on a fresh loopback port, reading and counting lines without keeping them (for
    /// long runs).
    pub fn counting() -> std::io::Result<LineSink> {
        Ok(LineSink::serve(TcpListener::bind("127.0.0.1:0")?, None))
    }

    fn serve(listener: TcpListener, tx: Option<mpsc::Sender<String>>) -> LineSink {
        let addr = listener.local_addr().expect("a bound listener has an address");
        let (lines, stop, conns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::default());
        let accept = {
            let lines = lines.clone();
            accept_loop(listener, stop.clone(), Arc::clone(&conns), move |conn| {
                let (tx, lines) = (tx.clone(), lines.clone());
                std::thread::spawn(move || {
                    for line in BufReader::new(conn).lines().map_while(Result::ok) {
                        lines.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = &tx
                            && tx.send(line).is_err()
                        {
                            return;
                        }
                    }
                });
            })
        };
        LineSink { addr, lines, stop, conns, accept: Some(accept) }
    }

    /// Lines received so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Goes away: stops listening (the address refuses connections) and closes every
    /// connection, before it returns.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        stop_accepting(self.addr, &self.stop, &mut self.accept, &self.conns);
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A sink that accepts connections and never reads (a stalled collector). Its receive buffer
/// is 4 KiB, so a writer fills it quickly.
#[derive(Debug)]
pub struct StalledSink {
    /// Where weir ships to (`tcp:ADDR`).
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl StalledSink {
    /// Starts on a fresh loopback port.
    pub fn start() -> std::io::Result<StalledSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        crate::net::set_recv_buffer(&listener, 4096)?;
        let addr = listener.local_addr()?;
        let (accepted, stop, conns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::default());
        let accept = {
            let accepted = accepted.clone();
            // The connection is held in `conns` (and never read) until the sink stops.
            accept_loop(listener, stop.clone(), Arc::clone(&conns), move |_conn| {
                accepted.fetch_add(1, Ordering::Relaxed);
            })
        };
        Ok(StalledSink { addr, accepted, stop, conns, accept: Some(accept) })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for StalledSink {
    fn drop(&mut self) {
        stop_accepting(self.addr, &self.stop, &mut self.accept, &self.conns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_line_sink_delivers_lines_and_refuses_once_killed() {
        let (sink, rx) = LineSink::start().expect("sink");
        let mut c = TcpStream::connect(sink.addr).expect("connect");
        c.write_all(b"{\"a\":1}\n{\"b\":2}\n").expect("write");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("line"), "{\"a\":1}");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("line"), "{\"b\":2}");
        assert_eq!(sink.lines(), 2);
        let addr = sink.addr;
        sink.kill();
        assert!(TcpStream::connect(addr).is_err(), "a killed sink still accepts");
        let mut b = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut c, &mut b).unwrap_or(0), 0, "its connections are closed");
    }

    #[test]
    fn a_stalled_sink_accepts_and_takes_only_its_buffers() {
        let sink = StalledSink::start().expect("sink");
        let c = TcpStream::connect(sink.addr).expect("connect");
        crate::eventually(Duration::from_secs(5), "the connection accepted", || (sink.accepted() == 1).then_some(()));
        c.set_nonblocking(true).expect("nonblocking");
        let chunk = [b'x'; 64 * 1024];
        let mut written = 0usize;
        let mut c = c;
        // A writer that never blocks stops at the socket buffers: bounded, far below 64 MiB.
        for _ in 0..1024 {
            match c.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        assert!(written < 16 * 1024 * 1024, "a never-reading sink took {written} bytes");
    }
}
