//! The running weir's side of a takeover: serves the hand-off socket, hands over its sockets,
//! service table and counters, stops when the new weir has committed, and takes its links back
//! when a takeover fails. Runs on its own threads (`weir-takeover`, and one per hand-off),
//! never on a worker.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_proxy::Workers;

use super::wire::Channel;
use super::{
    Committed, Hello, IDLE_GRACE, Kind, Offer, PREPARE_TIMEOUT, Refuse, SUPPORTED, StatsUpdate, Who, current_totals,
    json, parse,
};
use crate::admin::AdminServer;
use crate::app::{Control, Event};

/// How often a handed-over weir sends its counters while it drains.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What a commit stops.
#[derive(Debug, Clone)]
pub struct Handles {
    /// The proxy workers.
    pub workers: Arc<Workers>,
    /// The admin server.
    pub admin: Arc<AdminServer>,
}

/// The hand-off socket's server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Listening>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Listening {
    listener: UnixListener,
    stopped: AtomicBool,
    /// An eventfd that wakes the accept loop.
    wake: OwnedFd,
}

impl Listening {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl Server {
    /// Serves `listener` (bound by this weir, or handed over by the one it took over).
    pub fn start(listener: UnixListener, control: Arc<Control>, handles: Handles) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a new fd that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let shared = Arc::new(Listening { listener, stopped: AtomicBool::new(false), wake });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("weir-takeover".into())
                .spawn(move || accept_loop(&shared, &control, &handles))?
        };
        Ok(Server { shared, thread: Some(thread) })
    }

    /// Stops serving the hand-off socket (a hand-off in progress goes on).
    pub fn stop(mut self) {
        self.shared.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(shared: &Arc<Listening>, control: &Arc<Control>, handles: &Handles) {
    loop {
        let mut fds = [
            libc::pollfd { fd: shared.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: shared.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll(2) on two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        if rc < 0 || fds[0].revents == 0 {
            continue;
        }
        let stream = match shared.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("hand-off socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!("hand-off socket: {e}");
            continue;
        }
        let chan = match Channel::new(stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("refusing a hand-off connection: {e}");
                continue;
            }
        };
        let pid = chan.peer.pid;
        let (control, handles, shared) = (control.clone(), handles.clone(), shared.clone());
        let spawned = match control.handoff.begin(pid) {
            Ok(()) => std::thread::Builder::new()
                .name("weir-handoff".into())
                .spawn(move || hand_off(chan, &control, &handles, &shared)),
            // Refused off this thread: the new weir's hello is read first, so that closing
            // never discards what it sent (which would reset its end before it reads why).
            Err(reason) => std::thread::Builder::new().name("weir-handoff".into()).spawn(move || {
                let mut chan = chan;
                let _ = chan.recv(Some(Duration::from_secs(2)));
                tracing::warn!("refused a takeover by {}: {reason}", Who(pid));
                control.takeovers_failed.fetch_add(1, Ordering::Relaxed);
                refuse(&mut chan, &reason);
            }),
        };
        if let Err(e) = spawned {
            tracing::warn!("hand-off socket: cannot start a thread: {e}");
        }
    }
}

fn refuse(chan: &mut Channel, reason: &str) {
    let _ = chan.send(Kind::Refuse as u8, &json(&Refuse { reason: reason.to_string() }), &[]);
    chan.wait_closed(Duration::from_secs(2));
}

/// Why a hand-off failed, and whether the new weir may have touched the links.
struct Failure {
    reason: String,
    links_touched: bool,
}

fn failure(reason: impl Into<String>, links_touched: bool) -> Failure {
    Failure { reason: reason.into(), links_touched }
}

/// One hand-off, from the hello to the last counters.
fn hand_off(mut chan: Channel, control: &Arc<Control>, handles: &Handles, server: &Arc<Listening>) {
    let pid = chan.peer.pid;
    match negotiate(&mut chan, control, handles, server) {
        Ok(()) => stream_counters(&mut chan, control),
        Err(f) => {
            if f.links_touched {
                let restored = control.steering.lock().as_mut().map(|s| s.reassert());
                match restored {
                    Some(Err(e)) => tracing::error!("taking back the eBPF links after a failed takeover: {e:#}"),
                    Some(Ok(())) => tracing::info!("took the eBPF links back after a failed takeover"),
                    None => {}
                }
            }
            control.takeovers_failed.fetch_add(1, Ordering::Relaxed);
            control.handoff.failed();
            tracing::warn!("takeover by {} failed: {}; this weir keeps serving", Who(pid), f.reason);
            refuse(&mut chan, &f.reason);
            control.notify(Event::HandoffEnded);
        }
    }
}

fn recv(chan: &mut Channel, timeout: Duration, links_touched: bool) -> Result<(Kind, Vec<u8>), Failure> {
    let frame = chan.recv(Some(timeout)).map_err(|e| {
        let what = match e.kind() {
            io::ErrorKind::UnexpectedEof => "the new weir closed the hand-off (it died or gave up)".to_string(),
            io::ErrorKind::TimedOut => format!("the new weir did not go on within {} ms", timeout.as_millis()),
            _ => format!("hand-off socket: {e}"),
        };
        failure(what, links_touched)
    })?;
    let kind =
        Kind::from_u8(frame.kind).ok_or_else(|| failure(format!("unknown frame {}", frame.kind), links_touched))?;
    if kind == Kind::Abort {
        let why = parse::<Refuse>(kind, &frame.body).map_or_else(|e| e, |r| r.reason);
        return Err(failure(format!("the new weir gave up: {why}"), links_touched));
    }
    Ok((kind, frame.body))
}

/// Hello to commit. On `Ok`, this weir has stopped accepting and is draining.
fn negotiate(
    chan: &mut Channel,
    control: &Arc<Control>,
    handles: &Handles,
    server: &Arc<Listening>,
) -> Result<(), Failure> {
    let pid = chan.peer.pid;
    let (kind, body) = recv(chan, Duration::from_secs(5), false)?;
    if kind != Kind::Hello {
        return Err(failure(format!("expected a hello, got {kind:?}"), false));
    }
    let hello: Hello = parse(kind, &body).map_err(|e| failure(e, false))?;
    let config = control.shared.snapshot.load().config.clone();
    if !SUPPORTED.contains(&hello.protocol) {
        return Err(failure(
            format!(
                "takeover protocol {} is not one this weir ({}) speaks ({SUPPORTED:?}); restart weir instead",
                hello.protocol,
                env!("CARGO_PKG_VERSION")
            ),
            false,
        ));
    }
    let abi = weir_ebpf_common::shared_maps_abi();
    if hello.shared_maps_abi != abi {
        return Err(failure(
            format!(
                "the eBPF maps the two would share differ (layout {:?} here, {:?} there); restart weir instead",
                abi, hello.shared_maps_abi
            ),
            false,
        ));
    }
    if hello.listen != config.proxy.listen || hello.pin_dir != config.steering.pin_dir {
        return Err(failure(
            format!(
                "[proxy] listen and [steering] pin_dir cannot change across a takeover ({} and {} here)",
                config.proxy.listen,
                config.steering.pin_dir.display()
            ),
            false,
        ));
    }
    tracing::info!(pid, version = %hello.version, "a takeover starts: handing over the listening sockets");

    // The offer: every listening socket, the admin socket, the hand-off socket itself.
    let listeners = handles.workers.listeners().map_err(|e| failure(format!("listening sockets: {e}"), false))?;
    let addrs: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    if addrs.len() != listeners.len() {
        return Err(failure("a listening socket has no address", false));
    }
    let admin = control.admin_socket.lock().as_ref().and_then(|a| a.try_clone().ok());
    let offer = Offer {
        protocol: hello.protocol,
        version: env!("CARGO_PKG_VERSION").to_string(),
        listeners: addrs,
        admin: admin.as_ref().and_then(|a| a.local_addr().ok()),
        steering: control.steering.lock().as_ref().map(|s| s.exported_services()),
    };
    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
    if let (Some(a), Some(_)) = (&admin, offer.admin) {
        fds.push(a.as_fd());
    }
    fds.push(server.listener.as_fd());
    chan.send(Kind::Offer as u8, &json(&offer), &fds).map_err(|e| failure(format!("sending the offer: {e}"), false))?;
    drop(fds);
    drop(listeners);

    let (kind, _) = recv(chan, PREPARE_TIMEOUT, false)?;
    if kind != Kind::Swap {
        return Err(failure(format!("expected swap, got {kind:?}"), false));
    }
    control.handoff.swapping(pid).map_err(|e| failure(e, false))?;
    chan.send(Kind::SwapOk as u8, b"{}", &[]).map_err(|e| failure(format!("hand-off socket: {e}"), true))?;

    // The new weir's programs run from now on, fed by its heartbeat: it must commit (or be
    // taken back) well before that heartbeat could look stale.
    let fail_after = config.steering.fail_after.min(Duration::from_millis(hello.fail_after_ms.max(1)));
    let commit_timeout = (fail_after / 2).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let (kind, _) = recv(chan, commit_timeout, true)?;
    if kind != Kind::Commit {
        return Err(failure(format!("expected commit, got {kind:?}"), true));
    }
    commit(chan, control, handles, server, pid);
    Ok(())
}

/// The new weir has its programs in the links and accepts: stop, and answer with the counters.
fn commit(chan: &mut Channel, control: &Arc<Control>, handles: &Handles, server: &Arc<Listening>, pid: u32) {
    let t0 = Instant::now();
    if !handles.workers.stop_accepting(Duration::from_secs(1)) {
        tracing::warn!("not every worker stopped accepting within 1 s");
    }
    handles.admin.stop(Duration::from_secs(1));
    control.admin_socket.lock().take();
    server.stop();
    if let Some(s) = control.steering.lock().take() {
        s.forget();
    }
    control.draining.store(true, Ordering::SeqCst);
    handles.workers.begin_drain(IDLE_GRACE);
    let drain = control.shared.snapshot.load().config.proxy.drain_timeout;
    control.handoff.handed_over(pid, t0 + drain);
    // The last counters come when this weir's drain is over, or when the weir it took over
    // itself is done, whichever is later.
    let last = control.handoff.predecessor_until().map_or(t0 + drain, |p| p.max(t0 + drain));
    let drain_ms = last.saturating_duration_since(Instant::now()).as_millis() as u64;
    let committed = Committed { totals: current_totals(control), drain_ms };
    if let Err(e) = chan.send(Kind::Committed as u8, &json(&committed), &[]) {
        tracing::warn!("could not send the counters to {}: {e}", Who(pid));
    }
    tracing::info!(
        pid,
        "handed over to {} in {} ms; draining (at most {} s)",
        Who(pid),
        t0.elapsed().as_millis(),
        drain.as_secs()
    );
    control.notify(Event::HandedOver);
}

/// While this weir drains: its counters once a second, and when the drain is over (and the
/// weir this one took over, if any, has sent its own last ones) the final counters.
fn stream_counters(chan: &mut Channel, control: &Arc<Control>) {
    let mut connected = true;
    while !control.handoff.final_requested(STATS_EVERY) {
        if connected {
            let update = StatsUpdate { totals: current_totals(control) };
            connected = chan.send(Kind::Stats as u8, &json(&update), &[]).is_ok();
        }
    }
    control.handoff.wait_predecessor();
    if connected {
        let update = StatsUpdate { totals: current_totals(control) };
        if chan.send(Kind::Final as u8, &json(&update), &[]).is_ok() {
            chan.wait_closed(Duration::from_secs(2));
        }
    }
    control.handoff.final_sent();
}
