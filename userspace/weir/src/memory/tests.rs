//! The memory budget's arithmetic and the cgroup limit lookup, on the layouts weir meets:
//! cgroup v2 (unified), hybrid hosts whose memory controller is v1, nested cgroups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

fn config(toml: &str) -> Config {
    Config::parse(toml, Path::new("test.toml")).expect("valid config")
}

fn limit(mib_: u64) -> Option<MemoryLimit> {
    Some(MemoryLimit { bytes: mib_ * MIB, file: PathBuf::from("/sys/fs/cgroup/weir/memory.max") })
}

#[test]
fn without_a_limit_the_rings_have_their_default_and_nothing_is_refused() {
    let p = plan(&config(""), 64, None).expect("no limit, no refusal");
    assert_eq!(p.ring_records, Some(DEFAULT_RING_RECORDS));
    assert!(p.ring_records_sized);
    assert_eq!(p.headroom_bytes, 0);
    let p = plan(&config("[access_log]\nring_records = 1000000\n"), 64, None).expect("no limit");
    assert_eq!(p.ring_records, Some(1_000_000));
}

#[test]
fn unset_rings_take_a_quarter_of_the_limit() {
    let p = plan(&config(""), 2, limit(64)).expect("fits");
    // 16 MiB for two rings of 512-byte records.
    assert_eq!(p.ring_records, Some((16 * MIB / 2 / RECORD_BYTES) as usize));
    assert!(p.needed_bytes() <= 64 * MIB, "{}", p.summary());
    // A large limit caps them at the default.
    let p = plan(&config(""), 8, limit(4096)).expect("fits");
    assert_eq!(p.ring_records, Some(DEFAULT_RING_RECORDS));
}

#[test]
fn unset_rings_shrink_to_what_fits_beside_many_workers() {
    // 64 MiB: 16 MiB headroom, 16 MiB process, 5 × 6 MiB workers leave 2 MiB for 5 rings.
    let p = plan(&config(""), 5, limit(64)).expect("fits");
    assert_eq!(p.ring_records, Some((2 * MIB / 5 / RECORD_BYTES) as usize));
    assert!(p.needed_bytes() <= 64 * MIB);
}

#[test]
fn a_limit_too_small_even_for_the_smallest_rings_is_refused() {
    let e = plan(&config(""), 2, limit(32)).expect_err("32 MiB cannot hold 2 workers");
    assert_eq!(e.max_ring_records, None);
    let text = e.to_string();
    assert!(text.contains("memory limit 32.0 MiB (33554432 bytes, /sys/fs/cgroup/weir/memory.max)"), "{text}");
    assert!(text.contains("raise the memory limit to at least"), "{text}");
    assert!(!text.contains("lower [access_log] ring_records"), "rings were not set: {text}");
}

#[test]
fn explicit_rings_that_do_not_fit_are_refused_with_every_number() {
    let e = plan(&config("[access_log]\nring_records = 65536\n"), 2, limit(64)).expect_err("64 MiB of rings in 64 MiB");
    let text = e.to_string();
    for part in [
        "memory limit 64.0 MiB (67108864 bytes, /sys/fs/cgroup/weir/memory.max) is too small",
        "access-log rings 2 workers × 65536 records × 512 B = 64.0 MiB",
        "worker pools and state 2 × 6.0 MiB = 12.0 MiB",
        "process 16.0 MiB",
        "headroom for connections and requests in flight 16.0 MiB",
        "108.0 MiB in all",
        "lower [access_log] ring_records to at most 20480",
        "lower [proxy] workers (now 2",
        "raise the memory limit to at least 123.0 MiB",
    ] {
        assert!(text.contains(part), "missing {part:?} in: {text}");
    }
    // The advice holds: the largest ring it names fits, and so does the limit it names.
    let fixed = format!("[access_log]\nring_records = {}\n", e.max_ring_records.expect("a ring that fits"));
    plan(&config(&fixed), 2, limit(64)).expect("the advised ring_records fits");
    plan(&config("[access_log]\nring_records = 65536\n"), 2, limit(123)).expect("the advised limit fits");
    assert!(plan(&config("[access_log]\nring_records = 65536\n"), 2, limit(122)).is_err());
}

#[test]
fn logging_off_needs_no_rings() {
    let p = plan(&config("[access_log]\nsink = \"off\"\nring_records = 65536\n"), 2, limit(64)).expect("fits");
    assert_eq!((p.ring_records, p.rings_bytes), (None, 0));
}

/// Files of a fake cgroup tree.
fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
    let map: HashMap<PathBuf, String> = entries.iter().map(|(p, v)| (PathBuf::from(p), v.to_string())).collect();
    move |p: &Path| map.get(p).cloned()
}

const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn a_hybrid_host_reads_the_v1_memory_controller_and_the_smallest_ancestor_limit() {
    let cgroup = "9:name=systemd:/\n4:memory:/pods/weir\n1:cpu:/\n0::/\n";
    let read = files(&[
        ("/sys/fs/cgroup/memory/pods/weir/memory.limit_in_bytes", "9223372036854771712\n"),
        ("/sys/fs/cgroup/memory/pods/memory.limit_in_bytes", "268435456\n"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
        ("/sys/fs/cgroup/unified/memory.max", "1000\n"),
    ]);
    let l = limit_from(cgroup, HYBRID_MOUNTS, read).expect("a limit");
    assert_eq!(l.bytes, 256 * MIB);
    assert_eq!(l.file, PathBuf::from("/sys/fs/cgroup/memory/pods/memory.limit_in_bytes"));
}

#[test]
fn a_unified_host_reads_memory_max_of_its_cgroup() {
    let mounts = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let cgroup = "0::/kubepods.slice/pod1/weir\n";
    let read = files(&[
        ("/sys/fs/cgroup/kubepods.slice/pod1/weir/memory.max", "67108864\n"),
        ("/sys/fs/cgroup/kubepods.slice/pod1/memory.max", "max\n"),
        ("/sys/fs/cgroup/kubepods.slice/memory.max", "max\n"),
    ]);
    let l = limit_from(cgroup, mounts, read).expect("a limit");
    assert_eq!(
        (l.bytes, l.file.clone()),
        (64 * MIB, PathBuf::from("/sys/fs/cgroup/kubepods.slice/pod1/weir/memory.max"))
    );
    // No limit anywhere: none.
    let read = files(&[("/sys/fs/cgroup/kubepods.slice/pod1/weir/memory.max", "max\n")]);
    assert_eq!(limit_from(cgroup, mounts, read), None);
}

#[test]
fn a_container_with_its_own_cgroup_namespace_reads_the_mount_root() {
    // /proc/self/cgroup says "/" and the mount is the container's own cgroup.
    let mounts = "700 650 0:27 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n";
    let read = files(&[("/sys/fs/cgroup/memory.max", "1073741824\n")]);
    let l = limit_from("0::/\n", mounts, read).expect("a limit");
    assert_eq!(l.bytes, 1024 * MIB);
    // Without a namespace, the mount's root is the container's cgroup path.
    let mounts = "700 650 0:27 /kubepods/pod1/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n";
    let read = files(&[("/sys/fs/cgroup/memory.max", "536870912\n")]);
    let l = limit_from("0::/kubepods/pod1/c1\n", mounts, read).expect("a limit");
    assert_eq!(l.bytes, 512 * MIB);
}
