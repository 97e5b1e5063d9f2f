//! `weir-probe`: the workload of the root-tier tests. Optionally joins a cgroup (so eBPF
//! steering applies to it), then opens connections to `--addr` and sends requests, and prints
//! one JSON object: how many succeeded, statuses, which endpoint answered (`x-endpoint`), how
//! many went through weir (`x-seen-via` set by weir's `via`), and the errors seen.
//!
//! Modes: `http` (default) sends `--requests` GETs over `--connections` keep-alive
//! connections in parallel; `tcp` sends one line per connection and reads the echo.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(cg) = arg(&args, "--cgroup") {
        std::fs::write(std::path::Path::new(&cg).join("cgroup.procs"), "0").expect("join cgroup");
    }
    if let Some(cpu) = arg(&args, "--cpu") {
        pin_to_cpu(cpu.parse().expect("--cpu N"));
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

/// Pins the whole process (all its threads, present and future) to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: sched_setaffinity on this process with a zero-initialised, then filled cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pin to CPU {cpu}");
    }
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

fn connect(addr: SocketAddr, s: &mut Session) -> Option<(BufReader<TcpStream>, TcpStream)> {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(c) => {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            if let Ok(p) = c.peer_addr() {
                *s.peers.entry(p.to_string()).or_default() += 1;
            }
            let r = BufReader::new(c.try_clone().ok()?);
            Some((r, c))
        }
        Err(e) => {
            s.errors.push(format!("connect {addr}: {e}"));
            None
        }
    }
}

fn http_session(addr: SocketAddr, host: &str, n: usize, hold: Option<std::time::Duration>) -> Session {
    let mut s = Session::default();
    let mut conn = None;
    for i in 0..n {
        if let Some(h) = hold
            && i == n / 2
        {
            std::thread::sleep(h);
        }
        if conn.is_none() {
            conn = connect(addr, &mut s);
        }
        let Some((reader, writer)) = conn.as_mut() else { continue };
        match exchange(reader, writer, host) {
            Ok((status, endpoint, seen_via)) => {
                *s.statuses.entry(status.to_string()).or_default() += 1;
                if status == 200 {
                    s.ok += 1;
                }
                if let Some(e) = endpoint {
                    *s.endpoints.entry(e).or_default() += 1;
                }
                s.via += u64::from(seen_via);
            }
            Err(e) => {
                s.errors.push(format!("request: {e}"));
                conn = None;
            }
        }
    }
    s
}

fn exchange(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    host: &str,
) -> std::io::Result<(u16, Option<String>, bool)> {
    write!(writer, "GET /probe HTTP/1.1\r\nhost: {host}\r\n\r\n")?;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
    }
    let status: u16 = line.get(9..12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let (mut len, mut endpoint, mut via) = (0usize, None, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((n, v)) = l.split_once(':') else { continue };
        match n.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "x-endpoint" => endpoint = Some(v.trim().to_string()),
            "x-seen-via" => via = v.contains("weir"),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((status, endpoint, via))
}

fn tcp_session(addr: SocketAddr, n: usize) -> Session {
    let mut s = Session::default();
    for i in 0..n {
        let Some((mut reader, mut writer)) = connect(addr, &mut s) else { continue };
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
