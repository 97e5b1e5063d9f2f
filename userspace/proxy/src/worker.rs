//! Worker threads: one per core, pinned, each with its own io_uring runtime, its own
//! SO_REUSEPORT listener, and its own state ([`WorkerState`], reached by tasks through the
//! narrow [`Ctx`]). Owns: starting and pinning workers, the accept loop, routing a connection
//! to HTTP or TCP, connection limits, drain, and the once-a-second housekeeping. Must not:
//! share anything mutable with another worker; the only cross-thread inputs are the published
//! snapshot and the drain signal, and the only outputs are the single-writer stats shards and
//! log rings handed over at start.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_core::config::Protocol;

use crate::ctx::{ConnRoute, Ctx};
use crate::io::{Conn, Listener, Runtime};
use crate::shared::Shared;
use crate::state::WorkerState;
use crate::telemetry::WorkerTelemetry;

/// How to start the workers.
#[derive(Debug)]
pub struct StartOptions {
    /// Worker count (already resolved: ≥ 1).
    pub workers: usize,
    /// Pin worker i to CPU i mod CPUs.
    pub pin: bool,
    /// Per-worker telemetry (stats shard + log ring producer), one per worker, in order.
    pub telemetry: Vec<WorkerTelemetry>,
    /// Run on each worker thread once its listeners are bound (e.g. to drop privileges).
    pub on_thread_start: Option<ThreadHook>,
}

/// A function run on each worker thread at start, given the worker id.
#[derive(Clone)]
pub struct ThreadHook(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHook")
    }
}

/// Running workers.
#[derive(Debug)]
pub struct Workers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    drain_senders: Vec<futures_channel::oneshot::Sender<()>>,
    addr: SocketAddr,
}

impl Workers {
    /// Starts `opts.workers` workers listening on the snapshot's proxy address. Returns once
    /// every listener is bound (or the first bind error).
    pub fn start(shared: Arc<Shared>, opts: StartOptions) -> io::Result<Workers> {
        let addr = shared.snapshot.load().config.proxy.listen;
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(opts.workers);
        let mut drain_senders = Vec::with_capacity(opts.workers);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let mut telemetry = opts.telemetry.into_iter();
        for id in 0..opts.workers {
            let shared = shared.clone();
            let ready_tx = ready_tx.clone();
            let core = if opts.pin && !cpus.is_empty() { Some(cpus[id % cpus.len()]) } else { None };
            let telemetry = telemetry.next().unwrap_or_default();
            let hook = opts.on_thread_start.clone();
            let (drain_tx, drain_rx) = futures_channel::oneshot::channel::<()>();
            drain_senders.push(drain_tx);
            let thread = std::thread::Builder::new().name(format!("weir-worker-{id}")).spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(id, core.map(|c| c.id), shared, telemetry, drain_rx, ready_tx, hook);
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
        Ok(Workers { shared, threads, drain_senders, addr })
    }

    /// The address the workers listen on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes idle connections, lets in-flight requests finish with
    /// `Connection: close`, and waits up to `timeout` for the workers to exit. Returns whether
    /// every worker finished in time.
    pub fn drain(self, timeout: Duration) -> bool {
        self.shared.draining.store(true, Ordering::SeqCst);
        for tx in self.drain_senders {
            let _ = tx.send(());
        }
        let deadline = Instant::now() + timeout;
        let mut all = true;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                all = false;
            }
        }
        all
    }
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
}

impl Worker {
    fn task_started(&self) {
        self.tasks.set(self.tasks.get() + 1);
    }

    fn task_done(&self) {
        self.tasks.set(self.tasks.get() - 1);
    }
}

fn run_worker(
    id: usize,
    cpu: Option<usize>,
    shared: Arc<Shared>,
    telemetry: WorkerTelemetry,
    drain_rx: futures_channel::oneshot::Receiver<()>,
    ready_tx: std::sync::mpsc::Sender<io::Result<()>>,
    hook: Option<ThreadHook>,
) {
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
        // The shared proxy listener, plus one per service that has its own `listen`.
        let mut listeners = Vec::new();
        let addrs = std::iter::once(addr).chain(snapshot.config.services.iter().filter_map(|s| s.listen));
        for a in addrs {
            match Listener::bind_reuseport(a, 4096) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    let _ =
                        ready_tx.send(Err(io::Error::new(e.kind(), format!("worker {id}: cannot listen on {a}: {e}"))));
                    return;
                }
            }
        }
        let listener = &listeners[0];
        if let Some(od) = &shared.orig_dst {
            od.register_listener(id, cpu, listener.raw_fd());
        }
        if let Some(hook) = &hook {
            (hook.0)(id);
        }
        let workers = snapshot.workers.max(1);
        let max_connections = (snapshot.config.proxy.max_connections as usize).div_ceil(workers);
        let worker = Rc::new(Worker {
            ctx: Ctx::new(id, WorkerState::new(snapshot, id, telemetry), shared.clone()),
            connections: Cell::new(0),
            max_connections,
            tasks: Cell::new(0),
            shared: shared.clone(),
        });
        shared.ready_workers.fetch_add(1, Ordering::SeqCst);
        let _ = ready_tx.send(Ok(()));
        tracing::debug!(worker = id, cpu, driver = "compio", "worker listening on {addr}");

        // The drain signal crosses threads once (a oneshot wakes this runtime); everything on
        // this thread then waits on the local cancel token.
        let drain_task = {
            let worker = worker.clone();
            async move {
                let _ = drain_rx.await;
                worker.ctx.drain.clone().cancel();
            }
        };
        crate::io::spawn(drain_task);
        housekeeping(worker.clone());

        for l in listeners {
            let worker = worker.clone();
            crate::io::spawn(async move { accept_loop(&worker, &l).await });
        }
        worker.ctx.drain.clone().wait().await;
        // Drain: wait for in-flight connections (the caller bounds the total time).
        while worker.tasks.get() > 0 {
            crate::io::sleep(Duration::from_millis(5)).await;
        }
        let mut state = worker.ctx.state.borrow_mut();
        state.housekeeping(Instant::now());
        state.telemetry.flush();
    });
}

async fn accept_loop(worker: &Rc<Worker>, listener: &Listener) {
    use futures_util::future::{Either, select};
    loop {
        let accept = std::pin::pin!(listener.accept());
        let drained = std::pin::pin!(worker.ctx.drain.clone().wait());
        let (conn, peer) = match select(accept, drained).await {
            Either::Right(_) => return,
            Either::Left((Ok(c), _)) => c,
            Either::Left((Err(e), _)) => {
                // EMFILE/ENFILE/ECONNABORTED: log and keep accepting after a short pause.
                tracing::warn!(worker = worker.ctx.worker, "accept failed: {e}");
                crate::io::sleep(Duration::from_millis(10)).await;
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
            Protocol::Tcp => Box::pin(crate::tcp::relay(&worker.ctx, conn, peer, route)).await,
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
/// forgotten, in the kernel map), else by the listener it came in on; over HTTP unless that
/// names a TCP service.
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
    let dialed = steered.or_else(|| local.filter(|l| *l != snapshot.config.proxy.listen));
    match dialed {
        None => (Protocol::Http, ConnRoute { dialed: None, unknown: false }),
        Some(d) => match snapshot.by_vip(d) {
            Some(i) => (snapshot.config.services[i].protocol, ConnRoute { dialed: Some(d), unknown: false }),
            None => (Protocol::Http, ConnRoute { dialed: Some(d), unknown: true }),
        },
    }
}

/// A connection over this worker's limit: answered (HTTP) or closed (TCP), off the accept loop.
fn shed_connection(worker: Rc<Worker>, conn: Conn, protocol: Protocol) {
    worker.task_started();
    crate::io::spawn(async move {
        let timeout = worker.ctx.downstream_write_timeout();
        crate::respond::shed(conn, protocol.is_http(), timeout).await;
        worker.task_done();
    });
}

/// Once a second: expire idle pooled connections, pick up a new snapshot even without
/// traffic, and publish this worker's stats interval.
fn housekeeping(worker: Rc<Worker>) {
    crate::io::spawn(async move {
        loop {
            let drained = std::pin::pin!(worker.ctx.drain.clone().wait());
            let tick = std::pin::pin!(crate::io::sleep(Duration::from_secs(1)));
            if let futures_util::future::Either::Left(_) = futures_util::future::select(drained, tick).await {
                return;
            }
            if let Some(od) = worker.ctx.orig_dst() {
                od.heartbeat();
            }
            worker.ctx.refresh();
            let mut state = worker.ctx.state.borrow_mut();
            state.housekeeping(Instant::now());
            state.telemetry.flush();
        }
    });
}
