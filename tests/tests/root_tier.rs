//! The root tier: eBPF steering on the real kernel, in cgroups each test creates and removes
//! (through the cgroup v2 mount found in /proc/self/mountinfo, or a second mount of the
//! hierarchy); weir in a memory cgroup; the access log on a full (tmpfs) disk. Every test here
//! needs root and fails loudly without it; `cargo xtask test --unprivileged` leaves out
//! everything under `root_tier::`, and nothing else. A new test that needs root belongs here.

mod cgroup_mounts;
mod full_disk;
mod grpc;
mod identity;
mod kubernetes;
mod memory;
mod prometheus;
mod redirect;
mod redirect_memory;
mod redirect_upstream;
mod steering;
mod takeover;
