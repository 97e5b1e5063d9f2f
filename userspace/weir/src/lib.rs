//! The weir binary's library: reading the config, eBPF steering, proxy workers, reloads (from
//! the main thread's signal loop and the admin thread's file watcher), the admin server, the
//! access-log shipper, caller identity, the span exporter, and takeovers of one running weir
//! by another. Exposed as a library so integration tests can run weir in-process.

pub mod admin;
pub mod allocator;
pub mod app;
mod bpf_sys;
pub mod cli;
pub mod fds;
pub mod identity;
pub mod kubernetes;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod otlp;
pub mod privileges;
mod reload;
pub mod shipper;
pub mod steering;
pub mod takeover;
pub mod watch;
