//! The weir binary's library: reading the config, eBPF steering, proxy workers, reloads (from
//! the main thread's signal loop and the admin thread's file watcher), the admin server and
//! the access-log shipper. Exposed as a library so
//! integration tests can run weir in-process.

pub mod admin;
pub mod allocator;
pub mod app;
mod bpf_sys;
pub mod cli;
pub mod kubernetes;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod privileges;
pub mod shipper;
pub mod steering;
pub mod watch;
