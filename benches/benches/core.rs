//! Per-request bookkeeping on a worker: a balancer pick (+ start/finish) per policy and
//! endpoint count, a RED histogram record (`ServiceStats::record`), and an access-log record
//! push into the worker's `rtrb` ring (as `WorkerTelemetry::log` does).
//! Run: `cargo bench -p weir-benches --bench core`.

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use weir_benches::fixtures;
use weir_core::balance::LbPolicy;
use weir_core::stats::ServiceStats;

fn balance(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_pick");
    for policy in [LbPolicy::P2c, LbPolicy::RoundRobin, LbPolicy::Random] {
        for n in [3usize, 16, 128] {
            let mut b = fixtures::balancer(policy, n);
            let now = Instant::now();
            g.bench_with_input(BenchmarkId::new(format!("{policy:?}"), n), &n, |bench, _| {
                bench.iter(|| black_box(fixtures::run_pick(&mut b, now)))
            });
        }
    }
    g.finish();
}

fn stats(c: &mut Criterion) {
    let mut s = ServiceStats::default();
    let mut i = 0u64;
    c.bench_function("stats_record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            fixtures::run_record(&mut s, black_box(i));
        })
    });
}

fn accesslog(c: &mut Criterion) {
    let (mut producer, mut consumer) = rtrb::RingBuffer::new(65_536);
    let record = fixtures::log_record();
    let mut dropped = 0u64;
    c.bench_function("accesslog_ring_push", |b| {
        b.iter(|| fixtures::run_log_push(&mut producer, &mut consumer, black_box(record), &mut dropped))
    });
    let mut out = Vec::with_capacity(1024);
    c.bench_function("accesslog_write_json", |b| {
        b.iter(|| {
            out.clear();
            record.write_json(0, weir_core::accesslog::LineNames::default(), &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, balance, stats, accesslog);
criterion_main!(benches);
