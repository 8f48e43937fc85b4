//! Deliveries and imports (a message streamed into chunks), listings, chunk reads and the
//! fenced writes of the UPDATE state and EXPIRE, for both backends.

use std::io::Read;
use std::time::Duration;

use tracing::{debug, info};

use super::locks::fence;
use super::rows::{message_meta, MESSAGE_COLUMNS};
use super::{accounts, quota, RowLock, Sql};
use crate::common::{generated_uid, import_each, ingest_chunks, message_uid, to_i64};
use crate::{
    AccountId, AccountName, Delivered, ImportMessage, MaildropLock, MessageId, MessageMeta,
    QuotaCheck, Result, StoreError,
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

pub fn read_chunk<S: Sql>(tx: &mut S, message: MessageId, index: u32) -> Result<Option<Vec<u8>>> {
    tx.value(
        "SELECT data FROM chunks WHERE message_id = $1 AND seq = $2",
        &[&message, &i64::from(index)],
    )
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
