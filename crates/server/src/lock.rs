//! The maildrop lock of a logged-in session: renewed in the background, released on every
//! way out of the session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use store::{MaildropLock, Store, StoreError};
use tokio::task::JoinHandle;
use tracing::warn;

/// The maildrop lock of a logged-in session, renewed in the background while held.
pub(crate) struct HeldLock {
    store: Arc<dyn Store>,
    pub lock: MaildropLock,
    renewer: JoinHandle<()>,
    lost: Arc<AtomicBool>,
    released: bool,
}

impl HeldLock {
    pub fn new(store: Arc<dyn Store>, lock: MaildropLock, lease: Duration) -> HeldLock {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew_lock(store.clone(), lock.clone(), lease, lost.clone()));
        HeldLock {
            store,
            lock,
            renewer,
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
        self.renewer.abort();
        let (store, lock) = (self.store.clone(), self.lock.clone());
        match tokio::task::spawn_blocking(move || store.release_lock(&lock)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "releasing the maildrop lock failed; it will expire"),
            Err(e) => warn!(error = %e, "releasing the maildrop lock failed; it will expire"),
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if !self.released {
            // A session that ended without `release` (a panic, a cancelled task): release in
            // the background; the lease covers the case where even that fails.
            self.renewer.abort();
            let (store, lock) = (self.store.clone(), self.lock.clone());
            tokio::task::spawn_blocking(move || store.release_lock(&lock));
        }
    }
}

async fn renew_lock(
    store: Arc<dyn Store>,
    lock: MaildropLock,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let mut every = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    every.tick().await;
    loop {
        every.tick().await;
        let (store, lock) = (store.clone(), lock.clone());
        match tokio::task::spawn_blocking(move || store.renew_lock(&lock, lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(StoreError::LockLost)) => {
                warn!("maildrop lock was taken over");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // Busy database and the like: try again at the next tick, within the lease.
            Ok(Err(e)) => warn!(error = %e, "renewing the maildrop lock failed"),
            Err(e) => warn!(error = %e, "renewing the maildrop lock failed"),
        }
    }
}
