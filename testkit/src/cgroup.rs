//! cgroup v2 for tests, the demo and the bench: where the hierarchy is mounted (read from
//! /proc/self/mountinfo, so a hybrid host's /sys/fs/cgroup/unified and a standard host's
//! /sys/fs/cgroup both work, as does any other mount point), a cgroup directory that is removed
//! with whatever still runs in it, joining one, and mounting the hierarchy a second time.
//! Must not: hard-code a mount point, or leave a cgroup or mount behind (both clean up on
//! drop, also while a failing test unwinds).

use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo.
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    parse_cgroup2_mount(&text).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo)")
    })
}

/// The mount point of the first `cgroup2` mount in a mountinfo text (proc(5): the fields after
/// the ` - ` separator start with the filesystem type; the mount point is the fifth field,
/// with spaces and backslashes octal-escaped). A mount of the hierarchy's root (`/`) is
/// preferred over one of a subtree.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut subtree = None;
    for line in mountinfo.lines() {
        let Some((mount, fs)) = line.split_once(" - ") else { continue };
        if fs.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = mount.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else { continue };
        let point = PathBuf::from(unescape(point));
        if *root == "/" {
            return Some(point);
        }
        subtree.get_or_insert(point);
    }
    subtree
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Moves the calling process into the cgroup v2 directory `dir` (writes 0 to cgroup.procs).
pub fn join(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), "0")
        .map_err(|e| io::Error::new(e.kind(), format!("joining cgroup {}: {e}", dir.display())))
}

/// Makes `cmd`'s child join `dir` between fork and exec, so it runs in the cgroup from its
/// first instruction on.
pub fn join_on_exec(cmd: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt as _;
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).expect("a path without NUL");
    // SAFETY: only async-signal-safe calls between fork and exec (open, write, close) on a
    // path built before the fork; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// A cgroup v2 directory this process created; on drop whatever still runs in it is killed
/// and the directory removed.
#[derive(Debug)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates `weir-test-TAG-PID-N` under the cgroup v2 root; panics (naming what is missing,
    /// e.g. root) when it cannot.
    pub fn create(tag: &str) -> Cgroup {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("weir-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        Cgroup::try_create(&name)
            .unwrap_or_else(|e| panic!("cannot create cgroup {name} (cgroup tests need root and cgroup v2): {e}"))
    }

    /// Creates `name` under the cgroup v2 root.
    pub fn try_create(name: &str) -> io::Result<Cgroup> {
        Cgroup::try_create_in(&cgroup2_root()?, name)
    }

    /// Creates `name` under `parent` (any directory of a cgroup v2 hierarchy, through any of its
    /// mounts).
    pub fn try_create_in(parent: &Path, name: &str) -> io::Result<Cgroup> {
        let path = parent.join(name);
        std::fs::create_dir(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating cgroup {}: {e}", path.display())))?;
        if !path.join("cgroup.procs").exists() {
            let _ = std::fs::remove_dir(&path);
            return Err(io::Error::other(format!("{} is not in a cgroup v2 hierarchy", path.display())));
        }
        Ok(Cgroup { path })
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        pids(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !remove(&self.path) {
            eprintln!("warning: could not remove cgroup {}", self.path.display());
        }
    }
}

/// Pids in the cgroup `dir`.
pub fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills what runs in the cgroup `dir` and removes it, waiting (at most 2 s) until the killed
/// processes have left it. Returns whether it is gone.
pub fn remove(dir: &Path) -> bool {
    crate::wait_until(Duration::from_secs(2), || {
        for pid in pids(dir) {
            // SAFETY: kill(2) on processes in a cgroup this process created for them.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        (std::fs::remove_dir(dir).is_ok() || !dir.exists()).then_some(())
    })
    .is_some()
}

/// The cgroup v2 hierarchy mounted a second time, at a fresh directory under /tmp
/// (`mount -t cgroup2 none /tmp/weir-cg2-PID-N`): the same cgroups, seen through another path.
/// Unmounted and removed on drop.
#[derive(Debug)]
pub struct Cgroup2Mount {
    /// The mount point.
    pub path: PathBuf,
}

impl Cgroup2Mount {
    /// Mounts the hierarchy (needs root).
    pub fn new() -> io::Result<Cgroup2Mount> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path =
            std::env::temp_dir().join(format!("weir-cg2-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&path)?;
        let target = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call and no data.
        let rc = unsafe { libc::mount(c"none".as_ptr(), target.as_ptr(), c"cgroup2".as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(io::Error::new(e.kind(), format!("mount -t cgroup2 none {}: {e}", path.display())));
        }
        Ok(Cgroup2Mount { path })
    }
}

impl Drop for Cgroup2Mount {
    fn drop(&mut self) {
        let Ok(target) = std::ffi::CString::new(self.path.as_os_str().as_bytes()) else { return };
        // SAFETY: umount2(2) on the mount point this value created. A lazy unmount if it is
        // busy (an open directory fd): it goes once the last user closes it.
        let unmounted =
            unsafe { libc::umount2(target.as_ptr(), 0) == 0 || libc::umount2(target.as_ptr(), libc::MNT_DETACH) == 0 };
        if !unmounted || std::fs::remove_dir(&self.path).is_err() {
            eprintln!("warning: could not unmount and remove {}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v2_mount_of_hybrid_and_unified_layouts() {
        assert_eq!(parse_cgroup2_mount(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified =
            "25 20 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
        assert_eq!(parse_cgroup2_mount(""), None);
    }

    #[test]
    fn unescapes_the_mount_point_and_prefers_the_hierarchy_root() {
        let text = "50 1 0:38 /kubepods /mnt/sub rw - cgroup2 cgroup2 rw\n51 1 0:38 / /mnt/my\\040cg\\134x rw - cgroup2 none rw\n";
        assert_eq!(parse_cgroup2_mount(text), Some(PathBuf::from("/mnt/my cg\\x")));
        assert_eq!(parse_cgroup2_mount(&text[..text.find('\n').expect("line") + 1]), Some(PathBuf::from("/mnt/sub")));
    }

    #[test]
    fn this_machine_has_a_v2_root_with_cgroup_procs() {
        let root = cgroup2_root().expect("cgroup v2 is mounted on the machines weir is tested on");
        assert!(root.join("cgroup.procs").exists(), "{} has no cgroup.procs", root.display());
    }
}
