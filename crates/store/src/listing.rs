//! What a session needs to answer STAT at login ([`MaildropStat`]) and the compact listing it
//! loads when a command first needs the messages themselves ([`Listing`]).
//!
//! A listing holds flat arrays (ids, sizes, flags) and every UID in one string, so a
//! maildrop of 100,000 messages costs 37 octets per message (with pop3d's 16-octet UIDs) and one allocation per
//! array, where a `Vec<MessageMeta>` costs a 64-octet struct and a UID allocation each.

use crate::MessageId;

/// Count, octets and highest id of a maildrop's messages, read in one statement: the
/// snapshot a session fixes at login (RFC 1939 section 5: message numbers never change in a
/// session, and mail delivered later is not part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaildropStat {
    pub messages: u64,
    pub octets: u64,
    /// The highest message id; `None` for an empty maildrop.
    pub last: Option<MessageId>,
}

/// A maildrop's messages in delivery order (index 0 is message number 1), compactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    ids: Vec<MessageId>,
    sizes: Vec<u64>,
    /// [`UTF8_HEADERS`] and [`WIRE`] of each message.
    flags: Vec<u8>,
    /// End of each UID in `uids`; UID `i` starts where UID `i - 1` ends.
    uid_ends: Vec<u32>,
    uids: String,
}

/// A message's flag in [`Listing`]: its header section is UTF-8 (RFC 6856 section 3).
const UTF8_HEADERS: u8 = 1;
/// A message's flag in [`Listing`]: stored in wire form.
const WIRE: u8 = 2;

/// Why [`Listing::push`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidsTooLong;

impl Listing {
    /// An empty listing with room for `messages` messages.
    pub fn with_capacity(messages: usize) -> Listing {
        Listing {
            ids: Vec::with_capacity(messages),
            sizes: Vec::with_capacity(messages),
            flags: Vec::with_capacity(messages),
            uid_ends: Vec::with_capacity(messages),
            // UIDs are 16 octets when pop3d made them (RFC 1939 allows up to 70).
            uids: String::with_capacity(messages.saturating_mul(16)),
        }
    }

    /// Appends one message (the next number): `utf8_headers` and `wire` as
    /// [`MessageMeta`](crate::MessageMeta) has them. Refused only when the UIDs together would
    /// pass 4 GiB.
    pub fn push(
        &mut self,
        id: MessageId,
        size: u64,
        uid: &str,
        utf8_headers: bool,
        wire: bool,
    ) -> Result<(), UidsTooLong> {
        let end = u32::try_from(self.uids.len() + uid.len()).map_err(|_| UidsTooLong)?;
        self.uids.push_str(uid);
        self.uid_ends.push(end);
        self.ids.push(id);
        self.sizes.push(size);
        self.flags
            .push((u8::from(utf8_headers) * UTF8_HEADERS) | (u8::from(wire) * WIRE));
        Ok(())
    }

    /// Returns unused capacity to the allocator.
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.sizes.shrink_to_fit();
        self.flags.shrink_to_fit();
        self.uid_ends.shrink_to_fit();
        self.uids.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The stable id of the message at `index` (0-based). Panics when out of range, like a
    /// slice.
    pub fn id(&self, index: usize) -> MessageId {
        self.ids[index]
    }

    /// Every id, in delivery order.
    pub fn ids(&self) -> &[MessageId] {
        &self.ids
    }

    /// Octets of the message at `index`.
    pub fn size(&self, index: usize) -> u64 {
        self.sizes[index]
    }

    /// Whether the message at `index` has UTF-8 headers (RFC 6856 section 3).
    pub fn utf8_headers(&self, index: usize) -> bool {
        self.flags[index] & UTF8_HEADERS != 0
    }

    /// Whether the message at `index` is stored in wire form (byte-stuffed).
    pub fn wire(&self, index: usize) -> bool {
        self.flags[index] & WIRE != 0
    }

    /// The UID of the message at `index`.
    pub fn uid(&self, index: usize) -> &str {
        let start = match index {
            0 => 0,
            i => self.uid_ends[i - 1] as usize,
        };
        &self.uids[start..self.uid_ends[index] as usize]
    }

    /// Octets of every message.
    pub fn octets(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// Heap octets held (capacity, not length): what a session pays for its listing.
    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * std::mem::size_of::<MessageId>()
            + self.sizes.capacity() * std::mem::size_of::<u64>()
            + self.flags.capacity()
            + self.uid_ends.capacity() * std::mem::size_of::<u32>()
            + self.uids.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_by_index() {
        let mut l = Listing::with_capacity(1);
        assert!(l.is_empty());
        l.push(7, 100, "0000000100000001", false, true)
            .expect("push");
        l.push(9, 250, "x", true, false).expect("push");
        l.push(12, 1, "", false, false).expect("push");
        assert_eq!(l.len(), 3);
        assert_eq!(l.ids(), [7, 9, 12]);
        assert_eq!(
            (l.id(1), l.size(1), l.uid(1), l.utf8_headers(1), l.wire(1)),
            (9, 250, "x", true, false)
        );
        assert!(l.wire(0) && !l.utf8_headers(0));
        assert_eq!(l.uid(0), "0000000100000001");
        assert_eq!(l.uid(2), "");
        assert_eq!(l.octets(), 351);
        l.shrink_to_fit();
        assert_eq!(l.heap_bytes(), 3 * 8 + 3 * 8 + 3 + 3 * 4 + 17);
    }

    #[test]
    fn thirty_seven_octets_per_message_at_100k() {
        // Issue 18: a logged-in session on 100,000 messages holds under 4 MiB.
        let n = 100_000;
        let mut l = Listing::with_capacity(n);
        for i in 0..n {
            let uid = format!("{i:08X}{:08X}", 1_700_000_000);
            l.push(i as i64 + 1, 600, &uid, false, true).expect("push");
        }
        // 8 (id) + 8 (size) + 1 (flag) + 4 (UID end) + 16 (UID) octets per message.
        assert_eq!(l.heap_bytes(), n * 37);
        assert!(l.heap_bytes() < 4 << 20, "{}", l.heap_bytes());
    }
}
