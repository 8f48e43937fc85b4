//! A `pop3d` process (or a program that becomes one, e.g. a socket-activation wrapper): run
//! with its own `NOTIFY_SOCKET`, waited for until it sends `READY=1` with its listeners, and
//! killed on drop.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::notify::NotifySocket;
use crate::TempDir;

/// Where the process's standard error (its log) goes.
#[derive(Debug, Clone)]
pub enum Log {
    /// Kept in memory, see [`Pop3d::log`].
    Capture,
    /// Written to this file (created or truncated).
    File(PathBuf),
}

#[derive(Debug)]
enum Sink {
    Captured(Arc<Mutex<String>>, Option<JoinHandle<()>>),
    File(PathBuf),
}

/// A running pop3d that has said it is ready; SIGKILLed on drop.
#[derive(Debug)]
pub struct Pop3d {
    child: Child,
    /// The first listener that is not implicit TLS (POP3, POP3 with STLS, ...), else the
    /// first POP3S one.
    pub addr: SocketAddr,
    /// The first implicit-TLS (POP3S) listener, if any.
    pub tls_addr: Option<SocketAddr>,
    /// Every listener as the readiness STATUS names it: kind and address.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The readiness datagram (`READY=1`, `STATUS=...`).
    pub ready: String,
    notify: NotifySocket,
    sink: Sink,
    // Holds the notify socket; dropped after it.
    _dir: TempDir,
}

impl Pop3d {
    /// Runs `cmd` with stdin and stdout closed, stderr to `log` and `NOTIFY_SOCKET` set, and
    /// waits up to `patience` for its `READY=1`. An early exit or a missed deadline is an
    /// error carrying the log (the process is killed).
    pub fn spawn(mut cmd: Command, log: Log, patience: Duration) -> Result<Pop3d, String> {
        let dir = TempDir::try_new("notify").map_err(|e| format!("notify dir: {e}"))?;
        // Open to a pop3d that drops privileges (`--user`), like the socket itself.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("notify dir: {e}"))?;
        let notify = NotifySocket::bind(&dir.path().join("notify"))
            .map_err(|e| format!("binding the notify socket: {e}"))?;
        cmd.env("NOTIFY_SOCKET", notify.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match &log {
            Log::Capture => cmd.stderr(Stdio::piped()),
            Log::File(path) => {
                let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                cmd.stderr(file)
            }
        };
        let mut child = cmd.spawn().map_err(|e| format!("spawning pop3d: {e}"))?;
        let sink = match log {
            Log::File(path) => Sink::File(path),
            Log::Capture => {
                let text = Arc::new(Mutex::new(String::new()));
                let reader = child.stderr.take().map(|stderr| {
                    let text = text.clone();
                    std::thread::spawn(move || {
                        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                            let mut t = text.lock().unwrap_or_else(|e| e.into_inner());
                            t.push_str(&line);
                            t.push('\n');
                        }
                    })
                });
                Sink::Captured(text, reader)
            }
        };
        let ready = notify.wait_ready(Instant::now() + patience, || match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!("exited ({status}) before it was ready")),
            Err(e) => Some(format!("cannot be waited for: {e}")),
        });
        let mut server = Pop3d {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_addr: None,
            listeners: Vec::new(),
            ready: String::new(),
            notify,
            sink,
            _dir: dir,
        };
        let ready = match ready {
            Ok(ready) => ready,
            Err(e) => {
                server.kill9();
                // The whole log: the reader ends once the killed process's stderr closes.
                if let Sink::Captured(_, reader) = &mut server.sink {
                    if let Some(r) = reader.take() {
                        let _ = r.join();
                    }
                }
                return Err(format!("pop3d {e}; its log:\n{}", server.log()));
            }
        };
        let find = |tls: bool| {
            ready
                .listeners
                .iter()
                .find(|(kind, _)| (kind == "pop3s") == tls)
                .map(|(_, a)| *a)
        };
        server.tls_addr = find(true);
        server.addr = find(false).or(server.tls_addr).unwrap_or(server.addr);
        server.listeners = ready.listeners;
        server.ready = ready.message;
        // pop3d logs "ready" just before it sends READY=1, but the log is read by another
        // thread (or flushed to a file): give it a moment, so a test reading the startup lines
        // finds them. Bounded; a log filter that hides the line only costs the wait.
        let logged = Instant::now() + Duration::from_secs(2);
        while !server.log().contains(" ready") && Instant::now() < logged {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(server)
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        match &self.sink {
            Sink::Captured(text, _) => text.lock().map(|t| t.clone()).unwrap_or_default(),
            Sink::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    /// The next sd_notify datagram after the readiness one (`STOPPING=1` ...), waiting up to
    /// `timeout`.
    pub fn notification(&self, timeout: Duration) -> Option<String> {
        self.notify.recv(timeout).ok().flatten()
    }

    /// The address of the first listener of `kind` (`pop3`, `metrics`, `lmtp`, ...).
    pub fn listener(&self, kind: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", self.listeners))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, once it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the process to exit; true when it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal (`TERM`, `KILL`, `HUP` ...); true when kill(1) succeeded.
    pub fn signal(&self, sig: &str) -> bool {
        signal(self.pid(), sig)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. True when it exited on its own.
    pub fn stop(mut self, grace: Duration) -> bool {
        self.signal("TERM");
        if self.wait_exit(grace) {
            return true;
        }
        self.kill9();
        false
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(|d| d.count())
    }
}

impl Drop for Pop3d {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends a signal to `pid` with kill(1) (std has no kill but SIGKILL); true on success.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_exit_ends_the_wait_with_the_log() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo cannot bind >&2; exit 3"]);
        let start = Instant::now();
        let err = Pop3d::spawn(cmd, Log::Capture, Duration::from_secs(60)).expect_err("exits");
        assert!(err.contains("exited"), "{err}");
        assert!(err.contains("cannot bind"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_process_that_never_says_ready_is_killed_at_the_deadline() {
        let dir = TempDir::new("testbed-pop3d");
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo starting >&2; exec sleep 60"]);
        let err =
            Pop3d::spawn(cmd, Log::File(log), Duration::from_millis(300)).expect_err("never ready");
        assert!(err.contains("deadline"), "{err}");
        assert!(err.contains("starting"), "{err}");
    }
}
