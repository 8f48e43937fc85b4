//! The PostgreSQL schema and its migrations (`schema_version.version` counts those applied),
//! run under an advisory lock so that nodes starting together migrate once.

use tracing::info;

use super::pool::Tx;
use crate::{Result, StoreError};

/// Schema migrations; `schema_version.version` counts those applied. Append, never edit.
pub(super) const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

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

/// SQLite's v6: quotas (NULL = the next level's, -1 = unlimited; the global default in
/// `meta`), the last login as pop3d records it in batches, and the covering index for a
/// maildrop's count and octets that a delivery with a quota reads.
const SCHEMA_V3: &str = "
ALTER TABLE accounts ADD COLUMN quota_messages bigint NULL CHECK (quota_messages >= -1);
ALTER TABLE accounts ADD COLUMN quota_octets bigint NULL CHECK (quota_octets >= -1);
ALTER TABLE domains ADD COLUMN quota_messages bigint NULL CHECK (quota_messages >= -1);
ALTER TABLE domains ADD COLUMN quota_octets bigint NULL CHECK (quota_octets >= -1);
INSERT INTO meta (key, value) VALUES ('quota_messages', -1), ('quota_octets', -1);
ALTER TABLE accounts ADD COLUMN login_at bigint NULL;
ALTER TABLE accounts ADD COLUMN login_peer text NULL;
ALTER TABLE accounts ADD COLUMN login_mechanism text NULL;
CREATE INDEX messages_use ON messages (account_id, size);
";

/// SQLite's v7: each account's message count and octets, kept by a trigger on `messages`
/// (in the transaction that inserts, resizes or deletes the row, so a statement reading them
/// sees them agree with the rows), counted once here for the messages from before.
const SCHEMA_V4: &str = "
ALTER TABLE accounts ADD COLUMN message_count bigint NOT NULL DEFAULT 0,
                     ADD COLUMN message_octets bigint NOT NULL DEFAULT 0;
UPDATE accounts a SET message_count = s.n, message_octets = s.o
FROM (SELECT account_id, count(*) AS n, sum(size) AS o FROM messages GROUP BY account_id) s
WHERE s.account_id = a.id;
CREATE FUNCTION messages_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE accounts SET message_count = message_count - 1,
                            message_octets = message_octets - OLD.size
        WHERE id = OLD.account_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE accounts SET message_count = message_count + 1,
                            message_octets = message_octets + NEW.size
        WHERE id = NEW.account_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_counted AFTER INSERT OR DELETE OR UPDATE OF size, account_id
ON messages FOR EACH ROW EXECUTE FUNCTION messages_counted();
";

/// Schema v5: messages stored in wire form (issue 18). `messages.wire` is true for a message
/// whose chunks hold it byte-stuffed as RETR sends it (RFC 1939 section 3), with its
/// `header_octets` counting the stored header section and a last chunk always shorter than a
/// full one (empty if need be); every message delivered from now on. Messages from before keep
/// false and their plain form, stuffed as they are sent: nothing is rewritten.
const SCHEMA_V5: &str = "
ALTER TABLE messages ADD COLUMN wire boolean NOT NULL DEFAULT false;
";

/// Applies the migrations past `schema_version`, all in one transaction, under an advisory
/// lock so that nodes starting together migrate once.
pub(super) fn migrate(tx: &mut Tx<'_>) -> Result<()> {
    tx.batch("SELECT pg_advisory_xact_lock(7090155061245003)")?;
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")?;
    let found = tx.query("SELECT version::bigint FROM schema_version", &[])?;
    let found: i64 = match found.first() {
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
