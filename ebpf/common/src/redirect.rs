//! The socket-level redirect's ABI and its pure decision: which sockets are in the socket map,
//! how one names its peer, and what one message does.
//!
//! Both ends of a steered local leg (the workload's socket and weir's accepted one) sit in
//! [`MAP_SOCKS`], each under its own four-tuple ([`SockKey`]). A message one of them sends is
//! moved straight into the other's receive queue when the peer is there ([`msg_step`] says
//! whether to try); otherwise it takes the TCP path.
//!
//! Order is never broken: a redirected message is in the peer's queue before `send` returns,
//! so falling from the redirect to TCP is safe at any moment, while TCP bytes may still be in
//! flight when a later message would be redirected past them. Hence a direction that took the
//! TCP path once stays on it ([`SockState::passed`]). The redirect has no flow control (a slow
//! reader lets the queue grow), so a direction that moved [`REDIRECT_BUDGET_BYTES`] without
//! the other side sending anything falls back to TCP too, whose window bounds it.
//!
//! The upstream leg (weir's socket to an endpoint on this node: loopback, a local pod) is
//! paired through [`MAP_UPSTREAM_COOKIES`] and [`MAP_UPSTREAM_PENDING`]: weir names its socket
//! by cookie before `connect()` (every one: an endpoint on another node never completes the
//! pair); when that socket is established the endpoint's side is remembered; the
//! endpoint's accepted socket is enrolled when its own handshake completes, where a weir
//! sock_ops program runs for the endpoint's cgroup, and the entry says so; after `connect()`
//! weir takes the entry and enrolls its own socket only then. The cookie makes the pair the
//! business of the programs of the weir that opened the socket, whatever other weir programs
//! run for the same cgroups.

use crate::Counter;

/// SOCKHASH: [`SockKey`] (a socket's own four-tuple) → the socket. The `sk_msg` and the
/// no-op stream-verdict programs are attached to it before any socket goes in.
pub const MAP_SOCKS: &str = "WEIR_SOCKS";
/// LRU hash: a connection, under [`pair_key`] → [`PairState`] (both directions in one entry,
/// so a message costs one lookup of it). Per program (each socket keeps the programs it was
/// enrolled with), so not shared.
pub const MAP_SOCK_STATE: &str = "WEIR_SOCK_STATE";
/// LRU hash: socket cookie of weir's upstream socket to an endpoint → 1, written by
/// weir before `connect()`, taken by sock_ops when the socket is established.
pub const MAP_UPSTREAM_COOKIES: &str = "WEIR_UP_COOKIES";
/// LRU hash: [`SockKey`] of an endpoint's socket (as the endpoint sees it) → one of
/// [`upstream`], from the moment weir's upstream socket is established until weir takes the
/// entry after `connect()`: [`upstream::PAIRED`] (the endpoint's side is in [`MAP_SOCKS`]) and
/// weir enrolls its own socket; [`upstream::PENDING`] (no weir program runs for the endpoint's
/// cgroup, or its handshake has not completed yet) and the connection stays on TCP. Per program
/// (not shared): a pair is made by the programs of one weir.
pub const MAP_UPSTREAM_PENDING: &str = "WEIR_UP_PENDING";

/// Values of [`MAP_UPSTREAM_PENDING`].
pub mod upstream {
    /// weir's side is established; the endpoint's side is not enrolled.
    pub const PENDING: u32 = 1;
    /// The endpoint's side is enrolled: weir may enroll its own.
    pub const PAIRED: u32 = 2;
}
/// Capacity of [`MAP_SOCKS`] (two entries per redirected connection).
pub const MAX_REDIRECT_SOCKS: u32 = 262_144;
/// Bytes one direction may redirect while the other side sends nothing before it falls back
/// to TCP for good.
pub const REDIRECT_BUDGET_BYTES: u64 = 4 << 20;

/// One socket, as it sees itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Its own address, IPv6 or IPv4-mapped, network byte order.
    pub local_addr: [u8; 16],
    /// Its peer's address, IPv6 or IPv4-mapped, network byte order.
    pub remote_addr: [u8; 16],
    /// Its own port, host byte order.
    pub local_port: u16,
    /// Its peer's port, host byte order.
    pub remote_port: u16,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 36);

impl SockKey {
    /// The key of the socket at the other end of the same connection.
    #[inline(always)]
    pub fn peer(&self) -> SockKey {
        SockKey {
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// What the `sk_msg` program remembers of one direction of a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// Bytes redirected since the other side last sent something.
    pub redirected: u64,
    /// 1: this direction took the TCP path and stays on it.
    pub passed: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SockState>() == 16);

/// Which end of a connection a socket is: the one whose own (port, address) orders first
/// ([`Side::Low`]) or the other. Both ends work it out alike from their own tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Low,
    High,
}

/// Both directions of one connection, in one [`MAP_SOCK_STATE`] entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairState {
    /// What the [`Side::Low`] end sends.
    pub low: SockState,
    /// What the [`Side::High`] end sends.
    pub high: SockState,
}
const _: () = assert!(core::mem::size_of::<PairState>() == 32);

impl PairState {
    /// The direction `side` sends.
    #[inline(always)]
    pub fn sent_by(&mut self, side: Side) -> &mut SockState {
        match side {
            Side::Low => &mut self.low,
            Side::High => &mut self.high,
        }
    }

    /// `side` redirected `size` bytes: they count against its budget, and the other
    /// direction's budget starts again (this side spoke).
    #[inline(always)]
    pub fn redirected(&mut self, side: Side, size: u32) {
        let (mine, theirs) = match side {
            Side::Low => (&mut self.low, &mut self.high),
            Side::High => (&mut self.high, &mut self.low),
        };
        mine.redirected = mine.redirected.saturating_add(u64::from(size));
        theirs.redirected = 0;
    }

    /// Records one message `side` sent that was not passed by [`msg_step`]: it `redirected`,
    /// or it took the TCP path, and then this direction stays on it.
    #[inline(always)]
    pub fn record(&mut self, side: Side, redirected: bool, size: u32) {
        if redirected {
            self.redirected(side, size);
        } else {
            self.sent_by(side).passed = 1;
        }
    }
}

/// Which end of its connection `me` is.
#[inline(always)]
pub fn side_of(me: &SockKey) -> Side {
    if orders_first(me.local_port, &me.local_addr, me.remote_port, &me.remote_addr) { Side::Low } else { Side::High }
}

/// The [`MAP_SOCK_STATE`] key of the connection `me` is one end of (the tuple as its
/// [`Side::Low`] end sees it), and which end `me` is.
#[inline(always)]
pub fn pair_key(me: &SockKey) -> (SockKey, Side) {
    match side_of(me) {
        Side::Low => (*me, Side::Low),
        Side::High => (me.peer(), Side::High),
    }
}

/// Whether (`a_port`, `a`) ≤ (`b_port`, `b`). Only a fixed total order matters; byte by byte,
/// because `[u8]` comparison would call `memcmp`, which a kernel program has not.
#[inline(always)]
fn orders_first(a_port: u16, a: &[u8; 16], b_port: u16, b: &[u8; 16]) -> bool {
    if a_port != b_port {
        return a_port < b_port;
    }
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    true
}

/// What one message does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgStep {
    /// Try the redirect (the peer may not be in the map: then pass, and stay on TCP).
    TryRedirect,
    /// Take the TCP path, counted as this.
    Pass(Counter),
    /// Take the TCP path from now on: the budget is spent.
    FallBack,
}

/// The decision for one message of `size` bytes in a direction whose state is `state` (`None`:
/// the connection has no entry yet).
#[inline(always)]
pub fn msg_step(state: Option<&SockState>, size: u32) -> MsgStep {
    match state {
        None => MsgStep::TryRedirect,
        Some(s) if s.passed != 0 => MsgStep::Pass(Counter::MsgPassed),
        Some(s) if s.redirected.saturating_add(u64::from(size)) > REDIRECT_BUDGET_BYTES => MsgStep::FallBack,
        Some(_) => MsgStep::TryRedirect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_key_is_the_mirror_image() {
        let k = SockKey { local_addr: [1; 16], remote_addr: [2; 16], local_port: 40000, remote_port: 15001 };
        let p = k.peer();
        assert_eq!((p.local_addr, p.remote_addr, p.local_port, p.remote_port), ([2; 16], [1; 16], 15001, 40000));
        assert_eq!(p.peer(), k);
    }

    #[test]
    fn both_ends_find_one_entry_and_each_its_own_direction() {
        let client = SockKey { local_addr: [1; 16], remote_addr: [2; 16], local_port: 40000, remote_port: 15001 };
        let (k1, s1) = pair_key(&client);
        let (k2, s2) = pair_key(&client.peer());
        assert_eq!(k1, k2);
        assert_ne!(s1, s2);
        assert_eq!((k1.local_port, s1), (15001, Side::High), "the lower port is the low end");
        // Same ports (two loopback addresses): the address decides.
        let same = SockKey { local_addr: [9; 16], remote_addr: [3; 16], local_port: 5000, remote_port: 5000 };
        let (k3, s3) = pair_key(&same);
        let (k4, s4) = pair_key(&same.peer());
        assert_eq!((k3, s3, s4), (k4, Side::High, Side::Low));
        assert_eq!(k3.local_addr, [3; 16]);
    }

    #[test]
    fn speaking_restarts_the_other_direction_s_budget() {
        let mut p = PairState::default();
        p.redirected(Side::Low, 100);
        p.redirected(Side::Low, 50);
        assert_eq!((p.low.redirected, p.high.redirected), (150, 0));
        p.redirected(Side::High, 7);
        assert_eq!((p.low.redirected, p.high.redirected), (0, 7));
        p.sent_by(Side::High).passed = 1;
        assert_eq!(msg_step(Some(p.sent_by(Side::High)), 1), MsgStep::Pass(Counter::MsgPassed));
        assert_eq!(msg_step(Some(p.sent_by(Side::Low)), 1), MsgStep::TryRedirect, "one direction only");
        p.record(Side::Low, true, 9);
        assert_eq!((p.low.redirected, p.high.redirected, p.high.passed), (9, 0, 1));
        p.record(Side::Low, false, 9);
        assert_eq!((p.low.redirected, p.low.passed), (9, 1));
    }

    #[test]
    fn a_direction_that_passed_once_stays_on_tcp() {
        assert_eq!(msg_step(None, 100), MsgStep::TryRedirect);
        let s = SockState { passed: 1, ..SockState::default() };
        assert_eq!(msg_step(Some(&s), 1), MsgStep::Pass(Counter::MsgPassed));
    }

    #[test]
    fn the_budget_bounds_what_one_direction_queues() {
        let mut s = SockState::default();
        assert_eq!(msg_step(Some(&s), 64 * 1024), MsgStep::TryRedirect);
        s.redirected = REDIRECT_BUDGET_BYTES - 10;
        assert_eq!(msg_step(Some(&s), 10), MsgStep::TryRedirect);
        assert_eq!(msg_step(Some(&s), 11), MsgStep::FallBack);
        s.redirected = u64::MAX;
        assert_eq!(msg_step(Some(&s), 1), MsgStep::FallBack, "no overflow");
    }
}
