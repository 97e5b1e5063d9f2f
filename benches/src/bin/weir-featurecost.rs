//! `weir-featurecost [--calls N]`: what caller identity and tracing add to one request on a
//! worker, in nanoseconds, as one JSON object (see `weir_benches::featurecost`). Pin it with
//! `taskset`; `cargo xtask bench` runs it on the proxy's CPU.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(2_000_000), |v| v.parse::<u64>())
        .unwrap_or_else(|e| panic!("--calls: {e}"));
    println!("{}", weir_benches::featurecost::run(calls.max(1000)));
}
