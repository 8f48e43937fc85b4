//! One POP3 session of a fault round (survey, a RETR, DELE of a random subset, then QUIT or a
//! drop), what it saw and how it ended, the kill it may trigger at QUIT, and which errors a
//! disruption allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{password, user_name, LOCK_PATIENCE};
use crate::harness::{self, KillTrigger, Rng, Seen};

pub(super) enum Outcome {
    /// Never got in (pop3d gone, or a lock problem noted in `problems`).
    NotLoggedIn,
    /// The session ended before QUIT was sent: nothing it marked may be deleted.
    NoQuit,
    /// QUIT answered `+OK`: everything marked is deleted.
    Applied,
    /// QUIT sent, answered `-ERR` or not at all: all or nothing.
    Unanswered,
}

pub(super) struct SessionResult {
    pub(super) user: usize,
    pub(super) seen: Vec<Seen>,
    pub(super) marked: Vec<u64>,
    pub(super) outcome: Outcome,
    pub(super) problems: Vec<String>,
    /// Errors a disruption allows, and logins tried again elsewhere after one.
    pub(super) allowed_errors: u32,
    pub(super) login_retries: u32,
}

/// Kills pop3d once, a random few milliseconds after the first session sends QUIT.
pub(super) struct KillAtQuit {
    pub(super) trigger: KillTrigger,
    pub(super) delay: Duration,
    pub(super) fired: AtomicBool,
}

impl KillAtQuit {
    fn fire(&self) {
        if !self.fired.swap(true, Ordering::SeqCst) {
            std::thread::sleep(self.delay);
            self.trigger.fire();
        }
    }
}

/// Whether a session error is one a disruption allows: `[SYS/TEMP]` or `[IN-USE]`, or a
/// connection refused, reset or closed. A time-out (a hang) or any other `-ERR` is not.
pub fn allowed_error(e: &str) -> bool {
    allowed_kind(e).is_some()
}

/// Which allowed error `e` is (see [`allowed_error`]).
pub fn allowed_kind(e: &str) -> Option<&'static str> {
    [
        "[SYS/TEMP]",
        "[IN-USE]",
        "refused",
        "reset by peer",
        "Broken pipe",
        "closed",
    ]
    .into_iter()
    .find(|p| e.contains(p))
}

impl SessionResult {
    /// Ends the session on error `e` (in `what`): in a strict session an error a disruption
    /// does not allow is a problem.
    fn failed(mut self, strict: bool, what: &str, e: &str) -> SessionResult {
        if strict {
            if allowed_error(e) {
                self.allowed_errors += 1;
            } else {
                self.problems.push(format!("{what}: {e}"));
            }
        }
        self
    }
}

/// One session: survey, a RETR, DELE of a random subset (sometimes RSET and again), then QUIT
/// or a drop. It logs in at `addrs[0]`; a strict session (see [`Mix::Disruptions`]) that
/// meets an allowed error there tries the next addresses, a few times in all.
pub(super) fn session(
    addrs: &[SocketAddr],
    strict: bool,
    user: usize,
    ids: &HashMap<String, u64>,
    targets: &HashMap<u64, usize>,
    mut rng: Rng,
    kill: Option<&KillAtQuit>,
) -> SessionResult {
    let mut r = SessionResult {
        user,
        seen: Vec::new(),
        marked: Vec::new(),
        outcome: Outcome::NotLoggedIn,
        problems: Vec::new(),
        allowed_errors: 0,
        login_retries: 0,
    };
    std::thread::sleep(rng.millis(150));
    let tries = if strict { 2 * addrs.len() } else { 1 };
    let mut client = None;
    for attempt in 0..tries {
        let addr = addrs[attempt % addrs.len()];
        match harness::login(addr, &user_name(user), &password(user), LOCK_PATIENCE) {
            Ok((c, _)) => {
                client = Some(c);
                break;
            }
            // pop3d killed under us is expected; a maildrop locked past its lease is not.
            Err(e) if e.contains("still locked") => {
                r.problems.push(e);
                return r;
            }
            Err(e) if !strict || !allowed_error(&e) || attempt + 1 == tries => {
                return r.failed(strict, "login", &e);
            }
            Err(_) => {
                r.allowed_errors += 1;
                r.login_retries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let Some(mut c) = client else {
        return r;
    };
    r.outcome = Outcome::NoQuit;
    match harness::survey(&mut c, ids) {
        Ok(seen) => r.seen = seen,
        Err(e) => return r.failed(strict, "survey", &e.to_string()),
    }
    if !r.seen.is_empty() {
        let s = &r.seen[rng.below(r.seen.len() as u64) as usize];
        if let Some((id, target)) = s.id.and_then(|id| targets.get(&id).map(|t| (id, *t))) {
            match c.multi(&format!("RETR {}", s.number)) {
                Ok(body) if !harness::stored_as_delivered(&body, &harness::message(id, target)) => {
                    r.problems
                        .push(format!("RETR of message {id} differs from delivered"));
                }
                Ok(_) => {}
                Err(e) => return r.failed(strict, "RETR", &e.to_string()),
            }
        }
    }
    let rounds_of_marking = if rng.percent(10) { 2 } else { 1 };
    for pass in 0..rounds_of_marking {
        if pass > 0 {
            if let Err(e) = c.ok("RSET") {
                return r.failed(strict, "RSET", &e.to_string());
            }
            r.marked.clear();
        }
        for i in 0..r.seen.len() {
            if rng.percent(40) {
                if let Err(e) = c.ok(&format!("DELE {}", r.seen[i].number)) {
                    return r.failed(strict, "DELE", &e.to_string());
                }
                if let Some(id) = r.seen[i].id {
                    r.marked.push(id);
                }
            }
        }
    }
    if rng.percent(10) {
        c.drop_connection();
        return r;
    }
    if let Err(e) = c.send("QUIT") {
        return r.failed(strict, "QUIT", &e.to_string());
    }
    r.outcome = Outcome::Unanswered;
    if let Some(k) = kill {
        k.fire();
    }
    match c.line() {
        Ok(reply) if reply.starts_with("+OK") => r.outcome = Outcome::Applied,
        Ok(reply) => return r.failed(strict, "QUIT", &reply),
        Err(e) => return r.failed(strict, "QUIT", &e.to_string()),
    }
    r
}
