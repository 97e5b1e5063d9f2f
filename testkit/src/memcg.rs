//! Memory cgroups for the root tier: a child cgroup with a memory limit that a test starts
//! weir in, and what the kernel says about it (usage, peak, OOM kills). cgroup v2's memory
//! controller when the host offers it (enabling `+memory` in the v2 root's
//! `cgroup.subtree_control` if needed; the root found by [`crate::cgroup2_root`]), else cgroup
//! v1's memory hierarchy. A host with neither fails the test loudly: it never passes by
//! skipping.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which memory controller a [`MemoryCgroup`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemcgVersion {
    /// cgroup v2: `memory.max`, `memory.current`, `memory.events`.
    V2,
    /// cgroup v1: `memory.limit_in_bytes`, `memory.usage_in_bytes`, `memory.oom_control`.
    V1,
}

/// A cgroup with a memory limit, created for one test and removed (after killing what is
/// left in it) on drop.
#[derive(Debug)]
pub struct MemoryCgroup {
    /// Its directory.
    pub path: PathBuf,
    /// The controller's version.
    pub version: MemcgVersion,
}

/// Mount points of `fstype` in /proc/self/mountinfo, with their super options.
fn mounts(fstype: &str) -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split_whitespace();
            (post.next()? == fstype).then_some(())?;
            let options = post.nth(1).unwrap_or("").to_string();
            Some((PathBuf::from(pre.split_whitespace().nth(4)?), options))
        })
        .collect()
}

/// This process's cgroup path in the hierarchy whose /proc/self/cgroup controller list
/// satisfies `matches` (v2: the `0::` line).
fn own_cgroup(matches: impl Fn(&str, &str) -> bool) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        matches(id, controllers).then(|| path.to_string())
    })
}

fn unique_name(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("weir-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl MemoryCgroup {
    /// Creates a cgroup limited to `limit` bytes. cgroup v2 first: under the cgroup2 mount's
    /// root, whose `cgroup.controllers` must offer `memory` (enabled in its
    /// `cgroup.subtree_control` here when it is not yet). Only when v2 has no memory controller:
    /// cgroup v1, under this process's own memory cgroup. Panics with what was tried when
    /// neither works.
    pub fn create(tag: &str, limit: u64) -> MemoryCgroup {
        assert!(crate::proc::is_root(), "memory cgroup tests need root; run the suite as root");
        let mut tried = Vec::new();
        match MemoryCgroup::create_v2(tag, limit) {
            Ok(cg) => return cg,
            Err(e) => tried.push(format!("cgroup v2: {e}")),
        }
        match MemoryCgroup::create_v1(tag, limit) {
            Ok(cg) => return cg,
            Err(e) => tried.push(format!("cgroup v1: {e}")),
        }
        panic!("no memory cgroup could be made for this test:\n  {}", tried.join("\n  "));
    }

    fn create_v2(tag: &str, limit: u64) -> Result<MemoryCgroup, String> {
        let root = crate::cgroup2_root().map_err(|e| e.to_string())?;
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| format!("{}/cgroup.controllers: {e}", root.display()))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!(
                "{}/cgroup.controllers is {:?}: the memory controller is bound to a v1 hierarchy or disabled",
                root.display(),
                controllers.trim()
            ));
        }
        let subtree = root.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&subtree).map_err(|e| format!("{}: {e}", subtree.display()))?;
        if !enabled.split_whitespace().any(|c| c == "memory") {
            std::fs::write(&subtree, "+memory")
                .map_err(|e| format!("enabling +memory in {}: {e}", subtree.display()))?;
        }
        let path = root.join(unique_name(tag));
        std::fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let cg = MemoryCgroup { path, version: MemcgVersion::V2 };
        std::fs::write(cg.path.join("memory.max"), limit.to_string()).map_err(|e| format!("memory.max: {e}"))?;
        // No swap: a process over its limit is reclaimed or killed, not swapped out.
        let _ = std::fs::write(cg.path.join("memory.swap.max"), "0");
        Ok(cg)
    }

    fn create_v1(tag: &str, limit: u64) -> Result<MemoryCgroup, String> {
        let (root, _) = mounts("cgroup")
            .into_iter()
            .find(|(_, options)| options.split(',').any(|o| o == "memory"))
            .ok_or("no cgroup v1 hierarchy with the memory controller")?;
        let own = own_cgroup(|_, controllers| controllers.split(',').any(|c| c == "memory"))
            .ok_or("/proc/self/cgroup names no v1 memory cgroup")?;
        let parent = root.join(own.trim_start_matches('/'));
        let path = parent.join(unique_name(tag));
        std::fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let cg = MemoryCgroup { path, version: MemcgVersion::V1 };
        std::fs::write(cg.path.join("memory.limit_in_bytes"), limit.to_string())
            .map_err(|e| format!("memory.limit_in_bytes: {e}"))?;
        // Without swap accounting the file is missing; with it, no swap either.
        let _ = std::fs::write(cg.path.join("memory.memsw.limit_in_bytes"), limit.to_string());
        Ok(cg)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.path.join(file).display()))
    }

    /// The file that holds the limit.
    pub fn limit_file(&self) -> PathBuf {
        self.path.join(match self.version {
            MemcgVersion::V2 => "memory.max",
            MemcgVersion::V1 => "memory.limit_in_bytes",
        })
    }

    /// The file that holds the bytes charged to the cgroup.
    pub fn usage_file(&self) -> PathBuf {
        self.path.join(match self.version {
            MemcgVersion::V2 => "memory.current",
            MemcgVersion::V1 => "memory.usage_in_bytes",
        })
    }

    /// Bytes charged to the cgroup now (process memory, page cache, kernel memory).
    pub fn usage(&self) -> u64 {
        let file = self.usage_file();
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        text.trim().parse().unwrap_or_else(|_| panic!("{} is not a number: {text:?}", file.display()))
    }

    /// Makes `cmd`'s process join this cgroup between fork and exec.
    pub fn join_on_exec(&self, cmd: &mut std::process::Command) {
        crate::cgroup::join_on_exec(cmd, &self.path);
    }

    /// Processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            MemcgVersion::V2 => "memory.events",
            MemcgVersion::V1 => "memory.oom_control",
        };
        let text = self.read(file);
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}/{file} has no oom_kill counter: {text:?}", self.path.display()))
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        crate::cgroup::pids(&self.path)
    }

    /// The cgroup directory, for [`crate::WeirProcess::start`].
    pub fn dir(&self) -> &Path {
        &self.path
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        if !crate::cgroup::remove(&self.path) {
            eprintln!("warning: could not remove cgroup {}", self.path.display());
        }
    }
}
