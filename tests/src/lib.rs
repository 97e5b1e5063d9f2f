//! Test harness for weir's integration tests (and benches): weir in-process on free loopback
//! ports, scriptable test endpoints, a small blocking HTTP/1.1 client, cgroup helpers and the
//! `weir-probe` client that runs inside a steered cgroup. Must not: be used by product code.
#![allow(missing_debug_implementations)]

pub mod client;
pub mod endpoint;
pub mod kube_api;
pub mod kube_objects;
pub mod memcg;
pub mod root;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use client::{Client, Response};
pub use endpoint::{Behavior, Endpoint, TcpEcho};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A fresh scratch directory under the target directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-scratch").join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// weir running in this process on free ports.
pub struct Weir {
    app: Option<weir::app::App>,
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The config file (reloads read it).
    pub config_path: PathBuf,
}

impl Weir {
    /// Starts weir with `toml`, in which `@PROXY@` and `@ADMIN@` are replaced with free
    /// addresses. Panics with weir's own error if it cannot start.
    pub fn start(toml: &str) -> Weir {
        Weir::try_start(toml).unwrap_or_else(|e| panic!("weir did not start: {e:#}"))
    }

    /// Like [`Weir::start`], returning the error.
    pub fn try_start(toml: &str) -> anyhow::Result<Weir> {
        if std::env::var_os("RUST_LOG").is_none() {
            // SAFETY: set before any weir thread starts in this process (first call), and the
            // tests never read the environment concurrently with this write.
            unsafe { std::env::set_var("RUST_LOG", "warn") };
        }
        static LOG: std::sync::OnceLock<weir::logging::LogGuard> = std::sync::OnceLock::new();
        LOG.get_or_init(weir::logging::init);
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let dir = scratch_dir("weir");
        let config_path = dir.join("weir.toml");
        std::fs::write(&config_path, Weir::expand(toml, proxy, admin))?;
        let app = weir::app::App::start(&config_path, weir::app::AppOptions::default())?;
        Ok(Weir { app: Some(app), proxy, admin, config_path })
    }

    fn expand(toml: &str, proxy: SocketAddr, admin: SocketAddr) -> String {
        toml.replace("@PROXY@", &proxy.to_string()).replace("@ADMIN@", &admin.to_string())
    }

    /// Rewrites the config file with `toml` (same placeholders) and reloads it.
    pub fn reload(&self, toml: &str) -> Result<(), String> {
        std::fs::write(&self.config_path, Weir::expand(toml, self.proxy, self.admin)).expect("write config");
        self.control().reload()
    }

    /// Shared control state (reload counters, snapshot, steering).
    pub fn control(&self) -> &weir::app::Control {
        &self.app.as_ref().expect("weir is running").control
    }

    /// GET on the admin API: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let mut c = Client::connect(self.admin);
        let r = c.get(path, "admin");
        (r.status, r.body_string())
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "/metrics answered {status}");
        body
    }

    /// The value of one sample of `/metrics` (exact name and label set as rendered, e.g.
    /// `weir_requests_total{service="a",code="200"}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }

    /// Waits until `sample` reaches `want` (stats are published once a second), then checks it
    /// stays exactly `want`.
    pub fn wait_metric(&self, sample: &str, want: f64) {
        eventually(Duration::from_secs(5), &format!("{sample} == {want}"), || {
            let v = self.metric(sample);
            assert!(v <= want, "{sample} overshot: {v} > {want}");
            (v == want).then_some(())
        });
    }

    /// Drains and stops; returns whether the drain finished in time.
    pub fn shutdown(mut self) -> bool {
        self.app.take().map(|a| a.shutdown()).unwrap_or(true)
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            // Shut down from a fresh thread: when a test fails, this runs during unwinding,
            // and waking the runtime's tasks from a panicking thread aborts (compio guards
            // its cross-thread wake with an abort-on-panic check).
            let _ = std::thread::spawn(move || app.shutdown()).join();
        }
    }
}

/// Resident memory of process `pid` (VmRSS), KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The value of `sample` in a metrics text, 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("numeric sample"))
        .unwrap_or(0.0)
}

/// weir as a separate process (the `weir-cli` binary), for tests of signals, crashes and
/// cgroup membership.
pub struct WeirProcess {
    child: std::process::Child,
    /// The child has been waited for: its pid may belong to someone else now.
    reaped: bool,
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The config file.
    pub config_path: PathBuf,
}

impl WeirProcess {
    /// Starts `bin run --config` with `toml` (placeholders as in [`Weir::start`]), optionally
    /// inside `cgroup`, and waits for `/ready`.
    pub fn start(bin: &str, toml: &str, cgroup: Option<&std::path::Path>) -> WeirProcess {
        use std::os::unix::process::CommandExt;
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        WeirProcess::start_on(bin, toml, cgroup, proxy, admin, |cmd, cg| {
            if let Some(cg) = cg {
                use std::os::unix::ffi::OsStrExt;
                let procs = std::ffi::CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
                // SAFETY: only async-signal-safe calls between fork and exec (open, write,
                // close) on a path built before the fork; no allocation.
                unsafe {
                    cmd.pre_exec(move || {
                        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::close(fd);
                        Ok(())
                    });
                }
            }
        })
    }

    /// Like [`WeirProcess::start`] on given addresses.
    pub fn start_on(
        bin: &str,
        toml: &str,
        cgroup: Option<&std::path::Path>,
        proxy: SocketAddr,
        admin: SocketAddr,
        prepare: impl FnOnce(&mut std::process::Command, Option<PathBuf>),
    ) -> WeirProcess {
        let dir = scratch_dir("weirproc");
        let config_path = dir.join("weir.toml");
        std::fs::write(&config_path, Weir::expand(toml, proxy, admin)).expect("write config");
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["run", "--config"]).arg(&config_path).env("RUST_LOG", "warn");
        prepare(&mut cmd, cgroup.map(|c| c.to_path_buf()));
        let child = cmd.spawn().expect("spawn weir");
        let mut p = WeirProcess { child, reaped: false, proxy, admin, config_path };
        p.wait_ready();
        p
    }

    fn wait_ready(&mut self) {
        let admin = self.admin;
        let child = &mut self.child;
        eventually(Duration::from_secs(20), "weir /ready", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("weir exited during start: {status}");
            }
            let mut c = Client::try_connect(admin).ok()?;
            c.send_raw(b"GET /ready HTTP/1.1\r\nhost: admin\r\n\r\n");
            (c.read_response(false).ok()?.status == 200).then_some(())
        });
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// SIGTERM and wait for the exit status (at most `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.reaped = true;
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("weir did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SIGTERM first, so weir detaches and unpins what it attached; SIGKILL only if it
        // does not exit.
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
