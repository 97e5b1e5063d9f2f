//! Another sockmap user on the node, for the root tier: what a CNI or an observability agent
//! that uses sockmap looks like to weir. Its own socket hash with its own `sk_msg` program (which
//! passes every message), and a sock_ops program on a cgroup that puts each socket of that
//! cgroup into its hash when the socket's connect completes. A socket carries one set of
//! sockmap programs, so a socket this user enrolled first cannot join weir's map.
//!
//! The programs are a dozen instructions, written here as bytecode (no compiler for the BPF
//! target is needed); the kernel's verifier checks them on load like any program.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SOCK_OPS: u32 = 13;
const BPF_PROG_TYPE_SK_MSG: u32 = 16;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_SK_MSG_VERDICT: u32 = 7;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// `bpf_sock_hash_update(skops, map, key, flags)`.
const BPF_FUNC_SOCK_HASH_UPDATE: i32 = 70;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: i32 = 4;
/// Offsets in `struct bpf_sock_ops`.
const OPS_OP: i16 = 0;
const OPS_LOCAL_PORT: i16 = 68;

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// rDST = rSRC (64-bit).
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
/// rDST = IMM (64-bit).
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
/// rDST = *(u32 *)(rSRC + OFF).
const fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// *(u32 *)(rDST + OFF) = rSRC.
const fn store_u32(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x63, dst, src, off, 0)
}
/// rDST += IMM.
const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
/// if rDST != IMM goto +OFF.
const fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}
const fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
const EXIT: Insn = insn(0x95, 0, 0, 0, 0);

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix for `cmd`, its size passed; the
    // pointers inside it are valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a new fd the kernel just returned, owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u8; 108],
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    _rest: [u8; 88],
}

#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    _rest: [u8; 112],
}

fn load(prog_type: u32, insns: &[Insn]) -> OwnedFd {
    let license = CString::new("GPL").expect("license");
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        _rest: [0; 88],
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => owned(fd),
        Err(e) => panic!(
            "the kernel refused the test's sockmap program (type {prog_type}): {e}\n{}",
            String::from_utf8_lossy(&log).trim_end_matches('\0')
        ),
    }
}

fn attach(target: i32, prog: i32, attach_type: u32, flags: u32) -> std::io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: target as u32,
        attach_bpf_fd: prog as u32,
        attach_type,
        attach_flags: flags,
        _rest: [0; 112],
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

/// Another sockmap user, attached to one cgroup until dropped.
#[derive(Debug)]
pub struct SockmapUser {
    cgroup: OwnedFd,
    sock_ops: OwnedFd,
    _msg: OwnedFd,
    _map: OwnedFd,
}

impl SockmapUser {
    /// Attaches to `cgroup` (before weir does, its program runs first there): every socket of
    /// the cgroup whose connect completes goes into this user's socket hash, keyed by its local
    /// port.
    pub fn attach(cgroup: &Path) -> SockmapUser {
        let mut create = MapCreateAttr {
            map_type: BPF_MAP_TYPE_SOCKHASH,
            key_size: 4,
            value_size: 4,
            max_entries: 1024,
            map_flags: 0,
            _rest: [0; 108],
        };
        let map = owned(bpf(BPF_MAP_CREATE, &mut create).expect("create the other user's socket hash"));
        // sk_msg: SK_PASS for every message.
        let msg = load(BPF_PROG_TYPE_SK_MSG, &[mov_imm(0, 1), EXIT]);
        attach(map.as_raw_fd(), msg.as_raw_fd(), BPF_SK_MSG_VERDICT, 0).expect("attach sk_msg to the other user's map");
        // sock_ops: on ACTIVE_ESTABLISHED, bpf_sock_hash_update(ctx, map, &local_port, BPF_ANY).
        let map_fd = map.as_raw_fd();
        let prog = [
            mov_reg(6, 1),
            load_u32(2, 6, OPS_OP),
            jne_imm(2, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, 9),
            load_u32(2, 6, OPS_LOCAL_PORT),
            store_u32(10, 2, -4),
            mov_reg(1, 6),
            // r2 = the map (ld_imm64, src BPF_PSEUDO_MAP_FD), two instructions.
            insn(0x18, 2, 1, 0, map_fd),
            insn(0, 0, 0, 0, 0),
            mov_reg(3, 10),
            add_imm(3, -4),
            mov_imm(4, 0),
            call(BPF_FUNC_SOCK_HASH_UPDATE),
            mov_imm(0, 1),
            EXIT,
        ];
        let sock_ops = load(BPF_PROG_TYPE_SOCK_OPS, &prog);
        let dir = std::fs::File::open(cgroup).unwrap_or_else(|e| panic!("open {}: {e}", cgroup.display()));
        let cgroup = OwnedFd::from(dir);
        attach(cgroup.as_raw_fd(), sock_ops.as_raw_fd(), BPF_CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI)
            .unwrap_or_else(|e| panic!("attach the other user's sock_ops program: {e}"));
        SockmapUser { cgroup, sock_ops, _msg: msg, _map: map }
    }
}

impl Drop for SockmapUser {
    fn drop(&mut self) {
        let mut attr = AttachAttr {
            target_fd: self.cgroup.as_raw_fd() as u32,
            attach_bpf_fd: self.sock_ops.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_SOCK_OPS,
            attach_flags: 0,
            _rest: [0; 112],
        };
        let _ = bpf(BPF_PROG_DETACH, &mut attr);
    }
}
