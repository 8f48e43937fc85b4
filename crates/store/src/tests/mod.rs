//! The store test suite, run against every backend: each test is a function of a
//! [`Fixture`] (a database a test may open several stores on), instantiated by [`suite!`]
//! once for SQLite and once for PostgreSQL. The PostgreSQL half runs on a throw-away cluster
//! ([`testbed::pg`]) and prints a skip where PostgreSQL is not installed.
//!
//! Backend-specific tests (files and modes, migrations from older schemas, error mapping,
//! lease fencing across nodes) live next to their backend.
//!
//! This file holds the fixtures, the helpers the tests (and the backends' own tests) share,
//! and the [`suite!`] list; the tests themselves live in one submodule per area.

#![allow(clippy::unwrap_used)]

mod accounts;
mod locks;
mod maildrop;
mod nodes;
mod policy;
mod quota;
mod uids;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{AccountId, AccountName, Delivered, MaildropLock, MessageId, SqliteStore, Store};

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

/// Instantiates each named test (`module: [name, ...]`, a function of that submodule) for every
/// backend: `sqlite::NAME` and `postgres::NAME`.
macro_rules! suite {
    ($($module:ident: [$($test:ident),* $(,)?]),* $(,)?) => {
        mod sqlite {
            $($(
                #[test]
                fn $test() {
                    super::$module::$test(&super::SqliteFixture::new());
                }
            )*)*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $($(
                #[test]
                fn $test() {
                    if let Some(fixture) = super::PostgresFixture::new(stringify!($test)) {
                        super::$module::$test(&fixture);
                    }
                }
            )*)*
        }
    };
}

suite!(
    accounts: [
        accounts_create_lookup_duplicate,
        delete_account_refuses_while_locked,
        secrets_are_stored_replaced_together_and_not_debugged,
        account_import_is_all_or_nothing,
        rehash_replaces_only_the_hash_it_was_given,
        scram_keys_are_added_only_where_missing_and_for_the_same_hash,
        domains_list_add_and_delete_with_their_accounts,
    ],
    maildrop: [
        deliver_multi_chunk_round_trip,
        wire_form_ends_with_a_short_slice,
        first_chunks_of_many_messages_in_one_call,
        stat_and_snapshot_listing_leave_out_later_deliveries,
        failed_deliveries_leave_nothing,
        delivery_while_locked_shows_in_next_listing,
        concurrent_deliveries_from_shared_store,
        utf8_headers_flag_is_stored,
    ],
    uids: [
        generated_uids_are_never_reused,
        generated_uid_skips_imported_one,
        claimed_uids_that_are_invalid_or_taken_give_way,
        import_keeps_uids_and_is_all_or_nothing,
    ],
    locks: [
        locks_exclude_release_expire_and_fence,
        commit_update_deletions_are_exact_atomic_and_fenced,
        commit_update_marks_first_retrieval_once_and_deletes,
        renew_locks_renews_held_leases_and_reports_lost_ones,
    ],
    nodes: [
        nodes_heartbeat_keep_the_operators_state_age_and_go,
    ],
    policy: [
        policy_round_trip,
        login_delay_token_bucket,
        login_delay_is_atomic_across_connections,
        expire_messages_deletes_only_old_retrieved_ones,
        logins_are_recorded_in_one_batch_latest_wins,
    ],
    quota: [
        quota_resolves_account_then_domain_then_global,
        quota_refuses_deliveries_and_imports_whole,
        concurrent_deliveries_cannot_overshoot_the_quota,
    ],
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
