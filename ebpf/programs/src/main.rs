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
        bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr, sk_action::SK_PASS},
        helpers::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_get_socket_cookie, bpf_ktime_get_ns},
        macros::{cgroup_sock_addr, map, sk_reuseport, sock_ops},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, ReusePortSockArray},
        programs::{SkReuseportContext, SockAddrContext, SockOpsContext},
    };
    use weir_ebpf_common::{
        COUNTER_SLOTS, ConnKey, ConnectVerdict, Counter, MAX_CPUS, MAX_PENDING_CONNS, MAX_SERVICES, OrigDst,
        ServiceKey, ServiceValue, SteerConfig, connect_verdict, port_from_sock_ops_remote, port_from_user,
        port_to_user, v4_mapped, v6_bytes, v6_words, weir_alive,
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

    #[sock_ops]
    pub fn steer_sockops(ctx: SockOpsContext) -> u32 {
        // SAFETY: read of the sock_ops context.
        if unsafe { read_volatile(&(*ctx.ops).op) } != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
            return SOCK_OPS_OK;
        }
        // SAFETY: bpf_get_socket_cookie accepts the sock_ops context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the value is copied out before the entry is deleted.
        let Some(orig) = (unsafe { SOCK_ORIG.get(&cookie) }).copied() else {
            return SOCK_OPS_OK;
        };
        let _ = SOCK_ORIG.remove(&cookie);
        // The workload's side of the connection: local = workload, remote = proxy. Every
        // context field is read with a volatile load at a constant offset: the verifier
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
        let (peer_addr, local_addr) = match family {
            AF_INET => (v4_mapped(local4), v4_mapped(remote4)),
            AF_INET6 => (v6_bytes(local6), v6_bytes(remote6)),
            _ => {
                count(Counter::RecordFailed);
                return SOCK_OPS_OK;
            }
        };
        let key = ConnKey {
            peer_addr,
            local_addr,
            peer_port: local_port as u16,
            local_port: port_from_sock_ops_remote(remote_port),
        };
        if CONN_ORIG.insert(&key, &orig, 0).is_err() {
            count(Counter::MapError);
        } else {
            count(Counter::Recorded);
        }
        SOCK_OPS_OK
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
