//! S6, cluster shapes: the same users and mail served three ways, measured side by side by
//! the suite:
//!
//! - (a) one pop3d on its SQLite store (the default);
//! - (b) one pop3d on a throw-away PostgreSQL (`testbed::pg`: `initdb` in a temp directory, run as
//!   the `postgres` user when we are root);
//! - (c) three pop3d nodes on that PostgreSQL (a database of their own, copied from (b)'s)
//!   behind nginx's mail proxy: node 1 serves the `auth_http` endpoint, which checks the
//!   password and names a node by rendezvous hashing; nginx passes the client on to that
//!   node's proxied listener with a PROXY header and a signed ticket as the password.
//!
//! Every pop3d runs with its credential cache off, so each session runs argon2id exactly once
//! in every shape: in pop3d's PASS for (a) and (b), in the `auth_http` endpoint for (c) (the
//! node then checks the ticket, no hash). nginx is the binary `cargo xtask bench` unpacked
//! from the Debian packages; without it (c) is left out.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use testbed::nginx::{Config, Nginx};

use crate::procs::{self, ServerProcess};
use crate::suite::{pop3d_command, provision, Endpoint, Popadm};

/// Nodes of shape (c).
const NODES: usize = 3;
/// Their heartbeat, seconds.
const HEARTBEAT: u64 = 1;
const DB_SINGLE: &str = "s6single";
const DB_CLUSTER: &str = "s6cluster";

/// What the shapes are built from.
pub struct Setup<'a> {
    pub pop3d: &'a Path,
    pub popadm: &'a Path,
    /// The suite's temporary directory; its `mbox/` holds the users' mail.
    pub tmp: &'a Path,
    pub users: &'a [String],
    /// nginx and its mail module.
    pub nginx: Option<(&'a Path, &'a Path)>,
}

/// The running shapes: (a), (b) and, with nginx, (c), in this order.
pub struct Shapes {
    pub endpoints: Vec<Endpoint>,
    /// What the report should say about how they were set up.
    pub notes: Vec<String>,
    /// Dropped (stopped) after the endpoints.
    _pg: testbed::pg::Cluster,
}

impl Shapes {
    pub fn stop(&mut self) {
        for ep in &mut self.endpoints {
            ep.stop();
        }
    }
}

/// Provisions the stores and starts the shapes; `Ok(None)` (and why, on stderr) when
/// PostgreSQL is not installed.
pub fn start(s: &Setup) -> Result<Option<Shapes>> {
    let Some(pg) = testbed::pg::Cluster::start().map_err(|e| anyhow!("PostgreSQL: {e}"))? else {
        return Ok(None);
    };
    let dir = s.tmp.join("s6");
    std::fs::create_dir_all(&dir)?;
    let t0 = Instant::now();
    let sqlite = dir.join("sqlite");
    provision(
        &Popadm {
            bin: s.popadm,
            data: &sqlite,
            store: None,
        },
        s.tmp,
        s.users,
        &[],
        false,
    )?;
    pg.create_database(DB_SINGLE).map_err(|e| anyhow!(e))?;
    let single = pg.url(DB_SINGLE);
    provision(
        &Popadm {
            bin: s.popadm,
            data: &dir.join("popadm"),
            store: Some(&single),
        },
        s.tmp,
        s.users,
        &[],
        false,
    )?;
    // The cluster's database: a copy of (b)'s, the same rows and the same hashes.
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE {DB_CLUSTER} TEMPLATE {DB_SINGLE}"),
    )
    .map_err(|e| anyhow!(e))?;
    eprintln!(
        "pop3-bench: S6: provisioned SQLite and PostgreSQL in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let pg_pid = pg.pid().context("PostgreSQL's pid")?;

    let mut endpoints = Vec::new();
    let port = procs::free_port()?;
    let cmd = pop3d_command(s.pop3d, &sqlite, port, "0");
    let a = ServerProcess::start("sqlite", cmd, &dir.join("sqlite.log"), port)?;
    endpoints.push(Endpoint::new("1 node, SQLite", port, 0, a));

    let port = procs::free_port()?;
    let mut cmd = pop3d_command(s.pop3d, &dir.join("pg1"), port, "0");
    cmd.args(["--store", &single, "--node-id", "single"]);
    let b = ServerProcess::start("postgres", cmd, &dir.join("postgres.log"), port)?;
    let mut b = Endpoint::new("1 node, PostgreSQL", port, 0, b);
    b.store_pids.push(pg_pid);
    endpoints.push(b);

    let mut notes = vec![format!(
        "S6 runs the S1 and S2 sessions (c=16, credential caches off: one argon2id check per \
         session in every shape) against (a) one pop3d on SQLite, (b) one pop3d on PostgreSQL \
         {} (a throw-away cluster: fsync=off, synchronous_commit on, shared_buffers 32MB) and \
         (c) {NODES} pop3d nodes on that PostgreSQL behind nginx's mail proxy (auth_http on \
         node 1, a signed ticket to the node it names, PROXY protocol). All shapes share the \
         machine's CPUs with each other's idle processes and with the load generator, so (c) \
         shows the cost of the extra hops (nginx, auth_http, the ticket), not scale-out. \
         Server CPU sums every pop3d node, nginx and PostgreSQL (backends included).",
        pg_version(&pg)
    )];
    match s.nginx {
        Some((nginx, module)) => {
            let mut c =
                cluster(s, &pg, &dir, nginx, module).context("S6 (c): three nodes behind nginx")?;
            c.store_pids.push(pg_pid);
            endpoints.push(c);
        }
        None => {
            let why = "S6 (c), three nodes behind nginx, left out: no nginx (cargo xtask bench \
                       passes the one cargo xtask deps fetched)";
            eprintln!("pop3-bench: {why}");
            notes.push(why.to_string());
        }
    }
    Ok(Some(Shapes {
        endpoints,
        notes,
        _pg: pg,
    }))
}

fn pg_version(pg: &testbed::pg::Cluster) -> String {
    pg.psql("postgres", "SHOW server_version")
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// Shape (c): the nodes on [`DB_CLUSTER`], and nginx with the `mail` block pop3d prints for
/// node 1's configuration. nginx is the endpoint's first process (stopped first).
fn cluster(
    s: &Setup,
    pg: &testbed::pg::Cluster,
    dir: &Path,
    nginx: &Path,
    module: &Path,
) -> Result<Endpoint> {
    let url = pg.url(DB_CLUSTER);
    let key = dir.join("cluster.key");
    write_secret(&key)?;
    let auth_http = format!("127.0.0.1:{}", procs::free_port()?);
    let front = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
    let mut nodes = Vec::new();
    let mut node1: Vec<std::ffi::OsString> = Vec::new();
    for i in 1..=NODES {
        let (port, proxied) = (procs::free_port()?, procs::free_port()?);
        let proxied = SocketAddr::from(([127, 0, 0, 1], proxied));
        let id = format!("n{i}");
        let mut cmd = pop3d_command(s.pop3d, &dir.join(&id), port, "0");
        cmd.args(["--store", &url, "--node-id", &id])
            .args(testbed::nginx::node_flags(proxied, &key, HEARTBEAT));
        if i == 1 {
            cmd.args(["--auth-http", &auth_http]);
            node1 = cmd.get_args().map(ToOwned::to_owned).collect();
        }
        let log = dir.join(format!("{id}.log"));
        nodes.push(ServerProcess::start(&id, cmd, &log, port)?);
    }
    wait_for_nodes(pg)?;
    let mail = testbed::nginx::mail_block(s.pop3d, &node1, front).map_err(|e| anyhow!(e))?;
    let config = Config {
        modules: vec![module.to_path_buf()],
        log_level: "warn",
        workers: "auto",
        connections: 4096,
        blocks: &mail,
    };
    let started = Nginx::start(nginx, &dir.join("nginx"), &config).map_err(|e| anyhow!(e))?;
    let mut processes = vec![ServerProcess::nginx("nginx", started, front.port())?];
    processes.extend(nodes);
    Ok(Endpoint {
        name: format!("{NODES} nodes + nginx"),
        plain: front.port(),
        tls: 0,
        processes,
        store_pids: Vec::new(),
    })
}

/// 32 random bytes, hex, readable by us only.
fn write_secret(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, format!("{hex}\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Waits (at most 30 s) until every node has a heartbeat row, so that the endpoint spreads
/// users over all of them from the first measured session.
fn wait_for_nodes(pg: &testbed::pg::Cluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = pg
            .psql(DB_CLUSTER, "SELECT count(*) FROM nodes")
            .map_err(|e| anyhow!(e))?;
        if n.parse::<usize>().is_ok_and(|n| n >= NODES) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {n} of {NODES} nodes in the node table after 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
