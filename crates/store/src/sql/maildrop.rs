//! Deliveries and imports (a message streamed into chunks), listings, chunk reads and the
//! fenced writes of the UPDATE state and EXPIRE, for both backends.

use std::io::Read;
use std::time::Duration;

use tracing::{debug, info};

use super::locks::fence;
use super::rows::{message_meta, Columns, MESSAGE_COLUMNS};
use super::{accounts, quota, RowLock, Sql};
use crate::common::{generated_uid, import_each, ingest_chunks, message_uid, to_i64, to_u64};
use crate::{
    AccountId, AccountName, Delivered, ImportMessage, Listing, MaildropLock, MaildropStat,
    MessageId, MessageMeta, QuotaCheck, Result, StoreError,
};

fn uid_in_use<S: Sql>(tx: &mut S, account: AccountId, uid: &str) -> Result<bool> {
    let found: Option<i64> = tx.value(
        "SELECT id FROM messages WHERE account_id = $1 AND uid = $2",
        &[&account, &uid],
    )?;
    Ok(found.is_some())
}

/// Takes the account's next UID, skipping any that an import already used.
fn generate_uid<S: Sql>(tx: &mut S, account: AccountId, uidvalidity: i64) -> Result<String> {
    loop {
        let n: i64 = tx
            .value(
                "UPDATE accounts SET next_uid = next_uid + 1 WHERE id = $1 RETURNING next_uid - 1",
                &[&account],
            )?
            .ok_or_else(|| StoreError::NoSuchAccount(format!("#{account}")))?;
        let uid = generated_uid(n, uidvalidity);
        if !uid_in_use(tx, account, &uid)? {
            return Ok(uid);
        }
    }
}

/// Stores one message inside the caller's transaction (which holds the account row),
/// streaming it into [`CHUNK_SIZE`](crate::CHUNK_SIZE) chunks. On error the caller rolls back.
fn store_message<S: Sql>(
    tx: &mut S,
    account: AccountId,
    uidvalidity: i64,
    uid: Option<String>,
    uid_claimed: bool,
    source: &mut dyn Read,
    max_size: u64,
) -> Result<Delivered> {
    let (uid, claim_refused) = message_uid(
        tx,
        uid,
        uid_claimed,
        |tx, uid| uid_in_use(tx, account, uid),
        |tx| generate_uid(tx, account, uidvalidity),
    )?;
    // The row comes first (chunks reference it); its counts are filled in at the end.
    let sql = format!(
        "INSERT INTO messages (account_id, uid, size, header_octets, body_lines, chunks,
                               delivered_at)
         VALUES ($1, $2, 0, 0, 0, 0, {}) RETURNING id",
        S::NOW
    );
    let id: i64 = tx
        .value(&sql, &[&account, &uid])?
        .ok_or_else(|| StoreError::Backend("an insert returned no id".into()))?;
    let (summary, chunks) = ingest_chunks(source, max_size, |seq, piece| {
        tx.execute(
            "INSERT INTO chunks (message_id, seq, data) VALUES ($1, $2, $3)",
            &[&id, &seq, &piece],
        )?;
        Ok(())
    })?;
    tx.execute(
        "UPDATE messages SET size = $2, header_octets = $3, body_lines = $4, chunks = $5,
                             utf8_headers = $6, wire = true
         WHERE id = $1",
        &[
            &id,
            &to_i64(summary.size),
            &to_i64(summary.stored_header_octets),
            &to_i64(summary.body_lines),
            &chunks,
            &summary.utf8_headers,
        ],
    )?;
    Ok(Delivered {
        id,
        uid,
        size: summary.size,
        claim_refused,
    })
}

pub fn deliver<S: Sql>(
    tx: &mut S,
    name: &AccountName,
    message: &mut dyn Read,
    max_size: u64,
) -> Result<Delivered> {
    let (account, uidvalidity) = accounts::id(tx, name, RowLock::Write)?;
    // The account row is locked from here: the use read now stays true until the commit.
    let usage = quota::usage(tx, account)?;
    if let Some(usage) = &usage {
        usage.check_room(&name.to_string())?;
    }
    let delivered = store_message(tx, account, uidvalidity, None, false, message, max_size)?;
    if let Some(usage) = &usage {
        usage.check_stored(&name.to_string(), std::slice::from_ref(&delivered))?;
    }
    debug!(account, id = delivered.id, uid = %delivered.uid, size = delivered.size,
        "message delivered");
    Ok(delivered)
}

pub fn import<S: Sql>(
    tx: &mut S,
    name: &AccountName,
    messages: &mut dyn Iterator<Item = ImportMessage>,
    check: QuotaCheck,
) -> Result<Vec<Delivered>> {
    let (account, uidvalidity) = accounts::id(tx, name, RowLock::Write)?;
    let usage = match check {
        QuotaCheck::Enforce => quota::usage(tx, account)?,
        QuotaCheck::Ignore => None,
    };
    let delivered = import_each(messages, |uid, claimed, bytes, max_size| {
        store_message(tx, account, uidvalidity, uid, claimed, bytes, max_size)
    })?;
    if let Some(usage) = &usage {
        usage.check_stored(&name.to_string(), &delivered)?;
    }
    info!(account, count = delivered.len(), "messages imported");
    Ok(delivered)
}

/// The messages of a maildrop in delivery order.
pub fn list<S: Sql>(tx: &mut S, account: AccountId) -> Result<Vec<MessageMeta>> {
    accounts::ensure_exists(tx, account)?;
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE account_id = $1 ORDER BY id");
    tx.rows(&sql, &[&account], |row| message_meta(row))
}

/// Count, octets and highest id of a maildrop's messages in one statement: the count and
/// octets the schema's triggers keep on the account row, and the highest id from the
/// `messages_account` index, so it reads no message rows. `NoSuchAccount` without the account.
pub fn stat<S: Sql>(tx: &mut S, account: AccountId) -> Result<MaildropStat> {
    let found = tx.row(
        "SELECT a.message_count, a.message_octets,
                (SELECT max(m.id) FROM messages m WHERE m.account_id = a.id)
         FROM accounts a WHERE a.id = $1",
        &[&account],
        |row| {
            Ok(MaildropStat {
                messages: to_u64(row.column(0)?),
                octets: to_u64(row.column(1)?),
                last: row.column(2)?,
            })
        },
    )?;
    found.ok_or_else(|| StoreError::NoSuchAccount(format!("#{account}")))
}

/// The messages of `stat`'s snapshot (ids up to `stat.last`) in delivery order, compactly:
/// UIDs are copied from the row straight into the listing's one string.
pub fn list_snapshot<S: Sql>(
    tx: &mut S,
    account: AccountId,
    stat: &MaildropStat,
) -> Result<Listing> {
    let capacity = usize::try_from(stat.messages).unwrap_or(0);
    let mut listing = Listing::with_capacity(capacity);
    let Some(last) = stat.last else {
        return Ok(listing);
    };
    tx.rows(
        "SELECT id, size, utf8_headers, wire, uid FROM messages
         WHERE account_id = $1 AND id <= $2 ORDER BY id",
        &[&account, &last],
        |row| {
            let (id, size) = (row.column(0)?, to_u64(row.column(1)?));
            let (utf8, wire) = (row.column(2)?, row.column(3)?);
            row.with_str(4, |uid| listing.push(id, size, uid, utf8, wire))?
                .map_err(|_| StoreError::Backend("a maildrop's UIDs pass 4 GiB".into()))
        },
    )?;
    listing.shrink_to_fit();
    Ok(listing)
}

/// The header octets of one message of `account` (TOP), `None` when it is gone.
pub fn header_octets<S: Sql>(
    tx: &mut S,
    account: AccountId,
    message: MessageId,
) -> Result<Option<u64>> {
    let octets: Option<i64> = tx.value(
        "SELECT header_octets FROM messages WHERE id = $1 AND account_id = $2",
        &[&message, &account],
    )?;
    Ok(octets.map(to_u64))
}

pub fn read_chunk<S: Sql>(tx: &mut S, message: MessageId, index: u32) -> Result<Option<Vec<u8>>> {
    tx.value(
        "SELECT data FROM chunks WHERE message_id = $1 AND seq = $2",
        &[&message, &i64::from(index)],
    )
}

/// Up to `count` chunks of a message from chunk `first` on, in order, in one statement; the
/// run stops at the first missing chunk, so what is returned is always contiguous.
pub fn read_chunks<S: Sql>(
    tx: &mut S,
    message: MessageId,
    first: u32,
    count: u32,
) -> Result<Vec<Vec<u8>>> {
    let (first, end) = (i64::from(first), i64::from(first) + i64::from(count));
    let mut chunks = Vec::new();
    tx.rows(
        "SELECT seq, data FROM chunks WHERE message_id = $1 AND seq >= $2 AND seq < $3
         ORDER BY seq",
        &[&message, &first, &end],
        |row| {
            let seq: i64 = row.column(0)?;
            if seq == first + chunks.len() as i64 {
                chunks.push(row.column(1)?);
            }
            Ok(())
        },
    )?;
    Ok(chunks)
}

/// Chunk 0 of each of `messages` that belongs to `account`, in one statement on PostgreSQL
/// (an array of ids); `(id, chunk)` pairs in no particular order.
pub fn read_first_chunks<S: Sql>(
    tx: &mut S,
    account: AccountId,
    messages: &[MessageId],
) -> Result<Vec<(MessageId, Vec<u8>)>> {
    let sql = format!(
        "SELECT c.message_id, c.data FROM chunks c JOIN messages m ON m.id = c.message_id
         WHERE m.{} AND m.account_id = $2 AND c.seq = 0",
        S::IS_ID
    );
    tx.rows_for_ids(&sql, messages, account, |row| {
        Ok((row.column(0)?, row.column(1)?))
    })
}

/// The UPDATE state, fenced by `lock`.
pub fn commit_update<S: Sql>(
    tx: &mut S,
    lock: &MaildropLock,
    deleted: &[MessageId],
    retrieved: &[MessageId],
) -> Result<()> {
    fence(tx, lock)?;
    // Ids of other maildrops are ignored; a first retrieval time is never moved; chunks go by
    // ON DELETE CASCADE.
    let mark = format!(
        "UPDATE messages SET retrieved_at = {}
         WHERE {} AND account_id = $2 AND retrieved_at IS NULL",
        S::NOW,
        S::IS_ID
    );
    let marked = tx.execute_for_ids(&mark, retrieved, lock.account)?;
    let delete = format!(
        "DELETE FROM messages WHERE {} AND account_id = $2",
        S::IS_ID
    );
    let removed = tx.execute_for_ids(&delete, deleted, lock.account)?;
    debug!(
        account = lock.account,
        marked,
        deleted = removed,
        "update committed"
    );
    Ok(())
}

/// EXPIRE: deletes the messages first retrieved at least `retention` ago, fenced by `lock`.
pub fn expire<S: Sql>(tx: &mut S, lock: &MaildropLock, retention: Duration) -> Result<u64> {
    fence(tx, lock)?;
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    // Whole seconds: a message first retrieved during second R (stored as R) goes once
    // R <= now - retention. A retention reaching before 1970 expires nothing.
    let sql = format!(
        "DELETE FROM messages
         WHERE account_id = $1 AND retrieved_at IS NOT NULL
           AND retrieved_at <= {now} - $2 AND {now} >= $2",
        now = S::NOW
    );
    let expired = tx.execute(&sql, &[&lock.account, &retention])?;
    if expired > 0 {
        debug!(
            account = lock.account,
            expired, "retrieved messages expired"
        );
    }
    Ok(expired)
}
