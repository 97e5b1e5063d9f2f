//! Processes and kernel state the benchmark starts, and what it reads about them: pinned
//! children that are stopped on drop, the steered cgroup (removed on drop), /proc CPU time and
//! RSS of a process tree, CPU time and allowed CPUs of each thread, re-pinning, readiness
//! probes, and the two access-log sinks (one that reads, one that accepts and never reads).
//! Must not: leave anything running or created when the benchmark ends, fails or panics;
//! signal anything it did not start.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::capture;

/// Pids of running children and the cgroup, for the signal handler (drops do not run when a
/// signal ends the process).
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static CGROUP: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Set (under the LIVE lock) once a signal arrived: nothing new may start.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// On SIGINT, SIGTERM or SIGHUP: stop every child still running, remove the cgroup, exit 130.
pub fn cleanup_on_signal() -> anyhow::Result<()> {
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
            std::thread::sleep(Duration::from_secs(2));
            for &pid in &pids {
                // SAFETY: as above; SIGKILL whatever did not stop.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(cg) = CGROUP.lock().ok().and_then(|c| c.clone()) {
                drop(Cgroup { path: cg });
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Whether a signal is ending the benchmark (its results must not be written).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Registers a short-lived child (a load generator run) for the signal handler; fails, after
/// killing it, once a signal is ending the benchmark. Pair with [`untrack`].
pub fn track(child: &mut Child) -> anyhow::Result<()> {
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
pub fn untrack(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|&p| p != pid as i32);
    }
}

/// A child process pinned with `taskset`, stopped (SIGTERM, then SIGKILL after 5 s) on drop.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// Its pid (taskset execs the program, so this is the program's pid).
    pub pid: i32,
    child: Child,
    /// Its stdout+stderr file.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args` on `cpus` (a taskset list, e.g. "1"), output to `log`.
    pub fn spawn(
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
        let mut proc = Proc { name: name.to_string(), pid, child, log: log.to_path_buf() };
        let mut live = LIVE.lock().map_err(|_| anyhow::anyhow!("process registry poisoned"))?;
        if STOPPING.load(Ordering::SeqCst) {
            // A signal is ending the benchmark: this process must not outlive it.
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            bail!("stopping on a signal");
        }
        live.push(pid);
        drop(live);
        Ok(proc)
    }

    /// Fails with the tail of its log if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); its log ends with:\n{}", self.name, log_tail(&self.log));
        }
        Ok(())
    }

    /// This process and its descendants.
    pub fn tree(&self) -> Vec<i32> {
        process_tree(self.pid)
    }

    /// utime + stime of the whole tree, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.tree().iter().map(|&p| cpu_seconds(p)).sum()
    }

    /// RSS of the whole tree, bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.tree().iter().map(|&p| rss_bytes(p)).sum()
    }

    /// Moves every thread of every process of the tree to `cpus`.
    pub fn pin(&self, cpus: &str) -> anyhow::Result<()> {
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
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `pid` and its descendants (by scanning /proc for parent pids).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Some(pp) = stat_fields(p).and_then(|f| f.get(1).and_then(|v| v.parse().ok())) {
                parents.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// Fields of /proc/PID/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    stat_fields_of(&format!("/proc/{pid}/stat"))
}

fn stat_fields_of(path: &str) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime from stat fields, seconds.
fn stat_cpu_seconds(fields: Option<Vec<String>>) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    fields
        .map(|f| {
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime and stime are fields 14 and 15 of stat; index 11 and 12 after the name.
            (t(11) + t(12)) / tck
        })
        .unwrap_or(0.0)
}

/// utime + stime of `pid` (all its threads, live and exited), seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    stat_cpu_seconds(stat_fields(pid))
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
}

/// Every live thread of `pid`.
pub fn threads(pid: i32) -> Vec<ThreadStat> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.flatten()
        .map(|e| {
            let base = e.path();
            let read = |f: &str| std::fs::read_to_string(base.join(f)).unwrap_or_default();
            ThreadStat {
                name: read("comm").trim().to_string(),
                cpu_seconds: stat_cpu_seconds(stat_fields_of(&base.join("stat").to_string_lossy())),
                cpus_allowed: read("status")
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            }
        })
        .collect()
}

/// VmRSS of `pid`, bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit (children inherit it);
/// returns the new limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit to fill; then set from a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            lim = want;
        }
    }
    lim.rlim_cur
}

/// Pins the calling process (all its future threads) to `cpu`.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the syscall
    // reads `size_of::<cpu_set_t>()` bytes from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity(CPU {cpu}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One `GET /` with `Host: host` on a fresh connection: the status code.
pub fn http_status(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])?.parse().context("bad status line")
}

/// GET `path` on `addr` and return the body (for weir's admin API).
pub fn http_body(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Waits until `GET path` on `addr` answers 200 (within 20 s), or fails if `proc` exits.
pub fn wait_ready(proc: &mut Proc, addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        proc.check_alive()?;
        match http_status(addr, host, path) {
            Ok(200) => return Ok(()),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not answer 200 on http://{addr}{path} within 20 s (last: {last}); log:\n{}",
        proc.name,
        log_tail(&proc.log)
    )
}

/// A cgroup v2 directory for the steered client, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates `weir-bench-PID` under the cgroup v2 mount.
    pub fn create() -> anyhow::Result<Cgroup> {
        // Hybrid hierarchy (v2 at .../unified) or a pure v2 mount (cgroup.controllers at the top).
        let root = [("/sys/fs/cgroup/unified", "cgroup.procs"), ("/sys/fs/cgroup", "cgroup.controllers")]
            .into_iter()
            .map(|(dir, marker)| (PathBuf::from(dir), marker))
            .find(|(dir, marker)| dir.join(marker).exists())
            .map(|(dir, _)| dir)
            .context("no cgroup v2 mount (looked at /sys/fs/cgroup/unified and /sys/fs/cgroup)")?;
        let path = root.join(format!("weir-bench-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        if let Ok(mut c) = CGROUP.lock() {
            *c = Some(path.clone());
        }
        Ok(Cgroup { path })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(mut c) = CGROUP.lock()
            && c.as_ref() == Some(&self.path)
        {
            *c = None;
        }
        for _ in 0..100 {
            let pids = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a load generator this benchmark put into its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: could not remove cgroup {}", self.path.display());
    }
}

/// A TCP access-log sink on 127.0.0.1: `reading` reads and discards everything; otherwise it
/// accepts and never reads (a stalled collector), with a 4 KiB receive buffer so it stalls
/// quickly. Stops on drop.
#[derive(Debug)]
pub struct LogSink {
    /// Where weir ships to.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogSink {
    /// Starts a sink.
    pub fn start(reading: bool) -> anyhow::Result<LogSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        if !reading {
            set_rcvbuf(&listener, 4096);
        }
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut readers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) if reading => {
                        let flag = flag.clone();
                        readers.push(std::thread::spawn(move || drain(s, &flag)));
                    }
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            drop(held);
            for r in readers {
                let _ = r.join();
            }
        });
        Ok(LogSink { addr, stop, thread: Some(thread) })
    }
}

fn drain(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn set_rcvbuf(listener: &TcpListener, bytes: i32) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on a socket we own with a valid int option value.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU seconds so far of every process on the machine: pid → (name, seconds).
pub fn cpu_snapshot() -> HashMap<i32, (String, f64)> {
    let mut out = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
            out.insert(pid, (name, cpu_seconds(pid)));
        }
    }
    out
}

/// CPU other processes used between two snapshots (present in both; this process and its
/// ancestors excluded): total seconds and the largest users, descending.
pub fn other_load(
    before: &HashMap<i32, (String, f64)>,
    after: &HashMap<i32, (String, f64)>,
) -> (f64, Vec<(String, f64)>) {
    let mut ours = vec![std::process::id() as i32];
    while let Some(pp) = stat_fields(*ours.last().unwrap_or(&1)).and_then(|f| f.get(1)?.parse::<i32>().ok()) {
        if pp <= 1 || ours.contains(&pp) {
            break;
        }
        ours.push(pp);
    }
    let mut users: Vec<(String, f64)> = after
        .iter()
        .filter(|(pid, _)| !ours.contains(pid))
        .filter_map(|(pid, (name, t))| {
            let (_, t0) = before.get(pid)?;
            Some((format!("{name} ({pid})"), t - t0))
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    users.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = users.iter().map(|(_, d)| d).sum();
    users.truncate(5);
    (total, users)
}
