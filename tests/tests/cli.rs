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
    let admin = weir_tests::free_port();
    let p = write(
        "bad.toml",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[service]]\nname = \"a\"\nvip = \"nope\"\n"),
    );
    let out = Command::new(WEIR).args(["run", "--config"]).arg(&p).output().expect("run weir");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service[0].vip") && err.contains(":5:"), "{err}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", admin)).is_ok(), "the admin port stayed bound");
}

#[test]
fn version_is_printed() {
    let out = Command::new(WEIR).arg("--version").output().expect("run weir");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
