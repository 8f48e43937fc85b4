//! A session's view of its locked maildrop: message numbers 1..n fixed at login, and the
//! deletion marks that UPDATE applies.

use store::{MessageId, MessageMeta};

/// Why a message number cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberError {
    /// 0, or larger than the number of messages at login.
    NoSuchMessage,
    /// Marked deleted in this session (RFC 1939 section 5: may not be referred to).
    Deleted,
}

/// Messages listed at login, in delivery order, and which of them are marked deleted.
#[derive(Debug)]
pub struct Maildrop {
    messages: Vec<MessageMeta>,
    deleted: Vec<bool>,
    /// Fully retrieved (RETR) in this session; recorded at UPDATE for EXPIRE.
    retrieved: Vec<bool>,
    deleted_count: usize,
    deleted_octets: u64,
}

impl Maildrop {
    pub fn new(messages: Vec<MessageMeta>) -> Maildrop {
        let deleted = vec![false; messages.len()];
        Maildrop {
            retrieved: deleted.clone(),
            messages,
            deleted,
            deleted_count: 0,
            deleted_octets: 0,
        }
    }

    /// The message with number `n` (1-based) unless it is out of range or marked deleted.
    pub fn get(&self, n: u32) -> Result<&MessageMeta, NumberError> {
        let i = (n as usize)
            .checked_sub(1)
            .filter(|&i| i < self.messages.len())
            .ok_or(NumberError::NoSuchMessage)?;
        if self.deleted[i] {
            return Err(NumberError::Deleted);
        }
        Ok(&self.messages[i])
    }

    /// Marks message `n` deleted.
    pub fn delete(&mut self, n: u32) -> Result<(), NumberError> {
        let size = self.get(n)?.size;
        self.deleted[n as usize - 1] = true;
        self.deleted_count += 1;
        self.deleted_octets += size;
        Ok(())
    }

    /// Number of messages listed at login, deleted ones included.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Records that message `n` was retrieved whole.
    pub fn mark_retrieved(&mut self, n: u32) {
        if self.get(n).is_ok() {
            self.retrieved[n as usize - 1] = true;
        }
    }

    /// Ids of the messages retrieved in this session and not marked deleted.
    pub fn retrieved(&self) -> Vec<MessageId> {
        self.messages
            .iter()
            .zip(self.retrieved.iter().zip(&self.deleted))
            .filter(|(_, (&r, &d))| r && !d)
            .map(|(m, _)| m.id)
            .collect()
    }

    /// Unmarks every message (RSET).
    pub fn reset(&mut self) {
        self.deleted.fill(false);
        self.deleted_count = 0;
        self.deleted_octets = 0;
    }

    /// Count and octets of the messages not marked deleted (STAT).
    pub fn stat(&self) -> (usize, u64) {
        let total: u64 = self.messages.iter().map(|m| m.size).sum();
        (
            self.messages.len() - self.deleted_count,
            total - self.deleted_octets,
        )
    }

    /// Messages not marked deleted, with their numbers.
    pub fn live(&self) -> impl Iterator<Item = (u32, &MessageMeta)> {
        self.messages
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, &d))| !d)
            .map(|(i, (m, _))| (i as u32 + 1, m))
    }

    /// Ids of the messages marked deleted, for UPDATE.
    pub fn marked(&self) -> Vec<MessageId> {
        self.messages
            .iter()
            .zip(&self.deleted)
            .filter(|(_, &d)| d)
            .map(|(m, _)| m.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: i64, size: u64) -> MessageMeta {
        MessageMeta {
            id,
            uid: format!("u{id}"),
            size,
            header_octets: 0,
            body_lines: 0,
            utf8_headers: false,
        }
    }

    #[test]
    fn numbers_deletion_and_reset() {
        // RFC 1939 section 5: deleted messages are not counted, listed or usable; RSET
        // unmarks them.
        let mut m = Maildrop::new(vec![meta(10, 100), meta(11, 200), meta(12, 300)]);
        assert_eq!(m.stat(), (3, 600));
        assert_eq!(m.get(0), Err(NumberError::NoSuchMessage));
        assert_eq!(m.get(4), Err(NumberError::NoSuchMessage));
        assert_eq!(m.get(u32::MAX), Err(NumberError::NoSuchMessage));
        assert_eq!(m.get(2).map(|x| x.id), Ok(11));
        assert_eq!(m.delete(2), Ok(()));
        assert_eq!(m.delete(2), Err(NumberError::Deleted));
        assert_eq!(m.get(2), Err(NumberError::Deleted));
        assert_eq!(m.stat(), (2, 400));
        assert_eq!(m.live().map(|(n, _)| n).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(m.marked(), vec![11]);
        m.mark_retrieved(1);
        m.mark_retrieved(2);
        assert_eq!(m.retrieved(), vec![10]);
        m.reset();
        assert_eq!(m.stat(), (3, 600));
        assert!(m.marked().is_empty());
    }
}
