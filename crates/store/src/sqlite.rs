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
//! [`login_bucket`].

use std::fmt;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior,
};
use tracing::{debug, info, warn};

use crate::holder::holder_is_dead;

mod backup;
use crate::{
    Account, AccountId, AccountImport, AccountName, AccountPolicy, AccountSecrets, AccountSummary,
    Delivered, Expire, ImportMessage, Ingest, LockInfo, LoginDelay, MaildropLock, MessageId,
    MessageMeta, OnExisting, Result, Store, StoreError, CHUNK_SIZE,
};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "maildrops.sqlite3";
/// Idle connections kept for reuse; more are closed when given back.
const MAX_IDLE: usize = 16;
/// How long a statement waits for another connection's lock before `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the reads from a delivered message.
const READ_BUF: usize = 64 * 1024;
/// Longest UID, RFC 1939 section 7.
const MAX_UID_OCTETS: usize = 70;

/// Schema migrations; `PRAGMA user_version` counts those applied. Append, never edit.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4];

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
///   [`login_bucket`]; NULL tokens = a full bucket.
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

/// `expire_days` value of [`Expire::Never`].
const EXPIRE_NEVER: i64 = -1;

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

/// Unix seconds of `t` (0 before the epoch).
fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Now, in unix seconds.
fn now() -> i64 {
    unix_secs(SystemTime::now())
}

/// Counts stored as INTEGER are never negative; clamp defensively instead of panicking.
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An `accounts` row as [`FIND_ACCOUNT`] reads it.
struct AccountRow {
    id: AccountId,
    password_hash: String,
    created_at: i64,
    uidvalidity: i64,
    policy: AccountPolicy,
    secrets: AccountSecrets,
}

/// The named account's row.
fn find_account(conn: &Connection, name: &AccountName) -> Result<Option<AccountRow>> {
    let mut stmt = conn.prepare_cached(FIND_ACCOUNT)?;
    let row = stmt
        .query_row(params![name.local(), name.domain()], |row| {
            Ok(AccountRow {
                id: row.get(0)?,
                password_hash: row.get(1)?,
                created_at: row.get(2)?,
                uidvalidity: row.get(3)?,
                policy: policy_from_row(row, 4)?,
                secrets: AccountSecrets {
                    scram_sha256: row.get(6)?,
                    legacy_secret: row.get(7)?,
                    cram_md5_states: row.get(8)?,
                },
            })
        })
        .optional()?;
    Ok(row)
}

/// Id and uidvalidity of the named account, or `NoSuchAccount`.
fn account_id(conn: &Connection, name: &AccountName) -> Result<(AccountId, i64)> {
    match find_account(conn, name)? {
        Some(row) => Ok((row.id, row.uidvalidity)),
        None => Err(StoreError::NoSuchAccount(name.to_string())),
    }
}

/// The policy in columns `first` (`login_delay`) and `first + 1` (`expire_days`).
fn policy_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<AccountPolicy> {
    let login_delay: Option<u32> = row.get(first)?;
    let expire = match row.get::<_, Option<i64>>(first + 1)? {
        None => None,
        Some(EXPIRE_NEVER) => Some(Expire::Never),
        Some(days) => {
            Some(Expire::Days(u32::try_from(days).map_err(|_| {
                rusqlite::Error::IntegralValueOutOfRange(first + 1, days)
            })?))
        }
    };
    Ok(AccountPolicy {
        login_delay,
        expire,
    })
}

/// `expire_days` of an EXPIRE override.
fn expire_to_sql(expire: Option<Expire>) -> Option<i64> {
    expire.map(|e| match e {
        Expire::Never => EXPIRE_NEVER,
        Expire::Days(days) => i64::from(days),
    })
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

/// The LOGIN-DELAY token bucket (RFC 2449 section 6.5) of one account: holds `capacity`
/// tokens and refills at one token per `delay_secs`.
///
/// Stored as `last_login` (whole unix seconds) and `login_tokens`, the bucket's level *at the
/// instant `last_login`*, projected back from the precise (sub-second) time of the login that
/// was recorded. As refilling is linear, `tokens + (t - last_login) / delay` is then the exact
/// level at any later time `t` (before the cap), so whole-second storage loses no precision.
/// The projected value may be slightly below zero; NULL tokens mean a full bucket.
#[derive(Debug, Clone, Copy)]
struct LoginBucket {
    capacity: f64,
    delay_secs: f64,
}

/// Tolerance for float rounding when a token has just come back.
const TOKEN_EPSILON: f64 = 1e-9;

impl LoginBucket {
    /// The level at `now` (unix seconds, fractional) given the stored state.
    fn level(&self, last_login: Option<i64>, tokens: Option<f64>, now: f64) -> f64 {
        match (last_login, tokens) {
            (Some(last), Some(tokens)) if tokens.is_finite() => {
                // A clock that went backwards refills nothing.
                let elapsed = (now - last as f64).max(0.0);
                (tokens + elapsed / self.delay_secs).min(self.capacity)
            }
            _ => self.capacity,
        }
    }

    /// What to store after taking one token at `now` from a bucket at `level`: whole seconds
    /// and the level at that earlier instant.
    fn take(&self, level: f64, now: f64) -> (i64, f64) {
        let second = now.floor();
        let tokens = level - 1.0 - (now - second) / self.delay_secs;
        (second as i64, tokens)
    }

    /// Time until a bucket at `level` (< 1) holds one token, within (0, delay].
    fn retry_after(&self, level: f64) -> Duration {
        let secs = ((1.0 - level) * self.delay_secs).clamp(0.0, self.delay_secs);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_nanos(1))
    }
}

/// See [`LoginBucket`].
fn login_bucket(delay: Duration, burst: u32) -> LoginBucket {
    LoginBucket {
        capacity: 1.0 + f64::from(burst),
        delay_secs: delay.as_secs_f64(),
    }
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

/// RFC 1939 section 7: 1 to 70 octets in 0x21..=0x7E.
fn validate_uid(uid: &str) -> Result<()> {
    let reason = if uid.is_empty() {
        "empty"
    } else if uid.len() > MAX_UID_OCTETS {
        "longer than 70 octets"
    } else if !uid.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        "contains octets outside 0x21..=0x7E"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidUid {
        uid: uid.to_owned(),
        reason,
    })
}

/// Takes the account's next UID (`%08X%08X` of next_uid and uidvalidity, Dovecot's default
/// UIDL format), skipping any that an import already used.
fn generate_uid(conn: &Connection, account: AccountId, uidvalidity: i64) -> Result<String> {
    let mut stmt = conn.prepare_cached(
        "UPDATE accounts SET next_uid = next_uid + 1 WHERE id = ?1 RETURNING next_uid - 1",
    )?;
    loop {
        let n: i64 = stmt.query_row([account], |row| row.get(0))?;
        let uid = format!("{n:08X}{uidvalidity:08X}");
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
    let uid = match uid {
        Some(uid) => {
            validate_uid(&uid)?;
            if uid_in_use(tx, account, &uid)? {
                return Err(StoreError::DuplicateUid(uid));
            }
            uid
        }
        None => generate_uid(tx, account, uidvalidity)?,
    };
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
    let too_large = |size| StoreError::TooLarge {
        size,
        limit: max_size,
    };
    let mut ingest = Ingest::new();
    let mut buf = vec![0; READ_BUF];
    let mut pending = Vec::with_capacity(CHUNK_SIZE + 2 * READ_BUF + 2);
    let mut seq: i64 = 0;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::Input(e)),
        };
        ingest.push(&buf[..n], &mut pending);
        if ingest.size() > max_size {
            return Err(too_large(ingest.size()));
        }
        while pending.len() >= CHUNK_SIZE {
            insert.execute(params![id, seq, &pending[..CHUNK_SIZE]])?;
            pending.drain(..CHUNK_SIZE);
            seq += 1;
        }
    }
    let summary = ingest.finish(&mut pending);
    if summary.size == 0 {
        return Err(StoreError::InvalidMessage("empty message"));
    }
    if summary.size > max_size {
        return Err(too_large(summary.size));
    }
    for piece in pending.chunks(CHUNK_SIZE) {
        insert.execute(params![id, seq, piece])?;
        seq += 1;
    }
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

fn summary_row(row: &Row<'_>) -> rusqlite::Result<AccountSummary> {
    let holder: Option<String> = row.get(4)?;
    let lock = match holder {
        Some(holder) => Some(LockInfo {
            holder,
            acquired_at: row.get(5)?,
            expires_at: row.get(6)?,
        }),
        None => None,
    };
    Ok(AccountSummary {
        name: AccountName::from_stored(row.get(0)?, row.get(1)?),
        messages: to_u64(row.get(2)?),
        octets: to_u64(row.get(3)?),
        lock,
        policy: policy_from_row(row, 7)?,
        last_login: row.get(9)?,
        legacy: row.get(10)?,
        cram_md5: row.get(11)?,
    })
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
            let mut created = Vec::with_capacity(accounts.len());
            for a in accounts {
                match (find_account(tx, &a.name)?, existing) {
                    (None, _) => {
                        insert_account(tx, &a.name, &a.password_hash, &a.secrets)?;
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
        self.with_conn(|conn| {
            Ok(find_account(conn, name)?.map(|row| Account {
                id: row.id,
                name: name.clone(),
                password_hash: row.password_hash,
                secrets: row.secrets,
                created_at: row.created_at,
                policy: row.policy,
            }))
        })
    }

    fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        let mut all = self.read(|tx| {
            let mut stmt = tx.prepare_cached(SUMMARIES)?;
            let rows = stmt.query_map([now()], summary_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn account_summary(&self, name: &AccountName) -> Result<AccountSummary> {
        self.read(|tx| {
            let (id, _) = account_id(tx, name)?;
            let mut stmt = tx.prepare_cached(&format!("{SUMMARIES} WHERE a.id = ?2"))?;
            Ok(stmt.query_row(params![now(), id], summary_row)?)
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
            let mut record = tx.prepare_cached(
                "UPDATE accounts SET last_login = ?2, login_tokens = ?3 WHERE id = ?1",
            )?;
            if delay.is_zero() {
                // No delay, no debt: the bucket stays full.
                record.execute(params![account, now.floor() as i64, None::<f64>])?;
                return Ok(LoginDelay::Allowed);
            }
            let bucket = login_bucket(delay, burst);
            let level = bucket.level(last_login, tokens, now);
            if level < 1.0 - TOKEN_EPSILON {
                let retry_after = bucket.retry_after(level);
                debug!(account, ?retry_after, "login refused: LOGIN-DELAY");
                return Ok(LoginDelay::TooSoon { retry_after });
            }
            let (second, tokens) = bucket.take(level.max(1.0), now);
            record.execute(params![account, second, tokens])?;
            Ok(LoginDelay::Allowed)
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
            let mut delivered = Vec::new();
            // No size limit: the messages are already in memory, and a migration must not
            // drop a large old message.
            for message in messages {
                let mut bytes = message.bytes.as_slice();
                delivered.push(store_message(
                    tx,
                    account,
                    uidvalidity,
                    message.uid,
                    &mut bytes,
                    u64::MAX,
                )?);
            }
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

    fn renew_lock(&self, lock: &MaildropLock, lease: Duration) -> Result<()> {
        let expires_at = SystemTime::now()
            .checked_add(lease)
            .map_or(i64::MAX, unix_secs);
        self.write(|tx| {
            let renewed = tx.execute(
                "UPDATE locks SET expires_at = ?3 WHERE account_id = ?1 AND token = ?2",
                params![lock.account, lock.token, expires_at],
            )?;
            if renewed == 0 {
                return Err(StoreError::LockLost);
            }
            Ok(())
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
            let rows = stmt.query_map([account], |row| {
                Ok(MessageMeta {
                    id: row.get(0)?,
                    uid: row.get(1)?,
                    size: to_u64(row.get(2)?),
                    header_octets: to_u64(row.get(3)?),
                    body_lines: to_u64(row.get(4)?),
                    utf8_headers: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::{holder, normalise};

    const HOUR: Duration = Duration::from_secs(3600);

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            TempDir(std::env::temp_dir().join(format!(
                "store-test-{}-{nanos}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup() -> (TempDir, SqliteStore) {
        let dir = TempDir::new();
        let store = SqliteStore::open(&dir.0).unwrap();
        (dir, store)
    }

    fn name(s: &str) -> AccountName {
        AccountName::parse(s).unwrap()
    }

    fn deliver(store: &SqliteStore, to: &AccountName, bytes: &[u8]) -> Delivered {
        store
            .deliver(to, &mut &bytes[..], crate::DEFAULT_MAX_MESSAGE_SIZE)
            .unwrap()
    }

    fn read_all(store: &SqliteStore, id: MessageId) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        while let Some(chunk) = store.read_chunk(id, chunks.len() as u32).unwrap() {
            chunks.push(chunk);
        }
        chunks
    }

    fn count(store: &SqliteStore, sql: &str) -> i64 {
        store
            .with_conn(|c| Ok(c.query_row(sql, [], |r| r.get(0))?))
            .unwrap()
    }

    fn uids(store: &SqliteStore, account: AccountId) -> Vec<String> {
        let list = store.list_messages(account).unwrap();
        list.into_iter().map(|m| m.uid).collect()
    }

    /// Hands out its data in small, uneven reads, with an `Interrupted` error in between.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(ErrorKind::Interrupted.into());
            }
            self.step = self.step % 9973 + 1;
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Fails after handing out some bytes.
    struct Broken(usize);

    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("connection reset"));
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<SqliteStore>();
        check::<Arc<dyn Store>>();
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
    fn accounts_create_lookup_duplicate() {
        let (_dir, store) = setup();
        let alice = store
            .create_account(&name("Alice@Example.ORG"), "$argon2id$a")
            .unwrap();
        let bob = store
            .create_account(&name("bob@example.org"), "$b")
            .unwrap();
        let plain = store.create_account(&name("alice"), "$c").unwrap();
        assert_eq!(count(&store, "SELECT count(*) FROM domains"), 1);
        assert_ne!(alice, plain);

        let found = store.account(&name("ALICE@example.org")).unwrap().unwrap();
        assert_eq!(found.id, alice);
        assert_eq!(found.name.to_string(), "alice@example.org");
        assert_eq!(found.password_hash, "$argon2id$a");
        assert!(found.created_at > 1_600_000_000);
        assert_eq!(store.account(&name("Alice")).unwrap().unwrap().id, plain);
        assert!(store.account(&name("carol")).unwrap().is_none());
        assert!(store.account(&name("alice@example.com")).unwrap().is_none());

        for dup in ["alice@EXAMPLE.org", "ALICE"] {
            assert!(matches!(
                store.create_account(&name(dup), "$x"),
                Err(StoreError::AccountExists(n)) if n == dup.to_lowercase()
            ));
        }

        store
            .set_password(&name("bob@example.org"), "$new")
            .unwrap();
        let bob_row = store.account(&name("bob@example.org")).unwrap().unwrap();
        assert_eq!((bob_row.id, bob_row.password_hash.as_str()), (bob, "$new"));
        assert!(matches!(
            store.set_password(&name("carol"), "$x"),
            Err(StoreError::NoSuchAccount(_))
        ));

        deliver(&store, &name("bob@example.org"), b"Subject: hi\n\nbody\n");
        let list = store.list_accounts().unwrap();
        let names: Vec<String> = list.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["alice", "alice@example.org", "bob@example.org"]);
        assert_eq!((list[2].messages, list[2].octets), (1, 21));
        let summary = store.account_summary(&name("bob@example.org")).unwrap();
        assert_eq!(summary, list[2]);
        assert!(matches!(
            store.account_summary(&name("carol")),
            Err(StoreError::NoSuchAccount(_))
        ));
    }

    #[test]
    fn deliver_multi_chunk_round_trip() {
        let (_dir, store) = setup();
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        // ~300 KiB with bare LFs, one CRLF, a bare CR, and no final newline.
        let mut input = b"From: a@b\nSubject: big\r\n\n".to_vec();
        let mut line = 0u32;
        while input.len() < 300 * 1024 {
            input.extend_from_slice(format!("line {line} of the body\r..\n").as_bytes());
            line += 1;
        }
        input.extend_from_slice(b"no newline at the end");
        let (expected, summary) = normalise(&input);

        for source in [0, 1] {
            let delivered = match source {
                0 => deliver(&store, &to, &input),
                _ => {
                    let mut trickle = Trickle {
                        data: &input,
                        step: 0,
                        interrupt: false,
                    };
                    store.deliver(&to, &mut trickle, u64::MAX).unwrap()
                }
            };
            assert_eq!(delivered.size, expected.len() as u64);
            assert_eq!(delivered.uid.len(), 16);
            let chunks = read_all(&store, delivered.id);
            assert_eq!(chunks.len(), expected.len().div_ceil(CHUNK_SIZE));
            let (last, full) = chunks.split_last().unwrap();
            assert!(full.iter().all(|c| c.len() == CHUNK_SIZE));
            assert!(!last.is_empty() && last.len() <= CHUNK_SIZE);
            assert_eq!(chunks.concat(), expected);
            assert!(store.read_chunk(delivered.id, 1000).unwrap().is_none());
        }

        let list = store.list_messages(account).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].id < list[1].id);
        for meta in &list {
            assert_eq!(meta.size, summary.size);
            assert_eq!(meta.header_octets, summary.header_octets);
            assert_eq!(meta.body_lines, summary.body_lines);
        }
        assert_eq!(summary.header_octets, 11 + 14 + 2);
        assert_eq!(summary.body_lines, u64::from(line) + 1);
        assert!(matches!(
            store.list_messages(account + 100),
            Err(StoreError::NoSuchAccount(_))
        ));
        assert!(matches!(
            store.deliver(&name("nobody"), &mut &b"x\n"[..], 100),
            Err(StoreError::NoSuchAccount(n)) if n == "nobody"
        ));
    }

    #[test]
    fn failed_deliveries_leave_nothing() {
        let (_dir, store) = setup();
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        let big = vec![b'x'; 3 * CHUNK_SIZE];
        let lines = b"a\n".repeat(500); // 1000 octets in, 1500 stored
        let cases: Vec<(&[u8], u64)> = vec![(&big, 2 * CHUNK_SIZE as u64), (&lines, 1499)];
        for (input, limit) in cases {
            let err = store.deliver(&to, &mut &input[..], limit).unwrap_err();
            assert!(
                matches!(err, StoreError::TooLarge { size, limit: l } if size > limit && l == limit),
                "{err:?}"
            );
        }
        // "x" becomes "x\r\n": the appended CRLF counts against the limit too.
        assert!(matches!(
            store.deliver(&to, &mut &b"x"[..], 2),
            Err(StoreError::TooLarge { size: 3, limit: 2 })
        ));
        assert!(matches!(
            store.deliver(&to, &mut &b""[..], 100),
            Err(StoreError::InvalidMessage("empty message"))
        ));
        let err = store
            .deliver(&to, &mut Broken(CHUNK_SIZE * 2 + 5), u64::MAX)
            .unwrap_err();
        assert!(matches!(err, StoreError::Input(_)), "{err:?}");
        assert!(!err.is_transient());

        assert!(store.list_messages(account).unwrap().is_empty());
        assert_eq!(count(&store, "SELECT count(*) FROM messages"), 0);
        assert_eq!(count(&store, "SELECT count(*) FROM chunks"), 0);

        // Exactly at the limit is fine.
        let ok = store.deliver(&to, &mut &lines[..], 1500).unwrap();
        assert_eq!(ok.size, 1500);
    }

    #[test]
    fn generated_uids_are_never_reused() {
        let dir = TempDir::new();
        let to = name("user@example.org");
        let mut seen = HashSet::new();
        let mut fresh = |uid: String| {
            assert_eq!(uid.len(), 16, "{uid}");
            assert!(
                uid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
                "{uid}"
            );
            assert!(seen.insert(uid.clone()), "UID {uid} given twice");
        };
        {
            let store = SqliteStore::open(&dir.0).unwrap();
            let account = store.create_account(&to, "h").unwrap();
            for i in 0..3 {
                let d = deliver(&store, &to, format!("Message {i}\n").as_bytes());
                assert!(d.uid.starts_with(&format!("{:08X}", i + 1)));
                fresh(d.uid);
            }
            // Delete the newest message: its UID must not come back.
            let newest = store.list_messages(account).unwrap()[2].id;
            let lock = store.lock_maildrop(account, "t@h:1#1", HOUR).unwrap();
            store.commit_update(&lock, &[newest], &[]).unwrap();
            store.release_lock(&lock).unwrap();
            fresh(deliver(&store, &to, b"after deletion\n").uid);
        }
        // After reopening.
        let store = SqliteStore::open(&dir.0).unwrap();
        fresh(deliver(&store, &to, b"after reopening\n").uid);
        let before = uids(&store, store.account(&to).unwrap().unwrap().id);
        let old_validity = before[0][8..].to_owned();
        // After deleting and re-creating the account under the same name.
        store.delete_account(&to).unwrap();
        let account = store.create_account(&to, "h").unwrap();
        for _ in 0..3 {
            fresh(deliver(&store, &to, b"after re-creation\n").uid);
        }
        let after = uids(&store, account);
        assert!(after.iter().all(|uid| uid[8..] != old_validity));
    }

    #[test]
    fn generated_uid_skips_imported_one() {
        let (_dir, store) = setup();
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        let validity: i64 = count(&store, "SELECT uidvalidity FROM accounts");
        let taken = format!("{:08X}{validity:08X}", 1);
        store
            .import(
                &to,
                &mut [ImportMessage {
                    bytes: b"x\n".to_vec(),
                    uid: Some(taken.clone()),
                }]
                .into_iter(),
            )
            .unwrap();
        let d = deliver(&store, &to, b"y\n");
        assert_eq!(d.uid, format!("{:08X}{validity:08X}", 2));
        assert_eq!(uids(&store, account), [taken, d.uid]);
    }

    #[test]
    fn locks_exclude_release_expire_and_fence() {
        let (_dir, store) = setup();
        let account = store.create_account(&name("user"), "h").unwrap();
        let one = holder::holder_string(1);
        let two = holder::holder_string(2);

        let first = store.lock_maildrop(account, &one, HOUR).unwrap();
        assert_eq!(
            (first.account, first.holder.as_str()),
            (account, one.as_str())
        );
        assert!(matches!(
            store.lock_maildrop(account, &two, HOUR),
            Err(StoreError::Locked { holder }) if holder == one
        ));
        let shown = store.account_summary(&name("user")).unwrap().lock.unwrap();
        assert_eq!(shown.holder, one);
        assert!(shown.expires_at >= shown.acquired_at + 3599);
        store.renew_lock(&first, HOUR).unwrap();

        // Release, then another holder gets it with a new token.
        store.release_lock(&first).unwrap();
        store.release_lock(&first).unwrap();
        assert!(store.list_accounts().unwrap()[0].lock.is_none());
        let second = store.lock_maildrop(account, &two, HOUR).unwrap();
        assert!(second.token > first.token);
        assert!(matches!(
            store.renew_lock(&first, HOUR),
            Err(StoreError::LockLost)
        ));
        // A stale release must not free someone else's lock.
        store.release_lock(&first).unwrap();
        assert!(store.lock_maildrop(account, &one, HOUR).is_err());
        store.release_lock(&second).unwrap();

        // A zero-length lease is expired at once and is not reported.
        let brief = store.lock_maildrop(account, &one, Duration::ZERO).unwrap();
        assert!(store.account_summary(&name("user")).unwrap().lock.is_none());
        let third = store.lock_maildrop(account, &two, HOUR).unwrap();
        assert!(third.token > brief.token);
        store.release_lock(&third).unwrap();

        // A holder on this host whose process is gone is taken over before expiry.
        let host = holder::hostname().unwrap();
        let dead = format!("pop3d@{host}:{}#9", 0x7FFF_FFF0);
        let ghost = store.lock_maildrop(account, &dead, HOUR).unwrap();
        let live = store.lock_maildrop(account, &one, HOUR).unwrap();
        assert!(live.token > ghost.token);
        // A holder on another host is respected until expiry.
        store.release_lock(&live).unwrap();
        let remote = format!("pop3d@elsewhere-{host}:{}#9", 0x7FFF_FFF0);
        store.lock_maildrop(account, &remote, HOUR).unwrap();
        assert!(matches!(
            store.lock_maildrop(account, &one, HOUR),
            Err(StoreError::Locked { holder }) if holder == remote
        ));

        assert!(matches!(
            store.lock_maildrop(account + 100, &one, HOUR),
            Err(StoreError::NoSuchAccount(_))
        ));
    }

    #[test]
    fn commit_update_deletions_are_exact_atomic_and_fenced() {
        let (_dir, store) = setup();
        let (to, other) = (name("user"), name("other"));
        let account = store.create_account(&to, "h").unwrap();
        let other_account = store.create_account(&other, "h").unwrap();
        let ids: Vec<MessageId> = (0..4)
            .map(|i| deliver(&store, &to, &vec![b'a' + i; CHUNK_SIZE + 1]).id)
            .collect();
        let foreign = deliver(&store, &other, b"not yours\n").id;

        let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
        store
            .commit_update(&lock, &[ids[0], ids[2], foreign], &[])
            .unwrap();
        let left: Vec<MessageId> = store
            .list_messages(account)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(left, [ids[1], ids[3]]);
        assert!(store.read_chunk(ids[0], 0).unwrap().is_none());
        assert_eq!(store.list_messages(other_account).unwrap().len(), 1);
        assert_eq!(count(&store, "SELECT count(*) FROM chunks"), 5);
        store.release_lock(&lock).unwrap();

        // Lock lost to another holder: nothing is deleted.
        let lapsed = store
            .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
            .unwrap();
        assert!(matches!(
            store.commit_update(&lapsed, &[ids[1]], &[]),
            Err(StoreError::LockLost)
        ));
        let thief = store.lock_maildrop(account, "b@h:2#1", HOUR).unwrap();
        assert!(matches!(
            store.commit_update(&lapsed, &[ids[1], ids[3]], &[]),
            Err(StoreError::LockLost)
        ));
        assert!(matches!(
            store.renew_lock(&lapsed, HOUR),
            Err(StoreError::LockLost)
        ));
        assert_eq!(store.list_messages(account).unwrap().len(), 2);
        store.commit_update(&thief, &[], &[]).unwrap();
    }

    #[test]
    fn delivery_while_locked_shows_in_next_listing() {
        let (_dir, store) = setup();
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        deliver(&store, &to, b"one\n");
        let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
        let snapshot = store.list_messages(account).unwrap();
        let late = deliver(&store, &to, b"two\n");
        assert_eq!(snapshot.len(), 1);
        assert_eq!(
            store.read_chunk(snapshot[0].id, 0).unwrap().unwrap(),
            b"one\r\n"
        );
        store.commit_update(&lock, &[snapshot[0].id], &[]).unwrap();
        store.release_lock(&lock).unwrap();
        let next = store.list_messages(account).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].id, &next[0].uid), (late.id, &late.uid));
    }

    #[test]
    fn import_keeps_uids_and_is_all_or_nothing() {
        let (_dir, store) = setup();
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        let msg = |uid: Option<&str>| ImportMessage {
            bytes: b"Subject: old\n\nkept\n".to_vec(),
            uid: uid.map(str::to_owned),
        };
        let long = "x".repeat(71);
        let bad: Vec<(Vec<ImportMessage>, &str)> = vec![
            (vec![msg(Some("ok1")), msg(Some(""))], "invalid"),
            (vec![msg(Some("ok1")), msg(Some("has space"))], "invalid"),
            (vec![msg(Some("ok1")), msg(Some("tab\t"))], "invalid"),
            (vec![msg(Some("ok1")), msg(Some("é"))], "invalid"),
            (vec![msg(Some("ok1")), msg(Some(&long))], "invalid"),
            (
                vec![msg(Some("ok1")), msg(None), msg(Some("ok1"))],
                "duplicate",
            ),
            (
                vec![
                    msg(Some("ok1")),
                    ImportMessage {
                        bytes: Vec::new(),
                        uid: None,
                    },
                ],
                "empty",
            ),
        ];
        for (batch, kind) in bad {
            let err = store.import(&to, &mut batch.into_iter()).unwrap_err();
            let ok = match kind {
                "invalid" => matches!(err, StoreError::InvalidUid { .. }),
                "duplicate" => matches!(&err, StoreError::DuplicateUid(u) if u == "ok1"),
                _ => matches!(err, StoreError::InvalidMessage(_)),
            };
            assert!(ok, "{kind}: {err:?}");
            assert!(store.list_messages(account).unwrap().is_empty());
            assert_eq!(count(&store, "SELECT count(*) FROM chunks"), 0);
        }

        let max = "~".repeat(70);
        let done = store
            .import(
                &to,
                &mut vec![msg(Some("UID-1")), msg(None), msg(Some(&max))].into_iter(),
            )
            .unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(done[0].uid, "UID-1");
        assert_eq!(done[1].uid.len(), 16);
        assert_eq!(done[2].uid, max);
        assert!(done.iter().all(|d| d.size == 22));
        let listed = store.list_messages(account).unwrap();
        assert_eq!(uids(&store, account), [&*done[0].uid, &done[1].uid, &max]);
        assert_eq!((listed[0].header_octets, listed[0].body_lines), (16, 1));
        assert_eq!(
            store.read_chunk(done[0].id, 0).unwrap().unwrap(),
            b"Subject: old\r\n\r\nkept\r\n"
        );
        assert!(matches!(
            store.import(&to, &mut vec![msg(Some("new")), msg(Some("UID-1"))].into_iter()),
            Err(StoreError::DuplicateUid(u)) if u == "UID-1"
        ));
        assert_eq!(store.list_messages(account).unwrap().len(), 3);
        // The same UID is fine in another maildrop.
        let other = name("other");
        store.create_account(&other, "h").unwrap();
        store
            .import(&other, &mut vec![msg(Some("UID-1"))].into_iter())
            .unwrap();
    }

    #[test]
    fn delete_account_refuses_while_locked() {
        let (_dir, store) = setup();
        let to = name("user@example.org");
        let account = store.create_account(&to, "h").unwrap();
        deliver(&store, &to, &vec![b'z'; CHUNK_SIZE * 2]);
        let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
        assert!(matches!(
            store.delete_account(&to),
            Err(StoreError::Locked { holder }) if holder == "a@h:1#1"
        ));
        assert!(store.account(&to).unwrap().is_some());
        store.release_lock(&lock).unwrap();

        // An expired lock does not block deletion.
        store
            .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
            .unwrap();
        store.delete_account(&to).unwrap();
        assert!(store.account(&to).unwrap().is_none());
        for table in ["messages", "chunks", "locks", "accounts"] {
            let sql = format!("SELECT count(*) FROM {table}");
            assert_eq!(count(&store, &sql), 0, "{table}");
        }
        assert!(matches!(
            store.delete_account(&to),
            Err(StoreError::NoSuchAccount(_))
        ));
        assert!(matches!(
            store.deliver(&to, &mut &b"x\n"[..], 100),
            Err(StoreError::NoSuchAccount(_))
        ));
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
                supported: 4
            })
        ));
    }

    #[test]
    fn concurrent_deliveries_from_shared_store() {
        let (_dir, store) = setup();
        let store = Arc::new(store);
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (store, to) = (Arc::clone(&store), to.clone());
                std::thread::spawn(move || {
                    for i in 0..5 {
                        let body = format!("thread {t} message {i}\n");
                        deliver(&store, &to, body.as_bytes());
                        store.list_messages(account).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let all = uids(&store, account);
        assert_eq!(all.len(), 20);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 20);
        assert!(store.idle.lock().unwrap().len() <= MAX_IDLE);
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

    fn exec(store: &SqliteStore, sql: &str) -> usize {
        store.with_conn(|c| Ok(c.execute(sql, [])?)).unwrap()
    }

    fn retrieved_at(store: &SqliteStore, id: MessageId) -> Option<i64> {
        store
            .with_conn(|c| {
                Ok(c.query_row(
                    "SELECT retrieved_at FROM messages WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )?)
            })
            .unwrap()
    }

    fn ids(store: &SqliteStore, account: AccountId) -> Vec<MessageId> {
        let list = store.list_messages(account).unwrap();
        list.into_iter().map(|m| m.id).collect()
    }

    /// A lock whose lease is over, then taken over by another holder.
    fn lapsed_and_taken_over(
        store: &SqliteStore,
        account: AccountId,
    ) -> (MaildropLock, MaildropLock) {
        let lapsed = store
            .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
            .unwrap();
        let thief = store.lock_maildrop(account, "b@h:2#1", HOUR).unwrap();
        (lapsed, thief)
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

    #[test]
    fn policy_round_trip() {
        let (_dir, store) = setup();
        let (alice, bob) = (name("alice@example.org"), name("bob"));
        store.create_account(&alice, "h").unwrap();
        store.create_account(&bob, "h").unwrap();
        let policy = |login_delay, expire| AccountPolicy {
            login_delay,
            expire,
        };
        assert_eq!(
            store.account(&alice).unwrap().unwrap().policy,
            AccountPolicy::default()
        );
        let cases = [
            policy(Some(0), Some(Expire::Never)),
            policy(Some(300), Some(Expire::Days(0))),
            policy(Some(u32::MAX), Some(Expire::Days(u32::MAX))),
            policy(None, Some(Expire::Days(30))),
            policy(Some(1), None),
            AccountPolicy::default(),
        ];
        for want in cases {
            store.set_policy(&alice, want).unwrap();
            assert_eq!(store.account(&alice).unwrap().unwrap().policy, want);
            assert_eq!(store.account_summary(&alice).unwrap().policy, want);
            let list = store.list_accounts().unwrap();
            assert_eq!(list[0].policy, want);
            // The other account is untouched.
            assert_eq!(list[1].policy, AccountPolicy::default());
        }
        assert!(matches!(
            store.set_policy(&name("carol"), AccountPolicy::default()),
            Err(StoreError::NoSuchAccount(n)) if n == "carol"
        ));
    }

    /// RFC 2449 section 6.5 and 8.1.2: LOGIN-DELAY as a persisted token bucket.
    #[test]
    fn login_delay_token_bucket() {
        let dir = TempDir::new();
        let store = SqliteStore::open(&dir.0).unwrap();
        let [free, strict, bursty, fine] = ["free", "strict", "bursty", "fine"]
            .map(|n| store.create_account(&name(n), "h").unwrap());
        let two = Duration::from_secs(2);
        let refused = |verdict| match verdict {
            LoginDelay::TooSoon { retry_after } => {
                assert!(
                    retry_after > Duration::ZERO && retry_after <= two,
                    "{retry_after:?}"
                );
                retry_after
            }
            LoginDelay::Allowed => panic!("allowed too soon"),
        };
        let state = |account: AccountId| -> (Option<i64>, Option<f64>) {
            store
                .with_conn(|c| {
                    Ok(c.query_row(
                        "SELECT last_login, login_tokens FROM accounts WHERE id = ?1",
                        [account],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?)
                })
                .unwrap()
        };

        // No delay: always allowed, the login still recorded.
        assert_eq!(
            store.account_summary(&name("free")).unwrap().last_login,
            None
        );
        for _ in 0..5 {
            let v = store.check_login_delay(free, Duration::ZERO, 0).unwrap();
            assert_eq!(v, LoginDelay::Allowed);
        }
        let last = store.account_summary(&name("free")).unwrap().last_login;
        assert!(last.is_some_and(|t| (now() - t).abs() <= 1), "{last:?}");

        // Delay 2 s, no burst: the second login is too soon, and a refusal changes nothing.
        assert_eq!(
            store.check_login_delay(strict, two, 0).unwrap(),
            LoginDelay::Allowed
        );
        let before = state(strict);
        refused(store.check_login_delay(strict, two, 0).unwrap());
        assert_eq!(state(strict), before);

        // Burst 2: three quick logins, then a refusal.
        for _ in 0..3 {
            let v = store.check_login_delay(bursty, two, 2).unwrap();
            assert_eq!(v, LoginDelay::Allowed);
        }
        refused(store.check_login_delay(bursty, two, 2).unwrap());

        // The state survives reopening the store.
        drop(store);
        let store = SqliteStore::open(&dir.0).unwrap();
        refused(store.check_login_delay(strict, two, 0).unwrap());
        refused(store.check_login_delay(bursty, two, 2).unwrap());

        // Two seconds later (simulated), one token is back; much later, the bucket is full
        // but holds no more than 1 + burst.
        exec(&store, "UPDATE accounts SET last_login = last_login - 2");
        for account in [strict, bursty] {
            let burst = if account == strict { 0 } else { 2 };
            let v = store.check_login_delay(account, two, burst).unwrap();
            assert_eq!(v, LoginDelay::Allowed);
            refused(store.check_login_delay(account, two, burst).unwrap());
        }
        exec(&store, "UPDATE accounts SET last_login = last_login - 1000");
        for _ in 0..3 {
            let v = store.check_login_delay(bursty, two, 2).unwrap();
            assert_eq!(v, LoginDelay::Allowed);
        }
        refused(store.check_login_delay(bursty, two, 2).unwrap());
        // A zero delay allows even an account that a delay would refuse.
        assert_eq!(
            store.check_login_delay(bursty, Duration::ZERO, 2).unwrap(),
            LoginDelay::Allowed
        );

        // Sub-second precision although last_login holds whole seconds.
        let short = Duration::from_millis(300);
        assert_eq!(
            store.check_login_delay(fine, short, 0).unwrap(),
            LoginDelay::Allowed
        );
        let wait = match store.check_login_delay(fine, short, 0).unwrap() {
            LoginDelay::TooSoon { retry_after } => retry_after,
            LoginDelay::Allowed => panic!("allowed too soon"),
        };
        assert!(
            wait > Duration::from_millis(200) && wait <= short,
            "{wait:?}"
        );
        std::thread::sleep(wait + Duration::from_millis(30));
        assert_eq!(
            store.check_login_delay(fine, short, 0).unwrap(),
            LoginDelay::Allowed
        );
        assert!(matches!(
            store.check_login_delay(fine, short, 0).unwrap(),
            LoginDelay::TooSoon { retry_after } if retry_after > Duration::from_millis(200)
        ));

        assert!(matches!(
            store.check_login_delay(fine + 100, two, 0),
            Err(StoreError::NoSuchAccount(_))
        ));
    }

    /// Two stores on one file stand for two processes: the bucket is never overdrawn.
    #[test]
    fn login_delay_is_atomic_across_connections() {
        let dir = TempDir::new();
        let first = Arc::new(SqliteStore::open(&dir.0).unwrap());
        let second = Arc::new(SqliteStore::open(&dir.0).unwrap());
        let account = first.create_account(&name("user"), "h").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(if i % 2 == 0 { &first } else { &second });
                std::thread::spawn(move || {
                    (0..3)
                        .filter(|_| {
                            store.check_login_delay(account, HOUR, 2).unwrap()
                                == LoginDelay::Allowed
                        })
                        .count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn commit_update_marks_first_retrieval_once_and_deletes() {
        let (_dir, store) = setup();
        let (to, other) = (name("user"), name("other"));
        let account = store.create_account(&to, "h").unwrap();
        let other_account = store.create_account(&other, "h").unwrap();
        let msgs: Vec<MessageId> = (0..4)
            .map(|i| deliver(&store, &to, format!("message {i}\n").as_bytes()).id)
            .collect();
        let foreign = deliver(&store, &other, b"not yours\n").id;

        let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
        store
            .commit_update(&lock, &[msgs[2]], &[msgs[0], msgs[1], msgs[2], foreign])
            .unwrap();
        for id in [msgs[0], msgs[1]] {
            let at = retrieved_at(&store, id);
            assert!(at.is_some_and(|t| (now() - t).abs() <= 1), "{at:?}");
        }
        assert_eq!(retrieved_at(&store, msgs[3]), None);
        assert_eq!(retrieved_at(&store, foreign), None);
        assert_eq!(ids(&store, account), [msgs[0], msgs[1], msgs[3]]);
        assert_eq!(ids(&store, other_account), [foreign]);

        // A later retrieval does not move the first retrieval time.
        exec(
            &store,
            &format!(
                "UPDATE messages SET retrieved_at = 1000 WHERE id = {}",
                msgs[0]
            ),
        );
        store.commit_update(&lock, &[], &[msgs[0]]).unwrap();
        assert_eq!(retrieved_at(&store, msgs[0]), Some(1000));
        store.commit_update(&lock, &[], &[]).unwrap();
        store.release_lock(&lock).unwrap();

        // Fencing: after a takeover nothing is marked or deleted.
        let (lapsed, thief) = lapsed_and_taken_over(&store, account);
        assert!(matches!(
            store.commit_update(&lapsed, &[msgs[1]], &[msgs[3]]),
            Err(StoreError::LockLost)
        ));
        assert!(matches!(
            store.commit_update(&lapsed, &[], &[msgs[3]]),
            Err(StoreError::LockLost)
        ));
        assert_eq!(retrieved_at(&store, msgs[3]), None);
        assert_eq!(ids(&store, account), [msgs[0], msgs[1], msgs[3]]);
        store.commit_update(&thief, &[msgs[1]], &[msgs[3]]).unwrap();
        assert!(retrieved_at(&store, msgs[3]).is_some());
        assert_eq!(ids(&store, account), [msgs[0], msgs[3]]);
    }

    /// RFC 2449 section 6.7: EXPIRE removes messages retrieved at least `retention` ago.
    #[test]
    fn expire_messages_deletes_only_old_retrieved_ones() {
        let (_dir, store) = setup();
        let (to, other) = (name("user"), name("other"));
        let account = store.create_account(&to, "h").unwrap();
        let other_account = store.create_account(&other, "h").unwrap();
        let day = 86_400;
        let [never, old, recent, just_now] = ["never", "old", "recent", "just now"]
            .map(|s| deliver(&store, &to, &vec![b'x'; CHUNK_SIZE + s.len()]).id);
        let foreign = deliver(&store, &other, b"retrieved long ago\n").id;
        let age = |id: MessageId, secs: i64| {
            exec(
                &store,
                &format!(
                    "UPDATE messages SET retrieved_at = {} WHERE id = {id}",
                    now() - secs
                ),
            )
        };
        age(old, 10 * day);
        age(recent, day);
        age(just_now, 0);
        age(foreign, 10 * day);

        let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
        let five_days = Duration::from_secs(5 * 86_400);
        assert_eq!(store.expire_messages(&lock, five_days).unwrap(), 1);
        assert_eq!(ids(&store, account), [never, recent, just_now]);
        assert!(store.read_chunk(old, 0).unwrap().is_none());
        assert_eq!(ids(&store, other_account), [foreign]);
        // A retention reaching before 1970 expires nothing.
        assert_eq!(store.expire_messages(&lock, Duration::MAX).unwrap(), 0);
        // Retention zero: every retrieved message goes, never-retrieved ones stay.
        assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 2);
        assert_eq!(ids(&store, account), [never]);
        assert_eq!(count(&store, "SELECT count(*) FROM chunks"), 2 + 1);
        assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 0);
        store.release_lock(&lock).unwrap();

        // Fencing: after a takeover nothing expires.
        age(never, 10 * day);
        let (lapsed, thief) = lapsed_and_taken_over(&store, account);
        assert!(matches!(
            store.expire_messages(&lapsed, Duration::ZERO),
            Err(StoreError::LockLost)
        ));
        assert_eq!(ids(&store, account), [never]);
        assert_eq!(store.expire_messages(&thief, five_days).unwrap(), 1);
        assert!(ids(&store, account).is_empty());
    }

    /// RFC 6856 section 3: the flag is stored at delivery and import.
    #[test]
    fn utf8_headers_flag_is_stored() {
        let (_dir, store) = setup();
        let to = name("user");
        let account = store.create_account(&to, "h").unwrap();
        let cases: &[(&[u8], bool)] = &[
            (b"Subject: caf\xc3\xa9\n\nbody\n", true),
            (b"Subject: caf\xe9\n\nbody\n", false),
            (b"Subject: cafe\n\ncaf\xc3\xa9 \xe9\n", false),
            (b"Subject: cafe\n\nbody\n", false),
        ];
        for (input, _) in cases {
            deliver(&store, &to, input);
        }
        let imported: Vec<ImportMessage> = cases
            .iter()
            .map(|(input, _)| ImportMessage {
                bytes: input.to_vec(),
                uid: None,
            })
            .collect();
        store.import(&to, &mut imported.into_iter()).unwrap();
        let flags: Vec<bool> = store
            .list_messages(account)
            .unwrap()
            .iter()
            .map(|m| m.utf8_headers)
            .collect();
        let want: Vec<bool> = cases.iter().chain(cases).map(|&(_, w)| w).collect();
        assert_eq!(flags, want);
    }

    #[test]
    fn secrets_are_stored_replaced_together_and_not_debugged() {
        let (_dir, store) = setup();
        let n = name("sec");
        let secrets = AccountSecrets {
            scram_sha256: Some("SCRAM-SHA-256$4096:c2FsdA==$a:b".into()),
            legacy_secret: Some("hunter2".into()),
            cram_md5_states: Some("cd3ba7de".into()),
        };
        store
            .create_account_with(&n, "$argon2id$x", &secrets)
            .unwrap();
        let acct = store.account(&n).unwrap().unwrap();
        assert_eq!(acct.secrets, secrets);
        assert!(!format!("{acct:?}").contains("hunter2"));
        assert!(!format!("{acct:?}").contains("cd3ba7de"));
        let summary = store.account_summary(&n).unwrap();
        assert!(summary.legacy && summary.cram_md5);
        // A new password drops secrets derived from the old one.
        store.set_password(&n, "$argon2id$y").unwrap();
        let acct = store.account(&n).unwrap().unwrap();
        assert_eq!(acct.secrets, AccountSecrets::default());
        let summary = store.account_summary(&n).unwrap();
        assert!(!summary.legacy && !summary.cram_md5);
    }

    #[test]
    fn account_import_is_all_or_nothing() {
        let (_dir, store) = setup();
        let states = |s: &str| AccountSecrets {
            cram_md5_states: Some(s.into()),
            ..AccountSecrets::default()
        };
        store
            .create_account_with(&name("old"), "$argon2id$old", &states("o"))
            .unwrap();
        let batch = |hash: &str| {
            ["new@example.org", "old"].map(|n| AccountImport {
                name: name(n),
                password_hash: hash.into(),
                secrets: states(hash),
            })
        };
        // Refused on the second account: the first one is not created either.
        assert!(matches!(
            store.import_accounts(&batch("!1"), OnExisting::Refuse),
            Err(StoreError::AccountExists(n)) if n == "old"
        ));
        assert!(store.account(&name("new@example.org")).unwrap().is_none());
        assert_eq!(
            store.account(&name("old")).unwrap().unwrap().password_hash,
            "$argon2id$old"
        );
        // Replacing: one created (with its domain), one updated in place.
        let old_id = store.account(&name("old")).unwrap().unwrap().id;
        assert_eq!(
            store
                .import_accounts(&batch("!2"), OnExisting::Replace)
                .unwrap(),
            vec![true, false]
        );
        let old = store.account(&name("old")).unwrap().unwrap();
        assert_eq!((old.id, old.password_hash.as_str()), (old_id, "!2"));
        assert_eq!(old.secrets, states("!2"));
        let new = store.account(&name("new@example.org")).unwrap().unwrap();
        assert_eq!(new.secrets, states("!2"));
        assert_eq!(
            store.list_domains().unwrap(),
            vec![("example.org".into(), 1)]
        );
    }

    #[test]
    fn rehash_replaces_only_the_hash_it_was_given() {
        let (_dir, store) = setup();
        let n = name("rehash");
        let secrets = AccountSecrets {
            scram_sha256: Some("s".into()),
            ..AccountSecrets::default()
        };
        let id = store.create_account_with(&n, "$old", &secrets).unwrap();
        assert!(store.rehash_password(id, "$old", "$new").unwrap());
        let acct = store.account(&n).unwrap().unwrap();
        assert_eq!(
            (acct.password_hash.as_str(), acct.secrets),
            ("$new", secrets)
        );
        // A stale "old" hash (the password was changed meanwhile) changes nothing.
        assert!(!store.rehash_password(id, "$old", "$other").unwrap());
        assert_eq!(store.account(&n).unwrap().unwrap().password_hash, "$new");
    }

    #[test]
    fn domains_list_add_and_delete_with_their_accounts() {
        let (_dir, store) = setup();
        store.create_account(&name("a@example.org"), "$x").unwrap();
        store.create_account(&name("b@example.org"), "$x").unwrap();
        store.create_account(&name("c@other.test"), "$x").unwrap();
        store.add_domain("empty.test").unwrap();
        assert!(matches!(
            store.add_domain("empty.test"),
            Err(StoreError::DomainExists(_))
        ));
        assert_eq!(
            store.list_domains().unwrap(),
            vec![
                ("empty.test".to_string(), 0),
                ("example.org".to_string(), 2),
                ("other.test".to_string(), 1)
            ]
        );
        let id = store.account(&name("a@example.org")).unwrap().unwrap().id;
        let lock = store
            .lock_maildrop(id, "pop3d@elsewhere:1#1", Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            store.delete_domain("example.org"),
            Err(StoreError::Locked { .. })
        ));
        store.release_lock(&lock).unwrap();
        let gone = store.delete_domain("example.org").unwrap();
        assert_eq!(gone, vec![name("a@example.org"), name("b@example.org")]);
        assert!(store.account(&name("b@example.org")).unwrap().is_none());
        assert!(store.account(&name("c@other.test")).unwrap().is_some());
        assert!(matches!(
            store.delete_domain("example.org"),
            Err(StoreError::NoSuchDomain(_))
        ));
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
