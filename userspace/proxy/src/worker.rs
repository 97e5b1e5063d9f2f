//! Worker threads: one per core, pinned, each with its own io_uring runtime, its own
//! SO_REUSEPORT listener(s), and its own state ([`WorkerState`], reached by tasks through the
//! narrow [`Ctx`]). Owns: binding (or adopting) the listening sockets and sharing them out,
//! starting and pinning workers, the accept loop, routing a connection to HTTP or TCP,
//! connection limits, pausing and stopping accepts, drain, and the housekeeping ticks. Must
//! not: share anything mutable with another worker; the only cross-thread inputs are the
//! published snapshot and the control commands, and the only outputs are the single-writer
//! stats shards and log rings handed over at start.
//!
//! Stopping accepts never drops a connection: the pending accept is cancelled in the kernel
//! and its answer awaited ([`Listener::accept_unless`]), so what a worker did not accept stays
//! queued on the socket, for another process that holds the same socket (a takeover).

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use weir_core::config::Protocol;

use crate::ctx::{ConnRoute, Ctx};
use crate::io::{CancelToken, Conn, Listener, Runtime};
use crate::shared::Shared;
use crate::state::WorkerState;
use crate::telemetry::WorkerTelemetry;

/// Listen backlog of every socket weir binds.
const BACKLOG: i32 = 4096;
/// The heartbeat is written this often.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// Housekeeping (and publishing stats) every this many heartbeats: once a second.
const HEARTBEATS_PER_HOUSEKEEPING: u32 = 4;

/// How to start the workers.
#[derive(Debug)]
pub struct StartOptions {
    /// Worker count (already resolved: ≥ 1).
    pub workers: usize,
    /// Client connections across all workers (already resolved from the config and the
    /// descriptor limit); each worker takes its share.
    pub max_connections: u32,
    /// Pin worker i to CPU i mod CPUs.
    pub pin: bool,
    /// Per-worker telemetry (stats shard + log ring producer), one per worker, in order.
    pub telemetry: Vec<WorkerTelemetry>,
    /// Run on each worker thread once its listeners are bound (e.g. to drop privileges).
    pub on_thread_start: Option<ThreadHook>,
    /// Listening sockets to serve instead of binding new ones (those of a process this one
    /// takes over, in its workers' order; see [`Workers::listeners`]). For each address the
    /// config listens on, worker i serves the i-th socket of that address; workers beyond them
    /// bind a new one, and sockets beyond the workers are shared out round robin (closing one
    /// would reset the connections queued on it). Sockets on an address no longer configured
    /// are closed.
    pub inherited: Vec<std::net::TcpListener>,
    /// Start without accepting until [`Workers::resume`]; everything else (housekeeping, the
    /// heartbeat) runs from the start.
    pub paused: bool,
}

/// A function run on each worker thread at start, given the worker id.
#[derive(Clone)]
pub struct ThreadHook(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHook")
    }
}

/// What the control thread tells a worker.
#[derive(Debug, Clone, Copy)]
enum Command {
    /// Start accepting (after a paused start).
    Resume,
    /// Stop accepting; keep serving the connections already accepted.
    StopAccepting,
    /// Stop accepting, answer in-flight requests with `Connection: close`, and after
    /// `idle_grace` close the connections that wait for a request.
    Drain { idle_grace: Duration },
    /// The drain timeout is reached: end the TCP relays still open gracefully.
    EndRelays,
}

/// Running workers.
#[derive(Debug)]
pub struct Workers {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    commands: Vec<futures_channel::mpsc::UnboundedSender<Command>>,
    /// Another handle to every listening socket, in workers' order, to hand over; closed when
    /// accepting stops for good.
    sockets: Mutex<Vec<std::net::TcpListener>>,
    /// Accept loops still running, all workers.
    accepting: Arc<AtomicUsize>,
    draining: AtomicBool,
    addr: SocketAddr,
}

impl Workers {
    /// Starts `opts.workers` workers listening on the snapshot's proxy address (and every
    /// service's own `listen`), with the sockets in `opts.inherited` or new ones. Returns once
    /// every worker is set up (or the first error).
    pub fn start(shared: Arc<Shared>, opts: StartOptions) -> io::Result<Workers> {
        let snapshot = shared.snapshot.load_full();
        let addr = snapshot.config.proxy.listen;
        let mut addrs = vec![addr];
        for a in snapshot.config.services.iter().filter_map(|s| s.listen) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let per_worker = share_out_listeners(&addrs, opts.workers, opts.inherited, opts.paused)?;
        let mut sockets = Vec::new();
        for l in per_worker.iter().flatten() {
            sockets.push(l.try_clone()?);
        }
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(opts.workers);
        let mut commands = Vec::with_capacity(opts.workers);
        let accepting = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let mut telemetry = opts.telemetry.into_iter();
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let core = if opts.pin && !cpus.is_empty() { Some(cpus[id % cpus.len()]) } else { None };
            let (command_tx, command_rx) = futures_channel::mpsc::unbounded::<Command>();
            commands.push(command_tx);
            let setup = Setup {
                id,
                cpu: core.map(|c| c.id),
                shared: shared.clone(),
                telemetry: telemetry.next().unwrap_or_default(),
                listeners,
                commands: command_rx,
                paused: opts.paused,
                accepting: accepting.clone(),
                ready_tx: ready_tx.clone(),
                hook: opts.on_thread_start.clone(),
                max_connections: opts.max_connections,
            };
            let thread = std::thread::Builder::new().name(format!("weir-worker-{id}")).spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(setup);
            })?;
            threads.push(thread);
        }
        drop(ready_tx);
        for _ in 0..opts.workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a worker exited during start")),
            }
        }
        Ok(Workers {
            shared,
            threads: Mutex::new(threads),
            commands,
            sockets: Mutex::new(sockets),
            accepting,
            draining: AtomicBool::new(false),
            addr,
        })
    }

    /// The address the workers listen on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Another handle to every listening socket the workers serve (the proxy address's and
    /// the services' own), in workers' order: what a process taking over passes as
    /// [`StartOptions::inherited`]. Fails once accepting has stopped for good.
    pub fn listeners(&self) -> io::Result<Vec<std::net::TcpListener>> {
        let sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if self.draining.load(Ordering::SeqCst) {
            return Err(io::Error::other("the workers are draining: their sockets are closed"));
        }
        sockets.iter().map(|s| s.try_clone()).collect()
    }

    /// Starts accepting after a paused start.
    pub fn resume(&self) {
        self.command(Command::Resume);
    }

    /// Stops accepting on every worker, and waits up to `timeout` until every accept loop has
    /// ended; connections already accepted are served as before. Returns whether they all
    /// ended in time.
    pub fn stop_accepting(&self, timeout: Duration) -> bool {
        self.command(Command::StopAccepting);
        let deadline = Instant::now() + timeout;
        while self.accepting.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Starts the drain without waiting for it: stops accepting (for good: the workers' own
    /// handles to the sockets are closed), answers in-flight requests with `Connection: close`,
    /// and after `idle_grace` closes the connections that wait for a request (a request that
    /// arrives within the grace is answered, with `Connection: close`). TCP relays run on
    /// until the caller's drain timeout. Only the first call counts.
    pub fn begin_drain(&self, idle_grace: Duration) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.draining.store(true, Ordering::SeqCst);
        self.command(Command::Drain { idle_grace });
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Waits until every worker has finished its drain, or until `deadline`. Returns whether
    /// they all finished.
    pub fn wait(&self, deadline: Instant) -> bool {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        for t in threads.iter() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let all = threads.iter().all(|t| t.is_finished());
        if all {
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
        all
    }

    /// The drain timeout is reached with TCP relays still open: shuts each one's write side
    /// towards its client (a FIN after what was relayed), and relays on what the client still
    /// sends until it closes too, so that the client reads the end of the stream instead of
    /// meeting a reset when the process exits. Give them a moment ([`Workers::wait`]) before
    /// exiting.
    pub fn end_relays(&self) {
        self.command(Command::EndRelays);
    }

    /// Stops accepting, closes idle connections, lets in-flight requests finish with
    /// `Connection: close`, and waits up to `timeout` for the workers to exit. Returns whether
    /// every worker finished in time.
    pub fn drain(self, timeout: Duration) -> bool {
        self.begin_drain(Duration::ZERO);
        self.wait(Instant::now() + timeout)
    }

    fn command(&self, command: Command) {
        for tx in &self.commands {
            let _ = tx.unbounded_send(command);
        }
    }
}

/// Which listening sockets each worker serves (see [`StartOptions::inherited`]). The first of
/// each worker's sockets is on the proxy address. Sockets bound here for a paused start listen
/// only when accepting starts: until then the kernel hands them nothing (a connection queued on
/// a socket nobody accepts from would be lost if this process died before it accepts).
fn share_out_listeners(
    addrs: &[SocketAddr],
    workers: usize,
    inherited: Vec<std::net::TcpListener>,
    paused: bool,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut by_addr: Vec<Vec<std::net::TcpListener>> = addrs.iter().map(|_| Vec::new()).collect();
    for l in inherited {
        match l.local_addr().ok().and_then(|a| addrs.iter().position(|x| *x == a)) {
            Some(i) => by_addr[i].push(l),
            None => tracing::info!("closing an inherited listening socket on an address no longer configured"),
        }
    }
    let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for (addr, sockets) in addrs.iter().zip(by_addr) {
        let mut sockets = sockets.into_iter();
        for (id, own) in per_worker.iter_mut().enumerate() {
            let l = match sockets.next() {
                Some(l) => l,
                None => crate::io::bind_reuseport(*addr, (!paused).then_some(BACKLOG))
                    .map_err(|e| io::Error::new(e.kind(), format!("worker {id}: cannot listen on {addr}: {e}")))?,
            };
            own.push(l);
        }
        for (i, extra) in sockets.enumerate() {
            per_worker[i % workers.max(1)].push(extra);
        }
    }
    Ok(per_worker)
}

/// The worker's own accept-side bookkeeping (its tasks only ever see the [`Ctx`]).
#[derive(Debug)]
struct Worker {
    ctx: Ctx,
    /// Downstream connections open on this worker.
    connections: Cell<usize>,
    /// Connection limit of this worker (its share of `max_connections`).
    max_connections: usize,
    /// Tasks still running (connections); drain waits for 0.
    tasks: Cell<usize>,
    shared: Arc<Shared>,
    /// Cancelled when accepting may start (at once, unless the start was paused).
    resumed: CancelToken,
    /// Cancelled when accepting stops.
    stop_accepting: CancelToken,
    /// Another handle to the client socket of every TCP relay open on this worker (by a
    /// number of its own), to end them at the drain timeout.
    relays: std::cell::RefCell<Vec<(u64, Conn)>>,
    next_relay: Cell<u64>,
}

impl Worker {
    fn task_started(&self) {
        self.tasks.set(self.tasks.get() + 1);
    }

    fn task_done(&self) {
        self.tasks.set(self.tasks.get() - 1);
    }
}

/// What one worker thread starts from.
struct Setup {
    id: usize,
    cpu: Option<usize>,
    shared: Arc<Shared>,
    telemetry: WorkerTelemetry,
    listeners: Vec<std::net::TcpListener>,
    commands: futures_channel::mpsc::UnboundedReceiver<Command>,
    paused: bool,
    accepting: Arc<AtomicUsize>,
    ready_tx: std::sync::mpsc::Sender<io::Result<()>>,
    hook: Option<ThreadHook>,
    /// All workers' connection limit.
    max_connections: u32,
}

fn run_worker(setup: Setup) {
    let Setup { id, cpu, shared, telemetry, listeners, commands, paused, accepting, ready_tx, hook, max_connections } =
        setup;
    let runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready_tx.send(Err(io::Error::new(e.kind(), format!("worker {id}: runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let snapshot = shared.snapshot.load_full();
        let addr = snapshot.config.proxy.listen;
        // The proxy listener first, then the services' own.
        let mut served = Vec::with_capacity(listeners.len());
        for l in listeners {
            match Listener::from_std(l) {
                Ok(l) => served.push(l),
                Err(e) => {
                    let _ = ready_tx.send(Err(io::Error::new(e.kind(), format!("worker {id}: cannot listen: {e}"))));
                    return;
                }
            }
        }
        if let Some(hook) = &hook {
            (hook.0)(id);
        }
        let workers = snapshot.workers.max(1);
        let max_connections = (max_connections as usize).div_ceil(workers);
        let worker = Rc::new(Worker {
            ctx: Ctx::new(id, WorkerState::new(snapshot, id, telemetry), shared.clone()),
            connections: Cell::new(0),
            max_connections,
            tasks: Cell::new(0),
            shared: shared.clone(),
            resumed: CancelToken::new(),
            stop_accepting: CancelToken::new(),
            relays: std::cell::RefCell::new(Vec::new()),
            next_relay: Cell::new(0),
        });
        if !paused {
            worker.resumed.clone().cancel();
        }
        crate::io::spawn(control(worker.clone(), commands));
        housekeeping(worker.clone());
        for (i, l) in served.into_iter().enumerate() {
            let worker = worker.clone();
            // Counted before the worker reports ready, so `stop_accepting` never sees a
            // premature zero.
            accepting.fetch_add(1, Ordering::SeqCst);
            let accepting = accepting.clone();
            crate::io::spawn(async move {
                accept_loop(&worker, &l, (i == 0).then_some(cpu)).await;
                accepting.fetch_sub(1, Ordering::SeqCst);
            });
        }
        shared.ready_workers.fetch_add(1, Ordering::SeqCst);
        let _ = ready_tx.send(Ok(()));
        tracing::debug!(worker = id, cpu, paused, driver = "compio", "worker listening on {addr}");

        worker.ctx.drain.clone().wait().await;
        // Drain: wait for in-flight connections (the caller bounds the total time).
        while worker.tasks.get() > 0 {
            crate::io::sleep(Duration::from_millis(5)).await;
        }
        let mut state = worker.ctx.state.borrow_mut();
        state.housekeeping(crate::io::now());
        state.telemetry.flush();
    });
}

/// Applies the control thread's commands. They cross threads once (a channel wakes this
/// runtime); everything on this thread then waits on the worker's local cancel tokens. The
/// sender gone (the workers dropped without a drain) drains at once.
async fn control(worker: Rc<Worker>, mut commands: futures_channel::mpsc::UnboundedReceiver<Command>) {
    let idle_grace = loop {
        match commands.next().await {
            Some(Command::Resume) => worker.resumed.clone().cancel(),
            Some(Command::StopAccepting) => worker.stop_accepting.clone().cancel(),
            Some(Command::Drain { idle_grace }) => break idle_grace,
            Some(Command::EndRelays) => end_relays(&worker),
            None => break Duration::ZERO,
        }
    };
    worker.stop_accepting.clone().cancel();
    if !idle_grace.is_zero() {
        crate::io::sleep(idle_grace).await;
    }
    worker.ctx.drain.clone().cancel();
    while let Some(command) = commands.next().await {
        if let Command::EndRelays = command {
            end_relays(&worker);
        }
    }
}

fn end_relays(worker: &Worker) {
    for (_, client) in worker.relays.borrow().iter() {
        client.shutdown_write_ref();
    }
}

/// Accepts on `listener` until accepting stops. `register`: this is the worker's proxy
/// listener, to register (for CPU-affine accept) on this CPU once accepting starts.
/// The first pause after a failed accept…
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// …doubling up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn accept_loop(worker: &Rc<Worker>, listener: &Listener, register: Option<Option<usize>>) {
    use futures_util::future::{Either, select};
    if !worker.resumed.is_cancelled() {
        let resumed = std::pin::pin!(worker.resumed.clone().wait());
        let stopped = std::pin::pin!(worker.stop_accepting.clone().wait());
        if let Either::Right(_) = select(resumed, stopped).await {
            return;
        }
    }
    if let Err(e) = listener.listen(BACKLOG) {
        tracing::error!(worker = worker.ctx.worker, "cannot listen: {e}");
        return;
    }
    if let (Some(cpu), Some(od)) = (register, &worker.shared.orig_dst) {
        od.register_listener(worker.ctx.worker, cpu, listener.raw_fd());
    }
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (conn, peer) = match listener.accept_unless(&worker.stop_accepting).await {
            None => return,
            Some(Ok(c)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                c
            }
            // The client gave up before we took it: nothing to do.
            Some(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Some(Err(e)) => {
                // Out of descriptors or memory: the connection stays queued in the kernel while
                // weir backs off (doubling, up to a second) instead of spinning on the error.
                worker.ctx.state.borrow_mut().telemetry.accept_error(worker.ctx.worker, &e, crate::io::now());
                let stopped = std::pin::pin!(worker.stop_accepting.clone().wait());
                let pause = std::pin::pin!(crate::io::sleep(backoff));
                if let futures_util::future::Either::Right(_) = futures_util::future::select(pause, stopped).await {
                    return;
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let (protocol, route) = route_of(&worker.ctx, &conn, peer);
        if worker.connections.get() >= worker.max_connections {
            worker.ctx.state.borrow_mut().telemetry.connection_refused();
            shed_connection(worker.clone(), conn, protocol);
            continue;
        }
        spawn_connection(worker.clone(), conn, peer, protocol, route);
    }
}

fn spawn_connection(worker: Rc<Worker>, conn: Conn, peer: SocketAddr, protocol: Protocol, route: ConnRoute) {
    worker.connections.set(worker.connections.get() + 1);
    worker.task_started();
    worker.shared.downstream_connections.fetch_add(1, Ordering::Relaxed);
    crate::io::spawn(async move {
        match protocol {
            // Boxed: a relay's state is large, and an HTTP connection (the common case) should
            // not carry its size while idle.
            Protocol::Tcp => {
                let id = worker.next_relay.get();
                worker.next_relay.set(id + 1);
                worker.relays.borrow_mut().push((id, conn.try_clone()));
                Box::pin(crate::tcp::relay(&worker.ctx, conn, peer, route)).await;
                let mut relays = worker.relays.borrow_mut();
                if let Some(i) = relays.iter().position(|(r, _)| *r == id) {
                    relays.swap_remove(i);
                }
            }
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
                crate::conn::serve(&worker.ctx, conn, peer, route).await
            }
        }
        worker.connections.set(worker.connections.get() - 1);
        worker.task_done();
        worker.shared.downstream_connections.fetch_sub(1, Ordering::Relaxed);
    });
}

/// How a new connection is served: by its steered original destination (looked up, and
/// forgotten, in the kernel map, with the caller's cgroup), else by the listener it came in
/// on; over HTTP unless that names a TCP service.
fn route_of(ctx: &Ctx, conn: &Conn, peer: SocketAddr) -> (Protocol, ConnRoute) {
    let local = conn.local_addr().ok();
    let steered = match (ctx.orig_dst(), local) {
        (Some(od), Some(local)) => od.take(peer, local),
        _ => None,
    };
    ctx.refresh();
    let state = ctx.state.borrow();
    let snapshot = state.snapshot();
    // A connection to a service's own listener is for that service.
    let dialed = steered.map(|s| s.dialed).or_else(|| local.filter(|l| *l != snapshot.config.proxy.listen));
    let caller = steered.map(|s| s.cgroup_id);
    match dialed {
        None => (Protocol::Http, ConnRoute { dialed: None, unknown: false, caller }),
        Some(d) => match snapshot.by_vip(d) {
            Some(i) => (snapshot.config.services[i].protocol, ConnRoute { dialed: Some(d), unknown: false, caller }),
            None => (Protocol::Http, ConnRoute { dialed: Some(d), unknown: true, caller }),
        },
    }
}

/// A connection over this worker's limit: answered (HTTP) or closed (TCP), off the accept loop.
fn shed_connection(worker: Rc<Worker>, conn: Conn, protocol: Protocol) {
    worker.task_started();
    crate::io::spawn(async move {
        let timeout = worker.ctx.downstream_write_timeout();
        crate::respond::shed(conn, protocol == Protocol::Http, timeout).await;
        worker.task_done();
    });
}

/// Four times a second: the heartbeat (well inside the shortest `fail_after_ms`, 1 s, even
/// when a tick is late). Once a second (every tick while draining, so that what a draining
/// weir served is published before it exits, even at its drain timeout): expire idle pooled
/// connections, pick up a new snapshot even without traffic, and publish this worker's
/// stats. Runs as long as the worker does.
fn housekeeping(worker: Rc<Worker>) {
    crate::io::spawn(async move {
        let mut ticks = 0u32;
        loop {
            crate::io::sleep(HEARTBEAT_EVERY).await;
            if let Some(od) = worker.ctx.orig_dst() {
                od.heartbeat();
            }
            ticks = ticks.wrapping_add(1);
            if !ticks.is_multiple_of(HEARTBEATS_PER_HOUSEKEEPING) && !worker.ctx.draining() {
                continue;
            }
            worker.ctx.refresh();
            let mut state = worker.ctx.state.borrow_mut();
            state.housekeeping(crate::io::now());
            state.telemetry.flush();
        }
    });
}
