//! `cargo xtask faults [--rounds N] [--seed S]`: crash safety under `kill -9`.
//!
//! Each round runs, at once: one POP3 session per account (survey, a RETR, DELE of a random
//! subset, sometimes RSET, sometimes a drop, then QUIT) and a few deliveries, each either a
//! `popadm deliver` process or an LMTP transaction with pop3d (where the servers have an LMTP
//! listener: the single pop3d does), some of several MiB, so a delivery takes long enough to be
//! interrupted. One fault is injected per round, chosen at random: `kill -9` of pop3d a few
//! milliseconds after a QUIT was sent (inside UPDATE), `kill -9` of pop3d at a random moment
//! (LMTP deliveries in flight die with it), `kill -9` of a delivering popadm or an LMTP client
//! that vanishes mid-DATA, or none. Then pop3d is restarted if it died, and the maildrops are checked against
//! a ledger of everything sent:
//!
//! - a delivery whose popadm exited 0 is present exactly once, byte for byte, unless a session
//!   deleted it with a QUIT that was answered `+OK`;
//! - a delivery that was killed or refused is absent or present whole, never partial, never
//!   twice, and once seen absent it never appears later;
//! - a session that did not send QUIT deleted nothing; one whose QUIT got `+OK` deleted all it
//!   marked; one whose QUIT got `-ERR` or no reply deleted all or nothing of what it marked;
//! - UIDs of messages never change, across sessions and restarts;
//! - no maildrop stays `[IN-USE]` longer than the lock lease (2 s here) plus a margin;
//! - `PRAGMA integrity_check` says `ok`.
//!
//! The rounds run against [`Servers`]: here one pop3d on SQLite ([`Single`]); the cluster test
//! (`crate::cluster`) runs the same rounds and ledger against three nodes on one PostgreSQL,
//! with a node as the victim of each kill, or with a restart of the database or of a node
//! ([`Mix::Disruptions`]) in place of the kill.
//!
//! The pieces: one POP3 session of a round, and the errors a disruption allows, in `session`;
//! this file runs the rounds and keeps and checks the ledger.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use session::{session, KillAtQuit, Outcome, SessionResult};

use crate::harness::{self, Bins, Delivery, KillTrigger, Pop3d, Rng, Seen, TempDir};

mod session;

pub use session::allowed_kind;

/// Where the rounds run: one pop3d ([`Single`]) or the nodes of a cluster.
pub trait Servers {
    /// Starts every server that is not running; the address of each, in a fixed order.
    fn ensure(&mut self) -> Result<Vec<SocketAddr>, String>;
    /// The process id of server `i`, while it runs.
    fn pid(&mut self, i: usize) -> Option<u32>;
    /// `kill -9` of server `i`.
    fn kill9(&mut self, i: usize);
    /// Waits up to `limit` for server `i` to be gone (after a kill armed in advance).
    fn wait_exit(&mut self, i: usize, limit: Duration);
    /// The disruption of a [`Mix::Disruptions`] round aimed at server `i`, while sessions
    /// run; what it did, for the log. An error ends the run.
    fn disrupt(&mut self, i: usize, rng: &mut Rng) -> Result<String, String>;
    /// The LMTP listener of server `i`, if it has one: deliveries then go there too.
    fn lmtp(&mut self, _i: usize) -> Option<SocketAddr> {
        None
    }
    /// How server `i` fared (its starts, its exit status), for a violation's text.
    fn describe(&mut self, i: usize) -> String;
    /// The store's own consistency check after a round.
    fn check(&mut self) -> Result<(), String>;
    /// Stops every server gracefully at the end; what went wrong.
    fn finish(&mut self) -> Vec<String>;
}

/// What is done to the servers during a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// `kill -9` of a server inside or after QUIT or at random, or of a delivering popadm.
    Kills,
    /// [`Servers::disrupt`] every round (aimed at each server in turn). Sessions may then
    /// only see `[IN-USE]`, `[SYS/TEMP]`, refused or closed connections; a session that could
    /// not log in tries the next server, a few times.
    Disruptions,
}

pub const DEFAULT_ROUNDS: u32 = 200;
const USERS: usize = 3;
/// How long a maildrop may stay `[IN-USE]` before it counts as held past its lease: the lease
/// (`--lock-lease 2` below), one second of rounding (leases are whole unix seconds), and room
/// for a loaded machine.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(2 + 1 + 3);
pub const SERVER_FLAGS: &[&str] = &[
    "--lock-lease",
    "2",
    "--shutdown-grace",
    "5",
    "--log",
    "info",
];

/// `cargo xtask faults [--rounds N] [--seed S]`: builds the binaries, then [`run`].
pub fn command(args: &[String]) -> Result<(), String> {
    harness::only_flags(args, &["--rounds", "--seed"])?;
    let rounds = harness::flag(args, "--rounds")?.unwrap_or(DEFAULT_ROUNDS);
    let seed = harness::flag(args, "--seed")?.unwrap_or_else(harness::clock_seed);
    let bins = Bins::build()?;
    run(&bins, rounds, seed)
}

/// Runs `rounds` fault rounds with `seed` against already built binaries, prints the summary,
/// and fails when any invariant was violated (or the harness itself could not go on).
pub fn run(bins: &Bins, rounds: u32, seed: u64) -> Result<(), String> {
    eprintln!("xtask faults: {rounds} rounds, seed {seed} (repeat with --seed {seed})");
    let mut dir = TempDir::new("faults")?;
    let data = dir.path().join("data");
    let mut single = Single {
        bins,
        root: dir.path().to_path_buf(),
        data: data.clone(),
        server: None,
        starts: 0,
    };
    let (stats, violations) = rounds_on(&mut single, bins, &data, rounds, seed, Mix::Kills)?;
    println!("xtask faults: {stats}");
    harness::verdict(&violations, seed, &mut dir)
}

/// Makes `USERS` accounts through `bins` (whose `store` says where), runs `rounds` rounds of
/// `mix` against `servers`, stops them, and returns the figures and the violations found.
/// An error means the harness itself could not go on.
pub fn rounds_on(
    servers: &mut dyn Servers,
    bins: &Bins,
    data: &Path,
    rounds: u32,
    seed: u64,
    mix: Mix,
) -> Result<(Stats, Vec<String>), String> {
    let started = Instant::now();
    let mut h = Harness::new(servers, bins, data, seed, mix)?;
    let result = (0..rounds).try_for_each(|r| h.round(r));
    h.finish();
    h.stats.seconds = started.elapsed().as_secs_f64();
    result?;
    Ok((h.stats, h.violations))
}

/// One pop3d on a SQLite data directory, restarted when it died.
struct Single<'a> {
    bins: &'a Bins,
    root: PathBuf,
    data: PathBuf,
    server: Option<Pop3d>,
    starts: u32,
}

impl Servers for Single<'_> {
    fn ensure(&mut self) -> Result<Vec<SocketAddr>, String> {
        if let Some(s) = self.server.as_mut() {
            if s.alive() {
                return Ok(vec![s.addr]);
            }
        }
        self.server = None;
        self.starts += 1;
        let log = self.root.join(format!("pop3d-{}.log", self.starts));
        let flags = [SERVER_FLAGS, &["--listen-lmtp", "127.0.0.1:0"]].concat();
        let s = Pop3d::start(self.bins, &self.data, &log, &flags)?;
        let addr = s.addr;
        self.server = Some(s);
        Ok(vec![addr])
    }

    fn pid(&mut self, _: usize) -> Option<u32> {
        self.server
            .as_mut()
            .and_then(|s| if s.alive() { Some(s.pid()) } else { None })
    }

    fn kill9(&mut self, _: usize) {
        if let Some(s) = self.server.as_mut() {
            s.kill9();
        }
    }

    fn wait_exit(&mut self, _: usize, limit: Duration) {
        if let Some(s) = self.server.as_mut() {
            s.wait_exit(limit);
        }
    }

    fn lmtp(&mut self, _: usize) -> Option<SocketAddr> {
        let s = self.server.as_ref()?;
        let lmtp = s.listeners.iter().find(|(kind, _)| kind == "lmtp");
        lmtp.map(|(_, addr)| *addr)
    }

    fn disrupt(&mut self, _: usize, _: &mut Rng) -> Result<String, String> {
        Err("a single pop3d has no disruption but kill -9".into())
    }

    fn describe(&mut self, _: usize) -> String {
        let status = self.server.as_mut().and_then(Pop3d::exit_status);
        format!("pop3d start {}, exit status {status:?}", self.starts)
    }

    fn check(&mut self) -> Result<(), String> {
        harness::integrity_check(&self.data)
    }

    fn finish(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(s) = self.server.take() {
            if !s.stop(Duration::from_secs(10)) {
                problems.push("pop3d did not stop on SIGTERM within 10 s".into());
            }
        }
        if let Err(e) = harness::integrity_check(&self.data) {
            problems.push(format!("after the last round: {e}"));
        }
        problems
    }
}

#[derive(Default)]
pub struct Stats {
    seconds: f64,
    rounds: u32,
    disruptions: u32,
    /// Errors sessions met that a disruption allows (`[SYS/TEMP]`, refused, closed ...).
    allowed_errors: u32,
    /// Logins tried again on another server after such an error.
    login_retries: u32,
    server_kills_at_quit: u32,
    server_kills_random: u32,
    delivery_kills: u32,
    /// Deliveries over LMTP, and those cut mid-DATA on purpose.
    lmtp_deliveries: u32,
    lmtp_cut: u32,
    deliveries_acked: u32,
    deliveries_unacked: u32,
    /// Killed or refused deliveries found stored (whole) / not stored.
    unacked_stored: u32,
    unacked_absent: u32,
    quits_ok: u32,
    /// QUITs without a `+OK`, and whether their UPDATE turned out applied.
    quits_unanswered_applied: u32,
    quits_unanswered_not_applied: u32,
    sessions_without_quit: u32,
    messages_verified: u32,
    longest_lock_wait: Duration,
    violations: usize,
}

impl Stats {
    /// How long the rounds took.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rounds, {} violations; pop3d killed {} times inside/after QUIT and {} times at \
             random; {} deliveries killed ({} of {} LMTP deliveries cut mid-DATA); deliveries \
             acked {}, not acked {} (then found stored \
             {}, absent {}); QUIT +OK {}, QUIT unanswered {} (UPDATE applied {}, not applied \
             {}), sessions ended without QUIT {}; {} messages checked byte for byte; longest \
             [IN-USE] wait at check {:.2} s; {} disruptions, {} allowed session errors, {} \
             logins retried elsewhere; {:.1} s",
            self.rounds,
            self.violations,
            self.server_kills_at_quit,
            self.server_kills_random,
            self.delivery_kills,
            self.lmtp_cut,
            self.lmtp_deliveries,
            self.deliveries_acked,
            self.deliveries_unacked,
            self.unacked_stored,
            self.unacked_absent,
            self.quits_ok,
            self.quits_unanswered_applied + self.quits_unanswered_not_applied,
            self.quits_unanswered_applied,
            self.quits_unanswered_not_applied,
            self.sessions_without_quit,
            self.messages_verified,
            self.longest_lock_wait.as_secs_f64(),
            self.disruptions,
            self.allowed_errors,
            self.login_retries,
            self.seconds,
        )
    }
}

/// What the ledger knows of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    /// Its delivery was not acknowledged and it has not been seen.
    Unresolved,
    Present,
    Gone,
}

struct Entry {
    user: usize,
    /// The size asked of [`harness::message`], which regenerates the bytes from it.
    target: usize,
    /// Octets delivered.
    size: usize,
    /// Octets stored, once checked byte for byte (delivered plus the trace headers popadm
    /// puts on top).
    stored: Option<u64>,
    acked: bool,
    known: Known,
    uid: Option<String>,
}

/// Whether a LIST size fits what was delivered: exactly the size checked before, or the
/// delivered size plus at most [`harness::MAX_TRACE`] octets of trace headers.
fn size_fits(listed: u64, e: &Entry) -> bool {
    match e.stored {
        Some(stored) => listed == stored,
        None => (e.size as u64..(e.size + harness::MAX_TRACE) as u64).contains(&listed),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillServerAtQuit,
    KillServerRandom,
    KillDelivery,
    Disrupt,
    None,
}

struct Harness<'a> {
    servers: &'a mut dyn Servers,
    bins: &'a Bins,
    data: PathBuf,
    rng: Rng,
    mix: Mix,
    ledger: HashMap<u64, Entry>,
    next_id: u64,
    stats: Stats,
    violations: Vec<String>,
}

fn user_name(u: usize) -> String {
    format!("fault{u}")
}

fn password(u: usize) -> String {
    format!("fault pw {u}")
}

impl<'a> Harness<'a> {
    fn new(
        servers: &'a mut dyn Servers,
        bins: &'a Bins,
        data: &Path,
        seed: u64,
        mix: Mix,
    ) -> Result<Harness<'a>, String> {
        for u in 0..USERS {
            bins.popadm_ok(
                data,
                &["user", "add", &user_name(u), "--password-stdin"],
                format!("{}\n", password(u)).as_bytes(),
            )?;
        }
        servers.ensure()?;
        Ok(Harness {
            servers,
            bins,
            data: data.to_path_buf(),
            rng: Rng::new(seed),
            mix,
            ledger: HashMap::new(),
            next_id: 1,
            stats: Stats::default(),
            violations: Vec::new(),
        })
    }

    fn violation(&mut self, round: u32, what: String) {
        self.violations.push(format!("round {round}: {what}"));
        self.stats.violations = self.violations.len();
    }

    fn round(&mut self, round: u32) -> Result<(), String> {
        let addrs = self.servers.ensure()?;
        let (fault, victim) = match self.mix {
            Mix::Kills => {
                let fault = match self.rng.below(100) {
                    0..35 => Fault::KillServerAtQuit,
                    35..60 => Fault::KillServerRandom,
                    60..90 => Fault::KillDelivery,
                    _ => Fault::None,
                };
                (fault, self.rng.below(addrs.len() as u64) as usize)
            }
            Mix::Disruptions => (Fault::Disrupt, round as usize % addrs.len()),
        };

        // Deliveries: a few, one of them large when it is to be killed; half of them over
        // LMTP where the servers listen for it.
        let lmtp = self.servers.lmtp(victim);
        let count = 1 + self.rng.below(4) as usize;
        let mut deliveries = Vec::with_capacity(count);
        for i in 0..count {
            let id = self.next_id;
            self.next_id += 1;
            let user = self.rng.below(USERS as u64) as usize;
            let victim = fault == Fault::KillDelivery && i == 0;
            let size = if victim || self.rng.percent(20) {
                512 * 1024 + self.rng.below(2560 * 1024) as usize
            } else {
                200 + self.rng.below(20_000) as usize
            };
            let via_lmtp = lmtp.filter(|_| self.rng.percent(50));
            let kill_after = victim.then(|| self.rng.millis(500));
            let bytes = harness::message(id, size);
            // An LMTP client that vanishes does so inside the message.
            let cut = (victim && via_lmtp.is_some()).then(|| self.rng.below(size as u64) as usize);
            if via_lmtp.is_some() {
                self.stats.lmtp_deliveries += 1;
                self.stats.lmtp_cut += u32::from(cut.is_some());
            }
            self.ledger.insert(
                id,
                Entry {
                    user,
                    target: size,
                    size: bytes.len(),
                    stored: None,
                    acked: false,
                    known: Known::Unresolved,
                    uid: None,
                },
            );
            let bins = self.bins.clone();
            let data = self.data.clone();
            let start_after = self.rng.millis(200);
            deliveries.push((
                id,
                std::thread::spawn(move || {
                    std::thread::sleep(start_after);
                    match via_lmtp {
                        Some(addr) => harness::deliver_lmtp(addr, &user_name(user), &bytes, cut),
                        None => harness::deliver(&bins, &data, &user_name(user), bytes, kill_after),
                    }
                }),
            ));
        }

        // Sessions, one per account.
        let pid = self.servers.pid(victim);
        let kill_at_quit = if let (Fault::KillServerAtQuit, Some(pid)) = (fault, pid) {
            // UPDATE takes a few milliseconds: most kills land within that window.
            let delay = if self.rng.percent(30) {
                Duration::ZERO
            } else {
                Duration::from_micros(self.rng.below(8000))
            };
            Some(Arc::new(KillAtQuit {
                trigger: KillTrigger::arm(pid)?,
                delay,
                fired: AtomicBool::new(false),
            }))
        } else {
            None
        };
        let ids: HashMap<String, u64> = self
            .ledger
            .iter()
            .filter_map(|(id, e)| e.uid.clone().map(|u| (u, *id)))
            .collect();
        let sizes: HashMap<u64, usize> =
            self.ledger.iter().map(|(id, e)| (*id, e.target)).collect();
        let ids = Arc::new(ids);
        let sizes = Arc::new(sizes);
        let strict = self.mix == Mix::Disruptions;
        let mut sessions = Vec::with_capacity(USERS);
        for user in 0..USERS {
            let (ids, sizes) = (ids.clone(), sizes.clone());
            // Half the sessions go to the victim, so that its kill meets some.
            let home = if self.rng.percent(50) {
                victim
            } else {
                self.rng.below(addrs.len() as u64) as usize
            };
            let kill = kill_at_quit.clone().filter(|_| home == victim);
            let mut order = addrs.clone();
            order.rotate_left(home);
            let rng = self.rng.fork();
            sessions.push(std::thread::spawn(move || {
                session(&order, strict, user, &ids, &sizes, rng, kill.as_deref())
            }));
        }

        match fault {
            Fault::KillServerRandom => {
                std::thread::sleep(self.rng.millis(800));
                self.servers.kill9(victim);
                self.stats.server_kills_random += 1;
            }
            Fault::Disrupt => {
                std::thread::sleep(self.rng.millis(800));
                let what = self.servers.disrupt(victim, &mut self.rng)?;
                eprintln!("xtask: round {round}: {what}");
                self.stats.disruptions += 1;
            }
            _ => {}
        }

        let mut results = Vec::with_capacity(USERS);
        for s in sessions {
            results.push(
                s.join()
                    .map_err(|_| "a session thread panicked".to_string())?,
            );
        }
        if let Some(k) = kill_at_quit {
            let fired = k.fired.load(Ordering::SeqCst);
            // Reaps the armed shell (exits unfired when no session reached QUIT).
            drop(k);
            if fired {
                self.stats.server_kills_at_quit += 1;
                // SIGKILL is sent; the process may take a moment to be gone.
                self.servers.wait_exit(victim, Duration::from_secs(10));
            }
        }
        for (id, d) in deliveries {
            let outcome = d
                .join()
                .map_err(|_| "a delivery thread panicked".to_string())??;
            let acked = outcome == Delivery::Acked;
            if outcome == Delivery::Killed {
                self.stats.delivery_kills += 1;
            }
            if acked {
                self.stats.deliveries_acked += 1;
            } else {
                self.stats.deliveries_unacked += 1;
            }
            if let Some(e) = self.ledger.get_mut(&id) {
                e.acked = acked;
            }
        }

        // The state every process left behind is final now; pop3d comes back if it died.
        self.servers.ensure()?;
        self.check_sessions(round, &results);
        self.verify(round, &results)?;
        if let Err(e) = self.servers.check() {
            self.violation(round, e);
        }
        self.stats.rounds += 1;
        Ok(())
    }

    /// What sessions saw mid-round must agree with the ledger.
    fn check_sessions(&mut self, round: u32, results: &[SessionResult]) {
        let mut found = Vec::new();
        for r in results {
            self.stats.allowed_errors += r.allowed_errors;
            self.stats.login_retries += r.login_retries;
            for p in &r.problems {
                found.push(format!("{}: {p}", user_name(r.user)));
            }
            let mut ids = HashSet::new();
            for s in &r.seen {
                let Some(id) = s.id else {
                    found.push(format!(
                        "{}: message {} has no ledger id",
                        user_name(r.user),
                        s.uid
                    ));
                    continue;
                };
                if !ids.insert(id) {
                    found.push(format!("{}: message {id} listed twice", user_name(r.user)));
                }
                match self.ledger.get_mut(&id) {
                    None => found.push(format!("unknown message {id}")),
                    Some(e) if e.user != r.user => {
                        found.push(format!("message {id} in the wrong maildrop"));
                    }
                    Some(e) => {
                        match e.known {
                            Known::Gone => {
                                found.push(format!("message {id} reappeared after it was gone"));
                            }
                            // A session saw it: it is stored, whatever its delivery said.
                            Known::Unresolved => {
                                if !e.acked {
                                    self.stats.unacked_stored += 1;
                                }
                                e.known = Known::Present;
                            }
                            Known::Present => {}
                        }
                        if !size_fits(s.size, e) {
                            found.push(format!(
                                "message {id}: LIST says {} octets, {} were delivered",
                                s.size, e.size
                            ));
                        }
                        match &e.uid {
                            Some(uid) if *uid != s.uid => found
                                .push(format!("message {id}: UID changed from {uid} to {}", s.uid)),
                            Some(_) => {}
                            None => e.uid = Some(s.uid.clone()),
                        }
                    }
                }
            }
        }
        for v in found {
            self.violation(round, v);
        }
    }

    /// Logs in to every maildrop and checks it against the ledger and the sessions' outcomes.
    fn verify(&mut self, round: u32, results: &[SessionResult]) -> Result<(), String> {
        let addrs = self.servers.ensure()?;
        // Expectations from this round's sessions.
        let mut must_be_absent = HashSet::new();
        let mut must_be_present = HashSet::new();
        let mut all_or_nothing = Vec::new();
        for r in results {
            match r.outcome {
                Outcome::Applied => {
                    self.stats.quits_ok += 1;
                    must_be_absent.extend(r.marked.iter().copied());
                }
                Outcome::NoQuit => {
                    self.stats.sessions_without_quit += 1;
                    must_be_present.extend(r.marked.iter().copied());
                }
                Outcome::Unanswered => all_or_nothing.push(r.marked.clone()),
                Outcome::NotLoggedIn => {}
            }
        }

        let mut present: HashMap<u64, Seen> = HashMap::new();
        let mut found = Vec::new();
        // Maildrops that could not be checked (a violation already): their messages are not
        // judged this round, rather than all counted lost.
        let mut unchecked = HashSet::new();
        for user in 0..USERS {
            let name = user_name(user);
            // Each maildrop checked through another server each round.
            let server = (user + round as usize) % addrs.len();
            let addr = addrs[server];
            let (mut c, waited) = match harness::login(addr, &name, &password(user), LOCK_PATIENCE)
            {
                Ok(x) => x,
                Err(e) => {
                    let how = self.servers.describe(server);
                    found.push(format!("check login {name} at {addr}: {e} ({how})"));
                    unchecked.insert(user);
                    continue;
                }
            };
            self.stats.longest_lock_wait = self.stats.longest_lock_wait.max(waited);
            let ids: HashMap<String, u64> = self
                .ledger
                .iter()
                .filter(|(_, e)| e.user == user)
                .filter_map(|(id, e)| e.uid.clone().map(|u| (u, *id)))
                .collect();
            let seen = harness::survey(&mut c, &ids).map_err(|e| format!("check {name}: {e}"))?;
            let mut uids = HashSet::new();
            for s in seen {
                if !uids.insert(s.uid.clone()) {
                    found.push(format!("{name}: UID {} listed twice", s.uid));
                }
                let Some(id) = s.id else {
                    found.push(format!("{name}: message {} has no ledger id", s.uid));
                    continue;
                };
                let Some(e) = self.ledger.get_mut(&id) else {
                    found.push(format!("{name}: unknown message {id}"));
                    continue;
                };
                if e.user != user {
                    found.push(format!("message {id} in the wrong maildrop {name}"));
                }
                if !size_fits(s.size, e) {
                    found.push(format!(
                        "message {id}: stored {} octets, {} were delivered (partial?)",
                        s.size, e.size
                    ));
                } else if e.stored.is_none() {
                    let body = c
                        .multi(&format!("RETR {}", s.number))
                        .map_err(|e| format!("check {name}: RETR: {e}"))?;
                    if !harness::stored_as_delivered(&body, &harness::message(id, e.target)) {
                        found.push(format!("message {id}: RETR bytes differ from delivered"));
                    }
                    e.stored = Some(s.size);
                    self.stats.messages_verified += 1;
                }
                if present.insert(id, s).is_some() {
                    found.push(format!("message {id} stored twice"));
                }
            }
            c.ok("QUIT").map_err(|e| format!("check {name}: {e}"))?;
        }

        let judged = |ids: &&Vec<u64>| {
            !ids.is_empty()
                && !ids.iter().any(|id| {
                    self.ledger
                        .get(id)
                        .is_some_and(|e| unchecked.contains(&e.user))
                })
        };
        for ids in all_or_nothing.iter().filter(judged) {
            let here = ids.iter().filter(|id| present.contains_key(id)).count();
            if here == 0 {
                self.stats.quits_unanswered_applied += 1;
            } else if here == ids.len() {
                self.stats.quits_unanswered_not_applied += 1;
            } else {
                found.push(format!(
                    "unanswered QUIT deleted {} of the {} messages it marked",
                    ids.len() - here,
                    ids.len()
                ));
            }
        }

        let in_doubt: HashSet<u64> = all_or_nothing.iter().flatten().copied().collect();
        for (id, e) in self.ledger.iter_mut() {
            if unchecked.contains(&e.user) {
                if must_be_absent.contains(id) {
                    e.known = Known::Gone;
                }
                continue;
            }
            let seen = present.get(id);
            let is_here = seen.is_some();
            if must_be_absent.contains(id) {
                if is_here {
                    found.push(format!("message {id} survived a QUIT answered +OK"));
                }
            } else if must_be_present.contains(id) {
                if !is_here {
                    found.push(format!("message {id} deleted without QUIT"));
                }
            } else if !in_doubt.contains(id) {
                match e.known {
                    Known::Gone if is_here => {
                        found.push(format!("message {id} reappeared after it was gone"));
                    }
                    Known::Present if !is_here => found.push(format!("message {id} lost")),
                    Known::Unresolved if e.acked && !is_here => {
                        found.push(format!("message {id} lost: its delivery exited 0"));
                    }
                    Known::Unresolved if !e.acked => {
                        if is_here {
                            self.stats.unacked_stored += 1;
                        } else {
                            self.stats.unacked_absent += 1;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(s) = seen {
                match &e.uid {
                    Some(uid) if *uid != s.uid => {
                        found.push(format!("message {id}: UID changed from {uid} to {}", s.uid));
                    }
                    _ => e.uid = Some(s.uid.clone()),
                }
            }
            e.known = if is_here { Known::Present } else { Known::Gone };
        }
        for v in found {
            self.violation(round, v);
        }
        Ok(())
    }

    /// Stops the servers gracefully and runs the last checks.
    fn finish(&mut self) {
        let problems = self.servers.finish();
        self.violations.extend(problems);
        self.stats.violations = self.violations.len();
    }
}
