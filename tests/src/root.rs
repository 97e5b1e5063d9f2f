//! Helpers for the root tier: cgroups the test creates and removes, and running the
//! `weir-probe` client inside one. A root test that cannot do what it tests fails loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The cgroup v2 mount on these machines.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// Panics unless running as root: eBPF and cgroup tests must not pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (eBPF, cgroups, netns); run the suite with `sudo -E cargo xtask test`");
    }
    assert!(
        Path::new(CGROUP2_ROOT).join("cgroup.procs").exists(),
        "cgroup v2 is not mounted at {CGROUP2_ROOT}: the steering tests cannot run here"
    );
}

/// A cgroup v2 directory created for one test; removed (after killing what is left in it)
/// on drop.
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates `weir-test-TAG-PID-N` under the cgroup v2 root.
    pub fn create(tag: &str) -> Cgroup {
        static N: AtomicU64 = AtomicU64::new(0);
        require_root();
        let path = PathBuf::from(CGROUP2_ROOT).join(format!(
            "weir-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            for pid in self.pids() {
                // SAFETY: kill(2) on processes this test started in its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// What `weir-probe` reported.
#[derive(Debug)]
pub struct ProbeReport {
    /// The JSON it printed.
    pub json: serde_json::Value,
    /// Its stderr.
    pub stderr: String,
}

impl ProbeReport {
    /// A numeric field.
    pub fn num(&self, key: &str) -> u64 {
        self.json[key].as_u64().unwrap_or(0)
    }

    /// Responses counted per endpoint name.
    pub fn by_endpoint(&self, name: &str) -> u64 {
        self.json["endpoints"][name].as_u64().unwrap_or(0)
    }
}

/// Runs the probe binary `bin` (optionally inside `cgroup`) with `args`; panics if it fails
/// to run or prints no JSON.
pub fn probe(bin: &str, cgroup: Option<&Cgroup>, args: &[&str]) -> ProbeReport {
    let mut cmd = Command::new(bin);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(&cg.path);
    }
    let out = cmd.args(args).output().unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("weir-probe printed no JSON ({e}); status {}; stdout {stdout:?}; stderr {stderr}", out.status)
    });
    ProbeReport { json, stderr }
}
