//! HTTP/2 abuse (issue #13): clients that break the protocol's limits on purpose, frame by
//! frame (`tests/clients/h2_abuse.py`, Python's `h2` and `hyperframe`), against weir with one
//! worker. Each test proves three things: the abuser gets its limit (a refused stream, a 431,
//! a GOAWAY, a closed connection), the endpoint behind weir sees nothing it should not, and —
//! where the abuse could cost the worker time — a well-behaved client on the same worker is
//! served throughout ([`Bystander`]). Every wait is on observable state (the script's output,
//! metrics, the endpoint's counters); the scripts bound their own counts and time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_tests::{Behavior, Client, Endpoint, Weir, eventually, testkit};

use crate::raw::one_service;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/h2_abuse.py");

/// A result line of `key=value` pairs.
fn parse(line: &str) -> HashMap<String, String> {
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Runs `h2_abuse.py args…` to its end; its result line.
fn h2_abuse(args: &[&str]) -> HashMap<String, String> {
    let out = Command::new(testkit::tools::python()).arg(SCRIPT).args(args).output().expect("run h2_abuse.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "h2_abuse.py {args:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("h2_abuse.py {args:?}: {line}");
    parse(line)
}

/// `h2_abuse.py args…` as a child whose stdin and stdout the test drives.
struct Script {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Script {
    fn start(args: &[&str]) -> Script {
        let mut child = Command::new(testkit::tools::python())
            .arg(SCRIPT)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run h2_abuse.py");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Script { child, stdout }
    }

    /// The next line the script prints.
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).expect("read the script's output");
        assert!(!l.is_empty(), "the script ended early");
        l.trim().to_string()
    }

    /// Sends a line to the script.
    fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the script");
    }

    /// Closes its stdin, reads its last line and waits for it.
    fn finish(mut self) -> HashMap<String, String> {
        drop(self.child.stdin.take());
        let line = self.line();
        let status = testkit::proc::wait_exit(&mut self.child, Duration::from_secs(30)).expect("the script ends");
        assert!(status.success(), "h2_abuse.py failed: {status}");
        eprintln!("h2_abuse.py: {line}");
        parse(&line)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A well-behaved HTTP/1.1 client on the same worker, requesting one after the other until
/// stopped; every request must succeed.
struct Bystander {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Duration>>,
}

impl Bystander {
    fn start(proxy: SocketAddr) -> Bystander {
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(proxy);
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = c.get("/", "s");
                    assert_eq!(r.status, 200, "the bystander was not served: {}", r.body_string());
                    slowest = slowest.max(t0.elapsed());
                    served.fetch_add(1, Ordering::Relaxed);
                }
                slowest
            })
        };
        let b = Bystander { stop, served, thread: Some(thread) };
        // Served once before the abuse starts.
        eventually(Duration::from_secs(5), "the bystander's first answer", || (b.served() > 0).then_some(()));
        b
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops; checks it was served while `during` ran, none of its requests slower than 2 s.
    /// Returns what `during` returned and how many requests the bystander made in all.
    fn check_served_during<T>(mut self, during: impl FnOnce() -> T) -> (T, u64) {
        let before = self.served();
        let out = during();
        let after = self.served();
        self.stop.store(true, Ordering::Relaxed);
        let slowest = self.thread.take().expect("running").join().expect("the bystander was served every time");
        assert!(after > before, "the bystander was not served while the abuse ran");
        assert!(slowest < Duration::from_secs(2), "a bystander's request took {slowest:?}");
        (out, self.served())
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn closed(weir: &Weir, reason: &str) -> f64 {
    weir.metric(&format!("weir_http2_connections_closed_total{{reason=\"{reason}\"}}"))
}

/// Waits until the gauge `sample` reads `want`.
fn wait_gauge(weir: &Weir, sample: &str, want: f64) {
    eventually(Duration::from_secs(10), &format!("{sample} == {want}"), || (weir.metric(sample) == want).then_some(()));
}

#[test]
fn streams_beyond_the_concurrency_limit_are_refused_and_never_forwarded() {
    let ep = Endpoint::start("e");
    // Slow enough that the first streams are still open when the last ones arrive.
    ep.set(Behavior::Delay(Duration::from_millis(500)));
    // The default limit: 100 concurrent streams.
    let weir = Weir::start(&one_service(41, &[ep.addr], "", ""));
    let r = h2_abuse(&["streams", &weir.proxy.to_string(), "s", "130"]);
    assert_eq!((r["ok"].as_str(), r["refused"].as_str(), r["other"].as_str()), ("100", "30", "0"), "{r:?}");
    assert_eq!(ep.requests(), 100, "a refused stream reached the endpoint");
}

#[test]
fn streams_the_client_resets_stop_weirs_work_for_them_at_once() {
    let ep = Endpoint::start("e");
    ep.set(Behavior::Hang);
    let weir = Weir::start(&one_service(42, &[ep.addr], "http2_max_concurrent_streams = 10", ""));
    // Twice: 10 streams, forwarded (the endpoint never answers), then reset by the client:
    // weir drops each reset stream's attempt (its upstream connection closes), so the slots
    // are free for real and the next 10 are served, never refused.
    let mut s = Script::start(&["reset-after-accept", &weir.proxy.to_string(), "s", "10", "2", "3"]);
    for round in 1..=2u64 {
        assert_eq!(s.line(), format!("opened round={}", round - 1));
        eventually(Duration::from_secs(10), "weir forwards the round's streams", || {
            (ep.requests() == 10 * round).then_some(())
        });
        s.tell("reset");
        eventually(Duration::from_secs(5), "the reset streams' upstream connections closed", || {
            (weir.metric("weir_upstream_connections{service=\"s\"}") == 0.0).then_some(())
        });
    }
    // Then 10 more: all forwarded, none refused (the script waits 3 s for refusals).
    eventually(Duration::from_secs(10), "the third round forwarded", || (ep.requests() == 30).then_some(()));
    let r = s.finish();
    assert_eq!((r["refused"].as_str(), r["other"].as_str()), ("0", "0"), "{r:?}");
}

#[test]
fn an_oversized_header_block_is_refused_and_never_forwarded() {
    let ep = Endpoint::start("e");
    let weir = Weir::start(&one_service(43, &[ep.addr], "max_request_head_bytes = 16384", ""));
    let addr = weir.proxy.to_string();
    // Over the header list limit: the stream gets 431, the connection goes on.
    let r = h2_abuse(&["big-headers", &addr, "s", "20000"]);
    assert_eq!((r["first"].as_str(), r["second"].as_str()), ("status:431", "status:200"), "{r:?}");
    assert_eq!(ep.requests(), 1, "only the second request reached the endpoint");
    // Far over it (a header block in more CONTINUATION frames than the limit can need): the
    // connection is closed with ENHANCE_YOUR_CALM (the GOAWAY is lost when the reset that
    // follows it, for the frames weir never read, overtakes it: the metric tells).
    let r = h2_abuse(&["big-headers", &addr, "s", "400000"]);
    assert!(["goaway:11", "closed"].contains(&r["first"].as_str()), "{r:?}");
    assert_eq!(ep.requests(), 1);
    weir.wait_metric("weir_http2_connections_closed_total{reason=\"enhance-your-calm\"}", 1.0);
}

#[test]
fn rapid_reset_costs_the_client_its_connections_not_the_endpoint_or_other_clients() {
    let ep = Endpoint::start("e");
    let weir = Weir::start(&one_service(44, &[ep.addr], "", ""));
    let by = Bystander::start(weir.proxy);
    // HEADERS + RST_STREAM in a tight loop, reconnecting whenever weir closes the connection:
    // at most 20 000 streams or 3 s.
    let (r, bystander) =
        by.check_served_during(|| h2_abuse(&["rapid-reset", &weir.proxy.to_string(), "s", "20000", "3"]));
    let (connections, lost, streams): (u64, u64, u64) =
        (r["connections"].parse().unwrap(), r["lost"].parse().unwrap(), r["streams"].parse().unwrap());
    assert!(lost >= 1 && lost + 1 >= connections, "weir did not close the abusive connections: {r:?}");
    // The bystander's requests are the endpoint's only other ones.
    let abusive = ep.requests() - bystander;
    eprintln!("{abusive} of {streams} reset streams reached the endpoint; the bystander made {bystander} requests");
    assert!(abusive <= 100, "{abusive} of {streams} reset streams reached the endpoint");
    // Each lost connection was closed by weir for a reason it counts.
    eventually(Duration::from_secs(5), "every closed connection counted", || {
        (closed(&weir, "enhance-your-calm") + closed(&weir, "control-flood") >= lost as f64).then_some(())
    });
}

#[test]
fn a_continuation_flood_is_cut_off_at_the_header_list_limit() {
    let ep = Endpoint::start("e");
    let weir = Weir::start(&one_service(45, &[ep.addr], "", ""));
    let addr = weir.proxy.to_string();
    let by = Bystander::start(weir.proxy);
    let ((), bystander) = by.check_served_during(|| {
        // Empty CONTINUATION frames (no header bytes at all), then full ones (16 KiB of a
        // header value announced as 1 MiB): either way at most a handful are read.
        for size in ["0", "16384"] {
            let r = h2_abuse(&["continuation", &addr, "s", "100000", size]);
            assert_eq!((r["closed"].as_str(), r["goaway"].as_str()), ("True", "11"), "size {size}: {r:?}");
            assert_eq!(r["debug"], "too_many_continuations", "{r:?}");
            let frames: u64 = r["frames"].parse().unwrap();
            assert!(frames < 100_000, "weir read all {frames} CONTINUATION frames");
        }
    });
    assert_eq!(ep.requests(), bystander, "a header block that never ended was forwarded");
    weir.wait_metric("weir_http2_connections_closed_total{reason=\"enhance-your-calm\"}", 2.0);
}

#[test]
fn control_frame_floods_cost_the_flooder_its_connection() {
    let ep = Endpoint::start("e");
    let weir = Weir::start(&one_service(46, &[ep.addr], "", ""));
    let addr = weir.proxy.to_string();
    let by = Bystander::start(weir.proxy);
    let kinds = ["ping", "settings", "priority", "window-update", "rst", "empty-data"];
    let ((), bystander) = by.check_served_during(|| {
        for (i, kind) in kinds.iter().enumerate() {
            let r = h2_abuse(&["flood", &addr, "s", kind, "100000"]);
            assert_eq!(r["closed"], "True", "{kind}: {r:?}");
            let sent: u64 = r["sent"].parse().unwrap();
            assert!(sent < 100_000, "{kind}: weir read all {sent} frames");
            // Empty DATA frames are bounded by h2 too (ENHANCE_YOUR_CALM): whichever is first.
            let want = (i + 1) as f64;
            eventually(Duration::from_secs(5), &format!("{kind}: the flood's close counted"), || {
                (closed(&weir, "control-flood") + closed(&weir, "enhance-your-calm") == want).then_some(())
            });
        }
    });
    // At most the floods' POSTs (rst, empty-data) reached the endpoint beside the bystander's.
    assert!(ep.requests() <= bystander + 2, "{} requests beside the bystander's {bystander}", ep.requests());
}

#[test]
fn a_chatty_well_behaved_client_never_trips_the_guard() {
    let ep = Endpoint::start("e");
    let weir = Weir::start(&one_service(47, &[ep.addr], "", ""));
    // 2 000 responses of 64 KiB, 8 streams at a time, a window update for the stream and the
    // connection after every DATA frame and a PING per response.
    let r = h2_abuse(&["busy", &weir.proxy.to_string(), "s", "2000", "/bytes/65536"]);
    assert_eq!((r["ok"].as_str(), r["failed"].as_str(), r["goaway"].as_str()), ("2000", "0", "-"), "{r:?}");
    weir.wait_metric("weir_requests_total{service=\"s\",source=\"direct\",code=\"200\"}", 2000.0);
    for reason in ["control-flood", "enhance-your-calm", "protocol-error", "goaway-timeout"] {
        assert_eq!(closed(&weir, reason), 0.0, "{reason}");
    }
}

#[test]
fn a_zero_window_stream_is_reset_after_the_write_timeout_and_its_upstream_released() {
    let ep = Endpoint::start("e");
    let weir = Weir::start(&one_service(48, &[ep.addr], "downstream_write_timeout_ms = 300", ""));
    let t0 = Instant::now();
    let r = h2_abuse(&["zero-window", &weir.proxy.to_string(), "s", "/bytes/1048576"]);
    // The head goes out (HEADERS are not flow-controlled), no data, then INTERNAL_ERROR.
    assert_eq!((r["status"].as_str(), r["reset"].as_str(), r["data"].as_str()), ("200", "2", "0"), "{r:?}");
    assert!(t0.elapsed() >= Duration::from_millis(300), "reset before the write timeout");
    weir.wait_metric("weir_downstream_write_timeouts_total", 1.0);
    wait_gauge(&weir, "weir_upstream_connections{service=\"s\"}", 0.0);
    assert_eq!(ep.requests(), 1);
}

#[test]
fn a_client_that_never_reads_is_closed_even_when_its_goaway_cannot_be_sent() {
    let ep = Endpoint::start("e");
    let extra = "downstream_write_timeout_ms = 300\ndownstream_idle_timeout_ms = 300";
    let weir = Weir::start(&one_service(49, &[ep.addr], extra, ""));
    // Windows wide open, a 64 MiB response, a 4 KiB receive buffer, and nothing read.
    let mut s = Script::start(&["never-read", &weir.proxy.to_string(), "s", "/bytes/67108864"]);
    assert_eq!(s.line(), "asked=1");
    // The stream is reset when its writes stop making progress, the upstream connection goes,
    // then the idle connection's GOAWAY cannot be written either: weir closes it anyway.
    weir.wait_metric("weir_downstream_write_timeouts_total", 1.0);
    wait_gauge(&weir, "weir_upstream_connections{service=\"s\"}", 0.0);
    weir.wait_metric("weir_http2_connections_closed_total{reason=\"goaway-timeout\"}", 1.0);
    wait_gauge(&weir, "weir_downstream_connections", 0.0);
    let r = s.finish();
    assert_eq!(r["eof"], "True", "the client did not see the connection end: {r:?}");
}

#[test]
fn an_idle_connection_is_closed_gracefully_and_not_counted() {
    let ep = Endpoint::start("e");
    let extra = "downstream_write_timeout_ms = 300\ndownstream_idle_timeout_ms = 300";
    let weir = Weir::start(&one_service(50, &[ep.addr], extra, ""));
    // One request, then nothing: after the idle timeout weir says GOAWAY (NO_ERROR), the
    // client answers its PING, and the connection ends cleanly within the bound.
    let r = h2_abuse(&["idle", &weir.proxy.to_string(), "s"]);
    assert_eq!(
        (r["status"].as_str(), r["goaway"].as_str(), r["closed"].as_str()),
        ("status:200", "0", "True"),
        "{r:?}"
    );
    weir.wait_metric("weir_requests_total{service=\"s\",source=\"direct\",code=\"200\"}", 1.0);
    for reason in ["control-flood", "enhance-your-calm", "protocol-error", "goaway-timeout"] {
        assert_eq!(closed(&weir, reason), 0.0, "{reason}");
    }
}

#[test]
fn drain_does_not_wait_for_a_client_that_never_reads() {
    let ep = Endpoint::start("e");
    // Idle connections are not closed by the idle timeout here: only drain says GOAWAY.
    let extra = "downstream_write_timeout_ms = 300\ndrain_timeout_ms = 10000";
    let weir = Weir::start(&one_service(51, &[ep.addr], extra, ""));
    let mut s = Script::start(&["never-read", &weir.proxy.to_string(), "s", "/bytes/67108864"]);
    assert_eq!(s.line(), "asked=1");
    weir.wait_metric("weir_downstream_write_timeouts_total", 1.0);
    // The connection cannot be written its GOAWAY: drain closes it after the write timeout
    // instead of waiting (and spinning) for the drain timeout.
    let t0 = Instant::now();
    assert!(weir.shutdown(), "drain did not finish");
    assert!(t0.elapsed() < Duration::from_secs(5), "drain took {:?}", t0.elapsed());
    let r = s.finish();
    assert_eq!(r["eof"], "True", "the client did not see the connection end: {r:?}");
}
