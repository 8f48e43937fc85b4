//! The store's decisions that involve no SQL: UID rules, the EXPIRE column encoding, the
//! LOGIN-DELAY token bucket and the streaming of a delivered message into [`CHUNK_SIZE`]
//! slices. The SQL both backends run is in [`crate::sql`].

use std::io::{ErrorKind, Read};
use std::time::Duration;

use crate::{
    AccountId, Delivered, Expire, ImportMessage, Ingest, IngestSummary, LoginDelay, Result,
    StoreError, CHUNK_SIZE,
};

/// Size of the reads from a delivered message.
const READ_BUF: usize = 64 * 1024;
/// Longest UID, RFC 1939 section 7.
const MAX_UID_OCTETS: usize = 70;
/// `expire_days` value of [`Expire::Never`].
const EXPIRE_NEVER: i64 = -1;

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
/// `InvalidUid` or `DuplicateUid`), or else a `generate`d one. A `claimed` UID that is invalid
/// or in use is replaced by a generated one instead of failing; the flag returned says so.
pub(crate) fn message_uid<T: ?Sized>(
    tx: &mut T,
    uid: Option<String>,
    claimed: bool,
    in_use: impl FnOnce(&mut T, &str) -> Result<bool>,
    generate: impl FnOnce(&mut T) -> Result<String>,
) -> Result<(String, bool)> {
    let Some(uid) = uid else {
        return Ok((generate(tx)?, false));
    };
    let refusal = match validate_uid(&uid) {
        Err(e) => Some(e),
        Ok(()) if in_use(tx, &uid)? => Some(StoreError::DuplicateUid(uid.clone())),
        Ok(()) => None,
    };
    match refusal {
        None => Ok((uid, false)),
        Some(_) if claimed => Ok((generate(tx)?, true)),
        Some(e) => Err(e),
    }
}

/// A generated UID: `%08X%08X` of the per-account counter and the UID validity (Dovecot's
/// default UIDL format). An imported UID may take this form too (Dovecot's own UIDLs do, and a
/// sender can write any `X-UIDL:`): generation skips every UID already in the maildrop, so a
/// later delivery never collides with one.
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

/// Reads a message from `source`, normalises it into wire form through [`Ingest::wire`] and
/// hands it to `put` in [`CHUNK_SIZE`] slices with their sequence numbers from 0, never
/// holding more than about one slice. The last slice is always shorter than [`CHUNK_SIZE`],
/// empty when the stored octets fill the slices before it exactly: so a reader knows the
/// message ended, and a full slice followed by none means one is missing. Returns the summary and the number of slices. Fails with
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
    let mut ingest = Ingest::wire();
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
    if pending.len() % CHUNK_SIZE == 0 {
        put(seq, &[])?;
        seq += 1;
    }
    Ok((summary, seq))
}

/// The body of [`Store::import`](crate::Store::import) inside the caller's transaction: each
/// message in order through `store` (given its UID, if any, and its bytes), with no size limit
/// (the messages are already in memory, and a migration must not drop a large old message).
pub(crate) fn import_each(
    messages: &mut dyn Iterator<Item = ImportMessage>,
    mut store: impl FnMut(Option<String>, bool, &mut dyn Read, u64) -> Result<Delivered>,
) -> Result<Vec<Delivered>> {
    let mut delivered = Vec::new();
    for message in messages {
        let mut bytes = message.bytes.as_slice();
        delivered.push(store(
            message.uid,
            message.uid_claimed,
            &mut bytes,
            u64::MAX,
        )?);
    }
    Ok(delivered)
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
