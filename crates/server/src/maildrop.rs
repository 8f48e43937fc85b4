//! A session's view of its locked maildrop: the snapshot fixed at login (count, octets,
//! highest id), the compact listing loaded when a command first needs the messages, message
//! numbers 1..n, and the deletion marks that UPDATE applies.
//!
//! Login reads only the snapshot ([`store::Store::maildrop_stat`], one aggregate statement),
//! so PASS on a maildrop of 100,000 messages answers without reading 100,000 rows; LIST, UIDL,
//! RETR, TOP and DELE load the listing of exactly that snapshot first
//! ([`store::Store::list_snapshot`]: ids up to the highest at login). RFC 1939 section 5
//! holds either way: mail delivered after login is not part of the session, and numbers never
//! change within it.

use store::{Listing, MaildropStat, MessageId};

/// Why a message number cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberError {
    /// 0, or larger than the number of messages at login.
    NoSuchMessage,
    /// Marked deleted in this session (RFC 1939 section 5: may not be referred to).
    Deleted,
}

/// The loaded listing is not the snapshot taken at login: messages of it are gone (the lock
/// was taken over, the account deleted), so its message numbers cannot be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotChanged;

/// One message of the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub id: MessageId,
    pub size: u64,
    pub uid: &'a str,
    pub utf8_headers: bool,
    /// Stored in wire form: sent as stored, with no stuffing pass.
    pub wire: bool,
}

/// Bits of [`Maildrop::marks`].
const DELETED: u8 = 1;
/// Fully retrieved (RETR) in this session; recorded at UPDATE for EXPIRE.
const RETRIEVED: u8 = 2;

/// The snapshot taken at login, its listing once loaded, and the session's marks.
#[derive(Debug)]
pub struct Maildrop {
    snapshot: MaildropStat,
    listing: Option<Listing>,
    /// [`DELETED`] and [`RETRIEVED`] per message, from the load on.
    marks: Vec<u8>,
    deleted_count: u64,
    deleted_octets: u64,
}

impl Maildrop {
    /// A maildrop as `snapshot` found it at login; an empty one needs no listing.
    pub fn new(snapshot: MaildropStat) -> Maildrop {
        let listing = (snapshot.messages == 0).then(Listing::default);
        Maildrop {
            snapshot,
            listing,
            marks: Vec::new(),
            deleted_count: 0,
            deleted_octets: 0,
        }
    }

    /// The snapshot taken at login.
    pub fn snapshot(&self) -> &MaildropStat {
        &self.snapshot
    }

    /// Whether a command that uses messages must first [`Maildrop::load`] the listing.
    pub fn needs_listing(&self) -> bool {
        self.listing.is_none()
    }

    /// Takes the listing of the snapshot; refused unless it holds exactly the messages and
    /// octets counted at login.
    pub fn load(&mut self, listing: Listing) -> Result<(), SnapshotChanged> {
        if listing.len() as u64 != self.snapshot.messages
            || listing.octets() != self.snapshot.octets
        {
            return Err(SnapshotChanged);
        }
        self.marks = vec![0; listing.len()];
        self.listing = Some(listing);
        Ok(())
    }

    fn index(&self, n: u32) -> Result<(usize, &Listing), NumberError> {
        let listing = self.listing.as_ref().ok_or(NumberError::NoSuchMessage)?;
        let i = (n as usize)
            .checked_sub(1)
            .filter(|&i| i < listing.len())
            .ok_or(NumberError::NoSuchMessage)?;
        if self.marks[i] & DELETED != 0 {
            return Err(NumberError::Deleted);
        }
        Ok((i, listing))
    }

    /// The message with number `n` (1-based) unless it is out of range or marked deleted.
    /// Before the listing is loaded every number is out of range.
    pub fn get(&self, n: u32) -> Result<Message<'_>, NumberError> {
        let (i, listing) = self.index(n)?;
        Ok(message(listing, i))
    }

    /// Marks message `n` deleted.
    pub fn delete(&mut self, n: u32) -> Result<(), NumberError> {
        let (i, listing) = self.index(n)?;
        self.deleted_octets += listing.size(i);
        self.marks[i] |= DELETED;
        self.deleted_count += 1;
        Ok(())
    }

    /// Number of messages at login, deleted ones included.
    pub fn len(&self) -> u64 {
        self.snapshot.messages
    }

    /// Records that message `n` was retrieved whole.
    pub fn mark_retrieved(&mut self, n: u32) {
        if let Ok((i, _)) = self.index(n) {
            self.marks[i] |= RETRIEVED;
        }
    }

    /// Ids of the messages whose marks, masked by `mask`, equal `mark`.
    fn ids_where(&self, mask: u8, mark: u8) -> Vec<MessageId> {
        let Some(listing) = &self.listing else {
            return Vec::new();
        };
        listing
            .ids()
            .iter()
            .zip(&self.marks)
            .filter(|(_, &m)| m & mask == mark)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Ids of the messages retrieved in this session and not marked deleted.
    pub fn retrieved(&self) -> Vec<MessageId> {
        self.ids_where(DELETED | RETRIEVED, RETRIEVED)
    }

    /// Ids of the messages marked deleted, for UPDATE.
    pub fn marked(&self) -> Vec<MessageId> {
        self.ids_where(DELETED, DELETED)
    }

    /// Unmarks every message (RSET).
    pub fn reset(&mut self) {
        for m in &mut self.marks {
            *m &= !DELETED;
        }
        self.deleted_count = 0;
        self.deleted_octets = 0;
    }

    /// Count and octets of the messages not marked deleted (STAT): from the snapshot, so
    /// answered before the listing is loaded.
    pub fn stat(&self) -> (u64, u64) {
        (
            self.snapshot.messages - self.deleted_count,
            self.snapshot.octets - self.deleted_octets,
        )
    }

    /// Messages not marked deleted, with their numbers (none before the listing is loaded).
    pub fn live(&self) -> impl Iterator<Item = (u32, Message<'_>)> {
        self.listing.iter().flat_map(move |listing| {
            self.marks
                .iter()
                .enumerate()
                .filter(|(_, &m)| m & DELETED == 0)
                .map(move |(i, _)| (i as u32 + 1, message(listing, i)))
        })
    }

    /// Heap octets the session holds for its maildrop.
    pub fn heap_bytes(&self) -> usize {
        self.listing.as_ref().map_or(0, Listing::heap_bytes) + self.marks.capacity()
    }
}

fn message(listing: &Listing, i: usize) -> Message<'_> {
    Message {
        id: listing.id(i),
        size: listing.size(i),
        uid: listing.uid(i),
        utf8_headers: listing.utf8_headers(i),
        wire: listing.wire(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(messages: &[(i64, u64)]) -> Listing {
        let mut l = Listing::with_capacity(messages.len());
        for &(id, size) in messages {
            l.push(id, size, &format!("u{id}"), false, true)
                .expect("push");
        }
        l
    }

    fn snapshot(messages: &[(i64, u64)]) -> MaildropStat {
        MaildropStat {
            messages: messages.len() as u64,
            octets: messages.iter().map(|m| m.1).sum(),
            last: messages.last().map(|m| m.0),
        }
    }

    #[test]
    fn numbers_deletion_and_reset() {
        // RFC 1939 section 5: deleted messages are not counted, listed or usable; RSET
        // unmarks them.
        let all = [(10, 100), (11, 200), (12, 300)];
        let mut m = Maildrop::new(snapshot(&all));
        assert_eq!(
            m.stat(),
            (3, 600),
            "STAT before the load, from the snapshot"
        );
        assert!(m.needs_listing());
        m.load(listing(&all)).expect("load");
        assert_eq!(m.stat(), (3, 600));
        assert_eq!(m.get(0), Err(NumberError::NoSuchMessage));
        assert_eq!(m.get(4), Err(NumberError::NoSuchMessage));
        assert_eq!(m.get(u32::MAX), Err(NumberError::NoSuchMessage));
        assert_eq!(m.get(2).map(|x| (x.id, x.uid)), Ok((11, "u11")));
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
        assert_eq!(m.retrieved(), vec![10], "RSET keeps what was retrieved");
    }

    #[test]
    fn an_empty_maildrop_needs_no_listing() {
        let m = Maildrop::new(MaildropStat::default());
        assert!(!m.needs_listing());
        assert_eq!(m.stat(), (0, 0));
        assert_eq!(m.get(1), Err(NumberError::NoSuchMessage));
        assert_eq!(m.live().count(), 0);
    }

    #[test]
    fn a_listing_other_than_the_snapshot_is_refused() {
        // RFC 1939 section 5: numbers are fixed at login; a listing that lost a message (or
        // whose sizes differ) cannot keep them.
        let all = [(10, 100), (11, 200)];
        let mut m = Maildrop::new(snapshot(&all));
        assert_eq!(m.load(listing(&all[..1])), Err(SnapshotChanged));
        assert_eq!(
            m.load(listing(&[(10, 100), (11, 201)])),
            Err(SnapshotChanged)
        );
        assert!(m.needs_listing());
        assert_eq!(m.load(listing(&all)), Ok(()));
    }

    #[test]
    fn a_session_on_100k_messages_holds_under_4_mib() {
        // Issue 18: memory per logged-in session at 100,000 messages (pop3d's 16-octet UIDs).
        let n = 100_000i64;
        let mut l = Listing::with_capacity(n as usize);
        for id in 1..=n {
            l.push(
                id,
                600,
                &format!("{id:08X}{:08X}", 1_700_000_000),
                false,
                true,
            )
            .expect("push");
        }
        let mut m = Maildrop::new(MaildropStat {
            messages: n as u64,
            octets: 600 * n as u64,
            last: Some(n),
        });
        assert_eq!(
            m.heap_bytes(),
            0,
            "nothing held before the first listing command"
        );
        m.load(l).expect("load");
        assert!(m.heap_bytes() < 4 << 20, "{} octets", m.heap_bytes());
    }
}
