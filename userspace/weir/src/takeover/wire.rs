//! The hand-off socket and its framing. A unix stream socket in the abstract namespace (bpffs,
//! where the pins live, cannot hold a socket), named after the instance's pin directory, so
//! that exactly one weir per `[steering] pin_dir` and `[proxy] listen` holds it. Both ends
//! check the peer's credentials: root, or weir's own user. Frames are a fixed header and a
//! body; file descriptors travel as SCM_RIGHTS with the first bytes of their frame. Must not:
//! know what the frames mean (`takeover.rs` does).
//!
//! Header (12 bytes, little-endian, the same in every protocol version): `b"WEIR"`, the frame
//! kind (u8), a reserved byte (0), the number of file descriptors that come with the frame
//! (u16), the body length (u32).

use std::collections::VecDeque;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

const MAGIC: [u8; 4] = *b"WEIR";
const HEADER_BYTES: usize = 12;
/// The largest body accepted (stats of very many services fit well below it).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// File descriptors per sendmsg (the kernel's limit is 253).
const FDS_PER_MESSAGE: usize = 200;
const CMSG_FDS: usize = 253;

/// The abstract socket name of the instance whose pins live in `pin_root`.
pub fn socket_name(pin_root: &Path) -> Vec<u8> {
    let path = pin_root.as_os_str().as_encoded_bytes();
    let mut name = b"weir-takeover:".to_vec();
    // Abstract names are at most 107 bytes; a long pin path is named by its hash.
    if name.len() + path.len() <= 100 {
        name.extend_from_slice(path);
    } else {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in path {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        name.extend_from_slice(format!("{h:016x}").as_bytes());
    }
    name
}

/// Binds the hand-off socket of `pin_root`. `AddrInUse` means a weir of the same instance is
/// running.
pub fn bind(pin_root: &Path) -> io::Result<UnixListener> {
    let addr = UnixAddr::from_abstract_name(socket_name(pin_root))?;
    UnixListener::bind_addr(&addr)
}

/// Connects to the hand-off socket of `pin_root`: `None` when no weir holds it.
pub fn connect(pin_root: &Path) -> io::Result<Option<Channel>> {
    let addr = UnixAddr::from_abstract_name(socket_name(pin_root))?;
    match UnixStream::connect_addr(&addr) {
        Ok(s) => Channel::new(s).map(Some),
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One frame.
#[derive(Debug)]
pub struct Frame {
    /// What it is (see `takeover::Kind`).
    pub kind: u8,
    /// Its body.
    pub body: Vec<u8>,
    /// The file descriptors that came with it, in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

/// The process at the other end.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Its pid.
    pub pid: u32,
    /// Its user.
    pub uid: u32,
}

/// A connected hand-off socket.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    fds: VecDeque<OwnedFd>,
    /// Who is at the other end (checked: root or weir's own user).
    pub peer: Peer,
}

impl Channel {
    /// Wraps a connected stream, refusing a peer that is neither root nor this process's user.
    pub fn new(stream: UnixStream) -> io::Result<Channel> {
        let peer = peer_credentials(&stream)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if peer.uid != 0 && peer.uid != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the hand-off peer (pid {}) runs as uid {}, neither root nor weir's user", peer.pid, peer.uid),
            ));
        }
        Ok(Channel { stream, fds: VecDeque::new(), peer })
    }

    /// Sends one frame with `fds`.
    pub fn send(&mut self, kind: u8, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if body.len() > MAX_BODY_BYTES || fds.len() > usize::from(u16::MAX) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "hand-off frame too large"));
        }
        let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(kind);
        bytes.push(0);
        bytes.extend_from_slice(&(fds.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(body);
        let mut sent = 0;
        let batches: Vec<&[BorrowedFd<'_>]> = fds.chunks(FDS_PER_MESSAGE).collect();
        for (i, batch) in batches.iter().enumerate() {
            // Every batch rides on at least one byte; the last one on the rest of the frame.
            let end = if i + 1 == batches.len() { bytes.len() } else { sent + 1 };
            sent += send_with_fds(&self.stream, &bytes[sent..end], batch)?;
        }
        self.stream.write_all(&bytes[sent..])
    }

    /// Receives one frame, waiting at most `timeout` for each read (`None`: forever).
    pub fn recv(&mut self, timeout: Option<Duration>) -> io::Result<Frame> {
        self.stream.set_read_timeout(timeout)?;
        let mut header = [0u8; HEADER_BYTES];
        self.read_exact(&mut header)?;
        if header[..4] != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a weir hand-off frame"));
        }
        let kind = header[4];
        let nfds = usize::from(u16::from_le_bytes([header[6], header[7]]));
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if len > MAX_BODY_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("hand-off frame of {len} bytes")));
        }
        let mut body = vec![0; len];
        self.read_exact(&mut body)?;
        if self.fds.len() < nfds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a hand-off frame announced {nfds} file descriptors, {} came", self.fds.len()),
            ));
        }
        let fds = self.fds.drain(..nfds).collect();
        Ok(Frame { kind, body, fds })
    }

    /// Waits until the peer closes its end (or `timeout`), discarding what it still sends.
    pub fn wait_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).is_err() {
                return;
            }
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = recv_with_fds(&self.stream, buf, &mut self.fds)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other weir closed the hand-off socket"));
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

fn peer_credentials(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_PEERCRED) writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer { pid: cred.pid as u32, uid: cred.uid })
}

const fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// One sendmsg of `bytes` with `fds` (SCM_RIGHTS); returns the bytes sent (at least one).
fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut control = vec![0u8; cmsg_space(fds.len().max(1))];
    // SAFETY: msghdr is plain old data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: the control buffer is CMSG_SPACE(fds) bytes, enough for one header and the
        // fds; CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: sendmsg with a msghdr whose pointers reference live buffers of the stated sizes.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One recvmsg into `buf`; file descriptors that come with the bytes are appended to `fds`.
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = vec![0u8; cmsg_space(CMSG_FDS)];
    // SAFETY: msghdr is plain old data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: recvmsg into live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the other weir did not answer in time"));
            }
            _ => return Err(e),
        }
    };
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    // The kernel installed these descriptors for us: we own them now.
                    fds.push_back(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file descriptors of the hand-off were cut off"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn frames_with_many_descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut a, mut b) = (Channel::new(a).expect("a"), Channel::new(b).expect("b"));
        let sender = std::thread::spawn(move || {
            let files: Vec<std::fs::File> = (0..450).map(|_| std::fs::File::open("/dev/null").expect("null")).collect();
            let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
            a.send(2, &vec![7u8; 100_000], &fds).expect("send");
            a.send(3, b"{}", &[]).expect("send");
        });
        let f = b.recv(Some(Duration::from_secs(5))).expect("recv");
        assert_eq!((f.kind, f.body.len(), f.fds.len()), (2, 100_000, 450));
        let g = b.recv(Some(Duration::from_secs(5))).expect("recv");
        assert_eq!((g.kind, g.body.as_slice(), g.fds.len()), (3, &b"{}"[..], 0));
        sender.join().expect("sender");
    }

    #[test]
    fn a_long_pin_path_still_makes_a_valid_name() {
        let long = Path::new("/sys/fs/bpf").join("x".repeat(200));
        assert!(socket_name(&long).len() <= 107);
        assert_ne!(socket_name(Path::new("/a")), socket_name(Path::new("/b")));
    }
}
