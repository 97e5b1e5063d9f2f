//! `weir-probe`: the workload of the root-tier tests. Optionally joins a cgroup (so eBPF
//! steering applies to it), then opens connections to `--addr` and sends requests, and prints
//! one JSON object: how many succeeded, statuses, which endpoint answered (`x-endpoint`), how
//! many went through weir (`x-seen-via` set by weir's `via`), and the errors seen.
//!
//! Modes: `http` (default) sends `--requests` GETs over `--connections` keep-alive
//! connections in parallel; `tcp` sends one line per connection and reads the echo.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use weir_testkit::Client;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(cg) = arg(&args, "--cgroup") {
        weir_testkit::cgroup::join(std::path::Path::new(&cg)).expect("join cgroup");
    }
    if let Some(cpu) = arg(&args, "--cpu") {
        let cpu: usize = cpu.parse().expect("--cpu N");
        weir_testkit::proc::pin_to_cpu(cpu).unwrap_or_else(|e| panic!("pin to CPU {cpu}: {e}"));
    }
    let addr: SocketAddr = arg(&args, "--addr").expect("--addr").parse().expect("--addr is IP:PORT");
    let requests: usize = arg(&args, "--requests").map_or(1, |v| v.parse().expect("--requests"));
    let connections: usize = arg(&args, "--connections").map_or(1, |v| v.parse().expect("--connections"));
    let host = arg(&args, "--host").unwrap_or_else(|| "probe".into());
    let mode = arg(&args, "--mode").unwrap_or_else(|| "http".into());
    // `--hold-ms N`: after half the requests, pause N ms on the same connections, then send
    // the rest (to prove a connection survives what happens meanwhile).
    let hold = arg(&args, "--hold-ms").map(|v| std::time::Duration::from_millis(v.parse().expect("--hold-ms")));

    let per_conn = requests.div_ceil(connections.max(1));
    let handles: Vec<_> = (0..connections)
        .map(|i| {
            let host = host.clone();
            let mode = mode.clone();
            let n = per_conn.min(requests.saturating_sub(i * per_conn));
            std::thread::spawn(move || match mode.as_str() {
                "tcp" => tcp_session(addr, n),
                _ => http_session(addr, &host, n, hold),
            })
        })
        .collect();
    let mut ok = 0u64;
    let mut via = 0u64;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut endpoints: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    let mut peers: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let r = h.join().expect("probe thread");
        ok += r.ok;
        via += r.via;
        for (k, v) in r.statuses {
            *statuses.entry(k).or_default() += v;
        }
        for (k, v) in r.endpoints {
            *endpoints.entry(k).or_default() += v;
        }
        for (k, v) in r.peers {
            *peers.entry(k).or_default() += v;
        }
        errors.extend(r.errors);
    }
    errors.truncate(20);
    println!(
        "{}",
        serde_json::json!({ "ok": ok, "via": via, "statuses": statuses, "endpoints": endpoints, "errors": errors, "peers": peers })
    );
}

#[derive(Default)]
struct Session {
    ok: u64,
    via: u64,
    statuses: BTreeMap<String, u64>,
    endpoints: BTreeMap<String, u64>,
    errors: Vec<String>,
    /// The address the socket ended up connected to (getpeername), counted.
    peers: BTreeMap<String, u64>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts where a new connection ended up (getpeername: the proxy when steered).
fn count_peer(s: &mut Session, peer: std::io::Result<SocketAddr>) {
    if let Ok(p) = peer {
        *s.peers.entry(p.to_string()).or_default() += 1;
    }
}

fn http_session(addr: SocketAddr, host: &str, n: usize, hold: Option<std::time::Duration>) -> Session {
    let mut s = Session::default();
    let mut conn: Option<Client> = None;
    for i in 0..n {
        if let Some(h) = hold
            && i == n / 2
        {
            // The behaviour under test: the connection stays open, idle, for this long.
            std::thread::sleep(h);
        }
        if conn.is_none() {
            match Client::try_connect_timeout(addr, CONNECT_TIMEOUT, READ_TIMEOUT) {
                Ok(c) => {
                    count_peer(&mut s, c.peer_addr());
                    conn = Some(c);
                }
                Err(e) => {
                    s.errors.push(format!("connect {addr}: {e}"));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.request("GET", "/probe", host, b"") {
            Ok(r) => {
                *s.statuses.entry(r.status.to_string()).or_default() += 1;
                if r.status == 200 {
                    s.ok += 1;
                }
                if let Some(e) = r.header("x-endpoint") {
                    *s.endpoints.entry(e.to_string()).or_default() += 1;
                }
                s.via += u64::from(r.header("x-seen-via").is_some_and(|v| v.contains("weir")));
            }
            Err(e) => {
                s.errors.push(format!("request: {e}"));
                conn = None;
            }
        }
    }
    s
}

fn tcp_session(addr: SocketAddr, n: usize) -> Session {
    let mut s = Session::default();
    for i in 0..n {
        let mut writer = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                s.errors.push(format!("connect {addr}: {e}"));
                continue;
            }
        };
        count_peer(&mut s, writer.peer_addr());
        let _ = writer.set_read_timeout(Some(READ_TIMEOUT));
        let Ok(mut reader) = writer.try_clone().map(BufReader::new) else { continue };
        let msg = format!("ping {i}\n");
        let mut back = String::new();
        match writer.write_all(msg.as_bytes()).and_then(|_| reader.read_line(&mut back)) {
            Ok(_) if back.starts_with("echo:") => {
                s.ok += 1;
                let who = back.trim().split(':').nth(1).unwrap_or("").to_string();
                *s.endpoints.entry(who).or_default() += 1;
            }
            Ok(_) => s.errors.push(format!("tcp: unexpected reply {back:?}")),
            Err(e) => s.errors.push(format!("tcp: {e}")),
        }
    }
    s
}
