//! The PostgreSQL backend: the same tables and the same semantics as the SQLite one, for
//! several pop3d nodes sharing one database.
//!
//! Its SQL is the shared one of [`crate::sql`], through the dialect in [`tx`]; [`schema`]
//! holds its tables and migrations.
//!
//! Synchronous, like the [`Store`](crate::Store) trait: the `postgres` crate over a small bounded pool of
//! connections of our own ([`pool`]), one short transaction per operation (READ COMMITTED,
//! with explicit row locks where a decision depends on what was read); an operation of one
//! statement runs without `BEGIN` and `COMMIT`, atomic by itself, in one round trip.
//!
//! Time is the database's: lock leases, first retrieval times, LOGIN-DELAY and EXPIRE all read
//! `clock_timestamp()` of PostgreSQL, never the node's clock, so nodes whose clocks disagree
//! still agree on who holds a lease.
//!
//! The maildrop lock is a lease row (`locks`) with an expiry in database time, the node that
//! holds it, and a fencing token from a sequence (monotonic, never rolled back). Deletions
//! ([`Store::commit_update`](crate::Store::commit_update),
//! [`Store::expire_messages`](crate::Store::expire_messages)) first lock that row and check the
//! token and the expiry, so a node that froze past its lease and wakes up after another took
//! the maildrop deletes nothing. A store opened with a node id deletes that node's leases at
//! once: its previous process is gone, and so are its sessions. A node renews all its leases
//! in one statement ([`Store::renew_locks`](crate::Store::renew_locks)), and only those whose holder and token still match
//! and whose lease is not over in database time: a lease that lapsed is never revived, so
//! a session told its lease is lost cannot find it held again later.
//!
//! Row locks, so that no operation waits on another it does not conflict with: writes to a
//! maildrop (delivery, import, LOGIN-DELAY) take the account row `FOR NO KEY UPDATE` and are
//! serialised per maildrop; taking the maildrop lock takes it `FOR KEY SHARE` and the lease
//! row `FOR UPDATE`, so a login never waits for a delivery; deleting an account takes it
//! `FOR UPDATE`, after every one of them. A statement waits at most [`LOCK_TIMEOUT`] for a row
//! lock before `Busy`.

mod pool;
mod schema;
#[cfg(test)]
mod tests;
mod tx;

use std::fmt;
use std::time::Duration;

use postgres::error::SqlState;
use tracing::info;

use self::pool::{Pool, Tx};
use crate::sql::Backend;
use crate::{Result, StoreError};

/// How long a statement waits for a row lock before `Busy` (SQLite's busy timeout).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL maildrop store. Cheap to share through an `Arc`; every method takes a
/// pooled connection for one short transaction.
pub struct PostgresStore {
    pool: Pool,
    /// The node whose leases this store takes (`locks.node`).
    node: Option<String>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool)
            .field("node", &self.node)
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the database named by `url` (`postgres://user@host:port/db` or key=value
    /// pairs, as libpq takes them; TLS is not supported) and brings the schema up to date;
    /// `SchemaTooNew` if a newer program has migrated it further.
    ///
    /// With a `node` id, the leases that node held are deleted: they belonged to its previous
    /// process, whose sessions are gone. Each running pop3d needs its own node id.
    pub fn open(url: &str, node: Option<&str>) -> Result<PostgresStore> {
        let pool = Pool::new(url)?;
        let store = PostgresStore {
            pool,
            node: node.map(str::to_owned),
        };
        store.pool.tx(schema::migrate)?;
        if let Some(node) = node {
            let cleared = store
                .pool
                .tx(|tx| Tx::execute(tx, "DELETE FROM locks WHERE node = $1", &[&node]))?;
            info!(
                node,
                cleared, "leases of this node's previous process cleared"
            );
        }
        Ok(store)
    }
}

/// The one place where PostgreSQL errors become store errors. Only the SQLSTATE and the
/// primary message are kept: a constraint's DETAIL can quote a whole row, secrets included.
impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            let text = format!("{} (SQLSTATE {})", db.message(), code.code());
            return if [
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::QUERY_CANCELED,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(code)
            {
                StoreError::Busy
            } else if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
                StoreError::Full
            } else if code.code().starts_with("08")
                || code.code().starts_with("57P")
                || code.code().starts_with("58")
            {
                // Connection exceptions, shutdown and recovery, system I/O errors.
                StoreError::Io(std::io::Error::other(text))
            } else {
                StoreError::Backend(text.into())
            };
        }
        // No server error: the connection failed or was lost.
        if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        {
            return StoreError::Io(std::io::Error::other(e));
        }
        StoreError::Backend(Box::new(e))
    }
}

impl Backend for PostgresStore {
    type Tx<'t> = Tx<'t>;

    fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        self.pool.tx(f)
    }

    /// The same READ COMMITTED transaction as a write: it locks nothing it only reads.
    fn read<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        self.pool.tx(f)
    }

    /// No `BEGIN` and `COMMIT` around one statement: one round trip instead of three (a
    /// RETR of a one-chunk message, the listing, the login's lookups).
    fn single<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        self.pool.autocommit(f)
    }

    /// The same for a write of one statement (releasing and renewing leases).
    fn write_single<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        self.pool.autocommit(f)
    }

    fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }
}
