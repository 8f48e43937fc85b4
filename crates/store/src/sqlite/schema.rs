//! The SQLite schema and its migrations (`PRAGMA user_version` counts those applied).

use rusqlite::{Connection, TransactionBehavior};
use tracing::info;

use crate::{Result, StoreError};

/// Schema migrations; `PRAGMA user_version` counts those applied. Append, never edit.
pub(super) const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
];

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

/// Schema v6: quotas and the last login of every account.
///
/// - `quota_messages`, `quota_octets` of `accounts` (the account's) and `domains` (the default
///   of its accounts): NULL = the next level's, -1 = unlimited, else the limit; the global
///   default is in `meta` (-1 = unlimited), in the store so that every way in applies it.
/// - `login_at`, `login_peer`, `login_mechanism`: the last successful login, written in
///   batches by pop3d (`Store::record_logins`); apart from LOGIN-DELAY's `last_login`, whose
///   token bucket they must not move.
/// - `messages_use`: a covering index for the count and sum of a maildrop's sizes, which a
///   delivery with a quota reads: an index scan of about 3 ms for 50,000 messages instead of
///   14 ms over the table rows.
const SCHEMA_V6: &str = "
ALTER TABLE accounts ADD COLUMN quota_messages INTEGER NULL CHECK (quota_messages >= -1);
ALTER TABLE accounts ADD COLUMN quota_octets INTEGER NULL CHECK (quota_octets >= -1);
ALTER TABLE domains ADD COLUMN quota_messages INTEGER NULL CHECK (quota_messages >= -1);
ALTER TABLE domains ADD COLUMN quota_octets INTEGER NULL CHECK (quota_octets >= -1);
INSERT INTO meta (key, value) VALUES ('quota_messages', -1), ('quota_octets', -1);
ALTER TABLE accounts ADD COLUMN login_at INTEGER NULL;
ALTER TABLE accounts ADD COLUMN login_peer TEXT NULL;
ALTER TABLE accounts ADD COLUMN login_mechanism TEXT NULL;
CREATE INDEX messages_use ON messages (account_id, size);
";

/// Schema v7: each account's message count and octets, kept by triggers on `messages` (so
/// every way a message comes or goes keeps them, cascades included), counted once here for
/// the messages from before. A login answers from them instead of reading every row (issue
/// 18: PASS on 100,000 messages).
const SCHEMA_V7: &str = "
ALTER TABLE accounts ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN message_octets INTEGER NOT NULL DEFAULT 0;
UPDATE accounts SET
    message_count = (SELECT count(*) FROM messages m WHERE m.account_id = accounts.id),
    message_octets = (SELECT coalesce(sum(m.size), 0) FROM messages m
                      WHERE m.account_id = accounts.id);
CREATE TRIGGER messages_counted_insert AFTER INSERT ON messages BEGIN
    UPDATE accounts SET message_count = message_count + 1,
                        message_octets = message_octets + NEW.size
    WHERE id = NEW.account_id;
END;
CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages BEGIN
    UPDATE accounts SET message_count = message_count - 1,
                        message_octets = message_octets - OLD.size
    WHERE id = OLD.account_id;
END;
CREATE TRIGGER messages_counted_update AFTER UPDATE OF size, account_id ON messages BEGIN
    UPDATE accounts SET message_count = message_count - 1,
                        message_octets = message_octets - OLD.size
    WHERE id = OLD.account_id;
    UPDATE accounts SET message_count = message_count + 1,
                        message_octets = message_octets + NEW.size
    WHERE id = NEW.account_id;
END;
";

/// Schema v8: messages stored in wire form (issue 18). `messages.wire` is 1 for a message
/// whose chunks hold it byte-stuffed as RETR sends it (RFC 1939 section 3), with its
/// `header_octets` counting the stored header section and a last chunk always shorter than a
/// full one (empty if need be); every message delivered from now on. Messages from before keep
/// 0 and their plain form, stuffed as they are sent: nothing is rewritten.
const SCHEMA_V8: &str = "
ALTER TABLE messages ADD COLUMN wire INTEGER NOT NULL DEFAULT 0 CHECK (wire IN (0, 1));
";

/// Applies the migrations past `PRAGMA user_version`, all in one transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
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
