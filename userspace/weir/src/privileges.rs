//! Least privilege: once steering is attached, every weir thread keeps only the capabilities
//! it still uses — CAP_NET_ADMIN (SO_MARK on upstream sockets, so steering never loops) and
//! CAP_BPF (map updates on reload and the heartbeat; kernels before 6.5 check it even for map
//! operations on a held fd) — or none when steering is off. Capabilities are per thread in
//! Linux, so each long-lived thread drops its own, and threads created afterwards inherit the
//! reduced sets. Must not: run before the kernel objects are loaded and attached.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities weir keeps after start.
pub fn runtime_caps(steering_on: bool) -> CapsHashSet {
    if steering_on {
        [Capability::CAP_NET_ADMIN, Capability::CAP_BPF].into_iter().collect()
    } else {
        CapsHashSet::new()
    }
}

/// Drops every capability of the calling thread except `keep`: from the bounding set (so no
/// exec can regain them), then the permitted, effective and inheritable sets, and clears the
/// ambient set. A process without the capabilities to begin with is left as it is.
pub fn drop_thread_caps(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    if permitted.is_empty() {
        return Ok(());
    }
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(())
}
