//! A node killed inside its lease, started again with its id.

use super::{opened, uids};
use crate::cluster::{ClusterEnv, LEASE_SECS};
use crate::harness::try_login;

/// A node killed (`kill -9`) while it holds a maildrop, under a lease far longer than the
/// test: its lease row stays, and once the node is started again with the same node id the row
/// is gone at once (cleared at start, not left to expire), the maildrop opens on another node,
/// and the session that had no QUIT deleted nothing. (On one machine another node could also
/// see that the holder's process is gone, as every node has the same host name here: so the
/// rows are counted before any other node looks.)
pub fn restart_clears_leases(
    env: &mut ClusterEnv,
    violations: &mut Vec<String>,
) -> Result<(), String> {
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
