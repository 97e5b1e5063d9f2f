//! Drives [`fuzz_request`] over hand-written vectors and deterministic mutations of them, so
//! the fuzz invariants are exercised on every `cargo test`.

use super::*;

const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nConnection: x, close\r\nX: 1\r\n\r\nabc",
    b"GET http://svc/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\nExpect: 100-continue\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /%41?x=%2f HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\nConnection: upgrade\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\nX:\r\n\r\n",
    b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
    b"GET /a-rather-long-path/that/crosses/the/small/uri/limit?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nA: 0123456789012345678901234567890123456789\r\n\
B: 0123456789012345678901234567890123456789\r\nC: 0123456789012345678901234567890123456789\r\n\
D: 0123456789012345678901234567890123456789\r\nE: 0123456789012345678901234567890123456789\r\n\
F: 0123456789012345678901234567890123456789\r\n\r\n",
];

#[test]
fn fuzz_seeds() {
    for s in SEEDS {
        fuzz_request(s);
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: &[u8] = b" \t\r\n:;,=\"\\\0\x01\x7f\xff/?#%0aF-";

#[test]
fn fuzz_mutations() {
    let mut rng = Rng(0x5eed_cafe_f00d_beef);
    let iters = std::env::var("WEIR_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    for _ in 0..iters {
        let mut v = SEEDS[rng.below(SEEDS.len())].to_vec();
        for _ in 0..1 + rng.below(2) {
            let at = rng.below(v.len() + 1);
            match rng.below(10) {
                0..4 if at < v.len() => v[at] = INTERESTING[rng.below(INTERESTING.len())],
                4..7 => v.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                7..9 if at < v.len() => {
                    v.remove(at);
                }
                _ => {
                    let other = SEEDS[rng.below(SEEDS.len())];
                    let from = rng.below(other.len());
                    let len = rng.below(other.len() - from + 1);
                    v.splice(at..at, other[from..from + len].iter().copied());
                }
            }
        }
        fuzz_request(&v);
    }
}
