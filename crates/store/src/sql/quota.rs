//! Quotas (messages and octets per maildrop), for both backends.
//!
//! A limit is set per account, per domain (the default of its accounts) and globally (a `meta`
//! row): stored as NULL (not set here, the next level's applies), -1 (unlimited) or the limit.
//! The effective limit is the first one set, account before domain before global, read in one
//! expression ([`effective`]) by the summaries and by the check.
//!
//! The check runs inside the delivery's (or import's) transaction, after the account row is
//! locked (`FOR NO KEY UPDATE` on PostgreSQL; SQLite's write transactions exclude each other),
//! so two deliveries to one maildrop are ordered and the second one sees the first one's
//! messages: no number of concurrent deliveries can take a maildrop over its quota.

use tracing::info;

use super::{accounts, RowLock, Sql};
use crate::common::{to_i64, to_u64};
use crate::{AccountId, Delivered, Limit, Quota, QuotaScope, QuotaSetting, Result, StoreError};

/// The two limits, as their column names (in `accounts`, `domains`) and `meta` keys.
const MESSAGES: &str = "quota_messages";
const OCTETS: &str = "quota_octets";

/// SQL expression: the effective limit `column` (`quota_messages` or `quota_octets`) of the
/// account `a` in domain `d` (a LEFT JOIN), -1 for unlimited.
pub fn effective(column: &str) -> String {
    format!("coalesce(a.{column}, d.{column}, (SELECT value FROM meta WHERE key = '{column}'), -1)")
}

/// A stored limit as a [`Limit`].
fn from_sql(value: Option<i64>) -> Limit {
    match value {
        None => Limit::Default,
        Some(v) if v < 0 => Limit::Unlimited,
        Some(v) => Limit::At(to_u64(v)),
    }
}

/// A [`Limit`] as stored.
fn to_sql(limit: Limit) -> Option<i64> {
    match limit {
        Limit::Default => None,
        Limit::Unlimited => Some(-1),
        Limit::At(n) => Some(to_i64(n)),
    }
}

/// An effective limit (-1 = unlimited) as a [`Quota`] field.
pub fn effective_from_sql(value: i64) -> Option<u64> {
    u64::try_from(value).ok()
}

/// The table, and the row id, where `scope` keeps its limits (`None` for the global `meta`
/// rows), the row locked for a change.
fn row<S: Sql>(tx: &mut S, scope: QuotaScope<'_>) -> Result<Option<(&'static str, i64)>> {
    match scope {
        QuotaScope::Global => Ok(None),
        QuotaScope::Account(name) => {
            let (id, _) = accounts::id(tx, name, RowLock::Write)?;
            Ok(Some(("accounts", id)))
        }
        QuotaScope::Domain(domain) => {
            let sql = format!(
                "SELECT id FROM domains WHERE name = $1 {}",
                S::row_lock(RowLock::Write, "domains")
            );
            match tx.value::<i64>(&sql, &[&domain])? {
                Some(id) => Ok(Some(("domains", id))),
                None => Err(StoreError::NoSuchDomain(domain.to_string())),
            }
        }
    }
}

fn read<S: Sql>(tx: &mut S, place: Option<(&'static str, i64)>) -> Result<QuotaSetting> {
    let limit = |tx: &mut S, column: &str| -> Result<Limit> {
        let value: Option<i64> = match place {
            None => tx
                .value("SELECT value FROM meta WHERE key = $1", &[&column])?
                .flatten(),
            Some((table, id)) => tx
                .value(
                    &format!("SELECT {column} FROM {table} WHERE id = $1"),
                    &[&id],
                )?
                .flatten(),
        };
        // The global default has no level above it: not set is unlimited.
        Ok(match (place, from_sql(value)) {
            (None, Limit::Default) => Limit::Unlimited,
            (_, limit) => limit,
        })
    };
    Ok(QuotaSetting {
        messages: limit(tx, MESSAGES)?,
        octets: limit(tx, OCTETS)?,
    })
}

pub fn setting<S: Sql>(tx: &mut S, scope: QuotaScope<'_>) -> Result<QuotaSetting> {
    let place = row(tx, scope)?;
    read(tx, place)
}

pub fn set<S: Sql>(
    tx: &mut S,
    scope: QuotaScope<'_>,
    messages: Option<Limit>,
    octets: Option<Limit>,
) -> Result<QuotaSetting> {
    let place = row(tx, scope)?;
    for (column, limit) in [(MESSAGES, messages), (OCTETS, octets)] {
        let Some(limit) = limit else { continue };
        let value = to_sql(limit);
        match place {
            None => {
                let value = value.unwrap_or(-1);
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&column, &value],
                )?;
            }
            Some((table, id)) => {
                let sql = format!("UPDATE {table} SET {column} = $2 WHERE id = $1");
                tx.execute(&sql, &[&id, &value])?;
            }
        }
    }
    let now = read(tx, place)?;
    info!(scope = ?scope, ?now, "quota set");
    Ok(now)
}

/// What a maildrop holds and may hold, read inside the delivery's transaction.
pub struct Usage {
    quota: Quota,
    messages: u64,
    octets: u64,
}

/// The quota and use of `account` (whose row the caller locked), or `None` when it has no
/// limit. The use is the count and octets kept on the account row by the `messages` triggers
/// (schema v7), so the check reads one row however large the maildrop is.
pub fn usage<S: Sql>(tx: &mut S, account: AccountId) -> Result<Option<Usage>> {
    let sql = format!(
        "SELECT {}, {}, a.message_count, a.message_octets
         FROM accounts a LEFT JOIN domains d ON d.id = a.domain_id WHERE a.id = $1",
        effective(MESSAGES),
        effective(OCTETS)
    );
    let row: Option<(i64, i64, i64, i64)> = tx.row(&sql, &[&account], |row| {
        use super::rows::Columns as _;
        Ok((
            row.column(0)?,
            row.column(1)?,
            row.column(2)?,
            row.column(3)?,
        ))
    })?;
    let Some((messages_limit, octets_limit, messages, octets)) = row else {
        return Err(StoreError::NoSuchAccount(format!("#{account}")));
    };
    let quota = Quota {
        messages: effective_from_sql(messages_limit),
        octets: effective_from_sql(octets_limit),
    };
    if quota == Quota::default() {
        return Ok(None);
    }
    Ok(Some(Usage {
        quota,
        messages: to_u64(messages),
        octets: to_u64(octets),
    }))
}

impl Usage {
    /// `OverQuota` for `account` (named `name`) if `adding` more messages and `octets` more
    /// octets take the maildrop over its quota. A maildrop may reach its limit exactly;
    /// adding nothing is never refused, even to a maildrop over its quota (lowered since).
    pub fn check(&self, name: &str, adding: u64, octets: u64) -> Result<()> {
        if adding == 0 {
            return Ok(());
        }
        let messages = self.messages.saturating_add(adding);
        let total = self.octets.saturating_add(octets);
        let over = |what: &str, now: u64, after: u64, limit: u64| StoreError::OverQuota {
            account: name.to_string(),
            detail: format!(
                "{what}: {after} with {} new, over the limit of {limit} (holds {now})",
                if what == "messages" { adding } else { octets }
            ),
        };
        if let Some(limit) = self.quota.messages.filter(|l| messages > *l) {
            return Err(over("messages", self.messages, messages, limit));
        }
        if let Some(limit) = self.quota.octets.filter(|l| total > *l) {
            return Err(over("octets", self.octets, total, limit));
        }
        Ok(())
    }

    /// [`Usage::check`] before anything is stored: already full (no room for one more message,
    /// or not one more octet), the message is not even read.
    pub fn check_room(&self, name: &str) -> Result<()> {
        self.check(name, 1, 1)
    }

    /// [`Usage::check`] for what was stored.
    pub fn check_stored(&self, name: &str, stored: &[Delivered]) -> Result<()> {
        let octets = stored
            .iter()
            .map(|d| d.size)
            .fold(0u64, u64::saturating_add);
        self.check(name, stored.len() as u64, octets)
    }
}
