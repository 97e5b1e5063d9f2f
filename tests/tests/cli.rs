//! The `weir` command: `check` exit codes and messages, `run` refusing an invalid config
//! before it touches anything, `--version`.

use std::process::Command;

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = weir_tests::scratch_dir("cli");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn check_accepts_a_valid_config() {
    let p = write("ok.toml", "[[service]]\nname = \"a\"\nvip = \"127.10.3.1:80\"\nendpoints = [\"127.0.0.1:1\"]\n");
    let out = Command::new(WEIR).args(["check", "--config"]).arg(&p).output().expect("run weir");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 service)"));
}

#[test]
fn check_names_file_line_field_and_value() {
    let p = write("bad.toml", "[proxy]\nworkers = 1\n\n[[service]]\nname = \"a\"\nvip = \"127.10.3.1\"\n");
    let out = Command::new(WEIR).args(["check", "--config"]).arg(&p).output().expect("run weir");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:6:", p.display())), "no file:line in {err}");
    assert!(err.contains("service[0].vip"), "no field in {err}");
    assert!(err.contains("\"127.10.3.1\""), "no value in {err}");
}

#[test]
fn run_refuses_an_invalid_config_with_the_same_message_and_binds_nothing() {
    // A port held (bound, not listening) for the test: weir could bind it (SO_REUSEADDR), so
    // finding it still free for a listener afterwards means weir never held it.
    let admin = weir_tests::ReservedPort::loopback().expect("reserve a port");
    let p = write(
        "bad.toml",
        &format!("[admin]\nlisten = \"{}\"\n[[service]]\nname = \"a\"\nvip = \"nope\"\n", admin.addr()),
    );
    let out = Command::new(WEIR).args(["run", "--config"]).arg(&p).output().expect("run weir");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service[0].vip") && err.contains(":5:"), "{err}");
    assert!(std::net::TcpListener::bind(admin.addr()).is_ok(), "the admin port stayed bound");
}

#[test]
fn version_is_printed() {
    let out = Command::new(WEIR).arg("--version").output().expect("run weir");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn run_on_port_0_reports_the_bound_ports_and_reloads_keep_them() {
    let ep = weir_tests::Endpoint::start("a");
    let toml = format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n[[service]]\nname = \"a\"\nvip = \"127.10.3.2:80\"\nendpoints = [\"{}\"]\n",
        ep.addr
    );
    // `WeirProcess` writes `listen = "127.0.0.1:0"` for both and reads the ready file.
    let weir = weir_tests::WeirProcess::start(WEIR, &toml, None);
    assert!(weir.proxy.port() != 0 && weir.admin.port() != 0 && weir.proxy != weir.admin);
    assert!(std::fs::read_to_string(&weir.config_path).expect("config").contains("\"127.0.0.1:0\""));
    let out = Command::new(WEIR).args(["check", "--config"]).arg(&weir.config_path).output().expect("run weir");
    assert!(out.status.success(), "weir check rejects port 0: {}", String::from_utf8_lossy(&out.stderr));
    // Both workers serve the one bound port.
    for _ in 0..8 {
        let r = weir_tests::Client::connect(weir.proxy).get("/", "a");
        assert_eq!((r.status, r.header("x-endpoint")), (200, Some("a")));
    }
    let admin_get = |path: &str| {
        let r = weir_tests::testkit::client::get_once(weir.admin, "admin", path, std::time::Duration::from_secs(5))
            .expect("admin GET");
        assert_eq!(r.status, 200, "{path}");
        r.body_string()
    };
    let config: serde_json::Value = serde_json::from_str(&admin_get("/config")).expect("/config JSON");
    assert_eq!(config["config"]["proxy"]["listen"], weir.proxy.to_string(), "/config shows the bound proxy port");
    assert_eq!(config["config"]["admin"]["listen"], weir.admin.to_string(), "/config shows the bound admin port");
    let reloads = |result: &str| {
        weir_tests::metric_value(&admin_get("/metrics"), &format!("weir_config_reloads_total{{result=\"{result}\"}}"))
    };
    // The same file (still port 0) with another endpoint list reloads: port 0 reads back as
    // the bound port, not as a change of a restart-only field.
    let other = weir_tests::Endpoint::start("b");
    weir.write_config(&toml.replace(&ep.addr.to_string(), &other.addr.to_string()));
    weir.signal(libc::SIGHUP);
    weir_tests::eventually(std::time::Duration::from_secs(5), "the reload applied", || {
        (reloads("success") == 1.0).then_some(())
    });
    assert_eq!(weir_tests::Client::connect(weir.proxy).get("/", "a").header("x-endpoint"), Some("b"));
    // Moving the proxy to another port is a restart-only change, rejected.
    let moved = weir_tests::ReservedPort::loopback().expect("reserve a port");
    weir.write_config(&toml.replace("@PROXY@", &moved.addr().to_string()));
    weir.signal(libc::SIGHUP);
    weir_tests::eventually(std::time::Duration::from_secs(5), "the reload rejected", || {
        (reloads("failure") == 1.0).then_some(())
    });
    let config: serde_json::Value = serde_json::from_str(&admin_get("/config")).expect("/config JSON");
    let err = config["last_reload_error"].as_str().unwrap_or_default();
    assert!(err.contains("[proxy] listen") && !err.contains("[admin] listen"), "{err}");
}
