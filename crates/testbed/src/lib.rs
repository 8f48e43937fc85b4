//! The test bed every test of the suite stands on, written once: temporary directories
//! ([`TempDir`]), loopback ports free for a daemon ([`free_port`]), a `pop3d` process that is
//! ready when it says so over the sd_notify protocol ([`Pop3d`]), a blocking POP3 client
//! ([`Client`]), a throw-away PostgreSQL cluster ([`pg`]), nginx unpacked from Debian's
//! packages ([`nginx`]) and a seeded random source ([`rng`]).
//!
//! It uses std only, so that xtask, the bench and every crate's tests can depend on it without
//! pulling anything in. It knows nothing of the store, the server or the codec: `pop3d` is a
//! program it runs with the arguments it is given, and the client is a second, independent
//! reading of RFC 1939's multi-line replies.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

mod client;
pub mod nginx;
mod notify;
pub mod pg;
mod pop3d;
pub mod rng;

pub use client::Client;
pub use notify::{parse_status, NotifySocket, Ready};
pub use pop3d::{signal, Log, Pop3d};

/// The first lines of a private Dovecot's configuration: its run, state and log files under
/// `dir`, the instance name `instance` (so that several can run side by side), POP3 only, on
/// 127.0.0.1.
pub fn dovecot_instance(dir: &Path, instance: &str) -> String {
    let d = dir.display();
    format!(
        "base_dir = {d}/run\nstate_dir = {d}/state\ninstance_name = {instance}\n\
         log_path = {d}/dovecot.log\nprotocols = pop3\nlisten = 127.0.0.1\n"
    )
}

/// Runs `cmd` with stdin from /dev/null to its end; its output when it exits 0, otherwise an
/// error naming `what` with the exit status and what the program said.
pub fn run_checked(
    cmd: &mut std::process::Command,
    what: &str,
) -> Result<std::process::Output, String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// mpop against `host:port` without a user configuration (`-C /dev/null`) and with a 20 s
/// timeout, logging in with the method `auth` as `user`; the caller adds TLS, delivery and the
/// rest.
pub fn mpop(host: &str, port: u16, auth: &str, user: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("mpop");
    cmd.args(["-C", "/dev/null", "--timeout=20"])
        .arg(format!("--host={host}"))
        .arg(format!("--port={port}"))
        .arg(format!("--auth={auth}"))
        .arg(format!("--user={user}"));
    cmd
}

/// [`mpop`] with `--status-only` and without TLS: logs in (with `password`, when given), says
/// how many messages there are and quits. Delivers nothing.
pub fn mpop_status(
    host: &str,
    port: u16,
    auth: &str,
    user: &str,
    password: Option<&str>,
) -> std::process::Command {
    let mut cmd = mpop(host, port, auth, user);
    cmd.args([
        "--tls=off",
        "--status-only",
        "--delivery=mda,cat >/dev/null",
    ]);
    if let Some(password) = password {
        cmd.arg(format!("--passwordeval=echo '{password}'"));
    }
    cmd
}

/// Longest a single network read or write of the [`Client`] may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A temporary directory, removed on drop unless [`keep`](TempDir::keep) is set.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    /// Leave the directory in place (for a look after a failure).
    pub keep: bool,
}

impl TempDir {
    /// A fresh empty directory `pop3-TAG-PID-N` under the system temp dir; panics when it
    /// cannot be made (for tests; see [`TempDir::try_new`]).
    pub fn new(tag: &str) -> TempDir {
        TempDir::try_new(tag).unwrap_or_else(|e| panic!("temp dir {tag}: {e}"))
    }

    pub fn try_new(tag: &str) -> std::io::Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "pop3-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `rel`, creating parent directories; panics on failure.
    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A port free for both UDP and TCP on 127.0.0.1, for a daemon the caller configures itself
/// (a KDC, Postfix, Dovecot, PostgreSQL) and which cannot be handed a bound socket.
pub fn free_port() -> std::io::Result<u16> {
    // Below the kernel's ephemeral range (32768-60999 by default): a port handed out by
    // binding port 0 is an ephemeral one, and any outgoing connection of a test running in
    // parallel may take it as its source port before the daemon binds it.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..200 {
        let n = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed));
        let port = 20_000 + (n % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no port free for TCP and UDP in 20000-31999 on 127.0.0.1",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_go_unless_kept() {
        let dir = TempDir::new("testbed");
        dir.write("a/b.txt", "x");
        let path = dir.path().to_path_buf();
        assert!(path.join("a/b.txt").is_file());
        drop(dir);
        assert!(!path.exists());
        let mut kept = TempDir::new("testbed");
        kept.keep = true;
        let path = kept.path().to_path_buf();
        drop(kept);
        assert!(path.is_dir());
        std::fs::remove_dir_all(path).expect("clean up");
    }

    #[test]
    fn free_ports_are_free_and_below_the_ephemeral_range() {
        let port = free_port().expect("a port");
        assert!((20_000..32_000).contains(&port));
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
    }
}
