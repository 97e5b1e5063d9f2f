//! Helpers for the root tier: running the `weir-probe` client inside a cgroup, reading what a
//! weir left pinned in bpffs (its heartbeat, `weir steer status` from the pins), a network
//! namespace standing for a pod on this node, and the cgroup handles of weir-testkit (whose
//! cgroup v2 root comes from /proc/self/mountinfo). A root test that cannot do what it tests
//! fails loudly.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use weir_testkit::cgroup::{Cgroup, Cgroup2Mount, cgroup2_root};

/// Panics unless running as root with cgroup v2 mounted: eBPF and cgroup tests must not pass
/// by skipping.
pub fn require_root() {
    if !weir_testkit::proc::is_root() {
        panic!(
            "this test needs root (eBPF, cgroups, netns); run the suite with `sudo -E cargo xtask test`, \
             or `cargo xtask test --unprivileged` for the tests that do not"
        );
    }
    let root = cgroup2_root().unwrap_or_else(|e| panic!("the steering tests cannot run here: {e}"));
    assert!(root.join("cgroup.procs").exists(), "{} is not a cgroup v2 root (no cgroup.procs)", root.display());
}

/// What `weir-probe` reported.
#[derive(Debug)]
pub struct ProbeReport {
    /// The JSON it printed.
    pub json: serde_json::Value,
    /// Its stderr.
    pub stderr: String,
}

impl ProbeReport {
    /// A numeric field.
    pub fn num(&self, key: &str) -> u64 {
        self.json[key].as_u64().unwrap_or(0)
    }

    /// Responses counted per endpoint name.
    pub fn by_endpoint(&self, name: &str) -> u64 {
        self.json["endpoints"][name].as_u64().unwrap_or(0)
    }
}

/// Runs the probe binary `bin` (optionally inside `cgroup`) with `args`; panics if it fails
/// to run or prints no JSON.
pub fn probe(bin: &str, cgroup: Option<&Cgroup>, args: &[&str]) -> ProbeReport {
    let mut cmd = Command::new(bin);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(&cg.path);
    }
    let out = cmd.args(args).output().unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("weir-probe printed no JSON ({e}); status {}; stdout {stdout:?}; stderr {stderr}", out.status)
    });
    ProbeReport { json, stderr }
}

/// The pin directory of the weir whose proxy listens on `proxy` (default `pin_dir`).
pub fn pin_dir_of(proxy: std::net::SocketAddr) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/weir/listen-{}-{}", proxy.ip().to_string().replace('.', "_"), proxy.port()))
}

/// `union bpf_attr` for `BPF_OBJ_GET`, padded to the size the kernel accepts.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u8; 44],
}

/// `union bpf_attr` for `BPF_MAP_LOOKUP_ELEM`.
#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    _rest: [u8; 32],
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;

/// How long ago the weir that owns the pin directory `pins` wrote its heartbeat
/// (CLOCK_MONOTONIC, as the kernel programs compare it), read from the pinned heartbeat map;
/// `None` when there is no readable heartbeat there.
pub fn heartbeat_age(pins: &Path) -> Option<Duration> {
    let path = pins.join(format!("map-{}", weir_ebpf_common::MAP_HEARTBEAT));
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut get = ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: [0; 44] };
    // SAFETY: bpf(2) BPF_OBJ_GET reads the attr (its size passed) and a NUL-terminated path
    // that outlives the call; it returns a new fd, owned from here on.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &mut get as *mut ObjGetAttr, size_of::<ObjGetAttr>() as u32)
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh map fd nothing else owns.
    let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let (key, mut value) = (0u32, 0u64);
    let mut lookup = LookupAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &mut value as *mut u64 as u64,
        flags: 0,
        _rest: [0; 32],
    };
    // SAFETY: BPF_MAP_LOOKUP_ELEM reads a 4-byte key and writes the 8-byte value of an array
    // map of u64 (the heartbeat map) through pointers valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &mut lookup as *mut LookupAttr,
            size_of::<LookupAttr>() as u32,
        )
    };
    if rc != 0 {
        return None;
    }
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    Some(Duration::from_nanos(now_ns.saturating_sub(value)))
}

/// The kernel counters of the instance pinned at `pins`, as `weir steer status` reads them from
/// the pins (`bin` is the weir binary; its admin API at `admin` is expected not to answer).
pub fn counters_from_pins(bin: &str, admin: std::net::SocketAddr, pins: &Path) -> serde_json::Value {
    let out = Command::new(bin)
        .args(["steer", "status", "--admin", &admin.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("run {bin} steer status: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "weir steer status failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("steer status JSON ({e}): {text}"));
    v["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["pins"].as_str() == Some(&*pins.to_string_lossy())))
        .map(|i| i["counters"].clone())
        .unwrap_or_else(|| panic!("no instance pinned at {} in {text}", pins.display()))
}

/// A network namespace joined to this one by a veth pair, as a pod on this node is: the host
/// side is `198.18.N.1/30`, the namespace side `198.18.N.2/30`. Deleted (with its veth pair)
/// on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    subnet: u8,
}

impl NetNs {
    /// Creates namespace `weir-{tag}-{pid}` on subnet `198.18.{subnet}.0/30`; panics with the
    /// `ip` command's error when the kernel or the machine refuses.
    pub fn create(tag: &str, subnet: u8) -> NetNs {
        let name = format!("weir-{tag}-{}", std::process::id());
        let (host_if, ns_if) = (format!("wh{subnet}-{}", std::process::id() % 100_000), format!("wn{subnet}"));
        let ns = NetNs { name, subnet };
        let host = format!("{}/30", ns.host_addr());
        let inner = format!("{}/30", ns.addr());
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns.name]);
        ip(&["addr", "add", &host, "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for args in
            [&["addr", "add", &inner, "dev", &ns_if][..], &["link", "set", &ns_if, "up"], &["link", "set", "lo", "up"]]
        {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        }
        ns
    }

    /// The namespace's address.
    pub fn addr(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(198, 18, self.subnet, 2)
    }

    /// The host side's address.
    pub fn host_addr(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(198, 18, self.subnet, 1)
    }

    /// A TCP listener on the namespace's address (any port), bound from a thread that joined
    /// the namespace: the socket is the namespace's, whichever thread uses it afterwards.
    pub fn listen(&self) -> std::net::TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = std::net::SocketAddr::from((self.addr(), 0));
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace file this thread holds open; it changes only this
            // thread's network namespace, and the thread ends after binding.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {path}: {e}"))
        })
        .join()
        .expect("the namespace's listener")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `ip ARGS`, panicking with its error output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("run ip: {e}"));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

/// A cgroup v1 memory cgroup whose TCP socket memory is limited (`memory.kmem.tcp.*`): a
/// process in it that stops reading fills its sockets' memory, and a socket-level redirect
/// into one of them is then refused with ENOMEM. Removed on drop (its processes must have
/// ended). cgroup v2 has no socket-only limit, so the hierarchy comes from the v1 `memory`
/// mount in /proc/self/mountinfo; without one this panics, saying so.
#[derive(Debug)]
pub struct TcpMemoryLimit {
    /// Its directory (join it with `join_on_exec`: v1 has `cgroup.procs` too).
    pub path: PathBuf,
    /// The limit, bytes.
    pub limit: u64,
}

impl TcpMemoryLimit {
    /// Creates `weir-test-TAG-PID` with a TCP memory limit of `limit` bytes.
    pub fn create(tag: &str, limit: u64) -> TcpMemoryLimit {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
        let root = info
            .lines()
            .find_map(|l| {
                let (mount, fs) = l.split_once(" - ")?;
                let mut fs = fs.split(' ');
                let v1_memory = fs.next() == Some("cgroup") && fs.nth(1)?.split(',').any(|o| o == "memory");
                mount.split(' ').nth(4).filter(|_| v1_memory).map(PathBuf::from)
            })
            .expect(
                "filling a socket's memory needs a cgroup v1 memory controller (memory.kmem.tcp.limit_in_bytes); \
                 /proc/self/mountinfo shows no v1 `memory` hierarchy on this host",
            );
        let path = root.join(format!("weir-test-{tag}-{}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let knob = path.join("memory.kmem.tcp.limit_in_bytes");
        std::fs::write(&knob, limit.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", knob.display()));
        TcpMemoryLimit { path, limit }
    }

    /// The most TCP memory its sockets held at once, bytes.
    pub fn max_usage(&self) -> u64 {
        let knob = self.path.join("memory.kmem.tcp.max_usage_in_bytes");
        let text = std::fs::read_to_string(&knob).unwrap_or_else(|e| panic!("read {}: {e}", knob.display()));
        text.trim().parse().unwrap_or_else(|e| panic!("{}: {e}: {text:?}", knob.display()))
    }
}

impl Drop for TcpMemoryLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}
