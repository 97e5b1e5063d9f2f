//! weir's integration harness: weir in this process ([`Weir`]) or as a child process
//! ([`WeirProcess`]), each on listeners it binds itself (`listen = "127.0.0.1:0"`, the bound
//! addresses read back once it is ready), and the root tier's helpers ([`root`]). The generic
//! helpers — client, endpoint, cgroups (memory cgroups too), sinks, /proc, ports, `eventually` — live in
//! `weir-testkit` (shared with the benches and xtask) and are re-exported here under the names
//! tests use. Must not: be used by product code.

pub mod clients;
pub mod kube_api;
pub mod kube_objects;
pub mod root;
pub mod sockmap_user;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use weir_testkit as testkit;
pub use weir_testkit::memcg;
pub use weir_testkit::{
    Behavior, Client, Collector, Endpoint, LineSink, ReservedPort, Response, StalledSink, TcpEcho, client, endpoint,
    eventually, metric_value, rss_kib, scratch_dir, wait_until,
};

/// What `@PROXY@` and `@ADMIN@` in a test config become: any free loopback port, which weir
/// binds and reports.
pub const ANY_PORT: &str = "127.0.0.1:0";

fn any_port() -> SocketAddr {
    ANY_PORT.parse().expect("a socket address")
}

/// The environment variable that picks the socket-level redirect's mode for every weir the
/// tests start: `off` adds `socket_redirect = false` to each `[steering]` table that does not
/// set it (`cargo xtask test` runs the root tier a second time so); unset or `on` leaves weir's
/// default (on).
pub const REDIRECT_ENV: &str = "WEIR_TEST_SOCKET_REDIRECT";

/// Whether the weirs of this test run have the socket-level redirect on ([`REDIRECT_ENV`]).
pub fn socket_redirect_on() -> bool {
    match std::env::var(REDIRECT_ENV).as_deref() {
        Err(_) | Ok("on") => true,
        Ok("off") => false,
        Ok(other) => panic!("{REDIRECT_ENV}={other:?}: on or off"),
    }
}

/// `toml` with `@PROXY@` and `@ADMIN@` replaced, and the redirect mode of this run applied.
fn expand(toml: &str, proxy: SocketAddr, admin: SocketAddr) -> String {
    let mut toml = toml.replace("@PROXY@", &proxy.to_string()).replace("@ADMIN@", &admin.to_string());
    if !socket_redirect_on() && !steering_sets_redirect(&toml) {
        toml = toml.replace("[steering]\n", "[steering]\nsocket_redirect = false\n");
    }
    toml
}

/// Whether `toml`'s `[steering]` table says `socket_redirect` itself (a test that decides
/// the mode; a service's own `socket_redirect` does not count). Text a test feeds in on purpose
/// unparsable counts as not.
fn steering_sets_redirect(toml: &str) -> bool {
    toml::from_str::<toml::Table>(toml)
        .ok()
        .and_then(|t| t.get("steering")?.as_table()?.get("socket_redirect").cloned())
        .is_some()
}

/// Replaces the config file whole (written next to it, then renamed over it, as a ConfigMap
/// update does), so weir's file watcher never reads a half-written file.
fn replace_config(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

/// weir running in this process.
#[derive(Debug)]
pub struct Weir {
    app: Option<weir::app::App>,
    /// The proxy listener (as bound).
    pub proxy: SocketAddr,
    /// The admin listener (as bound).
    pub admin: SocketAddr,
    /// The config file (reloads read it).
    pub config_path: PathBuf,
}

impl Weir {
    /// Starts weir with `toml`, in which `@PROXY@` and `@ADMIN@` become `127.0.0.1:0` (weir
    /// binds free ports; [`Weir::proxy`] and [`Weir::admin`] are the bound ones). Panics with
    /// weir's own error if it cannot start.
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
        let dir = scratch_dir("weir");
        let config_path = dir.join("weir.toml");
        std::fs::write(&config_path, expand(toml, any_port(), any_port()))?;
        let app = weir::app::App::start(&config_path, weir::app::AppOptions::default())?;
        let (proxy, admin) = (app.proxy_addr(), app.admin_addr());
        Ok(Weir { app: Some(app), proxy, admin, config_path })
    }

    /// Rewrites the config file with `toml` (same placeholders, so the listeners stay as they
    /// are) and reloads it.
    pub fn reload(&self, toml: &str) -> Result<(), String> {
        replace_config(&self.config_path, &expand(toml, any_port(), any_port()));
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
    /// `weir_requests_total{service="a",source="direct",code="200"}`), 0 when absent.
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

    /// Waits until `sample` is at least `min` (stats are published once a second); its value.
    pub fn wait_metric_at_least(&self, sample: &str, min: f64) -> f64 {
        eventually(Duration::from_secs(5), &format!("{sample} >= {min}"), || {
            let v = self.metric(sample);
            (v >= min).then_some(v)
        })
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

/// weir as a separate process (the `weir-cli` binary), for tests of signals, crashes and
/// cgroup membership.
#[derive(Debug)]
pub struct WeirProcess {
    child: std::process::Child,
    /// The child has been waited for: its pid may belong to someone else now.
    reaped: bool,
    /// The proxy listener (as bound).
    pub proxy: SocketAddr,
    /// The admin listener (as bound).
    pub admin: SocketAddr,
    /// The config file.
    pub config_path: PathBuf,
    /// What `@PROXY@` and `@ADMIN@` stood for at start.
    configured: (SocketAddr, SocketAddr),
}

impl WeirProcess {
    /// Starts `bin run --config` with `toml` (placeholders as in [`Weir::start`]), optionally
    /// inside `cgroup`, and waits until it is ready.
    pub fn start(bin: &str, toml: &str, cgroup: Option<&std::path::Path>) -> WeirProcess {
        WeirProcess::start_on(bin, toml, cgroup, any_port(), any_port(), |cmd, cg| {
            if let Some(cg) = cg {
                weir_testkit::cgroup::join_on_exec(cmd, &cg);
            }
        })
    }

    /// Like [`WeirProcess::start`] with `@PROXY@` and `@ADMIN@` set to `proxy` and `admin`
    /// (e.g. the addresses of an earlier run, to take its pinned links over), and `prepare`
    /// run on the command before it is spawned.
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
        let ready_file = dir.join("ready.json");
        std::fs::write(&config_path, expand(toml, proxy, admin)).expect("write config");
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["run", "--config"]).arg(&config_path).arg("--ready-file").arg(&ready_file).env("RUST_LOG", "warn");
        prepare(&mut cmd, cgroup.map(|c| c.to_path_buf()));
        let mut child = cmd.spawn().expect("spawn weir");
        // weir writes the file (whole, then renamed into place) once it is ready.
        let ready = eventually(Duration::from_secs(20), "weir's ready file", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("weir exited during start: {status}");
            }
            std::fs::read_to_string(&ready_file).ok()
        });
        let v: serde_json::Value = serde_json::from_str(&ready).expect("the ready file is JSON");
        let addr = |k: &str| -> SocketAddr {
            v[k].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no {k} address in {ready}"))
        };
        let p = WeirProcess {
            child,
            reaped: false,
            proxy: addr("proxy"),
            admin: addr("admin"),
            config_path,
            configured: (proxy, admin),
        };
        let r = weir_testkit::client::get_once(p.admin, "admin", "/ready", Duration::from_secs(5)).expect("GET /ready");
        assert_eq!(r.status, 200, "weir wrote its ready file but /ready answers {}", r.status);
        p
    }

    /// Rewrites the config file with `toml` (placeholders as at start, so the listeners stay);
    /// SIGHUP applies it.
    pub fn write_config(&self, toml: &str) {
        replace_config(&self.config_path, &expand(toml, self.configured.0, self.configured.1));
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, not reaped (it is reaped only by methods that
        // consume `self`).
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Waits (at most `timeout`) for the process to exit by itself; `None` if it did not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = weir_testkit::proc::wait_exit(&mut self.child, timeout);
        self.reaped |= status.is_some();
        status
    }

    /// SIGTERM and wait for the exit status (at most `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        match weir_testkit::proc::wait_exit(&mut self.child, timeout) {
            Some(s) => {
                self.reaped = true;
                s
            }
            None => panic!("weir did not exit within {timeout:?} of SIGTERM"),
        }
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        if !self.reaped {
            // SIGTERM first, so weir detaches and unpins what it attached; SIGKILL only if it
            // does not exit.
            weir_testkit::proc::terminate(&mut self.child, Duration::from_secs(10));
        }
    }
}
