//! SQLite's dialect of the shared SQL ([`Sql`] for a rusqlite [`Connection`], inside the
//! transaction the backend began on it, or alone for one statement that reads).
//!
//! Parameters: SQLite reads `$1` as a *named* parameter, numbered by its first appearance, not
//! by its digits; each value is therefore bound by its name. Statements are prepared once per
//! connection (rusqlite's statement cache).
//!
//! Times: lease and message times are whole unix seconds by SQLite's `unixepoch()` (this
//! host's clock); node heartbeats are unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{CachedStatement, Connection, Row};

use crate::sql::{NewLease, Params, RowLock, Sql};
use crate::{AccountId, MaildropLock, Result, StoreError};

/// The names of parameters `$1`, `$2`, ... as SQLite binds them.
const PARAM_NAMES: [&str; 9] = ["$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9"];

/// `sql` prepared (or taken from the cache) with `params` bound.
fn prepare<'c>(conn: &'c Connection, sql: &str, params: Params<'_>) -> Result<CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(sql)?;
    if stmt.parameter_count() != params.len() || params.len() > PARAM_NAMES.len() {
        return Err(StoreError::Backend(
            format!(
                "statement takes {} parameters, given {}",
                stmt.parameter_count(),
                params.len()
            )
            .into(),
        ));
    }
    for (name, param) in PARAM_NAMES.iter().zip(params) {
        stmt.raw_bind_parameter(*name, param.sqlite())?;
    }
    Ok(stmt)
}

/// A lease in whole seconds (rounded down: a lease never lasts longer than asked), bounded
/// so that adding it to now cannot overflow.
fn lease_secs(lease: Duration) -> i64 {
    i64::try_from(lease.as_secs())
        .unwrap_or(i64::MAX)
        .min(i64::MAX / 2)
}

impl Sql for &Connection {
    type Row<'r> = Row<'r>;

    const NOW: &'static str = "unixepoch()";
    const IS_ID: &'static str = "id = $1";
    /// Whole seconds: a lease that ends at second E (`expires_at`, rounded down from the exact
    /// end) is live while now, rounded down, is before E, that is until the instant E.
    const LEASE_LIVE: &'static str = "expires_at > unixepoch()";
    const LEASE_ACQUIRED: &'static str = "l.acquired_at";
    const LEASE_EXPIRES: &'static str = "l.expires_at";
    const HEARTBEAT_NOW: &'static str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
    const HEARTBEAT_AGE_MILLIS: &'static str =
        "max(0, CAST(unixepoch('subsec') * 1000 AS INTEGER) - heartbeat_at)";

    /// No row locks: a write transaction (`BEGIN IMMEDIATE`) excludes every other writer.
    fn row_lock(_lock: RowLock, _table: &str) -> String {
        String::new()
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64> {
        let changed = prepare(self, sql, params)?.raw_execute()?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    fn rows<T>(
        &mut self,
        sql: &str,
        params: Params<'_>,
        mut map: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = prepare(self, sql, params)?;
        let mut rows = stmt.raw_query();
        let mut all = Vec::new();
        while let Some(row) = rows.next()? {
            all.push(map(row)?);
        }
        Ok(all)
    }

    fn now_f64(&mut self) -> Result<f64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()))
    }

    /// One prepared statement per id: SQLite runs in this process, so a loop costs no round
    /// trips.
    fn execute_for_ids(&mut self, sql: &str, ids: &[i64], account: AccountId) -> Result<u64> {
        let mut changed = 0;
        for id in ids {
            changed += self.execute(sql, &[id, &account])?;
        }
        Ok(changed)
    }

    /// One prepared statement per id, as [`Sql::execute_for_ids`].
    fn rows_for_ids<T>(
        &mut self,
        sql: &str,
        ids: &[i64],
        account: AccountId,
        mut map: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut all = Vec::new();
        for id in ids {
            all.extend(self.rows(sql, &[id, &account], &mut map)?);
        }
        Ok(all)
    }

    /// The token counts up in `meta` (AUTOINCREMENT-like: never handed out twice). The node
    /// is not recorded (one host), and `replace` is not needed: under the write lock no other
    /// transaction can have inserted a lease since the caller looked.
    fn take_lease(&mut self, new: &NewLease<'_>, _replace: bool) -> Result<Option<i64>> {
        let token: Option<i64> = self.value(
            "UPDATE meta SET value = value + 1 WHERE key = 'last_lock_token' RETURNING value",
            &[],
        )?;
        let token =
            token.ok_or_else(|| StoreError::Backend("meta has no last_lock_token".into()))?;
        self.execute(
            "INSERT INTO locks (account_id, holder, token, acquired_at, expires_at)
             VALUES ($1, $2, $3, unixepoch(), unixepoch() + $4)
             ON CONFLICT (account_id) DO UPDATE SET holder = excluded.holder,
                 token = excluded.token, acquired_at = excluded.acquired_at,
                 expires_at = excluded.expires_at",
            &[&new.account, &new.holder, &token, &lease_secs(new.lease)],
        )?;
        Ok(Some(token))
    }

    /// One prepared statement per lease, for the same reason as [`Sql::execute_for_ids`].
    fn renew_leases(&mut self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>> {
        let sql = format!(
            "UPDATE locks SET expires_at = unixepoch() + $4
             WHERE account_id = $1 AND token = $2 AND holder = $3 AND {}",
            Self::LEASE_LIVE
        );
        let lease = lease_secs(lease);
        locks
            .iter()
            .map(|lock| {
                let renewed =
                    self.execute(&sql, &[&lock.account, &lock.token, &lock.holder, &lease])?;
                Ok(renewed == 1)
            })
            .collect()
    }
}
