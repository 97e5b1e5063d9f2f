//! Processes from the outside: /proc readings (RSS, CPU time of a process, its threads and its
//! descendants), pinning and the open-files limit of the calling process, and stopping a child
//! (SIGTERM, wait for its exit, SIGKILL). Must not: signal a process this process did not
//! start.

use std::collections::HashMap;
use std::io;
use std::process::{Child, ExitStatus};
use std::time::Duration;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Resident memory of process `pid` (VmRSS), KiB; panics if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid as i32, "VmRSS:").unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Resident memory of `pid`, bytes (0 when it cannot be read, e.g. it exited).
pub fn rss_bytes(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:").map_or(0, |kib| kib * 1024)
}

fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix(field))?;
    v.split_whitespace().next()?.parse().ok()
}

/// Fields of a /proc stat file after the command name: `[state, ppid, …]` (so utime and
/// stime, fields 14 and 15 of proc(5), are at 11 and 12).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn stat_cpu_seconds(fields: Option<Vec<String>>) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    fields
        .map(|f| {
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12)) / tck
        })
        .unwrap_or(0.0)
}

/// utime + stime of `pid` (all its threads, live and exited), seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    stat_cpu_seconds(stat_fields(&format!("/proc/{pid}/stat")))
}

/// The parent of `pid`.
pub fn parent_pid(pid: i32) -> Option<i32> {
    stat_fields(&format!("/proc/{pid}/stat"))?.get(1)?.parse().ok()
}

/// Whether `pid` has exited (gone, or a zombie waiting to be reaped).
pub fn exited(pid: i32) -> bool {
    stat_fields(&format!("/proc/{pid}/stat")).is_none_or(|f| f.first().is_some_and(|s| s == "Z"))
}

/// `pid` and its descendants (by scanning /proc for parent pids).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids().into_iter().filter_map(|p| Some((p, parent_pid(p)?))).collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// CPU seconds so far of every process on the machine: pid → (name, seconds).
pub fn cpu_snapshot() -> HashMap<i32, (String, f64)> {
    all_pids()
        .into_iter()
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
            (pid, (name, cpu_seconds(pid)))
        })
        .collect()
}

/// One live thread of a process, from /proc/PID/task/TID.
#[derive(Debug, Clone)]
pub struct ThreadStat {
    /// Its name (comm).
    pub name: String,
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// The CPUs it may run on (`Cpus_allowed_list`).
    pub cpus_allowed: String,
    /// Its /proc/PID/task/TID/status text (capabilities and the rest).
    pub status: String,
}

impl ThreadStat {
    /// A hexadecimal field of its status, e.g. `CapEff:`.
    pub fn hex_field(&self, name: &str) -> Option<u64> {
        let v = self.status.lines().find_map(|l| l.strip_prefix(name))?;
        u64::from_str_radix(v.trim(), 16).ok()
    }
}

/// Every live thread of `pid`.
pub fn threads(pid: i32) -> Vec<ThreadStat> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.flatten()
        .map(|e| {
            let base = e.path();
            let read = |f: &str| std::fs::read_to_string(base.join(f)).unwrap_or_default();
            let status = read("status");
            ThreadStat {
                name: read("comm").trim().to_string(),
                cpu_seconds: stat_cpu_seconds(stat_fields(&base.join("stat").to_string_lossy())),
                cpus_allowed: status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .unwrap_or("")
                    .trim()
                    .to_string(),
                status,
            }
        })
        .collect()
}

/// Pins the calling process (all threads it starts from now on) to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the syscall
    // reads `size_of::<cpu_set_t>()` bytes from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises this process's open-files limit (children inherit it): to at least `want` (root may
/// raise the hard limit for that), or with `None` to the hard limit. Returns the new soft
/// limit.
pub fn raise_nofile(want: Option<u64>) -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let new = match want {
        Some(w) if lim.rlim_cur >= w => return Ok(lim.rlim_cur),
        Some(w) => libc::rlimit { rlim_cur: w, rlim_max: lim.rlim_max.max(w) },
        None => libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max },
    };
    // SAFETY: `new` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "cannot raise the open-files limit to {} (hard limit {}): {}",
                new.rlim_cur,
                lim.rlim_max,
                io::Error::last_os_error()
            ),
        ));
    }
    Ok(new.rlim_cur)
}

/// Waits at most `timeout` for `child` to exit; its status, or `None` if it still runs.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    crate::wait_until(timeout, || child.try_wait().ok().flatten())
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it. Returns
/// the exit status, and whether it exited on its own within `grace`.
pub fn terminate(child: &mut Child, grace: Duration) -> (Option<ExitStatus>, bool) {
    if let Ok(Some(s)) = child.try_wait() {
        return (Some(s), true);
    }
    // SAFETY: kill(2) on our own child, not reaped yet (try_wait above saw it running).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if let Some(s) = wait_exit(child, grace) {
        return (Some(s), true);
    }
    let _ = child.kill();
    (child.wait().ok(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_stops_a_child() {
        let me = std::process::id() as i32;
        assert!(rss_kib(me as u32) > 0);
        assert!(process_tree(me).contains(&me));
        assert!(threads(me).iter().any(|t| t.hex_field("CapEff:").is_some()));
        assert!(!exited(me));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        assert_eq!(parent_pid(pid), Some(me));
        assert!(process_tree(me).contains(&pid));
        let (status, on_its_own) = terminate(&mut child, Duration::from_secs(5));
        assert!(on_its_own, "sleep ignores no SIGTERM");
        assert!(status.is_some_and(|s| !s.success()));
        assert!(exited(pid));
    }
}
