//! Tests of this backend alone; the shared suite is `crate::tests`.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::pool::MAX_CONNECTIONS;
use super::schema::MIGRATIONS;
use super::PostgresStore;
use crate::tests::{deliver, ids, name, Fixture, PostgresFixture, TestStore, HOUR};
use crate::{AccountId, MaildropLock, MessageId, Store, StoreError};

impl TestStore for PostgresStore {
    fn exec(&self, sql: &str) -> u64 {
        self.pool.tx(|tx| tx.execute_dynamic(sql)).unwrap()
    }

    fn scalar(&self, sql: &str) -> Option<i64> {
        self.pool
            .tx(|tx| Ok(tx.query_dynamic(sql)?[0].try_get(0)?))
            .unwrap()
    }

    fn login_state(&self, account: AccountId) -> (Option<i64>, Option<f64>) {
        self.pool
            .tx(|tx| {
                let rows = tx.query(
                    "SELECT last_login, login_tokens FROM accounts WHERE id = $1",
                    &[&account],
                )?;
                Ok((rows[0].try_get(0)?, rows[0].try_get(1)?))
            })
            .unwrap()
    }

    fn pool_within_bounds(&self) -> bool {
        self.pool.open_connections() <= MAX_CONNECTIONS
    }
}

fn fixture(test: &str) -> Option<PostgresFixture> {
    PostgresFixture::new(test)
}

/// The frozen-node case: a lease expires in database time while its holder sleeps,
/// another node takes the maildrop, and the sleeper's QUIT deletes nothing.
#[test]
fn expired_lease_taken_by_another_node_fences_the_first() {
    let Some(f) = fixture("expired_lease_taken_by_another_node_fences_the_first") else {
        return;
    };
    let (one, two) = (f.open_node(Some("node-1")), f.open_node(Some("node-2")));
    let to = name("user");
    let account = one.create_account(&to, "h").unwrap();
    let msgs: Vec<MessageId> = (0..3)
        .map(|i| deliver(&one, &to, format!("message {i}\n").as_bytes()).id)
        .collect();
    let frozen = one
        .lock_maildrop(account, "pop3d@node-1:1#1", HOUR)
        .unwrap();
    assert!(matches!(
        two.lock_maildrop(account, "pop3d@node-2:1#1", HOUR),
        Err(StoreError::Locked { holder }) if holder == "pop3d@node-1:1#1"
    ));
    // The lease runs out by the database's clock (the node's clock plays no part).
    let n = one.exec(&format!(
        "UPDATE locks SET expires_at = clock_timestamp() - interval '1 second'
         WHERE account_id = {account}"
    ));
    assert_eq!(n, 1);
    let thief = two
        .lock_maildrop(account, "pop3d@node-2:1#1", HOUR)
        .unwrap();
    assert!(thief.token > frozen.token);
    // The frozen node wakes up: its QUIT, EXPIRE and renewal are all refused.
    assert!(matches!(
        one.commit_update(&frozen, &msgs, &msgs),
        Err(StoreError::LockLost)
    ));
    assert!(matches!(
        one.expire_messages(&frozen, Duration::ZERO),
        Err(StoreError::LockLost)
    ));
    assert_eq!(
        one.renew_locks(std::slice::from_ref(&frozen), HOUR)
            .unwrap(),
        [false]
    );
    one.release_lock(&frozen).unwrap();
    assert_eq!(ids(&one, account), msgs);
    assert_eq!(
        one.scalar("SELECT count(*) FROM messages WHERE retrieved_at IS NOT NULL"),
        Some(0)
    );
    // The new holder's lease is intact and its own QUIT works.
    two.commit_update(&thief, &[msgs[0]], &[]).unwrap();
    assert_eq!(ids(&two, account), &msgs[1..]);
    // An expired lease that nobody took is refused too, without a takeover, and batch
    // renewal does not revive it.
    two.exec("UPDATE locks SET expires_at = clock_timestamp()");
    assert_eq!(
        two.renew_locks(std::slice::from_ref(&thief), HOUR).unwrap(),
        [false]
    );
    assert!(matches!(
        two.commit_update(&thief, &[msgs[1]], &[]),
        Err(StoreError::LockLost)
    ));
    assert_eq!(ids(&two, account), &msgs[1..]);
}

/// "Leases of a node that restarts are cleared at once": opening a store with a node id
/// deletes that node's leases and no other.
#[test]
fn a_restarted_node_clears_its_own_leases_only() {
    let Some(f) = fixture("a_restarted_node_clears_its_own_leases_only") else {
        return;
    };
    let one = f.open_node(Some("node-1"));
    let two = f.open_node(Some("node-2"));
    let [a, b] = ["a", "b"].map(|n| one.create_account(&name(n), "h").unwrap());
    let old = one.lock_maildrop(a, "pop3d@elsewhere:1#1", HOUR).unwrap();
    let kept = two.lock_maildrop(b, "pop3d@elsewhere:2#1", HOUR).unwrap();
    assert_eq!(
        one.scalar("SELECT count(*) FROM locks WHERE node = 'node-1'"),
        Some(1)
    );
    // node-1 restarts.
    drop(one);
    let one = f.open_node(Some("node-1"));
    let fresh = one.lock_maildrop(a, "pop3d@elsewhere:3#1", HOUR).unwrap();
    assert!(fresh.token > old.token);
    assert!(matches!(
        one.commit_update(&old, &[], &[]),
        Err(StoreError::LockLost)
    ));
    assert!(matches!(
        one.lock_maildrop(b, "pop3d@elsewhere:3#2", HOUR),
        Err(StoreError::Locked { .. })
    ));
    two.commit_update(&kept, &[], &[]).unwrap();
    // A store without a node id (popadm) clears nothing.
    drop(f.open_node(None));
    one.commit_update(&fresh, &[], &[]).unwrap();
}

/// Nodes racing for one maildrop: exactly one wins each round.
#[test]
fn concurrent_lock_attempts_from_nodes_have_one_winner() {
    let Some(f) = fixture("concurrent_lock_attempts_from_nodes_have_one_winner") else {
        return;
    };
    let nodes: Vec<Arc<PostgresStore>> = (0..4)
        .map(|i| Arc::new(f.open_node(Some(&format!("node-{i}")))))
        .collect();
    let account = nodes[0].create_account(&name("user"), "h").unwrap();
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(nodes.len()));
        let threads: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let (node, barrier) = (Arc::clone(node), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let holder = format!("pop3d@elsewhere:{i}#{round}");
                    match node.lock_maildrop(account, &holder, HOUR) {
                        Ok(lock) => Some(lock),
                        Err(StoreError::Locked { .. }) => None,
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        let won: Vec<MaildropLock> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(won.len(), 1, "round {round}");
        nodes[0].release_lock(&won[0]).unwrap();
    }
}

#[test]
fn newer_schema_is_refused_and_migration_runs_once() {
    let Some(f) = fixture("newer_schema_is_refused_and_migration_runs_once") else {
        return;
    };
    // Nodes starting together migrate once.
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let url = f.url();
            std::thread::spawn(move || PostgresStore::open(&url, None).map(drop))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let version = f
        .cluster
        .psql(&f.database, "SELECT version FROM schema_version")
        .unwrap();
    assert_eq!(version, MIGRATIONS.len().to_string());
    f.cluster
        .psql(&f.database, "UPDATE schema_version SET version = 999")
        .unwrap();
    assert!(matches!(
        PostgresStore::open(&f.url(), None),
        Err(StoreError::SchemaTooNew {
            found: 999,
            supported
        }) if supported == MIGRATIONS.len() as i64
    ));
}

/// PostgreSQL restarts (every connection cut): the pooled connections are found dead at
/// their next `BEGIN` and replaced, so no operation after the restart fails.
#[test]
fn a_database_restart_costs_no_later_operation() {
    let Some(mut cluster) = testbed::pg::own("a_database_restart_costs_no_later_operation") else {
        return;
    };
    cluster.create_database("restart").unwrap();
    let store = Arc::new(PostgresStore::open(&cluster.url("restart"), None).unwrap());
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    // Several connections in the pool, all of them cut by the restart.
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (store, to) = (Arc::clone(&store), to.clone());
            std::thread::spawn(move || deliver(&*store, &to, format!("before {i}\n").as_bytes()))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    cluster.restart().unwrap();
    for i in 0..8 {
        deliver(&*store, &to, format!("after {i}\n").as_bytes());
    }
    let lock = store
        .lock_maildrop(account, "pop3d@elsewhere:1#1", HOUR)
        .unwrap();
    assert_eq!(store.list_messages(account).unwrap().len(), 12);
    store.commit_update(&lock, &[], &[]).unwrap();
    assert!(store.pool.open_connections() <= MAX_CONNECTIONS);
}

/// A unix socket directory as the URL's host, percent-encoded (docs/admin-guide.md).
#[test]
fn unix_socket_urls_connect() {
    let Some(f) = fixture("unix_socket_urls_connect") else {
        return;
    };
    let dir = f.cluster.socket_dir().display().to_string();
    let url = format!(
        "postgres://postgres@{}:{}/{}",
        dir.replace('/', "%2F"),
        f.cluster.port(),
        f.database
    );
    let store = PostgresStore::open(&url, None).unwrap();
    store.create_account(&name("user"), "h").unwrap();
    assert!(f.open().account(&name("user")).unwrap().is_some());
}

#[test]
fn connection_failures_are_transient_and_urls_checked() {
    // Nothing listens on port 1 of loopback.
    let err =
        PostgresStore::open("postgres://u@127.0.0.1:1/db?connect_timeout=2", None).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let err = PostgresStore::open("postgres://u:secret@[bad", None).unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn lease_times_are_the_databases() {
    let Some(f) = fixture("lease_times_are_the_databases") else {
        return;
    };
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    store
        .lock_maildrop(account, "pop3d@elsewhere:1#1", Duration::from_millis(1500))
        .unwrap();
    let shown = store.account_summary(&to).unwrap().lock.unwrap();
    let db_now = store
        .scalar("SELECT floor(extract(epoch FROM clock_timestamp()))::bigint")
        .unwrap();
    assert!(
        (shown.acquired_at - db_now).abs() <= 1,
        "{shown:?} {db_now}"
    );
    assert!(shown.expires_at - shown.acquired_at <= 2, "{shown:?}");
    // Sub-second leases hold, then lapse by the database's clock.
    std::thread::sleep(Duration::from_millis(1700));
    assert!(store.account_summary(&to).unwrap().lock.is_none());
    store
        .lock_maildrop(account, "pop3d@elsewhere:2#1", HOUR)
        .unwrap();
}

#[test]
fn v4_counts_the_messages_from_before() {
    let Some(f) = fixture("v4_counts_the_messages_from_before") else {
        return;
    };
    let store = f.open();
    let account = store.create_account(&name("old"), "h").unwrap();
    let sizes: u64 = ["Subject: a\r\n\r\nx\r\n", "Subject: bb\r\n\r\nyy\r\n"]
        .iter()
        .map(|m| {
            store
                .deliver(&name("old"), &mut m.as_bytes(), 1 << 20)
                .unwrap();
            m.len() as u64
        })
        .sum();
    drop(store);
    // Back to v3: no kept counts, no trigger (and no v5 wire column).
    f.cluster
        .psql(
            &f.database,
            "DROP TRIGGER messages_counted ON messages; DROP FUNCTION messages_counted();
             ALTER TABLE accounts DROP COLUMN message_count, DROP COLUMN message_octets;
             ALTER TABLE messages DROP COLUMN wire;
             UPDATE schema_version SET version = 3",
        )
        .unwrap();
    let store = f.open();
    let stat = store.maildrop_stat(account).unwrap();
    assert_eq!((stat.messages, stat.octets), (2, sizes));
}

/// A session's reads of one statement each (the login's lookups, the listing, each RETR's
/// chunks) and the release of its lease are one round trip each: no `BEGIN` and `COMMIT`
/// around a lone statement, which PostgreSQL runs atomically by itself.
#[test]
fn single_statements_take_one_round_trip() {
    let Some(f) = fixture("single_statements_take_one_round_trip") else {
        return;
    };
    let store = f.open_node(Some("n1"));
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let message = deliver(&store, &to, b"Subject: x\r\n\r\nbody\r\n").id;
    let lock = store.lock_maildrop(account, "pop3d@n1:1#1", HOUR).unwrap();
    // Every statement prepared once on the one pooled connection.
    let each = |store: &PostgresStore| {
        let stat = store.maildrop_stat(account).unwrap();
        [
            store.account(&to).unwrap().is_some(),
            stat.messages == 1,
            store.list_snapshot(account, &stat).unwrap().len() == 1,
            store.read_chunks(message, 0, 4).unwrap().len() == 1,
            store
                .renew_locks(std::slice::from_ref(&lock), HOUR)
                .unwrap()
                == [true],
        ]
    };
    assert_eq!(each(&store), [true; 5]);
    let before = store.pool.round_trips();
    assert_eq!(each(&store), [true; 5]);
    assert_eq!(store.pool.round_trips() - before, 5);
    let before = store.pool.round_trips();
    store.release_lock(&lock).unwrap();
    assert!(
        store.pool.round_trips() - before <= 2,
        "release: one, or two if prepared"
    );
    assert!(store.lock_maildrop(account, "pop3d@n1:1#2", HOUR).is_ok());
}

/// A session's read-ahead of many messages' first chunks is one statement, one round trip
/// (its ids bound as one array), however many messages it asks for.
#[test]
fn a_read_ahead_of_many_messages_takes_one_round_trip() {
    let Some(f) = fixture("a_read_ahead_of_many_messages_takes_one_round_trip") else {
        return;
    };
    let store = f.open_node(Some("n1"));
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let messages: Vec<MessageId> = (0..16)
        .map(|i| {
            deliver(
                &store,
                &to,
                format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes(),
            )
            .id
        })
        .collect();
    // Prepared once on the one pooled connection.
    assert_eq!(
        store.read_first_chunks(account, &messages).unwrap().len(),
        16
    );
    let before = store.pool.round_trips();
    let chunks = store.read_first_chunks(account, &messages).unwrap();
    assert_eq!(store.pool.round_trips() - before, 1);
    assert_eq!(chunks.len(), 16);
    assert!(chunks
        .iter()
        .all(|(id, c)| messages.contains(id) && c.ends_with(b"body\r\n")));
    let before = store.pool.round_trips();
    assert!(store.read_first_chunks(account, &[]).unwrap().is_empty());
    assert_eq!(store.pool.round_trips(), before, "none for no ids");
}

/// A statement run without a transaction of its own on a connection the restart cut runs
/// again on a fresh one, as a transaction's failed `BEGIN` does.
#[test]
fn a_database_restart_costs_no_later_single_statement() {
    let Some(mut cluster) = testbed::pg::own("a_database_restart_costs_no_later_single_statement")
    else {
        return;
    };
    cluster.create_database("restart").unwrap();
    let store = Arc::new(PostgresStore::open(&cluster.url("restart"), None).unwrap());
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let message = deliver(&*store, &to, b"one\n").id;
    // Several connections in the pool, all of them cut by the restart.
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            std::thread::spawn(move || {
                store
                    .pool
                    .tx(|tx| {
                        barrier.wait();
                        tx.execute("SELECT 1", &[])
                    })
                    .unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.pool.open_connections() >= 4);
    cluster.restart().unwrap();
    for _ in 0..8 {
        assert_eq!(store.maildrop_stat(account).unwrap().messages, 1);
        assert_eq!(
            store.read_chunks(message, 0, 4).unwrap(),
            [b"one\r\n".to_vec()]
        );
    }
    assert!(store.pool.open_connections() <= MAX_CONNECTIONS);
}
