//! `cargo xtask cluster-test [--rounds N] [--seed S]`: several pop3d nodes on one PostgreSQL.
//!
//! One throw-away PostgreSQL (`testbed::pg`, run as the `postgres` user when we are root) and
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
//! The pieces: [`ClusterEnv`] (PostgreSQL, the nodes, the store's check) in `env`, [`Node`]
//! in `node`, nginx in `nginx` (started with `testbed::nginx`), the looping clients in `load`,
//! and one file per scenario in `scenarios`; this file runs them in order.

use std::time::{Duration, Instant};

use load::{Load, LoadStats};

use crate::faults::{self, Mix};
use crate::harness::{self, Bins, Rng, TempDir};

mod env;
mod load;
mod nginx;
mod node;
mod scenarios;

pub use env::{free_port, ClusterEnv, Disruption};
pub use nginx::{fetch_nginx, missing_nginx_libraries, nginx_cache, unpack_nginx};
pub use node::Node;

pub const DEFAULT_ROUNDS: u32 = 20;
pub const NODES: usize = 3;
/// The nodes' lock lease in seconds (`--lock-lease` of [`NODE_FLAGS`]): short, so that the
/// frozen node loses it soon.
pub const LEASE_SECS: u64 = 2;
/// The flags of the fault rounds' pop3d: lock lease 2 s, shutdown grace 5 s.
pub const NODE_FLAGS: &[&str] = faults::SERVER_FLAGS;
/// Rounds with a PostgreSQL restart, and rolling rounds per node.
const STORE_RESTARTS: u32 = 3;
const ROLLING_PER_NODE: u32 = 2;
/// Clients of the looping load, and their accounts' password.
const LOAD_CLIENTS: usize = 4;
const LOAD_PASS: &str = "load pw";

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
    let dist = unpack_nginx(&dir.path().join("nginx-dist"))?;
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
        timed(env, figures, "nginx stream proxy", Some("nginx"), |env| {
            scenarios::nginx_stream(env, dist, violations)
        })?;
        // On a database of its own, the nodes started with the cluster flags.
        timed(
            env,
            figures,
            "nginx mail proxy and auth_http",
            None,
            |env| scenarios::mail::run(env, dist, violations),
        )?;
    }
    timed(env, figures, "[IN-USE]", Some("inuse"), |env| {
        scenarios::in_use(env, violations)
    })?;
    timed(
        env,
        figures,
        "fencing (2 freezes)",
        Some("fencing"),
        |env| {
            for holder_stays in [true, false] {
                scenarios::fencing(env, holder_stays, violations)?;
            }
            Ok(())
        },
    )?;
    timed(
        env,
        figures,
        "restart clears leases",
        Some("restart"),
        |env| scenarios::restart_clears_leases(env, violations),
    )?;

    let plans = [
        ("kill -9", "kills", None, Mix::Kills, rounds),
        (
            "PostgreSQL restart",
            "pgrestart",
            Some(Disruption::Postgres),
            Mix::Disruptions,
            STORE_RESTARTS,
        ),
        (
            "rolling restart",
            "rolling",
            Some(Disruption::Rolling),
            Mix::Disruptions,
            ROLLING_PER_NODE * NODES as u32,
        ),
    ];
    for (name, db, disruption, mix, n) in plans {
        env.fresh_database(db)?;
        let bins = env.bins.clone();
        let data = env.root.join(format!("popadm-{db}"));
        let mut servers = env.rounds(disruption);
        let (stats, found) = faults::rounds_on(&mut servers, &bins, &data, n, rng.next_u64(), mix)?;
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

/// Runs `scenario`, on a fresh database `db` where one is named; its time goes to `figures`
/// as `name`.
fn timed(
    env: &mut ClusterEnv,
    figures: &mut Vec<String>,
    name: &str,
    db: Option<&str>,
    scenario: impl FnOnce(&mut ClusterEnv) -> Result<(), String>,
) -> Result<(), String> {
    let t = Instant::now();
    if let Some(db) = db {
        env.fresh_database(db)?;
    }
    scenario(env)?;
    figures.push(format!("{name} {:.1} s", t.elapsed().as_secs_f64()));
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
