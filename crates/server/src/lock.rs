//! The maildrop locks of logged-in sessions: registered with one per-process renewer, which
//! renews every held lease in one [`Store::renew_locks`] call per tick, and released on every
//! way out of a session.
//!
//! A lease the store reports lost (taken over, or over before the renewal came) is marked on
//! its [`HeldLock`]; the session then answers its next command `-ERR [SYS/TEMP]` and ends
//! without UPDATE.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use store::{MaildropLock, Store};
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::reply::blocking;

/// The shortest renewal interval, whatever the lease.
const MIN_TICK: Duration = Duration::from_millis(100);

/// One registered lock.
struct Entry {
    lock: MaildropLock,
    lost: Arc<AtomicBool>,
}

/// The locks this process holds, and the renewer's view of them.
pub(crate) struct Locks {
    store: Arc<dyn Store>,
    lease: Duration,
    held: Mutex<HashMap<u64, Entry>>,
    next_key: AtomicU64,
}

impl Locks {
    pub fn new(store: Arc<dyn Store>, lease: Duration) -> Arc<Locks> {
        Arc::new(Locks {
            store,
            lease,
            held: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
        })
    }

    /// The lease every lock is taken and renewed for.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks held now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.entries().len()
    }

    /// Renews every registered lease every third of the lease, forever (the caller aborts
    /// the task).
    pub async fn renew_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval((self.lease / 3).max(MIN_TICK));
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            self.renew_once().await;
        }
    }

    /// One batch renewal of every registered lease; marks the lost ones. A failed call (busy
    /// database and the like) changes nothing: the next tick tries again, within the lease.
    pub async fn renew_once(&self) {
        let (keys, locks): (Vec<u64>, Vec<MaildropLock>) = self
            .entries()
            .iter()
            .map(|(&key, e)| (key, e.lock.clone()))
            .unzip();
        if keys.is_empty() {
            return;
        }
        let (store, lease) = (self.store.clone(), self.lease);
        let renewed = match blocking(move || store.renew_locks(&locks, lease)).await {
            Ok(renewed) if renewed.len() == keys.len() => renewed,
            Ok(renewed) => {
                warn!(
                    asked = keys.len(),
                    answered = renewed.len(),
                    "renewing the maildrop locks: the store answered for another number of locks"
                );
                return;
            }
            Err(e) => {
                warn!(error = %e, locks = keys.len(), "renewing the maildrop locks failed");
                return;
            }
        };
        debug!(locks = keys.len(), "maildrop locks renewed");
        let mut held = self.entries();
        for (key, ok) in keys.into_iter().zip(renewed) {
            if ok {
                continue;
            }
            // A lock released meanwhile was unregistered first: nothing to mark.
            if let Some(entry) = held.remove(&key) {
                warn!(
                    account = entry.lock.account,
                    holder = %entry.lock.holder,
                    "maildrop lock was lost (taken over or lapsed)"
                );
                entry.lost.store(true, Ordering::Relaxed);
            }
        }
    }

    fn register(&self, lock: MaildropLock) -> (u64, Arc<AtomicBool>) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(AtomicBool::new(false));
        self.entries().insert(
            key,
            Entry {
                lock,
                lost: lost.clone(),
            },
        );
        (key, lost)
    }

    fn forget(&self, key: u64) {
        self.entries().remove(&key);
    }
}

/// The maildrop lock of a logged-in session, renewed by [`Locks`] while held.
pub(crate) struct HeldLock {
    locks: Arc<Locks>,
    key: u64,
    pub lock: MaildropLock,
    lost: Arc<AtomicBool>,
    released: bool,
}

impl HeldLock {
    pub fn new(locks: &Arc<Locks>, lock: MaildropLock) -> HeldLock {
        let (key, lost) = locks.register(lock.clone());
        HeldLock {
            locks: locks.clone(),
            key,
            lock,
            lost,
            released: false,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Releases the lock and waits until the store has done it.
    pub async fn release(mut self) {
        self.released = true;
        // Unregistered before the store forgets it, so the renewer never reports a lock
        // released here as lost.
        self.locks.forget(self.key);
        let (store, lock) = (self.locks.store.clone(), self.lock.clone());
        if let Err(e) = blocking(move || store.release_lock(&lock)).await {
            warn!(error = %e, "releasing the maildrop lock failed; it will expire");
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if !self.released {
            // A session that ended without `release` (a panic, a cancelled task): release in
            // the background; the lease covers the case where even that fails.
            self.locks.forget(self.key);
            let (store, lock) = (self.locks.store.clone(), self.lock.clone());
            tokio::task::spawn_blocking(move || store.release_lock(&lock));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use store::{AccountName, SqliteStore};

    fn store() -> (std::path::PathBuf, Arc<dyn Store>) {
        let dir = std::env::temp_dir().join(format!(
            "server-locks-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir).unwrap());
        (dir, store)
    }

    /// One renewer for all sessions: held leases are extended, a lease taken over is marked
    /// lost on its session only, a released lock is neither renewed nor marked.
    #[tokio::test]
    async fn one_renewer_extends_held_leases_and_marks_lost_ones() {
        let (dir, store) = store();
        let hour = Duration::from_secs(3600);
        let ids: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                store
                    .create_account(&AccountName::parse(n).unwrap(), "h")
                    .unwrap()
            })
            .collect();
        let locks = Locks::new(store.clone(), hour);
        let take = |account, session, lease| {
            store
                .lock_maildrop(account, &store::holder_string(session), lease)
                .unwrap()
        };
        // Short leases, so a renewal is visible in the expiry.
        let short = Duration::from_secs(5);
        let a = HeldLock::new(&locks, take(ids[0], 1, short));
        let b = HeldLock::new(&locks, take(ids[1], 2, short));
        let c = HeldLock::new(&locks, take(ids[2], 3, short));
        // b is taken over by a session elsewhere (its lease had lapsed).
        store.release_lock(&b.lock).unwrap();
        let thief = store
            .lock_maildrop(ids[1], "pop3d@elsewhere:1#1", hour)
            .unwrap();
        c.release().await;
        assert_eq!(locks.count(), 2);
        locks.renew_once().await;
        assert!(!a.is_lost());
        assert!(b.is_lost());
        assert_eq!(locks.count(), 1, "a lost lock is no longer renewed");
        let summaries = store.list_accounts().unwrap();
        let expiry = |i: usize| summaries[i].lock.as_ref().map(|l| l.expires_at);
        let acquired = summaries[0].lock.as_ref().unwrap().acquired_at;
        assert!(
            expiry(0).unwrap() >= acquired + 3500,
            "a renewed for the hour"
        );
        assert_eq!(
            summaries[1].lock.as_ref().unwrap().holder,
            thief.holder,
            "the thief keeps b"
        );
        assert_eq!(expiry(2), None, "c stays released");
        store.commit_update(&a.lock, &[], &[]).unwrap();
        a.release().await;
        drop(b);
        assert_eq!(locks.count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
