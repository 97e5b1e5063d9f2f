//! eBPF steering, user side: loads weir's kernel programs (built into this binary), attaches
//! the connect hooks and sock_ops to the configured cgroups, keeps the service map equal to
//! the active snapshot, and gives the proxy its kernel hooks (original destination, listener
//! registration for CPU-affine accept, heartbeat). Must not: make steering decisions (the
//! kernel programs apply `weir_ebpf_common::connect_verdict`).
//!
//! Lifecycle: links and maps are pinned under `[steering] pin_dir/<instance>/`. If weir dies,
//! the links stay and, once the workers' heartbeat is stale, connects follow the fail mode. The
//! next `weir run` finds the pins and swaps its own programs into the existing links with
//! `BPF_LINK_UPDATE` (atomic: steering never stops), and removes pins the new config does not
//! use. A clean exit removes every pin, which detaches everything.
//!
//! The maps that outlive one process (`SHARED_MAPS`: original destinations, the listener
//! array, the kernel counters) are pinned by layout version and reused by the next weir, so a
//! connection half-recorded by one weir's programs is found by the next, and the counters
//! continue. A takeover swaps the links in two steps: before the old weir stops, the new one
//! only puts its programs into the existing links, with the old weir's service table
//! ([`Steering::take_over_links`]); after, it applies its own config
//! ([`Steering::finish_takeover`]). If the new weir fails in between, the old one puts its
//! programs back ([`Steering::reassert`]).

use std::collections::HashMap as StdHashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context as _, anyhow, bail};
use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkReuseport, SockOps};
use serde::Serialize;
use weir_core::config::{Config, FailMode};
use weir_ebpf_common::{
    ConnKey, Counter, MAP_CONFIG, MAP_CONN_ORIG, MAP_COUNTERS, MAP_HEARTBEAT, MAP_LISTENERS, MAP_SERVICES, MAP_SOCKS,
    MAP_UPSTREAM_COOKIES, MAP_UPSTREAM_PENDING, OrigDst, SHARED_MAPS, SHARED_MAPS_ABI, ServiceKey, ServiceValue,
    SockKey, SteerConfig, fail_mode, redirect::upstream, service_flags,
};
use weir_proxy::{OriginalDst, Steered};

use crate::bpf_sys::{self, TypedMap};

mod ids;
mod pins;
use pins::{DEAD_AFTER_FAILS, check_bpffs, check_cgroup_dir, create_pin_root, remove_dead_instances};
pub use pins::{remove_pins, status_from_pins};

/// The kernel programs, compiled by build.rs (aya-build) for bpfel-unknown-none.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-ebpf"));

/// Programs attached to each steered cgroup.
const CGROUP_PROGRAMS: [&str; 3] = ["steer_connect4", "steer_connect6", "steer_sockops"];
const REUSEPORT_PROGRAM: &str = "steer_reuseport";
/// The socket-level redirect's programs, attached to the socket map.
const MSG_PROGRAM: &str = "steer_msg";
const SKB_PROGRAM: &str = "steer_skb";
/// Maps of one process pinned for inspection (`weir steer status` while weir is down,
/// bpftool, the heartbeat of a weir that is gone); the shared ones are pinned as they are made.
const PINNED_MAPS: [&str; 2] = [MAP_SERVICES, MAP_HEARTBEAT];

/// Where a shared map is pinned: by name and layout version (bpffs allows no `.` in names).
fn shared_pin(pin_root: &Path, name: &str) -> PathBuf {
    pin_root.join(format!("map-{name}-abi{SHARED_MAPS_ABI}"))
}

/// A pin of a shared map of another layout version (a weir of another build left it).
fn is_foreign_shared_pin(file_name: &str) -> bool {
    file_name.starts_with("map-")
        && file_name.contains("-abi")
        && !file_name.ends_with(&format!("-abi{SHARED_MAPS_ABI}"))
}

/// One entry of the kernel's service table, as a weir hands it to the one taking it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ServiceEntry {
    /// What workloads dial.
    pub vip: SocketAddr,
    /// The service's index in the config that wrote the entry.
    pub service_id: u32,
    /// Where fail mode `endpoint` sends connects.
    pub fallback: Option<SocketAddr>,
    /// The kernel's per-service flags (`service_flags`; absent from a weir that had none).
    #[serde(default)]
    pub flags: u32,
}

fn socket_addr(addr: [u8; 16], port: u16) -> SocketAddr {
    let ip = Ipv6Addr::from(addr);
    let ip: IpAddr = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    SocketAddr::new(ip, port)
}

impl ServiceEntry {
    fn from_kernel(k: &ServiceKey, v: &ServiceValue) -> ServiceEntry {
        ServiceEntry {
            vip: socket_addr(k.addr, k.port),
            service_id: v.service_id,
            fallback: (v.fallback_port != 0).then(|| socket_addr(v.fallback_addr, v.fallback_port)),
            flags: v.flags,
        }
    }

    fn to_kernel(&self) -> (ServiceKey, ServiceValue) {
        let (fallback_addr, fallback_port) = self.fallback.map_or(([0; 16], 0), |f| (addr16(f.ip()), f.port()));
        (
            service_key(self.vip),
            ServiceValue { service_id: self.service_id, flags: self.flags, fallback_addr, fallback_port, _pad: 0 },
        )
    }
}

/// Loaded steering. Dropping it without [`Steering::detach`] leaves the pinned links in place
/// (that is what a crash does); `detach` removes them.
pub struct Steering {
    ebpf: Ebpf,
    pin_root: PathBuf,
    cgroups: Vec<PathBuf>,
    links: Vec<(PathBuf, PinnedLink)>,
    services: StdHashMap<ServiceKey, ServiceValue>,
    /// Each service's `service_id`, stable while the service exists.
    ids: ids::ServiceIds,
    hooks: Arc<KernelHooks>,
    /// Links taken over from a previous run at start.
    pub taken_over: usize,
    /// The socket-level redirect: on, or off and why.
    redirect: Result<(), String>,
    /// sock_ops on weir's own cgroup (enrolls weir's side of steered connections); not
    /// pinned: weir's sockets end with weir.
    own_link: Option<FdLink>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("cgroups", &self.cgroups)
            .field("pin_root", &self.pin_root)
            .finish_non_exhaustive()
    }
}

/// What `/steering` and `weir steer status` show.
#[derive(Debug, Serialize)]
pub struct SteerStatus {
    /// cgroup directories the programs are attached to.
    pub cgroups: Vec<PathBuf>,
    /// Programs attached to each of them.
    pub programs: Vec<&'static str>,
    /// Pinned links (bpffs paths).
    pub links: Vec<PathBuf>,
    /// Service VIPs in the kernel map.
    pub services: Vec<String>,
    /// Kernel-side counters, summed over CPUs.
    pub counters: StdHashMap<&'static str, u64>,
    /// The socket-level redirect between steered workloads and weir is on.
    pub socket_redirect: bool,
    /// Why it is off (configured off, or what the kernel refused at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_redirect_off: Option<String>,
    /// weir's own cgroup, where sock_ops enrolls weir's side of steered connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_cgroup: Option<PathBuf>,
    /// Upstream connections to an endpoint on this node (its loopback, a local pod) whose two
    /// sides weir put into the socket map.
    pub upstream_paired: u64,
    /// Upstream connections to a loopback endpoint whose side was not enrolled (no weir
    /// program runs for the endpoint's cgroup, or its handshake had not completed when weir's
    /// `connect()` returned): weir left its own side out, and the connection runs over TCP.
    /// Only loopback ones: an endpoint at another address may be on another node, where no
    /// pair can be made.
    pub upstream_unpaired: u64,
}

/// The proxy address steered connections are rewritten to (an unspecified listen address
/// means loopback).
fn proxy_target(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn service_key(vip: SocketAddr) -> ServiceKey {
    ServiceKey { addr: addr16(vip.ip()), port: vip.port(), _pad: 0 }
}

/// The pin directory of the weir instance that owns `listen`.
pub fn pin_root(config: &Config) -> PathBuf {
    let l = config.proxy.listen;
    let ip = l.ip().to_string().replace([':', '.'], "_");
    config.steering.pin_dir.join(format!("listen-{ip}-{}", l.port()))
}

/// A stable short name for a cgroup path (pin file names must not contain `/`).
fn cgroup_tag(cg: &Path) -> String {
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cg.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn map_data<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from weir's eBPF object"))
}

/// A map of weir's object as a [`TypedMap`], its key and value sizes checked against `K`, `V`.
fn map_fd<K: aya::Pod, V: aya::Pod>(ebpf: &Ebpf, name: &str) -> anyhow::Result<TypedMap<K, V>> {
    use aya::maps::Map;
    let map = ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from weir's eBPF object"))?;
    let data = match map {
        Map::LruHashMap(d)
        | Map::HashMap(d)
        | Map::Array(d)
        | Map::ReusePortSockArray(d)
        | Map::PerCpuArray(d)
        | Map::SockHash(d) => d,
        other => bail!("map {name} has unexpected type {other:?}"),
    };
    Ok(TypedMap::new(data.fd().as_fd().try_clone_to_owned()?, name)?)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from weir's eBPF object"))
}

impl Steering {
    /// Loads the programs into the kernel (reusing the shared maps a previous weir pinned) and
    /// fills their maps for `config`, without attaching anything yet (see
    /// [`Steering::attach_links`]). `services`: the service table to start with instead of
    /// `config`'s (that of a weir being taken over, until it has stopped).
    pub fn load(config: &Config, services: Option<&[ServiceEntry]>) -> anyhow::Result<Steering> {
        let steering = &config.steering;
        for cg in &steering.cgroups {
            check_cgroup_dir(cg)?;
        }
        check_bpffs(&steering.pin_dir)?;
        let root = pin_root(config);
        remove_dead_instances(&steering.pin_dir, &root, steering.fail_after * DEAD_AFTER_FAILS);
        create_pin_root(&root)?;
        let mut loader = aya::EbpfLoader::new();
        for name in SHARED_MAPS {
            loader.map_pin_path(name, shared_pin(&root, name));
        }
        let mut ebpf = loader.load(PROGRAMS).context("loading weir's eBPF object")?;
        for name in SHARED_MAPS {
            use std::os::unix::fs::PermissionsExt;
            let path = shared_pin(&root, name);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", path.display()))?;
        }
        let target = proxy_target(config.proxy.listen);
        let (proxy_ip4_be, proxy_ip6) = match target.ip() {
            IpAddr::V4(v4) => (u32::from_ne_bytes(v4.octets()), v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => (v6.to_ipv4_mapped().map_or(0, |v4| u32::from_ne_bytes(v4.octets())), v6.octets()),
        };
        let steer_config = SteerConfig {
            proxy_ip4_be,
            proxy_port: target.port(),
            _pad0: 0,
            proxy_ip6,
            own_mark: steering.own_mark,
            enabled: 1,
            fail_mode: match steering.fail_mode {
                FailMode::Open => fail_mode::OPEN,
                FailMode::Closed => fail_mode::CLOSED,
                FailMode::Endpoint => fail_mode::ENDPOINT,
            },
            socket_redirect: 0,
            fail_after_ns: steering.fail_after.as_nanos() as u64,
        };
        for name in CGROUP_PROGRAMS.into_iter().chain([REUSEPORT_PROGRAM]) {
            match program(&mut ebpf, name)? {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                aya::programs::Program::SkReuseport(p) => p.load(),
                _ => bail!("program {name} has an unexpected type"),
            }
            .with_context(|| format!("loading {name} into the kernel (verifier)"))?;
        }
        // The redirect's programs are attached to the socket map before any socket goes in
        // (the config below switches enrolment on only once they are).
        let own_cgroup = crate::redirect::own_cgroup();
        let redirect = if !steering.socket_redirect {
            Err("[steering] socket_redirect = false".to_string())
        } else {
            crate::redirect::attach_map_programs(&mut ebpf, MSG_PROGRAM, SKB_PROGRAM, MAP_SOCKS)
                .and_then(|()| own_cgroup.as_ref().map(|_| ()).ok_or_else(|| "weir's own cgroup v2 is unknown".into()))
        };
        match &redirect {
            Ok(()) => tracing::info!("socket-level redirect on"),
            Err(why) if !steering.socket_redirect => tracing::info!("socket-level redirect off: {why}"),
            Err(why) => tracing::warn!("socket-level redirect off: {why}"),
        }
        let steer_config = SteerConfig { socket_redirect: u32::from(redirect.is_ok()), ..steer_config };
        Array::<&mut MapData, SteerConfig>::try_from(map_data(&mut ebpf, MAP_CONFIG)?)?
            .set(0, steer_config, 0)
            .context("writing the steering config map")?;
        let reuseport_prog: OwnedFd = {
            let p: &mut SkReuseport = program(&mut ebpf, REUSEPORT_PROGRAM)?.try_into()?;
            p.fd()?.as_fd().try_clone_to_owned()?
        };
        let hooks = Arc::new(KernelHooks {
            conn_orig: map_fd(&ebpf, MAP_CONN_ORIG)?,
            heartbeat: map_fd(&ebpf, MAP_HEARTBEAT)?,
            listeners: map_fd(&ebpf, MAP_LISTENERS)?,
            reuseport_prog: steering.cpu_affinity.then_some(reuseport_prog),
            reuseport_attached: AtomicBool::new(false),
            up_cookies: map_fd(&ebpf, MAP_UPSTREAM_COOKIES)?,
            up_pending: map_fd(&ebpf, MAP_UPSTREAM_PENDING)?,
            redirect_on: AtomicBool::new(redirect.is_ok()),
            socks: map_fd(&ebpf, MAP_SOCKS)?,
            upstream_paired: AtomicU64::new(0),
            upstream_unpaired: AtomicU64::new(0),
        });
        // Alive from the start: steering must not fail over before the first worker tick.
        hooks.heartbeat();
        let mut me = Steering {
            ebpf,
            pin_root: pin_root(config),
            cgroups: steering.cgroups.clone(),
            links: Vec::new(),
            services: StdHashMap::new(),
            ids: ids::ServiceIds::default(),
            hooks,
            taken_over: 0,
            redirect,
            own_link: None,
        };
        if me.redirect.is_ok()
            && let Some(cg) = own_cgroup
        {
            me.attach_own_cgroup(cg);
        }
        match services {
            Some(entries) => me.set_services(entries.iter().map(ServiceEntry::to_kernel).collect())?,
            None => {
                me.sync_services(config)?;
                // The instance directory shows a live heartbeat from now on, so that a weir
                // starting on another address never takes it for one that is gone. (Taking
                // over, the running weir's stays pinned until it has stopped.)
                me.pin_maps(&[MAP_HEARTBEAT])?;
            }
        }
        Ok(me)
    }

    /// Attaches the programs to every configured cgroup, taking over the pinned links of a
    /// previous run atomically where they exist, and pins links and maps. From here on,
    /// connects from those cgroups to a service VIP reach the proxy. Links this process already
    /// holds (taken over from a running weir) are kept; pins the config does not use are
    /// removed, which detaches them once no process holds them.
    ///
    /// New links use attach mode `Single` ("no flags"): cgroup bpf_links always coexist with
    /// other programs on the same cgroup.
    pub fn attach_links(&mut self, _config: &Config) -> anyhow::Result<()> {
        let mut wanted = Vec::new();
        for cg in self.cgroups.clone() {
            let tag = cgroup_tag(&cg);
            for name in CGROUP_PROGRAMS {
                let path = self.pin_root.join(format!("link-{tag}-{name}"));
                wanted.push(path.clone());
                if self.links.iter().any(|(p, _)| *p == path) {
                    continue;
                }
                let link = match PinnedLink::from_pin(&path) {
                    Ok(old) => {
                        // A previous weir's link: swap our program in, atomically.
                        self.update_link(&path, name)?;
                        self.taken_over += 1;
                        old
                    }
                    Err(_) => {
                        let dir = File::open(&cg).with_context(|| format!("opening cgroup {}", cg.display()))?;
                        let fd_link = self
                            .attach_one(name, &dir)
                            .with_context(|| format!("attaching {name} to {}", cg.display()))?;
                        fd_link.pin(&path).with_context(|| format!("pinning {}", path.display()))?
                    }
                };
                self.links.push((path, link));
            }
        }
        // Links of a previous run that this config does not use (a cgroup removed): drop them.
        let (keep, drop): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.links).into_iter().partition(|(p, _)| wanted.contains(p));
        self.links = keep;
        for (path, link) in drop {
            if link.unpin().is_err() {
                let _ = std::fs::remove_file(&path);
            }
        }
        for entry in std::fs::read_dir(&self.pin_root)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name.starts_with("link-") && !wanted.contains(&path)) || is_foreign_shared_pin(&name) {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.pin_maps(&PINNED_MAPS)
    }

    /// Attaches sock_ops to weir's own cgroup (unless it is steered already), so that weir's
    /// side of a steered connection is enrolled when its handshake completes. Without it the
    /// redirect is off.
    fn attach_own_cgroup(&mut self, cg: PathBuf) {
        if self.cgroups.contains(&cg) {
            return;
        }
        let attached = File::open(&cg)
            .map_err(anyhow::Error::from)
            .and_then(|dir| self.attach_one("steer_sockops", &dir))
            .with_context(|| format!("attaching steer_sockops to weir's own cgroup {}", cg.display()));
        match attached {
            Ok(link) => self.own_link = Some(link),
            Err(e) => {
                tracing::warn!("socket-level redirect off: {e:#}");
                self.redirect = Err(format!("{e:#}"));
                self.hooks.redirect_on.store(false, Ordering::Relaxed);
                let config = self.ebpf.map_mut(MAP_CONFIG).map(Array::<&mut MapData, SteerConfig>::try_from);
                if let Some(Ok(mut config)) = config
                    && let Ok(mut c) = config.get(&0, 0)
                {
                    c.socket_redirect = 0;
                    let _ = config.set(0, c, 0);
                }
            }
        }
    }

    /// Pins this weir's own maps `names` for inspection (in place of what was pinned there).
    fn pin_maps(&self, names: &[&str]) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for name in names {
            let path = self.pin_root.join(format!("map-{name}"));
            let _ = std::fs::remove_file(&path);
            if let Some(m) = self.ebpf.map(name) {
                let pinned = match m {
                    aya::maps::Map::HashMap(d) | aya::maps::Map::Array(d) | aya::maps::Map::PerCpuArray(d) => {
                        d.pin(&path)
                    }
                    _ => continue,
                };
                pinned.with_context(|| format!("pinning map {}", path.display()))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        Ok(())
    }

    /// A takeover, before the old weir stops: puts this weir's programs into every link the
    /// old weir pinned (atomically, one link at a time), and nothing else. The service table
    /// is still the old weir's ([`Steering::load`] with its entries), so every connect is
    /// steered as the old weir would, whichever weir accepts it. Returns the links taken over.
    pub fn take_over_links(&mut self) -> anyhow::Result<usize> {
        // Fresh, so that steering cannot fail over between now and the first worker tick.
        self.hooks.heartbeat();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.pin_root)?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.starts_with("link-") {
                continue;
            }
            if let Some(name) = CGROUP_PROGRAMS.into_iter().find(|n| file.ends_with(&format!("-{n}"))) {
                found.push((entry.path(), name));
            }
        }
        found.sort();
        for (path, name) in found {
            let link = PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            self.update_link(&path, name)?;
            self.taken_over += 1;
            self.links.push((path, link));
        }
        Ok(self.taken_over)
    }

    /// A takeover, once the old weir has stopped: this weir's own service table (a service the
    /// old weir steered keeps its id, so only the entries that changed are written), links for
    /// the cgroups the old weir did not steer, and the pins of the cgroups this config dropped
    /// removed.
    pub fn finish_takeover(&mut self, config: &Config) -> anyhow::Result<()> {
        let running = &self.services;
        self.ids.seed(config.services.iter().filter_map(|s| {
            s.vips().find_map(|vip| running.get(&service_key(vip))).map(|v| (s.name.as_str(), v.service_id))
        }));
        self.sync_services(config)?;
        self.attach_links(config)
    }

    /// A takeover that failed after the new weir put its programs into this weir's links:
    /// puts this weir's programs back, link by link.
    pub fn reassert(&mut self) -> anyhow::Result<()> {
        let links: Vec<PathBuf> = self.links.iter().map(|(p, _)| p.clone()).collect();
        for path in links {
            let name = CGROUP_PROGRAMS
                .into_iter()
                .find(|n| path.to_string_lossy().ends_with(&format!("-{n}")))
                .ok_or_else(|| anyhow!("{} is not a link weir pins", path.display()))?;
            self.update_link(&path, name)?;
        }
        Ok(())
    }

    /// Lets go of steering without detaching anything: a weir that took this one over owns
    /// the links and pins now. (Dropping this weir's handles leaves the pins in place.)
    pub fn forget(self) {}

    /// The kernel's service table, for a weir taking this one over.
    pub fn exported_services(&self) -> Vec<ServiceEntry> {
        let mut out: Vec<ServiceEntry> = self.services.iter().map(|(k, v)| ServiceEntry::from_kernel(k, v)).collect();
        out.sort_by_key(|e| (e.service_id, e.vip));
        out
    }

    fn update_link(&mut self, path: &Path, program_name: &str) -> anyhow::Result<()> {
        let prog_fd = self.program_fd(program_name)?;
        let link_fd = bpf_sys::obj_get(path).with_context(|| format!("opening {}", path.display()))?;
        bpf_sys::link_update(link_fd.as_raw_fd(), prog_fd.as_raw_fd())
            .with_context(|| format!("taking over {}", path.display()))
    }

    fn program_fd(&mut self, name: &str) -> anyhow::Result<OwnedFd> {
        Ok(match program(&mut self.ebpf, name)? {
            aya::programs::Program::CgroupSockAddr(p) => p.fd()?.as_fd().try_clone_to_owned()?,
            aya::programs::Program::SockOps(p) => p.fd()?.as_fd().try_clone_to_owned()?,
            _ => bail!("program {name} has an unexpected type"),
        })
    }

    fn attach_one(&mut self, name: &str, dir: &File) -> anyhow::Result<FdLink> {
        match program(&mut self.ebpf, name)? {
            aya::programs::Program::CgroupSockAddr(p) => {
                let p: &mut CgroupSockAddr = p;
                let id = p.attach(dir, CgroupAttachMode::Single)?;
                Ok(FdLink::try_from(p.take_link(id)?)?)
            }
            aya::programs::Program::SockOps(p) => {
                let p: &mut SockOps = p;
                let id = p.attach(dir, CgroupAttachMode::Single)?;
                Ok(FdLink::try_from(p.take_link(id)?)?)
            }
            _ => bail!("program {name} has an unexpected type"),
        }
    }

    /// Removes every pin of this instance, which detaches the links: connects go where they
    /// were dialed from now on. Called on a clean exit.
    pub fn detach(mut self) {
        for (path, link) in self.links.drain(..) {
            match link.unpin() {
                Ok(fd_link) => drop(fd_link),
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        remove_pins(&self.pin_root);
    }

    /// Makes the kernel's service map equal to `config`'s services: adds and updates entries
    /// first, then removes the ones that are gone; entries that did not change are not
    /// written (a service keeps its id while it exists). Nothing is detached.
    pub fn sync_services(&mut self, config: &Config) -> anyhow::Result<()> {
        let ids = self.ids.assign(config.services.iter().map(|s| s.name.as_str()));
        let mut want = StdHashMap::with_capacity(config.services.len());
        for (id, s) in ids.into_iter().zip(&config.services) {
            let (fallback_addr, fallback_port) =
                s.endpoints.first().map_or(([0; 16], 0), |e| (addr16(e.addr.ip()), e.addr.port()));
            let flags = if s.socket_redirect { 0 } else { service_flags::NO_REDIRECT };
            for vip in s.vips() {
                want.insert(
                    service_key(vip),
                    ServiceValue { service_id: id, flags, fallback_addr, fallback_port, _pad: 0 },
                );
            }
        }
        self.set_services(want)
    }

    fn set_services(&mut self, want: StdHashMap<ServiceKey, ServiceValue>) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(map_data(&mut self.ebpf, MAP_SERVICES)?)?;
        for (k, v) in &want {
            if self.services.get(k) != Some(v) {
                map.insert(k, v, 0).context("updating the service map")?;
            }
        }
        for k in self.services.keys() {
            if !want.contains_key(k) {
                map.remove(k).context("removing a service from the service map")?;
            }
        }
        self.services = want;
        Ok(())
    }

    /// The kernel hooks for the proxy's workers.
    pub fn hooks(&self) -> Arc<dyn OriginalDst> {
        self.hooks.clone()
    }

    /// What is attached where, and the kernel-side counters.
    pub fn status(&self) -> SteerStatus {
        let counters = self
            .ebpf
            .map(MAP_COUNTERS)
            .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).ok())
            .map(|arr| read_counters(&arr))
            .unwrap_or_default();
        let mut services: Vec<String> = self.services.keys().map(|k| socket_addr(k.addr, k.port).to_string()).collect();
        services.sort();
        let mut programs = CGROUP_PROGRAMS.to_vec();
        if self.redirect.is_ok() {
            programs.extend([MSG_PROGRAM, SKB_PROGRAM]);
        }
        SteerStatus {
            cgroups: self.cgroups.clone(),
            programs,
            links: self.links.iter().map(|(p, _)| p.clone()).collect(),
            services,
            counters,
            socket_redirect: self.redirect.is_ok(),
            socket_redirect_off: self.redirect.clone().err(),
            own_cgroup: self.own_link.as_ref().and(crate::redirect::own_cgroup()),
            upstream_paired: self.hooks.upstream_paired.load(Ordering::Relaxed),
            upstream_unpaired: self.hooks.upstream_unpaired.load(Ordering::Relaxed),
        }
    }
}

fn read_counters(arr: &PerCpuArray<&MapData, u64>) -> StdHashMap<&'static str, u64> {
    Counter::ALL.iter().map(|c| (c.name(), arr.get(&(*c as u32), 0).map(|v| v.iter().sum()).unwrap_or(0))).collect()
}

/// The proxy's view of the kernel: original destinations, listener registration and the
/// heartbeat. Raw map syscalls on dup'ed fds, so workers need no lock and no aya object.
#[derive(Debug)]
struct KernelHooks {
    conn_orig: TypedMap<ConnKey, OrigDst>,
    heartbeat: TypedMap<u32, u64>,
    listeners: TypedMap<u32, u32>,
    reuseport_prog: Option<OwnedFd>,
    reuseport_attached: AtomicBool,
    /// The socket-level redirect is on (cleared if it is turned off after the start).
    redirect_on: AtomicBool,
    /// Cookies of weir's upstream sockets, before they connect.
    up_cookies: TypedMap<u64, u32>,
    /// Endpoint sides of upstream connections, and whether they are enrolled (`WEIR_UP_PENDING`).
    up_pending: TypedMap<SockKey, u32>,
    /// The socket map (a socket goes in by its descriptor).
    socks: TypedMap<SockKey, u32>,
    /// Upstream connections weir paired, and those it could not.
    upstream_paired: AtomicU64,
    upstream_unpaired: AtomicU64,
}

impl OriginalDst for KernelHooks {
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<Steered> {
        let key = ConnKey {
            peer_addr: addr16(peer.ip()),
            local_addr: addr16(local.ip()),
            peer_port: peer.port(),
            local_port: local.port(),
        };
        let value = self.conn_orig.lookup_and_delete(&key).ok()?;
        let ip = Ipv6Addr::from(value.addr);
        let ip: IpAddr = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        Some(Steered { dialed: SocketAddr::new(ip, value.port), cgroup_id: value.cgroup_id })
    }

    fn register_listener(&self, worker: usize, cpu: Option<usize>, fd: RawFd) {
        let Some(prog) = &self.reuseport_prog else { return };
        let Some(cpu) = cpu else { return };
        match self.listeners.update(&(cpu as u32), &(fd as u32)) {
            Ok(()) => {}
            // A socket can be in one listener map only, and the map is shared: a socket handed
            // over by a weir this one took over is registered already.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::debug!(worker, cpu, "listener already registered (inherited)");
            }
            Err(e) => {
                tracing::warn!(worker, cpu, "CPU-affine accept unavailable: listener not registered: {e}");
                return;
            }
        }
        // The program belongs to the whole SO_REUSEPORT group: attach it once.
        if !self.reuseport_attached.swap(true, Ordering::SeqCst) {
            // SAFETY: `fd` is the worker's live listening socket for the duration of this call.
            let sock = unsafe { BorrowedFd::borrow_raw(fd) };
            let prog_fd = prog.as_raw_fd();
            // SAFETY: setsockopt with a correctly sized int option value.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_REUSEPORT_EBPF,
                    (&prog_fd as *const RawFd).cast(),
                    std::mem::size_of::<RawFd>() as u32,
                )
            };
            if rc != 0 {
                tracing::warn!("CPU-affine accept unavailable: {}", std::io::Error::last_os_error());
            }
        }
    }

    fn heartbeat(&self) {
        let _ = self.heartbeat.update(&0, &bpf_sys::monotonic_ns());
    }

    fn upstream_connecting(&self, fd: RawFd) -> bool {
        if !self.redirect_on.load(Ordering::Relaxed) {
            return false;
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: SO_COOKIE writes one u64 into `cookie`, `len` says so.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_COOKIE, (&mut cookie as *mut u64).cast(), &mut len)
        };
        rc == 0 && self.up_cookies.update(&cookie, &1).is_ok()
    }

    fn upstream_connected(&self, fd: RawFd, local: SocketAddr, peer: SocketAddr, last: bool) -> bool {
        let endpoint_side = SockKey {
            local_addr: addr16(peer.ip()),
            remote_addr: addr16(local.ip()),
            local_port: peer.port(),
            remote_port: local.port(),
        };
        // The endpoint's handshake may complete a moment after weir's connect() returned (its
        // final ACK still in the receiving CPU's backlog): a first look leaves a pending entry
        // in place, for one more look later.
        if !last && self.up_pending.lookup(&endpoint_side).is_ok_and(|v| v == upstream::PENDING) {
            return false;
        }
        let paired = match self.up_pending.lookup_and_delete(&endpoint_side) {
            // Not weir's to pair (the redirect is off, or the kernel kept no entry).
            Err(_) => return true,
            Ok(upstream::PAIRED) => {
                // The connection's redirect state was made fresh when the endpoint's side was
                // enrolled; it may hold what the endpoint sent since (a greeting that took TCP).
                let me = endpoint_side.peer();
                match self.socks.update(&me, &(fd as u32)) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(endpoint = %peer, "upstream socket not enrolled: {e}");
                        false
                    }
                }
            }
            // The endpoint's side is not in the map (taking the entry, weir also keeps it out
            // if its handshake completes only now).
            Ok(_) => false,
        };
        if paired {
            self.upstream_paired.fetch_add(1, Ordering::Relaxed);
        } else if peer.ip().to_canonical().is_loopback() && self.upstream_unpaired.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::info!(
                endpoint = %peer,
                "upstream leg to a loopback endpoint runs over TCP: its socket was not enrolled (a weir sock_ops program must run for the endpoint's cgroup: add it, or a parent, to [steering] cgroups)"
            );
        }
        true
    }
}
