//! Config snapshot build (`weir_proxy::Snapshot::build`), the step of every reload after
//! validation, for small and large service tables. Run:
//! `cargo bench -p weir-benches --bench snapshot`.

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use weir_benches::fixtures;
use weir_proxy::Snapshot;

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_build");
    for (services, endpoints) in [(10usize, 3usize), (100, 10), (1000, 10)] {
        let config = fixtures::config(services, endpoints);
        let previous = Snapshot::build(config.clone(), 2, None);
        let id = format!("{services}x{endpoints}");
        g.bench_with_input(BenchmarkId::new("fresh", &id), &config, |b, cfg| {
            b.iter_batched(|| cfg.clone(), |cfg| black_box(Snapshot::build(cfg, 2, None)), BatchSize::SmallInput)
        });
        g.bench_with_input(BenchmarkId::new("reload", &id), &config, |b, cfg| {
            b.iter_batched(
                || cfg.clone(),
                |cfg| black_box(Snapshot::build(cfg, 2, Some(&previous))),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = snapshot
}
criterion_main!(benches);
