//! `sd_notify`: tells systemd (or whoever set `NOTIFY_SOCKET`) that loomd is ready or stopping.
//! The socket is read from the environment once, at start-up, and passed around from there:
//! nothing here reads or writes the environment while other threads run.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;

/// Where readiness goes; `None` when loomd was not started with `NOTIFY_SOCKET`.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// `socket` is a path, or `@name` for an abstract socket (as systemd sets it).
    pub fn new(socket: Option<OsString>) -> Notifier {
        Notifier { socket: socket.filter(|s| !s.is_empty()) }
    }

    /// The socket systemd gave this process.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var_os("NOTIFY_SOCKET"))
    }

    /// Sends `state` (e.g. `READY=1`); does nothing without a socket.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        let result = UnixDatagram::unbound().and_then(|sock| {
            let bytes = path.as_encoded_bytes();
            if let Some(name) = bytes.strip_prefix(b"@") {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
            } else {
                sock.send_to(state.as_bytes(), path)
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Notifier;
    use std::os::unix::net::UnixDatagram;

    fn received(sock: &UnixDatagram) -> Vec<u8> {
        let mut buf = [0u8; 32];
        let n = sock.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn notify_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        Notifier::new(Some(path.into_os_string())).notify("READY=1");
        assert_eq!(received(&sock), b"READY=1");
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("loomd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(Some(format!("@{name}").into())).notify("STOPPING=1");
        assert_eq!(received(&sock), b"STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        Notifier::new(None).notify("READY=1");
        Notifier::new(Some("".into())).notify("READY=1");
    }
}
