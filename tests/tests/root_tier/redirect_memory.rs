//! Root tier: the socket-level redirect has no backpressure. A steered workload that stops
//! reading while weir sends it a large response fills its socket's memory, and weir's next
//! send into it is refused with ENOMEM instead of blocking (with the redirect off, TCP's window
//! stops weir instead). The workload runs in a cgroup v1 memory cgroup whose TCP memory is
//! limited to 256 KiB (`TcpMemoryLimit`), so the memory runs out at once and on cue; weir's
//! writes must wait and go on once it reads again, over HTTP/1.1 (completion-based writes) and
//! HTTP/2 (readiness-based ones) alike. Runs in both redirect modes (with it off, as a paused
//! reader over TCP).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_tests::root::{Cgroup, TcpMemoryLimit, require_root};
use weir_tests::testkit::cgroup::join_on_exec;
use weir_tests::{Endpoint, Weir, eventually, socket_redirect_on};

use super::steering::steered_config;

/// The response: far more than the memory limit, less than the redirect's budget.
const SIZE: u64 = 16 << 20;
const LIMIT: u64 = 256 << 10;

/// A client `script args…` in `cg` and `mem` that says one line once it asked, then waits for
/// a line on stdin before reading.
fn paused(
    cg: &Cgroup,
    mem: &TcpMemoryLimit,
    script: &str,
    args: &[&str],
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(weir_tests::testkit::tools::python());
    cmd.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients").join(script)).args(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    join_on_exec(&mut cmd, &cg.path);
    // With the redirect off the limit is not needed (TCP's window holds weir back), and over
    // TCP it would only make the kernel drop and retransmit, at its own slow pace.
    if socket_redirect_on() {
        join_on_exec(&mut cmd, &mem.path);
    }
    let mut child = cmd.spawn().expect("client");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

/// Lets the paused client read once its socket memory is full (with the redirect on: what
/// weir redirected filled it), and returns its result line.
fn resume(mut child: Child, mut out: BufReader<std::process::ChildStdout>, mem: &TcpMemoryLimit) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("the client says it asked");
    if socket_redirect_on() {
        eventually(Duration::from_secs(20), "the workload's socket memory full", || {
            (mem.max_usage() >= mem.limit).then_some(())
        });
    }
    child.stdin.take().expect("stdin").write_all(b"read\n").expect("tell the client to read");
    line.clear();
    out.read_line(&mut line).expect("the client's result");
    assert!(child.wait().expect("client exit").success());
    line
}

#[test]
fn a_workload_whose_socket_memory_is_full_gets_every_byte_over_http1_and_http2() {
    require_root();
    let cg = Cgroup::create("redirmem");
    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"alpha\"\nvip = \"127.10.5.12:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = Weir::start(&steered_config(&cg, &svc));
    let size = SIZE.to_string();

    let mem = TcpMemoryLimit::create("redirmem1", LIMIT);
    let (child, out) = paused(&cg, &mem, "redirect_client.py", &["get_slow", "127.10.5.12:80", "alpha", &size]);
    let line = resume(child, out, &mem);
    let r: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(
        (r["status"].as_u64(), r["body"].as_u64(), r["all_x"].as_bool()),
        (Some(200), Some(SIZE), Some(true)),
        "HTTP/1.1: {r}"
    );

    let mem = TcpMemoryLimit::create("redirmem2", LIMIT);
    let path = format!("/bytes/{SIZE}");
    let (child, out) = paused(&cg, &mem, "h2_abuse.py", &["pause-read", "127.10.5.12:80", "alpha", &path, &size]);
    let line = resume(child, out, &mem);
    assert_eq!(line.trim(), format!("status=200 data={SIZE} reset=- goaway=- closed=False"), "HTTP/2");
    // Both counted as answered.
    super::redirect::wait_answered(&weir, 2.0);
}
