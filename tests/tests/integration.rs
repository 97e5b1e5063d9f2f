//! weir's integration tests, one binary with a module per area. The loopback tier runs
//! unprivileged; the `steering` module is the root tier (eBPF, cgroups) and fails loudly
//! without root.

mod cli;
mod data_path;
mod deploy;
mod errors;
mod http11;
mod http11_interop;
mod kubernetes;
mod last_words;
mod logging;
mod memory;
mod observability;
mod operations;
mod raw;
mod resilience;
mod soak;
mod steering;
