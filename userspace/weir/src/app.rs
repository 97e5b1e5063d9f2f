//! Wiring and lifecycle: start (config → [a takeover: the running weir's sockets] → eBPF maps →
//! workers → [a takeover with discovery: the first list] → eBPF links → admin thread →
//! hand-off socket → Kubernetes discovery), drain on SIGTERM/SIGINT, and the drain of a weir
//! that was taken over. Owns the order in which things start and stop (a takeover's steps:
//! `takeover.rs`; reloads and discovery's publications: `reload.rs`). Must not: run on a
//! worker core's path.

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

pub use crate::reload::{LoadError, load_config};

use crate::admin::AdminServer;
use crate::shipper::Shipper;
use crate::steering::Steering;
use crate::takeover::new::{Inheritance, Predecessor};
use crate::takeover::{Handoff, Inherited, Shutdown};

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
    pub(crate) reload_lock: Mutex<u64>,
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
    /// Active health checks (its thread looks at the snapshot every 50 ms to follow reloads, and
    /// does nothing else while no service has `[service.health_check]`).
    pub health: weir_proxy::HealthChecker,
    /// The span exporter, when tracing is on.
    pub exporter: Mutex<Option<crate::otlp::Exporter>>,
    /// The caller identity thread, when steering is on.
    pub identity: Mutex<Option<crate::identity::Identity>>,
    /// The memory budget weir started with (the rings' size, the cgroup limit).
    pub memory: crate::memory::MemoryPlan,
    /// The listen addresses as configured and as bound.
    pub listens: Listens,
    /// Counters inherited from the weir this one took over (and those before it).
    pub inherited: ArcSwap<Inherited>,
    /// Takeovers that made this weir (0 or 1; the chain's total is in `inherited`).
    pub takeovers_ok: AtomicU64,
    /// Takeovers of this weir that were refused or failed.
    pub takeovers_failed: AtomicU64,
    /// Where this weir stands with respect to takeovers.
    pub handoff: Handoff,
    /// Another handle to the admin socket, to hand over.
    pub admin_socket: Mutex<Option<std::net::TcpListener>>,
    /// The lifecycle's event channel (set by [`App::run_until_signal`]).
    events: Mutex<Option<std::sync::mpsc::Sender<Event>>>,
    /// The config file's config as last validated (a snapshot's config also holds the
    /// discovered services).
    pub file_config: Mutex<Config>,
    /// Kubernetes discovery, when `[kubernetes] enabled`.
    pub kubernetes: Option<crate::kubernetes::KubernetesState>,
    /// A weir taking another over leaves the kernel's service table to the old weir until its
    /// takeover is done: publications meanwhile update the snapshot only.
    pub(crate) steering_deferred: AtomicBool,
}

/// What the lifecycle waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A signal arrived.
    Signal(i32),
    /// A takeover committed: this weir has stopped accepting and drains.
    HandedOver,
    /// A takeover failed: this weir serves on.
    HandoffEnded,
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
    pub(crate) fn apply(&self, config: &mut Config) {
        if config.proxy.listen == self.proxy_configured {
            config.proxy.listen = self.proxy;
        }
        if config.admin.listen == self.admin_configured {
            config.admin.listen = self.admin;
        }
    }
}

impl Control {
    /// Access-log records (shipped, dropped) so far, with those inherited.
    pub fn access_log_counts(&self) -> (u64, u64) {
        let inherited = self.inherited.load();
        let (shipped, dropped) = match self.shipper.lock().as_ref() {
            Some(s) => (s.stats.shipped.load(Ordering::Relaxed), s.dropped()),
            None => (0, 0),
        };
        (shipped + inherited.totals.access_log_shipped, dropped + inherited.totals.access_log_dropped)
    }

    /// Tells the lifecycle (when it waits for events).
    pub fn notify(&self, event: Event) {
        if let Some(tx) = self.events.lock().as_ref() {
            let _ = tx.send(event);
        }
    }
}

/// How long a weir taking another over waits for its discovery's first sync before it takes
/// over (the old weir serves meanwhile): then the discovered services are steered and served
/// without a gap. Past it, the takeover goes on and they follow the first sync.
const TAKEOVER_SYNC_WAIT: Duration = Duration::from_secs(20);

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

/// Raises the open-files limit to its hard limit and fits `max_connections` into it (warning
/// when a configured value does not fit).
fn descriptor_plan(config: &Config, workers: usize) -> crate::fds::FdPlan {
    let limit = match crate::fds::raise_nofile() {
        Ok((before, now)) => {
            if before < now {
                tracing::info!(from = before, to = now, "raised the open-files limit to its hard limit");
            }
            now
        }
        Err(e) => {
            let soft = crate::fds::nofile().map_or(1024, |(soft, _)| soft);
            tracing::warn!(limit = soft, "cannot raise the open-files limit: {e}");
            soft
        }
    };
    let plan = crate::fds::plan(config.proxy.max_connections, workers, limit);
    if plan.fits() {
        tracing::info!("{}", plan.summary());
    } else {
        tracing::warn!("{}", plan.summary());
    }
    plan
}

/// `--takeover` found no weir to take over, yet the admin address is taken: if a weir holds
/// it, one with another `[proxy] listen` or `[steering] pin_dir` (which name the hand-off
/// socket), say so.
fn fixed_fields_changed(config: &Config) -> Option<String> {
    let body = crate::admin::get(config.admin.listen, "/config").ok()?;
    let running: serde_json::Value = serde_json::from_str(&body).ok()?;
    let listen = running["config"]["proxy"]["listen"].as_str()?.to_string();
    let pin_dir = running["config"]["steering"]["pin_dir"].as_str()?.to_string();
    let pid = running["pid"].as_u64().unwrap_or(0);
    Some(format!(
        "cannot take over from the weir (pid {pid}) at the admin address {}: it runs with [proxy] listen {listen} and \
         [steering] pin_dir {pin_dir}, this config has {} and {}; these two cannot change across a takeover \
         (restart weir to change them)",
        config.admin.listen,
        config.proxy.listen,
        config.steering.pin_dir.display()
    ))
}

/// Starts Kubernetes discovery when `[kubernetes] enabled`. With `caps`, from a short-lived
/// thread that holds only those first, so that the discovery thread has no more (its creator
/// may still hold what loading steering needed).
fn start_discovery(
    control: &Arc<Control>,
    caps: Option<&caps::CapsHashSet>,
) -> anyhow::Result<Option<weir_discovery::Discovery>> {
    let Some(caps) = caps else {
        return crate::kubernetes::start(control).context("starting Kubernetes discovery");
    };
    let (control, caps) = (control.clone(), caps.clone());
    std::thread::spawn(move || {
        crate::privileges::drop_thread_caps(&caps).context("dropping capabilities")?;
        crate::kubernetes::start(&control).context("starting Kubernetes discovery")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("starting Kubernetes discovery: the thread panicked"))?
}

/// Worker threads for `config`: `[proxy] workers`, or one per CPU this process may run on.
pub fn resolve_workers(config: &Config) -> usize {
    match config.proxy.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How long TCP relays still open at the drain timeout get to close after their FIN.
const RELAY_LINGER: Duration = Duration::from_secs(1);

/// How to start weir.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppOptions {
    /// After attaching steering, every thread drops the capabilities it no longer needs
    /// (`weir run` does; in-process embedders such as tests may not want it).
    pub least_privilege: bool,
    /// Take over from the weir running with the same `[steering] pin_dir` and `[proxy] listen`
    /// (`weir run --takeover`); start normally when there is none.
    pub takeover: bool,
}

/// A running weir.
#[derive(Debug)]
pub struct App {
    /// Shared control state.
    pub control: Arc<Control>,
    workers: Arc<Workers>,
    admin: Arc<AdminServer>,
    handoff_server: Option<crate::takeover::old::Server>,
    discovery: Option<weir_discovery::Discovery>,
}

impl App {
    /// Loads `config_path` and starts everything. Attaches nothing if the config is invalid.
    pub fn start(config_path: &Path, options: AppOptions) -> anyhow::Result<App> {
        let config = load_config(config_path)?;
        App::start_with(config, config_path, options)
    }

    /// Starts from an already validated config; `config_path` is what reloads read.
    pub fn start_with(config: Config, config_path: &Path, options: AppOptions) -> anyhow::Result<App> {
        let workers = resolve_workers(&config);
        // A memory limit too small for the config stops weir here, not hours later at the
        // first burst of traffic.
        let memory = crate::memory::plan(&config, workers, crate::memory::cgroup_memory_limit())?;
        // The weir to take over is asked first, before this one touches anything: of two
        // takeovers racing, the second is refused here.
        let predecessor = if options.takeover { crate::takeover::new::connect(&config)? } else { None };
        let Some((mut pred, inheritance)) = predecessor else {
            if options.takeover {
                tracing::info!("no weir is running with this pin_dir and listen address: starting normally");
            }
            return App::start_parts(config, config_path, options, workers, memory, None).map(|(app, _)| app);
        };
        let pid = pred.pid;
        match App::start_parts(config, config_path, options, workers, memory, Some((&mut pred, inheritance))) {
            Ok((app, drain_until)) => {
                if let Some(until) = drain_until {
                    pred.follow(app.control.clone(), until);
                }
                Ok(app)
            }
            Err(e) => {
                pred.abort(&format!("{e:#}"));
                Err(e.context(format!("taking over from {} (it keeps serving)", crate::takeover::Who(pid))))
            }
        }
    }

    fn start_parts(
        mut config: Config,
        config_path: &Path,
        options: AppOptions,
        workers: usize,
        memory: crate::memory::MemoryPlan,
        takeover: Option<(&mut Predecessor, Inheritance)>,
    ) -> anyhow::Result<(App, Option<Instant>)> {
        let t0 = Instant::now();
        let (pred, inherited) = match takeover {
            Some((p, i)) => (Some(p), Some(i)),
            None => (None, None),
        };
        let (inherited_listeners, inherited_admin, inherited_handoff, predecessor_services) = match inherited {
            Some(i) => (i.listeners, i.admin, Some(i.takeover), i.services),
            None => (Vec::new(), None, None, None),
        };
        let predecessor_steered = predecessor_services.is_some();
        let fds = descriptor_plan(&config, workers);
        // The admin listener is bound next (or handed over): a second weir with the same config
        // stops here, before it touches the kernel.
        let admin_listener = match inherited_admin.filter(|(addr, _)| *addr == config.admin.listen) {
            Some((_, l)) => l,
            None => std::net::TcpListener::bind(config.admin.listen).map_err(|e| {
                if options.takeover
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && let Some(why) = fixed_fields_changed(&config)
                {
                    return anyhow::anyhow!(why);
                }
                anyhow::Error::new(e)
                    .context(format!("binding the admin address {} (is another weir running?)", config.admin.listen))
            })?,
        };
        // Port 0: hold a free port until the workers listen on it (a takeover's inherited
        // sockets are already bound).
        let proxy_port = match inherited_listeners.first() {
            Some(_) => None,
            None => reserve_any_port(config.proxy.listen)
                .with_context(|| format!("binding the proxy address {}", config.proxy.listen))?,
        };
        let proxy_bound = match (&proxy_port, inherited_listeners.first()) {
            (Some(p), _) => bound_addr(p)?,
            (None, Some(l)) if config.proxy.listen.port() == 0 => l.local_addr()?,
            _ => config.proxy.listen,
        };
        let listens = Listens {
            proxy_configured: config.proxy.listen,
            proxy: proxy_bound,
            admin_configured: config.admin.listen,
            admin: admin_listener.local_addr()?,
        };
        listens.apply(&mut config);
        // The hand-off socket: one weir per pin_dir and listen address holds it.
        let handoff_socket = match inherited_handoff {
            Some(s) => s,
            None => crate::takeover::wire::bind(&crate::steering::pin_root(&config)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    anyhow::anyhow!(
                        "another weir is running with [steering] pin_dir {} and [proxy] listen {} (it holds the hand-off \
                         socket); use `weir run --takeover` to replace it",
                        config.steering.pin_dir.display(),
                        config.proxy.listen
                    )
                } else {
                    anyhow::anyhow!("binding the hand-off socket: {e}")
                }
            })?,
        };
        let steering = if config.steering.enabled && !config.steering.cgroups.is_empty() {
            // Taking over: the old weir's service table until it has stopped.
            let services = predecessor_services.as_deref();
            Some(Steering::load(&config, services).context("loading eBPF steering")?)
        } else {
            None
        };
        let epoch = Instant::now();
        let snapshot = Snapshot::build(config.clone(), workers, None);
        let names = snapshot.names.clone();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            orig_dst: steering.as_ref().map(|s| s.hooks()),
            callers: weir_proxy::caller::Callers::default(),
            draining: AtomicBool::new(false),
            ready_workers: AtomicUsize::new(0),
            downstream_connections: AtomicUsize::new(0),
            epoch,
        });
        // The rings are committed here, whole: their memory is resident from now on.
        let ring = memory.ring_records;
        let (telemetry, hub) = weir_proxy::telemetry(workers, ring, memory.span_ring_records);
        let shipper = match ring {
            Some(_) => Some(
                Shipper::start(
                    config.access_log.sink.clone(),
                    hub.logs,
                    shared.clone(),
                    options.least_privilege,
                    names,
                )
                .context("starting the access-log shipper")?,
            ),
            None => None,
        };
        let exporter = match config.tracing.traces_target() {
            Some(target) => Some(
                crate::otlp::Exporter::start(target, hub.spans, options.least_privilege)
                    .context("starting the span exporter")?,
            ),
            None => None,
        };
        let identity = match &steering {
            Some(_) => Some(
                crate::identity::Identity::start(
                    crate::identity::Inputs {
                        roots: config.steering.cgroups.clone(),
                        max_sources: config.metrics.max_sources,
                        data: shared.clone(),
                        counts: hub.callers,
                        stats: hub.shards.clone(),
                    },
                    options.least_privilege,
                )
                .context("starting the caller identity thread")?,
            ),
            None => None,
        };
        let runtime_caps = crate::privileges::runtime_caps(steering.is_some());
        // Worker threads, and the health checker's, keep only the capabilities they need.
        let on_thread_start = options.least_privilege.then(|| {
            let keep = runtime_caps.clone();
            weir_proxy::ThreadHook(Arc::new(move |id: usize| {
                if let Err(e) = crate::privileges::drop_thread_caps(&keep) {
                    tracing::warn!(worker = id, "cannot drop capabilities: {e}");
                }
            }))
        });
        let control = Arc::new(Control {
            config_path: config_path.to_path_buf(),
            shared: shared.clone(),
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
            health: weir_proxy::HealthChecker::start(shared.clone(), on_thread_start.clone())
                .context("starting the health checker")?,
            exporter: Mutex::new(exporter),
            identity: Mutex::new(identity),
            memory,
            listens,
            inherited: ArcSwap::from_pointee(Inherited::default()),
            takeovers_ok: AtomicU64::new(0),
            takeovers_failed: AtomicU64::new(0),
            handoff: Handoff::default(),
            admin_socket: Mutex::new(Some(admin_listener.try_clone().context("the admin socket")?)),
            events: Mutex::new(None),
            file_config: Mutex::new(config.clone()),
            kubernetes: config.kubernetes.enabled.then(crate::kubernetes::KubernetesState::new),
            steering_deferred: AtomicBool::new(pred.is_some()),
        });
        let started = Arc::new(
            Workers::start(
                shared,
                StartOptions {
                    workers,
                    max_connections: fds.max_connections,
                    pin: true,
                    telemetry,
                    on_thread_start,
                    inherited: inherited_listeners,
                    paused: pred.is_some(),
                },
            )
            .context("starting proxy workers")?,
        );
        drop(proxy_port);
        let mut drain_until = None;
        let mut discovery = None;
        match pred {
            Some(pred) => {
                // With discovery, this weir lists the cluster before it takes over (the old
                // weir serves meanwhile), so the discovered services are served from the swap on.
                if control.kubernetes.is_some() {
                    discovery = start_discovery(&control, options.least_privilege.then_some(&runtime_caps))?;
                    if let Some(k) = &control.kubernetes
                        && !k.wait_synced(TAKEOVER_SYNC_WAIT)
                    {
                        tracing::warn!(
                            "kubernetes: not synced with the API server within {} s: taking over with the config \
                             file's services; the discovered ones follow the first sync",
                            TAKEOVER_SYNC_WAIT.as_secs()
                        );
                    }
                }
                pred.swap()?;
                if let Some(s) = control.steering.lock().as_mut() {
                    s.take_over_links().context("putting this weir's programs into the pinned eBPF links")?;
                }
                // From here on this weir's programs steer: it serves whatever happens next.
                if let Err(e) = pred.commit() {
                    tracing::warn!("the old weir did not take the commit ({e:#}); serving on alone");
                }
                started.resume();
                control.takeovers_ok.store(1, Ordering::Relaxed);
                if let Some((totals, until)) = pred.committed() {
                    control.inherit(totals);
                    drain_until = Some(until);
                }
                let finished = match control.steering.lock().as_mut() {
                    Some(s) => control.finish_takeover(s),
                    None => {
                        if predecessor_steered {
                            // Steering is off in this config: detach the old weir's links.
                            crate::steering::remove_pins(&crate::steering::pin_root(&config));
                        }
                        control.steering_deferred.store(false, Ordering::SeqCst);
                        Ok(())
                    }
                };
                if let Err(e) = finished {
                    tracing::error!("applying this weir's steering config after the takeover: {e:#}");
                }
                tracing::info!(
                    pid = pred.pid,
                    version = %pred.version,
                    "took over from {} in {} ms",
                    crate::takeover::Who(pred.pid),
                    t0.elapsed().as_millis()
                );
            }
            None => {
                if let Some(s) = control.steering.lock().as_mut() {
                    s.attach_links(&config).context("attaching eBPF steering")?;
                    if s.taken_over > 0 {
                        tracing::info!(links = s.taken_over, "took over the pinned steering links of a previous run");
                    }
                }
            }
        }
        if options.least_privilege {
            // The admin thread and everything it spawns inherit the reduced sets.
            crate::privileges::drop_thread_caps(&runtime_caps).context("dropping capabilities")?;
        }
        // Discovery starts once the file's services serve (its thread has the reduced sets:
        // NET_ADMIN stays while steering is on, for the mark on its API sockets). Until both
        // watches have listed, weir serves exactly what the file says, and /ready says so.
        if discovery.is_none() {
            discovery = start_discovery(&control, None)?;
        }
        let admin = Arc::new(AdminServer::start(admin_listener, control.clone())?);
        let handoff_server = crate::takeover::old::Server::start(
            handoff_socket,
            control.clone(),
            crate::takeover::old::Handles { workers: started.clone(), admin: admin.clone() },
        )
        .context("serving the hand-off socket")?;
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
        Ok((App { control, workers: started, admin, handoff_server: Some(handoff_server), discovery }, drain_until))
    }

    /// The proxy address (as bound: the free port picked for a configured port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.workers.addr()
    }

    /// The admin API address (as bound).
    pub fn admin_addr(&self) -> SocketAddr {
        self.control.listens.admin
    }

    /// Waits for signals: SIGHUP reloads, SIGUSR1 reopens the access-log file, SIGTERM/SIGINT
    /// drain and exit; a takeover of this weir drains and exits too.
    pub fn run_until_signal(self) -> ExitCode {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weir: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        *self.control.events.lock() = Some(tx.clone());
        // A takeover may have committed before the channel was there.
        if matches!(self.control.handoff.phase(), crate::takeover::Phase::HandedOver { .. }) {
            let _ = tx.send(Event::HandedOver);
        }
        let forwarded = std::thread::Builder::new().name("weir-signals".into()).spawn(move || {
            for signal in signals.forever() {
                if tx.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = forwarded {
            eprintln!("weir: cannot start the signal thread: {e}");
            return ExitCode::FAILURE;
        }
        let mut terminated = false;
        for event in rx.iter() {
            match event {
                Event::Signal(SIGHUP) => {
                    let _ = self.control.reload();
                }
                Event::Signal(SIGUSR1) => {
                    if let Some(s) = self.control.shipper.lock().as_ref() {
                        s.stats.reopen.store(true, Ordering::Relaxed);
                    }
                }
                Event::Signal(_) => {
                    terminated = true;
                    break;
                }
                Event::HandedOver => break,
                Event::HandoffEnded => {}
            }
        }
        let control = self.control.clone();
        let clean = self.shutdown();
        let handed_over = matches!(control.handoff.phase(), crate::takeover::Phase::HandedOver { .. });
        if handed_over && !terminated && std::process::id() == 1 {
            // A container's main process: exiting would make the runtime restart it, and the
            // restarted weir would take over back. Kubernetes deletes the old pod once the new
            // one is ready: wait for that SIGTERM.
            tracing::info!("handed over and drained; waiting for SIGTERM (this container's exit would restart weir)");
            for event in rx.iter() {
                if matches!(event, Event::Signal(SIGTERM | SIGINT)) {
                    break;
                }
            }
        }
        if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }

    /// Drains and stops: not ready, stop accepting, finish in-flight requests (bounded by the
    /// drain timeout), detach eBPF, stop the admin server. Returns whether the drain finished
    /// in time. A weir that was taken over finishes its drain instead, detaches nothing, hands
    /// over its last counters, and returns true.
    pub fn shutdown(mut self) -> bool {
        match self.control.handoff.close(crate::takeover::CLOSE_WAIT) {
            Shutdown::HandedOver { pid, deadline } => self.finish_handed_over(pid, deadline),
            Shutdown::Normal => self.drain_and_stop(),
        }
    }

    fn drain_and_stop(&mut self) -> bool {
        if let Some(s) = self.handoff_server.take() {
            s.stop();
        }
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
        self.workers.begin_drain(Duration::ZERO);
        let clean = self.workers.wait(Instant::now() + drain_timeout);
        if !clean {
            self.end_relays();
        }
        if let Some(s) = self.control.shipper.lock().take() {
            s.stop(Duration::from_secs(2));
        }
        if let Some(e) = self.control.exporter.lock().take() {
            e.stop(Duration::from_secs(2));
        }
        if let Some(i) = self.control.identity.lock().take() {
            i.stop();
        }
        self.admin.stop(Duration::from_secs(2));
        self.control.admin_socket.lock().take();
        if clean {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!("drain timeout reached with requests still in flight; exiting");
        }
        clean
    }

    /// The drain timeout is reached: the TCP relays still open end with a FIN (and what their
    /// clients still send is relayed) rather than with the process; they get [`RELAY_LINGER`].
    fn end_relays(&self) {
        self.workers.end_relays();
        let _ = self.workers.wait(Instant::now() + RELAY_LINGER);
    }

    fn finish_handed_over(&mut self, pid: u32, deadline: Instant) -> bool {
        if let Some(s) = self.handoff_server.take() {
            s.stop();
        }
        // The new weir discovers for itself.
        if let Some(d) = self.discovery.take() {
            d.stop(Duration::from_secs(2));
        }
        let clean = self.workers.wait(deadline);
        if !clean {
            self.end_relays();
        }
        // The last counters, once the workers have published theirs.
        self.control.handoff.finish(Duration::from_secs(5));
        if let Some(s) = self.control.shipper.lock().take() {
            s.stop(Duration::from_secs(2));
        }
        self.control.admin_socket.lock().take();
        if clean {
            tracing::info!("handed over to {}; drained; exiting", crate::takeover::Who(pid));
        } else {
            tracing::warn!(
                "handed over to {}; drain timeout reached, closing the connections still open; exiting",
                crate::takeover::Who(pid)
            );
        }
        true
    }
}
