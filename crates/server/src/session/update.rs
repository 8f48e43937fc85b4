//! The UPDATE state (RFC 1939 section 6), entered by QUIT in TRANSACTION, and the way out
//! without it (a drop, a timeout, shutdown), which removes nothing.

use proto::response::write_err;
use store::Expire;
use tracing::{info, warn};

use super::{Auth, Session, State, Update};
use crate::lang::Text;
use crate::reply;

impl Session {
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Authorization(Auth::Idle))
    }

    /// Remove the marked messages and record the retrieved ones in one transaction, release
    /// the lock, say goodbye. With EXPIRE 0 (RFC 2449 section 6.7) what was retrieved is
    /// removed too. If the store refuses (the lock lost, its fencing token changed),
    /// nothing is removed and the reply says so.
    pub(super) async fn update(&mut self) {
        let State::Transaction(t) = self.take_state() else {
            return;
        };
        let mut deleted = t.maildrop.marked();
        let retrieved = t.maildrop.retrieved();
        if t.expire == Expire::Days(0) {
            deleted.extend(&retrieved);
        }
        let result = if deleted.is_empty() && retrieved.is_empty() {
            Ok(())
        } else {
            let store = self.shared.store.clone();
            let lock = t.lock.lock.clone();
            let (d, r) = (deleted.clone(), retrieved);
            reply::blocking(move || store.commit_update(&lock, &d, &r)).await
        };
        t.lock.release().await;
        match result {
            Ok(()) => {
                let n = deleted.len();
                self.tally.deleted = n as u64;
                self.tally.update = Update::Committed;
                self.shared.metrics.update(Some(n as u64));
                let left = t.maildrop.len().saturating_sub(n as u64);
                info!(deleted = n, left, "update done");
                self.ok_with(Text::SigningOff, &[&n, &left]);
            }
            Err(e) => {
                warn!(error = %e, "update failed; nothing was deleted");
                self.tally.update = Update::Failed;
                self.shared.metrics.update(None);
                let r = reply::session_error(&e);
                let text = self
                    .lang
                    .fill(Text::UpdateFailed, &[&self.lang.text(r.text)]);
                write_err(&mut self.out, r.code, &text);
            }
        }
    }

    /// The session ends without QUIT: nothing is removed (RFC 1939 section 6), the lock is
    /// let go.
    pub(super) async fn abandon(&mut self) {
        if let State::Transaction(t) = self.take_state() {
            t.lock.release().await;
        }
    }
}
