//! Accounts, their secrets and policy, domains, LOGIN-DELAY and the batched record of logins,
//! for both backends.

use std::time::Duration;

use tracing::info;

use super::locks::live_holder;
use super::rows::{account_row, summary_row, summary_select, AccountRow, Columns, ACCOUNT_COLUMNS};
use super::{RowLock, Sql};
use crate::common::{expire_to_sql, login_verdict, to_u64};
use crate::{
    Account, AccountId, AccountImport, AccountName, AccountPolicy, AccountSecrets, AccountSummary,
    LoginDelay, LoginRecord, OnExisting, Result, StoreError,
};

/// The named account's row, locked as `lock` says. `IS NOT DISTINCT FROM` matches a NULL
/// domain too.
pub fn find<S: Sql>(tx: &mut S, name: &AccountName, lock: RowLock) -> Result<Option<AccountRow>> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts a LEFT JOIN domains d ON d.id = a.domain_id
         WHERE a.local = $1 AND d.name IS NOT DISTINCT FROM $2 {}",
        S::row_lock(lock, "a")
    );
    tx.row(&sql, &[&name.local(), &name.domain()], |row| {
        account_row(row)
    })
}

/// Id and uidvalidity of the named account, or `NoSuchAccount`.
pub fn id<S: Sql>(tx: &mut S, name: &AccountName, lock: RowLock) -> Result<(AccountId, i64)> {
    match find(tx, name, lock)? {
        Some(row) => Ok((row.id, row.uidvalidity)),
        None => Err(StoreError::NoSuchAccount(name.to_string())),
    }
}

/// `NoSuchAccount("#ID")` unless the account exists. On PostgreSQL, `FOR KEY SHARE` keeps it
/// from being deleted until the transaction ends, without waiting for deliveries.
pub fn ensure_exists<S: Sql>(tx: &mut S, account: AccountId) -> Result<()> {
    let sql = format!(
        "SELECT id FROM accounts WHERE id = $1 {}",
        S::row_lock(RowLock::KeyShare, "accounts")
    );
    match tx.value::<i64>(&sql, &[&account])? {
        Some(_) => Ok(()),
        None => Err(StoreError::NoSuchAccount(format!("#{account}"))),
    }
}

/// Inserts a new account (its domain too, if new) with a fresh UID validity; `AccountExists`
/// if another transaction created the name meanwhile.
fn insert<S: Sql>(
    tx: &mut S,
    name: &AccountName,
    password_hash: &str,
    secrets: &AccountSecrets,
) -> Result<AccountId> {
    let domain_id: Option<i64> = match name.domain() {
        None => None,
        Some(domain) => {
            tx.execute(
                "INSERT INTO domains (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&domain],
            )?;
            tx.value("SELECT id FROM domains WHERE name = $1", &[&domain])?
        }
    };
    // A fresh uidvalidity, greater than any before, so that an account re-created under an
    // old name never generates an old UID; taken in one statement, so that concurrent
    // creations get different ones.
    let sql = format!(
        "UPDATE meta SET value = CASE WHEN value + 1 > {now} THEN value + 1 ELSE {now} END
         WHERE key = 'last_uidvalidity' RETURNING value, {now}",
        now = S::NOW
    );
    let (uidvalidity, created_at): (i64, i64) = tx
        .row(&sql, &[], |row| Ok((row.column(0)?, row.column(1)?)))?
        .ok_or_else(|| StoreError::Backend("meta has no last_uidvalidity".into()))?;
    let inserted: Option<i64> = tx.value(
        "INSERT INTO accounts (local, domain_id, password_hash, uidvalidity, created_at,
                               scram_sha256, legacy_secret, cram_md5_states)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING RETURNING id",
        &[
            &name.local(),
            &domain_id,
            &password_hash,
            &uidvalidity,
            &created_at,
            &secrets.scram_sha256,
            &secrets.legacy_secret,
            &secrets.cram_md5_states,
        ],
    )?;
    let Some(id) = inserted else {
        return Err(StoreError::AccountExists(name.to_string()));
    };
    info!(account = id, name = %name, "account created");
    Ok(id)
}

/// Replaces an account's password hash and all its other secrets.
fn update_secrets<S: Sql>(
    tx: &mut S,
    id: AccountId,
    password_hash: &str,
    secrets: &AccountSecrets,
) -> Result<()> {
    tx.execute(
        "UPDATE accounts SET password_hash = $2, scram_sha256 = $3, legacy_secret = $4,
                             cram_md5_states = $5
         WHERE id = $1",
        &[
            &id,
            &password_hash,
            &secrets.scram_sha256,
            &secrets.legacy_secret,
            &secrets.cram_md5_states,
        ],
    )?;
    Ok(())
}

pub fn create<S: Sql>(
    tx: &mut S,
    name: &AccountName,
    password_hash: &str,
    secrets: &AccountSecrets,
) -> Result<AccountId> {
    if find(tx, name, RowLock::None)?.is_some() {
        return Err(StoreError::AccountExists(name.to_string()));
    }
    insert(tx, name, password_hash, secrets)
}

/// Creates or replaces every account of `accounts`: `true` for each created, `false` for each
/// replaced.
pub fn import<S: Sql>(
    tx: &mut S,
    accounts: &[AccountImport],
    existing: OnExisting,
) -> Result<Vec<bool>> {
    let mut created = Vec::with_capacity(accounts.len());
    for a in accounts {
        match (find(tx, &a.name, RowLock::Write)?, existing) {
            (None, _) => {
                insert(tx, &a.name, &a.password_hash, &a.secrets)?;
                created.push(true);
            }
            (Some(row), OnExisting::Replace) => {
                update_secrets(tx, row.id, &a.password_hash, &a.secrets)?;
                created.push(false);
            }
            (Some(_), OnExisting::Refuse) => {
                return Err(StoreError::AccountExists(a.name.to_string()));
            }
        }
    }
    info!(accounts = accounts.len(), "accounts imported");
    Ok(created)
}

pub fn delete<S: Sql>(tx: &mut S, name: &AccountName) -> Result<()> {
    let (id, _) = self::id(tx, name, RowLock::Update)?;
    if let Some(holder) = live_holder(tx, id, RowLock::None)? {
        return Err(StoreError::Locked { holder });
    }
    // Messages, their chunks and any stale lock go by ON DELETE CASCADE.
    tx.execute("DELETE FROM accounts WHERE id = $1", &[&id])?;
    info!(account = id, name = %name, "account deleted");
    Ok(())
}

pub fn set_secrets<S: Sql>(
    tx: &mut S,
    name: &AccountName,
    password_hash: &str,
    secrets: &AccountSecrets,
) -> Result<()> {
    let (id, _) = self::id(tx, name, RowLock::None)?;
    update_secrets(tx, id, password_hash, secrets)
}

pub fn account<S: Sql>(tx: &mut S, name: &AccountName) -> Result<Option<Account>> {
    Ok(find(tx, name, RowLock::None)?.map(|row| row.into_account(name)))
}

/// Every account's summary, by name.
pub fn summaries<S: Sql>(tx: &mut S) -> Result<Vec<AccountSummary>> {
    let mut all = tx.rows(&summary_select::<S>(), &[], |row| summary_row(row))?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

pub fn summary<S: Sql>(tx: &mut S, name: &AccountName) -> Result<AccountSummary> {
    let (id, _) = self::id(tx, name, RowLock::None)?;
    let sql = format!("{} WHERE a.id = $1", summary_select::<S>());
    tx.row(&sql, &[&id], |row| summary_row(row))?
        .ok_or_else(|| StoreError::NoSuchAccount(name.to_string()))
}

/// Replaces the password hash with `new` only if it is still `old`.
pub fn rehash_password<S: Sql>(tx: &mut S, id: AccountId, old: &str, new: &str) -> Result<bool> {
    let sql = "UPDATE accounts SET password_hash = $3 WHERE id = $1 AND password_hash = $2";
    Ok(tx.execute(sql, &[&id, &old, &new])? == 1)
}

/// Stores SCRAM keys where there are none, only for the password hash they come from.
pub fn add_scram_keys<S: Sql>(tx: &mut S, id: AccountId, hash: &str, scram: &str) -> Result<bool> {
    let changed = tx.execute(
        "UPDATE accounts SET scram_sha256 = $3
         WHERE id = $1 AND password_hash = $2 AND scram_sha256 IS NULL",
        &[&id, &hash, &scram],
    )?;
    Ok(changed == 1)
}

pub fn replace_scram_keys<S: Sql>(
    tx: &mut S,
    id: AccountId,
    hash: &str,
    old: &str,
    scram: &str,
) -> Result<bool> {
    let changed = tx.execute(
        "UPDATE accounts SET scram_sha256 = $4
         WHERE id = $1 AND password_hash = $2 AND scram_sha256 = $3",
        &[&id, &hash, &old, &scram],
    )?;
    Ok(changed == 1)
}

pub fn set_policy<S: Sql>(tx: &mut S, name: &AccountName, policy: AccountPolicy) -> Result<()> {
    let (id, _) = self::id(tx, name, RowLock::None)?;
    tx.execute(
        "UPDATE accounts SET login_delay = $2, expire_days = $3 WHERE id = $1",
        &[
            &id,
            &policy.login_delay.map(i64::from),
            &expire_to_sql(policy.expire),
        ],
    )?;
    info!(account = id, name = %name, ?policy, "account policy set");
    Ok(())
}

pub fn check_login_delay<S: Sql>(
    tx: &mut S,
    account: AccountId,
    delay: Duration,
    burst: u32,
) -> Result<LoginDelay> {
    let sql = format!(
        "SELECT last_login, login_tokens FROM accounts WHERE id = $1 {}",
        S::row_lock(RowLock::Write, "accounts")
    );
    let state: Option<(Option<i64>, Option<f64>)> = tx.row(&sql, &[&account], |row| {
        Ok((row.column(0)?, row.column(1)?))
    })?;
    let Some((last_login, tokens)) = state else {
        return Err(StoreError::NoSuchAccount(format!("#{account}")));
    };
    // Read once the row is locked (SQLite: under the write lock), so concurrent logins are
    // ordered by one clock.
    let now = tx.now_f64()?;
    login_verdict(delay, burst, last_login, tokens, now).answer(account, |last_login, tokens| {
        tx.execute(
            "UPDATE accounts SET last_login = $2, login_tokens = $3 WHERE id = $1",
            &[&account, &last_login, &tokens],
        )?;
        Ok(())
    })
}

/// Every domain with the number of its accounts, by name.
pub fn domains<S: Sql>(tx: &mut S) -> Result<Vec<(String, u64)>> {
    tx.rows(
        "SELECT d.name, (SELECT count(*) FROM accounts a WHERE a.domain_id = d.id)
         FROM domains d ORDER BY d.name",
        &[],
        |row| Ok((row.column(0)?, to_u64(row.column(1)?))),
    )
}

pub fn add_domain<S: Sql>(tx: &mut S, domain: &str) -> Result<()> {
    let n = tx.execute(
        "INSERT INTO domains (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        &[&domain],
    )?;
    if n == 0 {
        return Err(StoreError::DomainExists(domain.to_string()));
    }
    Ok(())
}

/// The accounts of an existing domain (whose row is locked as `lock` says), or
/// `NoSuchDomain`.
pub fn domain_members<S: Sql>(tx: &mut S, domain: &str, lock: RowLock) -> Result<Vec<AccountName>> {
    let sql = format!(
        "SELECT id FROM domains WHERE name = $1 {}",
        S::row_lock(lock, "domains")
    );
    let Some(id) = tx.value::<i64>(&sql, &[&domain])? else {
        return Err(StoreError::NoSuchDomain(domain.to_string()));
    };
    tx.rows(
        "SELECT local FROM accounts WHERE domain_id = $1 ORDER BY local",
        &[&id],
        |row| {
            Ok(AccountName::from_stored(
                row.column(0)?,
                Some(domain.to_string()),
            ))
        },
    )
}

/// Deletes a domain and its accounts unless one of them is locked. The domain row is locked
/// first, so no account is added to it meanwhile.
pub fn delete_domain<S: Sql>(tx: &mut S, domain: &str) -> Result<Vec<AccountName>> {
    let members = domain_members(tx, domain, RowLock::Update)?;
    for name in &members {
        let (id, _) = self::id(tx, name, RowLock::Update)?;
        if let Some(holder) = live_holder(tx, id, RowLock::None)? {
            return Err(StoreError::Locked { holder });
        }
    }
    tx.execute(
        "DELETE FROM accounts WHERE domain_id = (SELECT id FROM domains WHERE name = $1)",
        &[&domain],
    )?;
    tx.execute("DELETE FROM domains WHERE name = $1", &[&domain])?;
    info!(domain, accounts = members.len(), "domain deleted");
    Ok(members)
}

/// Writes each account's latest login of `logins` where it is newer than the stored one.
pub fn record_logins<S: Sql>(tx: &mut S, logins: &[LoginRecord]) -> Result<()> {
    // The latest per account only: one statement per account however many logins it had.
    let mut latest: Vec<&LoginRecord> = Vec::new();
    for login in logins {
        match latest.iter_mut().find(|l| l.account == login.account) {
            Some(slot) if slot.at <= login.at => *slot = login,
            Some(_) => {}
            None => latest.push(login),
        }
    }
    for login in latest {
        tx.execute(
            "UPDATE accounts SET login_at = $2, login_peer = $3, login_mechanism = $4
             WHERE id = $1 AND (login_at IS NULL OR login_at <= $2)",
            &[
                &login.account,
                &login.at,
                &login.source.peer,
                &login.source.mechanism,
            ],
        )?;
    }
    Ok(())
}
