//! The SQL both backends run, written once: accounts, domains, deliveries and imports, maildrop
//! locks, the UPDATE state and the node table are each one generic function over [`Sql`], the
//! small dialect trait that a SQLite and a PostgreSQL transaction implement, and
//! [`Store`] is implemented once for every [`Backend`].
//!
//! What the dialect supplies:
//! - the primitives: run a statement, map its rows (through [`rows::Columns`]);
//! - parameters written `$1`, `$2`, ... in every statement: PostgreSQL's own syntax, and for
//!   SQLite a named parameter, which its implementation binds by that name;
//! - SQL fragments where the two differ: now in the backend's own clock ([`Sql::NOW`]), the
//!   lease-liveness predicate ([`Sql::LEASE_LIVE`]), row locks ([`Sql::row_lock`]);
//! - one statement over a list of ids ([`Sql::execute_for_ids`], [`Sql::rows_for_ids`]: an
//!   array on PostgreSQL, a loop on SQLite);
//! - the two operations whose SQL differs as a whole, each with its reason at the
//!   implementation: taking and renewing a lease.
//!
//! A statement is a string built from constant fragments, never from values (those are
//! always parameters), so each backend prepares every statement once per connection and
//! keeps it.
//!
//! Transactions are the backend's ([`Backend::write`], [`Backend::read`]): SQLite's writes
//! start with `BEGIN IMMEDIATE`, PostgreSQL's run in READ COMMITTED with the row locks
//! named here.

pub(crate) mod accounts;
pub(crate) mod locks;
pub(crate) mod maildrop;
pub(crate) mod nodes;
pub(crate) mod quota;
pub(crate) mod rows;

use std::io::Read;
use std::time::Duration;

use crate::{
    Account, AccountId, AccountImport, AccountName, AccountPolicy, AccountSecrets, AccountSummary,
    Delivered, ImportMessage, Limit, Listing, LoginDelay, LoginRecord, MaildropLock, MaildropStat,
    MessageId, MessageMeta, NodeInfo, NodeState, OnExisting, QuotaCheck, QuotaScope, QuotaSetting,
    Result, Store,
};

/// A value bound to a statement parameter: what `rusqlite` and (with the `postgres` feature)
/// `postgres` can both send. Integers are `i64` (PostgreSQL's `bigint`), on both.
pub trait Param: rusqlite::types::ToSql + PgParam {
    /// The value as SQLite binds it.
    fn sqlite(&self) -> &dyn rusqlite::types::ToSql;
}

impl<T: rusqlite::types::ToSql + PgParam> Param for T {
    fn sqlite(&self) -> &dyn rusqlite::types::ToSql {
        self
    }
}

/// What PostgreSQL needs of a [`Param`].
#[cfg(feature = "postgres")]
pub trait PgParam: postgres::types::ToSql + Sync {
    /// The value as PostgreSQL binds it.
    fn postgres(&self) -> &(dyn postgres::types::ToSql + Sync);
}

#[cfg(feature = "postgres")]
impl<T: postgres::types::ToSql + Sync> PgParam for T {
    fn postgres(&self) -> &(dyn postgres::types::ToSql + Sync) {
        self
    }
}

/// What PostgreSQL needs of a [`Param`] (nothing, in a build without it).
#[cfg(not(feature = "postgres"))]
pub trait PgParam {}
#[cfg(not(feature = "postgres"))]
impl<T> PgParam for T {}

/// The parameters of one statement, `$1` first.
pub type Params<'a> = &'a [&'a dyn Param];

/// How a statement locks the rows it reads. PostgreSQL runs READ COMMITTED and locks rows
/// explicitly where a decision depends on what was read; SQLite's write transactions
/// (`BEGIN IMMEDIATE`) already exclude each other, so it locks nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    None,
    /// Keeps the row from being deleted, without waiting for writers (`FOR KEY SHARE`).
    KeyShare,
    /// Writes to the row's maildrop (`FOR NO KEY UPDATE`).
    Write,
    /// Deletes or replaces the row (`FOR UPDATE`).
    Update,
}

/// One transaction of a backend: the dialect the shared SQL is written against.
pub trait Sql {
    /// A result row.
    type Row<'r>: rows::Columns;

    /// SQL expression: now in whole unix seconds (rounded down), by the backend's clock.
    const NOW: &'static str;
    /// SQL condition on a `locks` row: its lease is not over. The one place that says what a
    /// live lease is, for each backend.
    const LEASE_LIVE: &'static str;
    /// SQL expressions: a lease's `acquired_at` and `expires_at` (table alias `l`) in unix
    /// seconds.
    const LEASE_ACQUIRED: &'static str;
    const LEASE_EXPIRES: &'static str;
    /// SQL expression: the value of `nodes.heartbeat_at` for a heartbeat now.
    const HEARTBEAT_NOW: &'static str;
    /// SQL expression: milliseconds since `nodes.heartbeat_at`, never negative.
    const HEARTBEAT_AGE_MILLIS: &'static str;

    /// SQL condition: `id` is the id (or one of the ids) bound as `$1` by
    /// [`Sql::execute_for_ids`].
    const IS_ID: &'static str;

    /// The clause that locks what a `SELECT` reads (empty for none); `table` is the alias of
    /// the table whose rows are locked.
    fn row_lock(lock: RowLock, table: &str) -> String;

    /// Runs one statement; the rows it changed.
    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64>;
    /// Every row of one statement through `map`.
    fn rows<T>(
        &mut self,
        sql: &str,
        params: Params<'_>,
        map: impl FnMut(&Self::Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>>;
    /// Now as fractional unix seconds by the backend's clock (LOGIN-DELAY's token bucket).
    fn now_f64(&mut self) -> Result<f64>;

    /// Runs `sql` for every id of `ids`, bound as `$1` and compared with [`Sql::IS_ID`];
    /// `$2` is `account`. The rows changed in all.
    fn execute_for_ids(&mut self, sql: &str, ids: &[i64], account: AccountId) -> Result<u64>;
    /// Every row of `sql` run for the ids of `ids` (bound and compared as in
    /// [`Sql::execute_for_ids`], `$2` is `account`) through `map`: one statement on
    /// PostgreSQL, none for no ids.
    fn rows_for_ids<T>(
        &mut self,
        sql: &str,
        ids: &[i64],
        account: AccountId,
        map: impl FnMut(&Self::Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>>;

    /// Takes a lease as `new` says, replacing the account's lease row only if `replace` (the
    /// caller saw one, not live). The new fencing token, or `None` when another transaction
    /// inserted a lease row first.
    fn take_lease(&mut self, new: &NewLease<'_>, replace: bool) -> Result<Option<i64>>;
    /// Extends each lease of `locks` still held (holder and token match, lease live) by
    /// `lease`; whether each was.
    fn renew_leases(&mut self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>>;

    /// The first row of `sql` through `map`, if there is one.
    fn row<T>(
        &mut self,
        sql: &str,
        params: Params<'_>,
        map: impl FnMut(&Self::Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        Ok(self.rows(sql, params, map)?.into_iter().next())
    }

    /// The first column of the first row, if any.
    fn value<T: rows::ColumnValue>(&mut self, sql: &str, params: Params<'_>) -> Result<Option<T>> {
        self.row(sql, params, |row| rows::Columns::column(row, 0))
    }
}

/// A lease to take: [`Sql::take_lease`].
pub struct NewLease<'a> {
    pub account: AccountId,
    pub holder: &'a str,
    /// The node of the store taking it, where the backend records one.
    pub node: Option<&'a str>,
    pub lease: Duration,
}

/// A store whose transactions speak [`Sql`]: SQLite or PostgreSQL. Every such store is a
/// [`Store`], through the one implementation below.
pub trait Backend: Send + Sync + 'static {
    type Tx<'t>: Sql;
    /// Runs `f` in one write transaction, committed when it succeeds, rolled back otherwise.
    fn write<T>(&self, f: impl FnOnce(&mut Self::Tx<'_>) -> Result<T>) -> Result<T>;
    /// Runs `f` in one transaction that only reads (on SQLite, one snapshot for all its
    /// statements; on PostgreSQL, READ COMMITTED like every transaction).
    fn read<T>(&self, f: impl FnOnce(&mut Self::Tx<'_>) -> Result<T>) -> Result<T>;
    /// Runs `f`, which reads with one statement, where the backend finds it cheapest: by
    /// default in a [`Backend::read`] transaction. `f` may run more than once (a backend
    /// retries it on a fresh connection when the first was lost).
    fn single<T>(&self, f: impl FnMut(&mut Self::Tx<'_>) -> Result<T>) -> Result<T> {
        self.read(f)
    }
    /// Runs `f`, which writes with one statement that may safely run twice, where the backend
    /// finds it cheapest: by default in a [`Backend::write`] transaction.
    fn write_single<T>(&self, f: impl FnMut(&mut Self::Tx<'_>) -> Result<T>) -> Result<T> {
        self.write(f)
    }
    /// The node whose leases this store takes, where the backend records it.
    fn node(&self) -> Option<&str>;
}

impl<B: Backend> Store for B {
    fn create_account_with(
        &self,
        name: &AccountName,
        hash: &str,
        secrets: &AccountSecrets,
    ) -> Result<AccountId> {
        self.write(|tx| accounts::create(tx, name, hash, secrets))
    }

    fn delete_account(&self, name: &AccountName) -> Result<()> {
        self.write(|tx| accounts::delete(tx, name))
    }

    fn set_secrets(&self, name: &AccountName, hash: &str, secrets: &AccountSecrets) -> Result<()> {
        self.write(|tx| accounts::set_secrets(tx, name, hash, secrets))
    }

    fn import_accounts(&self, all: &[AccountImport], existing: OnExisting) -> Result<Vec<bool>> {
        self.write(|tx| accounts::import(tx, all, existing))
    }

    fn account(&self, name: &AccountName) -> Result<Option<Account>> {
        self.single(|tx| accounts::account(tx, name))
    }

    fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        self.read(|tx| accounts::summaries(tx))
    }

    fn account_summary(&self, name: &AccountName) -> Result<AccountSummary> {
        self.read(|tx| accounts::summary(tx, name))
    }

    fn rehash_password(&self, account: AccountId, old_hash: &str, new_hash: &str) -> Result<bool> {
        self.write(|tx| accounts::rehash_password(tx, account, old_hash, new_hash))
    }

    fn add_scram_keys(&self, account: AccountId, password_hash: &str, scram: &str) -> Result<bool> {
        self.write(|tx| accounts::add_scram_keys(tx, account, password_hash, scram))
    }

    fn replace_scram_keys(&self, id: AccountId, hash: &str, old: &str, new: &str) -> Result<bool> {
        self.write(|tx| accounts::replace_scram_keys(tx, id, hash, old, new))
    }

    fn list_domains(&self) -> Result<Vec<(String, u64)>> {
        self.read(|tx| accounts::domains(tx))
    }

    fn add_domain(&self, domain: &str) -> Result<()> {
        self.write(|tx| accounts::add_domain(tx, domain))
    }

    fn domain_accounts(&self, domain: &str) -> Result<Vec<AccountName>> {
        self.read(|tx| accounts::domain_members(tx, domain, RowLock::None))
    }

    fn delete_domain(&self, domain: &str) -> Result<Vec<AccountName>> {
        self.write(|tx| accounts::delete_domain(tx, domain))
    }

    fn set_policy(&self, name: &AccountName, policy: AccountPolicy) -> Result<()> {
        self.write(|tx| accounts::set_policy(tx, name, policy))
    }

    fn check_login_delay(&self, id: AccountId, delay: Duration, burst: u32) -> Result<LoginDelay> {
        self.write(|tx| accounts::check_login_delay(tx, id, delay, burst))
    }

    fn deliver(&self, to: &AccountName, message: &mut dyn Read, max: u64) -> Result<Delivered> {
        self.write(|tx| maildrop::deliver(tx, to, message, max))
    }

    fn import_with(
        &self,
        name: &AccountName,
        messages: &mut dyn Iterator<Item = ImportMessage>,
        check: QuotaCheck,
    ) -> Result<Vec<Delivered>> {
        self.write(|tx| maildrop::import(tx, name, messages, check))
    }

    fn quota_setting(&self, scope: QuotaScope<'_>) -> Result<QuotaSetting> {
        self.read(|tx| quota::setting(tx, scope))
    }

    fn set_quota(
        &self,
        scope: QuotaScope<'_>,
        messages: Option<Limit>,
        octets: Option<Limit>,
    ) -> Result<QuotaSetting> {
        self.write(|tx| quota::set(tx, scope, messages, octets))
    }

    fn record_logins(&self, logins: &[LoginRecord]) -> Result<()> {
        if logins.is_empty() {
            return Ok(());
        }
        self.write(|tx| accounts::record_logins(tx, logins))
    }

    fn lock_maildrop(&self, id: AccountId, holder: &str, lease: Duration) -> Result<MaildropLock> {
        locks::lock_maildrop(self, id, holder, lease)
    }

    fn renew_locks(&self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>> {
        if locks.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, and renewing twice is renewing once.
        self.write_single(|tx| tx.renew_leases(locks, lease))
    }

    fn release_lock(&self, lock: &MaildropLock) -> Result<()> {
        // One statement, by token: a second run deletes nothing more.
        self.write_single(|tx| locks::release(tx, lock))
    }

    fn list_messages(&self, account: AccountId) -> Result<Vec<MessageMeta>> {
        self.read(|tx| maildrop::list(tx, account))
    }

    fn maildrop_stat(&self, account: AccountId) -> Result<MaildropStat> {
        self.single(|tx| maildrop::stat(tx, account))
    }

    fn list_snapshot(&self, account: AccountId, stat: &MaildropStat) -> Result<Listing> {
        self.single(|tx| maildrop::list_snapshot(tx, account, stat))
    }

    fn header_octets(&self, account: AccountId, message: MessageId) -> Result<Option<u64>> {
        self.single(|tx| maildrop::header_octets(tx, account, message))
    }

    fn read_chunk(&self, message: MessageId, index: u32) -> Result<Option<Vec<u8>>> {
        self.single(|tx| maildrop::read_chunk(tx, message, index))
    }

    fn read_chunks(&self, message: MessageId, first: u32, count: u32) -> Result<Vec<Vec<u8>>> {
        self.single(|tx| maildrop::read_chunks(tx, message, first, count))
    }

    fn read_first_chunks(
        &self,
        account: AccountId,
        messages: &[MessageId],
    ) -> Result<Vec<(MessageId, Vec<u8>)>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.single(|tx| maildrop::read_first_chunks(tx, account, messages))
    }

    fn commit_update(
        &self,
        lock: &MaildropLock,
        deleted: &[MessageId],
        retrieved: &[MessageId],
    ) -> Result<()> {
        self.write(|tx| maildrop::commit_update(tx, lock, deleted, retrieved))
    }

    fn expire_messages(&self, lock: &MaildropLock, retention: Duration) -> Result<u64> {
        self.write(|tx| maildrop::expire(tx, lock, retention))
    }

    fn node_heartbeat(&self, id: &str, address: &str, sessions: u64) -> Result<NodeState> {
        // One statement; a second run records the same heartbeat.
        self.write_single(|tx| nodes::heartbeat(tx, id, address, sessions))
    }

    fn list_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.single(|tx| nodes::list(tx))
    }

    fn set_node_state(&self, id: &str, state: NodeState) -> Result<()> {
        self.write(|tx| nodes::set_state(tx, id, state))
    }

    fn remove_node(&self, id: &str) -> Result<()> {
        self.write(|tx| nodes::remove(tx, id))
    }
}
