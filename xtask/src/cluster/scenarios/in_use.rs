//! `[IN-USE]` across nodes.

use super::{opened, uids};
use crate::cluster::ClusterEnv;
use crate::harness::try_login;

/// `[IN-USE]` across nodes (RFC 2449 section 8.1.1: the maildrop is locked by another
/// session): open on node 1, refused on the others, free everywhere once node 1's QUIT is
/// answered, the same UIDs on every node.
pub fn in_use(env: &mut ClusterEnv, violations: &mut Vec<String>) -> Result<(), String> {
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
