//! The pin directory of steering: reading a stopped weir's counters and links from its pins,
//! removing the pins of weir instances that are gone for good, and checking that the pin root
//! is on a BPF filesystem and each steered directory is a cgroup v2 one. Must not: attach or
//! detach programs (the parent module does).

use super::*;

/// Counters and links of a weir whose admin API does not answer, read from its pins.
pub fn status_from_pins(pin_dir: &Path) -> anyhow::Result<serde_json::Value> {
    let mut instances = Vec::new();
    let entries = std::fs::read_dir(pin_dir).with_context(|| format!("no pins under {}", pin_dir.display()))?;
    for inst in entries.flatten() {
        let mut links = Vec::new();
        let mut counters = StdHashMap::new();
        for f in std::fs::read_dir(inst.path())?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("link-") {
                links.push(name);
            } else if name == format!("map-{MAP_COUNTERS}-abi{SHARED_MAPS_ABI}") {
                let data = MapData::from_pin(f.path())?;
                let map = aya::maps::Map::PerCpuArray(data);
                let arr = PerCpuArray::<_, u64>::try_from(map)?;
                counters = Counter::ALL
                    .iter()
                    .map(|c| (c.name(), arr.get(&(*c as u32), 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0)))
                    .collect();
            }
        }
        links.sort();
        instances.push(serde_json::json!({ "pins": inst.path(), "links": links, "counters": counters }));
    }
    Ok(serde_json::json!({ "running": false, "instances": instances }))
}

/// A weir whose heartbeat is older than this many `fail_after` periods is gone for good, not
/// restarting (10 s with the defaults).
pub(super) const DEAD_AFTER_FAILS: u32 = 5;

/// Removes the pins of other weir instances (other `[proxy] listen` addresses) whose heartbeat
/// stopped long ago: a crashed weir that was never restarted on the same address, e.g. after
/// its listen address changed. Left in place, its links would keep applying their fail mode to
/// the same cgroups. Our own directory is taken over instead, and live instances are left
/// alone.
pub(super) fn remove_dead_instances(pin_dir: &Path, own: &Path, dead_after: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(pin_dir) else { return };
    let now = bpf_sys::monotonic_ns();
    for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir() && p != own) {
        let heartbeat = MapData::from_pin(dir.join(format!("map-{MAP_HEARTBEAT}")))
            .ok()
            .and_then(|d| Array::<_, u64>::try_from(aya::maps::Map::Array(d)).ok())
            .and_then(|a| a.get(&0, 0).ok());
        let dead = match heartbeat {
            Some(hb) => now.saturating_sub(hb) > dead_after.as_nanos() as u64,
            // No heartbeat map: an emptied directory, or one a weir is starting in (it pins its
            // shared maps before its heartbeat): dead once it has been so for long.
            None => std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age > dead_after),
        };
        if dead {
            tracing::warn!("removing the steering pins of a weir that is gone: {}", dir.display());
            remove_pins(&dir);
        }
    }
}

/// Removes every pin of an instance directory, links first (which detaches them once no
/// process holds them), then its maps, then the directory.
pub fn remove_pins(dir: &Path) {
    let Ok(files) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<PathBuf> = files.flatten().map(|f| f.path()).collect();
    files.sort_by_key(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link-")));
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir(dir);
}

/// Creates an instance's pin directory, root only: the maps hold the service table and the
/// steering switch.
pub(super) fn create_pin_root(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root).with_context(|| format!("creating the pin directory {}", root.display()))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting the pin directory {}", root.display()))
}

pub(super) fn check_cgroup_dir(cg: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(cg).with_context(|| {
        format!("steering cgroup {} does not exist (create it, or fix [steering] cgroups)", cg.display())
    })?;
    if !meta.is_dir() || !cg.join("cgroup.procs").exists() {
        bail!("steering cgroup {} is not a cgroup v2 directory (no cgroup.procs)", cg.display());
    }
    Ok(())
}

pub(super) fn is_bpffs(path: &Path) -> bool {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return false;
        }
    }
    let Ok(c) = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::BPF_FS_MAGIC as libc::c_long }
}

/// Makes sure `pin_dir` is on bpffs, mounting bpffs at /sys/fs/bpf when nothing is mounted
/// there yet (as systemd does at boot on most distributions).
pub(super) fn check_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    const DEFAULT_MOUNT: &str = "/sys/fs/bpf";
    if is_bpffs(pin_dir) {
        return Ok(());
    }
    if pin_dir.starts_with(DEFAULT_MOUNT) && Path::new(DEFAULT_MOUNT).is_dir() {
        let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: mount(2) with NUL-terminated constant strings and no data.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 {
            tracing::info!("mounted bpffs at {DEFAULT_MOUNT}");
        }
        if is_bpffs(pin_dir) {
            return Ok(());
        }
    }
    bail!("[steering] pin_dir {} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)", pin_dir.display())
}
