//! nginx in front of pop3d nodes, for the cluster test and the bench: unpacked from Debian
//! packages (never installed), run in a prefix of its own on loopback ports, stopped on drop.
//!
//! [`Dist`] is where the binary and its dynamic modules are; [`Config`] is what goes into
//! `nginx.conf` (the modules loaded, error log and pid file in the prefix, then the caller's
//! `mail { ... }` and `stream { ... }` blocks); [`Nginx::start`] runs
//! `nginx -p PREFIX -e ERROR_LOG -c CONF -g 'daemon off; master_process on;'` and returns once
//! nginx has written its pid file, which it does after binding its listeners.

use std::ffi::OsStr;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest nginx may take to write its pid file.
const START_LIMIT: Duration = Duration::from_secs(20);
/// The longest nginx may take to exit on SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The flags of a pop3d node behind nginx: its proxied listener `proxied` (the PROXY header
/// first, trusting loopback: nginx's address here), which it advertises in the node table,
/// the cluster secret in `key_file`, and a heartbeat every `heartbeat` seconds. The test
/// bed's clients log in without TLS through nginx, so the endpoint's cleartext policy is
/// `always` (an explicit opt-out: the printed nginx block then has no `starttls only`).
pub fn node_flags(proxied: SocketAddr, key_file: &Path, heartbeat: u64) -> Vec<String> {
    [
        "--listen-proxy",
        &proxied.to_string(),
        "--trusted-proxy",
        "127.0.0.1/32",
        "--advertise",
        &proxied.to_string(),
        "--cluster-key-file",
        &key_file.display().to_string(),
        "--heartbeat",
        &heartbeat.to_string(),
        "--auth-http-cleartext",
        "always",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The `mail { ... }` block that `pop3d FLAGS --print-nginx-config LISTEN` prints for a
/// cluster whose nodes run with `flags` and whose nginx listens on `listen`.
pub fn mail_block<I, S>(pop3d: &Path, flags: I, listen: SocketAddr) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let printed = crate::run_checked(
        Command::new(pop3d)
            .args(flags)
            .arg("--print-nginx-config")
            .arg(listen.to_string()),
        "pop3d --print-nginx-config",
    )?;
    Ok(String::from_utf8_lossy(&printed.stdout).into_owned())
}

/// An nginx binary and the directory of its dynamic modules.
pub struct Dist {
    binary: PathBuf,
    modules: PathBuf,
}

impl Dist {
    /// Unpacks the newest `.deb` in `cache` of each of `packages` into `dir` (`dpkg-deb -x`);
    /// `Ok(None)` when one of them is not in `cache`.
    pub fn unpack(cache: &Path, packages: &[&str], dir: &Path) -> Result<Option<Dist>, String> {
        let files: Vec<String> = std::fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".deb"))
            .collect();
        let mut debs = Vec::new();
        for package in packages {
            let prefix = format!("{package}_");
            match files.iter().filter(|f| f.starts_with(&prefix)).max() {
                Some(f) => debs.push(cache.join(f)),
                None => return Ok(None),
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for deb in debs {
            let what = format!("dpkg-deb -x {}", deb.display());
            crate::run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir), &what)?;
        }
        let dist = Dist {
            binary: dir.join("usr/sbin/nginx"),
            modules: dir.join("usr/lib/nginx/modules"),
        };
        if !dist.binary.is_file() {
            return Err(format!("{} missing after unpacking", dist.binary.display()));
        }
        Ok(Some(dist))
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// A dynamic module (`ngx_mail_module.so`, `ngx_stream_module.so`).
    pub fn module(&self, file: &str) -> PathBuf {
        self.modules.join(file)
    }
}

/// What `nginx.conf` says.
pub struct Config<'a> {
    /// Dynamic modules to load (`load_module`).
    pub modules: Vec<PathBuf>,
    /// The error log's level (`info`, `warn`).
    pub log_level: &'a str,
    /// `worker_processes`: a number or `auto`.
    pub workers: &'a str,
    /// `worker_connections`.
    pub connections: u32,
    /// The rest: `mail { ... }` and/or `stream { ... }` blocks, on loopback ports only.
    pub blocks: &'a str,
}

impl Config<'_> {
    /// The text of `nginx.conf` for `prefix`.
    pub fn text(&self, prefix: &Path) -> String {
        let modules: String = self
            .modules
            .iter()
            .map(|m| format!("load_module {};\n", m.display()))
            .collect();
        format!(
            "{modules}error_log {} {};\npid {};\nworker_processes {};\n\
             events {{ worker_connections {}; }}\n{}\n",
            prefix.join("error.log").display(),
            self.log_level,
            prefix.join("nginx.pid").display(),
            self.workers,
            self.connections,
            self.blocks,
        )
    }
}

/// A running nginx (master and workers) in its own prefix; stopped on drop.
pub struct Nginx {
    child: Child,
    prefix: PathBuf,
}

impl Nginx {
    /// Writes `PREFIX/nginx.conf` from `config` and runs `binary` on it in the foreground
    /// (stdout and stderr to `PREFIX/stderr.log`); returns once the pid file is there.
    pub fn start(binary: &Path, prefix: &Path, config: &Config) -> Result<Nginx, String> {
        let at = |e: std::io::Error| format!("{}: {e}", prefix.display());
        std::fs::create_dir_all(prefix.join("logs")).map_err(at)?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config.text(prefix)).map_err(at)?;
        let out = File::create(prefix.join("stderr.log")).map_err(at)?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(prefix)
            // The startup log before the configuration is read (Debian's default is in /var).
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off; master_process on;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(at)?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let mut nginx = Nginx {
            child,
            prefix: prefix.to_path_buf(),
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if prefix.join("nginx.pid").is_file() {
                return Ok(nginx);
            }
            if !matches!(nginx.child.try_wait(), Ok(None)) || Instant::now() > deadline {
                return Err(format!("nginx did not start:\n{}", nginx.error_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the master still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }

    /// SIGTERM (fast shutdown of master and workers), up to 10 s, then SIGKILL. Whether it
    /// exited on SIGTERM (or had exited before).
    pub fn stop(&mut self) -> bool {
        let mut clean = true;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_LIMIT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            clean = !matches!(self.child.try_wait(), Ok(None));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        clean
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_modules_logs_and_blocks() {
        let config = Config {
            modules: vec![PathBuf::from("/m/ngx_mail_module.so")],
            log_level: "warn",
            workers: "auto",
            connections: 4096,
            blocks: "mail {\n}\n",
        };
        let text = config.text(Path::new("/p"));
        assert_eq!(
            text,
            "load_module /m/ngx_mail_module.so;\nerror_log /p/error.log warn;\n\
             pid /p/nginx.pid;\nworker_processes auto;\n\
             events { worker_connections 4096; }\nmail {\n}\n\n"
        );
    }

    #[test]
    fn a_missing_package_is_no_dist() {
        let dir = std::env::temp_dir().join(format!("testbed-nginx-{}", std::process::id()));
        let found = Dist::unpack(&dir.join("no-cache"), &["nginx"], &dir.join("dist"));
        assert!(matches!(found, Ok(None)), "{:?}", found.err());
        assert!(!dir.join("dist").exists());
    }
}
