//! The receiving end of the sd_notify protocol (sd_notify(3)): a Unix datagram socket whose
//! path a child gets in `NOTIFY_SOCKET`, and the wait for its `READY=1`. pop3d sends
//! `READY=1` with `STATUS=listening KIND=ADDR ...` (one entry per bound listener, the kinds
//! of its `listening` log lines) once it takes connections.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest one read waits before the caller's liveness check runs again.
const POLL: Duration = Duration::from_millis(50);

/// What a process said when it became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Every listener: kind (`pop3`, `pop3+stls`, `pop3s`, `kpop`, `auth_http`) and address.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The whole datagram (`READY=1`, `STATUS=...`, one per line).
    pub message: String,
}

/// A bound notify socket.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds at `path`, writable by every user as systemd's own notify socket is, so that a
    /// process that drops privileges after it starts can still say it is ready (the
    /// directory must let it in too).
    pub fn bind(path: &Path) -> io::Result<NotifySocket> {
        let socket = UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        Ok(NotifySocket {
            socket,
            path: path.to_path_buf(),
        })
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram, waiting up to `timeout`; `None` when none came.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<String>> {
        // A zero timeout means "block forever" to set_read_timeout.
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until `deadline` for a datagram with `READY=1` and the listeners in its
    /// `STATUS`. `gone` is asked between reads and returns why the sender cannot come any
    /// more (it exited), which ends the wait at once.
    pub fn wait_ready(
        &self,
        deadline: Instant,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<Ready, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no READY=1 before the deadline".to_owned());
            }
            let message = self
                .recv(left.min(POLL))
                .map_err(|e| format!("reading the notify socket: {e}"))?;
            if let Some(message) = message {
                if message.lines().any(|l| l == "READY=1") {
                    let status = message.lines().find_map(|l| l.strip_prefix("STATUS="));
                    let listeners = status.and_then(parse_status).ok_or_else(|| {
                        format!("READY=1 without the listeners in STATUS: {message:?}")
                    })?;
                    return Ok(Ready { listeners, message });
                }
            } else if let Some(why) = gone() {
                return Err(why);
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The listeners of a `STATUS=` value `listening KIND=ADDR KIND=ADDR ...`; `None` when it
/// is not one or names no listener.
pub fn parse_status(status: &str) -> Option<Vec<(String, SocketAddr)>> {
    let mut words = status.split_whitespace();
    if words.next()? != "listening" {
        return None;
    }
    let listeners = words
        .map(|w| {
            let (kind, addr) = w.split_once('=')?;
            Some((kind.to_owned(), addr.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    (!listeners.is_empty()).then_some(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn status_lines_parse() {
        // The status, and the listeners it names (none: not a listening status).
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "listening pop3+stls=127.0.0.1:1100 pop3s=[::1]:995",
                &[("pop3+stls", "127.0.0.1:1100"), ("pop3s", "[::1]:995")],
            ),
            (
                "listening kpop=127.0.0.1:1109 auth_http=127.0.0.1:8080",
                &[("kpop", "127.0.0.1:1109"), ("auth_http", "127.0.0.1:8080")],
            ),
            ("listening", &[]),
            ("listening pop3=nowhere", &[]),
            ("listening pop3", &[]),
            ("listening pop3=127.0.0.1:110 junk", &[]),
            ("stopping pop3=127.0.0.1:110", &[]),
            ("", &[]),
        ];
        for (status, listeners) in cases {
            let expected = listeners
                .iter()
                .map(|(kind, a)| (kind.to_string(), addr(a)))
                .collect::<Vec<_>>();
            let expected = (!expected.is_empty()).then_some(expected);
            assert_eq!(parse_status(status), expected, "{status:?}");
        }
    }

    fn socket(dir: &TempDir) -> NotifySocket {
        NotifySocket::bind(&dir.path().join("notify")).expect("bind")
    }

    #[test]
    fn readiness_comes_from_the_ready_datagram() {
        let dir = TempDir::new("testbed-notify");
        let sock = socket(&dir);
        let path = sock.path().to_path_buf();
        let sender = std::thread::spawn(move || {
            let tx = UnixDatagram::unbound().expect("socket");
            std::thread::sleep(Duration::from_millis(100));
            // Other states before it are not readiness.
            tx.send_to(b"STATUS=starting\n", &path).expect("send");
            tx.send_to(b"READY=1\nSTATUS=listening pop3=127.0.0.1:1100\n", &path)
                .expect("send");
            tx.send_to(b"STOPPING=1\n", &path).expect("send");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = sock.wait_ready(deadline, || None).expect("ready");
        assert_eq!(ready.listeners, [("pop3".into(), addr("127.0.0.1:1100"))]);
        assert!(ready.message.starts_with("READY=1\n"));
        sender.join().expect("sender");
        let next = sock.recv(Duration::from_secs(10)).expect("recv");
        assert_eq!(next.as_deref(), Some("STOPPING=1\n"));
    }

    #[test]
    fn ready_without_listeners_is_an_error() {
        let dir = TempDir::new("testbed-notify");
        let sock = socket(&dir);
        let tx = UnixDatagram::unbound().expect("socket");
        tx.send_to(b"READY=1\n", sock.path()).expect("send");
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = sock.wait_ready(deadline, || None).expect_err("no STATUS");
        assert!(err.contains("without the listeners"), "{err}");
    }

    #[test]
    fn the_wait_ends_at_the_deadline_or_when_the_sender_is_gone() {
        let dir = TempDir::new("testbed-notify");
        let sock = socket(&dir);
        let start = Instant::now();
        let err = sock
            .wait_ready(start + Duration::from_millis(200), || None)
            .expect_err("nothing sent");
        assert!(err.contains("deadline"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));

        let start = Instant::now();
        let err = sock
            .wait_ready(start + Duration::from_secs(60), || Some("exited: 1".into()))
            .expect_err("gone");
        assert_eq!(err, "exited: 1");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }
}
