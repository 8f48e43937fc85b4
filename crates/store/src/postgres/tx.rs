//! PostgreSQL's dialect of the shared SQL ([`Sql`] for a pooled [`Tx`]).
//!
//! Time is the database's: every time recorded or compared is `clock_timestamp()`, lease
//! times are `timestamptz`, never a node's clock. Rows read for a decision are locked
//! ([`Sql::row_lock`]), as READ COMMITTED would let another transaction change them.

use std::collections::HashSet;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::Row;

use super::pool::Tx;
use crate::sql::{NewLease, Params, RowLock, Sql};
use crate::{AccountId, MaildropLock, Result, StoreError};

/// A lease in milliseconds, for `clock_timestamp() + $n::bigint * interval '1 millisecond'`.
fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// The parameters as the `postgres` crate takes them.
fn pg<'a>(params: Params<'a>) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p.postgres()).collect()
}

impl Sql for Tx<'_> {
    type Row<'r> = Row;

    const NOW: &'static str = "floor(extract(epoch FROM clock_timestamp()))::bigint";
    const IS_ID: &'static str = "id = ANY($1)";
    /// Database time: a lease is live until the instant it ends, to the microsecond.
    const LEASE_LIVE: &'static str = "expires_at > clock_timestamp()";
    const LEASE_ACQUIRED: &'static str = "floor(extract(epoch FROM l.acquired_at))::bigint";
    const LEASE_EXPIRES: &'static str = "floor(extract(epoch FROM l.expires_at))::bigint";
    const HEARTBEAT_NOW: &'static str = "clock_timestamp()";
    const HEARTBEAT_AGE_MILLIS: &'static str =
        "greatest(0, floor(extract(epoch FROM clock_timestamp() - heartbeat_at) * 1000))::bigint";

    fn row_lock(lock: RowLock, table: &str) -> String {
        let mode = match lock {
            RowLock::None => return String::new(),
            RowLock::KeyShare => "KEY SHARE",
            RowLock::Write => "NO KEY UPDATE",
            RowLock::Update => "UPDATE",
        };
        format!("FOR {mode} OF {table}")
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64> {
        Tx::execute(self, sql, &pg(params))
    }

    /// All ids as one array (`= ANY($1)`): one round trip however many, none for none.
    fn execute_for_ids(&mut self, sql: &str, ids: &[i64], account: AccountId) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        Tx::execute(self, sql, &[&ids, &account])
    }

    /// All ids as one array, as [`Sql::execute_for_ids`].
    fn rows_for_ids<T>(
        &mut self,
        sql: &str,
        ids: &[i64],
        account: AccountId,
        map: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Tx::query(self, sql, &[&ids, &account])?
            .iter()
            .map(map)
            .collect()
    }

    fn rows<T>(
        &mut self,
        sql: &str,
        params: Params<'_>,
        map: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        Tx::query(self, sql, &pg(params))?.iter().map(map).collect()
    }

    fn now_f64(&mut self) -> Result<f64> {
        let now = self.value(
            "SELECT extract(epoch FROM clock_timestamp())::double precision",
            &[],
        )?;
        now.ok_or_else(|| StoreError::Backend("no time from the database".into()))
    }

    /// Tokens come from a sequence (monotonic, never rolled back) and the lease records its
    /// node. Between the caller's look and this insert another node may insert a first lease
    /// row: then nothing is inserted (`None`) and the caller looks again. A row the caller
    /// saw (`replace`) is replaced; its lock is held since the look.
    fn take_lease(&mut self, new: &NewLease<'_>, replace: bool) -> Result<Option<i64>> {
        let row = Tx::query(
            self,
            "INSERT INTO locks (account_id, holder, node, token, acquired_at, expires_at)
             VALUES ($1, $2, $3, nextval('lock_tokens'), clock_timestamp(),
                     clock_timestamp() + $4::bigint * interval '1 millisecond')
             ON CONFLICT (account_id) DO UPDATE SET holder = excluded.holder,
                 node = excluded.node, token = excluded.token,
                 acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
             WHERE $5
             RETURNING token",
            &[
                &new.account,
                &new.holder,
                &new.node,
                &lease_millis(new.lease),
                &replace,
            ],
        )?;
        Ok(row
            .first()
            .map(|row| row.try_get::<_, i64>(0))
            .transpose()?)
    }

    /// All leases in one statement (`unnest` of three arrays): one round trip however many
    /// sessions the node serves.
    fn renew_leases(&mut self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>> {
        let accounts: Vec<AccountId> = locks.iter().map(|l| l.account).collect();
        let tokens: Vec<i64> = locks.iter().map(|l| l.token).collect();
        let holders: Vec<&str> = locks.iter().map(|l| l.holder.as_str()).collect();
        let sql = format!(
            "UPDATE locks l
             SET expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
             FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS r (account_id, token, holder)
             WHERE l.account_id = r.account_id AND l.token = r.token
               AND l.holder = r.holder AND l.{}
             RETURNING l.account_id, l.token, l.holder",
            Self::LEASE_LIVE
        );
        let renewed = Tx::query(
            self,
            &sql,
            &[&accounts, &tokens, &holders, &lease_millis(lease)],
        )?;
        let renewed: HashSet<(AccountId, i64, &str)> = renewed
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<_>>()?;
        Ok(locks
            .iter()
            .map(|l| renewed.contains(&(l.account, l.token, l.holder.as_str())))
            .collect())
    }
}
