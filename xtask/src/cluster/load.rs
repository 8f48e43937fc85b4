//! Clients that loop whole sessions (login, UIDL/LIST, RETR, DELE, QUIT) across the nodes
//! while something is done to the cluster, each on an account of its own with its own ledger.
//!
//! One client per account and its sessions one after another, so the ledger is exact: after
//! every listing the maildrop must be what the client knows, except that a QUIT without `+OK`
//! may have been applied whole or not at all (the next listing tells which, never a part), and
//! a delivery that did not exit 0 may be there or not (the next listing tells, and it never
//! appears later). Errors may only be `[IN-USE]`, `[SYS/TEMP]`, refused or closed
//! connections; after one a client logs in again on the next node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::faults::{allowed_kind, LOCK_PATIENCE};
use crate::harness::{self, Bins, Client, Delivery, Rng, Seen};

/// The longest a load runs, whatever its caller does.
const MAX_RUN: Duration = Duration::from_secs(300);

#[derive(Default, Clone)]
pub struct LoadStats {
    pub sessions: u32,
    pub quits_ok: u32,
    /// QUITs without `+OK`, then found applied / not applied.
    pub unanswered_applied: u32,
    pub unanswered_not_applied: u32,
    pub allowed_errors: u32,
    /// The allowed errors by kind (`[SYS/TEMP]`, `refused` ...).
    pub kinds: BTreeMap<&'static str, u32>,
    pub login_retries: u32,
    pub deliveries_acked: u32,
    pub deliveries_unacked: u32,
    pub messages_verified: u32,
}

impl LoadStats {
    fn add(&mut self, o: &LoadStats) {
        self.sessions += o.sessions;
        self.quits_ok += o.quits_ok;
        self.unanswered_applied += o.unanswered_applied;
        self.unanswered_not_applied += o.unanswered_not_applied;
        self.allowed_errors += o.allowed_errors;
        for (kind, n) in &o.kinds {
            *self.kinds.entry(kind).or_default() += n;
        }
        self.login_retries += o.login_retries;
        self.deliveries_acked += o.deliveries_acked;
        self.deliveries_unacked += o.deliveries_unacked;
        self.messages_verified += o.messages_verified;
    }
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sessions, QUIT +OK {}, QUIT unanswered {} (applied {}, not applied {}), {} \
             allowed errors ({}), {} logins retried on another node, deliveries acked {} / not \
             acked {}, {} RETRs checked byte for byte",
            self.sessions,
            self.quits_ok,
            self.unanswered_applied + self.unanswered_not_applied,
            self.unanswered_applied,
            self.unanswered_not_applied,
            self.allowed_errors,
            self.kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.login_retries,
            self.deliveries_acked,
            self.deliveries_unacked,
            self.messages_verified,
        )
    }
}

/// The running clients; [`Load::finish`] stops them and runs the last check.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Looper>>,
}

impl Load {
    /// Starts one client per account (`accounts` made already, password `pass`), each
    /// delivering its own mail with `bins` into `data`'s store.
    pub fn start(
        bins: &Bins,
        data: PathBuf,
        addrs: Vec<SocketAddr>,
        accounts: &[String],
        pass: &str,
        rng: &mut Rng,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = accounts
            .iter()
            .enumerate()
            .map(|(i, user)| {
                let mut looper = Looper::new(user, pass, bins, data.clone(), addrs.clone(), rng);
                // Each client starts on another node, and numbers its messages apart.
                looper.next_node = i;
                looper.next_id = (i as u64 + 1) * 1_000_000;
                let stop = stop.clone();
                std::thread::spawn(move || {
                    looper.run(&stop);
                    looper
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients; each then checks its maildrop once more (patiently, the cluster
    /// being whole again). The figures and the violations.
    pub fn finish(self) -> (LoadStats, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut stats = LoadStats::default();
        let mut problems = Vec::new();
        for c in self.clients {
            match c.join() {
                Ok(mut looper) => {
                    looper.final_check();
                    stats.add(&looper.stats);
                    problems.extend(
                        looper
                            .problems
                            .iter()
                            .map(|p| format!("{}: {p}", looper.user)),
                    );
                }
                Err(_) => problems.push("a load client panicked".into()),
            }
        }
        (stats, problems)
    }
}

/// One client and the ledger of its account.
struct Looper {
    user: String,
    pass: String,
    bins: Bins,
    data: PathBuf,
    addrs: Vec<SocketAddr>,
    next_node: usize,
    next_id: u64,
    rng: Rng,
    /// Messages that must be there: ledger id, and the UID once seen.
    present: BTreeMap<u64, Option<String>>,
    /// Size asked of [`harness::message`] per id.
    targets: HashMap<u64, usize>,
    /// Deliveries that did not exit 0 and were not listed since.
    unacked: HashSet<u64>,
    /// What a QUIT without `+OK` had marked.
    pending: Option<Vec<u64>>,
    stats: LoadStats,
    problems: Vec<String>,
}

/// How a session ended, for the ledger.
enum End {
    /// Nothing it did can have deleted anything.
    Nothing,
    Applied(Vec<u64>),
    Unanswered(Vec<u64>),
}

impl Looper {
    fn new(
        user: &str,
        pass: &str,
        bins: &Bins,
        data: PathBuf,
        addrs: Vec<SocketAddr>,
        rng: &mut Rng,
    ) -> Looper {
        Looper {
            user: user.to_owned(),
            pass: pass.to_owned(),
            bins: bins.clone(),
            data,
            addrs,
            next_node: 0,
            next_id: 1,
            rng: rng.fork(),
            present: BTreeMap::new(),
            targets: HashMap::new(),
            unacked: HashSet::new(),
            pending: None,
            stats: LoadStats::default(),
            problems: Vec::new(),
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        let deadline = Instant::now() + MAX_RUN;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            if self.present.len() < 4 {
                self.deliver(2);
            }
            self.stats.sessions += 1;
            match self.session(false) {
                End::Nothing => {}
                End::Applied(marked) => {
                    self.stats.quits_ok += 1;
                    for id in marked {
                        self.present.remove(&id);
                    }
                }
                End::Unanswered(marked) if marked.is_empty() => {}
                End::Unanswered(marked) => self.pending = Some(marked),
            }
            std::thread::sleep(self.rng.millis(50));
        }
    }

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            let target = 200 + self.rng.below(6000) as usize;
            self.targets.insert(id, target);
            let bytes = harness::message(id, target);
            match harness::deliver(&self.bins, &self.data, &self.user, bytes, None) {
                Ok(Delivery::Acked) => {
                    self.stats.deliveries_acked += 1;
                    self.present.insert(id, None);
                }
                Ok(_) => {
                    self.stats.deliveries_unacked += 1;
                    self.unacked.insert(id);
                }
                Err(e) => self.problems.push(format!("delivery {id}: {e}")),
            }
        }
    }

    /// An error that ended a session: allowed ones are counted, others are problems.
    fn failed(&mut self, what: &str, e: &str) -> End {
        if !self.allowed(e) {
            self.problems.push(format!("{what}: {e}"));
        }
        End::Nothing
    }

    /// Counts `e` when it is an allowed error; whether it is.
    fn allowed(&mut self, e: &str) -> bool {
        let Some(kind) = allowed_kind(e) else {
            return false;
        };
        self.stats.allowed_errors += 1;
        *self.stats.kinds.entry(kind).or_default() += 1;
        true
    }

    /// Logs in on the next node, trying the others after an allowed error (at most twice
    /// round each); `[IN-USE]` is waited out up to the lease and a margin.
    fn login(&mut self) -> Option<Client> {
        let tries = 2 * self.addrs.len();
        for attempt in 0..tries {
            let addr = self.addrs[self.next_node % self.addrs.len()];
            self.next_node += 1;
            match harness::login(addr, &self.user, &self.pass, LOCK_PATIENCE) {
                Ok((c, _)) => return Some(c),
                Err(e) if e.contains("still locked") => {
                    self.problems.push(format!("at {addr}: {e}"));
                    return None;
                }
                Err(e) if attempt + 1 == tries || !self.allowed(&e) => {
                    self.failed(&format!("login at {addr}"), &e);
                    return None;
                }
                Err(_) => {
                    self.stats.login_retries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        None
    }

    /// One session; `check_only` lists and quits without deleting.
    fn session(&mut self, check_only: bool) -> End {
        let Some(mut c) = self.login() else {
            return End::Nothing;
        };
        let ids: HashMap<String, u64> = self
            .present
            .iter()
            .filter_map(|(id, uid)| uid.clone().map(|u| (u, *id)))
            .collect();
        let seen = match harness::survey(&mut c, &ids) {
            Ok(seen) => seen,
            Err(e) => return self.failed("UIDL/LIST", &e.to_string()),
        };
        self.reconcile(&seen);
        if check_only {
            return match c.ok("QUIT") {
                Ok(_) => End::Nothing,
                Err(e) => self.failed("QUIT", &e.to_string()),
            };
        }
        if !seen.is_empty() {
            let s = &seen[self.rng.below(seen.len() as u64) as usize];
            if let Some((id, target)) = s.id.and_then(|id| self.targets.get(&id).map(|t| (id, *t)))
            {
                match c.multi(&format!("RETR {}", s.number)) {
                    Ok(body) => {
                        self.stats.messages_verified += 1;
                        if !harness::stored_as_delivered(&body, &harness::message(id, target)) {
                            self.problems
                                .push(format!("RETR of message {id} differs from delivered"));
                        }
                    }
                    Err(e) => return self.failed("RETR", &e.to_string()),
                }
            }
        }
        let mut marked = Vec::new();
        for s in &seen {
            if self.rng.percent(40) {
                if let Err(e) = c.ok(&format!("DELE {}", s.number)) {
                    return self.failed("DELE", &e.to_string());
                }
                marked.extend(s.id);
            }
        }
        if let Err(e) = c.send("QUIT") {
            self.failed("QUIT", &e.to_string());
            return End::Unanswered(marked);
        }
        match c.line() {
            Ok(reply) if reply.starts_with("+OK") => End::Applied(marked),
            Ok(reply) => {
                self.failed("QUIT", &reply);
                End::Unanswered(marked)
            }
            Err(e) => {
                self.failed("QUIT", &e.to_string());
                End::Unanswered(marked)
            }
        }
    }

    /// A listing against the ledger; resolves the pending QUIT and the unacknowledged
    /// deliveries.
    fn reconcile(&mut self, seen: &[Seen]) {
        let listed: HashMap<u64, &Seen> = seen.iter().filter_map(|s| Some((s.id?, s))).collect();
        if listed.len() != seen.len() {
            self.problems
                .push("a message without a ledger id, or listed twice".into());
        }
        if let Some(marked) = self.pending.take() {
            let here = marked.iter().filter(|id| listed.contains_key(id)).count();
            if here == 0 {
                self.stats.unanswered_applied += 1;
                for id in &marked {
                    self.present.remove(id);
                }
            } else if here == marked.len() {
                self.stats.unanswered_not_applied += 1;
            } else {
                self.problems.push(format!(
                    "a QUIT without +OK deleted {} of the {} messages it marked",
                    marked.len() - here,
                    marked.len()
                ));
                for id in &marked {
                    if !listed.contains_key(id) {
                        self.present.remove(id);
                    }
                }
            }
        }
        for (id, s) in &listed {
            if self.unacked.remove(id) {
                self.present.insert(*id, None);
            }
            match self.present.get_mut(id) {
                None => self.problems.push(format!(
                    "message {id} listed after it was deleted, or never delivered"
                )),
                Some(uid @ None) => *uid = Some(s.uid.clone()),
                Some(Some(uid)) if *uid != s.uid => self
                    .problems
                    .push(format!("message {id}: UID changed from {uid} to {}", s.uid)),
                Some(Some(_)) => {}
            }
        }
        let lost: Vec<u64> = self
            .present
            .keys()
            .filter(|id| !listed.contains_key(id))
            .copied()
            .collect();
        for id in lost {
            self.problems.push(format!("message {id} lost"));
            self.present.remove(&id);
        }
        // A delivery that ended is final: not listed now, never listed later.
        self.unacked.clear();
    }

    /// The last look at the maildrop, once the disruptions are over: it must be reachable.
    fn final_check(&mut self) {
        let before = self.problems.len();
        let allowed = self.stats.allowed_errors;
        self.session(true);
        if self.stats.allowed_errors != allowed && self.problems.len() == before {
            self.problems
                .push("the last check could not list the maildrop".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looper() -> Looper {
        let bins = Bins {
            pop3d: PathBuf::from("pop3d"),
            popadm: PathBuf::from("popadm"),
            store: None,
        };
        Looper::new(
            "u",
            "p",
            &bins,
            PathBuf::from("data"),
            Vec::new(),
            &mut Rng::new(1),
        )
    }

    fn listing(ids: &[u64]) -> Vec<Seen> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| Seen {
                number: i as u32 + 1,
                uid: format!("uid{id}"),
                size: 100,
                id: Some(*id),
            })
            .collect()
    }

    #[test]
    fn the_ledger_catches_losses_partial_quits_and_late_deliveries() {
        let mut l = looper();
        l.present.extend([(1, None), (2, None), (3, None)]);
        l.unacked.insert(9);
        l.reconcile(&listing(&[1, 2, 3]));
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        // An unacknowledged delivery not listed at once never appears later.
        l.reconcile(&listing(&[1, 2, 3, 9]));
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);

        // A QUIT without +OK: all or nothing.
        let mut l = looper();
        l.present.extend([(1, None), (2, None), (3, None)]);
        l.pending = Some(vec![1, 2]);
        l.reconcile(&listing(&[3]));
        assert!(l.problems.is_empty() && l.stats.unanswered_applied == 1);
        l.pending = Some(vec![3]);
        l.reconcile(&listing(&[3]));
        assert!(l.problems.is_empty() && l.stats.unanswered_not_applied == 1);
        l.present.extend([(4, None), (5, None)]);
        l.pending = Some(vec![4, 5]);
        l.reconcile(&listing(&[3, 4]));
        assert_eq!(l.problems.len(), 1, "partial QUIT: {:?}", l.problems);

        // A message gone without a QUIT, and a changed UID.
        let mut l = looper();
        l.present.extend([(1, None), (2, None)]);
        l.reconcile(&listing(&[1, 2]));
        let mut changed = listing(&[1]);
        changed[0].uid = "other".into();
        l.reconcile(&changed);
        assert_eq!(l.problems.len(), 2, "{:?}", l.problems);
    }

    #[test]
    fn allowed_errors_are_only_the_disruption_kinds() {
        for e in [
            "PASS: \"-ERR [SYS/TEMP] maildrop store unavailable\"",
            "login u: \"-ERR [IN-USE] maildrop locked\"",
            "connect: Connection refused (os error 111)",
            "closed",
        ] {
            assert!(allowed_kind(e).is_some(), "{e}");
        }
        for e in [
            "login u: \"-ERR [AUTH] invalid credentials\"",
            "\"DELE 1\" answered \"-ERR no such message\"",
            "Resource temporarily unavailable (os error 11)",
        ] {
            assert!(allowed_kind(e).is_none(), "{e}");
        }
    }
}
