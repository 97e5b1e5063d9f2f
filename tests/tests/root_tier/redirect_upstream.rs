//! Root tier: the socket-level redirect on the upstream leg, weir ↔ an endpoint on this node: on
//! its loopback, or a pod's (a network namespace behind a veth pair). The endpoint here is this
//! test process, whose cgroup runs weir's sock_ops program (weir attaches it to its own cgroup,
//! which is the test's): its accepted sockets are enrolled with weir's. The endpoint reads
//! TCP_INFO of its own sockets, which proves which path the bytes took; the tests run in both
//! modes (`WEIR_TEST_SOCKET_REDIRECT=off` is the second pass).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_tests::root::{Cgroup, NetNs, require_root};
use weir_tests::{Client, Weir, eventually, socket_redirect_on};

use super::steering::steered_config;

/// (bytes_acked, bytes_received) of a socket's TCP_INFO: what went over TCP. On an accepted
/// socket `bytes_acked` counts no handshake byte (on a connecting one it counts the SYN).
fn tcp_bytes(s: &TcpStream) -> (u64, u64) {
    // SAFETY: tcp_info is plain old data; zeroed is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    (info.tcpi_bytes_acked, info.tcpi_bytes_received)
}

/// Reads one request head and its `content-length` body; false at EOF.
fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        req.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
    let len =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().expect("length"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    req.extend(body);
    Some(req)
}

/// What the endpoint saw: per connection, TCP_INFO when its last request was read; and the
/// requests.
#[derive(Default)]
struct Seen {
    connections: Vec<(u64, u64)>,
    requests: Vec<String>,
}

/// An endpoint on 127.0.0.1 (see [`serve`]).
fn endpoint(drop_posts: bool, per_connection: usize) -> (SocketAddr, Arc<Mutex<Seen>>) {
    serve(TcpListener::bind("127.0.0.1:0").expect("bind"), drop_posts, per_connection)
}

/// An endpoint on `l` that answers every request (a connection per thread) with 200 and
/// closes a connection after `per_connection` answers (saying so), except that `drop_posts`
/// makes it read a POST whole and close without answering.
fn serve(l: TcpListener, drop_posts: bool, per_connection: usize) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = s2.clone();
            std::thread::spawn(move || {
                let slot = {
                    let mut s = seen.lock().expect("lock");
                    s.connections.push((0, 0));
                    s.connections.len() - 1
                };
                for n in 1..=per_connection {
                    let Some(req) = read_request(&mut conn) else { return };
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                    let post = line.starts_with("POST");
                    {
                        // Before answering: the client may look as soon as it has the answer.
                        let mut s = seen.lock().expect("lock");
                        s.requests.push(line);
                        s.connections[slot] = tcp_bytes(&conn);
                    }
                    if post && drop_posts {
                        return;
                    }
                    let close = if n == per_connection { "connection: close\r\n" } else { "" };
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\nok");
                    conn.write_all(answer.as_bytes()).expect("answer");
                }
            });
        }
    });
    (addr, seen)
}

fn config(cg: &Cgroup, ep: SocketAddr, vip: &str) -> String {
    steered_config(cg, &format!("[[service]]\nname = \"alpha\"\nvip = \"{vip}\"\nendpoints = [\"{ep}\"]\n"))
}

/// (upstream_paired, upstream_unpaired) of `/steering`.
pub(super) fn pairs(weir: &Weir) -> (u64, u64) {
    let (_, body) = weir.admin_get("/steering");
    let s: serde_json::Value = serde_json::from_str(&body).expect("/steering JSON");
    (
        s["upstream_paired"].as_u64().expect("upstream_paired"),
        s["upstream_unpaired"].as_u64().expect("upstream_unpaired"),
    )
}

/// Sends 20 requests through `weir` to service `alpha` (its endpoint answers 5 per connection,
/// so 4 connections), then checks each upstream connection's path against `/steering`'s
/// counts. `loopback`: the endpoint is on this node's loopback, where weir also counts the
/// connections it could not pair.
fn legs_move_socket_to_socket(weir: &Weir, seen: &Mutex<Seen>, loopback: bool) {
    let mut c = Client::connect(weir.proxy);
    for i in 0..20 {
        assert_eq!(c.request("POST", &format!("/{i}"), "alpha", b"hello").expect("answer").status, 200);
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.requests.len(), 20);
    let conns = seen.connections.len() as u64;
    let over_tcp = seen.connections.iter().filter(|(_, received)| *received > 0).count() as u64;
    let (paired, unpaired) = pairs(weir);
    if socket_redirect_on() {
        // Every connection whose endpoint side was enrolled in time carried no byte over TCP
        // either way; one whose side was not yet (weir's connect() returned before the
        // endpoint's handshake completed, a race the kernel decides) ran over TCP, counted
        // when the endpoint is on loopback.
        assert_eq!(paired, conns - over_tcp, "{:?}", seen.connections);
        assert_eq!(unpaired, if loopback { over_tcp } else { 0 }, "{:?}", seen.connections);
        for &(acked, received) in &seen.connections {
            assert!(received > 0 || acked == 0, "a response took TCP on a redirected leg: {:?}", seen.connections);
        }
        assert!(paired > 0, "no upstream connection was redirected");
    } else {
        assert_eq!(over_tcp, conns, "{:?}", seen.connections);
        assert_eq!((paired, unpaired), (0, 0));
    }
}

#[test]
fn the_upstream_leg_to_a_loopback_endpoint_moves_socket_to_socket() {
    require_root();
    let cg = Cgroup::create("redirup");
    let (ep, seen) = endpoint(false, 5);
    let weir = Weir::start(&config(&cg, ep, "127.10.5.20:80"));
    legs_move_socket_to_socket(&weir, &seen, true);
}

#[test]
fn the_upstream_leg_to_a_local_pod_moves_socket_to_socket() {
    require_root();
    let cg = Cgroup::create("redirpod");
    // A pod on this node: its own network namespace behind a veth pair, its address not this
    // namespace's; its cgroup is this test's (weir's own), where weir's sock_ops program runs.
    let pod = NetNs::create("redirpod", 77);
    let (ep, seen) = serve(pod.listen(), false, 5);
    let weir = Weir::start(&config(&cg, ep, "127.10.5.23:80"));
    legs_move_socket_to_socket(&weir, &seen, false);
}

#[test]
fn a_post_the_endpoint_read_and_dropped_is_never_sent_twice() {
    require_root();
    let cg = Cgroup::create("redirdrop");
    let (ep, seen) = endpoint(true, 100);
    let weir = Weir::start(&config(&cg, ep, "127.10.5.21:80"));
    let mut c = Client::connect(weir.proxy);
    // A pooled connection first, so that the POST goes on a reused one: the case where weir
    // resends a request the endpoint provably never read.
    assert_eq!(c.get("/warm", "alpha").status, 200);
    let r = c.request("POST", "/once", "alpha", b"hello").expect("an answer");
    assert_eq!(r.status, 502, "{:?}", r.header("x-weir-error"));
    eventually(Duration::from_secs(5), "the endpoint saw the POST", || {
        seen.lock().expect("lock").requests.iter().any(|l| l.starts_with("POST")).then_some(())
    });
    let posts = seen.lock().expect("lock").requests.iter().filter(|l| l.starts_with("POST")).count();
    assert_eq!(posts, 1, "the endpoint read the POST, so it must not get it again");
}

#[test]
fn a_server_first_endpoint_s_greeting_is_never_lost() {
    require_root();
    let cg = Cgroup::create("redirgreet");
    // Speaks first (as SMTP, MySQL or Redis' HELLO-less servers do), then echoes lines.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ep = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                conn.write_all(b"220 ready\n").expect("greet");
                let mut r = std::io::BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
                    conn.write_all(format!("echo {line}").as_bytes()).expect("echo");
                    line.clear();
                }
            });
        }
    });
    let port = weir_tests::ReservedPort::loopback().expect("reserve a port");
    let svc = format!(
        "[[service]]\nname = \"smtp\"\nvip = \"127.10.5.22:25\"\nlisten = \"{}\"\nprotocol = \"tcp\"\nendpoints = [\"{ep}\"]\n",
        port.addr()
    );
    let weir = Weir::start(&steered_config(&cg, &svc));
    for i in 0..20 {
        let s = TcpStream::connect(port.addr()).expect("connect to the service listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
        let mut greeting = String::new();
        std::io::BufRead::read_line(&mut r, &mut greeting).expect("greeting");
        assert_eq!(greeting, "220 ready\n", "connection {i}");
        (&s).write_all(format!("hello {i}\n").as_bytes()).expect("write");
        let mut back = String::new();
        std::io::BufRead::read_line(&mut r, &mut back).expect("echo");
        assert_eq!(back, format!("echo hello {i}\n"), "connection {i}");
    }
    let (paired, unpaired) = pairs(&weir);
    assert_eq!(paired + unpaired, if socket_redirect_on() { 20 } else { 0 });
}
