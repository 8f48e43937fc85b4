//! A throw-away PostgreSQL cluster for tests: `initdb` into a temp directory, a server on a
//! free loopback port with its unix socket in that directory, stopped and removed when the
//! [`Cluster`] is dropped.
//!
//! Debian's server binaries live in `/usr/lib/postgresql/VERSION/bin` (the newest is taken;
//! `POP3D_PG_BINDIR` overrides). `initdb` refuses to run as root, so as root every server
//! command runs as the `postgres` user (`runuser`), with the directory handed to it.
//!
//! A watchdog shell process stops the server and removes the directory once the test process
//! is gone, so a cluster kept in a `static` (never dropped) or a test killed halfway leaves
//! nothing running. It knows nothing of the store: databases are made with `psql`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest the watchdog outlives nothing: it checks twice a second for at most this many
/// checks (an hour), then stops the server anyway.
const WATCHDOG_CHECKS: u32 = 7200;

/// A running test cluster. Superuser `postgres`, trust authentication, loopback only.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
}

/// The directory of PostgreSQL's server programs, if it is installed.
pub fn bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("POP3D_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl Cluster {
    /// Starts a fresh cluster; `Ok(None)` when PostgreSQL is not installed here.
    pub fn start() -> Result<Option<Cluster>, String> {
        let Some(bindir) = bindir() else {
            return Ok(None);
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "pgtest-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut cluster = Cluster {
            dir,
            bindir,
            port: 0,
            as_postgres: running_as_root(),
            stopped: false,
        };
        if cluster.as_postgres {
            cluster.checked(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&cluster.dir),
                "chown",
            )?;
        }
        cluster.spawn_watchdog()?;
        let initdb = cluster.server_command("initdb");
        let mut initdb = initdb;
        initdb
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .arg("--no-sync");
        cluster.checked(&mut initdb, "initdb")?;
        // The port may be taken between our look and the server's bind: a few tries.
        let mut last = String::new();
        for _ in 0..3 {
            cluster.port = crate::free_port().map_err(|e| e.to_string())?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(Some(cluster)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A server program, run as `postgres` when we are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn checked(&self, cmd: &mut Command, what: &str) -> Result<(), String> {
        crate::run_checked(cmd, what).map(drop)
    }

    /// Starts the server. `fsync=off` for speed: the page cache outlives the server, only a
    /// machine crash could lose data; `synchronous_commit` stays on, so a commit survives an
    /// immediate stop (a crash of the server) as in production.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c full_page_writes=off \
             -c max_connections=300 -c shared_buffers=32MB",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let mut start = self.server_command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.checked(&mut start, "pg_ctl start").map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\nserver log:\n{tail}")
        })
    }

    /// Stops the server and removes the directory once this process is gone.
    fn spawn_watchdog(&self) -> Result<(), String> {
        let script = format!(
            r#"i=0
while [ "$i" -lt {WATCHDOG_CHECKS} ] && kill -0 "$1" 2>/dev/null; do sleep 0.5; i=$((i+1)); done
if [ -f "$3/data/postmaster.pid" ]; then
  if [ "$4" = 1 ]; then runuser -u postgres -- "$2/pg_ctl" -D "$3/data" stop -m immediate
  else "$2/pg_ctl" -D "$3/data" stop -m immediate; fi
fi
rm -rf "$3""#
        );
        Command::new("sh")
            .args(["-c", &script, "pgtest-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.bindir)
            .arg(&self.dir)
            .arg(if self.as_postgres { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| format!("starting the watchdog: {e}"))
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for database `db` as the superuser over loopback TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` in database `db` with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = crate::run_checked(
            Command::new(self.bindir.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", db, "-X", "-q", "-A", "-t"])
                .args(["-v", "ON_ERROR_STOP=1", "-c", sql]),
            &format!("psql {sql:?}"),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<(), String> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(drop)
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Restarts the server on the same port after an immediate stop, which cuts every
    /// connection (as a crash or failover would).
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.stopped = false;
        self.pg_ctl_start()
    }

    /// Stops the server (immediate mode: a test cluster needs no clean shutdown).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid();
        let mut stop = self.server_command("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w", "-t", "20"]);
        if self.checked(&mut stop, "pg_ctl stop").is_err() {
            if let Some(pid) = pid {
                // Our own postmaster only, by its pid.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster of the calling test's own; `None`, after a printed reason, when PostgreSQL is not
/// installed, unless `POP3D_REQUIRE_POSTGRES` is set (CI), in which case that is a failure.
pub fn own(test: &str) -> Option<Cluster> {
    match Cluster::start() {
        Ok(Some(cluster)) => Some(cluster),
        Ok(None) => {
            assert!(
                std::env::var_os("POP3D_REQUIRE_POSTGRES").is_none(),
                "POP3D_REQUIRE_POSTGRES is set but PostgreSQL is not installed \
                 (no /usr/lib/postgresql/*/bin/initdb; cargo xtask deps installs it)"
            );
            eprintln!("skipped {test}: PostgreSQL is not installed (cargo xtask deps installs it)");
            None
        }
        Err(e) => panic!("starting a test PostgreSQL cluster: {e}"),
    }
}

/// One cluster for a whole test process, started by the first caller (see [`own`] for when
/// there is none). It is never dropped: the watchdog stops it when the process ends.
pub fn shared(test: &str) -> Option<&'static Cluster> {
    static CLUSTER: std::sync::OnceLock<Option<Cluster>> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| own(test)).as_ref()
}

/// A fresh database on the [`shared`] cluster, named uniquely; `None` when PostgreSQL is not
/// installed (the reason is printed once per test as `skipped: ...`).
pub fn fresh_database(test: &str) -> Option<(&'static Cluster, String)> {
    let Some(cluster) = shared(test) else {
        eprintln!("skipped {test}: PostgreSQL is not installed");
        return None;
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = cluster.create_database(&name) {
        panic!("creating test database {name}: {e}");
    }
    Some((cluster, name))
}
