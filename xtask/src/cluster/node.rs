//! One pop3d node of the cluster: its id, its fixed addresses, its process while it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{LEASE_SECS, NODE_FLAGS};
use crate::harness::{self, Bins, Pop3d};

pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// Its backend listener for proxies (`--listen-proxy`, trusting 127.0.0.1: the PROXY
    /// protocol header first).
    pub proxy_addr: SocketAddr,
    dir: PathBuf,
    pub starts: u32,
    pub process: Option<Pop3d>,
    /// Its `--lock-lease` in seconds (default [`LEASE_SECS`]).
    pub lease: u64,
    /// Flags beyond [`NODE_FLAGS`] and the store, node id and listener.
    pub extra: Vec<String>,
}

impl Node {
    /// Node `id` listening on `addr` and, for proxies, on `proxy_addr`; it advertises `addr`
    /// in the node table and heartbeats every second, so that a drain is seen at once.
    pub fn new(root: &Path, id: &str, addr: SocketAddr, proxy_addr: SocketAddr) -> Node {
        Node {
            id: id.to_owned(),
            addr,
            proxy_addr,
            dir: root.join(id),
            starts: 0,
            process: None,
            lease: LEASE_SECS,
            extra: [
                "--listen-proxy",
                &proxy_addr.to_string(),
                "--trusted-proxy",
                "127.0.0.1/32",
                "--advertise",
                &addr.to_string(),
                "--heartbeat",
                "1",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }

    /// The log of the current (or last) process.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("pop3d-{}.log", self.starts))
    }

    /// Starts the node on `store` (a new process, same id and address).
    pub fn start(&mut self, bins: &Bins, store: &str) -> Result<(), String> {
        self.kill9();
        self.starts += 1;
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let mut flags: Vec<&str> = vec!["--store", store, "--node-id", &self.id];
        let lease = self.lease.to_string();
        let mut base = NODE_FLAGS.iter();
        while let Some(flag) = base.next() {
            flags.push(flag);
            if *flag == "--lock-lease" {
                base.next();
                flags.push(&lease);
            }
        }
        flags.extend(self.extra.iter().map(String::as_str));
        let listen = self.addr.to_string();
        let log = self.log();
        let p = Pop3d::start_at(bins, &self.dir.join("data"), &log, &listen, &flags)
            .map_err(|e| format!("node {}: {e}", self.id))?;
        self.process = Some(p);
        Ok(())
    }

    pub fn alive(&mut self) -> bool {
        self.process.as_mut().is_some_and(Pop3d::alive)
    }

    pub fn pid(&mut self) -> Option<u32> {
        self.process
            .as_mut()
            .and_then(|p| if p.alive() { Some(p.pid()) } else { None })
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    pub fn sigstop(&mut self) {
        if let Some(pid) = self.pid() {
            harness::signal(pid, "STOP");
        }
    }

    pub fn sigcont(&mut self) {
        if let Some(pid) = self.pid() {
            harness::signal(pid, "CONT");
        }
    }

    /// SIGTERM, up to `grace` for the process to end (then SIGKILL). An error when it had to
    /// be killed or did not exit 0 (a process that was not running is no error: it was
    /// killed on purpose).
    pub fn stop(&mut self, grace: Duration) -> Result<(), String> {
        let Some(mut p) = self.process.take() else {
            return Ok(());
        };
        if !p.alive() {
            return Ok(());
        }
        harness::signal(p.pid(), "TERM");
        let log = self.log();
        if !p.wait_exit(grace) {
            p.kill9();
            return Err(format!(
                "node {} did not stop on SIGTERM within {} s (log {})",
                self.id,
                grace.as_secs(),
                log.display()
            ));
        }
        match p.exit_status() {
            Some(status) if status.success() => Ok(()),
            status => Err(format!(
                "node {} exited with {status:?} on SIGTERM (log {})",
                self.id,
                log.display()
            )),
        }
    }

    /// SIGTERM, up to `grace` for the process to end, then a new process with the same id and
    /// address. What went wrong stopping it ([`Node::stop`]), if anything: it is started
    /// again all the same.
    pub fn restart(
        &mut self,
        bins: &Bins,
        store: &str,
        grace: Duration,
    ) -> Result<Option<String>, String> {
        let stopped = self.stop(grace);
        self.start(bins, store)?;
        Ok(stopped.err())
    }

    /// The first lines of a panic in any of its logs.
    pub fn panics(&self) -> Vec<String> {
        (1..=self.starts)
            .filter_map(|n| {
                let path = self.dir.join(format!("pop3d-{n}.log"));
                let text = std::fs::read_to_string(&path).ok()?;
                let at = text.find("panicked at")?;
                let excerpt: String = text[at..].lines().take(2).collect::<Vec<_>>().join(" ");
                Some(format!("node {} ({}): {excerpt}", self.id, path.display()))
            })
            .collect()
    }
}
