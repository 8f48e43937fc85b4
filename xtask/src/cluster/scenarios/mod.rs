//! The cluster test's scenarios, one file each, all run on a [`ClusterEnv`] with a fresh
//! database: each adds what it finds to `violations` and returns an error only when it could
//! not go on.

use std::net::SocketAddr;

use super::ClusterEnv;
use crate::harness::{try_login, Client};

mod fencing;
mod in_use;
pub mod mail;
mod restart;
mod stream;

pub use fencing::fencing;
pub use in_use::in_use;
pub use restart::restart_clears_leases;
pub use stream::nginx_stream;

/// `user` with ledger messages `ids` of `size` octets, logged in at `addr`: the session and
/// its UIDs.
pub(crate) fn opened(
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
pub(crate) fn uids(c: &mut Client) -> Result<Vec<String>, String> {
    c.listing("UIDL")
        .map(|l| l.into_iter().map(|(_, uid)| uid).collect())
        .map_err(|e| format!("UIDL: {e}"))
}
