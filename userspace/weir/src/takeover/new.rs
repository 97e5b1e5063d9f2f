//! The new weir's side of a takeover: asks the running weir for its sockets, swaps the links
//! when told to, commits, and then follows the old weir's counters until it is done. The
//! steps themselves are run by `App::start_with`, in the order `takeover.rs` describes.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use weir_core::config::Config;

use super::wire::{self, Channel};
use super::{Committed, Hello, Kind, Offer, PROTOCOL, Refuse, SUPPORTED, StatsUpdate, Totals, Who, json, parse};
use crate::app::Control;
use crate::steering::ServiceEntry;

/// What the running weir handed over.
#[derive(Debug)]
pub struct Inheritance {
    /// Its listening sockets, in its workers' order.
    pub listeners: Vec<TcpListener>,
    /// Its admin socket, with its address.
    pub admin: Option<(SocketAddr, TcpListener)>,
    /// The hand-off socket.
    pub takeover: UnixListener,
    /// Its kernel service table (`None`: it does not steer).
    pub services: Option<Vec<ServiceEntry>>,
}

/// The running weir, during and after a takeover.
#[derive(Debug)]
pub struct Predecessor {
    chan: Channel,
    /// Its pid.
    pub pid: u32,
    /// Its release.
    pub version: String,
    /// Sent `Commit` (or `Abort`): nothing more to say on drop.
    done: bool,
}

/// Asks the weir that holds `config`'s hand-off socket for what it hands over. `None`: no weir
/// holds it (start normally). An error: a weir is there and refused, or the hand-off broke;
/// that weir keeps serving.
pub fn connect(config: &Config) -> anyhow::Result<Option<(Predecessor, Inheritance)>> {
    let root = crate::steering::pin_root(config);
    let Some(mut chan) = wire::connect(&root).context("connecting to the running weir's hand-off socket")? else {
        return Ok(None);
    };
    let pid = chan.peer.pid;
    let who = Who(pid);
    let hello = Hello {
        protocol: PROTOCOL,
        version: env!("CARGO_PKG_VERSION").to_string(),
        shared_maps_abi: weir_ebpf_common::shared_maps_abi().to_vec(),
        listen: config.proxy.listen,
        pin_dir: config.steering.pin_dir.clone(),
        fail_after_ms: config.steering.fail_after.as_millis() as u64,
    };
    chan.send(Kind::Hello as u8, &json(&hello), &[]).with_context(|| format!("greeting {who}"))?;
    let frame = chan.recv(Some(Duration::from_secs(30))).with_context(|| format!("waiting for {who}"))?;
    match Kind::from_u8(frame.kind) {
        Some(Kind::Refuse) => {
            let why = parse::<Refuse>(Kind::Refuse, &frame.body).map_or_else(|e| e, |r| r.reason);
            bail!("{who} refused the takeover: {why}");
        }
        Some(Kind::Offer) => {}
        other => bail!("{who} answered the hello with {other:?}"),
    }
    let offer: Offer = parse(Kind::Offer, &frame.body).map_err(|e| anyhow!("{who}: {e}"))?;
    let mut pred = Predecessor { chan, pid, version: offer.version.clone(), done: false };
    if !SUPPORTED.contains(&offer.protocol) {
        let reason = format!("{who} offers takeover protocol {}, this weir speaks {SUPPORTED:?}", offer.protocol);
        pred.abort(&reason);
        bail!(reason);
    }
    let want = offer.listeners.len() + usize::from(offer.admin.is_some()) + 1;
    if frame.fds.len() != want {
        let reason = format!("{who} sent {} file descriptors, {want} expected", frame.fds.len());
        pred.abort(&reason);
        bail!(reason);
    }
    let mut fds = frame.fds.into_iter();
    let mut next = || fds.next().ok_or_else(|| anyhow!("a file descriptor is missing"));
    let listeners = (0..offer.listeners.len()).map(|_| next().map(TcpListener::from)).collect::<anyhow::Result<_>>()?;
    let admin = match offer.admin {
        Some(addr) => Some((addr, TcpListener::from(next()?))),
        None => None,
    };
    let takeover = UnixListener::from(next()? as OwnedFd);
    tracing::info!(pid, version = %pred.version, sockets = offer.listeners.len(), "taking over from {who}");
    super::test_stop_at("offer-received");
    Ok(Some((pred, Inheritance { listeners, admin, takeover, services: offer.steering })))
}

impl Predecessor {
    /// Ready to put this weir's programs into the links: asks, and waits for the go-ahead.
    pub fn swap(&mut self) -> anyhow::Result<()> {
        super::test_stop_at("ready-to-swap");
        self.chan.send(Kind::Swap as u8, b"{}", &[]).context("asking to swap the links")?;
        let frame = self.chan.recv(Some(Duration::from_secs(10))).context("waiting for the go-ahead to swap")?;
        match Kind::from_u8(frame.kind) {
            Some(Kind::SwapOk) => Ok(()),
            Some(Kind::Refuse) => {
                self.done = true;
                let why = parse::<Refuse>(Kind::Refuse, &frame.body).map_or_else(|e| e, |r| r.reason);
                bail!("{} refused the swap: {why}", Who(self.pid))
            }
            other => bail!("{} answered the swap with {other:?}", Who(self.pid)),
        }
    }

    /// This weir's programs are in the links: tells the old weir to stop accepting.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        super::test_stop_at("links-swapped");
        self.done = true;
        self.chan.send(Kind::Commit as u8, b"{}", &[]).context("committing the takeover")
    }

    /// The old weir's counters when it stopped, and when its drain ends at the latest.
    /// `None` if it did not answer (it died: its counters are lost, this weir serves on).
    pub fn committed(&mut self) -> Option<(Totals, Instant)> {
        let frame = match self.chan.recv(Some(Duration::from_secs(10))) {
            Ok(f) if f.kind == Kind::Committed as u8 => f,
            Ok(f) => {
                tracing::warn!(pid = self.pid, "the old weir answered the commit with frame {}", f.kind);
                return None;
            }
            Err(e) => {
                tracing::warn!(pid = self.pid, "the old weir did not confirm the commit: {e}");
                return None;
            }
        };
        match parse::<Committed>(Kind::Committed, &frame.body) {
            Ok(c) => match c.totals.checked() {
                Ok(t) => Some((t, Instant::now() + Duration::from_millis(c.drain_ms))),
                Err(e) => {
                    tracing::warn!("counters of the old weir not carried over: {e}");
                    Some((Totals::default(), Instant::now() + Duration::from_millis(c.drain_ms)))
                }
            },
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// Gives up before committing: the old weir takes its links back and serves on.
    pub fn abort(&mut self, reason: &str) {
        if !self.done {
            self.done = true;
            let _ = self.chan.send(Kind::Abort as u8, &json(&Refuse { reason: reason.to_string() }), &[]);
        }
    }

    /// Follows the old weir's counters while it drains, on a thread of its own, until its last
    /// ones (or it is gone, or `until` passed).
    pub fn follow(mut self, control: Arc<Control>, until: Instant) {
        control.handoff.predecessor_following(until + Duration::from_secs(3));
        let spawned = std::thread::Builder::new().name("weir-takeover-counters".into()).spawn(move || {
            loop {
                let left = (until + Duration::from_secs(3)).saturating_duration_since(Instant::now());
                let frame = match self.chan.recv(Some(left.max(Duration::from_millis(1)))) {
                    Ok(f) => f,
                    Err(_) => break,
                };
                let kind = Kind::from_u8(frame.kind);
                if let Some(Kind::Stats | Kind::Final) = kind {
                    match parse::<StatsUpdate>(Kind::Stats, &frame.body).and_then(|u| u.totals.checked()) {
                        Ok(t) => control.inherit(t),
                        Err(e) => tracing::warn!("counters of the old weir: {e}"),
                    }
                }
                if kind == Some(Kind::Final) {
                    break;
                }
            }
            control.handoff.predecessor_done();
            tracing::info!(pid = self.pid, "the weir taken over is done");
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot follow the old weir's counters: {e}");
        }
    }
}

impl Drop for Predecessor {
    fn drop(&mut self) {
        self.abort("the new weir stopped before the hand-off completed");
    }
}
