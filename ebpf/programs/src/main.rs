//! weir's kernel programs. Entry points only: each gathers its inputs, asks a pure verdict
//! function in `weir-ebpf-common`, and applies the answer. Must not: hold policy of its own,
//! or fail closed by accident (every error path returns the named `ALLOW`/`SOCK_OPS_OK`).
//!
//! - `steer_connect4` / `steer_connect6` (`cgroup/connect4|6`): a connect to a service VIP is
//!   rewritten to the local proxy, and the dialed address is remembered by socket cookie with
//!   the caller's cgroup id (who dialed: the workload).
//! - `steer_sockops` (`sockops`): when a steered connection is established, its four-tuple is
//!   recorded with the dialed address, for the proxy to look up (and delete) on accept.
//! - `steer_reuseport` (`sk_reuseport`): a new connection to the proxy goes to the listener of
//!   the worker pinned to the CPU that handles it, so the flow stays on one core.
//! - The socket-level redirect: `steer_sockops` also puts both ends of a steered connection
//!   into `WEIR_SOCKS` (the workload's socket when it is established, weir's accepted socket when
//!   the handshake completes on weir's side: the same program is attached to weir's own
//!   cgroup); `steer_msg` (`sk_msg`, attached to that map) moves what one of them sends straight
//!   into the other's receive queue, or lets it take the TCP path (`redirect::msg_step`);
//!   `steer_skb` (a no-op stream verdict) is attached beside it because kernels from 6.18.14 on
//!   can lose the wake-up of a socket enrolled without one.
//! - The same for the upstream leg when the endpoint is on this node (loopback, a local pod):
//!   when weir's socket named in `WEIR_UP_COOKIES` is established, `steer_sockops` remembers
//!   the endpoint's side in `WEIR_UP_PENDING`; the endpoint's accepted socket is enrolled when
//!   its handshake completes, where this program runs for the endpoint's cgroup, and the entry
//!   says so. weir enrolls its own socket after `connect()` only then.
//!
//! While weir is down (its heartbeat is stale), connects to a VIP follow the configured fail
//! mode instead of being redirected to a proxy that is not there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use core::ptr::{read_volatile, write_volatile};

    use aya_ebpf::{
        EbpfContext,
        bindings::{
            BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
            bpf_sock_addr, sk_action::SK_PASS,
        },
        helpers::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_get_socket_cookie, bpf_ktime_get_ns},
        macros::{cgroup_sock_addr, map, sk_msg, sk_reuseport, sock_ops, stream_verdict},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, ReusePortSockArray, SockHash},
        programs::{SkBuffContext, SkMsgContext, SkReuseportContext, SockAddrContext, SockOpsContext},
    };
    use weir_ebpf_common::{
        COUNTER_SLOTS, ConnKey, ConnectVerdict, Counter, MAX_CPUS, MAX_PENDING_CONNS, MAX_REDIRECT_SOCKS, MAX_SERVICES,
        MsgStep, OrigDst, PairState, ServiceKey, ServiceValue, Side, SockKey, SteerConfig, connect_verdict, msg_step,
        orig_flags, port_from_sock_ops_remote, port_from_user, port_to_user, redirect::upstream, side_of, v4_mapped,
        v6_bytes, v6_words, weir_alive,
    };

    /// cgroup/connect*: let the connect proceed (rewritten or not). Returning 0 would fail the
    /// connect with EPERM; weir never does that on an error of its own: it fails open.
    const ALLOW: i32 = 1;
    /// sockops: the return value is ignored for the callbacks weir uses.
    const SOCK_OPS_OK: u32 = 0;
    const AF_INET: u32 = 2;
    const AF_INET6: u32 = 10;

    #[map(name = "WEIR_SERVICES")]
    static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

    #[map(name = "WEIR_SOCK_ORIG2")]
    static SOCK_ORIG: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(MAX_PENDING_CONNS, 0);

    #[map(name = "WEIR_CONN_ORIG2")]
    static CONN_ORIG: LruHashMap<ConnKey, OrigDst> = LruHashMap::with_max_entries(MAX_PENDING_CONNS, 0);

    #[map(name = "WEIR_CONFIG")]
    static CONFIG: Array<SteerConfig> = Array::with_max_entries(1, 0);

    #[map(name = "WEIR_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

    #[map(name = "WEIR_HEARTBEAT")]
    static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

    #[map(name = "WEIR_LISTENERS")]
    static LISTENERS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_CPUS, 0);

    #[map(name = "WEIR_SOCKS")]
    static SOCKS: SockHash<SockKey> = SockHash::with_max_entries(MAX_REDIRECT_SOCKS, 0);

    #[map(name = "WEIR_SOCK_STATE")]
    static SOCK_STATE: LruHashMap<SockKey, PairState> = LruHashMap::with_max_entries(MAX_REDIRECT_SOCKS / 2, 0);

    #[map(name = "WEIR_UP_COOKIES")]
    static UP_COOKIES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_PENDING_CONNS, 0);

    #[map(name = "WEIR_UP_PENDING")]
    static UP_PENDING: LruHashMap<SockKey, u32> = LruHashMap::with_max_entries(MAX_PENDING_CONNS, 0);

    #[inline(always)]
    fn count(counter: Counter) {
        if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            unsafe { *slot += 1 };
        }
    }

    /// Where one connect goes, if anywhere but where it was dialed.
    enum Target {
        /// The proxy (`None`: leave the destination alone).
        Proxy(SteerConfig),
        /// An endpoint directly (weir down, fail mode `endpoint`).
        Endpoint([u8; 16], u16),
    }

    /// Applies the verdict for one connect.
    #[inline(always)]
    fn decide(ctx: &SockAddrContext, dialed: &ServiceKey) -> Option<Target> {
        let sa: *mut bpf_sock_addr = ctx.sock_addr;
        // SAFETY: `sk` is always set for cgroup/connect hooks (PTR_TO_SOCKET).
        let mark = unsafe { read_volatile(&(*read_volatile(&(*sa).__bindgen_anon_1.sk)).mark) };
        let config = CONFIG.get(0);
        // SAFETY: the value is only read; userspace replaces the key atomically.
        let service = unsafe { SERVICES.get(dialed) };
        let alive = match (config, HEARTBEAT.get(0)) {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            (Some(c), Some(hb)) => weir_alive(unsafe { bpf_ktime_get_ns() }, *hb, c.fail_after_ns),
            _ => false,
        };
        // SAFETY: bpf_get_current_cgroup_id has no preconditions; in a connect hook the
        // current task is the caller.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        match connect_verdict(config, mark, dialed, service, alive, cgroup_id) {
            ConnectVerdict::Pass(counter) => {
                count(counter);
                None
            }
            ConnectVerdict::Refuse => {
                count(Counter::FailClosed);
                config.copied().map(Target::Proxy)
            }
            ConnectVerdict::Direct(addr, port) => {
                count(Counter::FailEndpoint);
                Some(Target::Endpoint(addr, port))
            }
            ConnectVerdict::Redirect(orig) => {
                // SAFETY: bpf_get_socket_cookie accepts the sock_addr context.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                if SOCK_ORIG.insert(&cookie, &orig, 0).is_err() {
                    // Without the record the proxy could not route it: leave it alone.
                    count(Counter::MapError);
                    return None;
                }
                count(Counter::Redirected);
                config.copied().map(Target::Proxy)
            }
        }
    }

    #[cgroup_sock_addr(connect4)]
    pub fn steer_connect4(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        // SAFETY: reads of the context the kernel handed us.
        let (ip4, port) = unsafe { (read_volatile(&(*sa).user_ip4), read_volatile(&(*sa).user_port)) };
        let dialed = ServiceKey { addr: v4_mapped(ip4), port: port_from_user(port), _pad: 0 };
        let (ip4, port) = match decide(&ctx, &dialed) {
            None => return ALLOW,
            Some(Target::Proxy(config)) => (config.proxy_ip4_be, config.proxy_port),
            Some(Target::Endpoint(addr, port)) => {
                // A connect4 socket can only go to an IPv4 (or IPv4-mapped) endpoint.
                if addr[..12] != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
                    return ALLOW;
                }
                (u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]), port)
            }
        };
        // SAFETY: connect4 may rewrite user_ip4/user_port (4-byte stores).
        unsafe {
            write_volatile(&mut (*sa).user_ip4, ip4);
            write_volatile(&mut (*sa).user_port, port_to_user(port));
        }
        ALLOW
    }

    #[cgroup_sock_addr(connect6)]
    pub fn steer_connect6(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        // SAFETY: reads of the context the kernel handed us.
        let (ip6, port) = unsafe {
            (
                [
                    read_volatile(&(*sa).user_ip6[0]),
                    read_volatile(&(*sa).user_ip6[1]),
                    read_volatile(&(*sa).user_ip6[2]),
                    read_volatile(&(*sa).user_ip6[3]),
                ],
                read_volatile(&(*sa).user_port),
            )
        };
        let dialed = ServiceKey { addr: v6_bytes(ip6), port: port_from_user(port), _pad: 0 };
        let target = match decide(&ctx, &dialed) {
            None => return ALLOW,
            Some(Target::Proxy(config)) => (config.proxy_ip6, config.proxy_port),
            Some(Target::Endpoint(addr, port)) => (addr, port),
        };
        {
            let words = v6_words(target.0);
            // SAFETY: connect6 may rewrite user_ip6/user_port (4-byte stores).
            unsafe {
                write_volatile(&mut (*sa).user_ip6[0], words[0]);
                write_volatile(&mut (*sa).user_ip6[1], words[1]);
                write_volatile(&mut (*sa).user_ip6[2], words[2]);
                write_volatile(&mut (*sa).user_ip6[3], words[3]);
                write_volatile(&mut (*sa).user_port, port_to_user(target.1));
            }
        }
        ALLOW
    }

    /// The four-tuple of a sock_ops socket as it sees itself: (local address, remote address,
    /// local port, remote port), addresses IPv6 or IPv4-mapped.
    #[inline(always)]
    fn sock_ops_tuple(ctx: &SockOpsContext) -> Option<SockKey> {
        // Every context field is read with a volatile load at a constant offset: the verifier
        // refuses a context pointer the compiler has moved (e.g. to merge two branches).
        let ops = ctx.ops;
        // SAFETY: reads of the sock_ops context the kernel handed us.
        let (family, local4, remote4, local6, remote6, local_port, remote_port) = unsafe {
            (
                read_volatile(&(*ops).family),
                read_volatile(&(*ops).local_ip4),
                read_volatile(&(*ops).remote_ip4),
                [
                    read_volatile(&(*ops).local_ip6[0]),
                    read_volatile(&(*ops).local_ip6[1]),
                    read_volatile(&(*ops).local_ip6[2]),
                    read_volatile(&(*ops).local_ip6[3]),
                ],
                [
                    read_volatile(&(*ops).remote_ip6[0]),
                    read_volatile(&(*ops).remote_ip6[1]),
                    read_volatile(&(*ops).remote_ip6[2]),
                    read_volatile(&(*ops).remote_ip6[3]),
                ],
                read_volatile(&(*ops).local_port),
                read_volatile(&(*ops).remote_port),
            )
        };
        let (local_addr, remote_addr) = match family {
            AF_INET => (v4_mapped(local4), v4_mapped(remote4)),
            AF_INET6 => (v6_bytes(local6), v6_bytes(remote6)),
            _ => return None,
        };
        Some(SockKey {
            local_addr,
            remote_addr,
            local_port: local_port as u16,
            remote_port: port_from_sock_ops_remote(remote_port),
        })
    }

    /// Puts the sock_ops socket into the socket map under its own tuple; whether it went in.
    /// `first`: the connection's other end is not enrolled yet, so whatever a former connection
    /// with the same tuple left in the state map is forgotten (the second end must keep what
    /// the first one's messages recorded).
    #[inline(always)]
    fn enroll(ctx: &SockOpsContext, key: &SockKey, first: bool) -> bool {
        if first {
            let fresh = PairState::default();
            let _ = match side_of(key) {
                Side::Low => SOCK_STATE.insert(key, &fresh, u64::from(BPF_ANY)),
                Side::High => SOCK_STATE.insert(&key.peer(), &fresh, u64::from(BPF_ANY)),
            };
        }
        let mut key = *key;
        // SAFETY: `ops` is the live context the kernel handed us.
        let ops = unsafe { &mut *ctx.ops };
        match SOCKS.update(&mut key, ops, u64::from(BPF_ANY)) {
            Ok(()) => {
                count(Counter::SockEnrolled);
                true
            }
            // Another sockmap user holds the socket (EBUSY), or the map is full.
            Err(_) => {
                count(Counter::SockEnrollFailed);
                false
            }
        }
    }

    #[sock_ops]
    pub fn steer_sockops(ctx: SockOpsContext) -> u32 {
        // SAFETY: read of the sock_ops context.
        let op = unsafe { read_volatile(&(*ctx.ops).op) };
        if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
            // weir's side of a steered connection (this program runs for weir's own cgroup
            // too): the workload recorded it when its side was established, before its final
            // ACK got here. Enrolled before weir accepts it, so before anything is sent; only
            // when the workload's side is in the map (the redirect needs both).
            let Some(me) = sock_ops_tuple(&ctx) else { return SOCK_OPS_OK };
            let conn = ConnKey {
                peer_addr: me.remote_addr,
                local_addr: me.local_addr,
                peer_port: me.remote_port,
                local_port: me.local_port,
            };
            // SAFETY: the flags are copied out of the entry.
            let flags = unsafe { CONN_ORIG.get(&conn) }.map_or(0, |o| o.flags);
            if flags & orig_flags::ENROLLED != 0 {
                enroll(&ctx, &me, false);
            } else if UP_PENDING.get_ptr_mut(&me).is_some() && enroll(&ctx, &me, true) {
                // The endpoint's side of weir's upstream connection: weir enrolls its own side
                // when it finds the entry saying so.
                if UP_PENDING.insert(&me, &upstream::PAIRED, 0).is_err() {
                    count(Counter::MapError);
                }
            }
            return SOCK_OPS_OK;
        }
        if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
            return SOCK_OPS_OK;
        }
        // SAFETY: bpf_get_socket_cookie accepts the sock_ops context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the value is copied out before the entry is deleted.
        let Some(mut orig) = (unsafe { SOCK_ORIG.get(&cookie) }).copied() else {
            remember_upstream(&ctx, cookie);
            return SOCK_OPS_OK;
        };
        let _ = SOCK_ORIG.remove(&cookie);
        // The workload's side of the connection: local = workload, remote = proxy.
        let Some(me) = sock_ops_tuple(&ctx) else {
            count(Counter::RecordFailed);
            return SOCK_OPS_OK;
        };
        let key = ConnKey {
            peer_addr: me.local_addr,
            local_addr: me.remote_addr,
            peer_port: me.local_port,
            local_port: me.remote_port,
        };
        // Enrolled before connect() returns to the workload: before it can send anything. The
        // weir that steered the connect decided whether (`orig_flags::REDIRECT`).
        if orig.flags & orig_flags::REDIRECT != 0 && enroll(&ctx, &me, true) {
            orig.flags |= orig_flags::ENROLLED;
        }
        if CONN_ORIG.insert(&key, &orig, 0).is_err() {
            count(Counter::MapError);
            return SOCK_OPS_OK;
        }
        count(Counter::Recorded);
        SOCK_OPS_OK
    }

    /// weir's own socket to an endpoint on this node (weir named it by `cookie`), just
    /// established: the endpoint's side is remembered, to be enrolled when its handshake
    /// completes. weir's side is not enrolled here: weir does that after `connect()`, once the
    /// endpoint's side is in the map (a lone weir socket would only cost, and taking it out
    /// again could lose bytes it queued).
    #[inline(always)]
    fn remember_upstream(ctx: &SockOpsContext, cookie: u64) {
        if UP_COOKIES.remove(&cookie).is_err() {
            return;
        }
        if CONFIG.get(0).is_none_or(|c| c.socket_redirect == 0) {
            return;
        }
        let Some(me) = sock_ops_tuple(ctx) else { return };
        if UP_PENDING.insert(&me.peer(), &upstream::PENDING, 0).is_err() {
            count(Counter::MapError);
        }
    }

    /// What a socket in `WEIR_SOCKS` sends: into its peer's receive queue when the peer is in
    /// the map too and this direction never took the TCP path; else the TCP path (always
    /// `SK_PASS`: a message is never dropped).
    #[sk_msg]
    pub fn steer_msg(ctx: SkMsgContext) -> u32 {
        let md = ctx.msg;
        // SAFETY: reads of the sk_msg context at constant offsets (see sock_ops_tuple).
        let (family, local4, remote4, local6, remote6, local_port, remote_port, size) = unsafe {
            (
                read_volatile(&(*md).family),
                read_volatile(&(*md).local_ip4),
                read_volatile(&(*md).remote_ip4),
                [
                    read_volatile(&(*md).local_ip6[0]),
                    read_volatile(&(*md).local_ip6[1]),
                    read_volatile(&(*md).local_ip6[2]),
                    read_volatile(&(*md).local_ip6[3]),
                ],
                [
                    read_volatile(&(*md).remote_ip6[0]),
                    read_volatile(&(*md).remote_ip6[1]),
                    read_volatile(&(*md).remote_ip6[2]),
                    read_volatile(&(*md).remote_ip6[3]),
                ],
                read_volatile(&(*md).local_port),
                read_volatile(&(*md).remote_port),
                read_volatile(&(*md).size),
            )
        };
        let (local_addr, remote_addr) = match family {
            AF_INET => (v4_mapped(local4), v4_mapped(remote4)),
            AF_INET6 => (v6_bytes(local6), v6_bytes(remote6)),
            _ => return SK_PASS,
        };
        let me = SockKey {
            local_addr,
            remote_addr,
            local_port: local_port as u16,
            remote_port: port_from_sock_ops_remote(remote_port),
        };
        // One entry for both directions, under the tuple as the connection's low end sees it:
        // one lookup per message.
        let side = side_of(&me);
        let mut peer = me.peer();
        let pair: *const SockKey = match side {
            Side::Low => &me,
            Side::High => &peer,
        };
        // SAFETY: `pair` points at `me` or `peer`, both live; the helpers only read keys.
        let state = SOCK_STATE.get_ptr_mut(unsafe { &*pair });
        // SAFETY: the pointer comes from a map lookup and is valid for this program run.
        let step = msg_step(state.map(|p| unsafe { &*(*p).sent_by(side) }), size);
        let counter = match step {
            MsgStep::Pass(counter) => {
                count(counter);
                return SK_PASS;
            }
            MsgStep::FallBack => Counter::MsgFellBack,
            MsgStep::TryRedirect => Counter::MsgRedirected,
        };
        // The peer not in the map (not enrolled, or gone): TCP, for good.
        let redirected = counter == Counter::MsgRedirected
            && SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS);
        match state {
            // SAFETY: as above; a racing update of the same counters only makes them approximate.
            Some(p) => unsafe { (*p).record(side, redirected, size) },
            // Not made at enrollment (evicted since): a new one.
            None => {
                let mut fresh = PairState::default();
                fresh.record(side, redirected, size);
                // SAFETY: as above.
                let _ = SOCK_STATE.insert(unsafe { &*pair }, &fresh, 0);
            }
        }
        count(match (counter, redirected) {
            (Counter::MsgRedirected, false) => Counter::MsgPassed,
            (c, _) => c,
        });
        SK_PASS
    }

    /// Attached beside `steer_msg` and does nothing: on kernels with the 6.18.14 regression a
    /// socket in a sockmap without a verdict program can miss its receive wake-up. TCP bytes
    /// that reach an enrolled socket go through the socket map's queue in arrival order.
    #[stream_verdict]
    pub fn steer_skb(_ctx: SkBuffContext) -> u32 {
        SK_PASS
    }

    #[sk_reuseport]
    pub fn steer_reuseport(ctx: SkReuseportContext) -> u32 {
        // SAFETY: bpf_get_smp_processor_id has no preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        match LISTENERS.select_reuseport(&ctx, cpu) {
            Ok(()) => count(Counter::AffineAccept),
            // No worker on this CPU: the kernel's hash chooses among the group.
            Err(_) => count(Counter::AffineMiss),
        }
        SK_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects programs that could reach a panic; this is unreachable.
        unsafe { core::hint::unreachable_unchecked() }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs are only meaningful for the bpf target; aya-build compiles them for it.
}
