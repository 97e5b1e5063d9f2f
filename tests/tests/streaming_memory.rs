//! Streaming memory: 100 MiB bodies each way through weir without the process holding them.
//! Its own test binary, because it measures the whole process's RSS: other tests running
//! beside it in the same process would move that number.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use weir_tests::{Client, Endpoint, Weir};

fn config(ep: &Endpoint) -> String {
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n[[service]]\nname = \"s\"\nvip = \"127.10.1.5:80\"\nendpoints = [\"{}\"]\n",
        ep.addr
    )
}

#[test]
fn hundred_mib_bodies_stream_through_without_rss_growth() {
    const SIZE: usize = 100 * 1024 * 1024;
    let ep = Endpoint::start("a");
    let weir = Weir::start(&config(&ep));
    let mut c = Client::connect(weir.proxy);
    // Warm up buffers, then measure.
    assert_eq!(c.get("/bytes/1000000", "s").status, 200);
    let before = weir_tests::rss_kib(std::process::id());

    // Download: read and discard as it arrives.
    let mut s = TcpStream::connect(weir.proxy).expect("connect");
    write!(s, "GET /bytes/{SIZE} HTTP/1.1\r\nhost: s\r\n\r\n").expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).expect("head");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().expect("length");
        }
    }
    assert_eq!(len, SIZE);
    let got = std::io::copy(&mut r.by_ref().take(SIZE as u64), &mut std::io::sink()).expect("body");
    assert_eq!(got as usize, SIZE);

    // Upload: stream a 100 MiB Content-Length body.
    write!(s, "PUT /up HTTP/1.1\r\nhost: s\r\ncontent-length: {SIZE}\r\n\r\n").expect("write");
    let block = vec![b'y'; 1 << 20];
    for _ in 0..100 {
        s.write_all(&block).expect("upload");
    }
    let mut head = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("head");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("x-body-bytes: {SIZE}")), "{head}");

    let grown = weir_tests::rss_kib(std::process::id()).saturating_sub(before);
    // The whole test process (client, endpoint, weir) may not hold the bodies: a few MiB of
    // buffers at most.
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB while streaming 200 MiB");
}
