//! The embedded SQLite backend: one database file, a small pool of connections, one short
//! transaction per operation. Its SQL is the shared one of [`crate::sql`], through the
//! dialect in [`tx`]; [`schema`] holds its tables and migrations.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a delivery that returned `Ok` survives
//! a power loss. Writes start with `BEGIN IMMEDIATE`, so two writers never deadlock while
//! upgrading a read lock, and a decision a write transaction makes from what it read holds
//! until it commits (no row locks needed); waiting writers retry for [`BUSY_TIMEOUT`] before
//! `Busy`.
//!
//! Message bytes live in `chunks` rows of [`CHUNK_SIZE`](crate::CHUNK_SIZE) octets (the last
//! one shorter), so no message is ever read or written whole.
//!
//! Times are unix seconds (INTEGER) of this host's clock, read by SQLite (`unixepoch()`) in
//! the statements that record or compare them. The LOGIN-DELAY token bucket keeps sub-second
//! precision without a REAL timestamp: see `common::login_verdict`.

mod backup;
mod schema;
#[cfg(test)]
mod tests;
mod tx;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tracing::warn;

use self::schema::migrate;
use crate::sql::Backend;
use crate::{Result, StoreError};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "maildrops.sqlite3";
/// Idle connections kept for reuse; more are closed when given back.
const MAX_IDLE: usize = 16;
/// Prepared statements kept per connection: more than the store has.
const STATEMENT_CACHE: usize = 64;
/// How long a statement waits for another connection's lock before `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite maildrop store. Cheap to share through an `Arc`; every method takes a pooled
/// connection for one short transaction.
pub struct SqliteStore {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// `PRAGMA mmap_size` of every connection ([`SqliteStore::set_mmap_size`]).
    mmap_size: AtomicU64,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/maildrops.sqlite3`, creating `data_dir` with mode
    /// 0700 on unix if it is missing, and brings the schema up to date.
    pub fn open(data_dir: &Path) -> Result<SqliteStore> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(data_dir)
            .map_err(|e| StoreError::io_at(data_dir, e))?;
        SqliteStore::open_file(&data_dir.join(DB_FILE))
    }

    /// Opens (creating if needed) the database file at `path` and brings the schema up to
    /// date; `SchemaTooNew` if a newer program has migrated it further.
    pub fn open_file(path: &Path) -> Result<SqliteStore> {
        // Create the file private before SQLite does (it would use 0644); SQLite gives the
        // -wal and -shm files the database file's mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::io_at(path, e))?;
        }
        let mut conn = connect(path).map_err(|e| match e {
            StoreError::Io(e) => StoreError::io_at(path, e),
            e => e,
        })?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            idle: Mutex::new(vec![conn]),
            mmap_size: AtomicU64::new(0),
        })
    }

    /// Reads the database through a memory map of up to `bytes` octets (`PRAGMA mmap_size`;
    /// 0, the default, reads with `pread`), on every connection from now on. A large RETR
    /// then costs no system call per 4 KiB page (about a third less CPU, docs/performance.md),
    /// but a read error of the disk under the map arrives as SIGBUS, which ends the process
    /// instead of one session, and the pages read count in the process's RSS (as file pages,
    /// shared with the page cache). SQLite caps the map at its compile-time maximum (2 GiB).
    pub fn set_mmap_size(&self, bytes: u64) -> Result<()> {
        self.mmap_size.store(bytes, Ordering::Relaxed);
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for conn in idle.iter() {
            set_mmap(conn, bytes)?;
        }
        Ok(())
    }

    /// Runs `f` on a pooled connection (or a new one), and gives the connection back unless
    /// it was left inside a transaction.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = connect(&self.path)?;
                set_mmap(&conn, self.mmap_size.load(Ordering::Relaxed))?;
                conn
            }
        };
        let result = f(&mut conn);
        if conn.is_autocommit() {
            let surplus = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                    None
                } else {
                    Some(conn)
                }
            };
            // Closed outside the mutex: closing may checkpoint the WAL.
            drop(surplus);
        }
        result
    }
}

impl Backend for SqliteStore {
    type Tx<'t> = &'t Connection;

    /// One `BEGIN IMMEDIATE` transaction.
    fn write<T>(&self, f: impl FnOnce(&mut &Connection) -> Result<T>) -> Result<T> {
        self.transaction(TransactionBehavior::Immediate, f)
    }

    /// One deferred transaction, so that several statements see one snapshot.
    fn read<T>(&self, f: impl FnOnce(&mut &Connection) -> Result<T>) -> Result<T> {
        self.transaction(TransactionBehavior::Deferred, f)
    }

    /// No transaction: one statement is atomic by itself (autocommit).
    fn single<T>(&self, mut f: impl FnMut(&mut &Connection) -> Result<T>) -> Result<T> {
        self.with_conn(|conn| f(&mut &*conn))
    }

    /// A SQLite database serves one host: its leases record no node.
    fn node(&self) -> Option<&str> {
        None
    }
}

impl SqliteStore {
    /// One transaction, committed when `f` succeeds, rolled back otherwise.
    fn transaction<T>(
        &self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&mut &Connection) -> Result<T>,
    ) -> Result<T> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(behavior)?;
            let value = f(&mut &*tx)?;
            tx.commit()?;
            Ok(value)
        })
    }
}

/// The one place where SQLite errors become store errors. SQLite's messages name tables and
/// constraints, never bound values, so no secret can leak through them.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
            Some(ErrorCode::DiskFull) => StoreError::Full,
            Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
                StoreError::Io(std::io::Error::other(e))
            }
            _ => StoreError::Backend(Box::new(e)),
        }
    }
}

fn set_mmap(conn: &Connection, bytes: u64) -> Result<()> {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    conn.pragma_update(None, "mmap_size", bytes)?;
    Ok(())
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Every statement of the shared SQL is prepared once per connection and kept.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(path = %path.display(), %mode, "SQLite refused WAL journal mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}
