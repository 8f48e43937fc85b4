//! The last login of every account (time, client address, mechanism), recorded without a
//! database write per login: sessions hand each successful login to [`Logins`], which keeps the
//! latest per account in memory and writes them all in one [`Store::record_logins`] call every
//! [`FLUSH_EVERY`], and once more at shutdown.
//!
//! Memory is bounded by the number of accounts (one entry each, the latest login wins). A
//! failed write (a busy database) keeps the batch for the next tick, where a newer login of the
//! same account replaces its entry; a crash loses at most one interval of records, which only
//! `popadm user list` and `stat` show.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use store::{AccountId, LoginRecord, LoginSource, Store};
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

/// How often the batch is written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The logins not written yet, the latest per account.
pub(crate) struct Logins {
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<AccountId, LoginRecord>>,
}

impl Logins {
    pub fn new(store: Arc<dyn Store>) -> Arc<Logins> {
        Arc::new(Logins {
            store,
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, LoginRecord>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a successful login to `account` from `client` by `mechanism`, now. Costs no I/O.
    pub fn record(&self, account: AccountId, client: IpAddr, mechanism: &str) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let login = LoginRecord {
            account,
            at,
            source: LoginSource {
                peer: client.to_canonical().to_string(),
                mechanism: mechanism.to_owned(),
            },
        };
        keep_latest(&mut self.pending(), login);
    }

    /// Logins waiting for the next write.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    /// Writes every pending login in one store call. On failure they are kept for the next
    /// call (behind any newer login of the same account).
    pub async fn flush(&self) {
        let batch: Vec<LoginRecord> = self.pending().drain().map(|(_, l)| l).collect();
        if batch.is_empty() {
            return;
        }
        let store = self.store.clone();
        let count = batch.len();
        let written = tokio::task::spawn_blocking(move || match store.record_logins(&batch) {
            Ok(()) => Ok(()),
            Err(e) => Err((e.to_string(), batch)),
        })
        .await;
        match written {
            Ok(Ok(())) => debug!(accounts = count, "last logins recorded"),
            Ok(Err((e, batch))) => {
                warn!(error = %e, accounts = count, "recording the last logins failed; retried later");
                let mut pending = self.pending();
                for login in batch {
                    keep_latest(&mut pending, login);
                }
            }
            Err(e) => warn!(error = %e, accounts = count, "recording the last logins failed"),
        }
    }

    /// Writes the batch every [`FLUSH_EVERY`] (or `every`), forever (the caller aborts the
    /// task, then calls [`Logins::flush`] once more).
    pub async fn flush_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.flush().await;
        }
    }
}

/// Puts `login` in `pending` unless a later login of its account is there.
fn keep_latest(pending: &mut HashMap<AccountId, LoginRecord>, login: LoginRecord) {
    match pending.get(&login.account) {
        Some(newer) if newer.at > login.at => {}
        _ => {
            pending.insert(login.account, login);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use store::{AccountName, SqliteStore};

    /// Logins wait in memory (no write per login) and one flush writes them all, the latest
    /// per account with its address and mechanism.
    #[tokio::test]
    async fn logins_are_written_in_one_batch() {
        let dir = testbed::TempDir::new("logins");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let alice = AccountName::parse("alice").unwrap();
        let bob = AccountName::parse("bob").unwrap();
        let a = store.create_account(&alice, "h").unwrap();
        let b = store.create_account(&bob, "h").unwrap();
        let logins = Logins::new(store.clone());
        logins.record(a, "192.0.2.1".parse().unwrap(), "USER");
        logins.record(b, "::ffff:192.0.2.2".parse().unwrap(), "PLAIN");
        logins.record(a, "2001:db8::1".parse().unwrap(), "SCRAM-SHA-256");
        assert_eq!(logins.waiting(), 2);
        assert_eq!(store.account_summary(&alice).unwrap().last_login, None);
        logins.flush().await;
        assert_eq!(logins.waiting(), 0);
        let summary = store.account_summary(&alice).unwrap();
        assert!(summary.last_login.is_some());
        let from = summary.last_login_from.unwrap();
        assert_eq!(
            (from.peer.as_str(), from.mechanism.as_str()),
            ("2001:db8::1", "SCRAM-SHA-256")
        );
        // An IPv4-mapped address is shown as the IPv4 one.
        let from = store
            .account_summary(&bob)
            .unwrap()
            .last_login_from
            .unwrap();
        assert_eq!(from.peer, "192.0.2.2");
    }

    #[test]
    fn an_older_login_never_replaces_a_newer_one() {
        let login = |at, mechanism: &str| LoginRecord {
            account: 1,
            at,
            source: LoginSource {
                peer: "192.0.2.1".into(),
                mechanism: mechanism.into(),
            },
        };
        let mut pending = HashMap::new();
        keep_latest(&mut pending, login(20, "new"));
        keep_latest(&mut pending, login(10, "old"));
        assert_eq!(pending[&1].source.mechanism, "new");
        keep_latest(&mut pending, login(20, "same second"));
        assert_eq!(pending[&1].source.mechanism, "same second");
    }
}
