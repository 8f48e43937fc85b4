//! `[IN-USE]` across nodes.

use std::net::SocketAddr;

use super::{opened, uids};
use crate::cluster::ClusterEnv;
use crate::harness::{try_login, Client};

/// `[IN-USE]` across nodes (RFC 2449 section 8.1.1: the maildrop is locked by another
/// session): open on node 1, refused on the others, free everywhere once node 1's QUIT is
/// answered, the same UIDs on every node.
pub fn in_use(env: &mut ClusterEnv, violations: &mut Vec<String>) -> Result<(), String> {
    let (user, pass) = ("inuse", "in use pw");
    let addrs = env.addrs();
    let (mut first, expected) = opened(env, (user, pass), 1..4, 300, addrs[0])?;
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let when = "while node 1 held the maildrop";
        let (mut c, _) = login_expect(*addr, i, (user, pass), "-ERR [IN-USE]", when, violations)?;
        let _ = c.cmd("QUIT");
    }
    first.ok("QUIT").map_err(|e| format!("[IN-USE]: {e}"))?;
    // The lock is released before QUIT's +OK: every node takes the maildrop at once now.
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let when = "after node 1's QUIT";
        let (mut c, ok) = login_expect(*addr, i, (user, pass), "+OK", when, violations)?;
        if !ok {
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

/// A login at `addr` (node `i + 1`) whose PASS must be answered with `want`, a violation
/// saying it was not `when` otherwise: the session, and whether it was.
fn login_expect(
    addr: SocketAddr,
    i: usize,
    (user, pass): (&str, &str),
    want: &str,
    when: &str,
    violations: &mut Vec<String>,
) -> Result<(Client, bool), String> {
    let (c, reply) = try_login(addr, user, pass)?;
    let ok = reply.starts_with(want);
    if !ok {
        violations.push(format!(
            "[IN-USE]: node {} answered {reply:?} {when}",
            i + 1
        ));
    }
    Ok((c, ok))
}
