//! Takeover without eBPF: the hand-off in process (sockets, config and counters move; the old
//! weir answers what it holds with `Connection: close`), an incompatible peer refused, and the
//! start-up rules. The steered path under load is in the root tier (root_tier/takeover.rs).

use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_tests::{Behavior, Client, Endpoint, ReservedPort, Weir, eventually, metric_value, scratch_dir};
fn plain_config(endpoint: &Endpoint, admin: &str) -> String {
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\ndrain_timeout_ms = 3000\n[admin]\nlisten = \"{admin}\"\n\
         [steering]\nenabled = false\n[access_log]\nsink = \"off\"\n\
         [[service]]\nname = \"t\"\nvip = \"127.10.15.200:80\"\nendpoints = [\"{}\"]\n",
        endpoint.addr
    )
}

/// Starts an in-process weir with `toml` (placeholders already filled) written to a new file.
fn start_app(toml: &str, takeover: bool) -> anyhow::Result<weir::app::App> {
    let path = scratch_dir("app").join("weir.toml");
    std::fs::write(&path, toml).expect("config");
    weir::app::App::start(&path, weir::app::AppOptions { least_privilege: false, takeover })
}

#[test]
fn in_process_a_takeover_moves_sockets_config_and_counters_and_the_old_weir_closes_with_connection_close() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let old = Weir::start(&plain_config(&a, "@ADMIN@"));
    let fill = |t: String| t.replace("@PROXY@", &old.proxy.to_string()).replace("@ADMIN@", &old.admin.to_string());
    let mut idle = Client::connect(old.proxy);
    assert_eq!(idle.get("/", "t").header("x-endpoint"), Some("a"));
    for _ in 0..9 {
        assert_eq!(Client::connect(old.proxy).get("/", "t").status, 200);
    }
    old.wait_metric("weir_requests_total{service=\"t\",source=\"direct\",code=\"200\"}", 10.0);
    // A request in flight across the takeover.
    a.set(Behavior::Delay(Duration::from_millis(800)));
    let proxy = old.proxy;
    let in_flight = std::thread::spawn(move || {
        let mut c = Client::connect(proxy);
        c.request("GET", "/slow", "t", b"").expect("in-flight request")
    });
    eventually(Duration::from_secs(5), "the request is in flight", || (a.requests() >= 11).then_some(()));
    a.set(Behavior::Ok);
    // The new weir sends to b: config changes (restart-only included) apply.
    let new_toml = fill(plain_config(&b, "@ADMIN@")).replace("workers = 2", "workers = 1");
    let new = start_app(&new_toml, true).expect("takeover");
    assert_eq!(new.control.takeovers_ok.load(Ordering::Relaxed), 1);
    // An idle keep-alive connection on the old weir: a request within the grace is answered
    // (by the old weir, with its config), with Connection: close.
    let r = idle.get("/", "t");
    assert_eq!((r.status, r.header("connection"), r.header("x-endpoint")), (200, Some("close"), Some("a")));
    // The old weir answered the request in flight, and closes after it.
    let r = in_flight.join().expect("in-flight");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")), "the request in flight");
    // New connections reach the new weir.
    assert_eq!(Client::connect(proxy).get("/", "t").header("x-endpoint"), Some("b"));
    // Counters continue: the new weir's start from the old one's (which keeps sending them
    // while it drains).
    let metrics = |addr| {
        let mut c = Client::connect(addr);
        c.get("/metrics", "admin").body_string()
    };
    eventually(Duration::from_secs(10), "the old weir's counters are carried over", || {
        let v = metric_value(&metrics(old.admin), "weir_requests_total{service=\"t\",source=\"direct\",code=\"200\"}");
        (v >= 13.0).then_some(())
    });
    let text = metrics(old.admin);
    assert_eq!(metric_value(&text, "weir_takeovers_total{result=\"success\"}"), 1.0);
    assert!(
        metric_value(&text, "weir_request_duration_seconds_count{service=\"t\",source=\"direct\"}") >= 13.0,
        "{text}"
    );
    assert_eq!(metric_value(&text, "weir_workers"), 1.0, "the new weir's own workers");
    assert!(new.shutdown());
    assert!(old.shutdown(), "a weir taken over exits cleanly");
}

#[test]
fn the_hand_off_socket_refuses_an_incompatible_peer_and_the_weir_serves_on() {
    let a = Endpoint::start("a");
    let weir = Weir::start(&plain_config(&a, "@ADMIN@"));
    let config = weir.control().shared.snapshot.load().config.clone();
    let root = weir::steering::pin_root(&config);
    let hello = |protocol: u32, abi: &str| {
        format!(
            r#"{{"protocol":{protocol},"version":"9.9.9","shared_maps_abi":{abi},"listen":"{}","pin_dir":"{}","fail_after_ms":2000}}"#,
            config.proxy.listen,
            config.steering.pin_dir.display()
        )
    };
    let abi = weir::takeover::shared_maps_abi();
    // A weir from before caller identity: layout version 1, a 24-byte original destination
    // (no cgroup id), everything else alike.
    let mut before_callers = abi.clone();
    before_callers[..2].copy_from_slice(&[1, 24]);
    assert_eq!(&abi[..2], &[2, 32], "the layout this build shares changed: update this test's old layout");
    for (body, says) in [
        (hello(999, &format!("{abi:?}")), "takeover protocol 999 is not one this weir"),
        (hello(1, "[0,1,2,3,4,5]"), "the eBPF maps the two would share differ"),
        (hello(1, &format!("{before_callers:?}")), "the eBPF maps the two would share differ (layout [2, 32,"),
    ] {
        let mut chan = weir::takeover::wire::connect(&root).expect("connect").expect("a weir holds the socket");
        chan.send(1, body.as_bytes(), &[]).expect("hello");
        let answer = chan.recv(Some(Duration::from_secs(5))).expect("an answer");
        let text = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.kind, 3, "not a refusal: {text}");
        assert!(text.contains(says), "{text}");
        assert!(answer.fds.is_empty(), "a refusal hands nothing over");
    }
    assert_eq!(Client::connect(weir.proxy).get("/", "t").status, 200, "the weir stopped serving");
    weir.wait_metric("weir_takeovers_total{result=\"failure\"}", 3.0);
}

#[test]
fn takeover_starts_normally_alone_and_a_second_weir_without_it_is_refused() {
    let a = Endpoint::start("a");
    // Fixed ports (held, not listening, until weir binds them): the hand-off socket is named
    // after the proxy address, which a takeover must find again.
    let ports: Vec<ReservedPort> = (0..4).map(|_| ReservedPort::loopback().expect("a port")).collect();
    let proxy = ports[0].addr().to_string();
    let admin = ports[1].addr().to_string();
    let toml = plain_config(&a, &admin).replace("@PROXY@", &proxy);
    // Nothing to take over: starts normally.
    let first = start_app(&toml, true).expect("--takeover with no weir running starts");
    assert_eq!(first.control.takeovers_ok.load(Ordering::Relaxed), 0);
    // Without --takeover, a second weir is refused as before.
    let err = start_app(&toml, false).expect_err("a second weir started");
    assert!(
        format!("{err:#}").contains(&format!("binding the admin address {admin} (is another weir running?)")),
        "{err:#}"
    );
    // Even on another admin address: the hand-off socket is taken.
    let other_admin = toml.replace(&admin, &ports[2].addr().to_string());
    let err = start_app(&other_admin, false).expect_err("a second weir started");
    assert!(format!("{err:#}").contains("use `weir run --takeover` to replace it"), "{err:#}");
    // [proxy] listen cannot change across a takeover: a clear error.
    let moved = toml.replace(&proxy, &ports[3].addr().to_string());
    let err = start_app(&moved, true).expect_err("a takeover changed [proxy] listen");
    assert!(format!("{err:#}").contains("these two cannot change across a takeover"), "{err:#}");
    assert!(first.shutdown());
}

#[test]
fn grpc_calls_on_a_kept_http2_connection_never_fail_across_a_takeover() {
    use weir_tests::clients::{grpc_py, grpc_server};
    let server = grpc_server("g", &[]);
    let toml = |admin: &str| {
        format!(
            "[proxy]\nlisten = \"@PROXY@\"\nworkers = 1\ndrain_timeout_ms = 3000\n[admin]\nlisten = \"{admin}\"\n\
             [steering]\nenabled = false\n[access_log]\nsink = \"off\"\n\
             [[service]]\nname = \"g\"\nvip = \"127.10.15.201:80\"\nprotocol = \"grpc\"\nendpoints = [\"{}\"]\n",
            server.addr
        )
    };
    let old = Weir::start(&toml("@ADMIN@"));
    let proxy = old.proxy;
    // One channel (one HTTP/2 connection) making calls back to back across the takeover.
    let client = std::thread::spawn(move || grpc_py(proxy, "g", &["calls", "3000"]));
    old.wait_metric_at_least("weir_grpc_responses_total{service=\"g\",grpc_code=\"ok\"}", 200.0);
    let new_toml = toml(&old.admin.to_string()).replace("@PROXY@", &proxy.to_string());
    let new = start_app(&new_toml, true).expect("takeover");
    let out = client.join().expect("client");
    assert_eq!(out["codes"]["OK"].as_u64(), Some(3000), "a call failed across the takeover: {out}");
    // The channel moved to the new weir (the old one sent GOAWAY and drained).
    eventually(Duration::from_secs(10), "the new weir served calls", || {
        let text = Client::connect(new.admin_addr()).get("/metrics", "admin").body_string();
        (metric_value(&text, "weir_grpc_responses_total{service=\"g\",grpc_code=\"ok\"}") >= 3000.0).then_some(())
    });
    assert!(new.shutdown());
    assert!(old.shutdown());
}
