//! Request-head parsing and framing: `parse_request` on a typical mesh request,
//! parse + `write_request_head` (what weir does to every request), `ChunkedDecoder` over an
//! 8 KiB chunked body. Run: `cargo bench -p weir-benches --bench http`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use weir_benches::fixtures::{self, REQUEST};
use weir_proxy::http::{ChunkedDecoder, HeadLimits, RequestHead};

fn http(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    let mut head = RequestHead::with_capacity(16);
    g.bench_function("parse_request", |b| b.iter(|| black_box(fixtures::run_parse(&mut head, &limits))));
    let mut out = Vec::with_capacity(1024);
    g.bench_function("parse_and_write_request_head", |b| {
        b.iter(|| black_box(fixtures::run_parse_and_write(&mut head, &limits, &mut out)))
    });
    let body = fixtures::chunked_body();
    g.throughput(Throughput::Bytes(body.len() as u64));
    let mut decoder = ChunkedDecoder::new();
    g.bench_function("chunked_decode_8x1KiB", |b| b.iter(|| black_box(fixtures::run_chunked(&mut decoder, &body))));
    g.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
