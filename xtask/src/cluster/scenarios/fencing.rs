//! A frozen node's QUIT after it lost its lease: fencing.

use std::time::{Duration, Instant};

use super::{opened, uids};
use crate::cluster::{ClusterEnv, LEASE_SECS};
use crate::faults;
use crate::harness;

/// The frozen node: a session on node 1 marks messages deleted, node 1 is stopped (SIGSTOP)
/// past its lease, node 2 takes the maildrop, node 1 wakes and its QUIT must delete nothing
/// (`-ERR [SYS/TEMP]` or the connection closed). With `holder_stays` node 2 still holds the
/// maildrop when node 1 wakes, else it has quit and nobody holds it: the fencing token, not
/// the lease row, must refuse node 1's commit.
pub fn fencing(
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
