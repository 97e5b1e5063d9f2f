//! The few bpf(2) commands weir issues itself rather than through aya: per-connection map
//! operations from worker threads (no aya object, no lock), taking over a pinned link with
//! `BPF_LINK_UPDATE`, and opening a pinned object. Must not: grow into a general binding.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_ANY: u64 = 0;

/// `union bpf_attr` for map element commands.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_LINK_UPDATE.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) with a #[repr(C)] attr of the layout the command expects; every pointer
    // inside it points at live memory of the right size for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Looks `key` up in the map `fd` and deletes it, filling `value`.
pub fn lookup_and_delete<K, V>(fd: RawFd, key: &K, value: &mut V) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *mut V as u64,
        flags: 0,
    };
    bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &attr).map(|_| ())
}

/// Sets `key` to `value` in the map `fd`.
pub fn update<K, V>(fd: RawFd, key: &K, value: &V) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: BPF_ANY,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &attr).map(|_| ())
}

/// Opens a pinned bpf object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Replaces the program of link `link_fd` with `prog_fd`, atomically.
pub fn link_update(link_fd: RawFd, prog_fd: RawFd) -> io::Result<()> {
    let attr = LinkUpdateAttr { link_fd: link_fd as u32, new_prog_fd: prog_fd as u32, flags: 0, old_prog_fd: 0 };
    bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
