//! The kernel/user ABI of weir's eBPF programs.
//!
//! Owns: the `#[repr(C)]` keys and values of every map (explicit padding, sizes pinned at
//! compile time), the map names both sides use, and the *pure* steering decisions, which the
//! kernel programs only apply. Must not: depend on `std`, on aya's kernel crate, or on anything
//! that cannot be unit-tested on the host.
//!
//! Addresses are stored as 16 network-order bytes: an IPv4 address is stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so that `connect4` to `a.b.c.d` and `connect6` to `::ffff:a.b.c.d` find
//! the same service. Ports are stored in host byte order (`port`), converted at the edges.
#![no_std]

pub mod redirect;
pub use redirect::{
    MAP_SOCK_STATE, MAP_SOCKS, MAP_UPSTREAM_COOKIES, MAP_UPSTREAM_PENDING, MAX_REDIRECT_SOCKS, MsgStep, PairState,
    Side, SockKey, SockState, msg_step, pair_key, side_of,
};

/// Map: service VIP ([`ServiceKey`]) → [`ServiceValue`]. Written by userspace on every config
/// snapshot; read by the connect hooks.
pub const MAP_SERVICES: &str = "WEIR_SERVICES";
/// Map: socket cookie of a workload's steered socket → [`OrigDst`], between `connect()` and
/// the moment the connection is established. LRU, so abandoned connects age out.
///
/// The name is from shared-map layout version 2, when [`OrigDst`] grew to 32 bytes with the
/// caller's cgroup id; version 1 (`WEIR_SOCK_ORIG`, `WEIR_CONN_ORIG`) held a 24-byte value.
/// Version 3 ([`SHARED_MAPS_ABI`]) keeps the 32 bytes and turns their spare `u16` into
/// [`OrigDst::flags`], which a version-2 reader takes for padding, so the name stays. The map is
/// shared ([`SHARED_MAPS`]), pinned by name and layout version, so a weir never reuses another
/// version's pin, and a takeover between two versions is refused by the hello (their
/// [`shared_maps_abi`] differ). The version-1 names are retired ([`LEGACY_MAPS`]): nothing that
/// looks a map up by name (bpftool) reads a 24-byte layout as the 32-byte one.
pub const MAP_SOCK_ORIG: &str = "WEIR_SOCK_ORIG2";
/// Map: [`ConnKey`] (the connection as the proxy sees it) → [`OrigDst`]. Filled when the
/// workload's connection is established, consumed (lookup-and-delete) by the proxy on accept.
/// LRU, so entries of connections the proxy never accepted age out. Named and versioned as
/// [`MAP_SOCK_ORIG`].
pub const MAP_CONN_ORIG: &str = "WEIR_CONN_ORIG2";
/// Map names of earlier ABI versions, never to be used again for another layout.
pub const LEGACY_MAPS: [&str; 2] = ["WEIR_SOCK_ORIG", "WEIR_CONN_ORIG"];
/// Map: index 0 → [`SteerConfig`], the proxy address and the socket mark of weir's own sockets.
pub const MAP_CONFIG: &str = "WEIR_CONFIG";
/// Per-CPU array of `u64` counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "WEIR_COUNTERS";
/// Map: index 0 → `u64` CLOCK_MONOTONIC nanoseconds of weir's last sign of life, written by
/// every worker four times a second. When it is older than [`SteerConfig::fail_after_ns`], weir is
/// considered down and connects to a VIP follow [`SteerConfig::fail_mode`].
pub const MAP_HEARTBEAT: &str = "WEIR_HEARTBEAT";
/// REUSEPORT_SOCKARRAY: CPU id → the listener of the worker pinned to that CPU.
pub const MAP_LISTENERS: &str = "WEIR_LISTENERS";
/// Capacity of [`MAP_LISTENERS`] (CPU ids above it use the kernel's default selection).
pub const MAX_CPUS: u32 = 1024;

/// Maps that outlive one weir process: pinned, and reused by the next weir on the same pins
/// (one taking over, or one restarted after a crash) instead of created anew. A connection's
/// record spans both processes (connect and sock_ops may run different programs, accept a
/// different process), listeners stay registered for CPU-affine accept (a socket can be in
/// one such map only), and the kernel counters continue.
/// The socket map ([`MAP_SOCKS`]) is shared too: a workload's socket enrolled by one weir's
/// programs must find weir's side enrolled by the next one's.
pub const SHARED_MAPS: [&str; 5] = [MAP_SOCK_ORIG, MAP_CONN_ORIG, MAP_LISTENERS, MAP_COUNTERS, MAP_SOCKS];

/// Layout version of [`SHARED_MAPS`]. Bump it with any change of their key or value types, map
/// types or capacities (including [`COUNTER_SLOTS`]): a weir never reuses, or takes over from
/// a weir with, maps of another layout version. [`shared_maps_abi`] adds the sizes, so a
/// forgotten bump of a size change still shows. Version 2: [`OrigDst`] gained `cgroup_id`.
/// Version 3: the socket-level redirect; [`OrigDst`]'s spare `u16` became [`OrigDst::flags`]
/// (same size), the socket map [`MAP_SOCKS`] is shared, and [`COUNTER_SLOTS`] went from 11 to 16.
pub const SHARED_MAPS_ABI: u32 = 3;

/// [`SHARED_MAPS_ABI`] and the sizes and capacities it covers, for comparing two builds.
pub const fn shared_maps_abi() -> [u32; 8] {
    [
        SHARED_MAPS_ABI,
        core::mem::size_of::<OrigDst>() as u32,
        core::mem::size_of::<ConnKey>() as u32,
        COUNTER_SLOTS,
        MAX_PENDING_CONNS,
        MAX_CPUS,
        core::mem::size_of::<SockKey>() as u32,
        MAX_REDIRECT_SOCKS,
    ]
}

/// What connects to a VIP do while weir is down (see [`SteerConfig::fail_mode`]).
pub mod fail_mode {
    /// Leave them alone: they go to the VIP itself (kube-proxy's path for a ClusterIP;
    /// ECONNREFUSED for a VIP nothing serves).
    pub const OPEN: u32 = 0;
    /// Rewrite them to the proxy address, where nothing listens: ECONNREFUSED at once.
    pub const CLOSED: u32 = 1;
    /// Rewrite them straight to the service's fallback endpoint, bypassing weir.
    pub const ENDPOINT: u32 = 2;
}

/// Capacity of [`MAP_SERVICES`].
pub const MAX_SERVICES: u32 = 65_536;
/// Capacity of the two original-destination maps (connections in the middle of being set up).
pub const MAX_PENDING_CONNS: u32 = 262_144;

/// Kernel-side counters, one slot per CPU each; userspace sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A connect to a service VIP was rewritten to the proxy.
    Redirected = 0,
    /// A connect went to an address that is not a service VIP (left untouched).
    Passed = 1,
    /// A connect from one of weir's own sockets (marked) was left untouched.
    OwnSocket = 2,
    /// An established steered connection was recorded for the proxy to find.
    Recorded = 3,
    /// A steered connection was established but could not be recorded (unknown family).
    RecordFailed = 4,
    /// A map update failed in a hook.
    MapError = 5,
    /// weir was down: a connect to a VIP was left alone (fail open).
    FailOpen = 6,
    /// weir was down: a connect to a VIP was refused (fail closed).
    FailClosed = 7,
    /// weir was down: a connect to a VIP went straight to a fallback endpoint.
    FailEndpoint = 8,
    /// A new connection went to the listener of the worker on the receiving CPU.
    AffineAccept = 9,
    /// No listener was registered for the receiving CPU: the kernel's hash picked one.
    AffineMiss = 10,
    /// A socket of a steered connection (the workload's, or weir's accepted one) was put into
    /// the socket map for the socket-level redirect.
    SockEnrolled = 11,
    /// A socket could not be put into the socket map (another sockmap user holds it, or the
    /// map is full): its connection runs over plain TCP.
    SockEnrollFailed = 12,
    /// A message went straight into the peer socket's receive queue.
    MsgRedirected = 13,
    /// A message took the TCP path: the peer is not in the socket map, or this direction fell
    /// back to TCP earlier (and stays there, so that bytes are never reordered).
    MsgPassed = 14,
    /// A direction of a connection moved more than [`redirect::REDIRECT_BUDGET_BYTES`]
    /// without the other side sending anything, and fell back to TCP for good (TCP's flow
    /// control bounds what a slow reader lets queue; the redirect has none).
    MsgFellBack = 15,
}

/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = 16;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::Redirected,
        Counter::Passed,
        Counter::OwnSocket,
        Counter::Recorded,
        Counter::RecordFailed,
        Counter::MapError,
        Counter::FailOpen,
        Counter::FailClosed,
        Counter::FailEndpoint,
        Counter::AffineAccept,
        Counter::AffineMiss,
        Counter::SockEnrolled,
        Counter::SockEnrollFailed,
        Counter::MsgRedirected,
        Counter::MsgPassed,
        Counter::MsgFellBack,
    ];

    /// Stable name used by `weir steer status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::Passed => "passed",
            Counter::OwnSocket => "own_socket",
            Counter::Recorded => "recorded",
            Counter::RecordFailed => "record_failed",
            Counter::MapError => "map_error",
            Counter::FailOpen => "fail_open",
            Counter::FailClosed => "fail_closed",
            Counter::FailEndpoint => "fail_endpoint",
            Counter::AffineAccept => "affine_accept",
            Counter::AffineMiss => "affine_miss",
            Counter::SockEnrolled => "sock_enrolled",
            Counter::SockEnrollFailed => "sock_enroll_failed",
            Counter::MsgRedirected => "msg_redirected",
            Counter::MsgPassed => "msg_passed",
            Counter::MsgFellBack => "msg_fell_back",
        }
    }
}

/// Key of [`MAP_SERVICES`]: a VIP and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv6 or IPv4-mapped address, network byte order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// The service's id: stable while the service exists, reused after it is gone.
    pub service_id: u32,
    /// Per-service steering flags ([`service_flags`]).
    pub flags: u32,
    /// Where connects go while weir is down in [`fail_mode::ENDPOINT`] (IPv6 or IPv4-mapped,
    /// network byte order); port 0 = the service has no endpoint: fail open instead.
    pub fallback_addr: [u8; 16],
    /// Fallback port, host byte order.
    pub fallback_port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 28);

/// Value of [`MAP_CONFIG`] slot 0: where steered connections go, and how weir's own sockets are
/// recognised.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteerConfig {
    /// Proxy IPv4 address for `connect4` rewrites, network byte order.
    pub proxy_ip4_be: u32,
    /// Proxy port, host byte order.
    pub proxy_port: u16,
    pub _pad0: u16,
    /// Proxy address for `connect6` rewrites (IPv6 or IPv4-mapped), network byte order.
    pub proxy_ip6: [u8; 16],
    /// `SO_MARK` that weir puts on its own upstream sockets; those are never steered.
    pub own_mark: u32,
    /// 1 once userspace has written this slot; hooks pass everything until then.
    pub enabled: u32,
    /// What connects to a VIP do while weir is down: one of [`fail_mode`].
    pub fail_mode: u32,
    /// 1: put the sockets of steered connections into [`MAP_SOCKS`] (the socket-level
    /// redirect); 0: leave them alone.
    pub socket_redirect: u32,
    /// weir is down when its heartbeat ([`MAP_HEARTBEAT`]) is older than this.
    pub fail_after_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SteerConfig>() == 48);

/// The address a workload dialed, and who dialed it (value of [`MAP_SOCK_ORIG`] and
/// [`MAP_CONN_ORIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv6 or IPv4-mapped address, network byte order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// [`orig_flags`]: what the socket-level redirect does for this connection.
    pub flags: u16,
    /// [`ServiceValue::service_id`] at connect time.
    pub service_id: u32,
    /// cgroup v2 id of the task that called `connect()` (`bpf_get_current_cgroup_id`: the
    /// inode number of its cgroup directory). Recorded at connect, where the caller is the
    /// current task; sock_ops may run in softirq context, where it is not.
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 32);
const _: () = assert!(core::mem::align_of::<OrigDst>() == 8);

/// Bits of [`ServiceValue::flags`].
pub mod service_flags {
    /// The service's connections keep their legs on TCP, whatever the weir's
    /// `socket_redirect` (`[[service]] socket_redirect = false`).
    pub const NO_REDIRECT: u32 = 1;
}

/// Bits of [`OrigDst::flags`]. The redirect is decided per connection, by the weir whose
/// service the workload dialed (at connect), so that weirs with the redirect on and off can
/// steer the same cgroup (whichever weir's sock_ops sees the connection first acts on it).
pub mod orig_flags {
    /// The weir that steered this connect has the socket-level redirect on: enroll the
    /// workload's socket when it is established.
    pub const REDIRECT: u16 = 1;
    /// The workload's socket is in the socket map: enroll weir's side when its handshake
    /// completes (else weir's side stays out: a lone enrolled socket only costs).
    pub const ENROLLED: u16 = 2;
}

/// Key of [`MAP_CONN_ORIG`]: one TCP connection, named as the proxy's accepted socket sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The workload's address (the proxy's peer), IPv6 or IPv4-mapped, network byte order.
    pub peer_addr: [u8; 16],
    /// The proxy's address, IPv6 or IPv4-mapped, network byte order.
    pub local_addr: [u8; 16],
    /// The workload's port, host byte order.
    pub peer_port: u16,
    /// The proxy's port, host byte order.
    pub local_port: u16,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 36);

/// An IPv4 address (network-order `u32` as the kernel hands it over) as IPv4-mapped IPv6 bytes.
#[inline(always)]
pub fn v4_mapped(ip4_be: u32) -> [u8; 16] {
    let o = ip4_be.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]]
}

/// IPv6 address words (each network order, as in `bpf_sock_addr.user_ip6`) as bytes.
#[inline(always)]
pub fn v6_bytes(words: [u32; 4]) -> [u8; 16] {
    let a = words[0].to_ne_bytes();
    let b = words[1].to_ne_bytes();
    let c = words[2].to_ne_bytes();
    let d = words[3].to_ne_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

/// The inverse of [`v6_bytes`].
#[inline(always)]
pub fn v6_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// A port as it sits in `bpf_sock_addr.user_port` (network order in the low 16 bits) in host
/// byte order.
#[inline(always)]
pub fn port_from_user(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

/// A host-order port in the form `bpf_sock_addr.user_port` wants.
#[inline(always)]
pub fn port_to_user(port: u16) -> u32 {
    port.to_be() as u32
}

/// `bpf_sock_ops.remote_port` in host byte order. The kernel documents the field as network
/// byte order; on little-endian machines it also shifts the 16-bit port into the upper half.
/// Both layouts are accepted (a port is never 0, so the empty half tells which one it is).
#[inline(always)]
pub fn port_from_sock_ops_remote(remote_port: u32) -> u16 {
    let be = if remote_port & 0xffff == 0 { remote_port >> 16 } else { remote_port };
    u16::from_be(be as u16)
}

/// What a connect hook does with one `connect()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// Leave the connect alone.
    Pass(Counter),
    /// Rewrite the destination to the proxy and remember [`OrigDst`] for this socket.
    Redirect(OrigDst),
    /// weir is down and fails closed: rewrite to the proxy address (nothing listens there, so
    /// the connect is refused at once) without recording anything.
    Refuse,
    /// weir is down: rewrite straight to this endpoint (address bytes, host-order port).
    Direct([u8; 16], u16),
}

/// Whether weir is alive: its last heartbeat is younger than `fail_after_ns`. A heartbeat in
/// the future (clock read on another CPU a moment later) counts as alive.
#[inline(always)]
pub fn weir_alive(now_ns: u64, heartbeat_ns: u64, fail_after_ns: u64) -> bool {
    now_ns.saturating_sub(heartbeat_ns) <= fail_after_ns
}

/// The steering decision for one `connect()`: pure, so it is tested on the host.
///
/// `config` is `None` until userspace has configured steering; `sock_mark` is the socket's
/// `SO_MARK`; `service` is the lookup result for the dialed VIP:port; `alive` says whether
/// weir's heartbeat is fresh ([`weir_alive`]); `cgroup_id` is the caller's cgroup, recorded
/// with a redirect.
#[inline(always)]
pub fn connect_verdict(
    config: Option<&SteerConfig>,
    sock_mark: u32,
    dialed: &ServiceKey,
    service: Option<&ServiceValue>,
    alive: bool,
    cgroup_id: u64,
) -> ConnectVerdict {
    let Some(config) = config else {
        return ConnectVerdict::Pass(Counter::Passed);
    };
    if config.enabled == 0 {
        return ConnectVerdict::Pass(Counter::Passed);
    }
    if config.own_mark != 0 && sock_mark == config.own_mark {
        return ConnectVerdict::Pass(Counter::OwnSocket);
    }
    let Some(service) = service else {
        return ConnectVerdict::Pass(Counter::Passed);
    };
    if alive {
        return ConnectVerdict::Redirect(OrigDst {
            addr: dialed.addr,
            port: dialed.port,
            flags: if config.socket_redirect != 0 && service.flags & service_flags::NO_REDIRECT == 0 {
                orig_flags::REDIRECT
            } else {
                0
            },
            service_id: service.service_id,
            cgroup_id,
        });
    }
    match config.fail_mode {
        fail_mode::CLOSED => ConnectVerdict::Refuse,
        fail_mode::ENDPOINT if service.fallback_port != 0 => {
            ConnectVerdict::Direct(service.fallback_addr, service.fallback_port)
        }
        _ => ConnectVerdict::Pass(Counter::FailOpen),
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type below is #[repr(C)], Copy, has no padding that is not an explicit
    // field (sizes are asserted above), and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SteerConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SteerConfig {
        SteerConfig {
            proxy_ip4_be: u32::from_ne_bytes([127, 0, 0, 1]),
            proxy_port: 15001,
            _pad0: 0,
            proxy_ip6: v4_mapped(u32::from_ne_bytes([127, 0, 0, 1])),
            own_mark: 0x5745,
            enabled: 1,
            fail_mode: fail_mode::OPEN,
            socket_redirect: 1,
            fail_after_ns: 2_000_000_000,
        }
    }

    fn svc(id: u32) -> ServiceValue {
        ServiceValue {
            service_id: id,
            flags: 0,
            fallback_addr: v4_mapped(u32::from_ne_bytes([127, 0, 0, 1])),
            fallback_port: 18081,
            _pad: 0,
        }
    }

    fn vip() -> ServiceKey {
        ServiceKey { addr: v4_mapped(u32::from_ne_bytes([127, 10, 0, 1])), port: 80, _pad: 0 }
    }

    #[test]
    fn v4_mapped_matches_std() {
        let ip = u32::from_ne_bytes([127, 10, 0, 1]);
        extern crate std;
        let expect = std::net::Ipv4Addr::new(127, 10, 0, 1).to_ipv6_mapped().octets();
        assert_eq!(v4_mapped(ip), expect);
    }

    #[test]
    fn v6_words_round_trip() {
        let b: [u8; 16] = [0x20, 1, 0xd, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(v6_bytes(v6_words(b)), b);
    }

    #[test]
    fn ports_convert_both_ways() {
        // The kernel stores 80 as bytes 0x00 0x50 in the low half of a u32.
        let user = u32::from(u16::from_ne_bytes([0x00, 0x50]));
        assert_eq!(port_from_user(user), 80);
        assert_eq!(port_to_user(80), user);
    }

    #[test]
    fn sock_ops_remote_port_in_either_layout() {
        let be = u32::from(u16::from_ne_bytes([0x3a, 0x99])); // 15001
        assert_eq!(port_from_sock_ops_remote(be), 15001);
        assert_eq!(port_from_sock_ops_remote(be << 16), 15001);
    }

    #[test]
    fn known_vip_is_redirected_with_its_origin() {
        match connect_verdict(Some(&config()), 0, &vip(), Some(&svc(7)), true, 42) {
            ConnectVerdict::Redirect(orig) => {
                assert_eq!(orig.addr, vip().addr);
                assert_eq!(orig.port, 80);
                assert_eq!(orig.service_id, 7);
                assert_eq!(orig.flags, orig_flags::REDIRECT, "this weir has the socket-level redirect on");
                assert_eq!(orig.cgroup_id, 42, "the caller's cgroup travels with the redirect");
            }
            other => panic!("expected a redirect, got {other:?}"),
        }
        let off = SteerConfig { socket_redirect: 0, ..config() };
        match connect_verdict(Some(&off), 0, &vip(), Some(&svc(7)), true, 42) {
            ConnectVerdict::Redirect(orig) => assert_eq!(orig.flags, 0, "redirect off: the connection stays on TCP"),
            other => panic!("expected a redirect, got {other:?}"),
        }
        let tcp_only = ServiceValue { flags: service_flags::NO_REDIRECT, ..svc(7) };
        match connect_verdict(Some(&config()), 0, &vip(), Some(&tcp_only), true, 42) {
            ConnectVerdict::Redirect(orig) => {
                assert_eq!(orig.flags, 0, "a service that opted out stays on TCP");
                assert_eq!(orig.service_id, 7, "and is steered all the same");
            }
            other => panic!("expected a redirect, got {other:?}"),
        }
    }

    #[test]
    fn the_abi_changed_names_with_its_layout() {
        for legacy in LEGACY_MAPS {
            assert_ne!(legacy, MAP_SOCK_ORIG);
            assert_ne!(legacy, MAP_CONN_ORIG);
        }
        // Kernel object names are at most 15 bytes (BPF_OBJ_NAME_LEN 16 with the NUL).
        assert!(MAP_SOCK_ORIG.len() <= 15 && MAP_CONN_ORIG.len() <= 15);
    }

    #[test]
    fn unknown_destination_passes() {
        assert_eq!(connect_verdict(Some(&config()), 0, &vip(), None, true, 42), ConnectVerdict::Pass(Counter::Passed));
    }

    #[test]
    fn weirs_own_sockets_are_never_steered() {
        assert_eq!(
            connect_verdict(Some(&config()), 0x5745, &vip(), Some(&svc(1)), true, 42),
            ConnectVerdict::Pass(Counter::OwnSocket)
        );
        // Also while weir is down: its own sockets are never touched.
        let mut closed = config();
        closed.fail_mode = fail_mode::CLOSED;
        assert_eq!(
            connect_verdict(Some(&closed), 0x5745, &vip(), Some(&svc(1)), false, 42),
            ConnectVerdict::Pass(Counter::OwnSocket)
        );
    }

    #[test]
    fn nothing_is_steered_before_userspace_configures() {
        assert_eq!(connect_verdict(None, 0, &vip(), Some(&svc(1)), true, 42), ConnectVerdict::Pass(Counter::Passed));
        let mut off = config();
        off.enabled = 0;
        assert_eq!(
            connect_verdict(Some(&off), 0, &vip(), Some(&svc(1)), true, 42),
            ConnectVerdict::Pass(Counter::Passed)
        );
    }

    #[test]
    fn heartbeat_age_decides_liveness() {
        assert!(weir_alive(10_000, 9_000, 2_000));
        assert!(weir_alive(10_000, 8_000, 2_000));
        assert!(!weir_alive(10_000, 7_999, 2_000));
        assert!(weir_alive(10_000, 11_000, 2_000), "a heartbeat from a moment later is alive");
        assert!(!weir_alive(10_000, 0, 2_000), "never written: down");
    }

    #[test]
    fn fail_modes_while_weir_is_down() {
        let mut c = config();
        assert_eq!(
            connect_verdict(Some(&c), 0, &vip(), Some(&svc(1)), false, 42),
            ConnectVerdict::Pass(Counter::FailOpen)
        );
        c.fail_mode = fail_mode::CLOSED;
        assert_eq!(connect_verdict(Some(&c), 0, &vip(), Some(&svc(1)), false, 42), ConnectVerdict::Refuse);
        c.fail_mode = fail_mode::ENDPOINT;
        let s = svc(1);
        assert_eq!(
            connect_verdict(Some(&c), 0, &vip(), Some(&s), false, 42),
            ConnectVerdict::Direct(s.fallback_addr, 18081)
        );
        // A service without endpoints has nowhere to go: open.
        let mut empty = svc(1);
        empty.fallback_port = 0;
        assert_eq!(
            connect_verdict(Some(&c), 0, &vip(), Some(&empty), false, 42),
            ConnectVerdict::Pass(Counter::FailOpen)
        );
        // Non-VIP destinations are untouched whatever the mode.
        assert_eq!(connect_verdict(Some(&c), 0, &vip(), None, false, 42), ConnectVerdict::Pass(Counter::Passed));
    }
}
