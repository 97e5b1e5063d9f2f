//! Root tier: eBPF steering on the real kernel, in cgroups each test creates and removes. A
//! workload in the steered cgroup dials a service VIP in 127.10.0.0/16 and reaches an endpoint
//! through weir; the same dial from outside the cgroup is not steered (nothing listens on the
//! VIP, so it is refused).

use std::time::Duration;

use weir_tests::root::{Cgroup, counters_from_pins, heartbeat_age, pin_dir_of, probe, require_root};
use weir_tests::{Endpoint, LineSink, ReservedPort, TcpEcho, Weir, WeirProcess, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_weir-probe");
const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

pub(super) fn steered_config(cgroup: &Cgroup, services: &str) -> String {
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\ncgroups = [\"{}\"]\n[access_log]\nsink = \"off\"\n{services}",
        cgroup.path.display()
    )
}

#[test]
fn a_steered_workload_reaches_the_service_through_weir_and_others_are_not_steered() {
    require_root();
    let cg = Cgroup::create("basic");
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let svc = format!(
        "[[service]]\nname = \"checkout\"\nvip = \"127.10.4.1:80\"\nendpoints = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    );
    let weir = Weir::start(&steered_config(&cg, &svc));

    let inside = probe(PROBE, Some(&cg), &["--addr", "127.10.4.1:80", "--requests", "40", "--connections", "4"]);
    assert_eq!(inside.num("ok"), 40, "steered requests failed: {:?}", inside.json);
    assert_eq!(inside.num("via"), 40, "responses did not come through weir");
    assert!(inside.by_endpoint("a") + inside.by_endpoint("b") == 40);
    assert!(
        inside.json["peers"].as_object().is_some_and(|p| p.keys().all(|k| *k == weir.proxy.to_string())),
        "the connect was not rewritten to the proxy: {:?}",
        inside.json["peers"]
    );

    let outside = probe(PROBE, None, &["--addr", "127.10.4.1:80", "--requests", "1"]);
    assert_eq!(outside.num("ok"), 0, "a workload outside the cgroup was steered: {:?}", outside.json);
    assert!(outside.json["errors"][0].as_str().is_some_and(|e| e.contains("refused")), "{:?}", outside.json);

    // A non-VIP destination from inside the cgroup is untouched: it reaches the endpoint
    // directly (no Via from weir).
    let direct = probe(PROBE, Some(&cg), &["--addr", &a.addr.to_string(), "--requests", "3"]);
    assert_eq!((direct.num("ok"), direct.num("via")), (3, 0), "{:?}", direct.json);

    let status = weir.control().steering.lock().as_ref().map(|s| s.status()).expect("steering on");
    assert!(status.counters["redirected"] >= 4, "{:?}", status.counters);
    assert!(status.counters["recorded"] >= 4, "{:?}", status.counters);
}

#[test]
fn weirs_own_upstream_connections_are_never_steered() {
    require_root();
    // weir itself runs inside the steered cgroup here, and its endpoint listens on the very
    // address that is the service's VIP: without the socket-mark check, weir's upstream
    // connect would be rewritten back to the proxy and loop.
    let cg = Cgroup::create("noloop");
    let ep = Endpoint::start_at("ep", "127.10.4.9:18090".parse().expect("addr"));
    let svc = format!(
        "[[service]]\nname = \"loop\"\nvip = \"127.10.4.9:18090\"\nendpoints = [\"{}\"]\n[service.retry]\nattempts = 1\n",
        ep.addr
    );
    let weir = WeirProcess::start(WEIR, &steered_config(&cg, &svc), Some(&cg.path));
    assert!(cg.pids().contains(&weir.pid()), "weir is not in the steered cgroup");
    let r = probe(PROBE, Some(&cg), &["--addr", "127.10.4.9:18090", "--requests", "5"]);
    assert_eq!(r.num("ok"), 5, "{:?}", r.json);
    assert_eq!(r.num("via"), 5, "requests did not go through weir");
    assert_eq!(ep.requests(), 5, "the endpoint saw {} requests (a loop would multiply them)", ep.requests());
    drop(weir);
}

#[test]
fn two_hundred_concurrent_connections_to_two_vips_land_on_the_right_service() {
    require_root();
    let cg = Cgroup::create("many");
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let svc = format!(
        "[[service]]\nname = \"alpha\"\nvip = \"127.10.4.2:80\"\nendpoints = [\"{}\"]\n[[service]]\nname = \"beta\"\nvip = \"127.10.4.3:80\"\nendpoints = [\"{}\"]\n",
        a.addr, b.addr
    );
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let (ra, rb) = std::thread::scope(|s| {
        let pa = s.spawn(|| {
            probe(PROBE, Some(&cg), &["--addr", "127.10.4.2:80", "--requests", "200", "--connections", "100"])
        });
        let rb = probe(PROBE, Some(&cg), &["--addr", "127.10.4.3:80", "--requests", "200", "--connections", "100"]);
        (pa.join().expect("probe a"), rb)
    });
    assert_eq!((ra.num("ok"), ra.by_endpoint("a"), ra.by_endpoint("b")), (200, 200, 0), "{:?}", ra.json);
    assert_eq!((rb.num("ok"), rb.by_endpoint("b"), rb.by_endpoint("a")), (200, 200, 0), "{:?}", rb.json);
}

#[test]
fn tcp_services_are_steered_too() {
    require_root();
    let cg = Cgroup::create("tcp");
    let echo = TcpEcho::start("db1");
    let svc = format!(
        "[[service]]\nname = \"db\"\nvip = \"127.10.4.4:5432\"\nprotocol = \"tcp\"\nendpoints = [\"{}\"]\n",
        echo.addr
    );
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let r = probe(
        PROBE,
        Some(&cg),
        &["--addr", "127.10.4.4:5432", "--mode", "tcp", "--requests", "10", "--connections", "2"],
    );
    assert_eq!((r.num("ok"), r.by_endpoint("db1")), (10, 10), "{:?}", r.json);
}

#[test]
fn reload_adds_and_removes_steered_services() {
    require_root();
    let cg = Cgroup::create("reload");
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let one = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.5:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let two = format!("{one}[[service]]\nname = \"beta\"\nvip = \"127.10.4.6:80\"\nendpoints = [\"{}\"]\n", b.addr);
    let weir = Weir::start(&steered_config(&cg, &one));
    let before = probe(PROBE, Some(&cg), &["--addr", "127.10.4.6:80", "--requests", "1"]);
    assert_eq!(before.num("ok"), 0, "beta is not configured yet: {:?}", before.json);
    weir.reload(&steered_config(&cg, &two)).expect("reload adding beta");
    let after = probe(PROBE, Some(&cg), &["--addr", "127.10.4.6:80", "--requests", "5"]);
    assert_eq!(after.by_endpoint("b"), 5, "{:?}", after.json);
    weir.reload(&steered_config(&cg, &two.replace("127.10.4.5:80", "127.10.4.7:80"))).expect("reload moving alpha");
    let gone = probe(PROBE, Some(&cg), &["--addr", "127.10.4.5:80", "--requests", "1"]);
    assert_eq!(gone.num("ok"), 0, "a removed VIP is still steered: {:?}", gone.json);
    let moved = probe(PROBE, Some(&cg), &["--addr", "127.10.4.7:80", "--requests", "3"]);
    assert_eq!(moved.by_endpoint("a"), 3, "{:?}", moved.json);

    // A connection open across a reload (that adds and removes other services) keeps working.
    let before_held = b.requests();
    let during = std::thread::scope(|s| {
        let held =
            s.spawn(|| probe(PROBE, Some(&cg), &["--addr", "127.10.4.6:80", "--requests", "10", "--hold-ms", "800"]));
        // The probe holds its connection after the first half of its requests: reload then.
        eventually(Duration::from_secs(10), "the held probe's first five requests answered", || {
            (b.requests() >= before_held + 5).then_some(())
        });
        weir.reload(&steered_config(&cg, &two.replace("127.10.4.5:80", "127.10.4.18:80")))
            .expect("reload during a held connection");
        assert!(b.requests() < before_held + 10, "the reload came after the held connection's pause");
        held.join().expect("held probe")
    });
    assert_eq!((during.num("ok"), during.by_endpoint("b")), (10, 10), "{:?}", during.json);
    assert_eq!(
        during.json["peers"].as_object().map(|p| p.values().map(|v| v.as_u64().unwrap_or(0)).sum::<u64>()),
        Some(1),
        "the connection was dropped and redialed: {:?}",
        during.json
    );
}

#[test]
fn nothing_stays_attached_after_weir_stops() {
    require_root();
    let cg = Cgroup::create("cleanup");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.8:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = Weir::start(&steered_config(&cg, &svc));
    let pins = pin_dir_of(weir.proxy);
    assert!(pins.is_dir(), "links are not pinned");
    assert_eq!(probe(PROBE, Some(&cg), &["--addr", "127.10.4.8:80"]).num("ok"), 1);
    assert!(weir.shutdown(), "drain did not finish");
    assert!(!pins.exists(), "pins left behind: {}", pins.display());
    // After shutdown the VIP is no longer steered (refused) and the cgroup has no programs.
    eventually(Duration::from_secs(5), "links detached", || {
        (probe(PROBE, Some(&cg), &["--addr", "127.10.4.8:80"]).num("ok") == 0).then_some(())
    });
    let out = std::process::Command::new("bpftool").args(["cgroup", "show"]).arg(&cg.path).output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("steer_"), "programs still attached: {text}");
    }
}

#[test]
fn kill_9_leaves_steering_failing_closed_and_a_restart_takes_over() {
    require_root();
    let cg = Cgroup::create("crash");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.11:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let toml =
        steered_config(&cg, &svc).replace("[steering]\n", "[steering]\nfail_mode = \"closed\"\nfail_after_ms = 1000\n");
    let weir = WeirProcess::start(WEIR, &toml, None);
    let (proxy, admin) = (weir.proxy, weir.admin);
    let pins = pin_dir_of(proxy);
    assert_eq!(probe(PROBE, Some(&cg), &["--addr", "127.10.4.11:80", "--requests", "3"]).num("via"), 3);
    let pinned: Vec<String> = std::fs::read_dir(&pins)
        .expect("pins")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for map in ["map-WEIR_HEARTBEAT", "map-WEIR_COUNTERS-abi"] {
        assert!(pinned.iter().any(|p| p.starts_with(map)), "{map} is not pinned under {}: {pinned:?}", pins.display());
    }

    weir.kill9();
    // The links survive the crash (pinned) ...
    let links = std::fs::read_dir(&pins)
        .expect("pins after a crash")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("link-")))
        .count();
    assert_eq!(links, 3, "connect4, connect6 and sockops links must stay pinned");
    // ... and once the heartbeat is stale (older than fail_after_ms), connects to the VIP fail
    // closed, at once.
    eventually(Duration::from_secs(10), "the dead weir's heartbeat older than fail_after_ms", || {
        heartbeat_age(&pins).filter(|age| *age > Duration::from_millis(1000))
    });
    // `weir steer status` still answers, from the pins; its counters say who refused.
    let fail_closed = || counters_from_pins(WEIR, admin, &pins)["fail_closed"].as_u64().expect("fail_closed counter");
    let before = fail_closed();
    let t = std::time::Instant::now();
    let down = probe(PROBE, Some(&cg), &["--addr", "127.10.4.11:80"]);
    assert_eq!(down.num("ok"), 0);
    assert!(down.json["errors"][0].as_str().is_some_and(|e| e.contains("refused")), "{:?}", down.json);
    assert!(t.elapsed() < Duration::from_secs(2), "a connect hung while weir was down");
    assert_eq!(fail_closed(), before + 1, "the refusal did not come from the fail-closed verdict");

    // A restart on the same addresses takes the pinned links over and steering resumes.
    let weir = WeirProcess::start_on(WEIR, &toml, None, proxy, admin, |_, _| {});
    let up = probe(PROBE, Some(&cg), &["--addr", "127.10.4.11:80", "--requests", "3"]);
    assert_eq!(up.num("via"), 3, "steering did not resume after the restart: {:?}", up.json);
    let links = std::fs::read_dir(&pins)
        .expect("pins")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("link-")))
        .count();
    assert_eq!(links, 3, "a restart must reuse the links, not add more");

    // A clean stop removes everything.
    assert!(weir.terminate(Duration::from_secs(25)).success());
    assert!(!pins.exists(), "pins left behind after a clean exit: {}", pins.display());
    let after = probe(PROBE, Some(&cg), &["--addr", "127.10.4.11:80"]);
    assert_eq!(after.num("ok"), 0, "still steered after weir stopped: {:?}", after.json);
}

#[test]
fn fail_open_and_fail_to_endpoint_while_weir_is_down() {
    require_root();
    let cg = Cgroup::create("failopen");
    // Something serves the VIP address itself, as kube-proxy would for a ClusterIP.
    let _on_vip = Endpoint::start_at("vip-itself", "127.10.4.12:8080".parse().expect("addr"));
    let direct = Endpoint::start("direct");
    for (mode, want) in [("open", "vip-itself"), ("endpoint", "direct")] {
        let svc =
            format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.12:8080\"\nendpoints = [\"{}\"]\n", direct.addr);
        let toml = steered_config(&cg, &svc)
            .replace("[steering]\n", &format!("[steering]\nfail_mode = \"{mode}\"\nfail_after_ms = 1000\n"));
        let weir = WeirProcess::start(WEIR, &toml, None);
        let pins = pin_dir_of(weir.proxy);
        let up = probe(PROBE, Some(&cg), &["--addr", "127.10.4.12:8080", "--requests", "2"]);
        assert_eq!((up.num("via"), up.by_endpoint("direct")), (2, 2), "{mode}: {:?}", up.json);
        weir.kill9();
        eventually(Duration::from_secs(10), "the dead weir's heartbeat older than fail_after_ms", || {
            heartbeat_age(&pins).filter(|age| *age > Duration::from_millis(1000))
        });
        let down = probe(PROBE, Some(&cg), &["--addr", "127.10.4.12:8080", "--requests", "2"]);
        assert_eq!(
            (down.num("ok"), down.num("via"), down.by_endpoint(want)),
            (2, 0, 2),
            "fail {mode}: {:?}",
            down.json
        );
        // Clean up the crashed run's pins (a restart would take them over).
        let _ = std::fs::remove_dir_all(&pins);
    }
}

#[test]
fn connections_are_accepted_by_the_worker_on_the_clients_cpu() {
    require_root();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs two CPUs, found {cpus}");
    let cg = Cgroup::create("affinity");
    let a = Endpoint::start("a");
    let (sink, rx) = LineSink::start().expect("log sink");
    let sink_addr = sink.addr;
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.13:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let toml = steered_config(&cg, &svc).replace("sink = \"off\"", &format!("sink = \"tcp:{sink_addr}\""));
    let weir = Weir::start(&toml);
    for cpu in [0usize, 1] {
        let r = probe(
            PROBE,
            Some(&cg),
            &["--addr", "127.10.4.13:80", "--requests", "20", "--connections", "20", "--cpu", &cpu.to_string()],
        );
        assert_eq!(r.num("ok"), 20, "{:?}", r.json);
        for _ in 0..20 {
            let line = rx.recv_timeout(Duration::from_secs(5)).expect("access-log line");
            let v: serde_json::Value = serde_json::from_str(&line).expect("json");
            assert_eq!(
                v["worker"].as_u64(),
                Some(cpu as u64),
                "a client on CPU {cpu} was served by another worker: {line}"
            );
        }
    }
    let status = weir.control().steering.lock().as_ref().map(|s| s.status()).expect("steering");
    assert!(status.counters["affine_accept"] >= 40, "{:?}", status.counters);
}

#[test]
fn ipv4_mapped_ipv6_connects_are_steered() {
    require_root();
    let cg = Cgroup::create("v6");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.14:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let r = probe(PROBE, Some(&cg), &["--addr", "[::ffff:127.10.4.14]:80", "--requests", "5"]);
    assert_eq!((r.num("ok"), r.num("via")), (5, 5), "connect6 to an IPv4-mapped VIP: {:?}", r.json);
}

/// CAP_NET_ADMIN (12) and CAP_BPF (39).
const RUNTIME_CAPS: u64 = (1 << 12) | (1 << 39);

fn thread_caps(pid: i32) -> Vec<(String, u64, u64)> {
    let threads = weir_tests::testkit::proc::threads(pid);
    assert!(!threads.is_empty(), "no threads of {pid} in /proc");
    threads
        .into_iter()
        .map(|t| {
            let caps = (t.hex_field("CapEff:").expect("CapEff"), t.hex_field("CapBnd:").expect("CapBnd"));
            (t.name, caps.0, caps.1)
        })
        .collect()
}

#[test]
fn after_start_every_thread_keeps_only_net_admin_and_bpf_and_pins_are_root_only() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let cg = Cgroup::create("caps");
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let one = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.15:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir =
        WeirProcess::start(WEIR, &steered_config(&cg, &one).replace("sink = \"off\"", "sink = \"stdout\""), None);
    for (name, eff, bnd) in thread_caps(weir.pid()) {
        assert_eq!(eff & !RUNTIME_CAPS, 0, "thread {name} kept capabilities {eff:#x}");
        assert_eq!(bnd & !RUNTIME_CAPS, 0, "thread {name} kept a bounding set {bnd:#x}");
    }
    let pins = pin_dir_of(weir.proxy);
    assert_eq!(std::fs::metadata(&pins).expect("pin dir").permissions().mode() & 0o777, 0o700);
    for f in std::fs::read_dir(&pins).expect("pins").flatten() {
        if f.file_name().to_string_lossy().starts_with("map-") {
            assert_eq!(f.metadata().expect("meta").permissions().mode() & 0o777, 0o600, "{:?}", f.path());
        }
    }
    // Everything weir does after start still works without the dropped capabilities: steered
    // upstream connects (SO_MARK), a reload that changes the service map, the heartbeat, and a
    // clean exit that unpins.
    assert_eq!(probe(PROBE, Some(&cg), &["--addr", "127.10.4.15:80", "--requests", "3"]).num("via"), 3);
    let two = format!("{one}[[service]]\nname = \"beta\"\nvip = \"127.10.4.16:80\"\nendpoints = [\"{}\"]\n", b.addr);
    weir.write_config(&steered_config(&cg, &two).replace("sink = \"off\"", "sink = \"stdout\""));
    weir.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "beta steered after SIGHUP", || {
        (probe(PROBE, Some(&cg), &["--addr", "127.10.4.16:80"]).by_endpoint("b") == 1).then_some(())
    });
    // The workers keep writing the heartbeat without the capabilities they dropped at start:
    // one written after this point, long after the drop, is fresher than the time since then.
    let since = std::time::Instant::now();
    eventually(Duration::from_secs(5), "a heartbeat written after the capability drop", || {
        heartbeat_age(&pins).filter(|age| *age < since.elapsed())
    });
    assert_eq!(
        probe(PROBE, Some(&cg), &["--addr", "127.10.4.15:80"]).num("via"),
        1,
        "heartbeat stopped without CAP_BPF?"
    );
    assert!(weir.terminate(Duration::from_secs(25)).success());
    assert!(!pins.exists(), "pins left behind after a clean exit without privileges");
}

#[test]
fn steering_keeps_working_while_the_config_source_is_unreadable() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let cg = Cgroup::create("static");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.17:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = WeirProcess::start(WEIR, &steered_config(&cg, &svc), None);
    let failures = || {
        let metrics = weir_tests::Client::connect(weir.admin).get("/metrics", "admin").body_string();
        weir_tests::metric_value(&metrics, "weir_config_reloads_total{result=\"failure\"}")
    };
    std::fs::set_permissions(&weir.config_path, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    weir.signal(libc::SIGHUP);
    // weir runs without CAP_DAC_OVERRIDE after start, so even as root it cannot read a 000 file.
    eventually(Duration::from_secs(5), "the reload of an unreadable file rejected", || {
        (failures() >= 1.0).then_some(())
    });
    std::fs::write(weir.config_path.with_extension("tmp"), "garbage [").expect("write");
    std::fs::rename(weir.config_path.with_extension("tmp"), &weir.config_path).expect("swap in an invalid config");
    weir.signal(libc::SIGHUP);
    // The file watcher may count the swap too: at least one more failure, no success.
    eventually(Duration::from_secs(5), "the reload of an invalid file rejected", || (failures() >= 2.0).then_some(()));
    let r = probe(PROBE, Some(&cg), &["--addr", "127.10.4.17:80", "--requests", "20", "--connections", "4"]);
    assert_eq!((r.num("ok"), r.num("via")), (20, 20), "steered traffic stopped with a bad config source: {:?}", r.json);
    let metrics = weir_tests::Client::connect(weir.admin).get("/metrics", "admin").body_string();
    assert_eq!(
        weir_tests::metric_value(&metrics, "weir_config_reloads_total{result=\"success\"}"),
        0.0,
        "a bad config source was applied"
    );
}

#[test]
fn the_pins_of_a_weir_that_never_came_back_are_removed() {
    require_root();
    let cg = Cgroup::create("gone");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.4.19:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let toml =
        steered_config(&cg, &svc).replace("[steering]\n", "[steering]\nfail_mode = \"closed\"\nfail_after_ms = 1000\n");
    let old = WeirProcess::start(WEIR, &toml, None);
    let old_pins = pin_dir_of(old.proxy);
    old.kill9();
    assert!(old_pins.exists());
    // Five fail_after periods after its last heartbeat that weir is gone for good; a weir on
    // another listen address removes its pins (whose links would otherwise keep refusing VIP
    // connects).
    eventually(Duration::from_secs(15), "the dead weir's heartbeat older than 5 × fail_after_ms", || {
        heartbeat_age(&old_pins).filter(|age| *age > Duration::from_millis(5_000))
    });
    let new = WeirProcess::start(WEIR, &toml, None);
    assert!(!old_pins.exists(), "stale pins of a dead weir remain: {}", old_pins.display());
    let r = probe(PROBE, Some(&cg), &["--addr", "127.10.4.19:80", "--requests", "3"]);
    assert_eq!((r.num("ok"), r.num("via")), (3, 3), "{:?}", r.json);
    drop(new);
}

#[test]
fn native_ipv6_vips_are_steered() {
    require_root();
    let cg = Cgroup::create("v6native");
    let a = Endpoint::start("a");
    // An IPv6 VIP on the loopback address, on a port held but not listening (connects are
    // refused), so that even an unsteered connect stays on this machine.
    let port = ReservedPort::on("::1".parse().expect("ip")).expect("reserve a port on [::1]");
    let vip = port.addr().to_string();
    let svc = format!("[[service]]\nname = \"alpha6\"\nvip = \"{vip}\"\nendpoints = [\"{}\"]\n", a.addr);
    let _weir = Weir::start(&steered_config(&cg, &svc));
    let r = probe(PROBE, Some(&cg), &["--addr", &vip, "--requests", "5"]);
    assert_eq!((r.num("ok"), r.num("via")), (5, 5), "connect6 to an IPv6 VIP: {:?}", r.json);
    let outside = probe(PROBE, None, &["--addr", &vip, "--requests", "1"]);
    assert_eq!(outside.num("ok"), 0, "a workload outside the cgroup was steered: {:?}", outside.json);
}
