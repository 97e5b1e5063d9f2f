//! The third-party clients and servers the HTTP/2, gRPC and WebSocket tests drive weir with,
//! as child processes: grpcio servers and clients (tests/clients/grpc_*.py), the Node
//! @grpc/grpc-js client, a `websockets` echo server and client, `nghttpd` (an HTTP/2 server),
//! and curl, nghttp and h2load. Each runs bounded in time; a script's answer is one JSON line.
//! Must not: be used by product code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use weir_testkit::{ReservedPort, eventually, tools};

/// tests/clients.
pub fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// A server script that prints `port <n>` once it serves and stops when its stdin closes.
#[derive(Debug)]
pub struct ScriptServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ScriptServer {
    fn start(mut cmd: Command, what: &str) -> ScriptServer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the port line");
        let port: u16 = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{what} did not say its port: {line:?}"));
        ScriptServer { child, stdin, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A grpcio server (tests/clients/grpc_server.py) called `name`; `args` as the script takes
/// them (`--status 14` for an unhealthy one).
pub fn grpc_server(name: &str, args: &[&str]) -> ScriptServer {
    let mut cmd = Command::new(tools::python());
    cmd.arg(scripts().join("grpc_server.py")).args(["--name", name]).args(args);
    ScriptServer::start(cmd, "the grpcio server")
}

/// A `websockets` echo server (tests/clients/ws.py).
pub fn ws_server() -> ScriptServer {
    let mut cmd = Command::new(tools::python());
    cmd.arg(scripts().join("ws.py")).arg("server");
    ScriptServer::start(cmd, "the websockets server")
}

/// Runs `cmd` to completion within `timeout`; its stdout when it exits 0, else a panic with
/// what it said.
pub fn run(cmd: &mut Command, timeout: Duration) -> String {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {shown}: {e}"));
    let (mut out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = weir_testkit::proc::wait_exit(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = (reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("{shown} failed ({s}):\n{stdout}\n{stderr}"),
        None => panic!("{shown} did not finish within {timeout:?}:\n{stdout}\n{stderr}"),
    }
}

fn last_json(out: &str) -> serde_json::Value {
    let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {out:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// tests/clients/grpc_client.py `args` against `target` with `:authority` `authority` ("-":
/// the target's own).
pub fn grpc_py(target: SocketAddr, authority: &str, args: &[&str]) -> serde_json::Value {
    grpc_py_in(None, target, authority, args)
}

/// [`grpc_py`] run inside `cgroup` (a steered workload) when given.
pub fn grpc_py_in(
    cgroup: Option<&std::path::Path>,
    target: SocketAddr,
    authority: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new(tools::python());
    cmd.arg(scripts().join("grpc_client.py")).arg(args[0]).arg(target.to_string()).arg(authority).args(&args[1..]);
    if let Some(cg) = cgroup {
        weir_testkit::cgroup::join_on_exec(&mut cmd, cg);
    }
    last_json(&run(&mut cmd, Duration::from_secs(120)))
}

/// tests/clients/grpc_client.js: `n` unary calls and a server-streaming one.
pub fn grpc_js(target: SocketAddr, authority: &str, n: usize) -> serde_json::Value {
    grpc_js_in(None, target, authority, n)
}

/// [`grpc_js`] run inside `cgroup` (a steered workload) when given.
pub fn grpc_js_in(
    cgroup: Option<&std::path::Path>,
    target: SocketAddr,
    authority: &str,
    n: usize,
) -> serde_json::Value {
    let mut cmd = Command::new("node");
    if let Some(cg) = cgroup {
        weir_testkit::cgroup::join_on_exec(&mut cmd, cg);
    }
    cmd.arg(scripts().join("grpc_client.js"))
        .arg(target.to_string())
        .arg(authority)
        .arg(n.to_string())
        .env("NODE_PATH", tools::node_path());
    last_json(&run(&mut cmd, Duration::from_secs(120)))
}

/// tests/clients/ws.py client: `n` messages of `size` bytes echoed, closed by `order`
/// (`client` or `server`).
pub fn ws_client(proxy: SocketAddr, host: &str, n: usize, size: usize, order: &str) -> serde_json::Value {
    let mut cmd = Command::new(tools::python());
    cmd.arg(scripts().join("ws.py")).args([
        "client",
        &proxy.to_string(),
        host,
        &n.to_string(),
        &size.to_string(),
        order,
    ]);
    last_json(&run(&mut cmd, Duration::from_secs(120)))
}

/// `nghttpd`, an HTTP/2 (h2c) server serving `docs` and echoing uploads, on a reserved port.
#[derive(Debug)]
pub struct Nghttpd {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _port: ReservedPort,
}

impl Nghttpd {
    /// Starts it on `docs` and waits until it accepts connections.
    pub fn start(docs: &std::path::Path) -> Nghttpd {
        let port = ReservedPort::loopback().expect("reserve a port");
        let addr = port.addr();
        let child = Command::new("nghttpd")
            .args(["--no-tls", "--echo-upload", "-a", "127.0.0.1", "-d"])
            .arg(docs)
            .arg(addr.port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nghttpd (Debian nghttp2-server; `cargo xtask setup` installs it)");
        eventually(Duration::from_secs(10), "nghttpd listening", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        });
        Nghttpd { child, addr, _port: port }
    }
}

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `bytes` to a fresh file under `dir` named `name`.
pub fn write_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create file");
    f.write_all(bytes).expect("write file");
    path
}
