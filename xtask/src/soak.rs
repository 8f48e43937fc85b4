//! `cargo xtask soak [--minutes N] [--clients C] [--seed S]`: mixed random sessions against
//! one pop3d while deliveries go on, then the ledger and resource checks.
//!
//! C client threads (one account each) run sessions back to back: login, LIST, RETR (checked
//! byte for byte against what was delivered), TOP, DELE, RSET, NOOP, then QUIT, or a drop
//! (sometimes in the middle of a RETR). A delivery thread keeps adding mail with `popadm
//! deliver`. Every reply must be what the ledger predicts: no message unknown, twice, or back
//! after a completed QUIT deleted it, UIDs unchanged. At the end every maildrop must hold
//! exactly the delivered messages minus those deleted by a QUIT answered `+OK`, the database
//! must pass `PRAGMA integrity_check`, and pop3d's open descriptors and RSS must come back to
//! their levels before the load.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, Bins, Delivery, Pop3d, Rng, TempDir};

const DEFAULT_MINUTES: f64 = 1.0;
const DEFAULT_CLIENTS: usize = 8;
/// RSS may stay this much above its start (allocators keep freed memory).
const RSS_SLACK_KIB: u64 = 32 * 1024;
/// Descriptors may grow this much from the start: the store keeps up to 16 idle SQLite
/// connections (a database and a WAL descriptor each). A leak per session would pass it
/// within a few dozen sessions.
const FD_SLACK: usize = 40;

pub fn command(args: &[String]) -> Result<(), String> {
    harness::only_flags(args, &["--minutes", "--clients", "--seed"])?;
    let minutes: f64 = harness::flag(args, "--minutes")?.unwrap_or(DEFAULT_MINUTES);
    let clients: usize = harness::flag(args, "--clients")?.unwrap_or(DEFAULT_CLIENTS);
    let seed = harness::flag(args, "--seed")?.unwrap_or_else(harness::clock_seed);
    if !(0.0..=24.0 * 60.0).contains(&minutes) || !(1..=16).contains(&clients) {
        return Err("--minutes must be 0..1440 and --clients 1..16".into());
    }
    let bins = Bins::build()?;
    run(
        &bins,
        Duration::from_secs_f64(minutes * 60.0),
        clients,
        seed,
    )
}

struct Entry {
    user: usize,
    target: usize,
    size: usize,
    /// `None` while the delivery runs.
    acked: Option<bool>,
    deleted: bool,
    uid: Option<String>,
}

#[derive(Default)]
struct Ledger {
    entries: HashMap<u64, Entry>,
    violations: Vec<String>,
}

#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    quits: AtomicU64,
    drops: AtomicU64,
    commands: AtomicU64,
    retrieved: AtomicU64,
    deleted: AtomicU64,
    deliveries: AtomicU64,
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

fn user_name(u: usize) -> String {
    format!("soak{u}")
}

fn password(u: usize) -> String {
    format!("soak pw {u}")
}

fn login(addr: SocketAddr, u: usize, patience_secs: u64) -> Result<harness::Client, String> {
    harness::login(
        addr,
        &user_name(u),
        &password(u),
        Duration::from_secs(patience_secs),
    )
    .map(|(c, _)| c)
}

pub fn run(bins: &Bins, duration: Duration, clients: usize, seed: u64) -> Result<(), String> {
    eprintln!(
        "xtask soak: {:.1} min, {clients} clients, seed {seed}",
        duration.as_secs_f64() / 60.0
    );
    let mut dir = TempDir::new("soak")?;
    let data = dir.path().join("data");
    for u in 0..clients {
        bins.popadm_ok(
            &data,
            &["user", "add", &user_name(u), "--password-stdin"],
            format!("{}\n", password(u)).as_bytes(),
        )?;
    }
    let server = Pop3d::start(
        bins,
        &data,
        &dir.path().join("pop3d.log"),
        &["--log", "info", "--lock-lease", "10"],
    )?;
    let mut rng = Rng::new(seed);
    let ledger: Shared = Arc::default();
    let counters = Arc::new(Counters::default());
    // Warm up: one session per account, so the start levels include the pools' steady state.
    for u in 0..clients {
        let mut c = login(server.addr, u, 10)?;
        c.ok("QUIT").map_err(|e| e.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, fds0) = levels(&server)?;

    let started = Instant::now();
    let deadline = started + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let deliverer = {
        let (bins, data, ledger, counters, stop) = (
            bins.clone(),
            data.clone(),
            ledger.clone(),
            counters.clone(),
            stop.clone(),
        );
        let rng = rng.fork();
        std::thread::spawn(move || {
            deliveries(&bins, &data, &ledger, &counters, &stop, clients, rng)
        })
    };
    let mut threads = Vec::with_capacity(clients);
    for u in 0..clients {
        let (ledger, counters, addr) = (ledger.clone(), counters.clone(), server.addr);
        let rng = rng.fork();
        threads.push(std::thread::spawn(move || {
            // Sessions back to back until the deadline; each one bounded by the client's
            // timeouts, so the loop is bounded by the deadline.
            let mut rng = rng;
            while Instant::now() < deadline {
                if let Err(e) = session(addr, u, &ledger, &counters, &mut rng) {
                    lock(&ledger)
                        .violations
                        .push(format!("{}: {e}", user_name(u)));
                }
            }
        }));
    }
    let mut peak_rss = rss0;
    while Instant::now() < deadline {
        std::thread::sleep(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500)),
        );
        peak_rss = peak_rss.max(server.rss_kib().unwrap_or(0));
    }
    for t in threads {
        t.join()
            .map_err(|_| "a client thread panicked".to_string())?;
    }
    stop.store(true, Ordering::SeqCst);
    deliverer
        .join()
        .map_err(|_| "the delivery thread panicked".to_string())??;

    final_check(&server, &ledger, clients)?;
    if let Err(e) = harness::integrity_check(&data) {
        lock(&ledger).violations.push(e);
    }
    // Resources settle once the sessions have ended.
    let settle = Instant::now() + Duration::from_secs(15);
    let grew = |(rss1, fds1): (u64, usize)| fds1 > fds0 + FD_SLACK || rss1 > rss0 + RSS_SLACK_KIB;
    let mut after = levels(&server);
    while after.as_ref().is_ok_and(|l| grew(*l)) && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(250));
        after = levels(&server);
    }
    match after {
        Ok((rss1, fds1)) => {
            let mut l = lock(&ledger);
            if fds1 > fds0 + FD_SLACK {
                l.violations.push(format!(
                    "pop3d holds {fds1} descriptors after the load, {fds0} before"
                ));
            }
            if rss1 > rss0 + RSS_SLACK_KIB {
                l.violations.push(format!(
                    "pop3d RSS {rss1} KiB after the load, {rss0} KiB before"
                ));
            }
        }
        // Unreadable is a violation, never a zero that shows no growth.
        Err(ref e) => lock(&ledger)
            .violations
            .push(format!("after the load: {e}")),
    }
    if !server.stop(Duration::from_secs(10)) {
        lock(&ledger)
            .violations
            .push("pop3d did not stop on SIGTERM".into());
    }

    let l = lock(&ledger);
    let c = &counters;
    let (rss1, fds1) = match after {
        Ok((rss, fds)) => (rss.to_string(), fds.to_string()),
        Err(_) => ("?".into(), "?".into()),
    };
    println!(
        "xtask soak: {:.1} min, {} sessions ({} QUIT, {} dropped), {} commands, {} RETR checked, \
         {} deleted, {} deliveries; pop3d RSS {} KiB at start, {} peak, {} after; fds {} at \
         start, {} after; {} violations",
        started.elapsed().as_secs_f64() / 60.0,
        c.sessions.load(Ordering::Relaxed),
        c.quits.load(Ordering::Relaxed),
        c.drops.load(Ordering::Relaxed),
        c.commands.load(Ordering::Relaxed),
        c.retrieved.load(Ordering::Relaxed),
        c.deleted.load(Ordering::Relaxed),
        c.deliveries.load(Ordering::Relaxed),
        rss0,
        peak_rss,
        rss1,
        fds0,
        fds1,
        l.violations.len()
    );
    harness::verdict(&l.violations, seed, &mut dir)
}

/// pop3d's resident memory (KiB) and open descriptors, which must be readable in /proc.
fn levels(server: &Pop3d) -> Result<(u64, usize), String> {
    let rss = server
        .rss_kib()
        .ok_or("pop3d's RSS is not readable in /proc")?;
    let fds = server
        .fds()
        .ok_or("pop3d's descriptors are not readable in /proc")?;
    Ok((rss, fds))
}

/// Delivers to random accounts until told to stop (bounded by the soak's deadline).
fn deliveries(
    bins: &Bins,
    data: &Path,
    ledger: &Shared,
    counters: &Counters,
    stop: &AtomicBool,
    users: usize,
    mut rng: Rng,
) -> Result<(), String> {
    let mut id = 0u64;
    while !stop.load(Ordering::SeqCst) {
        id += 1;
        let user = rng.below(users as u64) as usize;
        let target = if rng.percent(5) {
            1 << 20
        } else {
            100 + rng.below(30_000) as usize
        };
        let bytes = harness::message(id, target);
        lock(ledger).entries.insert(
            id,
            Entry {
                user,
                target,
                size: bytes.len(),
                acked: None,
                deleted: false,
                uid: None,
            },
        );
        let outcome = harness::deliver(bins, data, &user_name(user), bytes, None)?;
        counters.deliveries.fetch_add(1, Ordering::Relaxed);
        let mut l = lock(ledger);
        if let Some(e) = l.entries.get_mut(&id) {
            e.acked = Some(outcome == Delivery::Acked);
        }
        if let Delivery::Refused(code) = outcome {
            l.violations.push(format!("popadm deliver exited {code}"));
        }
        drop(l);
        std::thread::sleep(rng.millis(100));
    }
    Ok(())
}

/// One random session. Errors are violations (nothing is killed in a soak).
fn session(
    addr: SocketAddr,
    user: usize,
    ledger: &Shared,
    counters: &Counters,
    rng: &mut Rng,
) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let mut c = login(addr, user, 30)?;
    counters.sessions.fetch_add(1, Ordering::Relaxed);
    let seen = survey_checked(&mut c, ledger, user)?;
    let mut marked: HashSet<usize> = HashSet::new();
    let ops = rng.below(12);
    for _ in 0..ops {
        counters.commands.fetch_add(1, Ordering::Relaxed);
        if seen.is_empty() {
            c.ok("NOOP").map_err(io)?;
            continue;
        }
        let i = rng.below(seen.len() as u64) as usize;
        let s = &seen[i];
        let n = s.number;
        match rng.below(7) {
            0 | 1 => {
                if marked.contains(&i) {
                    c.cmd(&format!("RETR {n}"))
                        .map_err(io)?
                        .starts_with("-ERR")
                        .then_some(())
                        .ok_or("RETR of a deleted message answered +OK")?;
                    continue;
                }
                if rng.percent(5) {
                    // Drop in the middle of a RETR.
                    c.send(&format!("RETR {n}")).map_err(io)?;
                    c.line().map_err(io)?;
                    counters.drops.fetch_add(1, Ordering::Relaxed);
                    c.drop_connection();
                    return Ok(());
                }
                let body = c.multi(&format!("RETR {n}")).map_err(io)?;
                counters.retrieved.fetch_add(1, Ordering::Relaxed);
                let target =
                    s.id.and_then(|id| lock(ledger).entries.get(&id).map(|e| e.target));
                if let (Some(id), Some(target)) = (s.id, target) {
                    if !harness::stored_as_delivered(&body, &harness::message(id, target)) {
                        lock(ledger)
                            .violations
                            .push(format!("RETR of message {id} differs from delivered"));
                    }
                }
            }
            2 if !marked.contains(&i) => {
                let lines = rng.below(5);
                let top = c.multi(&format!("TOP {n} {lines}")).map_err(io)?;
                if harness::message_id(&top) != s.id {
                    lock(ledger)
                        .violations
                        .push(format!("TOP {n} shows another message"));
                }
            }
            3 | 4 if !marked.contains(&i) => {
                c.ok(&format!("DELE {n}")).map_err(io)?;
                marked.insert(i);
            }
            5 => {
                c.ok("RSET").map_err(io)?;
                marked.clear();
            }
            _ => {
                let r = c.cmd(&format!("LIST {n}")).map_err(io)?;
                let deleted = marked.contains(&i);
                if r.starts_with("+OK") == deleted {
                    return Err(format!("LIST {n} answered {r:?} (deleted: {deleted})"));
                }
            }
        }
    }
    if rng.percent(20) {
        counters.drops.fetch_add(1, Ordering::Relaxed);
        c.drop_connection();
        return Ok(());
    }
    c.ok("QUIT").map_err(io)?;
    counters.quits.fetch_add(1, Ordering::Relaxed);
    let mut l = lock(ledger);
    for i in marked {
        if let Some(e) = seen[i].id.and_then(|id| l.entries.get_mut(&id)) {
            e.deleted = true;
            counters.deleted.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// What `user`'s session lists (UIDL and LIST, matched to the ledger's message ids by UID),
/// checked with [`check_seen`].
fn survey_checked(
    c: &mut harness::Client,
    ledger: &Shared,
    user: usize,
) -> Result<Vec<harness::Seen>, String> {
    let ids: HashMap<String, u64> = lock(ledger)
        .entries
        .iter()
        .filter(|(_, e)| e.user == user)
        .filter_map(|(id, e)| e.uid.clone().map(|uid| (uid, *id)))
        .collect();
    let seen = harness::survey(c, &ids).map_err(|e| e.to_string())?;
    check_seen(ledger, user, &seen);
    Ok(seen)
}

/// What a session lists must be known, in its maildrop, not deleted, with its first UID.
fn check_seen(ledger: &Shared, user: usize, seen: &[harness::Seen]) {
    let mut l = lock(ledger);
    let mut found = Vec::new();
    let mut ids = HashSet::new();
    for s in seen {
        let Some(id) = s.id else {
            found.push(format!(
                "{}: message {} has no ledger id",
                user_name(user),
                s.uid
            ));
            continue;
        };
        if !ids.insert(id) {
            found.push(format!("message {id} listed twice"));
        }
        match l.entries.get_mut(&id) {
            None => found.push(format!("unknown message {id}")),
            Some(e) if e.user != user => found.push(format!("message {id} in the wrong maildrop")),
            Some(e) if e.deleted => found.push(format!("message {id} back after its deletion")),
            Some(e) => {
                if !(e.size..e.size + harness::MAX_TRACE).contains(&(s.size as usize)) {
                    found.push(format!(
                        "message {id}: {} octets listed, {} delivered",
                        s.size, e.size
                    ));
                }
                match &e.uid {
                    Some(uid) if *uid != s.uid => {
                        found.push(format!("message {id}: UID {uid} became {}", s.uid));
                    }
                    _ => e.uid = Some(s.uid.clone()),
                }
            }
        }
    }
    l.violations.extend(found);
}

/// Every maildrop holds what was delivered minus what completed QUITs deleted, byte for byte.
fn final_check(server: &Pop3d, ledger: &Shared, users: usize) -> Result<(), String> {
    for u in 0..users {
        let mut c = login(server.addr, u, 30)?;
        let seen = survey_checked(&mut c, ledger, u)?;
        let present: HashSet<u64> = seen.iter().filter_map(|s| s.id).collect();
        for s in &seen {
            let target =
                s.id.and_then(|id| lock(ledger).entries.get(&id).map(|e| e.target));
            if let (Some(id), Some(target)) = (s.id, target) {
                let body = c
                    .multi(&format!("RETR {}", s.number))
                    .map_err(|e| e.to_string())?;
                if !harness::stored_as_delivered(&body, &harness::message(id, target)) {
                    lock(ledger)
                        .violations
                        .push(format!("message {id} differs from delivered"));
                }
            }
        }
        c.ok("QUIT").map_err(|e| e.to_string())?;
        let mut l = lock(ledger);
        let lost: Vec<u64> = l
            .entries
            .iter()
            .filter(|(id, e)| {
                e.user == u && e.acked == Some(true) && !e.deleted && !present.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            l.violations.push(format!("message {id} lost"));
        }
    }
    Ok(())
}
