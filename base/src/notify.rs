//! systemd's readiness protocol (sd_notify(3)), written by hand: one
//! datagram to the unix socket named by `$NOTIFY_SOCKET`. A unit with
//! `Type=notify` counts the service as started only on `READY=1`, so units
//! that depend on it start once its listeners are bound, not when the
//! process was forked; `STOPPING=1` tells systemd the drain has begun.
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call is a no-op.

use std::ffi::OsStr;
use std::io;

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// How long a notification may block: systemd reads its socket at once,
/// and a stalled manager must not hold up starting or stopping the service.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends `state` (newline-separated `KEY=value` lines, e.g. `READY=1`) to
/// the socket in `$NOTIFY_SOCKET`. Ok(false) when the variable is unset.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Tells systemd the service is ready; `status` is shown by `systemctl
/// status`. Nothing without systemd.
pub fn ready(status: &str) {
    report(notify(&format!("READY=1\nSTATUS={status}")));
}

/// Tells systemd the service has begun to stop (it drains from now on).
pub fn stopping() {
    report(notify("STOPPING=1\nSTATUS=draining"));
}

/// Logs a notification that could not be sent: under `Type=notify` a lost
/// READY=1 makes systemd time the start out.
fn report(sent: io::Result<bool>) {
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Sends `state` to `socket`: a path, or `@name` for a Linux abstract
/// socket (what systemd uses in containers and user managers).
#[cfg(unix)]
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket)?,
        #[cfg(target_os = "linux")]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])?
        }
        // vsock: addresses are for VMs talking to their host's manager.
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{NOTIFY_SOCKET}={} is not a unix socket", socket.display()),
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification truncated",
        ));
    }
    Ok(())
}

/// Sends nothing: systemd exists only on unix.
#[cfg(not(unix))]
pub fn notify_to(_socket: &OsStr, _state: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "sd_notify needs unix sockets",
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn received(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_path_socket_receives_the_state_as_one_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(received(&sock), "READY=1\nSTATUS=serving");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("svc-base-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(received(&sock), "STOPPING=1");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        assert!(notify_to(path.as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn other_address_kinds_are_refused() {
        let err = notify_to(OsStr::new("vsock:2:1234"), "READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }
}
