//! weir's own last log lines: a weir stopped with SIGTERM says how its drain ended ("drained;
//! exiting", or the drain-timeout warning) before the process is gone, every time: the
//! diagnostics writer is flushed at exit, not dropped with the process.

use std::time::Duration;

use weir_tests::{Behavior, Client, Endpoint, WeirProcess, eventually};

use crate::data_path::service;

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

fn config(services: &str, drain_timeout_ms: u64) -> String {
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\ndrain_timeout_ms = {drain_timeout_ms}\n[admin]\nlisten = \"@ADMIN@\"\n\
         [steering]\nenabled = false\n[access_log]\nsink = \"off\"\n{services}"
    )
}

/// Starts weir with `RUST_LOG=info` and its stderr in a file; returns the process and the file.
fn start_logged(toml: &str) -> (WeirProcess, std::path::PathBuf) {
    let log = weir_tests::scratch_dir("lastwords").join("stderr.log");
    let file = std::fs::File::create(&log).expect("create stderr log");
    let any: std::net::SocketAddr = weir_tests::ANY_PORT.parse().expect("addr");
    let weir = WeirProcess::start_on(WEIR, toml, None, any, any, |cmd, _| {
        cmd.env("RUST_LOG", "info").stderr(file);
    });
    (weir, log)
}

#[test]
fn every_sigterm_logs_drained_before_exit() {
    let ep = Endpoint::start("e");
    let toml = config(&service("w", "127.10.13.1:80", &[&ep], ""), 20_000);
    for run in 1..=10 {
        let (weir, log) = start_logged(&toml);
        let mut c = Client::connect(weir.proxy);
        assert_eq!(c.get("/", "w").status, 200);
        drop(c);
        let status = weir.terminate(Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).expect("read stderr log");
        assert!(status.success(), "run {run} of 10: exit status {status}; stderr:\n{text}");
        assert!(
            text.contains("drained; exiting"),
            "run {run} of 10: no \"drained; exiting\" in weir's stderr:\n{text}"
        );
    }
}

#[test]
fn a_drain_cut_short_logs_its_warning_before_exit() {
    let ep = Endpoint::start("slow");
    ep.set(Behavior::Hang);
    let toml = config(&service("w", "127.10.13.2:80", &[&ep], ""), 300);
    for run in 1..=3 {
        let (weir, log) = start_logged(&toml);
        let proxy = weir.proxy;
        // A request that is still in flight when the drain times out.
        let in_flight = std::thread::spawn(move || {
            let mut c = Client::connect(proxy);
            c.set_read_timeout(Duration::from_secs(10));
            let _ = c.request("GET", "/", "w", b"");
        });
        let before = ep.requests();
        eventually(Duration::from_secs(5), "the endpoint holds the request", || (ep.requests() > before).then_some(()));
        let status = weir.terminate(Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).expect("read stderr log");
        assert_eq!(status.code(), Some(1), "run {run} of 3: a drain cut short exits 1; stderr:\n{text}");
        assert!(
            text.contains("drain timeout reached with requests still in flight; exiting"),
            "run {run} of 3: no drain-timeout warning in weir's stderr:\n{text}"
        );
        in_flight.join().expect("client");
    }
}
