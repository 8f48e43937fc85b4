//! A small bounded pool of PostgreSQL connections, each with its own cache of prepared
//! statements, and the transaction wrapper the backend works through.
//!
//! At most [`MAX_CONNECTIONS`] connections are open at once; a caller finding none free waits
//! up to [`POOL_WAIT`] for one to come back, then gets `Busy` (pop3d runs store calls on up to
//! hundreds of blocking threads; the database should not see hundreds of connections). A
//! connection that broke is dropped and replaced on demand, so a PostgreSQL restart costs the
//! operations in flight, not the process.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::LOCK_TIMEOUT;
use crate::{Result, StoreError};

/// Connections open at most.
pub(super) const MAX_CONNECTIONS: usize = 16;
/// How long a caller waits for a free connection before `Busy`.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    /// This connection's statements, counting round trips in `round_trips`.
    fn tx<'a>(&'a mut self, round_trips: &'a AtomicU64) -> Tx<'a> {
        Tx {
            client: &mut self.client,
            statements: &mut self.statements,
            lost: false,
            round_trips,
        }
    }
}

struct State {
    idle: Vec<Conn>,
    /// Connections open, idle or lent out.
    open: usize,
}

pub(super) struct Pool {
    config: postgres::Config,
    state: Mutex<State>,
    freed: Condvar,
    /// Messages sent and answered on pooled connections (statements, `BEGIN`, `COMMIT`), so
    /// that tests can hold an operation to its number of round trips.
    round_trips: AtomicU64,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configuration may hold a password: show where it points only.
        f.debug_struct("Pool")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `url`, with one connection opened now so that a wrong URL fails at once.
    pub(super) fn new(url: &str) -> Result<Pool> {
        let mut config = postgres::Config::from_str(url).map_err(|e| {
            // The parser's message never quotes the password.
            StoreError::Backend(format!("invalid PostgreSQL connection string: {e}").into())
        })?;
        if config.get_application_name().is_none() {
            config.application_name("pop3d");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let pool = Pool {
            config,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            round_trips: AtomicU64::new(0),
        };
        let first = pool.connect()?;
        let mut state = pool.lock();
        state.open = 1;
        state.idle.push(first);
        drop(state);
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connect(&self) -> Result<Conn> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!(
            "SET lock_timeout = {}; SET TIME ZONE 'UTC'",
            LOCK_TIMEOUT.as_millis()
        ))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A connection: an idle one, a new one while fewer than [`MAX_CONNECTIONS`] are open,
    /// else the next one given back within [`POOL_WAIT`].
    fn get(&self) -> Result<Lent<'_>> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                if conn.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Lent {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if state.open < MAX_CONNECTIONS {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Lent {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Busy);
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Runs `f` in one transaction, committed when it succeeds, rolled back otherwise.
    ///
    /// A connection the server closed (PostgreSQL restarted, or dropped it) shows only when
    /// used: then its `BEGIN` fails, nothing has been done yet, and the call goes on with the
    /// next connection (at most every pooled one and a new one), so a database restart costs
    /// no operation that starts after it.
    pub(super) fn tx<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let mut lent = self.get()?;
        let mut attempt = 0;
        loop {
            let conn = lent.conn.as_mut().ok_or(StoreError::Busy)?;
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            match conn.client.batch_execute("BEGIN") {
                Ok(()) => break,
                Err(e) if connection_lost(&e) && attempt < MAX_CONNECTIONS => {
                    lent.discard();
                    lent = self.get()?;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let conn = lent.conn.as_mut().ok_or(StoreError::Busy)?;
        let mut tx = conn.tx(&self.round_trips);
        match f(&mut tx) {
            Ok(value) => {
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                tx.client.batch_execute("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                // A failed ROLLBACK leaves a broken connection, which is dropped on return.
                let _ = tx.client.batch_execute("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs `f`, one statement, without a transaction of its own: PostgreSQL runs a lone
    /// statement atomically in an implicit transaction, so `BEGIN` and `COMMIT` would only add
    /// two round trips. `f` must be safe to run again: when the connection turns out to be
    /// lost (PostgreSQL restarted, or dropped it), it runs again on the next one, as
    /// [`Pool::tx`] does after a failed `BEGIN`.
    pub(super) fn autocommit<T>(&self, mut f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let mut lent = self.get()?;
        let mut attempt = 0;
        loop {
            let conn = lent.conn.as_mut().ok_or(StoreError::Busy)?;
            let mut tx = conn.tx(&self.round_trips);
            match f(&mut tx) {
                Err(_) if tx.lost && attempt < MAX_CONNECTIONS => {
                    lent.discard();
                    lent = self.get()?;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// Round trips so far on pooled connections.
    #[cfg(test)]
    pub(super) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Connections open now (idle or lent out).
    #[cfg(test)]
    pub(super) fn open_connections(&self) -> usize {
        self.lock().open
    }
}

/// The server closed the connection or is shutting it down (SQLSTATE classes 08 and 57P).
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

/// A connection lent out; given back (or, when broken, dropped) when this is dropped.
struct Lent<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Lent<'_> {
    /// Drops the connection for good (it is broken) and frees its place in the pool.
    fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.lock().open -= 1;
            self.pool.freed.notify_one();
            drop(conn);
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let broken = if conn.client.is_closed() {
            Some(conn)
        } else {
            self.pool.lock().idle.push(conn);
            None
        };
        if broken.is_some() {
            self.pool.lock().open -= 1;
        }
        self.pool.freed.notify_one();
        // A broken connection is closed outside the mutex.
        drop(broken);
    }
}

/// One transaction (`BEGIN` sent) on a pooled connection; statements are prepared once per
/// connection.
pub struct Tx<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<String, Statement>,
    /// A statement failed because the connection was lost.
    lost: bool,
    round_trips: &'a AtomicU64,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    /// `sql` prepared on this connection, once: the shared SQL is built from a few fragments
    /// and never holds values, so the statements are a fixed, small set.
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let statement = self.client.prepare(sql).map_err(|e| self.failed(e))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// `e` as a store error, noting whether it means the connection is lost.
    fn failed(&mut self, e: postgres::Error) -> StoreError {
        self.lost |= connection_lost(&e);
        e.into()
    }

    pub(super) fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.client
            .query(&statement, params)
            .map_err(|e| self.failed(e))
    }

    pub(super) fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64> {
        let statement = self.statement(sql)?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.client
            .execute(&statement, params)
            .map_err(|e| self.failed(e))
    }

    /// One statement given at run time (tests), not cached.
    #[cfg(test)]
    pub(super) fn query_dynamic(&mut self, sql: &str) -> Result<Vec<Row>> {
        Ok(self.client.query(sql, &[])?)
    }

    /// One statement given at run time (tests), not cached; the rows it changed.
    #[cfg(test)]
    pub(super) fn execute_dynamic(&mut self, sql: &str) -> Result<u64> {
        Ok(self.client.execute(sql, &[])?)
    }

    /// Runs statements without parameters and without preparing them (DDL, migrations).
    pub(super) fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.client.batch_execute(sql)?)
    }
}
