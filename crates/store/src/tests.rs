//! The store test suite, run against every backend: each test is a function of a
//! [`Fixture`] (a database a test may open several stores on), instantiated by [`suite!`]
//! once for SQLite and once for PostgreSQL. The PostgreSQL half runs on a throw-away cluster
//! ([`testbed::pg`]) and prints a skip where PostgreSQL is not installed.
//!
//! Backend-specific tests (files and modes, migrations from older schemas, error mapping,
//! lease fencing across nodes) live next to their backend.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    from_wire, holder, normalise, to_wire, AccountId, AccountImport, AccountName, AccountPolicy,
    AccountSecrets, Delivered, Expire, ImportMessage, Limit, LoginDelay, LoginRecord, LoginSource,
    MaildropLock, MessageId, NodeInfo, NodeState, OnExisting, Quota, QuotaCheck, QuotaScope,
    QuotaSetting, SqliteStore, Store, StoreError, CHUNK_SIZE,
};

/// What the suite needs of a store beyond [`Store`]: raw SQL on its database (statements the
/// two dialects share) and a look at its connection pool.
pub(crate) trait TestStore: Store {
    /// Runs one statement, returns the rows it changed.
    fn exec(&self, sql: &str) -> u64;
    /// The first column of the one row `sql` selects, as an integer; `None` for NULL.
    fn scalar(&self, sql: &str) -> Option<i64>;
    /// `last_login` and `login_tokens` of an account.
    fn login_state(&self, account: AccountId) -> (Option<i64>, Option<f64>);
    /// The pool holds no more connections than its bound.
    fn pool_within_bounds(&self) -> bool;
}

/// One database for one test; every [`Fixture::open`] is a new store on it (as another
/// process, or the same one restarted, would open it).
pub(crate) trait Fixture {
    fn open(&self) -> Arc<dyn TestStore>;
}

/// A data directory for [`SqliteStore`].
pub(crate) struct SqliteFixture(TempDir);

impl SqliteFixture {
    pub(crate) fn new() -> SqliteFixture {
        SqliteFixture(TempDir::new())
    }
}

impl Fixture for SqliteFixture {
    fn open(&self) -> Arc<dyn TestStore> {
        Arc::new(SqliteStore::open(&self.0 .0).unwrap())
    }
}

/// A fresh database on the shared test cluster for `PostgresStore`.
#[cfg(feature = "postgres")]
pub(crate) struct PostgresFixture {
    pub(crate) cluster: &'static testbed::pg::Cluster,
    pub(crate) database: String,
}

#[cfg(feature = "postgres")]
impl PostgresFixture {
    /// `None`, with a printed reason, where PostgreSQL is not installed.
    pub(crate) fn new(test: &str) -> Option<PostgresFixture> {
        let (cluster, database) = testbed::pg::fresh_database(test)?;
        Some(PostgresFixture { cluster, database })
    }

    pub(crate) fn url(&self) -> String {
        self.cluster.url(&self.database)
    }

    /// A store of node `node` on this database.
    pub(crate) fn open_node(&self, node: Option<&str>) -> crate::PostgresStore {
        crate::PostgresStore::open(&self.url(), node).unwrap()
    }
}

#[cfg(feature = "postgres")]
impl Fixture for PostgresFixture {
    fn open(&self) -> Arc<dyn TestStore> {
        Arc::new(self.open_node(None))
    }
}

/// Instantiates each named test of this module for every backend: `sqlite::NAME` and
/// `postgres::NAME`.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::SqliteFixture::new());
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[test]
                fn $test() {
                    if let Some(fixture) = super::PostgresFixture::new(stringify!($test)) {
                        super::$test(&fixture);
                    }
                }
            )*
        }
    };
}

suite!(
    accounts_create_lookup_duplicate,
    deliver_multi_chunk_round_trip,
    wire_form_ends_with_a_short_slice,
    failed_deliveries_leave_nothing,
    generated_uids_are_never_reused,
    generated_uid_skips_imported_one,
    claimed_uids_that_are_invalid_or_taken_give_way,
    locks_exclude_release_expire_and_fence,
    commit_update_deletions_are_exact_atomic_and_fenced,
    delivery_while_locked_shows_in_next_listing,
    import_keeps_uids_and_is_all_or_nothing,
    delete_account_refuses_while_locked,
    concurrent_deliveries_from_shared_store,
    policy_round_trip,
    login_delay_token_bucket,
    login_delay_is_atomic_across_connections,
    commit_update_marks_first_retrieval_once_and_deletes,
    expire_messages_deletes_only_old_retrieved_ones,
    utf8_headers_flag_is_stored,
    secrets_are_stored_replaced_together_and_not_debugged,
    account_import_is_all_or_nothing,
    rehash_replaces_only_the_hash_it_was_given,
    scram_keys_are_added_only_where_missing_and_for_the_same_hash,
    domains_list_add_and_delete_with_their_accounts,
    nodes_heartbeat_keep_the_operators_state_age_and_go,
    renew_locks_renews_held_leases_and_reports_lost_ones,
    quota_resolves_account_then_domain_then_global,
    quota_refuses_deliveries_and_imports_whole,
    concurrent_deliveries_cannot_overshoot_the_quota,
    logins_are_recorded_in_one_batch_latest_wins,
    stat_and_snapshot_listing_leave_out_later_deliveries,
    first_chunks_of_many_messages_in_one_call,
);

#[test]
fn stores_are_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<SqliteStore>();
    #[cfg(feature = "postgres")]
    check::<crate::PostgresStore>();
    check::<Arc<dyn Store>>();
}

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// Now, in unix seconds (this host's clock, which is the test database's too).
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A data directory that does not exist yet (the store creates it, with its own mode) inside
/// a test bed temp dir, removed when dropped.
// The second field is held for its Drop, which removes the directory.
pub(crate) struct TempDir(pub(crate) PathBuf, #[allow(dead_code)] testbed::TempDir);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        let dir = testbed::TempDir::new("store-test");
        TempDir(dir.path().join("data"), dir)
    }
}

pub(crate) fn name(s: &str) -> AccountName {
    AccountName::parse(s).unwrap()
}

pub(crate) fn deliver(store: &dyn TestStore, to: &AccountName, bytes: &[u8]) -> Delivered {
    store
        .deliver(to, &mut &bytes[..], crate::DEFAULT_MAX_MESSAGE_SIZE)
        .unwrap()
}

pub(crate) fn read_all(store: &dyn TestStore, id: MessageId) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while let Some(chunk) = store.read_chunk(id, chunks.len() as u32).unwrap() {
        chunks.push(chunk);
    }
    chunks
}

/// The one integer (not NULL) that `sql` selects.
pub(crate) fn count(store: &dyn TestStore, sql: &str) -> i64 {
    store
        .scalar(sql)
        .unwrap_or_else(|| panic!("NULL from {sql}"))
}

pub(crate) fn uids(store: &dyn TestStore, account: AccountId) -> Vec<String> {
    let list = store.list_messages(account).unwrap();
    list.into_iter().map(|m| m.uid).collect()
}

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

pub(crate) fn exec(store: &dyn TestStore, sql: &str) -> u64 {
    store.exec(sql)
}

pub(crate) fn retrieved_at(store: &dyn TestStore, id: MessageId) -> Option<i64> {
    store.scalar(&format!(
        "SELECT retrieved_at FROM messages WHERE id = {id}"
    ))
}

pub(crate) fn ids(store: &dyn TestStore, account: AccountId) -> Vec<MessageId> {
    let list = store.list_messages(account).unwrap();
    list.into_iter().map(|m| m.id).collect()
}

/// Whether `lock` alone is renewed for an hour (`Store::renew_locks`).
pub(crate) fn renewed(store: &dyn TestStore, lock: &MaildropLock) -> bool {
    store.renew_locks(std::slice::from_ref(lock), HOUR).unwrap() == [true]
}

/// A lock whose lease is over, then taken over by another holder.
pub(crate) fn lapsed_and_taken_over(
    store: &dyn TestStore,
    account: AccountId,
) -> (MaildropLock, MaildropLock) {
    let lapsed = store
        .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
        .unwrap();
    let thief = store.lock_maildrop(account, "b@h:2#1", HOUR).unwrap();
    (lapsed, thief)
}

fn accounts_create_lookup_duplicate(f: &dyn Fixture) {
    let store = f.open();
    let alice = store
        .create_account(&name("Alice@Example.ORG"), "$argon2id$a")
        .unwrap();
    let bob = store
        .create_account(&name("bob@example.org"), "$b")
        .unwrap();
    let plain = store.create_account(&name("alice"), "$c").unwrap();
    assert_eq!(count(&*store, "SELECT count(*) FROM domains"), 1);
    assert_ne!(alice, plain);

    let found = store.account(&name("ALICE@example.org")).unwrap().unwrap();
    assert_eq!(found.id, alice);
    assert_eq!(found.name.to_string(), "alice@example.org");
    assert_eq!(found.password_hash, "$argon2id$a");
    assert!(found.created_at > 1_600_000_000);
    assert_eq!(store.account(&name("Alice")).unwrap().unwrap().id, plain);
    assert!(store.account(&name("carol")).unwrap().is_none());
    assert!(store.account(&name("alice@example.com")).unwrap().is_none());

    for dup in ["alice@EXAMPLE.org", "ALICE"] {
        assert!(matches!(
            store.create_account(&name(dup), "$x"),
            Err(StoreError::AccountExists(n)) if n == dup.to_lowercase()
        ));
    }

    store
        .set_password(&name("bob@example.org"), "$new")
        .unwrap();
    let bob_row = store.account(&name("bob@example.org")).unwrap().unwrap();
    assert_eq!((bob_row.id, bob_row.password_hash.as_str()), (bob, "$new"));
    assert!(matches!(
        store.set_password(&name("carol"), "$x"),
        Err(StoreError::NoSuchAccount(_))
    ));

    deliver(&*store, &name("bob@example.org"), b"Subject: hi\n\nbody\n");
    let list = store.list_accounts().unwrap();
    let names: Vec<String> = list.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["alice", "alice@example.org", "bob@example.org"]);
    assert_eq!((list[2].messages, list[2].octets), (1, 21));
    let summary = store.account_summary(&name("bob@example.org")).unwrap();
    assert_eq!(summary, list[2]);
    assert!(matches!(
        store.account_summary(&name("carol")),
        Err(StoreError::NoSuchAccount(_))
    ));
}

fn deliver_multi_chunk_round_trip(f: &dyn Fixture) {
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
fn wire_form_ends_with_a_short_slice(f: &dyn Fixture) {
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
fn first_chunks_of_many_messages_in_one_call(f: &dyn Fixture) {
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
fn stat_and_snapshot_listing_leave_out_later_deliveries(f: &dyn Fixture) {
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

fn failed_deliveries_leave_nothing(f: &dyn Fixture) {
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

fn generated_uids_are_never_reused(f: &dyn Fixture) {
    let to = name("user@example.org");
    let mut seen = HashSet::new();
    let mut fresh = |uid: String| {
        assert_eq!(uid.len(), 16, "{uid}");
        assert!(
            uid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
            "{uid}"
        );
        assert!(seen.insert(uid.clone()), "UID {uid} given twice");
    };
    {
        let store = f.open();
        let account = store.create_account(&to, "h").unwrap();
        for i in 0..3 {
            let d = deliver(&*store, &to, format!("Message {i}\n").as_bytes());
            assert!(d.uid.starts_with(&format!("{:08X}", i + 1)));
            fresh(d.uid);
        }
        // Delete the newest message: its UID must not come back.
        let newest = store.list_messages(account).unwrap()[2].id;
        let lock = store.lock_maildrop(account, "t@h:1#1", HOUR).unwrap();
        store.commit_update(&lock, &[newest], &[]).unwrap();
        store.release_lock(&lock).unwrap();
        fresh(deliver(&*store, &to, b"after deletion\n").uid);
    }
    // After reopening.
    let store = f.open();
    fresh(deliver(&*store, &to, b"after reopening\n").uid);
    let before = uids(&*store, store.account(&to).unwrap().unwrap().id);
    let old_validity = before[0][8..].to_owned();
    // After deleting and re-creating the account under the same name.
    store.delete_account(&to).unwrap();
    let account = store.create_account(&to, "h").unwrap();
    for _ in 0..3 {
        fresh(deliver(&*store, &to, b"after re-creation\n").uid);
    }
    let after = uids(&*store, account);
    assert!(after.iter().all(|uid| uid[8..] != old_validity));
}

fn generated_uid_skips_imported_one(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let validity: i64 = count(&*store, "SELECT uidvalidity FROM accounts");
    let taken = format!("{:08X}{validity:08X}", 1);
    store
        .import(
            &to,
            &mut [ImportMessage {
                bytes: b"x\n".to_vec(),
                uid: Some(taken.clone()),
                uid_claimed: false,
            }]
            .into_iter(),
        )
        .unwrap();
    let d = deliver(&*store, &to, b"y\n");
    assert_eq!(d.uid, format!("{:08X}{validity:08X}", 2));
    assert_eq!(uids(&*store, account), [taken, d.uid]);
}

/// An `X-UIDL:` header is the sender's claim (issue 15 item 12): an invalid, over-long or
/// taken one gets a generated UID instead of failing the import, and is reported; a valid
/// free one is kept, even in the generated form, which later deliveries then skip.
fn claimed_uids_that_are_invalid_or_taken_give_way(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let validity: i64 = count(&*store, "SELECT uidvalidity FROM accounts");
    let delivered = deliver(&*store, &to, b"first\n");
    let next = format!("{:08X}{validity:08X}", 2);
    let msg = |uid: &str, claimed: bool| ImportMessage {
        bytes: b"Subject: old\n\nkept\n".to_vec(),
        uid: Some(uid.to_owned()),
        uid_claimed: claimed,
    };
    let long = "x".repeat(71);
    let batch = vec![
        msg(&next, true),
        msg("qpop-1", true),
        msg("has space", true),
        msg("qpop-1", true),
        msg(&delivered.uid, true),
        msg(&long, true),
        msg("recorded", false),
    ];
    let done = store.import(&to, &mut batch.into_iter()).unwrap();
    let refused: Vec<bool> = done.iter().map(|d| d.claim_refused).collect();
    assert_eq!(refused, [false, false, true, true, true, true, false]);
    assert_eq!(
        (&*done[0].uid, &*done[1].uid, &*done[6].uid),
        (&*next, "qpop-1", "recorded")
    );
    // The generated ones skip the claimed generated-form UID, as a later delivery does.
    for d in &done[2..6] {
        assert_eq!(d.uid.len(), 16, "{}", d.uid);
    }
    let later = deliver(&*store, &to, b"later\n");
    let mut all = uids(&*store, account);
    assert_eq!(all.len(), 9);
    assert!(all.contains(&later.uid));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "UIDs are unique");
    // A recorded UID still fails the import when taken.
    assert!(matches!(
        store.import(&to, &mut vec![msg("recorded", false)].into_iter()),
        Err(StoreError::DuplicateUid(u)) if u == "recorded"
    ));
}

fn locks_exclude_release_expire_and_fence(f: &dyn Fixture) {
    let store = f.open();
    let account = store.create_account(&name("user"), "h").unwrap();
    let one = holder::holder_string(1);
    let two = holder::holder_string(2);

    let first = store.lock_maildrop(account, &one, HOUR).unwrap();
    assert_eq!(
        (first.account, first.holder.as_str()),
        (account, one.as_str())
    );
    assert!(matches!(
        store.lock_maildrop(account, &two, HOUR),
        Err(StoreError::Locked { holder }) if holder == one
    ));
    let shown = store.account_summary(&name("user")).unwrap().lock.unwrap();
    assert_eq!(shown.holder, one);
    assert!(shown.expires_at >= shown.acquired_at + 3599);
    assert!(renewed(&*store, &first));

    // Release, then another holder gets it with a new token.
    store.release_lock(&first).unwrap();
    store.release_lock(&first).unwrap();
    assert!(store.list_accounts().unwrap()[0].lock.is_none());
    let second = store.lock_maildrop(account, &two, HOUR).unwrap();
    assert!(second.token > first.token);
    assert!(!renewed(&*store, &first));
    // A stale release must not free someone else's lock.
    store.release_lock(&first).unwrap();
    assert!(store.lock_maildrop(account, &one, HOUR).is_err());
    store.release_lock(&second).unwrap();

    // A zero-length lease is expired at once and is not reported.
    let brief = store.lock_maildrop(account, &one, Duration::ZERO).unwrap();
    assert!(store.account_summary(&name("user")).unwrap().lock.is_none());
    let third = store.lock_maildrop(account, &two, HOUR).unwrap();
    assert!(third.token > brief.token);
    store.release_lock(&third).unwrap();

    // A holder on this host whose process is gone is taken over before expiry.
    let host = holder::hostname().unwrap();
    let dead = format!("pop3d@{host}:{}#9", 0x7FFF_FFF0);
    let ghost = store.lock_maildrop(account, &dead, HOUR).unwrap();
    let live = store.lock_maildrop(account, &one, HOUR).unwrap();
    assert!(live.token > ghost.token);
    // A holder on another host is respected until expiry.
    store.release_lock(&live).unwrap();
    let remote = format!("pop3d@elsewhere-{host}:{}#9", 0x7FFF_FFF0);
    store.lock_maildrop(account, &remote, HOUR).unwrap();
    assert!(matches!(
        store.lock_maildrop(account, &one, HOUR),
        Err(StoreError::Locked { holder }) if holder == remote
    ));

    assert!(matches!(
        store.lock_maildrop(account + 100, &one, HOUR),
        Err(StoreError::NoSuchAccount(_))
    ));
}

fn commit_update_deletions_are_exact_atomic_and_fenced(f: &dyn Fixture) {
    let store = f.open();
    let (to, other) = (name("user"), name("other"));
    let account = store.create_account(&to, "h").unwrap();
    let other_account = store.create_account(&other, "h").unwrap();
    let ids: Vec<MessageId> = (0..4)
        .map(|i| deliver(&*store, &to, &vec![b'a' + i; CHUNK_SIZE + 1]).id)
        .collect();
    let foreign = deliver(&*store, &other, b"not yours\n").id;

    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    store
        .commit_update(&lock, &[ids[0], ids[2], foreign], &[])
        .unwrap();
    let left: Vec<MessageId> = store
        .list_messages(account)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, [ids[1], ids[3]]);
    assert!(store.read_chunk(ids[0], 0).unwrap().is_none());
    assert_eq!(store.list_messages(other_account).unwrap().len(), 1);
    assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 5);
    store.release_lock(&lock).unwrap();

    // Lock lost to another holder: nothing is deleted.
    let lapsed = store
        .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
        .unwrap();
    assert!(matches!(
        store.commit_update(&lapsed, &[ids[1]], &[]),
        Err(StoreError::LockLost)
    ));
    let thief = store.lock_maildrop(account, "b@h:2#1", HOUR).unwrap();
    assert!(matches!(
        store.commit_update(&lapsed, &[ids[1], ids[3]], &[]),
        Err(StoreError::LockLost)
    ));
    assert!(!renewed(&*store, &lapsed));
    assert_eq!(store.list_messages(account).unwrap().len(), 2);
    store.commit_update(&thief, &[], &[]).unwrap();
}

fn delivery_while_locked_shows_in_next_listing(f: &dyn Fixture) {
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

fn import_keeps_uids_and_is_all_or_nothing(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let msg = |uid: Option<&str>| ImportMessage {
        bytes: b"Subject: old\n\nkept\n".to_vec(),
        uid: uid.map(str::to_owned),
        uid_claimed: false,
    };
    let long = "x".repeat(71);
    let bad: Vec<(Vec<ImportMessage>, &str)> = vec![
        (vec![msg(Some("ok1")), msg(Some(""))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some("has space"))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some("tab\t"))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some("é"))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some(&long))], "invalid"),
        (
            vec![msg(Some("ok1")), msg(None), msg(Some("ok1"))],
            "duplicate",
        ),
        (
            vec![
                msg(Some("ok1")),
                ImportMessage {
                    bytes: Vec::new(),
                    uid: None,
                    uid_claimed: false,
                },
            ],
            "empty",
        ),
    ];
    for (batch, kind) in bad {
        let err = store.import(&to, &mut batch.into_iter()).unwrap_err();
        let ok = match kind {
            "invalid" => matches!(err, StoreError::InvalidUid { .. }),
            "duplicate" => matches!(&err, StoreError::DuplicateUid(u) if u == "ok1"),
            _ => matches!(err, StoreError::InvalidMessage(_)),
        };
        assert!(ok, "{kind}: {err:?}");
        assert!(store.list_messages(account).unwrap().is_empty());
        assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 0);
    }

    let max = "~".repeat(70);
    let done = store
        .import(
            &to,
            &mut vec![msg(Some("UID-1")), msg(None), msg(Some(&max))].into_iter(),
        )
        .unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(done[0].uid, "UID-1");
    assert_eq!(done[1].uid.len(), 16);
    assert_eq!(done[2].uid, max);
    assert!(done.iter().all(|d| d.size == 22));
    let listed = store.list_messages(account).unwrap();
    assert_eq!(uids(&*store, account), [&*done[0].uid, &done[1].uid, &max]);
    assert_eq!((listed[0].header_octets, listed[0].body_lines), (16, 1));
    assert_eq!(
        store.read_chunk(done[0].id, 0).unwrap().unwrap(),
        b"Subject: old\r\n\r\nkept\r\n"
    );
    assert!(matches!(
        store.import(&to, &mut vec![msg(Some("new")), msg(Some("UID-1"))].into_iter()),
        Err(StoreError::DuplicateUid(u)) if u == "UID-1"
    ));
    assert_eq!(store.list_messages(account).unwrap().len(), 3);
    // The same UID is fine in another maildrop.
    let other = name("other");
    store.create_account(&other, "h").unwrap();
    store
        .import(&other, &mut vec![msg(Some("UID-1"))].into_iter())
        .unwrap();
}

fn delete_account_refuses_while_locked(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user@example.org");
    let account = store.create_account(&to, "h").unwrap();
    deliver(&*store, &to, &vec![b'z'; CHUNK_SIZE * 2]);
    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    assert!(matches!(
        store.delete_account(&to),
        Err(StoreError::Locked { holder }) if holder == "a@h:1#1"
    ));
    assert!(store.account(&to).unwrap().is_some());
    store.release_lock(&lock).unwrap();

    // An expired lock does not block deletion.
    store
        .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
        .unwrap();
    store.delete_account(&to).unwrap();
    assert!(store.account(&to).unwrap().is_none());
    for table in ["messages", "chunks", "locks", "accounts"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(count(&*store, &sql), 0, "{table}");
    }
    assert!(matches!(
        store.delete_account(&to),
        Err(StoreError::NoSuchAccount(_))
    ));
    assert!(matches!(
        store.deliver(&to, &mut &b"x\n"[..], 100),
        Err(StoreError::NoSuchAccount(_))
    ));
}

fn concurrent_deliveries_from_shared_store(f: &dyn Fixture) {
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

fn policy_round_trip(f: &dyn Fixture) {
    let store = f.open();
    let (alice, bob) = (name("alice@example.org"), name("bob"));
    store.create_account(&alice, "h").unwrap();
    store.create_account(&bob, "h").unwrap();
    let policy = |login_delay, expire| AccountPolicy {
        login_delay,
        expire,
    };
    assert_eq!(
        store.account(&alice).unwrap().unwrap().policy,
        AccountPolicy::default()
    );
    let cases = [
        policy(Some(0), Some(Expire::Never)),
        policy(Some(300), Some(Expire::Days(0))),
        policy(Some(u32::MAX), Some(Expire::Days(u32::MAX))),
        policy(None, Some(Expire::Days(30))),
        policy(Some(1), None),
        AccountPolicy::default(),
    ];
    for want in cases {
        store.set_policy(&alice, want).unwrap();
        assert_eq!(store.account(&alice).unwrap().unwrap().policy, want);
        assert_eq!(store.account_summary(&alice).unwrap().policy, want);
        let list = store.list_accounts().unwrap();
        assert_eq!(list[0].policy, want);
        // The other account is untouched.
        assert_eq!(list[1].policy, AccountPolicy::default());
    }
    assert!(matches!(
        store.set_policy(&name("carol"), AccountPolicy::default()),
        Err(StoreError::NoSuchAccount(n)) if n == "carol"
    ));
}

/// RFC 2449 section 6.5 and 8.1.2: LOGIN-DELAY as a persisted token bucket.
fn login_delay_token_bucket(f: &dyn Fixture) {
    let store = f.open();
    let [free, strict, bursty, fine] =
        ["free", "strict", "bursty", "fine"].map(|n| store.create_account(&name(n), "h").unwrap());
    let two = Duration::from_secs(2);
    let refused = |verdict| match verdict {
        LoginDelay::TooSoon { retry_after } => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= two,
                "{retry_after:?}"
            );
            retry_after
        }
        LoginDelay::Allowed => panic!("allowed too soon"),
    };
    let state = |account: AccountId| store.login_state(account);

    // No delay: always allowed, the login still recorded.
    assert_eq!(
        store.account_summary(&name("free")).unwrap().last_login,
        None
    );
    for _ in 0..5 {
        let v = store.check_login_delay(free, Duration::ZERO, 0).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
    }
    let last = store.account_summary(&name("free")).unwrap().last_login;
    assert!(last.is_some_and(|t| (now() - t).abs() <= 1), "{last:?}");

    // Delay 2 s, no burst: the second login is too soon, and a refusal changes nothing.
    assert_eq!(
        store.check_login_delay(strict, two, 0).unwrap(),
        LoginDelay::Allowed
    );
    let before = state(strict);
    refused(store.check_login_delay(strict, two, 0).unwrap());
    assert_eq!(state(strict), before);

    // Burst 2: three quick logins, then a refusal.
    for _ in 0..3 {
        let v = store.check_login_delay(bursty, two, 2).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
    }
    refused(store.check_login_delay(bursty, two, 2).unwrap());

    // The state survives reopening the store.
    drop(store);
    let store = f.open();
    refused(store.check_login_delay(strict, two, 0).unwrap());
    refused(store.check_login_delay(bursty, two, 2).unwrap());

    // Two seconds later (simulated), one token is back; much later, the bucket is full
    // but holds no more than 1 + burst.
    exec(&*store, "UPDATE accounts SET last_login = last_login - 2");
    for account in [strict, bursty] {
        let burst = if account == strict { 0 } else { 2 };
        let v = store.check_login_delay(account, two, burst).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
        refused(store.check_login_delay(account, two, burst).unwrap());
    }
    exec(
        &*store,
        "UPDATE accounts SET last_login = last_login - 1000",
    );
    for _ in 0..3 {
        let v = store.check_login_delay(bursty, two, 2).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
    }
    refused(store.check_login_delay(bursty, two, 2).unwrap());
    // A zero delay allows even an account that a delay would refuse.
    assert_eq!(
        store.check_login_delay(bursty, Duration::ZERO, 2).unwrap(),
        LoginDelay::Allowed
    );

    // Sub-second precision although last_login holds whole seconds.
    let short = Duration::from_millis(300);
    assert_eq!(
        store.check_login_delay(fine, short, 0).unwrap(),
        LoginDelay::Allowed
    );
    let wait = match store.check_login_delay(fine, short, 0).unwrap() {
        LoginDelay::TooSoon { retry_after } => retry_after,
        LoginDelay::Allowed => panic!("allowed too soon"),
    };
    assert!(
        wait > Duration::from_millis(200) && wait <= short,
        "{wait:?}"
    );
    std::thread::sleep(wait + Duration::from_millis(30));
    assert_eq!(
        store.check_login_delay(fine, short, 0).unwrap(),
        LoginDelay::Allowed
    );
    assert!(matches!(
        store.check_login_delay(fine, short, 0).unwrap(),
        LoginDelay::TooSoon { retry_after } if retry_after > Duration::from_millis(200)
    ));

    assert!(matches!(
        store.check_login_delay(fine + 100, two, 0),
        Err(StoreError::NoSuchAccount(_))
    ));
}

/// Two stores on one file stand for two processes: the bucket is never overdrawn.
fn login_delay_is_atomic_across_connections(f: &dyn Fixture) {
    let first = f.open();
    let second = f.open();
    let account = first.create_account(&name("user"), "h").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &first } else { &second });
            std::thread::spawn(move || {
                (0..3)
                    .filter(|_| {
                        store.check_login_delay(account, HOUR, 2).unwrap() == LoginDelay::Allowed
                    })
                    .count()
            })
        })
        .collect();
    let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(allowed, 3);
}

fn commit_update_marks_first_retrieval_once_and_deletes(f: &dyn Fixture) {
    let store = f.open();
    let (to, other) = (name("user"), name("other"));
    let account = store.create_account(&to, "h").unwrap();
    let other_account = store.create_account(&other, "h").unwrap();
    let msgs: Vec<MessageId> = (0..4)
        .map(|i| deliver(&*store, &to, format!("message {i}\n").as_bytes()).id)
        .collect();
    let foreign = deliver(&*store, &other, b"not yours\n").id;

    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    store
        .commit_update(&lock, &[msgs[2]], &[msgs[0], msgs[1], msgs[2], foreign])
        .unwrap();
    for id in [msgs[0], msgs[1]] {
        let at = retrieved_at(&*store, id);
        assert!(at.is_some_and(|t| (now() - t).abs() <= 1), "{at:?}");
    }
    assert_eq!(retrieved_at(&*store, msgs[3]), None);
    assert_eq!(retrieved_at(&*store, foreign), None);
    assert_eq!(ids(&*store, account), [msgs[0], msgs[1], msgs[3]]);
    assert_eq!(ids(&*store, other_account), [foreign]);

    // A later retrieval does not move the first retrieval time.
    exec(
        &*store,
        &format!(
            "UPDATE messages SET retrieved_at = 1000 WHERE id = {}",
            msgs[0]
        ),
    );
    store.commit_update(&lock, &[], &[msgs[0]]).unwrap();
    assert_eq!(retrieved_at(&*store, msgs[0]), Some(1000));
    store.commit_update(&lock, &[], &[]).unwrap();
    store.release_lock(&lock).unwrap();

    // Fencing: after a takeover nothing is marked or deleted.
    let (lapsed, thief) = lapsed_and_taken_over(&*store, account);
    assert!(matches!(
        store.commit_update(&lapsed, &[msgs[1]], &[msgs[3]]),
        Err(StoreError::LockLost)
    ));
    assert!(matches!(
        store.commit_update(&lapsed, &[], &[msgs[3]]),
        Err(StoreError::LockLost)
    ));
    assert_eq!(retrieved_at(&*store, msgs[3]), None);
    assert_eq!(ids(&*store, account), [msgs[0], msgs[1], msgs[3]]);
    store.commit_update(&thief, &[msgs[1]], &[msgs[3]]).unwrap();
    assert!(retrieved_at(&*store, msgs[3]).is_some());
    assert_eq!(ids(&*store, account), [msgs[0], msgs[3]]);
}

/// RFC 2449 section 6.7: EXPIRE removes messages retrieved at least `retention` ago.
fn expire_messages_deletes_only_old_retrieved_ones(f: &dyn Fixture) {
    let store = f.open();
    let (to, other) = (name("user"), name("other"));
    let account = store.create_account(&to, "h").unwrap();
    let other_account = store.create_account(&other, "h").unwrap();
    let day = 86_400;
    let [never, old, recent, just_now] = ["never", "old", "recent", "just now"]
        .map(|s| deliver(&*store, &to, &vec![b'x'; CHUNK_SIZE + s.len()]).id);
    let foreign = deliver(&*store, &other, b"retrieved long ago\n").id;
    let age = |id: MessageId, secs: i64| {
        exec(
            &*store,
            &format!(
                "UPDATE messages SET retrieved_at = {} WHERE id = {id}",
                now() - secs
            ),
        )
    };
    age(old, 10 * day);
    age(recent, day);
    age(just_now, 0);
    age(foreign, 10 * day);

    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    let five_days = Duration::from_secs(5 * 86_400);
    assert_eq!(store.expire_messages(&lock, five_days).unwrap(), 1);
    assert_eq!(ids(&*store, account), [never, recent, just_now]);
    assert!(store.read_chunk(old, 0).unwrap().is_none());
    assert_eq!(ids(&*store, other_account), [foreign]);
    // A retention reaching before 1970 expires nothing.
    assert_eq!(store.expire_messages(&lock, Duration::MAX).unwrap(), 0);
    // Retention zero: every retrieved message goes, never-retrieved ones stay.
    assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 2);
    assert_eq!(ids(&*store, account), [never]);
    assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 2 + 1);
    assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 0);
    store.release_lock(&lock).unwrap();

    // Fencing: after a takeover nothing expires.
    age(never, 10 * day);
    let (lapsed, thief) = lapsed_and_taken_over(&*store, account);
    assert!(matches!(
        store.expire_messages(&lapsed, Duration::ZERO),
        Err(StoreError::LockLost)
    ));
    assert_eq!(ids(&*store, account), [never]);
    assert_eq!(store.expire_messages(&thief, five_days).unwrap(), 1);
    assert!(ids(&*store, account).is_empty());
}

/// RFC 6856 section 3: the flag is stored at delivery and import.
fn utf8_headers_flag_is_stored(f: &dyn Fixture) {
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

fn secrets_are_stored_replaced_together_and_not_debugged(f: &dyn Fixture) {
    let store = f.open();
    let n = name("sec");
    let secrets = AccountSecrets {
        scram_sha256: Some("SCRAM-SHA-256$4096:c2FsdA==$a:b".into()),
        legacy_secret: Some("hunter2".into()),
        cram_md5_states: Some("cd3ba7de".into()),
    };
    store
        .create_account_with(&n, "$argon2id$x", &secrets)
        .unwrap();
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(acct.secrets, secrets);
    assert!(!format!("{acct:?}").contains("hunter2"));
    assert!(!format!("{acct:?}").contains("cd3ba7de"));
    let summary = store.account_summary(&n).unwrap();
    assert!(summary.legacy && summary.cram_md5);
    // A new password drops secrets derived from the old one.
    store.set_password(&n, "$argon2id$y").unwrap();
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(acct.secrets, AccountSecrets::default());
    let summary = store.account_summary(&n).unwrap();
    assert!(!summary.legacy && !summary.cram_md5);
}

fn account_import_is_all_or_nothing(f: &dyn Fixture) {
    let store = f.open();
    let states = |s: &str| AccountSecrets {
        cram_md5_states: Some(s.into()),
        ..AccountSecrets::default()
    };
    store
        .create_account_with(&name("old"), "$argon2id$old", &states("o"))
        .unwrap();
    let batch = |hash: &str| {
        ["new@example.org", "old"].map(|n| AccountImport {
            name: name(n),
            password_hash: hash.into(),
            secrets: states(hash),
        })
    };
    // Refused on the second account: the first one is not created either.
    assert!(matches!(
        store.import_accounts(&batch("!1"), OnExisting::Refuse),
        Err(StoreError::AccountExists(n)) if n == "old"
    ));
    assert!(store.account(&name("new@example.org")).unwrap().is_none());
    assert_eq!(
        store.account(&name("old")).unwrap().unwrap().password_hash,
        "$argon2id$old"
    );
    // Replacing: one created (with its domain), one updated in place.
    let old_id = store.account(&name("old")).unwrap().unwrap().id;
    assert_eq!(
        store
            .import_accounts(&batch("!2"), OnExisting::Replace)
            .unwrap(),
        vec![true, false]
    );
    let old = store.account(&name("old")).unwrap().unwrap();
    assert_eq!((old.id, old.password_hash.as_str()), (old_id, "!2"));
    assert_eq!(old.secrets, states("!2"));
    let new = store.account(&name("new@example.org")).unwrap().unwrap();
    assert_eq!(new.secrets, states("!2"));
    assert_eq!(
        store.list_domains().unwrap(),
        vec![("example.org".into(), 1)]
    );
}

fn rehash_replaces_only_the_hash_it_was_given(f: &dyn Fixture) {
    let store = f.open();
    let n = name("rehash");
    let secrets = AccountSecrets {
        scram_sha256: Some("s".into()),
        ..AccountSecrets::default()
    };
    let id = store.create_account_with(&n, "$old", &secrets).unwrap();
    assert!(store.rehash_password(id, "$old", "$new").unwrap());
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(
        (acct.password_hash.as_str(), acct.secrets),
        ("$new", secrets)
    );
    // A stale "old" hash (the password was changed meanwhile) changes nothing.
    assert!(!store.rehash_password(id, "$old", "$other").unwrap());
    assert_eq!(store.account(&n).unwrap().unwrap().password_hash, "$new");
}

fn scram_keys_are_added_only_where_missing_and_for_the_same_hash(f: &dyn Fixture) {
    let store = f.open();
    let n = name("scramless");
    let id = store.create_account(&n, "$h").unwrap();
    // A password changed meanwhile: nothing stored.
    assert!(!store
        .add_scram_keys(id, "$other", "SCRAM-SHA-256$x")
        .unwrap());
    assert!(store.add_scram_keys(id, "$h", "SCRAM-SHA-256$a").unwrap());
    // Keys already there are never replaced this way.
    assert!(!store.add_scram_keys(id, "$h", "SCRAM-SHA-256$b").unwrap());
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(
        acct.secrets.scram_sha256.as_deref(),
        Some("SCRAM-SHA-256$a")
    );
    assert_eq!(acct.password_hash, "$h");
    // Replaced (another iteration count) only from the keys and hash still stored.
    assert!(!store
        .replace_scram_keys(id, "$h", "SCRAM-SHA-256$x", "SCRAM-SHA-256$c")
        .unwrap());
    assert!(!store
        .replace_scram_keys(id, "$other", "SCRAM-SHA-256$a", "SCRAM-SHA-256$c")
        .unwrap());
    assert!(store
        .replace_scram_keys(id, "$h", "SCRAM-SHA-256$a", "SCRAM-SHA-256$c")
        .unwrap());
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(
        acct.secrets.scram_sha256.as_deref(),
        Some("SCRAM-SHA-256$c")
    );
}

fn domains_list_add_and_delete_with_their_accounts(f: &dyn Fixture) {
    let store = f.open();
    store.create_account(&name("a@example.org"), "$x").unwrap();
    store.create_account(&name("b@example.org"), "$x").unwrap();
    store.create_account(&name("c@other.test"), "$x").unwrap();
    store.add_domain("empty.test").unwrap();
    assert!(matches!(
        store.add_domain("empty.test"),
        Err(StoreError::DomainExists(_))
    ));
    assert_eq!(
        store.list_domains().unwrap(),
        vec![
            ("empty.test".to_string(), 0),
            ("example.org".to_string(), 2),
            ("other.test".to_string(), 1)
        ]
    );
    let id = store.account(&name("a@example.org")).unwrap().unwrap().id;
    let lock = store
        .lock_maildrop(id, "pop3d@elsewhere:1#1", Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        store.delete_domain("example.org"),
        Err(StoreError::Locked { .. })
    ));
    store.release_lock(&lock).unwrap();
    let gone = store.delete_domain("example.org").unwrap();
    assert_eq!(gone, vec![name("a@example.org"), name("b@example.org")]);
    assert!(store.account(&name("b@example.org")).unwrap().is_none());
    assert!(store.account(&name("c@other.test")).unwrap().is_some());
    assert!(matches!(
        store.delete_domain("example.org"),
        Err(StoreError::NoSuchDomain(_))
    ));
}

fn nodes_heartbeat_keep_the_operators_state_age_and_go(f: &dyn Fixture) {
    let store = f.open();
    assert!(store.list_nodes().unwrap().is_empty());
    assert_eq!(
        store.node_heartbeat("node-b", "10.0.0.2:110", 3).unwrap(),
        NodeState::Up
    );
    assert_eq!(
        store.node_heartbeat("node-a", "10.0.0.1:110", 0).unwrap(),
        NodeState::Up
    );
    let listed = store.list_nodes().unwrap();
    let ids: Vec<&str> = listed.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    assert_eq!(
        (
            listed[1].address.as_str(),
            listed[1].state,
            listed[1].sessions
        ),
        ("10.0.0.2:110", NodeState::Up, 3)
    );

    // An operator drains node-b: its heartbeats (from this store or another process's, as
    // after a restart) keep that state and report it back, while address and count follow.
    store.set_node_state("node-b", NodeState::Draining).unwrap();
    let restarted = f.open();
    assert_eq!(
        restarted
            .node_heartbeat("node-b", "10.0.0.9:1110", 7)
            .unwrap(),
        NodeState::Draining
    );
    let b = node(&*store, "node-b");
    assert_eq!(
        (b.address.as_str(), b.state, b.sessions),
        ("10.0.0.9:1110", NodeState::Draining, 7)
    );
    assert_eq!(node(&*store, "node-a").state, NodeState::Up);

    // The age grows by the clock and a heartbeat resets it.
    std::thread::sleep(Duration::from_millis(300));
    let old = node(&*store, "node-a").heartbeat_age;
    assert!(old >= Duration::from_millis(250), "{old:?}");
    assert!(old < Duration::from_secs(30), "{old:?}");
    store.node_heartbeat("node-a", "10.0.0.1:110", 1).unwrap();
    let fresh = node(&*store, "node-a").heartbeat_age;
    assert!(fresh < old, "{fresh:?} {old:?}");

    store.set_node_state("node-b", NodeState::Up).unwrap();
    assert_eq!(
        store.node_heartbeat("node-b", "10.0.0.2:110", 0).unwrap(),
        NodeState::Up
    );

    // Unknown nodes are errors, and nothing is created by them.
    assert!(matches!(
        store.set_node_state("node-x", NodeState::Draining),
        Err(StoreError::NoSuchNode(id)) if id == "node-x"
    ));
    assert!(matches!(
        store.remove_node("node-x"),
        Err(StoreError::NoSuchNode(_))
    ));
    assert_eq!(store.list_nodes().unwrap().len(), 2);

    // Removed, a node is gone until its next heartbeat, which brings it back Up.
    store.set_node_state("node-a", NodeState::Draining).unwrap();
    store.remove_node("node-a").unwrap();
    let ids: Vec<String> = store
        .list_nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["node-b"]);
    assert!(matches!(
        store.remove_node("node-a"),
        Err(StoreError::NoSuchNode(_))
    ));
    assert_eq!(
        store.node_heartbeat("node-a", "10.0.0.1:110", 0).unwrap(),
        NodeState::Up
    );
}

fn node(store: &dyn TestStore, id: &str) -> NodeInfo {
    let nodes = store.list_nodes().unwrap();
    nodes.into_iter().find(|n| n.id == id).unwrap()
}

fn renew_locks_renews_held_leases_and_reports_lost_ones(f: &dyn Fixture) {
    let store = f.open();
    let [a, b, c] = ["a", "b", "c"].map(|n| store.create_account(&name(n), "h").unwrap());
    assert!(store.renew_locks(&[], HOUR).unwrap().is_empty());
    let held = store
        .lock_maildrop(a, "pop3d@elsewhere:1#1", Duration::from_secs(10))
        .unwrap();
    let (lost, thief) = lapsed_and_taken_over(&*store, b);
    let released = store.lock_maildrop(c, "pop3d@elsewhere:1#3", HOUR).unwrap();
    store.release_lock(&released).unwrap();
    // The right token under another holder's name is not that holder's lease.
    let forged = MaildropLock {
        holder: "pop3d@elsewhere:9#9".into(),
        ..held.clone()
    };
    let batch = [held.clone(), lost.clone(), released.clone(), forged];
    assert_eq!(
        store.renew_locks(&batch, HOUR).unwrap(),
        [true, false, false, false]
    );
    // The held lease now runs an hour; the lost ones were not revived or touched.
    let shown = store.account_summary(&name("a")).unwrap().lock.unwrap();
    assert!(shown.expires_at >= now() + 3500, "{shown:?}");
    assert!(store.account_summary(&name("c")).unwrap().lock.is_none());
    assert!(matches!(
        store.lock_maildrop(c, "pop3d@elsewhere:1#4", HOUR),
        Ok(lock) if lock.token > released.token
    ));
    assert_eq!(
        store
            .account_summary(&name("b"))
            .unwrap()
            .lock
            .unwrap()
            .holder,
        thief.holder
    );
    assert!(matches!(
        store.commit_update(&lost, &[], &[]),
        Err(StoreError::LockLost)
    ));
    store.commit_update(&held, &[], &[]).unwrap();
    store.commit_update(&thief, &[], &[]).unwrap();
    // The same answers for one lock alone, and in any order.
    assert_eq!(
        store.renew_locks(&[lost, held], HOUR).unwrap(),
        [false, true]
    );
}

fn quota_resolves_account_then_domain_then_global(f: &dyn Fixture) {
    let store = f.open();
    let (alice, bob, carol) = (name("alice@a.org"), name("bob@a.org"), name("carol"));
    for n in [&alice, &bob, &carol] {
        store.create_account(n, "h").unwrap();
    }
    let quota = |n: &AccountName| store.account_summary(n).unwrap().quota;
    let setting = |messages, octets| QuotaSetting { messages, octets };
    // Nothing set anywhere: unlimited.
    assert_eq!(quota(&alice), Quota::default());
    assert_eq!(
        store.quota_setting(QuotaScope::Global).unwrap(),
        setting(Limit::Unlimited, Limit::Unlimited)
    );
    assert_eq!(
        store.quota_setting(QuotaScope::Account(&alice)).unwrap(),
        setting(Limit::Default, Limit::Default)
    );

    let global = store
        .set_quota(
            QuotaScope::Global,
            Some(Limit::At(100)),
            Some(Limit::At(1 << 20)),
        )
        .unwrap();
    assert_eq!(global, setting(Limit::At(100), Limit::At(1 << 20)));
    let both = Quota {
        messages: Some(100),
        octets: Some(1 << 20),
    };
    assert_eq!((quota(&alice), quota(&carol)), (both, both));

    // The domain's default beats the global one, for the limit it sets.
    let set = store
        .set_quota(QuotaScope::Domain("a.org"), Some(Limit::At(10)), None)
        .unwrap();
    assert_eq!(set, setting(Limit::At(10), Limit::Default));
    assert_eq!(quota(&alice).messages, Some(10));
    assert_eq!(quota(&alice).octets, Some(1 << 20));
    assert_eq!(quota(&carol), both);

    // The account's own beats both; `Unlimited` there lifts the limit for it alone.
    store
        .set_quota(
            QuotaScope::Account(&alice),
            Some(Limit::Unlimited),
            Some(Limit::At(5)),
        )
        .unwrap();
    assert_eq!(
        quota(&alice),
        Quota {
            messages: None,
            octets: Some(5)
        }
    );
    assert_eq!(quota(&bob).messages, Some(10));
    let list = store.list_accounts().unwrap();
    assert_eq!(list[0].quota, quota(&alice));

    // Back to the defaults, level by level.
    store
        .set_quota(
            QuotaScope::Account(&alice),
            Some(Limit::Default),
            Some(Limit::Default),
        )
        .unwrap();
    assert_eq!(quota(&alice).messages, Some(10));
    store
        .set_quota(
            QuotaScope::Global,
            Some(Limit::Default),
            Some(Limit::Unlimited),
        )
        .unwrap();
    assert_eq!(quota(&carol), Quota::default());

    assert!(matches!(
        store.set_quota(QuotaScope::Domain("b.org"), Some(Limit::At(1)), None),
        Err(StoreError::NoSuchDomain(d)) if d == "b.org"
    ));
    assert!(matches!(
        store.quota_setting(QuotaScope::Account(&name("dave"))),
        Err(StoreError::NoSuchAccount(_))
    ));
}

fn over_quota(result: crate::Result<impl std::fmt::Debug>, account: &str, what: &str) {
    match result {
        Err(StoreError::OverQuota { account: a, detail }) => {
            assert_eq!(a, account);
            assert!(detail.starts_with(what), "{detail}");
        }
        other => panic!("expected OverQuota, got {other:?}"),
    }
}

fn quota_refuses_deliveries_and_imports_whole(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    store
        .set_quota(
            QuotaScope::Account(&to),
            Some(Limit::At(3)),
            Some(Limit::At(44)),
        )
        .unwrap();
    // 11 octets each ("message N" and CRLF): three fit, exactly at the message limit.
    for i in 0..3 {
        deliver(&*store, &to, format!("message {i}\n").as_bytes());
    }
    let mut fourth: &[u8] = b"message 3\n";
    over_quota(store.deliver(&to, &mut fourth, 1000), "user", "messages");
    assert_eq!(uids(&*store, account).len(), 3);
    assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 3);

    // Octets: the fourth now fits exactly, then not one more message of 3 octets.
    store
        .set_quota(QuotaScope::Account(&to), Some(Limit::Unlimited), None)
        .unwrap();
    deliver(&*store, &to, b"message 3\n");
    let mut more: &[u8] = b"x\n";
    over_quota(store.deliver(&to, &mut more, 1000), "user", "octets");
    assert_eq!(store.account_summary(&to).unwrap().octets, 44);

    // An import is refused whole when all of it does not fit, and names the account.
    store
        .set_quota(QuotaScope::Account(&to), None, Some(Limit::At(60)))
        .unwrap();
    let batch = || {
        (0..3).map(|i| ImportMessage {
            bytes: format!("import {i}\r\n").into_bytes(),
            uid: None,
            uid_claimed: false,
        })
    };
    over_quota(store.import(&to, &mut batch()), "user", "octets");
    assert_eq!(uids(&*store, account).len(), 4);
    // Unless the quota is ignored (`popadm import --ignore-quota`).
    let imported = store
        .import_with(&to, &mut batch(), QuotaCheck::Ignore)
        .unwrap();
    assert_eq!(imported.len(), 3);
    assert_eq!(uids(&*store, account).len(), 7);
    // Now over, even an empty import of nothing new is fine, but no delivery is.
    store.import(&to, &mut std::iter::empty()).unwrap();
    let mut one: &[u8] = b"x\n";
    over_quota(store.deliver(&to, &mut one, 1000), "user", "octets");
    // Raising the limit lets mail in again.
    store
        .set_quota(QuotaScope::Account(&to), None, Some(Limit::Default))
        .unwrap();
    deliver(&*store, &to, b"x\n");
}

/// Deliveries from several threads (on PostgreSQL several connections, as several nodes'
/// LMTP listeners or `popadm deliver` processes would be) into a maildrop with room for ten:
/// exactly ten are stored, the rest refused, never one more.
fn concurrent_deliveries_cannot_overshoot_the_quota(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user@quota.example");
    let account = store.create_account(&to, "h").unwrap();
    store
        .set_quota(
            QuotaScope::Domain("quota.example"),
            Some(Limit::At(10)),
            None,
        )
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (store, to) = (f.open(), to.clone());
            std::thread::spawn(move || {
                let mut outcomes = (0, 0);
                for i in 0..6 {
                    let body = format!("thread {t} message {i}\n");
                    match store.deliver(&to, &mut body.as_bytes(), 1000) {
                        Ok(_) => outcomes.0 += 1,
                        Err(StoreError::OverQuota { .. }) => outcomes.1 += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                outcomes
            })
        })
        .collect();
    let (mut stored, mut refused) = (0, 0);
    for thread in threads {
        let (s, r) = thread.join().unwrap();
        stored += s;
        refused += r;
    }
    assert_eq!((stored, refused), (10, 14));
    assert_eq!(uids(&*store, account).len(), 10);
}

/// The batch of logins the server writes every few seconds: the latest per account wins, an
/// older record never replaces a newer one, a deleted account is skipped, and LOGIN-DELAY's
/// token bucket is not touched.
fn logins_are_recorded_in_one_batch_latest_wins(f: &dyn Fixture) {
    let store = f.open();
    let (alice, bob, gone) = (name("alice"), name("bob"), name("gone"));
    let [a, b, g] = [&alice, &bob, &gone].map(|n| store.create_account(n, "h").unwrap());
    store.delete_account(&gone).unwrap();
    let login = |account, at, peer: &str, mechanism: &str| LoginRecord {
        account,
        at,
        source: LoginSource {
            peer: peer.into(),
            mechanism: mechanism.into(),
        },
    };
    assert_eq!(store.account_summary(&alice).unwrap().last_login, None);
    store
        .record_logins(&[
            login(a, 1_000, "192.0.2.1", "USER"),
            login(b, 2_000, "2001:db8::2", "SCRAM-SHA-256"),
            login(a, 3_000, "192.0.2.3", "APOP"),
            login(a, 2_500, "192.0.2.9", "PLAIN"),
            login(g, 3_000, "192.0.2.4", "USER"),
        ])
        .unwrap();
    let summary = store.account_summary(&alice).unwrap();
    assert_eq!(summary.last_login, Some(3_000));
    assert_eq!(
        summary.last_login_from,
        Some(LoginSource {
            peer: "192.0.2.3".into(),
            mechanism: "APOP".into()
        })
    );
    let list = store.list_accounts().unwrap();
    assert_eq!(list[1].last_login, Some(2_000));
    assert_eq!(
        list[1]
            .last_login_from
            .as_ref()
            .map(|s| s.mechanism.as_str()),
        Some("SCRAM-SHA-256")
    );
    // A late batch with an older login changes nothing.
    store
        .record_logins(&[login(a, 2_000, "192.0.2.5", "USER")])
        .unwrap();
    assert_eq!(
        store.account_summary(&alice).unwrap().last_login,
        Some(3_000)
    );
    assert_eq!(store.login_state(a), (None, None));
    store.record_logins(&[]).unwrap();
}
