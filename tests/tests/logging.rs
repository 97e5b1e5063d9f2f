//! Access-log shipping: lines are complete NDJSON records; a sink that stalls never slows or
//! fails a request (records are dropped and counted, memory stays bounded); a sink that goes
//! away and comes back receives lines again, the first of them carrying the gap.

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use weir_tests::{Client, Endpoint, LineSink, StalledSink, Weir, WeirProcess, eventually};

use crate::data_path::service;

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

pub(crate) fn logged_config(sink: &str, ring: usize, services: &str) -> String {
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n[access_log]\nsink = \"{sink}\"\nring_records = {ring}\n{services}"
    )
}

fn recv_json(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    let line = rx.recv_timeout(Duration::from_secs(5)).expect("an access-log line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn lines_carry_the_request_and_its_outcome() {
    let (sink, rx) = LineSink::start().expect("sink");
    let addr = sink.addr;
    let ep = Endpoint::start("e");
    let weir =
        Weir::start(&logged_config(&format!("tcp:{addr}"), 1024, &service("logged", "127.10.8.1:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    assert_eq!(c.get("/cart?id=7", "logged").status, 200);
    let v = recv_json(&rx);
    assert_eq!(v["service"], "logged");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/cart?id=7");
    assert_eq!(v["authority"], "logged");
    assert_eq!(v["status"], 200);
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["endpoint"], ep.addr.to_string());
    assert_eq!(v["attempts"], 1);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    // A request weir answered itself carries the reason.
    assert_eq!(c.get("/", "unknown").status, 404);
    let v = recv_json(&rx);
    assert_eq!((v["status"].as_u64(), v["error"].as_str()), (Some(404), Some("no-route")));
    weir.wait_metric("weir_access_log_records_total{result=\"shipped\"}", 2.0);
}

#[test]
fn a_stalled_sink_drops_records_and_never_fails_a_request() {
    // A sink that accepts and never reads.
    let stalled = StalledSink::start().expect("sink");
    let addr = stalled.addr;
    let ep = Endpoint::start("e");
    const RING: usize = 4096;
    let weir = WeirProcess::start(
        WEIR,
        &logged_config(&format!("tcp:{addr}"), RING, &service("stall", "127.10.8.2:80", &[&ep], "")),
        None,
    );
    let rss_start = weir_tests::rss_kib(weir.pid() as u32);
    let proxy = weir.proxy;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(proxy);
                (0..12_500).filter(|_| c.request("GET", "/", "stall", b"").map(|r| r.status).ok() != Some(200)).count()
            })
        })
        .collect();
    let failed: usize = threads.into_iter().map(|t| t.join().expect("load")).sum();
    assert_eq!(failed, 0, "requests failed while the log sink was stalled");
    let mut admin = Client::connect(weir.admin);
    let metrics = admin.get("/metrics", "admin").body_string();
    let dropped = weir_tests::metric_value(&metrics, "weir_access_log_records_total{result=\"dropped\"}");
    assert!(dropped > 0.0, "50 000 records cannot all fit a stalled sink; none was counted as dropped");
    // Lines count as shipped only once the sink's side of the socket has taken them, so the
    // two counters never add up to more than the records made (the rest is still in flight).
    let shipped = weir_tests::metric_value(&metrics, "weir_access_log_records_total{result=\"shipped\"}");
    assert!(shipped + dropped <= 50_000.0, "shipped {shipped} + dropped {dropped} > 50 000 records");
    // Bound: the rings (2 workers × RING records of ~440 bytes) plus a few MiB of buffers;
    // the records that did not fit are dropped, not queued.
    let grown = weir_tests::rss_kib(weir.pid() as u32).saturating_sub(rss_start);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB with a stalled sink");
    assert!(stalled.accepted() >= 1, "weir never connected to the sink");
    drop(weir);
}

#[test]
fn a_sink_that_comes_back_receives_lines_with_the_gap_count() {
    let (sink, rx) = LineSink::start().expect("sink");
    let addr = sink.addr;
    let ep = Endpoint::start("e");
    let weir = Weir::start(&logged_config(&format!("tcp:{addr}"), 1024, &service("gap", "127.10.8.3:80", &[&ep], "")));
    let mut c = Client::connect(weir.proxy);
    assert_eq!(c.get("/before", "gap").status, 200);
    assert_eq!(recv_json(&rx)["path"], "/before");

    // The sink goes away: it stops listening and closes its connections (before kill
    // returns).
    sink.kill();
    drop(rx);
    // Requests keep working; their records cannot be shipped.
    let lost: u32 = 20;
    for _ in 0..lost {
        assert_eq!(c.get("/during", "gap").status, 200);
    }
    weir.wait_metric("weir_access_log_records_total{result=\"dropped\"}", f64::from(lost));

    // The sink comes back on the same address.
    let again = TcpListener::bind(addr).expect("rebind the sink address");
    let (_again, rx) = LineSink::start_on(again);
    let v = eventually(Duration::from_secs(10), "a line after the sink returned", || {
        assert_eq!(c.get("/after", "gap").status, 200);
        rx.recv_timeout(Duration::from_millis(300)).ok()
    });
    let v: serde_json::Value = serde_json::from_str(&v).expect("JSON");
    assert_eq!(v["path"], "/after");
    assert!(
        v["dropped_before"].as_u64().is_some_and(|n| n >= u64::from(lost)),
        "no gap count on the first line back: {v}"
    );
}

#[test]
fn sigusr1_reopens_the_log_file_after_rotation() {
    let ep = Endpoint::start("e");
    let dir = weir_tests::scratch_dir("logrotate");
    let log = dir.join("access.log");
    let weir = WeirProcess::start(
        WEIR,
        &logged_config(&format!("file:{}", log.display()), 1024, &service("rot", "127.10.8.4:80", &[&ep], "")),
        None,
    );
    let mut c = Client::connect(weir.proxy);
    assert_eq!(c.get("/one", "rot").status, 200);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    eventually(Duration::from_secs(5), "the first line in the file", || read(&log).contains("\"/one\"").then_some(()));
    // logrotate moves the file away, then tells weir.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    weir.signal(libc::SIGUSR1);
    // The signal is handled asynchronously and the file reopened on the next write: send
    // requests until one of them lands in a new file at the old path.
    let mut n = 0;
    eventually(Duration::from_secs(5), "a line in a new file after SIGUSR1", || {
        n += 1;
        assert_eq!(c.get(&format!("/probe-{n}"), "rot").status, 200);
        read(&log).contains("\"/probe-").then_some(())
    });
    assert_eq!(c.get("/two", "rot").status, 200);
    eventually(Duration::from_secs(5), "the next line in the new file", || {
        read(&log).contains("\"/two\"").then_some(())
    });
    assert!(!read(&rotated).contains("\"/two\""), "a line went to the rotated file");
    assert!(read(&rotated).contains("\"/one\""), "the rotated file lost its lines");
}

/// Every line of `text` as JSON: panics naming the first line that is not (a partial record).
pub(crate) fn json_lines(text: &str, what: &str) -> Vec<serde_json::Value> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: line {} is not JSON ({e}): {l:?}", i + 1))
        })
        .collect()
}

#[test]
fn a_tcp_sink_that_reads_only_later_receives_only_whole_lines() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let sink = format!("tcp:{}", listener.local_addr().expect("addr"));
    let incoming =
        std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| Box::new(c) as Box<dyn Read + Send>)));
    late_reader_gets_whole_lines(&sink, incoming);
}

#[test]
fn a_unix_sink_that_reads_only_later_receives_only_whole_lines() {
    let path = weir_tests::scratch_dir("unixsink").join("sink.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind the sink");
    let sink = format!("unix:{}", path.display());
    let incoming =
        std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| Box::new(c) as Box<dyn Read + Send>)));
    late_reader_gets_whole_lines(&sink, incoming);
}

/// A sink that accepts connections and reads nothing while weir fills it, then reads: every
/// connection must carry whole JSON lines only, up to its end.
fn late_reader_gets_whole_lines(
    sink: &str,
    incoming: impl Iterator<Item = std::io::Result<Box<dyn Read + Send>>> + Send + 'static,
) {
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: std::sync::Arc<parking_lot::Mutex<Vec<std::thread::JoinHandle<Vec<u8>>>>> = Default::default();
    {
        let (reading, readers) = (reading.clone(), readers.clone());
        std::thread::spawn(move || {
            for conn in incoming.take(64).flatten() {
                let reading = reading.clone();
                readers.lock().push(std::thread::spawn(move || {
                    let mut conn = conn;
                    // Accepts, and reads nothing until the test says so.
                    while !reading.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let mut got = Vec::new();
                    let _ = conn.read_to_end(&mut got);
                    got
                }));
            }
        });
    }
    let ep = Endpoint::start("e");
    let weir = Weir::start(&logged_config(sink, 1024, &service("late", "127.10.8.6:80", &[&ep], "")));
    // Load until the test stops it (at most 60 s): the sink's buffers fill, writes to it stall.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, stop) = (weir.proxy, stop.clone());
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut c = Client::connect(proxy);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline {
                    assert_eq!(c.get("/stalled", "late").status, 200);
                }
            })
        })
        .collect();
    let dropped = || weir.metric("weir_access_log_records_total{result=\"dropped\"}");
    let shipped = || weir.metric("weir_access_log_records_total{result=\"shipped\"}");
    eventually(Duration::from_secs(30), "thousands of records dropped while the sink reads nothing", || {
        (dropped() >= 5000.0).then_some(())
    });
    // The sink starts reading; lines flow again.
    reading.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = shipped();
    eventually(Duration::from_secs(20), "lines shipped after the sink started reading", || {
        (shipped() > before + 100.0).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        l.join().expect("load");
    }
    // weir stops: every connection ends; what each carried must be whole lines.
    assert!(weir.shutdown());
    let handles: Vec<_> = readers.lock().drain(..).collect();
    assert!(!handles.is_empty(), "the sink was never connected");
    let mut lines = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let got = String::from_utf8(h.join().expect("reader")).expect("UTF-8");
        let tail = got.rsplit_once('\n').map_or(got.as_str(), |(_, t)| t);
        assert!(tail.is_empty(), "connection {i} ended in a partial line: {tail:?}");
        lines += json_lines(&got, &format!("connection {i}")).len();
    }
    assert!(lines > 0, "the sink received no line");
}
