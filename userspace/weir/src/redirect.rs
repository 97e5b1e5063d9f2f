//! The socket-level redirect, user side: attaching its programs to the socket map (the start-up
//! probe: where the kernel refuses them, the redirect is off with the kernel's reason) and
//! finding weir's own cgroup, where sock_ops enrolls weir's side of steered connections. Must
//! not: enroll sockets itself (the kernel does, before any byte is sent) or decide per message
//! (`weir_ebpf_common::redirect`).

use std::path::PathBuf;

use aya::Ebpf;
use aya::maps::{MapData, SockHash};
use aya::programs::{SkMsg, SkSkb};
use weir_ebpf_common::SockKey;

/// Loads the `sk_msg` program `msg` and the stream-verdict program `skb` and attaches both to
/// the socket map `map`, for good ([`keep_attached`]). An error says what the kernel refused.
pub fn attach_map_programs(ebpf: &mut Ebpf, msg: &str, skb: &str, map: &str) -> Result<(), String> {
    let map_fd = {
        let m = ebpf.map(map).ok_or_else(|| format!("map {map} missing from weir's eBPF object"))?;
        let hash = SockHash::<&MapData, SockKey>::try_from(m).map_err(|e| format!("map {map}: {e}"))?;
        hash.fd().try_clone().map_err(|e| format!("map {map}: {e}"))?
    };
    {
        let p: &mut SkMsg = ebpf
            .program_mut(msg)
            .ok_or_else(|| format!("program {msg} missing"))?
            .try_into()
            .map_err(|e| format!("program {msg}: {e}"))?;
        p.load().map_err(|e| format!("loading {msg} (sk_msg): {e}"))?;
        let id = p.attach(&map_fd).map_err(|e| format!("attaching {msg} to {map}: {e}"))?;
        keep_attached(p.take_link(id).map_err(|e| format!("{msg}: {e}"))?);
    }
    let p: &mut SkSkb = ebpf
        .program_mut(skb)
        .ok_or_else(|| format!("program {skb} missing"))?
        .try_into()
        .map_err(|e| format!("program {skb}: {e}"))?;
    p.load().map_err(|e| format!("loading {skb} (sk_skb stream verdict): {e}"))?;
    let id = p.attach(&map_fd).map_err(|e| format!("attaching {skb} to {map}: {e}"))?;
    keep_attached(p.take_link(id).map_err(|e| format!("{skb}: {e}"))?);
    Ok(())
}

/// Leaves a program attached to the socket map when weir exits. The map is shared by the
/// weirs of one instance across takeovers and holds one program of each kind (the last
/// attached): a new weir that gave up a takeover and detached its own on exit would leave the
/// map without programs while the old weir still enrolls sockets into it, and a socket
/// enrolled without a stream verdict can lose its wake-ups (the 6.18.14 regression). The
/// kernel drops the programs with the map.
fn keep_attached<L>(link: L) {
    std::mem::forget(link);
}

/// weir's own cgroup v2 directory: the cgroup2 mount (from /proc/self/mountinfo) joined with
/// the path in /proc/self/cgroup's `0::` line.
pub fn own_cgroup() -> Option<PathBuf> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim().trim_start_matches('/').to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let dir = mount.join(rel);
    dir.join("cgroup.procs").exists().then_some(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_cgroup_is_a_cgroup_v2_directory_holding_this_process() {
        // Where cgroup v2 is mounted at all (every machine this project runs on).
        let dir = super::own_cgroup().expect("weir's own cgroup v2");
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("cgroup.procs");
        assert!(procs.lines().any(|p| p == std::process::id().to_string()), "{} does not hold us", dir.display());
    }
}
