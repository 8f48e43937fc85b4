//! The maildrop store: accounts, their credentials (PHC strings) and their messages, behind one
//! [`Store`] trait so a second backend (PostgreSQL) can sit beside the embedded SQLite one.
//!
//! The store deals in stable message ids, sizes, UIDs and byte chunks. It knows nothing of the
//! POP3 session: message *numbers* (1..n of a session), replies and `+OK` belong to the
//! `server` and `proto` crates. Of the wire it knows one rule, RFC 1939 section 3's
//! byte-stuffing: it stores messages in wire form ([`Ingest::wire`]), so RETR sends stored
//! octets as they are, with no pass over them. It is synchronous; async callers run it on
//! blocking threads.
//!
//! Invariants every backend keeps:
//! - a message is stored whole or not at all (one transaction per delivery or import);
//! - message bytes are normalised to CRLF line ends at delivery and end with CRLF; `size` is the
//!   exact octet count of those bytes, `header_octets` and `body_lines` are computed at delivery;
//! - a message delivered since schema v8 (`MessageMeta::wire`) is stored byte-stuffed, its
//!   `header_octets` counting the stored header section, and its last chunk is shorter than
//!   [`CHUNK_SIZE`] (empty if need be), so a reader knows where it ends; older messages keep
//!   their plain form and are stuffed as they are sent;
//! - a UID is assigned at delivery, is 1 to 70 octets in 0x21..=0x7E (RFC 1939 section 7), and
//!   is never given to another message of the same maildrop, even after deletion or restart;
//! - at most one live [`MaildropLock`] exists per account; an expired lease, or a holder
//!   process on this host that no longer exists, does not keep others out;
//! - [`Store::commit_update`] marks the retrieved messages and removes the deleted ones in one
//!   transaction, and only while the caller still holds the lock it names (its fencing token);
//!   [`Store::expire_messages`] is fenced the same way;
//! - `utf8_headers` is computed at delivery (RFC 6856); messages stored before schema v2 keep
//!   `false`, as nothing is recomputed by the migration;
//! - [`Store::check_login_delay`] decides and records a login in one transaction, so that
//!   processes sharing the database cannot both take the last token (RFC 2449 LOGIN-DELAY);
//! - [`Store::renew_locks`] renews a node's leases in one transaction and renews only those
//!   still held (holder and token match, lease not over), so a lease it reports lost stays
//!   lost;
//! - a delivery or import never takes a maildrop over its quota ([`Quota`]): the check runs
//!   in the transaction that stores, after the account row is locked, so concurrent
//!   deliveries are ordered and the last one in sees the others;
//! - [`Store::node_heartbeat`] never changes a node's state: only an operator does
//!   ([`Store::set_node_state`]), and the state outlives the node's restarts.

mod common;
mod holder;
mod ingest;
mod listing;
mod name;
#[cfg(feature = "postgres")]
mod postgres;
mod spool;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::time::Duration;

pub use holder::{holder_string, hostname};
pub use ingest::{from_wire, normalise, to_wire, Ingest, IngestSummary};
pub use listing::{Listing, MaildropStat, UidsTooLong};
pub use name::AccountName;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use spool::unlinked_file;
pub use sqlite::{SqliteStore, DB_FILE};

/// Whether `location` names a PostgreSQL database (`postgres://...` or `postgresql://...`).
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// Opens the PostgreSQL store at `url` (see `PostgresStore::open`) as a [`Store`]; in a
/// program built without the `postgres` feature, an error that says so.
pub fn open_postgres(url: &str, node: Option<&str>) -> Result<Box<dyn Store>> {
    #[cfg(feature = "postgres")]
    {
        Ok(Box::new(PostgresStore::open(url, node)?))
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (url, node);
        Err(StoreError::Backend(
            "this program was built without PostgreSQL support \
             (build it with the cargo feature `postgres`, e.g. --features pop3d/postgres)"
                .into(),
        ))
    }
}

/// Row id of an account.
pub type AccountId = i64;
/// Stable id of a stored message; ascending in delivery order within a maildrop.
pub type MessageId = i64;

/// Size of the slices in which message bodies are stored and read back.
pub const CHUNK_SIZE: usize = 128 * 1024;

/// Default limit on the size of one delivered message.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 * 1024 * 1024;

/// An account as the login path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: AccountName,
    /// PHC string of the password hash (argon2id).
    pub password_hash: String,
    /// The other stored secrets (SCRAM keys, legacy APOP/CRAM-MD5 secret).
    pub secrets: AccountSecrets,
    /// Unix seconds.
    pub created_at: i64,
    /// The account's LOGIN-DELAY and EXPIRE overrides.
    pub policy: AccountPolicy,
}

/// What is stored for a password besides its argon2id hash. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct AccountSecrets {
    /// RFC 5803 `SCRAM-SHA-256$...` record, if derived.
    pub scram_sha256: Option<String>,
    /// The password-equivalent secret for APOP and CRAM-MD5, for accounts that opted in.
    pub legacy_secret: Option<String>,
    /// Precomputed HMAC-MD5 states for CRAM-MD5 only (Dovecot's `{CRAM-MD5}` scheme: 64 hex
    /// digits), for accounts imported from a Dovecot password file.
    pub cram_md5_states: Option<String>,
}

impl std::fmt::Debug for AccountSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSecrets")
            .field("scram_sha256", &self.scram_sha256.is_some())
            .field("legacy_secret", &self.legacy_secret.is_some())
            .field("cram_md5_states", &self.cram_md5_states.is_some())
            .finish()
    }
}

/// Per-account policy overrides; `None` = the server's global setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountPolicy {
    /// Minimum seconds between logins (RFC 2449 section 6.5, LOGIN-DELAY).
    pub login_delay: Option<u32>,
    /// How long retrieved messages are kept (RFC 2449 section 6.7, EXPIRE).
    pub expire: Option<Expire>,
}

/// Retention of retrieved messages (RFC 2449 section 6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expire {
    /// Retrieved messages are kept until the client deletes them (`EXPIRE NEVER`).
    Never,
    /// Retrieved messages are removed this many days after their first retrieval; 0 means at
    /// the end of the session that retrieved them.
    Days(u32),
}

/// The verdict of [`Store::check_login_delay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDelay {
    /// The login may proceed; it has been recorded.
    Allowed,
    /// Too soon after the previous login(s); nothing was recorded.
    TooSoon {
        /// Time until the next login would be allowed.
        retry_after: Duration,
    },
}

/// Who holds a maildrop lock and until when (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub holder: String,
    pub acquired_at: i64,
    pub expires_at: i64,
}

/// What `popadm user list` and `popadm stat` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub name: AccountName,
    pub messages: u64,
    pub octets: u64,
    /// Present only while a live (unexpired) lock is held.
    pub lock: Option<LockInfo>,
    /// The account's LOGIN-DELAY and EXPIRE overrides.
    pub policy: AccountPolicy,
    /// Unix seconds of the last successful login, if any: the later of the one
    /// [`Store::record_logins`] wrote (every login, batched) and the one
    /// [`Store::check_login_delay`] recorded at once.
    pub last_login: Option<i64>,
    /// Where the last login recorded by [`Store::record_logins`] came from, and how.
    pub last_login_from: Option<LoginSource>,
    /// The quota that applies (the account's, else its domain's, else the global default).
    pub quota: Quota,
    /// The account has a legacy (APOP/CRAM-MD5) secret.
    pub legacy: bool,
    /// The account has imported CRAM-MD5 states (CRAM-MD5 works without a legacy secret).
    pub cram_md5: bool,
}

/// The client address and the mechanism of a login, as [`Store::record_logins`] keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSource {
    /// The client's address (for a proxied listener, the PROXY header's source).
    pub peer: String,
    /// `USER`, `APOP`, or the SASL mechanism's name.
    pub mechanism: String,
}

/// One successful login, for [`Store::record_logins`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    pub account: AccountId,
    /// Unix seconds.
    pub at: i64,
    pub source: LoginSource,
}

/// One limit of a quota as set at one level (an account, a domain, the global default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Not set here: the next level's applies (an account's domain, then the global default).
    /// For the global default, the same as `Unlimited`.
    Default,
    /// No limit, whatever the next level says.
    Unlimited,
    /// At most this many.
    At(u64),
}

/// A quota as set at one level: [`Store::quota_setting`], [`Store::set_quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaSetting {
    pub messages: Limit,
    pub octets: Limit,
}

/// The quota that applies to an account: the account's limit, else its domain's, else the
/// global default, else none. `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Quota {
    pub messages: Option<u64>,
    pub octets: Option<u64>,
}

/// Where a quota is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope<'a> {
    /// The default of every account whose domain and itself set none. Kept in the store, not
    /// in pop3d's configuration, so that every way in (pop3d's LMTP on any node, `popadm
    /// deliver`, `popadm import`) applies the same one.
    Global,
    Domain(&'a str),
    Account(&'a AccountName),
}

/// Whether [`Store::import_with`] applies the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaCheck {
    /// Refuse the whole import with [`StoreError::OverQuota`] if it goes over.
    Enforce,
    /// Import anyway (`popadm import --ignore-quota`).
    Ignore,
}

/// One account for [`Store::import_accounts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountImport {
    pub name: AccountName,
    /// PHC string of the password hash; anything else (such as `!`) matches no password.
    pub password_hash: String,
    pub secrets: AccountSecrets,
}

/// What [`Store::import_accounts`] does with a name that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExisting {
    /// Fail the whole import with [`StoreError::AccountExists`].
    Refuse,
    /// Replace the account's password hash and every other secret (its mail stays).
    Replace,
}

/// What a session sees of one message; fixed for the session once listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub id: MessageId,
    pub uid: String,
    /// Exact octets sent by RETR before dot-stuffing (CRLF line ends).
    pub size: u64,
    /// Octets of the header section including the empty line that ends it (or the whole
    /// message when it has no empty line), as stored: in wire form when `wire`.
    pub header_octets: u64,
    /// Number of lines after the header section.
    pub body_lines: u64,
    /// The header section holds non-ASCII octets and is valid UTF-8 (RFC 6856 section 3).
    pub utf8_headers: bool,
    /// Stored in wire form (byte-stuffed, RFC 1939 section 3; [`from_wire`] undoes it), as
    /// every message delivered since schema v8; else as normalised.
    pub wire: bool,
}

/// A held maildrop lock. `token` is a fencing token: it changes every time the lock is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildropLock {
    pub account: AccountId,
    pub token: i64,
    pub holder: String,
}

/// What an operator set for a pop3d node (`popadm node drain|up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Takes new logins.
    Up,
    /// Takes no new logins; its sessions finish.
    Draining,
}

impl NodeState {
    /// The name stored in the node table and shown by `popadm`: `up` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Draining => "draining",
        }
    }

    /// The state stored as `name`, if it is one.
    pub fn parse(name: &str) -> Option<NodeState> {
        match name {
            "up" => Some(NodeState::Up),
            "draining" => Some(NodeState::Draining),
            _ => None,
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the node table, as [`Store::list_nodes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// Where the node takes connections (`HOST:PORT`), as it advertises itself.
    pub address: String,
    pub state: NodeState,
    /// Sessions (connections) the node served at its last heartbeat.
    pub sessions: u64,
    /// Time since the last heartbeat, by the database's clock (PostgreSQL) or this host's
    /// (SQLite).
    pub heartbeat_age: Duration,
}

/// One stored message, as delivery reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub id: MessageId,
    pub uid: String,
    pub size: u64,
    /// The message claimed a UID ([`ImportMessage::uid_claimed`]) that was invalid or already
    /// taken, and got a generated one instead.
    pub claim_refused: bool,
}

/// A message for [`Store::import`], optionally with the UID another server gave it.
pub struct ImportMessage {
    pub bytes: Vec<u8>,
    pub uid: Option<String>,
    /// `uid` is the message's own claim (an `X-UIDL:` header, which any sender can write),
    /// not the old server's record of it: when it is invalid or already taken in the maildrop,
    /// the message gets a generated UID ([`Delivered::claim_refused`]) instead of failing the
    /// import. A recorded UID (`false`) that is invalid or taken fails the import.
    pub uid_claimed: bool,
}

/// Errors of the store. Transient ones ([`StoreError::is_transient`]) are worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such account: {0}")]
    NoSuchAccount(String),
    #[error("account already exists: {0}")]
    AccountExists(String),
    #[error("no such domain: {0}")]
    NoSuchDomain(String),
    #[error("domain already exists: {0}")]
    DomainExists(String),
    #[error("invalid account name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("maildrop is locked by {holder}")]
    Locked { holder: String },
    #[error("no such node: {0}")]
    NoSuchNode(String),
    #[error("the maildrop lock is no longer held by this session")]
    LockLost,
    #[error("message of {size} octets exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    /// Storing the message would take the account over its quota (messages or octets).
    #[error("{account} is over quota: {detail}")]
    OverQuota { account: String, detail: String },
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    #[error("invalid UID {uid:?}: {reason}")]
    InvalidUid { uid: String, reason: &'static str },
    #[error("UID {0:?} is already in use in this maildrop")]
    DuplicateUid(String),
    #[error("the database is busy")]
    Busy,
    #[error("the storage is full")]
    Full,
    #[error("database schema version {found} is newer than this program ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("reading the message: {0}")]
    Input(#[source] std::io::Error),
    /// The cause is in the message, not also a `source`: `{:#}` would print it twice.
    #[error("storage I/O: {0}")]
    Io(std::io::Error),
    #[error("database: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// An I/O error on `path`, naming the file (`Permission denied` alone says not which).
    pub fn io_at(path: &std::path::Path, e: std::io::Error) -> StoreError {
        StoreError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    }

    /// True for trouble that may go away by itself (busy database, full disk, I/O errors):
    /// POP3 answers `[SYS/TEMP]`, delivery exits 75.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Busy | StoreError::Full | StoreError::Io(_)
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The maildrop store. Implementations are cheap to share (`Arc<dyn Store>`) and synchronous.
pub trait Store: Send + Sync + 'static {
    /// Creates an account with its password hash (PHC string) and other secrets.
    fn create_account_with(
        &self,
        name: &AccountName,
        password_hash: &str,
        secrets: &AccountSecrets,
    ) -> Result<AccountId>;
    /// Creates an account with only a password hash.
    fn create_account(&self, name: &AccountName, password_hash: &str) -> Result<AccountId> {
        self.create_account_with(name, password_hash, &AccountSecrets::default())
    }
    /// Deletes an account and all its messages. Refuses with `Locked` while a session holds it.
    fn delete_account(&self, name: &AccountName) -> Result<()>;
    /// Replaces an account's password hash and every other secret in one transaction (a
    /// secret derived from an old password never survives a change).
    fn set_secrets(
        &self,
        name: &AccountName,
        password_hash: &str,
        secrets: &AccountSecrets,
    ) -> Result<()>;
    /// Creates or updates every account of `accounts` in one transaction: all or none.
    /// Returns, in order, `true` for each account created and `false` for each replaced.
    fn import_accounts(
        &self,
        accounts: &[AccountImport],
        existing: OnExisting,
    ) -> Result<Vec<bool>>;
    /// Replaces the password hash and drops the other secrets.
    fn set_password(&self, name: &AccountName, password_hash: &str) -> Result<()> {
        self.set_secrets(name, password_hash, &AccountSecrets::default())
    }
    /// Looks an account up by name.
    fn account(&self, name: &AccountName) -> Result<Option<Account>>;
    /// All accounts with their message counts, octets and live lock, ordered by name.
    fn list_accounts(&self) -> Result<Vec<AccountSummary>>;
    /// One account's summary.
    fn account_summary(&self, name: &AccountName) -> Result<AccountSummary>;
    /// Replaces the password hash with a re-hash of the same password (new argon2
    /// parameters), only if it is still `old_hash`: a password changed meanwhile wins.
    /// Returns whether it was replaced. The other secrets stay.
    fn rehash_password(&self, account: AccountId, old_hash: &str, new_hash: &str) -> Result<bool>;
    /// Stores SCRAM-SHA-256 keys derived at a successful login for an account that has none
    /// (imported with a hash only, or from before schema v3), only if its password hash is
    /// still `password_hash`. Returns whether they were stored.
    fn add_scram_keys(&self, account: AccountId, password_hash: &str, scram: &str) -> Result<bool>;
    /// Replaces SCRAM-SHA-256 keys derived with another iteration count by `new`, keys derived
    /// at a successful login, only if the password hash is still `hash` and the keys are still
    /// `old`. Returns whether they were replaced.
    fn replace_scram_keys(&self, id: AccountId, hash: &str, old: &str, new: &str) -> Result<bool>;
    /// Every domain with the number of its accounts, by name.
    fn list_domains(&self) -> Result<Vec<(String, u64)>>;
    /// Adds an empty domain (domains also appear when an account in them is created).
    fn add_domain(&self, domain: &str) -> Result<()>;
    /// The accounts of a domain, by name.
    fn domain_accounts(&self, domain: &str) -> Result<Vec<AccountName>>;
    /// Deletes a domain with all its accounts and their mail, in one transaction; refuses with
    /// `Locked` while any of them is in a session. Returns the deleted accounts.
    fn delete_domain(&self, domain: &str) -> Result<Vec<AccountName>>;
    /// Replaces both policy overrides of an account.
    fn set_policy(&self, name: &AccountName, policy: AccountPolicy) -> Result<()>;
    /// Decides whether a login to `account` may proceed now (RFC 2449 LOGIN-DELAY), in one
    /// transaction that is atomic across processes.
    ///
    /// A token bucket: it holds `1 + burst` tokens, starts full and refills at one token per
    /// `delay`. With a token available one is taken, the login time is recorded and the answer
    /// is `Allowed`; otherwise the answer is `TooSoon` with the time until a token is back, and
    /// nothing changes. A zero `delay` always allows (and records the login time). The state
    /// is persisted, so it survives restarts.
    fn check_login_delay(
        &self,
        account: AccountId,
        delay: Duration,
        burst: u32,
    ) -> Result<LoginDelay>;

    /// Stores one message read from `message`, normalised to CRLF, whole or not at all.
    /// Allowed while a session holds the lock: the message appears in the next session.
    /// Refused with [`StoreError::OverQuota`] when the maildrop would go over its quota,
    /// checked inside the transaction, so concurrent deliveries cannot overshoot it.
    fn deliver(
        &self,
        name: &AccountName,
        message: &mut dyn Read,
        max_size: u64,
    ) -> Result<Delivered>;
    /// Stores several messages in one transaction, in order, keeping given UIDs (validated,
    /// unique in the maildrop) and assigning fresh ones otherwise. All or nothing; only a
    /// claimed UID ([`ImportMessage::uid_claimed`]) that is invalid or taken gives way to a
    /// fresh one instead of failing the import.
    ///
    /// The account's quota applies to the maildrop with all the messages added, checked
    /// inside the transaction: over it, nothing is stored and the error is
    /// [`StoreError::OverQuota`].
    fn import(
        &self,
        name: &AccountName,
        messages: &mut dyn Iterator<Item = ImportMessage>,
    ) -> Result<Vec<Delivered>> {
        self.import_with(name, messages, QuotaCheck::Enforce)
    }
    /// [`Store::import`], with the quota applied or not.
    fn import_with(
        &self,
        name: &AccountName,
        messages: &mut dyn Iterator<Item = ImportMessage>,
        quota: QuotaCheck,
    ) -> Result<Vec<Delivered>>;

    /// The quota as set at `scope` (`NoSuchAccount`, `NoSuchDomain` if absent).
    fn quota_setting(&self, scope: QuotaScope<'_>) -> Result<QuotaSetting>;
    /// Changes the limits given (`None` leaves one as it is) at `scope`; returns the new
    /// setting.
    fn set_quota(
        &self,
        scope: QuotaScope<'_>,
        messages: Option<Limit>,
        octets: Option<Limit>,
    ) -> Result<QuotaSetting>;

    /// Records successful logins (the last one per account wins; an older record never
    /// replaces a newer one), all in one transaction: the server batches them, so a login
    /// costs no write of its own. Accounts deleted meanwhile are skipped.
    fn record_logins(&self, logins: &[LoginRecord]) -> Result<()>;

    /// Takes the exclusive maildrop lock for `holder`, for `lease`.
    fn lock_maildrop(
        &self,
        account: AccountId,
        holder: &str,
        lease: Duration,
    ) -> Result<MaildropLock>;
    /// Extends every lease of `locks` by `lease`, in one transaction, and says for each (in
    /// order) whether it was renewed: `false` when the lock is no longer held (taken over,
    /// released, or its lease already over), which the caller must treat as `LockLost`.
    fn renew_locks(&self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>>;
    /// Releases a held lock (no error if it was already gone).
    fn release_lock(&self, lock: &MaildropLock) -> Result<()>;
    /// The messages of a maildrop in delivery order.
    fn list_messages(&self, account: AccountId) -> Result<Vec<MessageMeta>>;
    /// Count, octets and highest id of a maildrop, read in one statement: what a login
    /// answers with and the snapshot its session keeps (`NoSuchAccount` without the account).
    fn maildrop_stat(&self, account: AccountId) -> Result<MaildropStat>;
    /// The messages of the snapshot `stat` (ids up to `stat.last`), in delivery order, as a
    /// compact [`Listing`]. Messages delivered after `stat` was read are not in it.
    fn list_snapshot(&self, account: AccountId, stat: &MaildropStat) -> Result<Listing>;
    /// The header octets of one message of `account` (for TOP), `None` if it is gone.
    fn header_octets(&self, account: AccountId, message: MessageId) -> Result<Option<u64>>;
    /// Slice `index` (0-based, [`CHUNK_SIZE`] octets except the last) of a message's stored
    /// bytes (in wire form when [`MessageMeta::wire`]), `None` past the end.
    fn read_chunk(&self, message: MessageId, index: u32) -> Result<Option<Vec<u8>>>;
    /// Up to `count` slices of a message from slice `first` on, in one statement: fewer when
    /// the message ends (or a slice is missing: the run returned is always contiguous).
    fn read_chunks(&self, message: MessageId, first: u32, count: u32) -> Result<Vec<Vec<u8>>>;
    /// Slice 0 of each of `messages` (ids of `account`; others are left out), in one
    /// statement however many: `(id, slice)` for each that has one, in no particular order. A
    /// session's read-ahead: a message of at most [`CHUNK_SIZE`] octets is its slice 0.
    fn read_first_chunks(
        &self,
        account: AccountId,
        messages: &[MessageId],
    ) -> Result<Vec<(MessageId, Vec<u8>)>>;
    /// The UPDATE state (RFC 1939 section 6) in one transaction, after checking the lock's
    /// token (`LockLost`, and nothing changed, if the lock is no longer ours or has expired):
    /// records now as the first retrieval time of the `retrieved` messages that have none, then
    /// deletes the `deleted` messages. Ids of other maildrops are ignored; either list may be
    /// empty.
    fn commit_update(
        &self,
        lock: &MaildropLock,
        deleted: &[MessageId],
        retrieved: &[MessageId],
    ) -> Result<()>;
    /// Deletes every message of the locked maildrop first retrieved at least `retention` ago
    /// (RFC 2449 section 6.7, EXPIRE) and returns how many; fenced like
    /// [`Store::commit_update`]. With a zero `retention` every retrieved message goes.
    fn expire_messages(&self, lock: &MaildropLock, retention: Duration) -> Result<u64>;

    /// Records that node `id` is alive at `address` with `sessions` sessions: inserted as
    /// [`NodeState::Up`] the first time, updated after. The state is left as an operator set
    /// it, and returned.
    fn node_heartbeat(&self, id: &str, address: &str, sessions: u64) -> Result<NodeState>;
    /// Every node of the table, by id.
    fn list_nodes(&self) -> Result<Vec<NodeInfo>>;
    /// Sets a node's state; `NoSuchNode` if it never sent a heartbeat (or was removed).
    fn set_node_state(&self, id: &str, state: NodeState) -> Result<()>;
    /// Removes a node from the table (a heartbeat adds it again); `NoSuchNode` if absent.
    fn remove_node(&self, id: &str) -> Result<()>;
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// Issue 19: an I/O failure names the file, and says its cause once (it is the message,
    /// not also a `source`, which `{:#}` printers would repeat).
    #[test]
    fn io_errors_name_the_file_once() {
        let e = StoreError::io_at(
            std::path::Path::new("/var/lib/pop3d/maildrops.sqlite3"),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        let text = e.to_string();
        assert!(text.contains("/var/lib/pop3d/maildrops.sqlite3"), "{text}");
        assert_eq!(text.matches("permission denied").count(), 1, "{text}");
        assert!(std::error::Error::source(&e).is_none());
    }
}
