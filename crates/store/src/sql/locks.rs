//! Maildrop locks: leases with fencing tokens, for both backends. What "live" means is the
//! backend's [`Sql::LEASE_LIVE`]; how a lease is taken and renewed is its
//! [`Sql::take_lease`] and [`Sql::renew_leases`].

use std::time::Duration;

use tracing::info;

use super::rows::Columns;
use super::{accounts, Backend, NewLease, RowLock, Sql};
use crate::holder::holder_is_dead;
use crate::{AccountId, MaildropLock, Result, StoreError};

/// The account's lease row, locked as `lock` says: its holder and whether it is live.
fn lease<S: Sql>(tx: &mut S, account: AccountId, lock: RowLock) -> Result<Option<(String, bool)>> {
    let sql = format!(
        "SELECT holder, {} FROM locks WHERE account_id = $1 {}",
        S::LEASE_LIVE,
        S::row_lock(lock, "locks")
    );
    tx.row(&sql, &[&account], |row| {
        Ok((row.column(0)?, row.column(1)?))
    })
}

/// `holder` if its lease is `live` and it may still run.
fn still_held(holder: String, live: bool, account: AccountId) -> Option<String> {
    if !live {
        return None;
    }
    if holder_is_dead(&holder) {
        info!(account, %holder, "maildrop lock holder no longer runs; lock is stale");
        return None;
    }
    Some(holder)
}

/// The holder of the account's lock if its lease is live and its holder may still run.
pub fn live_holder<S: Sql>(
    tx: &mut S,
    account: AccountId,
    lock: RowLock,
) -> Result<Option<String>> {
    Ok(lease(tx, account, lock)?.and_then(|(holder, live)| still_held(holder, live, account)))
}

/// Takes the exclusive lock of `account` for `holder`, for `lease`: `Locked` while another
/// holder's lease is live and that holder may still run.
pub fn lock_maildrop<B: Backend>(
    store: &B,
    account: AccountId,
    holder: &str,
    lease: Duration,
) -> Result<MaildropLock> {
    // Two tries: on PostgreSQL a first lease row may be inserted by another node between our
    // look and our insert; the second look then sees (and locks) it. On SQLite the write lock
    // rules that out and the first try decides.
    for _ in 0..2 {
        let taken = store.write(|tx| {
            accounts::ensure_exists(tx, account)?;
            let current = self::lease(tx, account, RowLock::Update)?;
            let replace = current.is_some();
            if let Some((current, live)) = current {
                if let Some(holder) = still_held(current, live, account) {
                    return Err(StoreError::Locked { holder });
                }
            }
            let new = NewLease {
                account,
                holder,
                node: store.node(),
                lease,
            };
            tx.take_lease(&new, replace)
        })?;
        if let Some(token) = taken {
            return Ok(MaildropLock {
                account,
                token,
                holder: holder.to_owned(),
            });
        }
    }
    Err(StoreError::Busy)
}

/// `LockLost` unless `lock` is the account's current lock and its lease is live. On
/// PostgreSQL the lease row stays locked until the transaction ends, so nobody can take the
/// maildrop over while the caller deletes.
pub fn fence<S: Sql>(tx: &mut S, lock: &MaildropLock) -> Result<()> {
    let sql = format!(
        "SELECT {} FROM locks WHERE account_id = $1 AND token = $2 {}",
        S::LEASE_LIVE,
        S::row_lock(RowLock::Update, "locks")
    );
    match tx.value::<bool>(&sql, &[&lock.account, &lock.token])? {
        Some(true) => Ok(()),
        _ => Err(StoreError::LockLost),
    }
}

/// Releases `lock` (nothing if it was already gone or taken over).
pub fn release<S: Sql>(tx: &mut S, lock: &MaildropLock) -> Result<()> {
    tx.execute(
        "DELETE FROM locks WHERE account_id = $1 AND token = $2",
        &[&lock.account, &lock.token],
    )?;
    Ok(())
}
