//! What both backends share: UID rules, the EXPIRE column encoding, the LOGIN-DELAY token
//! bucket, the streaming of a delivered message into [`CHUNK_SIZE`] slices and the mapping of
//! result rows to the store's types (through [`Columns`]). Only the SQL
//! differs between SQLite and PostgreSQL; the decisions are made here, once.

use std::io::{ErrorKind, Read};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    Account, AccountId, AccountImport, AccountName, AccountPolicy, AccountSecrets, AccountSummary,
    Delivered, Expire, ImportMessage, Ingest, IngestSummary, LockInfo, LoginDelay, MessageMeta,
    NodeInfo, OnExisting, Result, StoreError, CHUNK_SIZE,
};

/// Size of the reads from a delivered message.
const READ_BUF: usize = 64 * 1024;
/// Longest UID, RFC 1939 section 7.
const MAX_UID_OCTETS: usize = 70;
/// `expire_days` value of [`Expire::Never`].
const EXPIRE_NEVER: i64 = -1;

/// Unix seconds of `t` (0 before the epoch).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Counts stored as integers are never negative; clamp defensively instead of panicking.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// RFC 1939 section 7: 1 to 70 octets in 0x21..=0x7E.
pub(crate) fn validate_uid(uid: &str) -> Result<()> {
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

/// The UID of a new message: `uid` when given, valid and not `in_use` in the maildrop (else
/// `InvalidUid` or `DuplicateUid`), or else a `generate`d one. `tx` goes to whichever is called.
pub(crate) fn message_uid<T>(
    tx: T,
    uid: Option<String>,
    in_use: impl FnOnce(T, &str) -> Result<bool>,
    generate: impl FnOnce(T) -> Result<String>,
) -> Result<String> {
    match uid {
        Some(uid) => {
            validate_uid(&uid)?;
            if in_use(tx, &uid)? {
                return Err(StoreError::DuplicateUid(uid));
            }
            Ok(uid)
        }
        None => generate(tx),
    }
}

/// A generated UID: `%08X%08X` of the per-account counter and the UID validity (Dovecot's
/// default UIDL format).
pub(crate) fn generated_uid(n: i64, uidvalidity: i64) -> String {
    format!("{n:08X}{uidvalidity:08X}")
}

/// `expire_days` of an EXPIRE override: NULL = the global setting, -1 = NEVER, else days.
pub(crate) fn expire_to_sql(expire: Option<Expire>) -> Option<i64> {
    expire.map(|e| match e {
        Expire::Never => EXPIRE_NEVER,
        Expire::Days(days) => i64::from(days),
    })
}

/// The EXPIRE override stored as `expire_days`; `Err(value)` for a value out of range.
pub(crate) fn expire_from_sql(value: Option<i64>) -> Result<Option<Expire>, i64> {
    match value {
        None => Ok(None),
        Some(EXPIRE_NEVER) => Ok(Some(Expire::Never)),
        Some(days) => u32::try_from(days)
            .map(|d| Some(Expire::Days(d)))
            .map_err(|_| days),
    }
}

/// Reads a message from `source`, normalises it through [`Ingest`] and hands it to `put` in
/// [`CHUNK_SIZE`] slices (the last one shorter) with their sequence numbers from 0, never
/// holding more than about one slice. Returns the summary and the number of slices. Fails with
/// `TooLarge` as soon as the normalised size passes `max_size`, `InvalidMessage` when it is
/// empty, `Input` when `source` fails; the caller rolls back what `put` stored.
pub(crate) fn ingest_chunks(
    source: &mut dyn Read,
    max_size: u64,
    mut put: impl FnMut(i64, &[u8]) -> Result<()>,
) -> Result<(IngestSummary, i64)> {
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
            put(seq, &pending[..CHUNK_SIZE])?;
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
        put(seq, piece)?;
        seq += 1;
    }
    Ok((summary, seq))
}

/// The body of [`Store::import`](crate::Store::import) inside the caller's transaction: each
/// message in order through `store` (given its UID, if any, and its bytes), with no size limit
/// (the messages are already in memory, and a migration must not drop a large old message).
pub(crate) fn import_each(
    messages: &mut dyn Iterator<Item = ImportMessage>,
    mut store: impl FnMut(Option<String>, &mut dyn Read, u64) -> Result<Delivered>,
) -> Result<Vec<Delivered>> {
    let mut delivered = Vec::new();
    for message in messages {
        let mut bytes = message.bytes.as_slice();
        delivered.push(store(message.uid, &mut bytes, u64::MAX)?);
    }
    Ok(delivered)
}

/// How a backend's transaction finds, creates and updates accounts, for [`import_accounts`].
pub(crate) trait AccountWriter {
    /// The id of the named account, if it exists.
    fn find(&mut self, name: &AccountName) -> Result<Option<AccountId>>;
    fn insert(&mut self, name: &AccountName, hash: &str, secrets: &AccountSecrets) -> Result<()>;
    fn update(&mut self, id: AccountId, hash: &str, secrets: &AccountSecrets) -> Result<()>;
}

/// The body of [`Store::import_accounts`](crate::Store::import_accounts) inside the caller's
/// transaction: `true` for each account created, `false` for each replaced.
pub(crate) fn import_accounts(
    tx: &mut impl AccountWriter,
    accounts: &[AccountImport],
    existing: OnExisting,
) -> Result<Vec<bool>> {
    let mut created = Vec::with_capacity(accounts.len());
    for a in accounts {
        match (tx.find(&a.name)?, existing) {
            (None, _) => {
                tx.insert(&a.name, &a.password_hash, &a.secrets)?;
                created.push(true);
            }
            (Some(id), OnExisting::Replace) => {
                tx.update(id, &a.password_hash, &a.secrets)?;
                created.push(false);
            }
            (Some(_), OnExisting::Refuse) => {
                return Err(StoreError::AccountExists(a.name.to_string()));
            }
        }
    }
    Ok(created)
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

/// What [`login_verdict`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LoginVerdict {
    /// Allowed: store these as `last_login` and `login_tokens`.
    Record {
        last_login: i64,
        tokens: Option<f64>,
    },
    /// Refused; nothing is to change.
    TooSoon(Duration),
}

impl LoginVerdict {
    /// The answer to a login on `account`: when allowed, after `record` stored the new
    /// `last_login` and `tokens`.
    pub(crate) fn answer(
        self,
        account: AccountId,
        record: impl FnOnce(i64, Option<f64>) -> Result<()>,
    ) -> Result<LoginDelay> {
        match self {
            LoginVerdict::Record { last_login, tokens } => {
                record(last_login, tokens)?;
                Ok(LoginDelay::Allowed)
            }
            LoginVerdict::TooSoon(retry_after) => {
                tracing::debug!(account, ?retry_after, "login refused: LOGIN-DELAY");
                Ok(LoginDelay::TooSoon { retry_after })
            }
        }
    }
}

/// The LOGIN-DELAY decision for a login at `now` (fractional unix seconds, read while the
/// account's row is locked) given the stored `last_login` and `login_tokens`. A zero `delay`
/// always allows and keeps the bucket full. See [`LoginBucket`].
pub(crate) fn login_verdict(
    delay: Duration,
    burst: u32,
    last_login: Option<i64>,
    tokens: Option<f64>,
    now: f64,
) -> LoginVerdict {
    if delay.is_zero() {
        return LoginVerdict::Record {
            last_login: now.floor() as i64,
            tokens: None,
        };
    }
    let bucket = LoginBucket {
        capacity: 1.0 + f64::from(burst),
        delay_secs: delay.as_secs_f64(),
    };
    let level = bucket.level(last_login, tokens, now);
    if level < 1.0 - TOKEN_EPSILON {
        return LoginVerdict::TooSoon(bucket.retry_after(level));
    }
    let (second, tokens) = bucket.take(level.max(1.0), now);
    LoginVerdict::Record {
        last_login: second,
        tokens: Some(tokens),
    }
}

/// A node's stored state name as a [`NodeState`](crate::NodeState).
pub(crate) fn node_state(name: &str) -> Result<crate::NodeState> {
    crate::NodeState::parse(name)
        .ok_or_else(|| StoreError::Backend(format!("invalid node state {name:?}").into()))
}

/// After a statement on node `id` that changed `rows` rows: `NoSuchNode` when none, else a
/// log line saying `what` happened.
pub(crate) fn node_changed(id: &str, rows: u64, what: &'static str) -> Result<()> {
    if rows == 0 {
        return Err(StoreError::NoSuchNode(id.to_string()));
    }
    tracing::info!(node = id, "{what}");
    Ok(())
}

/// A value both backends read from a result column: what `rusqlite` and (with the `postgres`
/// feature) `postgres` can both convert.
#[cfg(feature = "postgres")]
pub(crate) trait ColumnValue:
    rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>
{
}
#[cfg(feature = "postgres")]
impl<T: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>> ColumnValue for T {}

/// A value both backends read from a result column.
#[cfg(not(feature = "postgres"))]
pub(crate) trait ColumnValue: rusqlite::types::FromSql {}
#[cfg(not(feature = "postgres"))]
impl<T: rusqlite::types::FromSql> ColumnValue for T {}

/// A result row of either backend, so that the rows both read the same way are mapped to the
/// store's types once, here. Column indexes count from 0; errors are the backend's, mapped as
/// all its errors are.
pub(crate) trait Columns {
    /// The value of column `idx`.
    fn column<T: ColumnValue>(&self, idx: usize) -> Result<T>;
    /// The error for the integer `value` of column `idx` (named `name`) that is out of range.
    fn out_of_range(&self, idx: usize, name: &str, value: i64) -> StoreError;
}

impl Columns for rusqlite::Row<'_> {
    fn column<T: ColumnValue>(&self, idx: usize) -> Result<T> {
        Ok(self.get(idx)?)
    }

    fn out_of_range(&self, idx: usize, _name: &str, value: i64) -> StoreError {
        rusqlite::Error::IntegralValueOutOfRange(idx, value).into()
    }
}

#[cfg(feature = "postgres")]
impl Columns for postgres::Row {
    fn column<T: ColumnValue>(&self, idx: usize) -> Result<T> {
        Ok(self.try_get(idx)?)
    }

    fn out_of_range(&self, _idx: usize, name: &str, value: i64) -> StoreError {
        StoreError::Backend(format!("{name} {value} out of range").into())
    }
}

/// An `accounts` row as both backends' account look-up reads it: id, password hash,
/// created_at, uidvalidity, the policy (columns 4 and 5) and the secrets (6 to 8).
pub(crate) struct AccountRow {
    pub(crate) id: AccountId,
    pub(crate) password_hash: String,
    pub(crate) created_at: i64,
    pub(crate) uidvalidity: i64,
    pub(crate) policy: AccountPolicy,
    pub(crate) secrets: AccountSecrets,
}

impl AccountRow {
    /// The account named `name` that this row holds.
    pub(crate) fn into_account(self, name: &AccountName) -> Account {
        Account {
            id: self.id,
            name: name.clone(),
            password_hash: self.password_hash,
            secrets: self.secrets,
            created_at: self.created_at,
            policy: self.policy,
        }
    }
}

pub(crate) fn account_row(row: &impl Columns) -> Result<AccountRow> {
    Ok(AccountRow {
        id: row.column(0)?,
        password_hash: row.column(1)?,
        created_at: row.column(2)?,
        uidvalidity: row.column(3)?,
        policy: policy_from_row(row, 4)?,
        secrets: AccountSecrets {
            scram_sha256: row.column(6)?,
            legacy_secret: row.column(7)?,
            cram_md5_states: row.column(8)?,
        },
    })
}

/// The policy in columns `first` (`login_delay`) and `first + 1` (`expire_days`).
pub(crate) fn policy_from_row(row: &impl Columns, first: usize) -> Result<AccountPolicy> {
    let login_delay: Option<i64> = row.column(first)?;
    let login_delay = login_delay
        .map(|d| u32::try_from(d).map_err(|_| row.out_of_range(first, "login_delay", d)))
        .transpose()?;
    let expire = expire_from_sql(row.column(first + 1)?)
        .map_err(|days| row.out_of_range(first + 1, "expire_days", days))?;
    Ok(AccountPolicy {
        login_delay,
        expire,
    })
}

/// An account summary row: local part, domain, message count, octets, lock holder,
/// acquired_at, expires_at, the policy (7 and 8), last_login, legacy and cram_md5.
pub(crate) fn summary_row(row: &impl Columns) -> Result<AccountSummary> {
    let holder: Option<String> = row.column(4)?;
    let lock = match holder {
        Some(holder) => Some(LockInfo {
            holder,
            acquired_at: row.column(5)?,
            expires_at: row.column(6)?,
        }),
        None => None,
    };
    Ok(AccountSummary {
        name: AccountName::from_stored(row.column(0)?, row.column(1)?),
        messages: to_u64(row.column(2)?),
        octets: to_u64(row.column(3)?),
        lock,
        policy: policy_from_row(row, 7)?,
        last_login: row.column(9)?,
        legacy: row.column(10)?,
        cram_md5: row.column(11)?,
    })
}

/// A `messages` row: id, uid, size, header_octets, body_lines, utf8_headers.
pub(crate) fn message_meta(row: &impl Columns) -> Result<MessageMeta> {
    Ok(MessageMeta {
        id: row.column(0)?,
        uid: row.column(1)?,
        size: to_u64(row.column(2)?),
        header_octets: to_u64(row.column(3)?),
        body_lines: to_u64(row.column(4)?),
        utf8_headers: row.column(5)?,
    })
}

/// A `nodes` row: id, address, state, sessions and a heartbeat column that `age_millis`
/// turns into the milliseconds since the last heartbeat.
pub(crate) fn node_info(
    row: &impl Columns,
    age_millis: impl FnOnce(i64) -> i64,
) -> Result<NodeInfo> {
    let state: String = row.column(2)?;
    Ok(NodeInfo {
        id: row.column(0)?,
        address: row.column(1)?,
        state: node_state(&state)?,
        sessions: to_u64(row.column(3)?),
        heartbeat_age: Duration::from_millis(to_u64(age_millis(row.column(4)?))),
    })
}
