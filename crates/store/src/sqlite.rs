//! The embedded SQLite backend: one database file, a small pool of connections, one short
//! transaction per operation.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a delivery that returned `Ok` survives
//! a power loss. Writes start with `BEGIN IMMEDIATE`, so two writers never deadlock while
//! upgrading a read lock; waiting writers retry for [`BUSY_TIMEOUT`] before `Busy`.
//!
//! Message bytes live in `chunks` rows of [`CHUNK_SIZE`] octets (the last one shorter), so no
//! message is ever read or written whole.
//!
//! Times are unix seconds (INTEGER), read once per transaction after its write lock is held.
//! The LOGIN-DELAY token bucket keeps sub-second precision without a REAL timestamp: see
//! `common::login_verdict`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Row, Rows, Transaction, TransactionBehavior,
};
use tracing::{debug, info, warn};

use crate::common::{
    account_row, expire_to_sql, generated_uid, import_accounts, import_each, ingest_chunks,
    login_verdict, message_meta, message_uid, node_changed, node_info, node_state, summary_row,
    to_i64, to_u64, unix_secs, AccountRow, AccountWriter,
};
use crate::holder::holder_is_dead;

mod backup;
use crate::{
    Account, AccountId, AccountImport, AccountName, AccountPolicy, AccountSecrets, AccountSummary,
    Delivered, ImportMessage, LoginDelay, MaildropLock, MessageId, MessageMeta, NodeInfo,
    NodeState, OnExisting, Result, Store, StoreError,
};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "maildrops.sqlite3";
/// Idle connections kept for reuse; more are closed when given back.
const MAX_IDLE: usize = 16;
/// How long a statement waits for another connection's lock before `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; `PRAGMA user_version` counts those applied. Append, never edit.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

/// Accounts and messages use AUTOINCREMENT so that a row id is never handed out twice: a
/// session whose lock was taken over must not read or delete a newer message under an old id.
const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('last_uidvalidity', 0), ('last_lock_token', 0);

CREATE TABLE domains (
    id   INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL
);

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    local         TEXT NOT NULL,
    domain_id     INTEGER NULL REFERENCES domains (id),
    password_hash TEXT NOT NULL,
    uidvalidity   INTEGER NOT NULL,
    next_uid      INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX accounts_name ON accounts (local, ifnull(domain_id, 0));

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    uid           TEXT NOT NULL,
    size          INTEGER NOT NULL,
    header_octets INTEGER NOT NULL,
    body_lines    INTEGER NOT NULL,
    chunks        INTEGER NOT NULL,
    delivered_at  INTEGER NOT NULL,
    UNIQUE (account_id, uid)
);
CREATE INDEX messages_account ON messages (account_id, id);

CREATE TABLE chunks (
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (message_id, seq)
);

CREATE TABLE locks (
    account_id  INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    holder      TEXT NOT NULL,
    token       INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
";

/// RFC 2449 LOGIN-DELAY and EXPIRE (per-account overrides, login history, first retrieval
/// times) and RFC 6856 UTF-8 headers.
///
/// - `accounts.login_delay`: seconds, NULL = the server's global setting.
/// - `accounts.expire_days`: NULL = the server's global setting, -1 = NEVER, else days.
/// - `accounts.last_login`, `accounts.login_tokens`: the LOGIN-DELAY token bucket, see
///   `common::login_verdict`; NULL tokens = a full bucket.
/// - `messages.retrieved_at`: unix seconds of the first retrieval in a session that reached
///   UPDATE; NULL = never retrieved.
/// - `messages.utf8_headers`: 1 when the header section has non-ASCII octets and is valid
///   UTF-8. Messages stored before this migration are not re-read: they keep 0.
///
/// The index makes EXPIRE's sweep at each login a range scan of one maildrop.
const SCHEMA_V2: &str = "
ALTER TABLE accounts ADD COLUMN login_delay INTEGER NULL
    CHECK (login_delay BETWEEN 0 AND 4294967295);
ALTER TABLE accounts ADD COLUMN expire_days INTEGER NULL
    CHECK (expire_days BETWEEN -1 AND 4294967295);
ALTER TABLE accounts ADD COLUMN last_login INTEGER NULL;
ALTER TABLE accounts ADD COLUMN login_tokens REAL NULL;

ALTER TABLE messages ADD COLUMN retrieved_at INTEGER NULL;
ALTER TABLE messages ADD COLUMN utf8_headers INTEGER NOT NULL DEFAULT 0
    CHECK (utf8_headers IN (0, 1));
CREATE INDEX messages_retrieved ON messages (account_id, retrieved_at);
";

/// Schema v3: SCRAM-SHA-256 keys (RFC 5803 format) and the opt-in legacy secret for APOP and
/// CRAM-MD5. Accounts from before have neither until their password is set again.
const SCHEMA_V3: &str = "
ALTER TABLE accounts ADD COLUMN scram_sha256 TEXT NULL;
ALTER TABLE accounts ADD COLUMN legacy_secret TEXT NULL;
";

/// Schema v4: HMAC-MD5 states for CRAM-MD5 (Dovecot's `{CRAM-MD5}` scheme), imported from a
/// Dovecot password file; NULL for every account from before.
const SCHEMA_V4: &str = "
ALTER TABLE accounts ADD COLUMN cram_md5_states TEXT NULL;
";

/// Schema v5: the node table (`popadm node`). `heartbeat_at` is unix milliseconds of the last
/// heartbeat; `state` is what an operator set, never changed by a heartbeat.
const SCHEMA_V5: &str = "
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    address      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'draining')),
    sessions     INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
";

/// Finds an account by name; `d.name IS ?2` matches a NULL domain too.
const FIND_ACCOUNT: &str = "SELECT a.id, a.password_hash, a.created_at, a.uidvalidity,
        a.login_delay, a.expire_days, a.scram_sha256, a.legacy_secret, a.cram_md5_states
     FROM accounts a LEFT JOIN domains d ON d.id = a.domain_id
     WHERE a.local = ?1 AND d.name IS ?2";

/// Account summaries; `?1` is now, only unexpired locks are joined.
const SUMMARIES: &str = "SELECT a.local, d.name,
        (SELECT count(*) FROM messages m WHERE m.account_id = a.id),
        (SELECT ifnull(sum(m.size), 0) FROM messages m WHERE m.account_id = a.id),
        l.holder, l.acquired_at, l.expires_at,
        a.login_delay, a.expire_days, a.last_login, a.legacy_secret IS NOT NULL,
        a.cram_md5_states IS NOT NULL
     FROM accounts a
     LEFT JOIN domains d ON d.id = a.domain_id
     LEFT JOIN locks l ON l.account_id = a.id AND l.expires_at > ?1";

/// The SQLite maildrop store. Cheap to share through an `Arc`; every method takes a pooled
/// connection for one short transaction.
pub struct SqliteStore {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
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
        builder.create(data_dir).map_err(StoreError::Io)?;
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
                .map_err(StoreError::Io)?;
        }
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            idle: Mutex::new(vec![conn]),
        })
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
            None => connect(&self.path)?,
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

    /// One `BEGIN IMMEDIATE` transaction, committed when `f` succeeds, rolled back otherwise.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// One read transaction, so that several statements see one snapshot.
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let value = f(&tx)?;
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

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(path = %path.display(), %mode, "SQLite refused WAL journal mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Applies the migrations past `PRAGMA user_version`, all in one transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let supported = MIGRATIONS.len() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    let applied = usize::try_from(found)
        .map_err(|_| StoreError::Backend(format!("invalid schema version {found}").into()))?;
    for (version, script) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(script)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        info!(version = version + 1, "applied maildrop schema migration");
    }
    tx.commit()?;
    Ok(())
}

/// The named account's row.
fn find_account(conn: &Connection, name: &AccountName) -> Result<Option<AccountRow>> {
    let mut stmt = conn.prepare_cached(FIND_ACCOUNT)?;
    let mut rows = stmt.query(params![name.local(), name.domain()])?;
    rows.next()?.map(account_row).transpose()
}

/// Id and uidvalidity of the named account, or `NoSuchAccount`.
fn account_id(conn: &Connection, name: &AccountName) -> Result<(AccountId, i64)> {
    match find_account(conn, name)? {
        Some(row) => Ok((row.id, row.uidvalidity)),
        None => Err(StoreError::NoSuchAccount(name.to_string())),
    }
}

/// `LockLost` unless `lock` is the account's current lock and unexpired at `now` (unix
/// seconds). Callers read `now` inside their write transaction.
fn check_fence(tx: &Transaction<'_>, lock: &MaildropLock, now: i64) -> Result<()> {
    let expires_at: Option<i64> = tx
        .query_row(
            "SELECT expires_at FROM locks WHERE account_id = ?1 AND token = ?2",
            params![lock.account, lock.token],
            |row| row.get(0),
        )
        .optional()?;
    if expires_at.is_none_or(|expires_at| expires_at <= now) {
        return Err(StoreError::LockLost);
    }
    Ok(())
}

/// Now, in unix seconds.
fn now() -> i64 {
    unix_secs(SystemTime::now())
}

/// Now, in unix milliseconds.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now as fractional unix seconds.
fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `NoSuchAccount("#ID")` unless the account exists.
fn ensure_account_exists(conn: &Connection, account: AccountId) -> Result<()> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM accounts WHERE id = ?1",
            [account],
            |_| Ok(()),
        )
        .optional()?;
    exists.ok_or_else(|| StoreError::NoSuchAccount(format!("#{account}")))
}

/// The holder of the account's lock if it is unexpired and its holder may be alive.
/// The accounts of an existing domain, or `NoSuchDomain`.
fn domain_members(conn: &Connection, domain: &str) -> Result<Vec<AccountName>> {
    let id: Option<i64> = conn
        .query_row("SELECT id FROM domains WHERE name = ?1", [domain], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(id) = id else {
        return Err(StoreError::NoSuchDomain(domain.to_string()));
    };
    let mut stmt =
        conn.prepare_cached("SELECT local FROM accounts WHERE domain_id = ?1 ORDER BY local")?;
    let rows = stmt.query_map([id], |row| row.get::<_, String>(0))?;
    let locals = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(locals
        .into_iter()
        .map(|local| AccountName::from_stored(local, Some(domain.to_string())))
        .collect())
}

fn live_lock_holder(conn: &Connection, account: AccountId, now: i64) -> Result<Option<String>> {
    let lock: Option<(String, i64)> = conn
        .query_row(
            "SELECT holder, expires_at FROM locks WHERE account_id = ?1",
            [account],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(match lock {
        Some((holder, expires_at)) if expires_at > now => {
            if holder_is_dead(&holder) {
                info!(account, %holder, "maildrop lock holder no longer runs; lock is stale");
                None
            } else {
                Some(holder)
            }
        }
        _ => None,
    })
}

fn uid_in_use(conn: &Connection, account: AccountId, uid: &str) -> Result<bool> {
    let mut stmt =
        conn.prepare_cached("SELECT 1 FROM messages WHERE account_id = ?1 AND uid = ?2")?;
    Ok(stmt.exists(params![account, uid])?)
}

/// Takes the account's next UID (`%08X%08X` of next_uid and uidvalidity, Dovecot's default
/// UIDL format), skipping any that an import already used.
fn generate_uid(conn: &Connection, account: AccountId, uidvalidity: i64) -> Result<String> {
    let mut stmt = conn.prepare_cached(
        "UPDATE accounts SET next_uid = next_uid + 1 WHERE id = ?1 RETURNING next_uid - 1",
    )?;
    loop {
        let n: i64 = stmt.query_row([account], |row| row.get(0))?;
        let uid = generated_uid(n, uidvalidity);
        if !uid_in_use(conn, account, &uid)? {
            return Ok(uid);
        }
    }
}

/// Stores one message inside the caller's transaction, streaming it through [`Ingest`] into
/// [`CHUNK_SIZE`] chunks. On error the caller rolls back.
fn store_message(
    tx: &Transaction<'_>,
    account: AccountId,
    uidvalidity: i64,
    uid: Option<String>,
    source: &mut dyn Read,
    max_size: u64,
) -> Result<Delivered> {
    let uid = message_uid(
        tx,
        uid,
        |tx, uid| uid_in_use(tx, account, uid),
        |tx| generate_uid(tx, account, uidvalidity),
    )?;
    // The row comes first (chunks reference it); its counts are filled in at the end.
    tx.prepare_cached(
        "INSERT INTO messages (account_id, uid, size, header_octets, body_lines, chunks,
                               delivered_at)
         VALUES (?1, ?2, 0, 0, 0, 0, ?3)",
    )?
    .execute(params![account, uid, now()])?;
    let id = tx.last_insert_rowid();

    let mut insert =
        tx.prepare_cached("INSERT INTO chunks (message_id, seq, data) VALUES (?1, ?2, ?3)")?;
    let (summary, seq) = ingest_chunks(source, max_size, |seq, piece| {
        insert.execute(params![id, seq, piece])?;
        Ok(())
    })?;
    tx.prepare_cached(
        "UPDATE messages SET size = ?2, header_octets = ?3, body_lines = ?4, chunks = ?5,
                             utf8_headers = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        to_i64(summary.size),
        to_i64(summary.header_octets),
        to_i64(summary.body_lines),
        seq,
        summary.utf8_headers
    ])?;
    Ok(Delivered {
        id,
        uid,
        size: summary.size,
    })
}

/// Inserts a new account (its domain too, if new) with a fresh UID validity.
fn insert_account(
    tx: &Transaction<'_>,
    name: &AccountName,
    password_hash: &str,
    secrets: &AccountSecrets,
) -> Result<AccountId> {
    let domain_id: Option<i64> = match name.domain() {
        None => None,
        Some(domain) => {
            tx.execute(
                "INSERT INTO domains (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                [domain],
            )?;
            Some(
                tx.query_row("SELECT id FROM domains WHERE name = ?1", [domain], |row| {
                    row.get(0)
                })?,
            )
        }
    };
    // A fresh uidvalidity, greater than any before, so that an account re-created under an
    // old name never generates an old UID.
    let created_at = now();
    let last: i64 = tx.query_row(
        "SELECT value FROM meta WHERE key = 'last_uidvalidity'",
        [],
        |row| row.get(0),
    )?;
    let uidvalidity = created_at.max(last.saturating_add(1));
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'last_uidvalidity'",
        [uidvalidity],
    )?;
    tx.execute(
        "INSERT INTO accounts (local, domain_id, password_hash, uidvalidity, created_at,
                               scram_sha256, legacy_secret, cram_md5_states)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            name.local(),
            domain_id,
            password_hash,
            uidvalidity,
            created_at,
            secrets.scram_sha256,
            secrets.legacy_secret,
            secrets.cram_md5_states
        ],
    )?;
    let id = tx.last_insert_rowid();
    info!(account = id, name = %name, "account created");
    Ok(id)
}

/// Replaces an account's password hash and all its other secrets.
fn update_secrets(
    tx: &Transaction<'_>,
    id: AccountId,
    password_hash: &str,
    secrets: &AccountSecrets,
) -> Result<()> {
    tx.execute(
        "UPDATE accounts SET password_hash = ?2, scram_sha256 = ?3, legacy_secret = ?4,
                             cram_md5_states = ?5
         WHERE id = ?1",
        params![
            id,
            password_hash,
            secrets.scram_sha256,
            secrets.legacy_secret,
            secrets.cram_md5_states
        ],
    )?;
    Ok(())
}

/// [`AccountWriter`] over a write transaction.
struct Accounts<'a, 'c>(&'a Transaction<'c>);

impl AccountWriter for Accounts<'_, '_> {
    fn find(&mut self, name: &AccountName) -> Result<Option<AccountId>> {
        Ok(find_account(self.0, name)?.map(|row| row.id))
    }

    fn insert(&mut self, name: &AccountName, hash: &str, secrets: &AccountSecrets) -> Result<()> {
        insert_account(self.0, name, hash, secrets).map(drop)
    }

    fn update(&mut self, id: AccountId, hash: &str, secrets: &AccountSecrets) -> Result<()> {
        update_secrets(self.0, id, hash, secrets)
    }
}

/// Each row of `rows` through `map`.
fn map_rows<'s, T>(mut rows: Rows<'s>, map: impl Fn(&Row<'s>) -> Result<T>) -> Result<Vec<T>> {
    let mut all = Vec::new();
    while let Some(row) = rows.next()? {
        all.push(map(row)?);
    }
    Ok(all)
}

impl Store for SqliteStore {
    fn create_account_with(
        &self,
        name: &AccountName,
        password_hash: &str,
        secrets: &AccountSecrets,
    ) -> Result<AccountId> {
        self.write(|tx| {
            if find_account(tx, name)?.is_some() {
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
        self.write(|tx| {
            let created = import_accounts(&mut Accounts(tx), accounts, existing)?;
            info!(accounts = accounts.len(), "accounts imported");
            Ok(created)
        })
    }

    fn delete_account(&self, name: &AccountName) -> Result<()> {
        self.write(|tx| {
            let (id, _) = account_id(tx, name)?;
            if let Some(holder) = live_lock_holder(tx, id, now())? {
                return Err(StoreError::Locked { holder });
            }
            // Messages, their chunks and any stale lock go by ON DELETE CASCADE.
            tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
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
        self.write(|tx| {
            let (id, _) = account_id(tx, name)?;
            update_secrets(tx, id, password_hash, secrets)
        })
    }

    fn account(&self, name: &AccountName) -> Result<Option<Account>> {
        self.with_conn(|conn| Ok(find_account(conn, name)?.map(|row| row.into_account(name))))
    }

    fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        let mut all = self.read(|tx| {
            let mut stmt = tx.prepare_cached(SUMMARIES)?;
            let rows = stmt.query([now()])?;
            map_rows(rows, summary_row)
        })?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn account_summary(&self, name: &AccountName) -> Result<AccountSummary> {
        self.read(|tx| {
            let (id, _) = account_id(tx, name)?;
            let mut stmt = tx.prepare_cached(&format!("{SUMMARIES} WHERE a.id = ?2"))?;
            let mut rows = stmt.query(params![now(), id])?;
            summary_row(rows.next()?.ok_or(rusqlite::Error::QueryReturnedNoRows)?)
        })
    }

    fn list_domains(&self) -> Result<Vec<(String, u64)>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT d.name, (SELECT count(*) FROM accounts a WHERE a.domain_id = d.id)
                 FROM domains d ORDER BY d.name",
            )?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, to_u64(row.get(1)?))))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn add_domain(&self, domain: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO domains (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                [domain],
            )?;
            if n == 0 {
                return Err(StoreError::DomainExists(domain.to_string()));
            }
            Ok(())
        })
    }

    fn domain_accounts(&self, domain: &str) -> Result<Vec<AccountName>> {
        self.read(|tx| domain_members(tx, domain))
    }

    fn delete_domain(&self, domain: &str) -> Result<Vec<AccountName>> {
        self.write(|tx| {
            let members = domain_members(tx, domain)?;
            let now = now();
            for name in &members {
                let (id, _) = account_id(tx, name)?;
                if let Some(holder) = live_lock_holder(tx, id, now)? {
                    return Err(StoreError::Locked { holder });
                }
            }
            tx.execute(
                "DELETE FROM accounts WHERE domain_id = (SELECT id FROM domains WHERE name = ?1)",
                [domain],
            )?;
            tx.execute("DELETE FROM domains WHERE name = ?1", [domain])?;
            info!(domain, accounts = members.len(), "domain deleted");
            Ok(members)
        })
    }

    fn rehash_password(&self, account: AccountId, old_hash: &str, new_hash: &str) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE accounts SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
                params![account, old_hash, new_hash],
            )?;
            Ok(n == 1)
        })
    }

    fn add_scram_keys(&self, account: AccountId, password_hash: &str, scram: &str) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE accounts SET scram_sha256 = ?3
                 WHERE id = ?1 AND password_hash = ?2 AND scram_sha256 IS NULL",
                params![account, password_hash, scram],
            )?;
            Ok(n == 1)
        })
    }

    fn set_policy(&self, name: &AccountName, policy: AccountPolicy) -> Result<()> {
        self.write(|tx| {
            let (id, _) = account_id(tx, name)?;
            tx.execute(
                "UPDATE accounts SET login_delay = ?2, expire_days = ?3 WHERE id = ?1",
                params![id, policy.login_delay, expire_to_sql(policy.expire)],
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
        self.write(|tx| {
            let state: Option<(Option<i64>, Option<f64>)> = tx
                .query_row(
                    "SELECT last_login, login_tokens FROM accounts WHERE id = ?1",
                    [account],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((last_login, tokens)) = state else {
                return Err(StoreError::NoSuchAccount(format!("#{account}")));
            };
            // Read under the write lock, so concurrent logins are ordered by their clocks.
            let now = now_f64();
            login_verdict(delay, burst, last_login, tokens, now).answer(
                account,
                |last_login, tokens| {
                    tx.prepare_cached(
                        "UPDATE accounts SET last_login = ?2, login_tokens = ?3 WHERE id = ?1",
                    )?
                    .execute(params![account, last_login, tokens])?;
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
        self.write(|tx| {
            let (account, uidvalidity) = account_id(tx, name)?;
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
        self.write(|tx| {
            let (account, uidvalidity) = account_id(tx, name)?;
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
        // Whole seconds, rounded down: a lease never lasts longer than asked.
        let start = SystemTime::now();
        let acquired_at = unix_secs(start);
        let expires_at = start.checked_add(lease).map_or(i64::MAX, unix_secs);
        self.write(|tx| {
            ensure_account_exists(tx, account)?;
            if let Some(holder) = live_lock_holder(tx, account, acquired_at)? {
                return Err(StoreError::Locked { holder });
            }
            let token: i64 = tx.query_row(
                "UPDATE meta SET value = value + 1 WHERE key = 'last_lock_token' RETURNING value",
                [],
                |row| row.get(0),
            )?;
            tx.execute(
                "INSERT INTO locks (account_id, holder, token, acquired_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account_id) DO UPDATE SET holder = excluded.holder,
                     token = excluded.token, acquired_at = excluded.acquired_at,
                     expires_at = excluded.expires_at",
                params![account, holder, token, acquired_at, expires_at],
            )?;
            Ok(MaildropLock {
                account,
                token,
                holder: holder.to_owned(),
            })
        })
    }

    fn renew_locks(&self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>> {
        if locks.is_empty() {
            return Ok(Vec::new());
        }
        let start = SystemTime::now();
        let now = unix_secs(start);
        let expires_at = start.checked_add(lease).map_or(i64::MAX, unix_secs);
        self.write(|tx| {
            // Whole seconds, rounded down: a lease is still ours during the second it ends in
            // unless another holder took it (which changes the token), so that second counts.
            let mut renew = tx.prepare_cached(
                "UPDATE locks SET expires_at = ?4
                 WHERE account_id = ?1 AND token = ?2 AND holder = ?3 AND expires_at >= ?5",
            )?;
            locks
                .iter()
                .map(|lock| {
                    let renewed = renew.execute(params![
                        lock.account,
                        lock.token,
                        lock.holder,
                        expires_at,
                        now
                    ])?;
                    Ok(renewed == 1)
                })
                .collect()
        })
    }

    fn release_lock(&self, lock: &MaildropLock) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM locks WHERE account_id = ?1 AND token = ?2",
                params![lock.account, lock.token],
            )?;
            Ok(())
        })
    }

    fn list_messages(&self, account: AccountId) -> Result<Vec<MessageMeta>> {
        self.read(|tx| {
            ensure_account_exists(tx, account)?;
            let mut stmt = tx.prepare_cached(
                "SELECT id, uid, size, header_octets, body_lines, utf8_headers FROM messages
                 WHERE account_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query([account])?;
            map_rows(rows, message_meta)
        })
    }

    fn read_chunk(&self, message: MessageId, index: u32) -> Result<Option<Vec<u8>>> {
        self.with_conn(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT data FROM chunks WHERE message_id = ?1 AND seq = ?2")?;
            Ok(stmt
                .query_row(params![message, index], |row| row.get(0))
                .optional()?)
        })
    }

    fn commit_update(
        &self,
        lock: &MaildropLock,
        deleted: &[MessageId],
        retrieved: &[MessageId],
    ) -> Result<()> {
        self.write(|tx| {
            let now = now();
            check_fence(tx, lock, now)?;
            // Ids of other maildrops are ignored; a first retrieval time is never moved.
            let mut mark = tx.prepare_cached(
                "UPDATE messages SET retrieved_at = ?3
                 WHERE id = ?1 AND account_id = ?2 AND retrieved_at IS NULL",
            )?;
            let mut marked = 0;
            for id in retrieved {
                marked += mark.execute(params![id, lock.account, now])?;
            }
            // Chunks go by ON DELETE CASCADE.
            let mut delete =
                tx.prepare_cached("DELETE FROM messages WHERE id = ?1 AND account_id = ?2")?;
            let mut removed = 0;
            for id in deleted {
                removed += delete.execute(params![id, lock.account])?;
            }
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
        self.write(|tx| {
            let start = SystemTime::now();
            check_fence(tx, lock, unix_secs(start))?;
            // Whole seconds: a message first retrieved during second R (stored as R) goes once
            // R <= now - retention, i.e. R <= floor(now - retention).
            let Some(cutoff) = start
                .checked_sub(retention)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            else {
                // Retention reaches before 1970: nothing is old enough.
                return Ok(0);
            };
            let expired = tx
                .prepare_cached(
                    "DELETE FROM messages
                     WHERE account_id = ?1 AND retrieved_at IS NOT NULL AND retrieved_at <= ?2",
                )?
                .execute(params![lock.account, cutoff])?;
            if expired > 0 {
                debug!(
                    account = lock.account,
                    expired, "retrieved messages expired"
                );
            }
            Ok(u64::try_from(expired).unwrap_or(u64::MAX))
        })
    }

    fn node_heartbeat(&self, id: &str, address: &str, sessions: u64) -> Result<NodeState> {
        self.write(|tx| {
            let state: String = tx.query_row(
                "INSERT INTO nodes (id, address, sessions, heartbeat_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                     sessions = excluded.sessions, heartbeat_at = excluded.heartbeat_at
                 RETURNING state",
                params![id, address, to_i64(sessions), now_millis()],
                |row| row.get(0),
            )?;
            node_state(&state)
        })
    }

    fn list_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.read(|tx| {
            let now = now_millis();
            let mut stmt = tx.prepare_cached(
                "SELECT id, address, state, sessions, heartbeat_at FROM nodes ORDER BY id",
            )?;
            let rows = stmt.query([])?;
            map_rows(rows, |row| node_info(row, |at| now.saturating_sub(at)))
        })
    }

    fn set_node_state(&self, id: &str, state: NodeState) -> Result<()> {
        let n = self.write(|tx| {
            Ok(tx.execute(
                "UPDATE nodes SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )?)
        })?;
        node_changed(id, n as u64, state.as_str())
    }

    fn remove_node(&self, id: &str) -> Result<()> {
        let n = self.write(|tx| Ok(tx.execute("DELETE FROM nodes WHERE id = ?1", [id])?))?;
        node_changed(id, n as u64, "removed")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::normalise;
    use crate::tests::{deliver, ids, name, read_all, retrieved_at, TempDir, TestStore, HOUR};
    use crate::{Expire, LoginDelay};

    impl TestStore for SqliteStore {
        fn exec(&self, sql: &str) -> u64 {
            self.with_conn(|c| Ok(c.execute(sql, [])?)).unwrap() as u64
        }

        fn scalar(&self, sql: &str) -> Option<i64> {
            self.with_conn(|c| Ok(c.query_row(sql, [], |r| r.get(0))?))
                .unwrap()
        }

        fn login_state(&self, account: AccountId) -> (Option<i64>, Option<f64>) {
            self.with_conn(|c| {
                Ok(c.query_row(
                    "SELECT last_login, login_tokens FROM accounts WHERE id = ?1",
                    [account],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap()
        }

        fn pool_within_bounds(&self) -> bool {
            self.idle.lock().unwrap().len() <= MAX_IDLE
        }
    }

    fn setup() -> (TempDir, SqliteStore) {
        let dir = TempDir::new();
        let store = SqliteStore::open(&dir.0).unwrap();
        (dir, store)
    }

    #[test]
    fn open_creates_private_dir_and_file() {
        let dir = TempDir::new();
        let nested = dir.0.join("a/b");
        drop(SqliteStore::open(&nested).unwrap());
        assert!(nested.join(DB_FILE).is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&nested).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
        // Reopening an up-to-date database applies nothing and works.
        let store = SqliteStore::open(&nested).unwrap();
        store.create_account(&name("x"), "h").unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = TempDir::new();
        drop(SqliteStore::open(&dir.0).unwrap());
        let path = dir.0.join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&dir.0),
            Err(StoreError::SchemaTooNew {
                found: 999,
                supported: 5
            })
        ));
    }

    #[test]
    fn errors_map_to_store_errors() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(StoreError::from(busy), StoreError::Busy));
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(StoreError::from(full).is_transient());
        let io = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
            None,
        );
        assert!(matches!(StoreError::from(io), StoreError::Io(_)));
        let other = StoreError::from(rusqlite::Error::QueryReturnedNoRows);
        assert!(matches!(other, StoreError::Backend(_)));
        assert!(!other.is_transient());
    }

    #[test]
    fn migrates_a_v1_database() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        let (bytes, summary) = normalise(b"Subject: caf\xc3\xa9\n\nkept\n");
        {
            let conn = Connection::open(dir.0.join(DB_FILE)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO accounts (local, domain_id, password_hash, uidvalidity, created_at)
                 VALUES ('old', NULL, '$h', 1700000000, 1700000000)",
                [],
            )
            .unwrap();
            let account = conn.last_insert_rowid();
            conn.execute(
                "INSERT INTO messages (account_id, uid, size, header_octets, body_lines, chunks,
                                       delivered_at)
                 VALUES (?1, 'OLD-1', ?2, ?3, ?4, 1, 1700000000)",
                params![
                    account,
                    to_i64(summary.size),
                    to_i64(summary.header_octets),
                    to_i64(summary.body_lines)
                ],
            )
            .unwrap();
            let message = conn.last_insert_rowid();
            conn.execute(
                "INSERT INTO chunks (message_id, seq, data) VALUES (?1, 0, ?2)",
                params![message, bytes],
            )
            .unwrap();
        }

        let store = SqliteStore::open(&dir.0).unwrap();
        let version: i64 = store
            .with_conn(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let old = name("old");
        let account = store.account(&old).unwrap().unwrap();
        assert_eq!(account.policy, AccountPolicy::default());
        let summary_row = store.account_summary(&old).unwrap();
        assert_eq!((summary_row.messages, summary_row.last_login), (1, None));
        // Existing messages are not re-read: their UTF-8 flag stays false.
        let listed = store.list_messages(account.id).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].uid.as_str(), listed[0].utf8_headers),
            ("OLD-1", false)
        );
        assert_eq!(read_all(&store, listed[0].id).concat(), bytes);
        assert_eq!(retrieved_at(&store, listed[0].id), None);
        // The sweep of EXPIRE uses the new index.
        let plan: String = store
            .with_conn(|c| {
                Ok(c.query_row(
                    "EXPLAIN QUERY PLAN DELETE FROM messages
                     WHERE account_id = 1 AND retrieved_at IS NOT NULL AND retrieved_at <= 5",
                    [],
                    |r| r.get(3),
                )?)
            })
            .unwrap();
        assert!(plan.contains("messages_retrieved"), "{plan}");

        // And everything works on the migrated database.
        let fresh = deliver(&store, &old, b"Subject: caf\xc3\xa9\n\nnew\n");
        assert!(store.list_messages(account.id).unwrap()[1].utf8_headers);
        assert_ne!(fresh.uid, "OLD-1");
        let policy = AccountPolicy {
            login_delay: Some(60),
            expire: Some(Expire::Days(3)),
        };
        store.set_policy(&old, policy).unwrap();
        assert_eq!(store.account(&old).unwrap().unwrap().policy, policy);
        assert_eq!(
            store
                .check_login_delay(account.id, Duration::from_secs(60), 0)
                .unwrap(),
            LoginDelay::Allowed
        );
        let lock = store.lock_maildrop(account.id, "a@h:1#1", HOUR).unwrap();
        store.commit_update(&lock, &[], &[listed[0].id]).unwrap();
        assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 1);
        assert_eq!(ids(&store, account.id), [fresh.id]);
        drop(store);
        // Reopening applies nothing more.
        SqliteStore::open(&dir.0).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = setup();
        store.create_account(&name("p"), "$x").unwrap();
        for file in [
            "maildrops.sqlite3",
            "maildrops.sqlite3-wal",
            "maildrops.sqlite3-shm",
        ] {
            let mode = std::fs::metadata(dir.0.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let mode = std::fs::metadata(&dir.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
