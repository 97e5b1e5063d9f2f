//! The few bpf(2) commands weir issues itself rather than through aya: per-connection map
//! operations from worker threads (no aya object, no lock) through [`TypedMap`], taking over a
//! pinned link with `BPF_LINK_UPDATE`, and opening a pinned object. Must not: grow into a
//! general binding, or pass the kernel a buffer it has not checked the size of.

use std::ffi::CString;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
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

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info`: the kernel fills at most `info_len` bytes of it.
#[repr(C)]
#[derive(Default)]
struct MapInfoHead {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) with a #[repr(C)] attr of the layout the command expects; every pointer
    // inside it points at live memory of the right size for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// A map whose key and value types were checked against the kernel's sizes once, when it was
/// opened: its element commands can never let the kernel read or write past `K` or `V`.
#[derive(Debug)]
pub(crate) struct TypedMap<K: aya::Pod, V: aya::Pod> {
    fd: OwnedFd,
    types: PhantomData<fn(K) -> V>,
}

impl<K: aya::Pod, V: aya::Pod> TypedMap<K, V> {
    /// Takes `fd` (a map) if its key and value sizes are those of `K` and `V`.
    pub(crate) fn new(fd: OwnedFd, name: &str) -> io::Result<Self> {
        let mut info = MapInfoHead::default();
        let attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<MapInfoHead>() as u32,
            info: &mut info as *mut MapInfoHead as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
        let want = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
        let have = (info.key_size as usize, info.value_size as usize);
        if want != have {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "map {name}: the kernel's key/value sizes are {}/{} bytes, weir expects {}/{}",
                    have.0, have.1, want.0, want.1
                ),
            ));
        }
        Ok(Self { fd, types: PhantomData })
    }

    /// Looks `key` up, returning its value.
    pub(crate) fn lookup(&self, key: &K) -> io::Result<V> {
        self.read_elem(BPF_MAP_LOOKUP_ELEM, key)
    }

    /// Looks `key` up and deletes it, returning its value.
    pub(crate) fn lookup_and_delete(&self, key: &K) -> io::Result<V> {
        self.read_elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, key)
    }

    /// An element command `cmd` that writes `key`'s value back.
    fn read_elem(&self, cmd: libc::c_long, key: &K) -> io::Result<V> {
        let mut value = std::mem::MaybeUninit::<V>::zeroed();
        let attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        bpf(cmd, &attr)?;
        // SAFETY: `V` is plain data (`Pod`: any bit pattern is valid) and started zeroed; the
        // kernel wrote exactly `value_size` == size_of::<V>() bytes into it (checked in `new`).
        Ok(unsafe { value.assume_init() })
    }

    /// Sets `key` to `value`.
    pub(crate) fn update(&self, key: &K, value: &V) -> io::Result<()> {
        let attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags: BPF_ANY,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &attr).map(|_| ())
    }
}

/// Opens a pinned bpf object.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Replaces the program of link `link_fd` with `prog_fd`, atomically.
pub(crate) fn link_update(link_fd: RawFd, prog_fd: RawFd) -> io::Result<()> {
    let attr = LinkUpdateAttr { link_fd: link_fd as u32, new_prog_fd: prog_fd as u32, flags: 0, old_prog_fd: 0 };
    bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod root_tier {
    //! Needs CAP_BPF (root): `cargo xtask test --unprivileged` skips it by its module name.
    use super::*;

    /// A BPF hash map made with BPF_MAP_CREATE, `key`/`value` bytes wide.
    fn hash_map(key: u32, value: u32) -> OwnedFd {
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_HASH: u32 = 1;
        let attr = CreateAttr { map_type: BPF_MAP_TYPE_HASH, key_size: key, value_size: value, max_entries: 4 };
        let fd = bpf(BPF_MAP_CREATE, &attr).expect("BPF_MAP_CREATE (needs root and a kernel with BPF)");
        // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    }

    #[test]
    fn typed_map_checks_sizes_once_and_round_trips() {
        let wrong = TypedMap::<u32, u32>::new(hash_map(4, 8), "m").expect_err("value 4 bytes vs 8");
        assert!(wrong.to_string().contains("map m: the kernel's key/value sizes are 4/8 bytes, weir expects 4/4"));
        let map = TypedMap::<u32, u64>::new(hash_map(4, 8), "m").expect("sizes agree");
        map.update(&7, &0x1122_3344_5566_7788).expect("update");
        assert_eq!(map.lookup_and_delete(&7).expect("present"), 0x1122_3344_5566_7788);
        assert_eq!(map.lookup_and_delete(&7).expect_err("deleted").raw_os_error(), Some(libc::ENOENT));
        map.update(&8, &1).expect("update");
        assert_eq!(map.lookup(&8).expect("present"), 1);
        assert_eq!(map.lookup(&8).expect("still present"), 1);
    }
}
