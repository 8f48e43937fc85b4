//! Tests of this backend alone; the shared suite is `crate::tests`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rusqlite::{params, Connection};

use super::schema::MIGRATIONS;
use super::{SqliteStore, DB_FILE, MAX_IDLE};
use crate::common::to_i64;
use crate::normalise;
use crate::tests::{deliver, ids, name, read_all, retrieved_at, TempDir, TestStore, HOUR};
use crate::{AccountId, AccountPolicy, Expire, LoginDelay, Store, StoreError};

impl TestStore for SqliteStore {
    fn exec(&self, sql: &str) -> u64 {
        self.with_conn(|c| Ok(c.execute(sql, [])?)).unwrap() as u64
    }

    fn scalar(&self, sql: &str) -> Option<i64> {
        self.with_conn(|c| Ok(c.query_row(sql, [], |r| r.get(0))?))
            .unwrap()
    }

    fn login_state(&self, account: AccountId) -> (Option<i64>, Option<f64>) {
        self.with_conn(|c| {
            Ok(c.query_row(
                "SELECT last_login, login_tokens FROM accounts WHERE id = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .unwrap()
    }

    fn pool_within_bounds(&self) -> bool {
        self.idle.lock().unwrap().len() <= MAX_IDLE
    }
}

fn setup() -> (TempDir, SqliteStore) {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).unwrap();
    (dir, store)
}

#[test]
fn open_creates_private_dir_and_file() {
    let dir = TempDir::new();
    let nested = dir.0.join("a/b");
    drop(SqliteStore::open(&nested).unwrap());
    assert!(nested.join(DB_FILE).is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&nested).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
    // Reopening an up-to-date database applies nothing and works.
    let store = SqliteStore::open(&nested).unwrap();
    store.create_account(&name("x"), "h").unwrap();
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new();
    drop(SqliteStore::open(&dir.0).unwrap());
    let path = dir.0.join(DB_FILE);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&dir.0),
        Err(StoreError::SchemaTooNew {
            found: 999,
            supported
        }) if supported == MIGRATIONS.len() as i64
    ));
}

#[test]
fn errors_map_to_store_errors() {
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(matches!(StoreError::from(busy), StoreError::Busy));
    let full =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    assert!(StoreError::from(full).is_transient());
    let io = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
        None,
    );
    assert!(matches!(StoreError::from(io), StoreError::Io(_)));
    let other = StoreError::from(rusqlite::Error::QueryReturnedNoRows);
    assert!(matches!(other, StoreError::Backend(_)));
    assert!(!other.is_transient());
}

#[test]
fn migrates_a_v1_database() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let (bytes, summary) = normalise(b"Subject: caf\xc3\xa9\n\nkept\n");
    {
        let conn = Connection::open(dir.0.join(DB_FILE)).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO accounts (local, domain_id, password_hash, uidvalidity, created_at)
             VALUES ('old', NULL, '$h', 1700000000, 1700000000)",
            [],
        )
        .unwrap();
        let account = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO messages (account_id, uid, size, header_octets, body_lines, chunks,
                                   delivered_at)
             VALUES (?1, 'OLD-1', ?2, ?3, ?4, 1, 1700000000)",
            params![
                account,
                to_i64(summary.size),
                to_i64(summary.header_octets),
                to_i64(summary.body_lines)
            ],
        )
        .unwrap();
        let message = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO chunks (message_id, seq, data) VALUES (?1, 0, ?2)",
            params![message, bytes],
        )
        .unwrap();
    }

    let store = SqliteStore::open(&dir.0).unwrap();
    let version: i64 = store
        .with_conn(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let old = name("old");
    let account = store.account(&old).unwrap().unwrap();
    assert_eq!(account.policy, AccountPolicy::default());
    let summary_row = store.account_summary(&old).unwrap();
    assert_eq!((summary_row.messages, summary_row.last_login), (1, None));
    // v6 counted the messages from before.
    let stat = store.maildrop_stat(account.id).unwrap();
    assert_eq!((stat.messages, stat.octets), (1, summary.size));
    // Existing messages are not re-read: their UTF-8 flag stays false.
    let listed = store.list_messages(account.id).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].uid.as_str(), listed[0].utf8_headers),
        ("OLD-1", false)
    );
    assert_eq!(read_all(&store, listed[0].id).concat(), bytes);
    // v8 rewrites nothing: the message from before keeps its plain form.
    assert!(!listed[0].wire);
    assert_eq!(retrieved_at(&store, listed[0].id), None);
    // The sweep of EXPIRE uses the new index.
    let plan: String = store
        .with_conn(|c| {
            Ok(c.query_row(
                "EXPLAIN QUERY PLAN DELETE FROM messages
                 WHERE account_id = 1 AND retrieved_at IS NOT NULL AND retrieved_at <= 5",
                [],
                |r| r.get(3),
            )?)
        })
        .unwrap();
    assert!(plan.contains("messages_retrieved"), "{plan}");

    // And everything works on the migrated database.
    let fresh = deliver(&store, &old, b"Subject: caf\xc3\xa9\n\nnew\n");
    let listed = store.list_messages(account.id).unwrap();
    assert!(listed[1].utf8_headers && listed[1].wire);
    assert_ne!(fresh.uid, "OLD-1");
    let policy = AccountPolicy {
        login_delay: Some(60),
        expire: Some(Expire::Days(3)),
    };
    store.set_policy(&old, policy).unwrap();
    assert_eq!(store.account(&old).unwrap().unwrap().policy, policy);
    assert_eq!(
        store
            .check_login_delay(account.id, Duration::from_secs(60), 0)
            .unwrap(),
        LoginDelay::Allowed
    );
    let lock = store.lock_maildrop(account.id, "a@h:1#1", HOUR).unwrap();
    store.commit_update(&lock, &[], &[listed[0].id]).unwrap();
    assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 1);
    assert_eq!(ids(&store, account.id), [fresh.id]);
    drop(store);
    // Reopening applies nothing more.
    SqliteStore::open(&dir.0).unwrap();
}

#[cfg(unix)]
#[test]
fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = setup();
    store.create_account(&name("p"), "$x").unwrap();
    for file in [
        "maildrops.sqlite3",
        "maildrops.sqlite3-wal",
        "maildrops.sqlite3-shm",
    ] {
        let mode = std::fs::metadata(dir.0.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let mode = std::fs::metadata(&dir.0).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// `set_mmap_size` reaches the pooled connection and every one opened after it, and reads go
/// on as before through the map (a message of several chunks, read back whole).
#[test]
fn a_memory_map_is_set_on_every_connection() {
    let (_dir, store) = setup();
    let mmap = |store: &SqliteStore| {
        store
            .with_conn(|c| Ok(c.pragma_query_value(None, "mmap_size", |r| r.get::<_, i64>(0))?))
            .unwrap()
    };
    assert_eq!(mmap(&store), 0);
    store.set_mmap_size(64 << 20).unwrap();
    assert_eq!(mmap(&store), 64 << 20);
    // Two at once: the second is a new connection.
    let nested = store.with_conn(|_| Ok(mmap(&store))).unwrap();
    assert_eq!(nested, 64 << 20);
    let to = name("mapped");
    store.create_account(&to, "h").unwrap();
    let body = b".dot\nline\n".repeat(40_000);
    let delivered = deliver(&store, &to, &body);
    let stored = read_all(&store, delivered.id).concat();
    assert_eq!(crate::from_wire(&stored), normalise(&body).0);
}
