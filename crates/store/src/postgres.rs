//! The PostgreSQL backend: the same tables and the same semantics as the SQLite one, for
//! several pop3d nodes sharing one database.
//!
//! Synchronous, like the [`Store`] trait: the `postgres` crate over a small bounded pool of
//! connections of our own ([`pool`]), one short transaction per operation (READ COMMITTED,
//! with explicit row locks where a decision depends on what was read).
//!
//! Time is the database's: lock leases, first retrieval times, LOGIN-DELAY and EXPIRE all read
//! `clock_timestamp()` of PostgreSQL, never the node's clock, so nodes whose clocks disagree
//! still agree on who holds a lease.
//!
//! The maildrop lock is a lease row (`locks`) with an expiry in database time, the node that
//! holds it, and a fencing token from a sequence (monotonic, never rolled back). Deletions
//! ([`Store::commit_update`], [`Store::expire_messages`]) first lock that row and check the
//! token and the expiry, so a node that froze past its lease and wakes up after another took
//! the maildrop deletes nothing. A store opened with a node id deletes that node's leases at
//! once: its previous process is gone, and so are its sessions. A node renews all its leases
//! in one statement ([`Store::renew_locks`]), and only those whose holder and token still match
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

use std::fmt;
use std::io::Read;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use tracing::{debug, info};

use self::pool::{Pool, Tx};
use crate::common::{
    account_row, expire_to_sql, generated_uid, import_accounts, import_each, ingest_chunks,
    login_verdict, message_meta, message_uid, node_changed, node_info, node_state, summary_row,
    to_i64, to_u64, AccountRow, AccountWriter,
};
use crate::holder::holder_is_dead;
use crate::{
    Account, AccountId, AccountImport, AccountName, AccountPolicy, AccountSecrets, AccountSummary,
    Delivered, ImportMessage, LoginDelay, MaildropLock, MessageId, MessageMeta, NodeInfo,
    NodeState, OnExisting, Result, Store, StoreError,
};

/// How long a statement waits for a row lock before `Busy` (SQLite's busy timeout).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; `schema_version.version` counts those applied. Append, never edit.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// The schema of SQLite's v4 in one step, with PostgreSQL's types: identity columns (never
/// reused, like AUTOINCREMENT), `bytea` chunks stored uncompressed (mail is mostly compressed
/// already, and uncompressed TOAST slices read faster), lease times as `timestamptz` of the
/// database's clock and the holding node, fencing tokens from a sequence. Other times are unix
/// seconds (`bigint`), as on SQLite.
const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO meta (key, value) VALUES ('last_uidvalidity', 0);

CREATE SEQUENCE lock_tokens AS bigint;

CREATE TABLE domains (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text UNIQUE NOT NULL
);

CREATE TABLE accounts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    local         text NOT NULL,
    domain_id     bigint NULL REFERENCES domains (id),
    password_hash text NOT NULL,
    uidvalidity   bigint NOT NULL,
    next_uid      bigint NOT NULL DEFAULT 1,
    created_at    bigint NOT NULL,
    login_delay   bigint NULL CHECK (login_delay BETWEEN 0 AND 4294967295),
    expire_days   bigint NULL CHECK (expire_days BETWEEN -1 AND 4294967295),
    last_login    bigint NULL,
    login_tokens  double precision NULL,
    scram_sha256  text NULL,
    legacy_secret text NULL,
    cram_md5_states text NULL
);
CREATE UNIQUE INDEX accounts_name ON accounts (local, coalesce(domain_id, 0));
CREATE INDEX accounts_domain ON accounts (domain_id);

CREATE TABLE messages (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    uid           text NOT NULL,
    size          bigint NOT NULL,
    header_octets bigint NOT NULL,
    body_lines    bigint NOT NULL,
    chunks        bigint NOT NULL,
    delivered_at  bigint NOT NULL,
    retrieved_at  bigint NULL,
    utf8_headers  boolean NOT NULL DEFAULT false,
    UNIQUE (account_id, uid)
);
CREATE INDEX messages_account ON messages (account_id, id);
CREATE INDEX messages_retrieved ON messages (account_id, retrieved_at);

CREATE TABLE chunks (
    message_id bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);
ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE locks (
    account_id  bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    holder      text NOT NULL,
    node        text NULL,
    token       bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX locks_node ON locks (node);
";

/// The node table (`popadm node`), SQLite's v5: the last heartbeat in database time; `state`
/// is what an operator set, never changed by a heartbeat.
const SCHEMA_V2: &str = "
CREATE TABLE nodes (
    id           text PRIMARY KEY,
    address      text NOT NULL,
    state        text NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'draining')),
    sessions     bigint NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
";

/// The database's clock in whole unix seconds.
macro_rules! db_now {
    () => {
        "floor(extract(epoch FROM clock_timestamp()))::bigint"
    };
}

/// Finds an account by name; `IS NOT DISTINCT FROM` matches a NULL domain too. `$3` is the
/// row lock clause.
macro_rules! find_account {
    ($lock:literal) => {
        concat!(
            "SELECT a.id, a.password_hash, a.created_at, a.uidvalidity,
                    a.login_delay, a.expire_days, a.scram_sha256, a.legacy_secret,
                    a.cram_md5_states
             FROM accounts a LEFT JOIN domains d ON d.id = a.domain_id
             WHERE a.local = $1 AND d.name IS NOT DISTINCT FROM $2 ",
            $lock
        )
    };
}

/// Account summaries; only unexpired locks are joined.
macro_rules! summaries {
    ($where:literal) => {
        concat!(
            "SELECT a.local, d.name,
                (SELECT count(*) FROM messages m WHERE m.account_id = a.id),
                (SELECT coalesce(sum(m.size), 0)::bigint FROM messages m
                 WHERE m.account_id = a.id),
                l.holder,
                floor(extract(epoch FROM l.acquired_at))::bigint,
                floor(extract(epoch FROM l.expires_at))::bigint,
                a.login_delay, a.expire_days, a.last_login, a.legacy_secret IS NOT NULL,
                a.cram_md5_states IS NOT NULL
             FROM accounts a
             LEFT JOIN domains d ON d.id = a.domain_id
             LEFT JOIN locks l ON l.account_id = a.id AND l.expires_at > clock_timestamp() ",
            $where
        )
    };
}

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
        store.pool.tx(migrate)?;
        if let Some(node) = node {
            let cleared = store
                .pool
                .tx(|tx| tx.execute("DELETE FROM locks WHERE node = $1", &[&node]))?;
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

/// Applies the migrations past `schema_version`, all in one transaction, under an advisory
/// lock so that nodes starting together migrate once.
fn migrate(tx: &mut Tx<'_>) -> Result<()> {
    tx.batch("SELECT pg_advisory_xact_lock(7090155061245003)")?;
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")?;
    let found: i64 = match tx.query_opt("SELECT version::bigint FROM schema_version", &[])? {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
            0
        }
    };
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    let applied = usize::try_from(found)
        .map_err(|_| StoreError::Backend(format!("invalid schema version {found}").into()))?;
    for (version, script) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch(script)?;
        let version = version as i64 + 1;
        tx.execute(
            "UPDATE schema_version SET version = $1::bigint::integer",
            &[&version],
        )?;
        info!(version, "applied maildrop schema migration (PostgreSQL)");
    }
    Ok(())
}

/// How [`find_account`] locks the row it finds.
#[derive(Clone, Copy)]
enum RowLock {
    None,
    /// Writes to the maildrop (`FOR NO KEY UPDATE`).
    Write,
    /// Deleting the account (`FOR UPDATE`).
    Delete,
}

/// The named account's row.
fn find_account(tx: &mut Tx<'_>, name: &AccountName, lock: RowLock) -> Result<Option<AccountRow>> {
    let params: [&(dyn ToSql + Sync); 2] = [&name.local(), &name.domain()];
    let row = match lock {
        RowLock::None => tx.query_opt(find_account!(""), &params)?,
        RowLock::Write => tx.query_opt(find_account!("FOR NO KEY UPDATE OF a"), &params)?,
        RowLock::Delete => tx.query_opt(find_account!("FOR UPDATE OF a"), &params)?,
    };
    row.as_ref().map(account_row).transpose()
}

/// Id and uidvalidity of the named account, or `NoSuchAccount`.
fn account_id(tx: &mut Tx<'_>, name: &AccountName, lock: RowLock) -> Result<(AccountId, i64)> {
    match find_account(tx, name, lock)? {
        Some(row) => Ok((row.id, row.uidvalidity)),
        None => Err(StoreError::NoSuchAccount(name.to_string())),
    }
}

/// `NoSuchAccount("#ID")` unless the account exists. `FOR KEY SHARE` keeps it from being
/// deleted until the transaction ends, without waiting for deliveries.
fn ensure_account_exists(tx: &mut Tx<'_>, account: AccountId) -> Result<()> {
    let found = tx.query_opt(
        "SELECT 1 FROM accounts WHERE id = $1 FOR KEY SHARE",
        &[&account],
    )?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::NoSuchAccount(format!("#{account}")))
}

/// The holder of the account's lock if it is unexpired (database time) and its holder may be
/// alive.
fn live_lock_holder(tx: &mut Tx<'_>, account: AccountId) -> Result<Option<String>> {
    let row = tx.query_opt(
        "SELECT holder, expires_at > clock_timestamp() FROM locks WHERE account_id = $1",
        &[&account],
    )?;
    Ok(match row {
        Some(row) => live_holder(row.try_get(0)?, row.try_get(1)?, account),
        None => None,
    })
}

/// `holder` if its lease is `live` and it may still run.
fn live_holder(holder: String, live: bool, account: AccountId) -> Option<String> {
    if !live {
        return None;
    }
    if holder_is_dead(&holder) {
        info!(account, %holder, "maildrop lock holder no longer runs; lock is stale");
        return None;
    }
    Some(holder)
}

/// The accounts of an existing domain, or `NoSuchDomain`.
fn domain_members(tx: &mut Tx<'_>, domain: &str) -> Result<Vec<AccountName>> {
    let Some(row) = tx.query_opt("SELECT id FROM domains WHERE name = $1", &[&domain])? else {
        return Err(StoreError::NoSuchDomain(domain.to_string()));
    };
    let id: i64 = row.try_get(0)?;
    let rows = tx.query(
        "SELECT local FROM accounts WHERE domain_id = $1 ORDER BY local",
        &[&id],
    )?;
    rows.iter()
        .map(|row| {
            Ok(AccountName::from_stored(
                row.try_get(0)?,
                Some(domain.to_string()),
            ))
        })
        .collect()
}

/// `LockLost` unless `lock` is the account's current lock and unexpired in database time. The
/// lease row stays locked until the transaction ends, so nobody can take the maildrop over
/// while the caller deletes.
fn check_fence(tx: &mut Tx<'_>, lock: &MaildropLock) -> Result<()> {
    let row = tx.query_opt(
        "SELECT expires_at > clock_timestamp() FROM locks
         WHERE account_id = $1 AND token = $2 FOR UPDATE",
        &[&lock.account, &lock.token],
    )?;
    match row {
        Some(row) if row.try_get::<_, bool>(0)? => Ok(()),
        _ => Err(StoreError::LockLost),
    }
}

fn uid_in_use(tx: &mut Tx<'_>, account: AccountId, uid: &str) -> Result<bool> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM messages WHERE account_id = $1 AND uid = $2",
            &[&account, &uid],
        )?
        .is_some())
}

/// Takes the account's next UID, skipping any that an import already used.
fn generate_uid(tx: &mut Tx<'_>, account: AccountId, uidvalidity: i64) -> Result<String> {
    loop {
        let row = tx.query_one(
            "UPDATE accounts SET next_uid = next_uid + 1 WHERE id = $1 RETURNING next_uid - 1",
            &[&account],
        )?;
        let uid = generated_uid(row.try_get(0)?, uidvalidity);
        if !uid_in_use(tx, account, &uid)? {
            return Ok(uid);
        }
    }
}

/// Stores one message inside the caller's transaction (which holds the account row), streaming
/// it into [`CHUNK_SIZE`](crate::CHUNK_SIZE) chunks. On error the caller rolls back.
fn store_message(
    tx: &mut Tx<'_>,
    account: AccountId,
    uidvalidity: i64,
    uid: Option<String>,
    source: &mut dyn Read,
    max_size: u64,
) -> Result<Delivered> {
    let uid = message_uid(
        &mut *tx,
        uid,
        |tx, uid| uid_in_use(tx, account, uid),
        |tx| generate_uid(tx, account, uidvalidity),
    )?;
    let row = tx.query_one(
        concat!(
            "INSERT INTO messages (account_id, uid, size, header_octets, body_lines, chunks,
                                   delivered_at)
             VALUES ($1, $2, 0, 0, 0, 0, ",
            db_now!(),
            ") RETURNING id"
        ),
        &[&account, &uid],
    )?;
    let id: i64 = row.try_get(0)?;
    let (summary, chunks) = ingest_chunks(source, max_size, |seq, piece| {
        tx.execute(
            "INSERT INTO chunks (message_id, seq, data) VALUES ($1, $2, $3)",
            &[&id, &seq, &piece],
        )?;
        Ok(())
    })?;
    tx.execute(
        "UPDATE messages SET size = $2, header_octets = $3, body_lines = $4, chunks = $5,
                             utf8_headers = $6
         WHERE id = $1",
        &[
            &id,
            &to_i64(summary.size),
            &to_i64(summary.header_octets),
            &to_i64(summary.body_lines),
            &chunks,
            &summary.utf8_headers,
        ],
    )?;
    Ok(Delivered {
        id,
        uid,
        size: summary.size,
    })
}

/// Inserts a new account (its domain too, if new) with a fresh UID validity; `AccountExists`
/// if another transaction created the name meanwhile.
fn insert_account(
    tx: &mut Tx<'_>,
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
            let row = tx.query_one("SELECT id FROM domains WHERE name = $1", &[&domain])?;
            Some(row.try_get(0)?)
        }
    };
    // A fresh uidvalidity, greater than any before, so that an account re-created under an
    // old name never generates an old UID.
    let row = tx.query_one(
        concat!(
            "UPDATE meta SET value = greatest(value + 1, ",
            db_now!(),
            ") WHERE key = 'last_uidvalidity' RETURNING value, ",
            db_now!()
        ),
        &[],
    )?;
    let (uidvalidity, created_at): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    let inserted = tx.query_opt(
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
    let Some(row) = inserted else {
        return Err(StoreError::AccountExists(name.to_string()));
    };
    let id: i64 = row.try_get(0)?;
    info!(account = id, name = %name, "account created");
    Ok(id)
}

/// Replaces an account's password hash and all its other secrets.
fn update_secrets(
    tx: &mut Tx<'_>,
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

/// [`AccountWriter`] over a transaction.
struct Accounts<'a, 'c>(&'a mut Tx<'c>);

impl AccountWriter for Accounts<'_, '_> {
    fn find(&mut self, name: &AccountName) -> Result<Option<AccountId>> {
        Ok(find_account(self.0, name, RowLock::Write)?.map(|row| row.id))
    }

    fn insert(&mut self, name: &AccountName, hash: &str, secrets: &AccountSecrets) -> Result<()> {
        insert_account(self.0, name, hash, secrets).map(drop)
    }

    fn update(&mut self, id: AccountId, hash: &str, secrets: &AccountSecrets) -> Result<()> {
        update_secrets(self.0, id, hash, secrets)
    }
}

/// A lease in milliseconds, for `clock_timestamp() + $n::bigint * interval '1 millisecond'`.
fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

impl Store for PostgresStore {
    fn create_account_with(
        &self,
        name: &AccountName,
        password_hash: &str,
        secrets: &AccountSecrets,
    ) -> Result<AccountId> {
        self.pool.tx(|tx| {
            if find_account(tx, name, RowLock::None)?.is_some() {
                return Err(StoreError::AccountExists(name.to_string()));
            }
            insert_account(tx, name, password_hash, secrets)
        })
    }

    fn import_accounts(
        &self,
        accounts: &[AccountImport],
        existing: OnExisting,
    ) -> Result<Vec<bool>> {
        self.pool.tx(|tx| {
            let created = import_accounts(&mut Accounts(tx), accounts, existing)?;
            info!(accounts = accounts.len(), "accounts imported");
            Ok(created)
        })
    }

    fn delete_account(&self, name: &AccountName) -> Result<()> {
        self.pool.tx(|tx| {
            let (id, _) = account_id(tx, name, RowLock::Delete)?;
            if let Some(holder) = live_lock_holder(tx, id)? {
                return Err(StoreError::Locked { holder });
            }
            // Messages, their chunks and any stale lock go by ON DELETE CASCADE.
            tx.execute("DELETE FROM accounts WHERE id = $1", &[&id])?;
            info!(account = id, name = %name, "account deleted");
            Ok(())
        })
    }

    fn set_secrets(
        &self,
        name: &AccountName,
        password_hash: &str,
        secrets: &AccountSecrets,
    ) -> Result<()> {
        self.pool.tx(|tx| {
            let (id, _) = account_id(tx, name, RowLock::None)?;
            update_secrets(tx, id, password_hash, secrets)
        })
    }

    fn account(&self, name: &AccountName) -> Result<Option<Account>> {
        self.pool
            .tx(|tx| Ok(find_account(tx, name, RowLock::None)?.map(|row| row.into_account(name))))
    }

    fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        let mut all = self.pool.tx(|tx| {
            let rows = tx.query(summaries!(""), &[])?;
            rows.iter().map(summary_row).collect::<Result<Vec<_>>>()
        })?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn account_summary(&self, name: &AccountName) -> Result<AccountSummary> {
        self.pool.tx(|tx| {
            let (id, _) = account_id(tx, name, RowLock::None)?;
            let row = tx.query_one(summaries!("WHERE a.id = $1"), &[&id])?;
            summary_row(&row)
        })
    }

    fn rehash_password(&self, account: AccountId, old_hash: &str, new_hash: &str) -> Result<bool> {
        self.pool.tx(|tx| {
            let n = tx.execute(
                "UPDATE accounts SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                &[&account, &old_hash, &new_hash],
            )?;
            Ok(n == 1)
        })
    }

    fn add_scram_keys(&self, account: AccountId, password_hash: &str, scram: &str) -> Result<bool> {
        self.pool.tx(|tx| {
            let n = tx.execute(
                "UPDATE accounts SET scram_sha256 = $3
                 WHERE id = $1 AND password_hash = $2 AND scram_sha256 IS NULL",
                &[&account, &password_hash, &scram],
            )?;
            Ok(n == 1)
        })
    }

    fn list_domains(&self) -> Result<Vec<(String, u64)>> {
        self.pool.tx(|tx| {
            let rows = tx.query(
                "SELECT d.name, (SELECT count(*) FROM accounts a WHERE a.domain_id = d.id)
                 FROM domains d ORDER BY d.name",
                &[],
            )?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, to_u64(row.try_get(1)?))))
                .collect()
        })
    }

    fn add_domain(&self, domain: &str) -> Result<()> {
        self.pool.tx(|tx| {
            let n = tx.execute(
                "INSERT INTO domains (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&domain],
            )?;
            if n == 0 {
                return Err(StoreError::DomainExists(domain.to_string()));
            }
            Ok(())
        })
    }

    fn domain_accounts(&self, domain: &str) -> Result<Vec<AccountName>> {
        self.pool.tx(|tx| domain_members(tx, domain))
    }

    fn delete_domain(&self, domain: &str) -> Result<Vec<AccountName>> {
        self.pool.tx(|tx| {
            // The domain row first: no account is added to it meanwhile.
            tx.query_opt(
                "SELECT id FROM domains WHERE name = $1 FOR UPDATE",
                &[&domain],
            )?;
            let members = domain_members(tx, domain)?;
            for name in &members {
                let (id, _) = account_id(tx, name, RowLock::Delete)?;
                if let Some(holder) = live_lock_holder(tx, id)? {
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
        })
    }

    fn set_policy(&self, name: &AccountName, policy: AccountPolicy) -> Result<()> {
        self.pool.tx(|tx| {
            let (id, _) = account_id(tx, name, RowLock::None)?;
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
        })
    }

    fn check_login_delay(
        &self,
        account: AccountId,
        delay: Duration,
        burst: u32,
    ) -> Result<LoginDelay> {
        self.pool.tx(|tx| {
            let Some(state) = tx.query_opt(
                "SELECT last_login, login_tokens FROM accounts WHERE id = $1 FOR NO KEY UPDATE",
                &[&account],
            )?
            else {
                return Err(StoreError::NoSuchAccount(format!("#{account}")));
            };
            // Read once the row is locked, so concurrent logins are ordered by one clock.
            let now: f64 = tx
                .query_one(
                    "SELECT extract(epoch FROM clock_timestamp())::double precision",
                    &[],
                )?
                .try_get(0)?;
            let (last_login, tokens) = (state.try_get(0)?, state.try_get(1)?);
            login_verdict(delay, burst, last_login, tokens, now).answer(
                account,
                |last_login, tokens| {
                    tx.execute(
                        "UPDATE accounts SET last_login = $2, login_tokens = $3 WHERE id = $1",
                        &[&account, &last_login, &tokens],
                    )?;
                    Ok(())
                },
            )
        })
    }

    fn deliver(
        &self,
        name: &AccountName,
        message: &mut dyn Read,
        max_size: u64,
    ) -> Result<Delivered> {
        self.pool.tx(|tx| {
            let (account, uidvalidity) = account_id(tx, name, RowLock::Write)?;
            let delivered = store_message(tx, account, uidvalidity, None, message, max_size)?;
            debug!(account, id = delivered.id, uid = %delivered.uid, size = delivered.size,
                "message delivered");
            Ok(delivered)
        })
    }

    fn import(
        &self,
        name: &AccountName,
        messages: &mut dyn Iterator<Item = ImportMessage>,
    ) -> Result<Vec<Delivered>> {
        self.pool.tx(|tx| {
            let (account, uidvalidity) = account_id(tx, name, RowLock::Write)?;
            let delivered = import_each(messages, |uid, bytes, max_size| {
                store_message(tx, account, uidvalidity, uid, bytes, max_size)
            })?;
            info!(account, count = delivered.len(), "messages imported");
            Ok(delivered)
        })
    }

    fn lock_maildrop(
        &self,
        account: AccountId,
        holder: &str,
        lease: Duration,
    ) -> Result<MaildropLock> {
        let millis = lease_millis(lease);
        // Two tries: a first lease row may be inserted by another node between our look and
        // our insert; the second look then sees (and locks) it.
        for _ in 0..2 {
            let taken = self.pool.tx(|tx| {
                ensure_account_exists(tx, account)?;
                let current = tx.query_opt(
                    "SELECT holder, expires_at > clock_timestamp() FROM locks
                     WHERE account_id = $1 FOR UPDATE",
                    &[&account],
                )?;
                if let Some(row) = &current {
                    if let Some(holder) = live_holder(row.try_get(0)?, row.try_get(1)?, account) {
                        return Err(StoreError::Locked { holder });
                    }
                }
                let row = tx.query_opt(
                    "INSERT INTO locks (account_id, holder, node, token, acquired_at, expires_at)
                     VALUES ($1, $2, $3, nextval('lock_tokens'), clock_timestamp(),
                             clock_timestamp() + $4::bigint * interval '1 millisecond')
                     ON CONFLICT (account_id) DO UPDATE SET holder = excluded.holder,
                         node = excluded.node, token = excluded.token,
                         acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
                     WHERE $5
                     RETURNING token",
                    &[&account, &holder, &self.node, &millis, &current.is_some()],
                )?;
                Ok(row.map(|row| row.try_get::<_, i64>(0)).transpose()?)
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

    fn renew_locks(&self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>> {
        if locks.is_empty() {
            return Ok(Vec::new());
        }
        let millis = lease_millis(lease);
        let accounts: Vec<AccountId> = locks.iter().map(|l| l.account).collect();
        let tokens: Vec<i64> = locks.iter().map(|l| l.token).collect();
        let holders: Vec<&str> = locks.iter().map(|l| l.holder.as_str()).collect();
        let renewed = self.pool.tx(|tx| {
            tx.query(
                "UPDATE locks l
                 SET expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS r (account_id, token, holder)
                 WHERE l.account_id = r.account_id AND l.token = r.token
                   AND l.holder = r.holder AND l.expires_at > clock_timestamp()
                 RETURNING l.account_id, l.token, l.holder",
                &[&accounts, &tokens, &holders, &millis],
            )
        })?;
        let renewed: std::collections::HashSet<(AccountId, i64, &str)> = renewed
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<_>>()?;
        Ok(locks
            .iter()
            .map(|l| renewed.contains(&(l.account, l.token, l.holder.as_str())))
            .collect())
    }

    fn release_lock(&self, lock: &MaildropLock) -> Result<()> {
        self.pool.tx(|tx| {
            tx.execute(
                "DELETE FROM locks WHERE account_id = $1 AND token = $2",
                &[&lock.account, &lock.token],
            )?;
            Ok(())
        })
    }

    fn list_messages(&self, account: AccountId) -> Result<Vec<MessageMeta>> {
        self.pool.tx(|tx| {
            ensure_account_exists(tx, account)?;
            let rows = tx.query(
                "SELECT id, uid, size, header_octets, body_lines, utf8_headers FROM messages
                 WHERE account_id = $1 ORDER BY id",
                &[&account],
            )?;
            rows.iter().map(message_meta).collect()
        })
    }

    fn read_chunk(&self, message: MessageId, index: u32) -> Result<Option<Vec<u8>>> {
        self.pool.tx(|tx| {
            let row = tx.query_opt(
                "SELECT data FROM chunks WHERE message_id = $1 AND seq = $2",
                &[&message, &i64::from(index)],
            )?;
            row.map(|row| Ok(row.try_get(0)?)).transpose()
        })
    }

    fn commit_update(
        &self,
        lock: &MaildropLock,
        deleted: &[MessageId],
        retrieved: &[MessageId],
    ) -> Result<()> {
        self.pool.tx(|tx| {
            check_fence(tx, lock)?;
            // Ids of other maildrops are ignored; a first retrieval time is never moved.
            let marked = tx.execute(
                concat!(
                    "UPDATE messages SET retrieved_at = ",
                    db_now!(),
                    " WHERE id = ANY($1) AND account_id = $2 AND retrieved_at IS NULL"
                ),
                &[&retrieved, &lock.account],
            )?;
            // Chunks go by ON DELETE CASCADE.
            let removed = tx.execute(
                "DELETE FROM messages WHERE id = ANY($1) AND account_id = $2",
                &[&deleted, &lock.account],
            )?;
            debug!(
                account = lock.account,
                marked,
                deleted = removed,
                "update committed"
            );
            Ok(())
        })
    }

    fn expire_messages(&self, lock: &MaildropLock, retention: Duration) -> Result<u64> {
        let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        self.pool.tx(|tx| {
            check_fence(tx, lock)?;
            // Whole seconds: a message first retrieved during second R (stored as R) goes once
            // R <= now - retention. A retention reaching before 1970 expires nothing.
            let expired = tx.execute(
                concat!(
                    "DELETE FROM messages
                     WHERE account_id = $1 AND retrieved_at IS NOT NULL
                       AND retrieved_at <= ",
                    db_now!(),
                    " - $2 AND ",
                    db_now!(),
                    " >= $2"
                ),
                &[&lock.account, &retention],
            )?;
            if expired > 0 {
                debug!(
                    account = lock.account,
                    expired, "retrieved messages expired"
                );
            }
            Ok(expired)
        })
    }

    fn node_heartbeat(&self, id: &str, address: &str, sessions: u64) -> Result<NodeState> {
        let state: String = self.pool.tx(|tx| {
            let row = tx.query_one(
                "INSERT INTO nodes (id, address, sessions, heartbeat_at)
                 VALUES ($1, $2, $3, clock_timestamp())
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                     sessions = excluded.sessions, heartbeat_at = excluded.heartbeat_at
                 RETURNING state",
                &[&id, &address, &to_i64(sessions)],
            )?;
            Ok(row.try_get(0)?)
        })?;
        node_state(&state)
    }

    fn list_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.pool.tx(|tx| {
            let rows = tx.query(
                "SELECT id, address, state, sessions,
                        greatest(0, floor(extract(epoch FROM clock_timestamp() - heartbeat_at)
                                          * 1000))::bigint
                 FROM nodes ORDER BY id",
                &[],
            )?;
            rows.iter().map(|row| node_info(row, |age| age)).collect()
        })
    }

    fn set_node_state(&self, id: &str, state: NodeState) -> Result<()> {
        let n = self.pool.tx(|tx| {
            tx.execute(
                "UPDATE nodes SET state = $2 WHERE id = $1",
                &[&id, &state.as_str()],
            )
        })?;
        node_changed(id, n, state.as_str())
    }

    fn remove_node(&self, id: &str) -> Result<()> {
        let n = self
            .pool
            .tx(|tx| tx.execute("DELETE FROM nodes WHERE id = $1", &[&id]))?;
        node_changed(id, n, "removed")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::pool::MAX_CONNECTIONS;
    use super::*;
    use crate::tests::{deliver, ids, name, Fixture, PostgresFixture, TestStore, HOUR};

    impl TestStore for PostgresStore {
        fn exec(&self, sql: &str) -> u64 {
            self.pool.tx(|tx| tx.execute_dynamic(sql)).unwrap()
        }

        fn scalar(&self, sql: &str) -> Option<i64> {
            self.pool
                .tx(|tx| Ok(tx.query_dynamic(sql)?[0].try_get(0)?))
                .unwrap()
        }

        fn login_state(&self, account: AccountId) -> (Option<i64>, Option<f64>) {
            self.pool
                .tx(|tx| {
                    let row = tx.query_one(
                        "SELECT last_login, login_tokens FROM accounts WHERE id = $1",
                        &[&account],
                    )?;
                    Ok((row.try_get(0)?, row.try_get(1)?))
                })
                .unwrap()
        }

        fn pool_within_bounds(&self) -> bool {
            self.pool.open_connections() <= MAX_CONNECTIONS
        }
    }

    fn fixture(test: &str) -> Option<PostgresFixture> {
        PostgresFixture::new(test)
    }

    /// The frozen-node case: a lease expires in database time while its holder sleeps,
    /// another node takes the maildrop, and the sleeper's QUIT deletes nothing.
    #[test]
    fn expired_lease_taken_by_another_node_fences_the_first() {
        let Some(f) = fixture("expired_lease_taken_by_another_node_fences_the_first") else {
            return;
        };
        let (one, two) = (f.open_node(Some("node-1")), f.open_node(Some("node-2")));
        let to = name("user");
        let account = one.create_account(&to, "h").unwrap();
        let msgs: Vec<MessageId> = (0..3)
            .map(|i| deliver(&one, &to, format!("message {i}\n").as_bytes()).id)
            .collect();
        let frozen = one
            .lock_maildrop(account, "pop3d@node-1:1#1", HOUR)
            .unwrap();
        assert!(matches!(
            two.lock_maildrop(account, "pop3d@node-2:1#1", HOUR),
            Err(StoreError::Locked { holder }) if holder == "pop3d@node-1:1#1"
        ));
        // The lease runs out by the database's clock (the node's clock plays no part).
        let n = one.exec(&format!(
            "UPDATE locks SET expires_at = clock_timestamp() - interval '1 second'
             WHERE account_id = {account}"
        ));
        assert_eq!(n, 1);
        let thief = two
            .lock_maildrop(account, "pop3d@node-2:1#1", HOUR)
            .unwrap();
        assert!(thief.token > frozen.token);
        // The frozen node wakes up: its QUIT, EXPIRE and renewal are all refused.
        assert!(matches!(
            one.commit_update(&frozen, &msgs, &msgs),
            Err(StoreError::LockLost)
        ));
        assert!(matches!(
            one.expire_messages(&frozen, Duration::ZERO),
            Err(StoreError::LockLost)
        ));
        assert_eq!(
            one.renew_locks(std::slice::from_ref(&frozen), HOUR)
                .unwrap(),
            [false]
        );
        one.release_lock(&frozen).unwrap();
        assert_eq!(ids(&one, account), msgs);
        assert_eq!(
            one.scalar("SELECT count(*) FROM messages WHERE retrieved_at IS NOT NULL"),
            Some(0)
        );
        // The new holder's lease is intact and its own QUIT works.
        two.commit_update(&thief, &[msgs[0]], &[]).unwrap();
        assert_eq!(ids(&two, account), &msgs[1..]);
        // An expired lease that nobody took is refused too, without a takeover, and batch
        // renewal does not revive it.
        two.exec("UPDATE locks SET expires_at = clock_timestamp()");
        assert_eq!(
            two.renew_locks(std::slice::from_ref(&thief), HOUR).unwrap(),
            [false]
        );
        assert!(matches!(
            two.commit_update(&thief, &[msgs[1]], &[]),
            Err(StoreError::LockLost)
        ));
        assert_eq!(ids(&two, account), &msgs[1..]);
    }

    /// "Leases of a node that restarts are cleared at once": opening a store with a node id
    /// deletes that node's leases and no other.
    #[test]
    fn a_restarted_node_clears_its_own_leases_only() {
        let Some(f) = fixture("a_restarted_node_clears_its_own_leases_only") else {
            return;
        };
        let one = f.open_node(Some("node-1"));
        let two = f.open_node(Some("node-2"));
        let [a, b] = ["a", "b"].map(|n| one.create_account(&name(n), "h").unwrap());
        let old = one.lock_maildrop(a, "pop3d@elsewhere:1#1", HOUR).unwrap();
        let kept = two.lock_maildrop(b, "pop3d@elsewhere:2#1", HOUR).unwrap();
        assert_eq!(
            one.scalar("SELECT count(*) FROM locks WHERE node = 'node-1'"),
            Some(1)
        );
        // node-1 restarts.
        drop(one);
        let one = f.open_node(Some("node-1"));
        let fresh = one.lock_maildrop(a, "pop3d@elsewhere:3#1", HOUR).unwrap();
        assert!(fresh.token > old.token);
        assert!(matches!(
            one.commit_update(&old, &[], &[]),
            Err(StoreError::LockLost)
        ));
        assert!(matches!(
            one.lock_maildrop(b, "pop3d@elsewhere:3#2", HOUR),
            Err(StoreError::Locked { .. })
        ));
        two.commit_update(&kept, &[], &[]).unwrap();
        // A store without a node id (popadm) clears nothing.
        drop(f.open_node(None));
        one.commit_update(&fresh, &[], &[]).unwrap();
    }

    /// Nodes racing for one maildrop: exactly one wins each round.
    #[test]
    fn concurrent_lock_attempts_from_nodes_have_one_winner() {
        let Some(f) = fixture("concurrent_lock_attempts_from_nodes_have_one_winner") else {
            return;
        };
        let nodes: Vec<Arc<PostgresStore>> = (0..4)
            .map(|i| Arc::new(f.open_node(Some(&format!("node-{i}")))))
            .collect();
        let account = nodes[0].create_account(&name("user"), "h").unwrap();
        for round in 0..5 {
            let barrier = Arc::new(Barrier::new(nodes.len()));
            let threads: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let (node, barrier) = (Arc::clone(node), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let holder = format!("pop3d@elsewhere:{i}#{round}");
                        match node.lock_maildrop(account, &holder, HOUR) {
                            Ok(lock) => Some(lock),
                            Err(StoreError::Locked { .. }) => None,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect();
            let won: Vec<MaildropLock> = threads
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect();
            assert_eq!(won.len(), 1, "round {round}");
            nodes[0].release_lock(&won[0]).unwrap();
        }
    }

    #[test]
    fn newer_schema_is_refused_and_migration_runs_once() {
        let Some(f) = fixture("newer_schema_is_refused_and_migration_runs_once") else {
            return;
        };
        // Nodes starting together migrate once.
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let url = f.url();
                std::thread::spawn(move || PostgresStore::open(&url, None).map(drop))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let version = f
            .cluster
            .psql(&f.database, "SELECT version FROM schema_version")
            .unwrap();
        assert_eq!(version, MIGRATIONS.len().to_string());
        f.cluster
            .psql(&f.database, "UPDATE schema_version SET version = 999")
            .unwrap();
        assert!(matches!(
            PostgresStore::open(&f.url(), None),
            Err(StoreError::SchemaTooNew {
                found: 999,
                supported: 2
            })
        ));
    }

    /// PostgreSQL restarts (every connection cut): the pooled connections are found dead at
    /// their next `BEGIN` and replaced, so no operation after the restart fails.
    #[test]
    fn a_database_restart_costs_no_later_operation() {
        let Some(mut cluster) = pgtest::own("a_database_restart_costs_no_later_operation") else {
            return;
        };
        cluster.create_database("restart").unwrap();
        let store = Arc::new(PostgresStore::open(&cluster.url("restart"), None).unwrap());
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        // Several connections in the pool, all of them cut by the restart.
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (store, to) = (Arc::clone(&store), to.clone());
                std::thread::spawn(move || {
                    deliver(&*store, &to, format!("before {i}\n").as_bytes())
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        cluster.restart().unwrap();
        for i in 0..8 {
            deliver(&*store, &to, format!("after {i}\n").as_bytes());
        }
        let lock = store
            .lock_maildrop(account, "pop3d@elsewhere:1#1", HOUR)
            .unwrap();
        assert_eq!(store.list_messages(account).unwrap().len(), 12);
        store.commit_update(&lock, &[], &[]).unwrap();
        assert!(store.pool.open_connections() <= MAX_CONNECTIONS);
    }

    /// A unix socket directory as the URL's host, percent-encoded (docs/admin-guide.md).
    #[test]
    fn unix_socket_urls_connect() {
        let Some(f) = fixture("unix_socket_urls_connect") else {
            return;
        };
        let dir = f.cluster.socket_dir().display().to_string();
        let url = format!(
            "postgres://postgres@{}:{}/{}",
            dir.replace('/', "%2F"),
            f.cluster.port(),
            f.database
        );
        let store = PostgresStore::open(&url, None).unwrap();
        store.create_account(&name("user"), "h").unwrap();
        assert!(f.open().account(&name("user")).unwrap().is_some());
    }

    #[test]
    fn connection_failures_are_transient_and_urls_checked() {
        // Nothing listens on port 1 of loopback.
        let err =
            PostgresStore::open("postgres://u@127.0.0.1:1/db?connect_timeout=2", None).unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let err = PostgresStore::open("postgres://u:secret@[bad", None).unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn lease_times_are_the_databases() {
        let Some(f) = fixture("lease_times_are_the_databases") else {
            return;
        };
        let store = f.open();
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        store
            .lock_maildrop(account, "pop3d@elsewhere:1#1", Duration::from_millis(1500))
            .unwrap();
        let shown = store.account_summary(&to).unwrap().lock.unwrap();
        let db_now = store
            .scalar("SELECT floor(extract(epoch FROM clock_timestamp()))::bigint")
            .unwrap();
        assert!(
            (shown.acquired_at - db_now).abs() <= 1,
            "{shown:?} {db_now}"
        );
        assert!(shown.expires_at - shown.acquired_at <= 2, "{shown:?}");
        // Sub-second leases hold, then lapse by the database's clock.
        std::thread::sleep(Duration::from_millis(1700));
        assert!(store.account_summary(&to).unwrap().lock.is_none());
        store
            .lock_maildrop(account, "pop3d@elsewhere:2#1", HOUR)
            .unwrap();
    }
}
