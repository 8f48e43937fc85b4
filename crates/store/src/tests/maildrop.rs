//! The maildrop: delivery in chunks, the wire form, failed deliveries, the session's listing
//! and its read-ahead of first chunks, concurrent deliveries, the SMTPUTF8 flag.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use super::{count, deliver, name, read_all, uids, Fixture, HOUR};
use crate::{from_wire, normalise, to_wire, ImportMessage, MessageId, StoreError, CHUNK_SIZE};

/// Hands out its data in small, uneven reads, with an `Interrupted` error in between.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    interrupt: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(ErrorKind::Interrupted.into());
        }
        self.step = self.step % 9973 + 1;
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Fails after handing out some bytes.
struct Broken(usize);

impl Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("connection reset"));
        }
        let n = self.0.min(buf.len());
        buf[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
}

pub(super) fn deliver_multi_chunk_round_trip(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    // ~300 KiB with bare LFs, one CRLF, a bare CR, dot-led lines, and no final newline.
    let mut input = b"From: a@b\nSubject: big\r\n\n".to_vec();
    let mut line = 0u32;
    while input.len() < 300 * 1024 {
        let dot = if line.is_multiple_of(7) { "." } else { "" };
        input.extend_from_slice(format!("{dot}line {line} of the body\r..\n").as_bytes());
        line += 1;
    }
    input.extend_from_slice(b"no newline at the end");
    // Stored in wire form: byte-stuffed (RFC 1939 section 3), sizes of the message itself.
    let (expected, summary) = to_wire(&input);
    assert_eq!(from_wire(&expected), normalise(&input).0);

    for source in [0, 1] {
        let delivered = match source {
            0 => deliver(&*store, &to, &input),
            _ => {
                let mut trickle = Trickle {
                    data: &input,
                    step: 0,
                    interrupt: false,
                };
                store.deliver(&to, &mut trickle, u64::MAX).unwrap()
            }
        };
        assert_eq!(delivered.size, normalise(&input).0.len() as u64);
        assert_eq!(delivered.uid.len(), 16);
        assert_eq!(delivered.size, summary.size);
        let chunks = read_all(&*store, delivered.id);
        assert_eq!(chunks.len(), expected.len().div_ceil(CHUNK_SIZE));
        let (last, full) = chunks.split_last().unwrap();
        assert!(full.iter().all(|c| c.len() == CHUNK_SIZE));
        assert!(!last.is_empty() && last.len() < CHUNK_SIZE);
        assert_eq!(chunks.concat(), expected);
        assert!(store.read_chunk(delivered.id, 1000).unwrap().is_none());
        // In runs: the same slices, fewer at the end, none past it.
        let run = store.read_chunks(delivered.id, 1, 2).unwrap();
        assert_eq!(run, chunks[1..3.min(chunks.len())]);
        assert_eq!(store.read_chunks(delivered.id, 0, 100).unwrap(), chunks);
        assert!(store.read_chunks(delivered.id, 1000, 4).unwrap().is_empty());
    }

    let list = store.list_messages(account).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].id < list[1].id);
    for meta in &list {
        assert_eq!(meta.size, summary.size);
        assert_eq!(meta.header_octets, summary.stored_header_octets);
        assert_eq!(meta.body_lines, summary.body_lines);
        assert!(meta.wire);
    }
    assert_eq!(summary.header_octets, 11 + 14 + 2);
    assert_eq!(summary.body_lines, u64::from(line) + 1);
    // A run stops at a missing slice: what it returns is always contiguous.
    let id = list[0].id;
    store.exec(&format!(
        "DELETE FROM chunks WHERE message_id = {id} AND seq = 1"
    ));
    assert_eq!(store.read_chunks(id, 0, 10).unwrap().len(), 1);
    assert!(matches!(
        store.list_messages(account + 100),
        Err(StoreError::NoSuchAccount(_))
    ));
    assert!(matches!(
        store.deliver(&name("nobody"), &mut &b"x\n"[..], 100),
        Err(StoreError::NoSuchAccount(n)) if n == "nobody"
    ));
}

/// A message in wire form ends with a slice shorter than [`CHUNK_SIZE`]: one whose stored
/// octets fill its slices exactly gets an empty last slice, so a reader that gets a full slice
/// and then none knows one is missing. Stuffing dots count toward the slices, not the size.
pub(super) fn wire_form_ends_with_a_short_slice(f: &dyn Fixture) {
    let store = f.open();
    let to = name("exact");
    store.create_account(&to, "h").unwrap();
    let mut one_chunk = vec![b'x'; CHUNK_SIZE - 2];
    one_chunk.extend_from_slice(b"\r\n");
    // 999 dot-led lines (their LFs normalised to CRLF) and 999 stuffing dots: 2 * CHUNK_SIZE
    // stored.
    let mut dots = b".ab\n".repeat(999);
    dots.resize(2 * CHUNK_SIZE - 2 * 999 - 2, b'y');
    dots.extend_from_slice(b"\r\n");
    for (input, size, slices) in [
        (&one_chunk, CHUNK_SIZE, [CHUNK_SIZE, 0].as_slice()),
        (&dots, 2 * CHUNK_SIZE - 999, &[CHUNK_SIZE, CHUNK_SIZE, 0]),
    ] {
        let delivered = deliver(&*store, &to, input);
        assert_eq!(delivered.size, size as u64);
        let chunks = read_all(&*store, delivered.id);
        let lengths: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lengths, slices);
        assert_eq!(from_wire(&chunks.concat()), normalise(input).0);
    }
}

/// A session's read-ahead: slice 0 of each message asked for, small messages whole and a
/// large one's first [`CHUNK_SIZE`] octets; ids of another account, unknown ones and messages
/// with no slice 0 left are left out; no ids, no rows.
pub(super) fn first_chunks_of_many_messages_in_one_call(f: &dyn Fixture) {
    let store = f.open();
    let (to, other) = (name("ahead"), name("other"));
    let account = store.create_account(&to, "h").unwrap();
    store.create_account(&other, "h").unwrap();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.resize(CHUNK_SIZE + 1000, b'x');
    let bodies: [&[u8]; 4] = [b"Subject: a\r\n\r\none\r\n", &big, b"two\r\n", b"three\r\n"];
    let ids: Vec<MessageId> = bodies.iter().map(|b| deliver(&*store, &to, b).id).collect();
    let theirs = deliver(&*store, &other, b"not yours\r\n").id;
    store.exec(&format!("DELETE FROM chunks WHERE message_id = {}", ids[3]));
    let mut asked = ids.clone();
    asked.extend([theirs, ids[3] + 1000]);
    let mut got = store.read_first_chunks(account, &asked).unwrap();
    got.sort();
    let want = vec![
        (ids[0], bodies[0].to_vec()),
        (ids[1], big[..CHUNK_SIZE].to_vec()),
        (ids[2], bodies[2].to_vec()),
    ];
    assert_eq!(got, want);
    assert!(store.read_first_chunks(account, &[]).unwrap().is_empty());
}

/// RFC 1939 section 5: a session's maildrop is what it was at login. `maildrop_stat` reads
/// count, octets and highest id in one statement; `list_snapshot` lists exactly those
/// messages, in delivery order, whatever was delivered in between.
pub(super) fn stat_and_snapshot_listing_leave_out_later_deliveries(f: &dyn Fixture) {
    let store = f.open();
    let to = name("snap");
    let account = store.create_account(&to, "h").unwrap();
    let empty = store.maildrop_stat(account).unwrap();
    assert_eq!(empty, crate::MaildropStat::default());
    assert!(store.list_snapshot(account, &empty).unwrap().is_empty());
    let bodies = ["Subject: a\r\n\r\none\r\n", "Subject: b\r\n\r\ntwo two\r\n"];
    let mut delivered = Vec::new();
    for b in bodies {
        delivered.push(store.deliver(&to, &mut b.as_bytes(), 1 << 20).unwrap());
    }
    let stat = store.maildrop_stat(account).unwrap();
    let octets: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    assert_eq!(stat.messages, 2);
    assert_eq!(stat.octets, octets);
    assert_eq!(stat.last, Some(delivered[1].id));
    // Delivered after the snapshot: not in it.
    store
        .deliver(&to, &mut &b"Subject: later\r\n\r\nx\r\n"[..], 1 << 20)
        .unwrap();
    let listing = store.list_snapshot(account, &stat).unwrap();
    assert_eq!(listing.len(), 2);
    assert_eq!(listing.octets(), octets);
    let full = store.list_messages(account).unwrap();
    for (i, meta) in full.iter().take(2).enumerate() {
        assert_eq!(listing.id(i), meta.id);
        assert_eq!(listing.uid(i), meta.uid);
        assert_eq!(listing.size(i), meta.size);
        assert!(!listing.utf8_headers(i));
        assert_eq!(
            store.header_octets(account, meta.id).unwrap(),
            Some(meta.header_octets)
        );
    }
    assert_eq!(store.maildrop_stat(account).unwrap().messages, 3);
    assert_eq!(
        store.header_octets(account + 100, full[0].id).unwrap(),
        None
    );
    // The kept count and octets follow deletions (UPDATE, EXPIRE) as they follow deliveries.
    let lock = store.lock_maildrop(account, "t", HOUR).unwrap();
    store
        .commit_update(&lock, &[full[0].id], &[full[1].id])
        .unwrap();
    let after = store.maildrop_stat(account).unwrap();
    assert_eq!(
        (after.messages, after.octets),
        (2, full[1].size + full[2].size)
    );
    store.expire_messages(&lock, Duration::ZERO).unwrap();
    let after = store.maildrop_stat(account).unwrap();
    assert_eq!((after.messages, after.octets), (1, full[2].size));
    assert_eq!(after.last, Some(full[2].id));
    assert!(matches!(
        store.maildrop_stat(account + 100),
        Err(StoreError::NoSuchAccount(_))
    ));
}

pub(super) fn failed_deliveries_leave_nothing(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let big = vec![b'x'; 3 * CHUNK_SIZE];
    let lines = b"a\n".repeat(500); // 1000 octets in, 1500 stored
    let cases: Vec<(&[u8], u64)> = vec![(&big, 2 * CHUNK_SIZE as u64), (&lines, 1499)];
    for (input, limit) in cases {
        let err = store.deliver(&to, &mut &input[..], limit).unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { size, limit: l } if size > limit && l == limit),
            "{err:?}"
        );
    }
    // "x" becomes "x\r\n": the appended CRLF counts against the limit too.
    assert!(matches!(
        store.deliver(&to, &mut &b"x"[..], 2),
        Err(StoreError::TooLarge { size: 3, limit: 2 })
    ));
    assert!(matches!(
        store.deliver(&to, &mut &b""[..], 100),
        Err(StoreError::InvalidMessage("empty message"))
    ));
    let err = store
        .deliver(&to, &mut Broken(CHUNK_SIZE * 2 + 5), u64::MAX)
        .unwrap_err();
    assert!(matches!(err, StoreError::Input(_)), "{err:?}");
    assert!(!err.is_transient());

    assert!(store.list_messages(account).unwrap().is_empty());
    assert_eq!(count(&*store, "SELECT count(*) FROM messages"), 0);
    assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 0);

    // Exactly at the limit is fine.
    let ok = store.deliver(&to, &mut &lines[..], 1500).unwrap();
    assert_eq!(ok.size, 1500);
}

pub(super) fn delivery_while_locked_shows_in_next_listing(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    deliver(&*store, &to, b"one\n");
    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    let snapshot = store.list_messages(account).unwrap();
    let late = deliver(&*store, &to, b"two\n");
    assert_eq!(snapshot.len(), 1);
    assert_eq!(
        store.read_chunk(snapshot[0].id, 0).unwrap().unwrap(),
        b"one\r\n"
    );
    store.commit_update(&lock, &[snapshot[0].id], &[]).unwrap();
    store.release_lock(&lock).unwrap();
    let next = store.list_messages(account).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].id, &next[0].uid), (late.id, &late.uid));
}

pub(super) fn concurrent_deliveries_from_shared_store(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (store, to) = (Arc::clone(&store), to.clone());
            std::thread::spawn(move || {
                for i in 0..5 {
                    let body = format!("thread {t} message {i}\n");
                    deliver(&*store, &to, body.as_bytes());
                    store.list_messages(account).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let all = uids(&*store, account);
    assert_eq!(all.len(), 20);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 20);
    assert!(store.pool_within_bounds());
}

/// RFC 6856 section 3: the flag is stored at delivery and import.
pub(super) fn utf8_headers_flag_is_stored(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let cases: &[(&[u8], bool)] = &[
        (b"Subject: caf\xc3\xa9\n\nbody\n", true),
        (b"Subject: caf\xe9\n\nbody\n", false),
        (b"Subject: cafe\n\ncaf\xc3\xa9 \xe9\n", false),
        (b"Subject: cafe\n\nbody\n", false),
    ];
    for (input, _) in cases {
        deliver(&*store, &to, input);
    }
    let imported: Vec<ImportMessage> = cases
        .iter()
        .map(|(input, _)| ImportMessage {
            bytes: input.to_vec(),
            uid: None,
            uid_claimed: false,
        })
        .collect();
    store.import(&to, &mut imported.into_iter()).unwrap();
    let flags: Vec<bool> = store
        .list_messages(account)
        .unwrap()
        .iter()
        .map(|m| m.utf8_headers)
        .collect();
    let want: Vec<bool> = cases.iter().chain(cases).map(|&(_, w)| w).collect();
    assert_eq!(flags, want);
}
