//! weir's benchmark support: the fixtures the criterion micro-benchmarks (benches/*.rs) run
//! on, and the constant-rate HTTP load generator (`weir-loadgen`) that `cargo xtask bench`
//! drives against weir and its peers, and what caller identity and tracing add to a request
//! (`weir-featurecost`). Must not: be used by product code.

pub mod featurecost;
pub mod fixtures;
pub mod loadgen;
