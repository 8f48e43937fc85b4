//! Maildrop locks: leases, their renewal and fencing, and the UPDATE state's commit under them.

use std::time::Duration;

use super::{
    count, deliver, exec, ids, lapsed_and_taken_over, name, now, renewed, retrieved_at, Fixture,
    HOUR,
};
use crate::{holder, MaildropLock, MessageId, StoreError, CHUNK_SIZE};

pub(super) fn locks_exclude_release_expire_and_fence(f: &dyn Fixture) {
    let store = f.open();
    let account = store.create_account(&name("user"), "h").unwrap();
    let one = holder::holder_string(1);
    let two = holder::holder_string(2);

    let first = store.lock_maildrop(account, &one, HOUR).unwrap();
    assert_eq!(
        (first.account, first.holder.as_str()),
        (account, one.as_str())
    );
    assert!(matches!(
        store.lock_maildrop(account, &two, HOUR),
        Err(StoreError::Locked { holder }) if holder == one
    ));
    let shown = store.account_summary(&name("user")).unwrap().lock.unwrap();
    assert_eq!(shown.holder, one);
    assert!(shown.expires_at >= shown.acquired_at + 3599);
    assert!(renewed(&*store, &first));

    // Release, then another holder gets it with a new token.
    store.release_lock(&first).unwrap();
    store.release_lock(&first).unwrap();
    assert!(store.list_accounts().unwrap()[0].lock.is_none());
    let second = store.lock_maildrop(account, &two, HOUR).unwrap();
    assert!(second.token > first.token);
    assert!(!renewed(&*store, &first));
    // A stale release must not free someone else's lock.
    store.release_lock(&first).unwrap();
    assert!(store.lock_maildrop(account, &one, HOUR).is_err());
    store.release_lock(&second).unwrap();

    // A zero-length lease is expired at once and is not reported.
    let brief = store.lock_maildrop(account, &one, Duration::ZERO).unwrap();
    assert!(store.account_summary(&name("user")).unwrap().lock.is_none());
    let third = store.lock_maildrop(account, &two, HOUR).unwrap();
    assert!(third.token > brief.token);
    store.release_lock(&third).unwrap();

    // A holder on this host whose process is gone is taken over before expiry.
    let host = holder::hostname().unwrap();
    let dead = format!("pop3d@{host}:{}#9", 0x7FFF_FFF0);
    let ghost = store.lock_maildrop(account, &dead, HOUR).unwrap();
    let live = store.lock_maildrop(account, &one, HOUR).unwrap();
    assert!(live.token > ghost.token);
    // A holder on another host is respected until expiry.
    store.release_lock(&live).unwrap();
    let remote = format!("pop3d@elsewhere-{host}:{}#9", 0x7FFF_FFF0);
    store.lock_maildrop(account, &remote, HOUR).unwrap();
    assert!(matches!(
        store.lock_maildrop(account, &one, HOUR),
        Err(StoreError::Locked { holder }) if holder == remote
    ));

    assert!(matches!(
        store.lock_maildrop(account + 100, &one, HOUR),
        Err(StoreError::NoSuchAccount(_))
    ));
}

pub(super) fn commit_update_deletions_are_exact_atomic_and_fenced(f: &dyn Fixture) {
    let store = f.open();
    let (to, other) = (name("user"), name("other"));
    let account = store.create_account(&to, "h").unwrap();
    let other_account = store.create_account(&other, "h").unwrap();
    let ids: Vec<MessageId> = (0..4)
        .map(|i| deliver(&*store, &to, &vec![b'a' + i; CHUNK_SIZE + 1]).id)
        .collect();
    let foreign = deliver(&*store, &other, b"not yours\n").id;

    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    store
        .commit_update(&lock, &[ids[0], ids[2], foreign], &[])
        .unwrap();
    let left: Vec<MessageId> = store
        .list_messages(account)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, [ids[1], ids[3]]);
    assert!(store.read_chunk(ids[0], 0).unwrap().is_none());
    assert_eq!(store.list_messages(other_account).unwrap().len(), 1);
    assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 5);
    store.release_lock(&lock).unwrap();

    // Lock lost to another holder: nothing is deleted.
    let lapsed = store
        .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
        .unwrap();
    assert!(matches!(
        store.commit_update(&lapsed, &[ids[1]], &[]),
        Err(StoreError::LockLost)
    ));
    let thief = store.lock_maildrop(account, "b@h:2#1", HOUR).unwrap();
    assert!(matches!(
        store.commit_update(&lapsed, &[ids[1], ids[3]], &[]),
        Err(StoreError::LockLost)
    ));
    assert!(!renewed(&*store, &lapsed));
    assert_eq!(store.list_messages(account).unwrap().len(), 2);
    store.commit_update(&thief, &[], &[]).unwrap();
}

pub(super) fn commit_update_marks_first_retrieval_once_and_deletes(f: &dyn Fixture) {
    let store = f.open();
    let (to, other) = (name("user"), name("other"));
    let account = store.create_account(&to, "h").unwrap();
    let other_account = store.create_account(&other, "h").unwrap();
    let msgs: Vec<MessageId> = (0..4)
        .map(|i| deliver(&*store, &to, format!("message {i}\n").as_bytes()).id)
        .collect();
    let foreign = deliver(&*store, &other, b"not yours\n").id;

    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    store
        .commit_update(&lock, &[msgs[2]], &[msgs[0], msgs[1], msgs[2], foreign])
        .unwrap();
    for id in [msgs[0], msgs[1]] {
        let at = retrieved_at(&*store, id);
        assert!(at.is_some_and(|t| (now() - t).abs() <= 1), "{at:?}");
    }
    assert_eq!(retrieved_at(&*store, msgs[3]), None);
    assert_eq!(retrieved_at(&*store, foreign), None);
    assert_eq!(ids(&*store, account), [msgs[0], msgs[1], msgs[3]]);
    assert_eq!(ids(&*store, other_account), [foreign]);

    // A later retrieval does not move the first retrieval time.
    exec(
        &*store,
        &format!(
            "UPDATE messages SET retrieved_at = 1000 WHERE id = {}",
            msgs[0]
        ),
    );
    store.commit_update(&lock, &[], &[msgs[0]]).unwrap();
    assert_eq!(retrieved_at(&*store, msgs[0]), Some(1000));
    store.commit_update(&lock, &[], &[]).unwrap();
    store.release_lock(&lock).unwrap();

    // Fencing: after a takeover nothing is marked or deleted.
    let (lapsed, thief) = lapsed_and_taken_over(&*store, account);
    assert!(matches!(
        store.commit_update(&lapsed, &[msgs[1]], &[msgs[3]]),
        Err(StoreError::LockLost)
    ));
    assert!(matches!(
        store.commit_update(&lapsed, &[], &[msgs[3]]),
        Err(StoreError::LockLost)
    ));
    assert_eq!(retrieved_at(&*store, msgs[3]), None);
    assert_eq!(ids(&*store, account), [msgs[0], msgs[1], msgs[3]]);
    store.commit_update(&thief, &[msgs[1]], &[msgs[3]]).unwrap();
    assert!(retrieved_at(&*store, msgs[3]).is_some());
    assert_eq!(ids(&*store, account), [msgs[0], msgs[3]]);
}

pub(super) fn renew_locks_renews_held_leases_and_reports_lost_ones(f: &dyn Fixture) {
    let store = f.open();
    let [a, b, c] = ["a", "b", "c"].map(|n| store.create_account(&name(n), "h").unwrap());
    assert!(store.renew_locks(&[], HOUR).unwrap().is_empty());
    let held = store
        .lock_maildrop(a, "pop3d@elsewhere:1#1", Duration::from_secs(10))
        .unwrap();
    let (lost, thief) = lapsed_and_taken_over(&*store, b);
    let released = store.lock_maildrop(c, "pop3d@elsewhere:1#3", HOUR).unwrap();
    store.release_lock(&released).unwrap();
    // The right token under another holder's name is not that holder's lease.
    let forged = MaildropLock {
        holder: "pop3d@elsewhere:9#9".into(),
        ..held.clone()
    };
    let batch = [held.clone(), lost.clone(), released.clone(), forged];
    assert_eq!(
        store.renew_locks(&batch, HOUR).unwrap(),
        [true, false, false, false]
    );
    // The held lease now runs an hour; the lost ones were not revived or touched.
    let shown = store.account_summary(&name("a")).unwrap().lock.unwrap();
    assert!(shown.expires_at >= now() + 3500, "{shown:?}");
    assert!(store.account_summary(&name("c")).unwrap().lock.is_none());
    assert!(matches!(
        store.lock_maildrop(c, "pop3d@elsewhere:1#4", HOUR),
        Ok(lock) if lock.token > released.token
    ));
    assert_eq!(
        store
            .account_summary(&name("b"))
            .unwrap()
            .lock
            .unwrap()
            .holder,
        thief.holder
    );
    assert!(matches!(
        store.commit_update(&lost, &[], &[]),
        Err(StoreError::LockLost)
    ));
    store.commit_update(&held, &[], &[]).unwrap();
    store.commit_update(&thief, &[], &[]).unwrap();
    // The same answers for one lock alone, and in any order.
    assert_eq!(
        store.renew_locks(&[lost, held], HOUR).unwrap(),
        [false, true]
    );
}
