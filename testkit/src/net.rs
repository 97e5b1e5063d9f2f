//! Loopback ports and socket state. Every port a test, the demo or the bench needs comes from
//! binding port 0: a listener it serves itself binds `127.0.0.1:0` directly; a port that
//! another program must bind (a peer proxy, a weir service listener, an address that must
//! refuse connections) is a [`ReservedPort`] — bound to port 0 and kept bound but not
//! listening, so the kernel hands it to nobody else while the test runs. Must not: guess a free
//! port by binding and releasing one (another process can take it in between).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A port bound on an address and held: bound to port 0 with `SO_REUSEADDR`, never listening.
/// Connects to it are refused, the kernel gives it to no `bind(…:0)` and no outgoing
/// connection, and a program that binds it explicitly with `SO_REUSEADDR` (nginx, HAProxy,
/// Envoy and weir all do) may listen on it while it is held. Released on drop.
#[derive(Debug)]
pub struct ReservedPort {
    fd: OwnedFd,
    addr: SocketAddr,
}

impl ReservedPort {
    /// Reserves a port on 127.0.0.1.
    pub fn loopback() -> io::Result<ReservedPort> {
        ReservedPort::on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Reserves a port on `ip`.
    pub fn on(ip: IpAddr) -> io::Result<ReservedPort> {
        let family = if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
        let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a correctly sized int on a valid socket.
        if unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        let (storage, len) = to_sockaddr(SocketAddr::new(ip, 0));
        // SAFETY: `storage` holds a sockaddr of `len` bytes for this socket's family.
        if unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = local_addr(raw)?;
        Ok(ReservedPort { fd, addr })
    }

    /// The reserved address (IP and port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl AsRawFd for ReservedPort {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the family-specific view written below
    // fits inside it.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn local_addr(fd: std::os::fd::RawFd) -> io::Result<SocketAddr> {
    // SAFETY: getsockname fills at most `len` bytes of the zeroed storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above, on a valid socket fd.
    if unsafe { libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET socket.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 socket.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        f => Err(io::Error::other(format!("unexpected address family {f}"))),
    }
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet (SIOCOUTQ); `None`
/// if the socket cannot tell.
pub fn unsent_bytes(s: &impl AsRawFd) -> Option<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int for a valid socket fd.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then_some(queued.max(0) as usize)
}

/// Sets `SO_RCVBUF` of a socket (for a listener: of the connections it accepts), e.g. so a
/// sink that never reads stalls its writer quickly.
pub fn set_recv_buffer(s: &impl AsRawFd, bytes: i32) -> io::Result<()> {
    // SAFETY: setsockopt on a valid socket with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_reserved_port_refuses_connects_and_lets_a_reuseaddr_listener_bind_it() {
        let r = ReservedPort::loopback().expect("reserve");
        assert_ne!(r.port(), 0);
        assert_eq!(r.addr().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let err = TcpStream::connect(r.addr()).expect_err("nothing listens on a reserved port");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        // std binds listeners with SO_REUSEADDR, as the programs a reservation is made for do.
        let l = TcpListener::bind(r.addr()).expect("bind the reserved port explicitly");
        assert!(TcpStream::connect(l.local_addr().expect("addr")).is_ok());
        // Nobody gets it by asking for any port while it is held.
        drop(l);
        for _ in 0..200 {
            assert_ne!(TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr"), r.addr());
        }
    }

    #[test]
    fn ipv6_loopback_ports_can_be_reserved() {
        let r = ReservedPort::on("::1".parse().expect("ip")).expect("reserve [::1]");
        assert!(r.addr().is_ipv6() && r.port() != 0);
    }

    #[test]
    fn unsent_bytes_is_zero_once_the_peer_has_everything() {
        use std::io::Write as _;
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let _peer = l.accept().expect("accept");
        c.write_all(&[1u8; 1000]).expect("write");
        assert_eq!(
            crate::wait_until(std::time::Duration::from_secs(5), || unsent_bytes(&c).filter(|n| *n == 0)),
            Some(0)
        );
    }
}
