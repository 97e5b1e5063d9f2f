//! weir's integration tests, one binary with a module per area. The loopback tier runs
//! unprivileged; `root_tier` (eBPF, cgroups) needs root and fails loudly without it.

mod cli;
mod data_path;
mod deploy;
mod descriptors;
mod errors;
mod http11;
mod http11_interop;
mod http2;
mod http2_abuse;
mod kubernetes_routes;
mod last_words;
mod logging;
mod observability;
mod operations;
mod policy;
mod raw;
mod resilience;
mod root_tier;
mod scale;
mod soak;
mod takeover;
mod traces;
