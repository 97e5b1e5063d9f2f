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

use crate::Counter;

/// SOCKHASH: [`SockKey`] (a socket's own four-tuple) → the socket. The `sk_msg` and the
/// no-op stream-verdict programs are attached to it before any socket goes in.
pub const MAP_SOCKS: &str = "WEIR_SOCKS";
/// LRU hash: [`SockKey`] of a sending socket → [`SockState`]. Per program (each socket keeps
/// the programs it was enrolled with), so not shared.
pub const MAP_SOCK_STATE: &str = "WEIR_SOCK_STATE";
/// LRU hash: [`SockKey`] of an endpoint's socket (as the endpoint sees it) → 1, between the
/// moment weir's side of an upstream connection is enrolled and the endpoint's side is. weir
/// takes the entry out after `connect()`: still there, the endpoint's side was not enrolled (no
/// weir program runs for its cgroup) and weir takes its own socket out of [`MAP_SOCKS`] again.
/// Per program (not shared): a pair is made by the programs of one weir.
pub const MAP_UPSTREAM_PENDING: &str = "WEIR_UP_PENDING";
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

/// Whether weir's own socket (its mark is `mark`) connected to `remote` starts an upstream pair:
/// the redirect is on (`socket_redirect`), the socket carries weir's mark (`own_mark`, never 0)
/// and the endpoint is on this node's loopback (127.0.0.0/8 or ::1, IPv4 as IPv4-mapped).
#[inline(always)]
pub fn upstream_pairs(socket_redirect: u32, own_mark: u32, mark: u32, remote: &[u8; 16]) -> bool {
    socket_redirect != 0 && own_mark != 0 && mark == own_mark && is_loopback(remote)
}

/// 127.0.0.0/8 as IPv4-mapped, or ::1.
#[inline(always)]
pub fn is_loopback(a: &[u8; 16]) -> bool {
    let zero10 = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0;
    let v4 = zero10 && a[10] == 0xff && a[11] == 0xff && a[12] == 127;
    let v6 = zero10 && a[10] | a[11] | a[12] | a[13] | a[14] == 0 && a[15] == 1;
    v4 || v6
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
    fn only_weirs_own_sockets_to_loopback_start_an_upstream_pair() {
        extern crate std;
        use std::net::{IpAddr, Ipv6Addr};
        let mapped = |ip: &str| match ip.parse::<IpAddr>().expect("ip") {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        for (ip, local) in [("127.0.0.1", true), ("127.200.3.4", true), ("::1", true), ("10.0.0.1", false)] {
            assert_eq!(is_loopback(&mapped(ip)), local, "{ip}");
            assert_eq!(
                is_loopback(&mapped(ip)),
                ip.parse::<IpAddr>().expect("ip").to_canonical().is_loopback(),
                "agrees with std for {ip}"
            );
        }
        assert!(!is_loopback(&Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 2).octets()));
        assert!(!is_loopback(&Ipv6Addr::new(1, 0, 0, 0, 0, 0, 0, 1).octets()));
        let lo = mapped("127.0.0.1");
        assert!(upstream_pairs(1, 0x5745, 0x5745, &lo));
        assert!(!upstream_pairs(0, 0x5745, 0x5745, &lo), "redirect off");
        assert!(!upstream_pairs(1, 0x5745, 0, &lo), "not weir's socket");
        assert!(!upstream_pairs(1, 0, 0, &lo), "no mark configured: nothing is weir's");
        assert!(!upstream_pairs(1, 0x5745, 0x5745, &mapped("198.18.0.1")), "another node");
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
