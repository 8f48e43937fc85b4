//! A re-import stores nothing twice (issue 19): before an mbox or Maildir import, the target
//! maildrop's messages are hashed as stored, and a message to import whose normalised bytes
//! equal one of them (a hash hit is confirmed by comparing the bytes) is skipped, and counted.
//! Each stored message matches at most one incoming message, so a mailbox that holds the same
//! message twice keeps both copies; a stored message with the incoming message's UID is
//! preferred. Nothing here decides UIDs: what passes goes to the store as before (a recorded
//! UID that is taken still fails the import, a claimed one gives way).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use anyhow::Context as _;
use store::{AccountName, ImportMessage, MessageMeta, Store, StoreError};

/// The messages a maildrop holds, by a hash of their stored bytes.
pub struct Present<'s> {
    store: &'s dyn Store,
    by_hash: HashMap<u64, Vec<MessageMeta>>,
    /// Messages skipped because the maildrop holds them already.
    pub skipped: u64,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl<'s> Present<'s> {
    /// Reads (and hashes) every message of `name`'s maildrop once.
    pub fn of(store: &'s dyn Store, name: &AccountName) -> anyhow::Result<Present<'s>> {
        let account = store
            .account(name)
            .context("looking the account up")?
            .ok_or_else(|| StoreError::NoSuchAccount(name.to_string()))?;
        let mut present = Present {
            store,
            by_hash: HashMap::new(),
            skipped: 0,
        };
        for meta in store
            .list_messages(account.id)
            .context("listing the maildrop")?
        {
            let bytes = present.stored(&meta)?;
            present
                .by_hash
                .entry(digest(&bytes))
                .or_default()
                .push(meta);
        }
        Ok(present)
    }

    /// The bytes of one stored message, as normalised (out of wire form).
    fn stored(&self, meta: &MessageMeta) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(meta.size as usize);
        for index in 0.. {
            match self
                .store
                .read_chunk(meta.id, index)
                .context("reading a stored message")?
            {
                Some(chunk) => bytes.extend_from_slice(&chunk),
                None => break,
            }
        }
        Ok(match meta.wire {
            true => store::from_wire(&bytes),
            false => bytes,
        })
    }

    /// True when the maildrop holds `message` already (its stored form); that stored message
    /// is then used up.
    fn holds(&mut self, message: &ImportMessage) -> anyhow::Result<bool> {
        let (normalised, _) = store::normalise(&message.bytes);
        let Some(candidates) = self.by_hash.get(&digest(&normalised)) else {
            return Ok(false);
        };
        // The one with the same UID first, then the others, in maildrop order.
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by_key(|&i| Some(&candidates[i].uid) != message.uid.as_ref());
        for i in order {
            let meta = &candidates[i];
            if meta.size == normalised.len() as u64 && self.stored(meta)? == normalised {
                if let Some(list) = self.by_hash.get_mut(&digest(&normalised)) {
                    list.remove(i);
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `source` without the messages the maildrop holds already.
    pub fn filter<'a>(
        &'a mut self,
        source: &'a mut dyn Iterator<Item = anyhow::Result<ImportMessage>>,
    ) -> impl Iterator<Item = anyhow::Result<ImportMessage>> + use<'a, 's> {
        source.filter_map(move |item| match item {
            Ok(message) => match self.holds(&message) {
                Ok(true) => {
                    self.skipped += 1;
                    None
                }
                Ok(false) => Some(Ok(message)),
                Err(e) => Some(Err(e)),
            },
            Err(e) => Some(Err(e)),
        })
    }
}
