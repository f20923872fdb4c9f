//! systemd's notify protocol, without a crate: one datagram per message to the socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). `READY=1` once the model is
//! warm and the source open, `WATCHDOG=1` from the frame loop (at most once a second), and
//! `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` (not under systemd) every call is a
//! no-op, so the frame loop pays one atomic load.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The notify socket, read once.
fn socket_name() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Sends `message` to the notify socket `name`. Errors are returned for tests; callers ignore
/// them (a supervisor that went away must not stop the daemon).
pub fn send_to(name: &str, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(abstract_name) = name.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), name)?;
    }
    Ok(())
}

/// Sends `message` (e.g. `READY=1`) when running under systemd.
pub fn notify(message: &str) {
    if let Some(name) = socket_name() {
        if let Err(e) = send_to(name, message) {
            tracing::debug!("sd_notify {message:?}: {e}");
        }
    }
}

/// `WATCHDOG=1`, at most once a second whatever the frame rate.
pub fn watchdog_ping() {
    static LAST_S: AtomicU64 = AtomicU64::new(0);
    if socket_name().is_none() {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_S.swap(now, Ordering::Relaxed) != now {
        notify("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_as_datagrams_on_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("echonet-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
