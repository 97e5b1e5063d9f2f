//! Telling whoever started weir that it is ready: systemd's notify socket (`READY=1` and
//! `MAINPID=`, so that after a takeover systemd follows the new process as the unit's main
//! one; the unit sets `NotifyAccess=all`), and the pipe of `weir run --detach`, which waits
//! for it. Must not: fail weir when nobody listens.

use std::io::Write as _;
use std::os::fd::{FromRawFd as _, RawFd};
use std::os::unix::ffi::OsStrExt as _;

/// The environment variable that names the ready pipe's write end (set by `--detach`).
pub const READY_FD_ENV: &str = "WEIR_READY_FD";

/// weir is ready: tells systemd (when it runs weir with a notify socket) and the waiting
/// `--detach` parent (when there is one).
pub fn ready() {
    if let Err(e) = sd_notify(&format!("READY=1\nMAINPID={}\n", std::process::id())) {
        tracing::warn!("cannot notify systemd: {e}");
    }
    if let Some(fd) = std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse::<RawFd>().ok()) {
        // SAFETY: the parent passed us this pipe's write end, open and ours alone; it is used
        // once, here, and closed.
        let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = pipe.write_all(b"ready\n");
    }
}

fn sd_notify(message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let path = path.as_encoded_bytes();
    let addr = match path.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(path)))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}
