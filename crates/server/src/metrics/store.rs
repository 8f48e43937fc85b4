//! [`TimedStore`]: the maildrop store with every call timed into
//! `pop3d_store_call_duration_seconds{operation}`. A decorator around `Arc<dyn Store>`, so
//! neither backend knows it is measured; the operation label is the method's name.
//!
//! Each operation's histogram is looked up once, at its first call, and kept: a call then
//! costs two clock reads and one histogram observation.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use store::{
    Account, AccountId, AccountImport, AccountName, AccountPolicy, AccountSecrets, AccountSummary,
    Delivered, ImportMessage, Limit, Listing, LoginDelay, LoginRecord, MaildropLock, MaildropStat,
    MessageId, MessageMeta, NodeInfo, NodeState, OnExisting, QuotaCheck, QuotaScope, QuotaSetting,
    Result, Store,
};

use super::{seconds, HistogramFamily, Metrics};

/// The store behind `inner`, every call timed.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    family: HistogramFamily,
    /// One per [`Op`], made at the operation's first call.
    histograms: Vec<OnceLock<Histogram>>,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>, metrics: &Metrics) -> TimedStore {
        TimedStore {
            inner,
            family: metrics.store_calls.clone(),
            histograms: OPS.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    /// Runs `call` and records how long it took under `op`.
    fn time<T>(&self, op: Op, call: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = call();
        self.record(op, start.elapsed());
        result
    }

    fn record(&self, op: Op, took: Duration) {
        let i = op as usize;
        if let Some(slot) = self.histograms.get(i) {
            slot.get_or_init(|| self.family.get_or_create_owned(&[("operation", OPS[i])]))
                .observe(seconds(took));
        }
    }
}

/// The [`Store`] methods, each forwarded to the inner store inside [`TimedStore::time`], and
/// [`Op`] with one variant per method (`OPS` holds their names, the label values).
macro_rules! timed_store {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        enum Op {
            $($name),*
        }

        const OPS: &[&str] = &[$(stringify!($name)),*];

        impl Store for TimedStore {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.time(Op::$name, || self.inner.$name($($arg),*))
            })*
        }
    };
}

timed_store! {
    fn create_account_with(&self, name: &AccountName, hash: &str, secrets: &AccountSecrets) -> Result<AccountId>;
    fn create_account(&self, name: &AccountName, hash: &str) -> Result<AccountId>;
    fn delete_account(&self, name: &AccountName) -> Result<()>;
    fn set_secrets(&self, name: &AccountName, hash: &str, secrets: &AccountSecrets) -> Result<()>;
    fn import_accounts(&self, accounts: &[AccountImport], existing: OnExisting) -> Result<Vec<bool>>;
    fn set_password(&self, name: &AccountName, hash: &str) -> Result<()>;
    fn account(&self, name: &AccountName) -> Result<Option<Account>>;
    fn list_accounts(&self) -> Result<Vec<AccountSummary>>;
    fn account_summary(&self, name: &AccountName) -> Result<AccountSummary>;
    fn rehash_password(&self, account: AccountId, old: &str, new: &str) -> Result<bool>;
    fn add_scram_keys(&self, account: AccountId, hash: &str, scram: &str) -> Result<bool>;
    fn replace_scram_keys(&self, id: AccountId, hash: &str, old: &str, new: &str) -> Result<bool>;
    fn list_domains(&self) -> Result<Vec<(String, u64)>>;
    fn add_domain(&self, domain: &str) -> Result<()>;
    fn domain_accounts(&self, domain: &str) -> Result<Vec<AccountName>>;
    fn delete_domain(&self, domain: &str) -> Result<Vec<AccountName>>;
    fn set_policy(&self, name: &AccountName, policy: AccountPolicy) -> Result<()>;
    fn check_login_delay(&self, account: AccountId, delay: Duration, burst: u32) -> Result<LoginDelay>;
    fn deliver(&self, name: &AccountName, message: &mut dyn Read, max_size: u64) -> Result<Delivered>;
    fn import(&self, name: &AccountName, messages: &mut dyn Iterator<Item = ImportMessage>) -> Result<Vec<Delivered>>;
    fn import_with(&self, name: &AccountName, messages: &mut dyn Iterator<Item = ImportMessage>, quota: QuotaCheck) -> Result<Vec<Delivered>>;
    fn quota_setting(&self, scope: QuotaScope<'_>) -> Result<QuotaSetting>;
    fn set_quota(&self, scope: QuotaScope<'_>, messages: Option<Limit>, octets: Option<Limit>) -> Result<QuotaSetting>;
    fn record_logins(&self, logins: &[LoginRecord]) -> Result<()>;
    fn lock_maildrop(&self, account: AccountId, holder: &str, lease: Duration) -> Result<MaildropLock>;
    fn renew_locks(&self, locks: &[MaildropLock], lease: Duration) -> Result<Vec<bool>>;
    fn release_lock(&self, lock: &MaildropLock) -> Result<()>;
    fn list_messages(&self, account: AccountId) -> Result<Vec<MessageMeta>>;
    fn maildrop_stat(&self, account: AccountId) -> Result<MaildropStat>;
    fn list_snapshot(&self, account: AccountId, stat: &MaildropStat) -> Result<Listing>;
    fn header_octets(&self, account: AccountId, message: MessageId) -> Result<Option<u64>>;
    fn read_chunk(&self, message: MessageId, index: u32) -> Result<Option<Vec<u8>>>;
    fn read_chunks(&self, message: MessageId, first: u32, count: u32) -> Result<Vec<Vec<u8>>>;
    fn read_first_chunks(&self, account: AccountId, messages: &[MessageId]) -> Result<Vec<(MessageId, Vec<u8>)>>;
    fn commit_update(&self, lock: &MaildropLock, deleted: &[MessageId], retrieved: &[MessageId]) -> Result<()>;
    fn expire_messages(&self, lock: &MaildropLock, retention: Duration) -> Result<u64>;
    fn node_heartbeat(&self, id: &str, address: &str, sessions: u64) -> Result<NodeState>;
    fn list_nodes(&self) -> Result<Vec<NodeInfo>>;
    fn set_node_state(&self, id: &str, state: NodeState) -> Result<()>;
    fn remove_node(&self, id: &str) -> Result<()>;
}
