//! A session's read-ahead, the way a file system reads ahead of a sequential reader: when a
//! RETR follows a RETR of the message just before it (the not-deleted messages in listing
//! order), the next small messages are read in one store statement
//! ([`store::Store::read_first_chunks`]) and kept for the RETRs that follow, so a download of
//! N small messages costs about N / [`AHEAD_MESSAGES`] + 1 store reads instead of N: on
//! PostgreSQL each read is a round trip.
//!
//! Sans-IO: [`ReadAhead`] says which messages to read and keeps what was read; the session
//! does the reading. A lone RETR, a RETR out of order and TOP never read ahead (TOP may use a
//! message already held). What is held is bounded ([`AHEAD_MESSAGES`], [`AHEAD_OCTETS`]),
//! dropped when the sequential run breaks, and dropped by the driver before a session waits
//! long for its next command ([`super::AHEAD_KEEP`]): an idle session holds none.

use store::{MessageId, CHUNK_SIZE};

use crate::maildrop::{Maildrop, NumberError};

/// Messages one read-ahead reads at most, the RETR that starts it included: a download of
/// N small messages takes about N / 16 + 1 store reads, while one read stays a modest result.
const AHEAD_MESSAGES: usize = 16;
/// Octets one read-ahead holds at most (two chunks' worth): what a session may hold beyond
/// the message it is sending, for thousands of sessions at once.
const AHEAD_OCTETS: u64 = 2 * CHUNK_SIZE as u64;
/// Listing positions one read-ahead looks through for small messages: large ones (read
/// chunk by chunk as before) and deleted ones are passed over, but not without end.
const AHEAD_WINDOW: u32 = 4 * AHEAD_MESSAGES as u32;

/// A message read ahead: its number and its whole content (it fits one chunk).
struct Held {
    number: u32,
    bytes: Vec<u8>,
}

/// A message to read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Planned {
    pub number: u32,
    pub id: MessageId,
    pub size: u64,
    /// Stored in wire form (its stored octets may pass `size`).
    pub wire: bool,
}

/// What a RETR gets from the read-ahead.
pub(super) enum Retr {
    /// The message, held: sent with no store call.
    Held(Vec<u8>),
    /// Read these messages' first chunks in one statement, then [`ReadAhead::fill`] and
    /// [`ReadAhead::retr_held`].
    Read(Vec<Planned>),
    /// Read the message as usual.
    Store,
}

/// The read-ahead of one session in TRANSACTION.
#[derive(Default)]
pub(super) struct ReadAhead {
    /// The number of the message the last RETR sent.
    last: Option<u32>,
    /// Messages read ahead, by ascending number.
    held: Vec<Held>,
}

impl ReadAhead {
    /// RETR of message `n` (in the listing, not deleted): held, to be read ahead, or neither.
    /// Held messages before `n` are dropped (a sequential reader is past them).
    pub fn retr(&mut self, md: &Maildrop, n: u32) -> Retr {
        let sequential = self.sequential(md, n);
        self.last = Some(n);
        if let Some(bytes) = self.retr_held(n) {
            return Retr::Held(bytes);
        }
        if !sequential || !self.held.is_empty() {
            // Out of order, or what is held lies ahead: no read-ahead now.
            if !sequential {
                self.clear();
            }
            return Retr::Store;
        }
        let plan = plan(md, n);
        if plan.is_empty() {
            Retr::Store
        } else {
            Retr::Read(plan)
        }
    }

    /// The held message `n`, taken, with every held message before it dropped.
    pub fn retr_held(&mut self, n: u32) -> Option<Vec<u8>> {
        let past = self.held.partition_point(|h| h.number < n);
        self.held.drain(..past);
        match self.held.first() {
            Some(h) if h.number == n => Some(self.held.remove(0).bytes),
            _ => None,
        }
    }

    /// TOP of message `n`: its content if held (taken), and nothing else changes.
    pub fn top(&mut self, n: u32) -> Option<Vec<u8>> {
        let at = self.held.iter().position(|h| h.number == n)?;
        Some(self.held.remove(at).bytes)
    }

    /// What a read of `plan` returned: each message whose chunk is all of it is held, in plan
    /// order while the octets held stay within [`AHEAD_OCTETS`] (the plan counts sizes; in
    /// wire form the stored octets are more by the stuffing dots). One whose chunk is missing
    /// or short, or past the budget, is not held, and is read as usual when asked for.
    pub fn fill(&mut self, plan: &[Planned], mut read: Vec<(MessageId, Vec<u8>)>) {
        self.held.clear();
        let mut octets = 0u64;
        for &Planned {
            number,
            id,
            size,
            wire,
        } in plan
        {
            if let Some(at) = read.iter().position(|(got, _)| *got == id) {
                let (_, bytes) = read.swap_remove(at);
                // Whole when shorter than a chunk: the store writes full chunks but the
                // last (which in wire form is always short). A message whose size is exactly
                // one chunk is read as usual.
                if bytes.len() < CHUNK_SIZE && (bytes.len() as u64 == size || wire) {
                    octets += bytes.len() as u64;
                    if octets > AHEAD_OCTETS {
                        break;
                    }
                    self.held.push(Held { number, bytes });
                }
            }
        }
    }

    /// DELE of message `n`: it will not be sent.
    pub fn deleted(&mut self, n: u32) {
        self.held.retain(|h| h.number != n);
    }

    /// Whether anything is held.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Drops what is held (the sequence itself is kept: the next RETR in order reads ahead
    /// again).
    pub fn clear(&mut self) {
        self.held = Vec::new();
    }

    /// Whether RETR `n` follows the last RETR in listing order: every message between them
    /// is marked deleted.
    fn sequential(&self, md: &Maildrop, n: u32) -> bool {
        match self.last {
            Some(last) if last < n => {
                (last + 1..n).all(|k| matches!(md.get(k), Err(NumberError::Deleted)))
            }
            _ => false,
        }
    }
}

/// The messages to read ahead from `n` on: `n` itself if small, then the next small ones not
/// marked deleted, within the budget.
fn plan(md: &Maildrop, n: u32) -> Vec<Planned> {
    let small = |size: u64| size <= CHUNK_SIZE as u64;
    match md.get(n) {
        Ok(m) if small(m.size) => {}
        _ => return Vec::new(),
    }
    let mut plan = Vec::new();
    let mut octets = 0u64;
    let end = n.saturating_add(AHEAD_WINDOW).min(len(md));
    for k in n..end {
        let Ok(m) = md.get(k) else { continue };
        if !small(m.size) {
            continue;
        }
        if plan.len() == AHEAD_MESSAGES || octets + m.size > AHEAD_OCTETS {
            break;
        }
        octets += m.size;
        plan.push(Planned {
            number: k,
            id: m.id,
            size: m.size,
            wire: m.wire,
        });
    }
    plan
}

/// One past the highest message number.
fn len(md: &Maildrop) -> u32 {
    u32::try_from(md.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use store::{Listing, MaildropStat};

    use super::*;

    /// A loaded maildrop of messages of these sizes, ids 100, 101, ...
    fn maildrop(sizes: &[u64]) -> Maildrop {
        stored(sizes, false)
    }

    /// The same, stored in wire form or not.
    fn stored(sizes: &[u64], wire: bool) -> Maildrop {
        let mut listing = Listing::with_capacity(sizes.len());
        for (i, &size) in sizes.iter().enumerate() {
            listing
                .push(100 + i as i64, size, &format!("u{i}"), false, wire)
                .expect("push");
        }
        let mut md = Maildrop::new(MaildropStat {
            messages: sizes.len() as u64,
            octets: sizes.iter().sum(),
            last: Some(99 + sizes.len() as i64),
        });
        md.load(listing).expect("load");
        md
    }

    fn numbers(step: &Retr) -> Vec<u32> {
        match step {
            Retr::Read(plan) => plan.iter().map(|p| p.number).collect(),
            _ => Vec::new(),
        }
    }

    const BIG: u64 = CHUNK_SIZE as u64 + 1;

    /// The second RETR in order reads ahead from itself on, passing over large and deleted
    /// messages, at most 16 messages; the first, and one out of order, read nothing ahead.
    #[test]
    fn a_run_in_order_reads_ahead_within_sixteen_messages() {
        let mut sizes = vec![100; 40];
        sizes[3] = BIG;
        let mut md = maildrop(&sizes);
        md.delete(5).expect("delete");
        let mut ahead = ReadAhead::default();
        assert!(matches!(ahead.retr(&md, 1), Retr::Store));
        let step = ahead.retr(&md, 2);
        let want: Vec<u32> = [2, 3].into_iter().chain(6..20).collect();
        assert_eq!(numbers(&step), want);
        assert!(matches!(ahead.retr(&md, 1), Retr::Store), "out of order");
        assert!(
            matches!(ahead.retr(&md, 3), Retr::Store),
            "2 not retrieved since"
        );
    }

    /// At most 256 KiB: a third message of 100 KiB does not fit; one larger than a chunk
    /// starts none.
    #[test]
    fn a_read_ahead_stays_within_its_octets() {
        let md = maildrop(&[100 << 10, 100 << 10, 100 << 10, 100 << 10, BIG, 10]);
        let mut ahead = ReadAhead::default();
        ahead.retr(&md, 1);
        assert_eq!(numbers(&ahead.retr(&md, 2)), [2, 3]);
        let mut ahead = ReadAhead::default();
        ahead.retr(&md, 4);
        assert!(matches!(ahead.retr(&md, 5), Retr::Store));
    }

    /// A message in wire form is held whole when its chunk is shorter than a full one,
    /// stuffing dots making it longer than its size; one whose chunk is full (the store
    /// follows it with an empty last chunk) is read as usual.
    #[test]
    fn a_message_in_wire_form_is_held_by_its_short_chunk() {
        let md = stored(&[5, 5, CHUNK_SIZE as u64], true);
        let mut ahead = ReadAhead::default();
        ahead.retr(&md, 1);
        let Retr::Read(plan) = ahead.retr(&md, 2) else {
            panic!("no read-ahead");
        };
        assert!(plan.iter().all(|p| p.wire));
        let stuffed = b"..5\r\n".to_vec();
        let read = vec![
            (plan[0].id, stuffed.clone()),
            (plan[1].id, vec![b'x'; CHUNK_SIZE]),
        ];
        ahead.fill(&plan, read);
        assert_eq!(ahead.retr_held(2), Some(stuffed));
        assert!(!ahead.holds(), "a full chunk: not held");
        assert!(!matches!(ahead.retr(&md, 3), Retr::Held(_)));
    }

    /// What is held stays within the octet budget when stuffing makes the stored octets
    /// more than the sizes the plan counted: three messages of 80 KiB stored as 120 KiB each
    /// are planned together, and the third is not held.
    #[test]
    fn what_is_held_stays_within_its_octets_in_wire_form() {
        let md = stored(&[80 << 10; 4], true);
        let mut ahead = ReadAhead::default();
        ahead.retr(&md, 1);
        let Retr::Read(plan) = ahead.retr(&md, 2) else {
            panic!("no read-ahead");
        };
        assert_eq!(plan.len(), 3);
        let read = plan.iter().map(|p| (p.id, vec![b'.'; 120 << 10])).collect();
        ahead.fill(&plan, read);
        assert!(ahead.retr_held(2).is_some() && ahead.retr_held(3).is_some());
        assert!(!ahead.holds(), "the third is past the budget");
    }

    /// Only a chunk that is the whole message is held; held messages are taken by RETR (those
    /// before it dropped), by TOP (alone), dropped by DELE and by `clear`.
    #[test]
    fn what_is_held_and_how_it_goes() {
        let md = maildrop(&[5; 8]);
        let mut ahead = ReadAhead::default();
        ahead.retr(&md, 1);
        let Retr::Read(plan) = ahead.retr(&md, 2) else {
            panic!("no read-ahead");
        };
        let read: Vec<(MessageId, Vec<u8>)> = plan
            .iter()
            .filter(|p| p.number != 4)
            .map(|p| {
                (
                    p.id,
                    if p.number == 3 {
                        b"abc".to_vec()
                    } else {
                        b"12345".to_vec()
                    },
                )
            })
            .collect();
        ahead.fill(&plan, read);
        assert_eq!(ahead.retr_held(2).as_deref(), Some(&b"12345"[..]));
        assert!(matches!(ahead.retr(&md, 3), Retr::Store), "short: not held");
        assert_eq!(ahead.top(6).as_deref(), Some(&b"12345"[..]));
        assert!(ahead.top(6).is_none());
        ahead.deleted(7);
        assert!(matches!(ahead.retr(&md, 5), Retr::Held(_)));
        assert!(ahead.holds(), "8 is held");
        ahead.clear();
        assert!(!ahead.holds());
    }
}
