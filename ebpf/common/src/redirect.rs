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
/// LRU hash: [`SockKey`] of a sending socket → [`SockState`]. Per program (each socket keeps
/// the programs it was enrolled with), so not shared.
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

/// What the `sk_msg` program remembers of one sending socket.
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

/// The decision for one message of `size` bytes from a socket whose state is `state`.
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
