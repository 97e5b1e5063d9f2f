//! Wiring and lifecycle: start (config → eBPF maps → workers → eBPF links → admin thread),
//! reload (SIGHUP or a change of the config file), drain on SIGTERM/SIGINT. Owns the order in
//! which things start and stop. Must not: run on a worker core's path; reloads build the new
//! snapshot here and publish it in one atomic swap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use weir_core::config::Config;
use weir_core::stats::Published;
use weir_proxy::{Shared, Snapshot, StartOptions, Workers};

use crate::shipper::Shipper;

use crate::steering::Steering;

/// Reading the config file failed before it could be checked, or it is not a valid config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        /// The file.
        file: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error(transparent)]
    Invalid(#[from] weir_core::config::ConfigError),
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish() | 1 // never 0, the "nothing applied yet" value
}

/// Reads `path` and validates it ([`Config::parse`]): the one place weir reads its config file.
pub fn load_config(path: &Path) -> Result<Config, LoadError> {
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read { file: path.to_path_buf(), source })?;
    Ok(Config::parse(&src, path)?)
}

#[cfg(test)]
mod load_tests {
    #[test]
    fn a_missing_file_is_named() {
        let err = super::load_config(std::path::Path::new("/nonexistent/weir.toml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/weir.toml: cannot read config file"), "{err}");
    }
}

/// State reloads, the admin server and the signal loop share. Never touched by a
/// worker's request path.
#[derive(Debug)]
pub struct Control {
    /// The config file reloads read.
    pub config_path: PathBuf,
    /// What the workers read.
    pub shared: Arc<Shared>,
    /// eBPF steering, when enabled.
    pub steering: Mutex<Option<Steering>>,
    /// Serialises reloads (SIGHUP and file watch may race), and holds a hash of the file text
    /// last applied: reloading the same text again is a no-op.
    reload_lock: Mutex<u64>,
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Rejected reloads (the old config kept serving).
    pub reloads_failed: AtomicU64,
    /// Unix time (s) of the last successful load.
    pub last_reload_unix: AtomicU64,
    /// How long the last reload that changed the running config took, from reading the file
    /// to the new snapshot published (µs).
    pub last_reload_us: AtomicU64,
    /// When the active snapshot was loaded.
    pub snapshot_loaded: Mutex<Instant>,
    /// The last reload error, for /config.
    pub last_error: Mutex<Option<String>>,
    /// Workers and steering are up.
    pub ready: AtomicBool,
    /// Drain has started.
    pub draining: AtomicBool,
    /// Worker count.
    pub workers: AtomicUsize,
    /// Each worker's last published stats shard.
    pub stats: Vec<Arc<ArcSwap<Published>>>,
    /// The access-log shipper, when access logging is on.
    pub shipper: Mutex<Option<Shipper>>,
    /// The memory budget weir started with (the rings' size, the cgroup limit).
    pub memory: crate::memory::MemoryPlan,
    /// The listen addresses as configured and as bound.
    pub listens: Listens,
    /// The config file's config as last validated (a snapshot's config also holds the
    /// discovered services).
    pub file_config: Mutex<Config>,
    /// Kubernetes discovery, when `[kubernetes] enabled`.
    pub kubernetes: Option<crate::kubernetes::KubernetesState>,
}

/// `[proxy] listen` and `[admin] listen` as the file says and as bound. Port 0 in the file means
/// any free port: weir binds one at start and runs on it (the snapshot, steering, `/config`
/// and the "weir is ready" line carry the bound address).
#[derive(Debug, Clone, Copy)]
pub struct Listens {
    /// `[proxy] listen` in the file.
    pub proxy_configured: SocketAddr,
    /// The address the workers listen on.
    pub proxy: SocketAddr,
    /// `[admin] listen` in the file.
    pub admin_configured: SocketAddr,
    /// The address the admin API listens on.
    pub admin: SocketAddr,
}

impl Listens {
    /// Puts the bound addresses into a config read from the file, where the file still says
    /// what it said at start (e.g. port 0), so a reload compares like with like.
    fn apply(&self, config: &mut Config) {
        if config.proxy.listen == self.proxy_configured {
            config.proxy.listen = self.proxy;
        }
        if config.admin.listen == self.admin_configured {
            config.admin.listen = self.admin;
        }
    }
}

impl Control {
    /// Access-log records (shipped, dropped) so far.
    pub fn access_log_counts(&self) -> (u64, u64) {
        match self.shipper.lock().as_ref() {
            Some(s) => (s.stats.shipped.load(Ordering::Relaxed), s.dropped()),
            None => (0, 0),
        }
    }

    /// Reads, validates and applies the config file. On any error the running snapshot and
    /// the kernel's service map stay as they were.
    pub fn reload(&self) -> Result<(), String> {
        let mut applied = self.reload_lock.lock();
        let started = Instant::now();
        let mut published = false;
        let text = std::fs::read_to_string(&self.config_path)
            .map_err(|source| LoadError::Read { file: self.config_path.clone(), source }.to_string());
        let hash = text.as_ref().map_or(0, |t| text_hash(t));
        let result = text.and_then(|text| {
            if hash == *applied {
                return Ok(()); // the text already running
            }
            let mut config = Config::parse(&text, &self.config_path).map_err(|e| e.to_string())?;
            self.listens.apply(&mut config);
            let file = self.file_config.lock().clone();
            if config == file {
                return Ok(()); // the same config, written differently: nothing to publish
            }
            let fixed = restart_only_changes(&file, &config);
            if !fixed.is_empty() {
                return Err(format!(
                    "{}: {} cannot change while weir runs; restart weir to apply (nothing was applied)",
                    self.config_path.display(),
                    fixed.join(", ")
                ));
            }
            // Unchanged services keep the values already running (the duplicates just parsed
            // are freed), so the snapshot sees them as the same and keeps their state.
            config.share_unchanged(&file);
            self.publish(&config)?;
            *self.file_config.lock() = config;
            published = true;
            Ok(())
        });
        match &result {
            Ok(()) => {
                *applied = hash;
                if published {
                    self.last_reload_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.last_reload_unix.store(unix_now(), Ordering::Relaxed);
                *self.snapshot_loaded.lock() = Instant::now();
                *self.last_error.lock() = None;
                tracing::info!("config reloaded from {}", self.config_path.display());
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock() = Some(e.clone());
                tracing::error!("config reload rejected, the previous config keeps serving: {e}");
            }
        }
        result
    }
}

impl Control {
    /// Publishes `file` with the discovered services beside it (when discovery is on): the
    /// kernel's service map first, then the snapshot, in one atomic swap. The one path by
    /// which a config reaches the workers after start; callers hold `reload_lock`.
    fn publish(&self, file: &Config) -> Result<(), String> {
        let old = self.shared.snapshot.load_full();
        let config = match &self.kubernetes {
            Some(k) => k.compose(file),
            None => file.clone(),
        };
        if let Some(steering) = self.steering.lock().as_mut() {
            steering.sync_services(&config).map_err(|e| format!("updating the eBPF service map: {e:#}"))?;
        }
        let snapshot = Snapshot::build(config, old.workers, Some(&old));
        self.shared.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// Publishes the running file config with the discovered services as they are now (after
    /// discovery handed over a new set).
    pub fn republish(&self) -> Result<(), String> {
        let _serial = self.reload_lock.lock();
        let file = self.file_config.lock().clone();
        self.publish(&file)
    }
}

/// Fields a running weir cannot apply (they are bound, attached or sized at start), that differ
/// between `old` and `new`. A reload that changes any of them is rejected as a whole, so what
/// runs is always exactly one file's config.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let service_listens = |c: &Config| {
        c.services.iter().map(|s| (s.name.clone(), s.listen)).filter(|(_, l)| l.is_some()).collect::<Vec<_>>()
    };
    [
        ("[proxy] listen", old.proxy.listen != new.proxy.listen),
        ("[proxy] workers", old.proxy.workers != new.proxy.workers),
        ("[proxy] max_connections", old.proxy.max_connections != new.proxy.max_connections),
        ("[admin] listen", old.admin.listen != new.admin.listen),
        ("[admin] allow_non_loopback", old.admin.allow_non_loopback != new.admin.allow_non_loopback),
        ("[steering]", old.steering != new.steering),
        ("[access_log]", old.access_log != new.access_log),
        ("[kubernetes]", old.kubernetes != new.kubernetes),
        ("a service's `listen`", service_listens(old) != service_listens(new)),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// For a listen address with port 0: a socket bound to a free port on its IP, with the options
/// the workers' listeners use (SO_REUSEADDR, SO_REUSEPORT), so that they can all bind that
/// concrete port while this holds it and nobody else can take it meanwhile. Never listens.
fn reserve_any_port(listen: SocketAddr) -> std::io::Result<Option<socket2::Socket>> {
    if listen.port() != 0 {
        return Ok(None);
    }
    let socket = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&listen.into())?;
    Ok(Some(socket))
}

fn bound_addr(socket: &socket2::Socket) -> anyhow::Result<SocketAddr> {
    socket.local_addr()?.as_socket().context("the reserved proxy port has no IP address")
}

/// Worker threads for `config`: `[proxy] workers`, or one per CPU this process may run on.
pub fn resolve_workers(config: &Config) -> usize {
    match config.proxy.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How to start weir.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppOptions {
    /// After attaching steering, every thread drops the capabilities it no longer needs
    /// (`weir run` does; in-process embedders such as tests may not want it).
    pub least_privilege: bool,
}

/// A running weir.
#[derive(Debug)]
pub struct App {
    /// Shared control state.
    pub control: Arc<Control>,
    workers: Workers,
    admin: crate::admin::AdminServer,
    discovery: Option<weir_discovery::Discovery>,
}

impl App {
    /// Loads `config_path` and starts everything. Attaches nothing if the config is invalid.
    pub fn start(config_path: &Path, options: AppOptions) -> anyhow::Result<App> {
        let config = load_config(config_path)?;
        App::start_with(config, config_path, options)
    }

    /// Starts from an already validated config; `config_path` is what reloads read.
    pub fn start_with(mut config: Config, config_path: &Path, options: AppOptions) -> anyhow::Result<App> {
        let workers = resolve_workers(&config);
        // A memory limit too small for the config stops weir here, not hours later at the
        // first burst of traffic.
        let memory = crate::memory::plan(&config, workers, crate::memory::cgroup_memory_limit())?;
        // The admin listener is bound next: a second weir with the same config stops here,
        // before it touches the kernel.
        let admin_listener = std::net::TcpListener::bind(config.admin.listen)
            .with_context(|| format!("binding the admin address {} (is another weir running?)", config.admin.listen))?;
        // Port 0: hold a free port until the workers listen on it.
        let proxy_port = reserve_any_port(config.proxy.listen)
            .with_context(|| format!("binding the proxy address {}", config.proxy.listen))?;
        let listens = Listens {
            proxy_configured: config.proxy.listen,
            proxy: proxy_port.as_ref().map_or(Ok(config.proxy.listen), bound_addr)?,
            admin_configured: config.admin.listen,
            admin: admin_listener.local_addr()?,
        };
        listens.apply(&mut config);
        let steering = if config.steering.enabled && !config.steering.cgroups.is_empty() {
            Some(Steering::load(&config).context("loading eBPF steering")?)
        } else {
            None
        };
        let epoch = Instant::now();
        let snapshot = Snapshot::build(config.clone(), workers, None);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            orig_dst: steering.as_ref().map(|s| s.hooks()),
            draining: AtomicBool::new(false),
            ready_workers: AtomicUsize::new(0),
            downstream_connections: AtomicUsize::new(0),
            epoch,
        });
        // The rings are committed here, whole: their memory is resident from now on.
        let ring = memory.ring_records;
        let (telemetry, hub) = weir_proxy::telemetry(workers, ring);
        let shipper = match ring {
            Some(_) => Some(
                Shipper::start(config.access_log.sink.clone(), hub.logs, options.least_privilege)
                    .context("starting the access-log shipper")?,
            ),
            None => None,
        };
        let runtime_caps = crate::privileges::runtime_caps(steering.is_some());
        let on_thread_start = options.least_privilege.then(|| {
            let keep = runtime_caps.clone();
            weir_proxy::ThreadHook(Arc::new(move |id: usize| {
                if let Err(e) = crate::privileges::drop_thread_caps(&keep) {
                    tracing::warn!(worker = id, "cannot drop capabilities: {e}");
                }
            }))
        });
        let started = Workers::start(shared.clone(), StartOptions { workers, pin: true, telemetry, on_thread_start })
            .context("starting proxy workers")?;
        drop(proxy_port);
        let mut steering = steering;
        if let Some(s) = steering.as_mut() {
            s.attach_links(&config).context("attaching eBPF steering")?;
            if s.taken_over > 0 {
                tracing::info!(links = s.taken_over, "took over the pinned steering links of a previous run");
            }
        }
        let control = Arc::new(Control {
            config_path: config_path.to_path_buf(),
            shared,
            steering: Mutex::new(steering),
            reload_lock: Mutex::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_us: AtomicU64::new(0),
            last_reload_unix: AtomicU64::new(unix_now()),
            snapshot_loaded: Mutex::new(Instant::now()),
            last_error: Mutex::new(None),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            workers: AtomicUsize::new(workers),
            stats: hub.shards,
            shipper: Mutex::new(shipper),
            memory,
            listens,
            file_config: Mutex::new(config.clone()),
            kubernetes: config.kubernetes.enabled.then(crate::kubernetes::KubernetesState::new),
        });
        if options.least_privilege {
            // The admin thread and everything it spawns inherit the reduced sets.
            crate::privileges::drop_thread_caps(&runtime_caps).context("dropping capabilities")?;
        }
        // Discovery starts once the file's services serve (its thread inherits the reduced
        // sets: NET_ADMIN stays while steering is on, for the mark on its API sockets). Until
        // both watches have listed, weir serves exactly what the file says, and /ready says so.
        let discovery = crate::kubernetes::start(&control).context("starting Kubernetes discovery")?;
        let admin = crate::admin::AdminServer::start(admin_listener, control.clone())?;
        // Loading the eBPF object parses the kernel's BTF (megabytes); give that memory back.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        control.ready.store(true, Ordering::SeqCst);
        tracing::info!("{}", control.memory.summary());
        tracing::info!(
            workers,
            listen = %started.addr(),
            admin = %config.admin.listen,
            services = config.services.len(),
            steering = control.steering.lock().is_some(),
            "weir is ready"
        );
        Ok(App { control, workers: started, admin, discovery })
    }

    /// The proxy address (as bound: the free port picked for a configured port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.workers.addr()
    }

    /// The admin API address (as bound).
    pub fn admin_addr(&self) -> SocketAddr {
        self.control.listens.admin
    }

    /// Waits for signals: SIGHUP reloads, SIGTERM/SIGINT drain and exit.
    pub fn run_until_signal(self) -> ExitCode {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weir: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        for signal in signals.forever() {
            match signal {
                SIGHUP => {
                    let _ = self.control.reload();
                }
                SIGUSR1 => {
                    if let Some(s) = self.control.shipper.lock().as_ref() {
                        s.stats.reopen.store(true, Ordering::Relaxed);
                    }
                }
                _ => break,
            }
        }
        if self.shutdown() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }

    /// Drains and stops: not ready, stop accepting, finish in-flight requests (bounded by the
    /// drain timeout), detach eBPF, stop the admin server. Returns whether the drain finished
    /// in time.
    pub fn shutdown(mut self) -> bool {
        if let Some(d) = self.discovery.take() {
            d.stop(Duration::from_secs(2));
        }
        let drain_timeout = self.control.shared.snapshot.load().config.proxy.drain_timeout;
        self.control.draining.store(true, Ordering::SeqCst);
        // Detach steering first: new connects go where they were dialed (kube-proxy's path for
        // a ClusterIP) instead of to listeners that are about to close.
        if let Some(s) = self.control.steering.lock().take() {
            s.detach();
        }
        tracing::info!("draining (at most {} s)", drain_timeout.as_secs());
        let clean = self.workers.drain(drain_timeout);
        if let Some(s) = self.control.shipper.lock().take() {
            s.stop(Duration::from_secs(2));
        }
        self.admin.stop(Duration::from_secs(2));
        if clean {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!("drain timeout reached with requests still in flight; exiting");
        }
        clean
    }
}
