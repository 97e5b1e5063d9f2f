//! Root tier: the socket-level redirect between a steered workload and weir (sockops puts both
//! sockets into the socket map, sk_msg moves the bytes). The behaviour tests run in both modes
//! (`WEIR_TEST_SOCKET_REDIRECT=off` is the second pass of `cargo xtask test`) and must see the
//! same result; the counters prove which path the bytes took.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use weir_tests::root::{Cgroup, probe, require_root};
use weir_tests::sockmap_user::SockmapUser;
use weir_tests::testkit::cgroup::join_on_exec;
use weir_tests::{Behavior, Endpoint, TcpEcho, Weir, eventually, socket_redirect_on};

use super::redirect_upstream::pairs;
use super::steering::steered_config;

const PROBE: &str = env!("CARGO_BIN_EXE_weir-probe");

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/redirect_client.py")
}

/// Runs the redirect client `args` inside `cg`; its JSON.
fn client(cg: &Cgroup, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(weir_tests::testkit::tools::python());
    cmd.arg(script()).args(args);
    join_on_exec(&mut cmd, &cg.path);
    let out = weir_tests::clients::run(&mut cmd, Duration::from_secs(180));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client printed no JSON ({e}): {out}"))
}

fn counters(weir: &Weir) -> std::collections::HashMap<&'static str, u64> {
    weir.control().steering.lock().as_ref().map(|s| s.status().counters).expect("steering on")
}

#[test]
fn steered_requests_move_socket_to_socket_and_steering_says_so() {
    require_root();
    let cg = Cgroup::create("redir");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.1:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = Weir::start(&steered_config(&cg, &svc));
    let before = counters(&weir);
    let r = probe(PROBE, Some(&cg), &["--addr", "127.10.5.1:80", "--requests", "40", "--connections", "4"]);
    assert_eq!((r.num("ok"), r.num("via"), r.by_endpoint("a")), (40, 40, 40), "{:?}", r.json);
    let after = counters(&weir);
    let delta = |k: &str| after[k] - before.get(k).copied().unwrap_or(0);
    let (_, body) = weir.admin_get("/steering");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/steering JSON");
    if socket_redirect_on() {
        assert_eq!(status["socket_redirect"], true, "{body}");
        assert!(status["programs"].as_array().is_some_and(|p| p.iter().any(|p| p == "steer_msg")), "{body}");
        // Both ends of each of the 4 connections, and every request and response moved
        // socket to socket (80 messages at least). The counters are the node's (other tests
        // steer at the same time): the exact proof per connection is TCP_INFO, below.
        assert!(delta("sock_enrolled") >= 8, "{after:?}");
        assert!(delta("msg_redirected") >= 80, "{after:?}");
        let metrics = weir.metrics();
        assert!(
            weir_tests::metric_value(&metrics, "weir_steering_kernel_events_total{event=\"msg_redirected\"}") >= 80.0,
            "the redirect's counters are not in /metrics"
        );
    } else {
        assert_eq!(status["socket_redirect"], false, "{body}");
        assert!(
            status["socket_redirect_off"].as_str().is_some_and(|w| w.contains("socket_redirect = false")),
            "{body}"
        );
        assert_eq!((delta("sock_enrolled"), delta("msg_redirected")), (0, 0), "{after:?}");
    }
}

/// TCP_INFO of the workload's socket: what went over TCP. `tcp_acked` counts the SYN.
fn tcp_path(r: &serde_json::Value) -> (u64, u64) {
    (r["tcp_acked"].as_u64().expect("tcp_acked"), r["tcp_received"].as_u64().expect("tcp_received"))
}

#[test]
fn on_a_redirected_connection_no_byte_takes_tcp_and_with_it_off_every_byte_does() {
    require_root();
    let cg = Cgroup::create("redirka");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.6:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let r = client(&cg, &["get_keepalive", "127.10.5.6:80", "alpha", "20"]);
    assert_eq!(r["ok"], 20, "{r}");
    let (acked, received) = tcp_path(&r);
    if socket_redirect_on() {
        assert_eq!((acked, received), (1, 0), "bytes took TCP on a redirected connection: {r}");
    } else {
        assert!(acked > 20 * 30 && received > 20 * 30, "{r}");
    }
}

#[test]
fn weirs_with_the_redirect_on_and_off_steer_one_cgroup_each_deciding_for_its_own_connections() {
    require_root();
    let cg = Cgroup::create("redirmix");
    let a = Endpoint::start("a");
    let svc = |vip: &str| format!("[[service]]\nname = \"alpha\"\nvip = \"{vip}\"\nendpoints = [\"{}\"]\n", a.addr);
    let _default = Weir::start(&steered_config(&cg, &svc("127.10.5.7:80")));
    let off =
        steered_config(&cg, &svc("127.10.5.8:80")).replace("[steering]\n", "[steering]\nsocket_redirect = false\n");
    let _off = Weir::start(&off);
    for _ in 0..3 {
        // Whichever weir's sock_ops sees a connection first, the weir that steered it decides.
        let r = client(&cg, &["get_keepalive", "127.10.5.8:80", "alpha", "5"]);
        assert_eq!(r["ok"], 5, "{r}");
        assert!(tcp_path(&r).1 > 0, "a connection of the weir with the redirect off was redirected: {r}");
        let r = client(&cg, &["get_keepalive", "127.10.5.7:80", "alpha", "5"]);
        assert_eq!(r["ok"], 5, "{r}");
        assert_eq!(tcp_path(&r).1 == 0, socket_redirect_on(), "{r}");
    }
}

#[test]
fn a_response_cut_by_a_reset_arrives_as_far_as_it_went() {
    require_root();
    let cg = Cgroup::create("redircut");
    let a = Endpoint::start("a");
    a.set(Behavior::ResetMidResponse);
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.9:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let r = client(&cg, &["get_cut", "127.10.5.9:80", "alpha"]);
    // The head and the half body the endpoint sent, then the end: never more, never
    // a byte out of place.
    assert_eq!((r["status"].as_u64(), r["length"].as_u64()), (Some(200), Some(100_000)), "{r}");
    assert_eq!((r["body"].as_u64(), r["all_x"].as_bool()), (Some(50_000), Some(true)), "{r}");
    assert_eq!(tcp_path(&r).1 == 0, socket_redirect_on(), "{r}");
}

#[test]
fn a_client_closing_in_the_middle_of_its_request_body_is_handled_as_over_tcp() {
    require_root();
    let cg = Cgroup::create("redirhalf");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.10:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let r = client(&cg, &["post_half", "127.10.5.10:80", "alpha", &(1u64 << 20).to_string()]);
    // weir closes without an answer (the request cannot complete), over either path.
    assert_eq!(
        (r["status"].as_u64(), r["bytes"].as_u64(), r["reset"].as_bool()),
        (Some(0), Some(0), Some(false)),
        "{r}"
    );
    assert_eq!(tcp_path(&r).1, 1, "weir's FIN, and nothing else, came over TCP: {r}");
    let r = client(&cg, &["get_keepalive", "127.10.5.10:80", "alpha", "2"]);
    assert_eq!(r["ok"], 2, "weir serves on: {r}");
    assert_eq!(a.requests(), 2, "the half request was never passed on as a request");
}

#[test]
fn a_workload_that_stops_reading_gets_every_byte_and_the_redirect_bounds_what_it_queued() {
    require_root();
    let cg = Cgroup::create("redirslow");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.11:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let size: u64 = 64 << 20;
    let mut cmd = Command::new(weir_tests::testkit::tools::python());
    cmd.arg(script()).args(["get_slow", "127.10.5.11:80", "alpha", &size.to_string()]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    join_on_exec(&mut cmd, &cg.path);
    let mut child = cmd.spawn().expect("client");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("client says queued");
    assert!(line.starts_with("queued "), "{line}");
    child.stdin.take().expect("stdin").write_all(b"read\n").expect("tell the client to read");
    line.clear();
    out.read_line(&mut line).expect("client result");
    assert!(child.wait().expect("client exit").success());
    let r: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(
        (r["status"].as_u64(), r["body"].as_u64(), r["all_x"].as_bool()),
        (Some(200), Some(size), Some(true)),
        "{r}"
    );
    let total = r["total"].as_u64().expect("total");
    let (_, received) = tcp_path(&r);
    if socket_redirect_on() {
        // The redirect has no flow control: the direction fell back to TCP once it had moved
        // its budget unanswered, so at most that much skipped TCP (and the rest was paced by
        // TCP's window while the workload did not read).
        let budget = weir_ebpf_common::redirect::REDIRECT_BUDGET_BYTES;
        assert!(received >= total - budget && received < total, "redirected {} of {total}: {r}", total - received);
    } else {
        assert_eq!(received, total + 1, "every byte and weir's FIN over TCP: {r}");
    }
}

#[test]
fn a_hundred_mib_each_way_with_half_close_arrives_whole_and_in_order() {
    require_root();
    let cg = Cgroup::create("redir100");
    let echo = TcpEcho::start("big");
    let svc = format!(
        "[[service]]\nname = \"big\"\nvip = \"127.10.5.2:7000\"\nprotocol = \"tcp\"\nendpoints = [\"{}\"]\n",
        echo.addr
    );
    let weir = Weir::start(&steered_config(&cg, &svc));
    // 100 MiB in 64 KiB lines; the echo answers each line as it comes and, after the
    // client's FIN (passed on by weir), says bye and closes.
    let r = client(&cg, &["echo", "127.10.5.2:7000", &(100u64 << 20).to_string(), "65536", "big"]);
    assert_eq!(r["sent"], 100u64 << 20, "{r}");
    assert_eq!(r["received"], r["want"], "{r}");
    assert_eq!((r["ok"].as_bool(), r["eof"].as_bool()), (Some(true), Some(true)), "{r}");
    if socket_redirect_on() {
        assert!(counters(&weir)["msg_redirected"] > 0);
    }
}

#[test]
fn a_request_followed_by_a_reset_reaches_the_endpoint_in_both_modes() {
    require_root();
    let cg = Cgroup::create("redirrst");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.3:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = Weir::start(&steered_config(&cg, &svc));
    for i in 1..=5u64 {
        client(&cg, &["get_rst", "127.10.5.3:80", "alpha"]);
        // weir reads what arrived before the reset and forwards it, as over plain TCP.
        eventually(Duration::from_secs(5), "the request sent before the reset forwarded", || {
            (a.requests() == i).then_some(())
        });
    }
    wait_answered(&weir, 5.0);
}

/// Waits until `weir` counted `n` requests of service `alpha` answered 200, under whichever
/// name the caller's cgroup got (`source`).
pub(super) fn wait_answered(weir: &Weir, n: f64) {
    eventually(Duration::from_secs(5), &format!("{n} requests of alpha counted 200"), || {
        let answered: f64 = weir
            .metrics()
            .lines()
            .filter(|l| l.starts_with("weir_requests_total{service=\"alpha\",") && l.contains("code=\"200\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (answered >= n).then_some(())
    });
}

#[test]
fn the_wake_up_of_a_workload_waiting_in_epoll_is_never_lost() {
    require_root();
    let cg = Cgroup::create("redirpoll");
    let a = Endpoint::start("slow");
    a.set(Behavior::Delay(Duration::from_millis(50)));
    let svc = format!("[[service]]\nname = \"slow\"\nvip = \"127.10.5.4:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let _weir = Weir::start(&steered_config(&cg, &svc));
    for _ in 0..20 {
        let r = client(&cg, &["get_poll", "127.10.5.4:80", "slow"]);
        assert_eq!((r["woken"].as_bool(), r["ok"].as_bool()), (Some(true), Some(true)), "{r}");
    }
}

#[test]
fn a_response_weir_wrote_is_read_whole_after_weir_has_exited() {
    require_root();
    let cg = Cgroup::create("redirexit");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.5:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = Weir::start(&steered_config(&cg, &svc));
    let mut cmd = Command::new(weir_tests::testkit::tools::python());
    cmd.arg(script()).args(["get_late", "127.10.5.5:80", "alpha"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    join_on_exec(&mut cmd, &cg.path);
    let mut child = cmd.spawn().expect("client");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("client says sent");
    assert_eq!(line.trim(), "sent");
    eventually(Duration::from_secs(5), "the request answered", || (a.requests() == 1).then_some(()));
    // weir exits cleanly (steering detached, maps unpinned) while the answer waits unread in
    // the workload's socket.
    assert!(weir.shutdown(), "drain did not finish");
    child.stdin.take().expect("stdin").write_all(b"read\n").expect("tell the client to read");
    line.clear();
    out.read_line(&mut line).expect("client result");
    assert!(child.wait().expect("client exit").success());
    let r: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!((r["status"].as_u64(), r["complete"].as_bool()), (Some(200), Some(true)), "{r}");
}

#[test]
fn a_service_that_keeps_its_legs_on_tcp_serves_a_splice_reader_whole() {
    require_root();
    let cg = Cgroup::create("redirsplice");
    // The endpoint is this test process, in weir's own cgroup: its accepted sockets could be
    // paired with weir's (the upstream leg).
    let a = Endpoint::start("a");
    let svc = format!(
        "[[service]]\nname = \"alpha\"\nvip = \"127.10.5.7:80\"\nendpoints = [\"{0}\"]\nsocket_redirect = false\n\n\
         [[service]]\nname = \"beta\"\nvip = \"127.10.5.8:80\"\nendpoints = [\"{0}\"]\n",
        a.addr
    );
    let weir = Weir::start(&steered_config(&cg, &svc));
    // splice(2) reads only what TCP delivered: alpha's workload reads this way and gets every
    // byte, because alpha's connections stay on TCP whatever `[steering] socket_redirect` says.
    for size in [10u64, 100_000, 3_000_000] {
        let r = client(&cg, &["get_splice", "127.10.5.7:80", "alpha", &size.to_string()]);
        assert_eq!(
            (r["status"].as_u64(), r["body"].as_u64(), r["eof"].as_bool()),
            (Some(200), Some(size), Some(true)),
            "{r}"
        );
        let (_, received) = tcp_path(&r);
        assert!(received > size, "alpha's answer did not take TCP: {r}");
    }
    assert_eq!(pairs(&weir).0, 0, "alpha's upstream leg was paired");
    // beta, on the same weir, follows `[steering] socket_redirect` on both legs.
    let r = client(&cg, &["get_keepalive", "127.10.5.8:80", "beta", "20"]);
    assert_eq!(r["ok"], 20, "{r}");
    let (acked, received) = tcp_path(&r);
    if socket_redirect_on() {
        assert_eq!((acked, received), (1, 0), "bytes took TCP on a redirected connection: {r}");
        assert!(pairs(&weir).0 > 0, "beta's upstream leg was not paired");
    } else {
        assert!(acked > 20 * 30 && received > 20 * 30, "{r}");
        assert_eq!(pairs(&weir).0, 0);
    }
}

#[test]
fn a_socket_another_sockmap_user_enrolled_first_runs_over_tcp() {
    require_root();
    let cg = Cgroup::create("redirother");
    // Another sockmap user (its own socket hash and sk_msg program) attached to the workload's
    // cgroup before weir: its sock_ops program runs first and enrolls the workload's socket.
    let other = SockmapUser::attach(&cg.path);
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.9:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = Weir::start(&steered_config(&cg, &svc));
    let before = counters(&weir);
    let r = client(&cg, &["get_keepalive", "127.10.5.9:80", "alpha", "20"]);
    assert_eq!(r["ok"], 20, "{r}");
    let (acked, received) = tcp_path(&r);
    assert!(acked > 20 * 30 && received > 20 * 30, "the connection did not run over TCP: {r}");
    let after = counters(&weir);
    let refused = after["sock_enroll_failed"] - before.get("sock_enroll_failed").copied().unwrap_or(0);
    if socket_redirect_on() {
        // weir's insert was refused (the socket carries the other user's programs), counted,
        // and weir's side stayed out: the connection is plain TCP and works.
        assert!(refused >= 1, "{after:?}");
    } else {
        assert_eq!(refused, 0, "{after:?}");
    }
    drop(other);
}
