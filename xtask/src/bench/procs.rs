//! Processes and kernel state the benchmark starts, and what it reads about them: pinned
//! children that are stopped on drop, the steered cgroup (removed on drop), CPU time and RSS
//! of a process tree, re-pinning, readiness probes, and a signal handler that stops all of it.
//! The /proc readings, the cgroup (under the mount found in /proc/self/mountinfo), the HTTP
//! client, the ports and the access-log sinks come from weir-testkit.
//! Must not: leave anything running or created when the benchmark ends, fails or panics;
//! signal anything it did not start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use weir_testkit::client::get_once;
use weir_testkit::{Cgroup, ReservedPort, proc, wait_until};

use crate::capture;

/// Pids of running children and the cgroup, for the signal handler (drops do not run when a
/// signal ends the process).
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static CGROUP: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Set (under the LIVE lock) once a signal arrived: nothing new may start.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// On SIGINT, SIGTERM or SIGHUP: stop every child still running, remove the cgroup, exit 130.
pub(super) fn cleanup_on_signal() -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("bench: signal {sig}: stopping what the benchmark started");
            let pids: Vec<i32> = match LIVE.lock() {
                Ok(live) => {
                    STOPPING.store(true, Ordering::SeqCst);
                    live.clone()
                }
                Err(_) => Vec::new(),
            };
            for &pid in &pids {
                // SAFETY: kill(2) on children this process started and has not reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            // Up to 2 s for them to exit (a child that exited stays a zombie: not reaped here).
            wait_until(Duration::from_secs(2), || pids.iter().all(|&p| proc::exited(p)).then_some(()));
            for &pid in pids.iter().filter(|&&p| !proc::exited(p)) {
                // SAFETY: as above; SIGKILL whatever did not stop.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(cg) = CGROUP.lock().ok().and_then(|c| c.clone()) {
                weir_testkit::cgroup::remove(&cg);
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Whether a signal is ending the benchmark (its results must not be written).
pub(super) fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Registers a short-lived child (a load generator run) for the signal handler; fails, after
/// killing it, once a signal is ending the benchmark. Pair with [`untrack`].
pub(super) fn track(child: &mut Child) -> anyhow::Result<()> {
    let mut live = LIVE.lock().map_err(|_| anyhow::anyhow!("process registry poisoned"))?;
    if STOPPING.load(Ordering::SeqCst) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("stopping on a signal");
    }
    live.push(child.id() as i32);
    Ok(())
}

/// Forgets a child registered with [`track`] (after it was waited for).
pub(super) fn untrack(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|&p| p != pid as i32);
    }
}

/// A child process pinned with `taskset`, stopped (SIGTERM, then SIGKILL after 5 s) on drop.
#[derive(Debug)]
pub(super) struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// Its pid (taskset execs the program, so this is the program's pid).
    pub pid: i32,
    child: Child,
    /// Its stdout+stderr file.
    pub log: PathBuf,
    /// Ports held for it (released after it stopped).
    ports: Vec<ReservedPort>,
}

impl Proc {
    /// Starts `program args` on `cpus` (a taskset list, e.g. "1"), output to `log`.
    pub(super) fn spawn(
        name: &str,
        cpus: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("taskset")
            .args(["-c", cpus])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child.id() as i32;
        let mut p = Proc { name: name.to_string(), pid, child, log: log.to_path_buf(), ports: Vec::new() };
        let mut live = LIVE.lock().map_err(|_| anyhow::anyhow!("process registry poisoned"))?;
        if STOPPING.load(Ordering::SeqCst) {
            // A signal is ending the benchmark: this process must not outlive it.
            let _ = p.child.kill();
            let _ = p.child.wait();
            bail!("stopping on a signal");
        }
        live.push(pid);
        drop(live);
        Ok(p)
    }

    /// Keeps `port` reserved for as long as this process runs (it listens there).
    pub(super) fn holding(mut self, port: ReservedPort) -> Proc {
        self.ports.push(port);
        self
    }

    /// Fails with the tail of its log if it has exited.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); its log ends with:\n{}", self.name, log_tail(&self.log));
        }
        Ok(())
    }

    /// This process and its descendants.
    pub(super) fn tree(&self) -> Vec<i32> {
        proc::process_tree(self.pid)
    }

    /// utime + stime of the whole tree, seconds.
    pub(super) fn cpu_seconds(&self) -> f64 {
        self.tree().iter().map(|&p| proc::cpu_seconds(p)).sum()
    }

    /// RSS of the whole tree, bytes.
    pub(super) fn rss_bytes(&self) -> u64 {
        self.tree().iter().map(|&p| proc::rss_bytes(p)).sum()
    }

    /// Moves every thread of every process of the tree to `cpus`.
    pub(super) fn pin(&self, cpus: &str) -> anyhow::Result<()> {
        for pid in self.tree() {
            capture(Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]))?;
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|&p| p != self.pid);
        }
    }
}

impl Proc {
    fn stop(&mut self) {
        if !proc::terminate(&mut self.child, Duration::from_secs(5)).1 {
            eprintln!("bench: {} did not stop on SIGTERM; killed it", self.name);
        }
    }
}

/// The last lines of a log file.
pub(super) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// One `GET path` with `Host: host` on a fresh connection (500 ms to connect, 2 s to answer):
/// the status code.
pub(super) fn http_status(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<u16> {
    Ok(get_once_bounded(addr, host, path)?.status)
}

/// GET `path` on `addr` and return the body (for weir's admin API).
pub(super) fn http_body(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    Ok(get_once_bounded(addr, "admin", path)?.body_string())
}

fn get_once_bounded(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<weir_testkit::Response> {
    get_once(addr, host, path, Duration::from_secs(2))
}

/// Waits until `GET path` on `addr` answers 200 (within 20 s), or fails if `proc` exits.
pub(super) fn wait_ready(p: &mut Proc, addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    let ready = wait_until(Duration::from_secs(20), || {
        if let Err(e) = p.check_alive() {
            return Some(Err(e));
        }
        match http_status(addr, host, path) {
            Ok(200) => return Some(Ok(())),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = e.to_string(),
        }
        None
    });
    ready.unwrap_or_else(|| {
        bail!(
            "{} did not answer 200 on http://{addr}{path} within 20 s (last: {last}); log:\n{}",
            p.name,
            log_tail(&p.log)
        )
    })
}

/// Waits (at most 20 s) until weir, started with `--ready-file file`, has written it; the
/// addresses it reports: (proxy, admin).
pub(super) fn wait_ready_file(p: &mut Proc, file: &Path) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let text = wait_until(Duration::from_secs(20), || {
        if let Err(e) = p.check_alive() {
            return Some(Err(e));
        }
        std::fs::read_to_string(file).ok().map(Ok)
    })
    .unwrap_or_else(|| bail!("{} wrote no {} within 20 s; log:\n{}", p.name, file.display(), log_tail(&p.log)))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: {text:?}", file.display()))?;
    let addr = |k: &str| -> anyhow::Result<SocketAddr> {
        v[k].as_str().and_then(|a| a.parse().ok()).with_context(|| format!("no {k} address in {}", file.display()))
    };
    Ok((addr("proxy")?, addr("admin")?))
}

/// The steered client's cgroup, `weir-bench-PID` under the cgroup v2 mount; the signal handler
/// removes it too.
#[derive(Debug)]
pub(super) struct BenchCgroup {
    /// The cgroup.
    pub cgroup: Cgroup,
}

impl BenchCgroup {
    /// Creates it.
    pub(super) fn create() -> anyhow::Result<BenchCgroup> {
        let cgroup = Cgroup::try_create(&format!("weir-bench-{}", std::process::id()))?;
        if let Ok(mut c) = CGROUP.lock() {
            *c = Some(cgroup.path.clone());
        }
        Ok(BenchCgroup { cgroup })
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        if let Ok(mut c) = CGROUP.lock()
            && c.as_ref() == Some(&self.cgroup.path)
        {
            *c = None;
        }
        // The cgroup itself goes when the field drops.
    }
}

/// CPU time so far: of every process on the machine (pid → (name, seconds)), of the whole
/// machine, and of this process with the children it has reaped.
pub(super) struct CpuSnapshot {
    procs: HashMap<i32, (String, f64)>,
    /// user + nice + system of every CPU (/proc/stat), seconds.
    machine_s: f64,
    /// This process and its reaped children (getrusage), seconds.
    own_s: f64,
}

/// Takes a [`CpuSnapshot`].
pub(super) fn cpu_snapshot() -> CpuSnapshot {
    CpuSnapshot { procs: proc::cpu_snapshot(), machine_s: machine_busy_seconds(), own_s: own_cpu_seconds() }
}

/// user + nice + system of the whole machine so far (the first line of /proc/stat).
fn machine_busy_seconds() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks / hz
}

/// CPU of this process and of the children it has waited for.
fn own_cpu_seconds() -> f64 {
    let secs = |who| {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid, writable rusage for the duration of the call.
        if unsafe { libc::getrusage(who, &mut u) } != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    secs(libc::RUSAGE_SELF) + secs(libc::RUSAGE_CHILDREN)
}

/// CPU other processes used between two snapshots (this process, its ancestors and its
/// reaped children excluded): total seconds and the largest users, descending. Processes
/// that started or ended in between (compilers, test binaries) are seen only in the machine's
/// total: what it holds beyond the processes present in both snapshots is one entry,
/// "short-lived processes".
pub(super) fn other_load(before: &CpuSnapshot, after: &CpuSnapshot) -> (f64, Vec<(String, f64)>) {
    let mut ours = vec![std::process::id() as i32];
    while let Some(pp) = proc::parent_pid(*ours.last().unwrap_or(&1)) {
        if pp <= 1 || ours.contains(&pp) {
            break;
        }
        ours.push(pp);
    }
    let mut users: Vec<(String, f64)> = after
        .procs
        .iter()
        .filter(|(pid, _)| !ours.contains(pid))
        .filter_map(|(pid, (name, t))| {
            let (_, t0) = before.procs.get(pid)?;
            Some((format!("{name} ({pid})"), t - t0))
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    let seen: f64 = users.iter().map(|(_, d)| d).sum();
    let others = (after.machine_s - before.machine_s) - (after.own_s - before.own_s);
    // Clock ticks round: below a second it is not told apart from the processes seen.
    if others - seen > 1.0 {
        users.push(("short-lived processes".into(), others - seen));
    }
    users.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = users.iter().map(|(_, d)| d).sum();
    users.truncate(5);
    (total, users)
}
