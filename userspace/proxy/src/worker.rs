//! Worker threads: one per core, pinned, each with its own io_uring runtime, its own
//! SO_REUSEPORT listener, and its own per-service state (balancers, pools, budgets, stats).
//! Owns: starting and pinning workers, the accept loop, connection limits, drain, and picking
//! up new snapshots. Must not: share anything mutable with another worker; the only
//! cross-thread inputs are the published snapshot and the drain signal, and the only outputs
//! are the single-writer stats shards and log rings handed over at start.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weir_core::config::Protocol;

use crate::http::ResponseHead;
use crate::io::{CancelToken, Conn, Listener, Runtime};
use crate::local::Local;
use crate::snapshot::Snapshot;
use crate::telemetry::WorkerTelemetry;

/// What the data path asks of the steering layer: which service address did the workload
/// dial, for a connection accepted from `peer` on `local`? Implemented by the weir binary over
/// the eBPF original-destination map; `None` when the connection was not steered.
pub trait OriginalDst: Send + Sync + std::fmt::Debug {
    /// Looks the connection up and forgets it (each connection is asked about once).
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr>;

    /// Called by each worker once its listener is bound (e.g. to register it for CPU-affine
    /// accept). `cpu` is the CPU the worker is pinned to, if any.
    fn register_listener(&self, _worker: usize, _cpu: Option<usize>, _fd: std::os::fd::RawFd) {}

    /// Called by every worker once a second: the worker is alive. Steering treats weir as
    /// down (and applies its fail mode) when no worker has called this for a while.
    fn heartbeat(&self) {}
}

/// State every worker reads; written only by the control thread.
#[derive(Debug)]
pub struct Shared {
    /// The snapshot new requests run on.
    pub snapshot: ArcSwap<Snapshot>,
    /// Original-destination lookups for steered connections.
    pub orig_dst: Option<Arc<dyn OriginalDst>>,
    /// Set once by drain: workers stop accepting and close idle connections.
    pub draining: AtomicBool,
    /// Workers whose listener is bound and accepting.
    pub ready_workers: AtomicUsize,
    /// Downstream connections open right now, all workers (gauge; written per accept/close).
    pub downstream_connections: AtomicUsize,
    /// Process start; outlier detection counts milliseconds from here.
    pub epoch: Instant,
}

impl Shared {
    /// Milliseconds since [`Shared::epoch`].
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

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

/// One worker's thread-local context, shared by its tasks through `Rc`.
#[derive(Debug)]
pub(crate) struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// Per-service state of this worker. Never borrowed across an `.await`.
    pub local: RefCell<Local>,
    pub telemetry: RefCell<WorkerTelemetry>,
    /// Cancelled when drain starts.
    pub drain: CancelToken,
    /// Downstream connections open on this worker.
    pub connections: Cell<usize>,
    /// Connection limit of this worker (its share of `max_connections`).
    pub max_connections: usize,
    /// Tasks still running (connections); drain waits for 0.
    pub tasks: Cell<usize>,
    /// Reusable I/O buffers, so that exchanges do not allocate once the worker is warm and
    /// idle connections hold none.
    bufs: RefCell<Vec<Vec<u8>>>,
    /// Reusable response heads (their field lists are heap vectors), for the same reason.
    heads: RefCell<Vec<ResponseHead>>,
}

/// Buffers kept for reuse per worker, and the largest one kept.
const MAX_POOLED_BUFS: usize = 256;
const MAX_POOLED_BUF_BYTES: usize = 256 * 1024;
const NEW_BUF_BYTES: usize = 16 * 1024;
/// Response heads kept for reuse per worker, and the most field slots one may keep.
const MAX_POOLED_HEADS: usize = 256;
const MAX_POOLED_HEAD_FIELDS: usize = 256;

impl Worker {
    pub fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// An empty buffer from the worker's pool (or a new one).
    pub fn take_buf(&self) -> Vec<u8> {
        self.bufs.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(NEW_BUF_BYTES))
    }

    /// Returns a buffer to the pool.
    pub fn put_buf(&self, mut buf: Vec<u8>) {
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < MAX_POOLED_BUFS && buf.capacity() <= MAX_POOLED_BUF_BYTES {
            buf.clear();
            bufs.push(buf);
        }
    }

    /// A response head from the worker's pool (or a new one); its contents are stale until
    /// the next parse, which resets it.
    pub fn take_head(&self) -> ResponseHead {
        self.heads.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a response head to the pool.
    pub fn put_head(&self, head: ResponseHead) {
        let mut heads = self.heads.borrow_mut();
        if heads.len() < MAX_POOLED_HEADS && head.headers.capacity() <= MAX_POOLED_HEAD_FIELDS {
            heads.push(head);
        }
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
            id,
            local: RefCell::new(Local::new(snapshot, id)),
            shared: shared.clone(),
            telemetry: RefCell::new(telemetry),
            drain: CancelToken::new(),
            connections: Cell::new(0),
            max_connections,
            tasks: Cell::new(0),
            bufs: RefCell::new(Vec::new()),
            heads: RefCell::new(Vec::new()),
        });
        worker.local.borrow_mut().bind_stats(&worker);
        shared.ready_workers.fetch_add(1, Ordering::SeqCst);
        let _ = ready_tx.send(Ok(()));
        tracing::debug!(worker = id, cpu, driver = "compio", "worker listening on {addr}");

        // The drain signal crosses threads once (a oneshot wakes this runtime); everything on
        // this thread then waits on the local cancel token.
        let drain_task = {
            let worker = worker.clone();
            async move {
                let _ = drain_rx.await;
                worker.drain.clone().cancel();
            }
        };
        crate::io::spawn(drain_task);
        housekeeping(worker.clone());

        for l in listeners {
            let worker = worker.clone();
            crate::io::spawn(async move { accept_loop(&worker, &l).await });
        }
        worker.drain.clone().wait().await;
        // Drain: wait for in-flight connections (the caller bounds the total time).
        while worker.tasks.get() > 0 {
            crate::io::sleep(Duration::from_millis(5)).await;
        }
        worker.telemetry.borrow_mut().flush();
    });
}

async fn accept_loop(worker: &Rc<Worker>, listener: &Listener) {
    use futures_util::future::{Either, select};
    loop {
        let accept = std::pin::pin!(listener.accept());
        let drained = std::pin::pin!(worker.drain.clone().wait());
        let (conn, peer) = match select(accept, drained).await {
            Either::Right(_) => return,
            Either::Left((Ok(c), _)) => c,
            Either::Left((Err(e), _)) => {
                // EMFILE/ENFILE/ECONNABORTED: log and keep accepting after a short pause.
                tracing::warn!(worker = worker.id, "accept failed: {e}");
                crate::io::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if worker.connections.get() >= worker.max_connections {
            worker.telemetry.borrow_mut().connection_refused();
            shed_connection(worker.clone(), conn, peer);
            continue;
        }
        spawn_connection(worker.clone(), conn, peer);
    }
}

fn spawn_connection(worker: Rc<Worker>, conn: Conn, peer: SocketAddr) {
    worker.connections.set(worker.connections.get() + 1);
    worker.tasks.set(worker.tasks.get() + 1);
    worker.shared.downstream_connections.fetch_add(1, Ordering::Relaxed);
    crate::io::spawn(async move {
        let route = route_of(&worker, &conn, peer);
        match route.protocol {
            // Boxed: a relay's state is large, and an HTTP connection (the common case) should
            // not carry its size while idle.
            Protocol::Tcp => Box::pin(crate::tcp::relay(&worker, conn, peer, route)).await,
            Protocol::Http => crate::conn::serve(&worker, conn, peer, route).await,
        }
        worker.connections.set(worker.connections.get() - 1);
        worker.tasks.set(worker.tasks.get() - 1);
        worker.shared.downstream_connections.fetch_sub(1, Ordering::Relaxed);
    });
}

/// How a new connection is served: its steered original destination (looked up, and
/// forgotten, in the kernel map), or the listener it came in on.
fn route_of(worker: &Worker, conn: &Conn, peer: SocketAddr) -> crate::local::ConnRoute {
    let local_addr = conn.local_addr().ok();
    let dialed = match (&worker.shared.orig_dst, local_addr) {
        (Some(od), Some(local)) => od.take(peer, local),
        _ => None,
    };
    worker.local.borrow_mut().route_for_connection(worker, dialed, local_addr)
}

/// A connection over this worker's limit: an HTTP client gets `503` with `Retry-After` (its
/// request is not read, so the answer is sent, the write side shut, and what the client still
/// sends is drained briefly before closing, so it reads the 503 instead of a reset); a TCP
/// client is closed.
fn shed_connection(worker: Rc<Worker>, mut conn: Conn, peer: SocketAddr) {
    worker.tasks.set(worker.tasks.get() + 1);
    crate::io::spawn(async move {
        let route = route_of(&worker, &conn, peer);
        if route.protocol == Protocol::Http {
            let mut out = Vec::with_capacity(256);
            let reason = weir_core::outcome::ErrorReason::Overloaded;
            crate::http::ErrorResponse {
                status: reason.status(),
                reason: reason.as_str(),
                detail: reason.message(),
                close: true,
                retry_after_secs: Some(weir_core::outcome::DEFAULT_SHED_RETRY_AFTER_SECS),
                omit_body: false,
            }
            .write(&mut out);
            let (res, _) = conn.write_all(out).await;
            if res.is_ok() && conn.shutdown_write().await.is_ok() {
                let deadline = Instant::now() + Duration::from_millis(200);
                let mut buf = Vec::with_capacity(4096);
                while let Some((Ok(n), b)) = crate::io::until(deadline, conn.read(buf)).await {
                    if n == 0 {
                        break;
                    }
                    buf = b;
                    buf.clear();
                }
            }
        }
        worker.tasks.set(worker.tasks.get() - 1);
    });
}

/// Once a second: expire idle pooled connections, pick up a new snapshot even without
/// traffic, and publish this worker's stats interval.
fn housekeeping(worker: Rc<Worker>) {
    crate::io::spawn(async move {
        loop {
            let drained = std::pin::pin!(worker.drain.clone().wait());
            let tick = std::pin::pin!(crate::io::sleep(Duration::from_secs(1)));
            if let futures_util::future::Either::Left(_) = futures_util::future::select(drained, tick).await {
                return;
            }
            let now = Instant::now();
            if let Some(od) = &worker.shared.orig_dst {
                od.heartbeat();
            }
            worker.local.borrow_mut().housekeeping(&worker, now);
            worker.telemetry.borrow_mut().flush();
        }
    });
}
