//! Result rows mapped to the store's types, each mapper next to the one column list its
//! statements select ([`ACCOUNT_COLUMNS`], [`summary_select`], [`MESSAGE_COLUMNS`],
//! [`node_select`]), so that a column's position is written in one place. [`Columns`] reads a
//! row of either backend.

use std::time::Duration;

use super::{quota, Sql};
use crate::common::{expire_from_sql, node_state, to_u64};
use crate::{
    Account, AccountId, AccountName, AccountPolicy, AccountSecrets, AccountSummary, LockInfo,
    LoginSource, MessageMeta, NodeInfo, Quota, Result, StoreError,
};

/// A value both backends read from a result column: what `rusqlite` and (with the `postgres`
/// feature) `postgres` can both convert.
#[cfg(feature = "postgres")]
pub trait ColumnValue: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a> {}
#[cfg(feature = "postgres")]
impl<T: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>> ColumnValue for T {}

/// A value both backends read from a result column.
#[cfg(not(feature = "postgres"))]
pub trait ColumnValue: rusqlite::types::FromSql {}
#[cfg(not(feature = "postgres"))]
impl<T: rusqlite::types::FromSql> ColumnValue for T {}

/// A result row of either backend, so that the rows both read the same way are mapped to the
/// store's types once, here. Column indexes count from 0; errors are the backend's, mapped as
/// all its errors are.
pub trait Columns {
    /// The value of column `idx`.
    fn column<T: ColumnValue>(&self, idx: usize) -> Result<T>;
    /// The text of column `idx`, lent to `f` without a copy of its own.
    fn with_str<R>(&self, idx: usize, f: impl FnOnce(&str) -> R) -> Result<R>;
    /// The error for the integer `value` of column `idx` (named `name`) that is out of range.
    fn out_of_range(&self, idx: usize, name: &str, value: i64) -> StoreError;
}

impl Columns for rusqlite::Row<'_> {
    fn column<T: ColumnValue>(&self, idx: usize) -> Result<T> {
        Ok(self.get(idx)?)
    }

    fn with_str<R>(&self, idx: usize, f: impl FnOnce(&str) -> R) -> Result<R> {
        let value = self.get_ref(idx)?;
        let text = value.as_str().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, value.data_type(), Box::new(e))
        })?;
        Ok(f(text))
    }

    fn out_of_range(&self, idx: usize, _name: &str, value: i64) -> StoreError {
        rusqlite::Error::IntegralValueOutOfRange(idx, value).into()
    }
}

#[cfg(feature = "postgres")]
impl Columns for postgres::Row {
    fn column<T: ColumnValue>(&self, idx: usize) -> Result<T> {
        Ok(self.try_get(idx)?)
    }

    fn with_str<R>(&self, idx: usize, f: impl FnOnce(&str) -> R) -> Result<R> {
        let text: &str = self.try_get(idx)?;
        Ok(f(text))
    }

    fn out_of_range(&self, _idx: usize, name: &str, value: i64) -> StoreError {
        StoreError::Backend(format!("{name} {value} out of range").into())
    }
}

/// The columns of [`account_row`], from `accounts a`.
pub const ACCOUNT_COLUMNS: &str = "a.id, a.password_hash, a.created_at, a.uidvalidity, \
     a.login_delay, a.expire_days, a.scram_sha256, a.legacy_secret, a.cram_md5_states";

/// An `accounts` row of [`ACCOUNT_COLUMNS`].
pub struct AccountRow {
    pub id: AccountId,
    pub password_hash: String,
    pub created_at: i64,
    pub uidvalidity: i64,
    pub policy: AccountPolicy,
    pub secrets: AccountSecrets,
}

impl AccountRow {
    /// The account named `name` that this row holds.
    pub fn into_account(self, name: &AccountName) -> Account {
        Account {
            id: self.id,
            name: name.clone(),
            password_hash: self.password_hash,
            secrets: self.secrets,
            created_at: self.created_at,
            policy: self.policy,
        }
    }
}

/// Maps a row of [`ACCOUNT_COLUMNS`].
pub fn account_row(row: &impl Columns) -> Result<AccountRow> {
    Ok(AccountRow {
        id: row.column(0)?,
        password_hash: row.column(1)?,
        created_at: row.column(2)?,
        uidvalidity: row.column(3)?,
        policy: policy_from_row(row, 4)?,
        secrets: AccountSecrets {
            scram_sha256: row.column(6)?,
            legacy_secret: row.column(7)?,
            cram_md5_states: row.column(8)?,
        },
    })
}

/// The policy in columns `first` (`login_delay`) and `first + 1` (`expire_days`).
pub fn policy_from_row(row: &impl Columns, first: usize) -> Result<AccountPolicy> {
    let login_delay: Option<i64> = row.column(first)?;
    let login_delay = login_delay
        .map(|d| u32::try_from(d).map_err(|_| row.out_of_range(first, "login_delay", d)))
        .transpose()?;
    let expire = expire_from_sql(row.column(first + 1)?)
        .map_err(|days| row.out_of_range(first + 1, "expire_days", days))?;
    Ok(AccountPolicy {
        login_delay,
        expire,
    })
}

/// The statement [`summary_row`] maps: every account with its message count, octets, live
/// lease (joined only while live), policy, last login (LOGIN-DELAY's), which legacy secrets it
/// has, its effective quota and the last login [`Store::record_logins`](crate::Store) wrote. A
/// `WHERE` clause may follow.
pub fn summary_select<S: Sql>() -> String {
    format!(
        "SELECT a.local, d.name,
            (SELECT count(*) FROM messages m WHERE m.account_id = a.id),
            (SELECT CAST(coalesce(sum(m.size), 0) AS bigint) FROM messages m
             WHERE m.account_id = a.id),
            l.holder, {acquired}, {expires},
            a.login_delay, a.expire_days, a.last_login, a.legacy_secret IS NOT NULL,
            a.cram_md5_states IS NOT NULL, {messages}, {octets}, a.login_at, a.login_peer,
            a.login_mechanism
         FROM accounts a
         LEFT JOIN domains d ON d.id = a.domain_id
         LEFT JOIN locks l ON l.account_id = a.id AND {live}",
        acquired = S::LEASE_ACQUIRED,
        expires = S::LEASE_EXPIRES,
        live = S::LEASE_LIVE,
        messages = quota::effective("quota_messages"),
        octets = quota::effective("quota_octets"),
    )
}

/// Maps a row of [`summary_select`].
pub fn summary_row(row: &impl Columns) -> Result<AccountSummary> {
    let holder: Option<String> = row.column(4)?;
    let lock = match holder {
        Some(holder) => Some(LockInfo {
            holder,
            acquired_at: row.column(5)?,
            expires_at: row.column(6)?,
        }),
        None => None,
    };
    Ok(AccountSummary {
        name: AccountName::from_stored(row.column(0)?, row.column(1)?),
        messages: to_u64(row.column(2)?),
        octets: to_u64(row.column(3)?),
        lock,
        policy: policy_from_row(row, 7)?,
        last_login: latest(row.column(9)?, row.column(14)?),
        last_login_from: match (row.column(15)?, row.column(16)?) {
            (Some(peer), Some(mechanism)) => Some(LoginSource { peer, mechanism }),
            _ => None,
        },
        legacy: row.column(10)?,
        cram_md5: row.column(11)?,
        quota: Quota {
            messages: quota::effective_from_sql(row.column(12)?),
            octets: quota::effective_from_sql(row.column(13)?),
        },
    })
}

/// The later of two optional times.
fn latest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The columns of [`message_meta`], from `messages`.
pub const MESSAGE_COLUMNS: &str = "id, uid, size, header_octets, body_lines, utf8_headers, wire";

/// Maps a row of [`MESSAGE_COLUMNS`].
pub fn message_meta(row: &impl Columns) -> Result<MessageMeta> {
    Ok(MessageMeta {
        id: row.column(0)?,
        uid: row.column(1)?,
        size: to_u64(row.column(2)?),
        header_octets: to_u64(row.column(3)?),
        body_lines: to_u64(row.column(4)?),
        utf8_headers: row.column(5)?,
        wire: row.column(6)?,
    })
}

/// The statement [`node_info`] maps: every node, by id.
pub fn node_select<S: Sql>() -> String {
    format!(
        "SELECT id, address, state, sessions, {age} FROM nodes ORDER BY id",
        age = S::HEARTBEAT_AGE_MILLIS
    )
}

/// Maps a row of [`node_select`].
pub fn node_info(row: &impl Columns) -> Result<NodeInfo> {
    let state: String = row.column(2)?;
    Ok(NodeInfo {
        id: row.column(0)?,
        address: row.column(1)?,
        state: node_state(&state)?,
        sessions: to_u64(row.column(3)?),
        heartbeat_age: Duration::from_millis(to_u64(row.column(4)?)),
    })
}
