//! Account policy: LOGIN-DELAY (RFC 2449 section 6.5) and its token bucket, the batch of
//! recorded logins, EXPIRE (section 6.7).

use std::sync::Arc;
use std::time::Duration;

use super::{count, deliver, exec, ids, lapsed_and_taken_over, name, now, Fixture, HOUR};
use crate::{
    AccountId, AccountPolicy, Expire, LoginDelay, LoginRecord, LoginSource, MessageId, StoreError,
    CHUNK_SIZE,
};

pub(super) fn policy_round_trip(f: &dyn Fixture) {
    let store = f.open();
    let (alice, bob) = (name("alice@example.org"), name("bob"));
    store.create_account(&alice, "h").unwrap();
    store.create_account(&bob, "h").unwrap();
    let policy = |login_delay, expire| AccountPolicy {
        login_delay,
        expire,
    };
    assert_eq!(
        store.account(&alice).unwrap().unwrap().policy,
        AccountPolicy::default()
    );
    let cases = [
        policy(Some(0), Some(Expire::Never)),
        policy(Some(300), Some(Expire::Days(0))),
        policy(Some(u32::MAX), Some(Expire::Days(u32::MAX))),
        policy(None, Some(Expire::Days(30))),
        policy(Some(1), None),
        AccountPolicy::default(),
    ];
    for want in cases {
        store.set_policy(&alice, want).unwrap();
        assert_eq!(store.account(&alice).unwrap().unwrap().policy, want);
        assert_eq!(store.account_summary(&alice).unwrap().policy, want);
        let list = store.list_accounts().unwrap();
        assert_eq!(list[0].policy, want);
        // The other account is untouched.
        assert_eq!(list[1].policy, AccountPolicy::default());
    }
    assert!(matches!(
        store.set_policy(&name("carol"), AccountPolicy::default()),
        Err(StoreError::NoSuchAccount(n)) if n == "carol"
    ));
}

/// RFC 2449 section 6.5 and 8.1.2: LOGIN-DELAY as a persisted token bucket.
pub(super) fn login_delay_token_bucket(f: &dyn Fixture) {
    let store = f.open();
    let [free, strict, bursty, fine] =
        ["free", "strict", "bursty", "fine"].map(|n| store.create_account(&name(n), "h").unwrap());
    let two = Duration::from_secs(2);
    let refused = |verdict| match verdict {
        LoginDelay::TooSoon { retry_after } => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= two,
                "{retry_after:?}"
            );
            retry_after
        }
        LoginDelay::Allowed => panic!("allowed too soon"),
    };
    let state = |account: AccountId| store.login_state(account);

    // No delay: always allowed, the login still recorded.
    assert_eq!(
        store.account_summary(&name("free")).unwrap().last_login,
        None
    );
    for _ in 0..5 {
        let v = store.check_login_delay(free, Duration::ZERO, 0).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
    }
    let last = store.account_summary(&name("free")).unwrap().last_login;
    assert!(last.is_some_and(|t| (now() - t).abs() <= 1), "{last:?}");

    // Delay 2 s, no burst: the second login is too soon, and a refusal changes nothing.
    assert_eq!(
        store.check_login_delay(strict, two, 0).unwrap(),
        LoginDelay::Allowed
    );
    let before = state(strict);
    refused(store.check_login_delay(strict, two, 0).unwrap());
    assert_eq!(state(strict), before);

    // Burst 2: three quick logins, then a refusal.
    for _ in 0..3 {
        let v = store.check_login_delay(bursty, two, 2).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
    }
    refused(store.check_login_delay(bursty, two, 2).unwrap());

    // The state survives reopening the store.
    drop(store);
    let store = f.open();
    refused(store.check_login_delay(strict, two, 0).unwrap());
    refused(store.check_login_delay(bursty, two, 2).unwrap());

    // Two seconds later (simulated), one token is back; much later, the bucket is full
    // but holds no more than 1 + burst.
    exec(&*store, "UPDATE accounts SET last_login = last_login - 2");
    for account in [strict, bursty] {
        let burst = if account == strict { 0 } else { 2 };
        let v = store.check_login_delay(account, two, burst).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
        refused(store.check_login_delay(account, two, burst).unwrap());
    }
    exec(
        &*store,
        "UPDATE accounts SET last_login = last_login - 1000",
    );
    for _ in 0..3 {
        let v = store.check_login_delay(bursty, two, 2).unwrap();
        assert_eq!(v, LoginDelay::Allowed);
    }
    refused(store.check_login_delay(bursty, two, 2).unwrap());
    // A zero delay allows even an account that a delay would refuse.
    assert_eq!(
        store.check_login_delay(bursty, Duration::ZERO, 2).unwrap(),
        LoginDelay::Allowed
    );

    // Sub-second precision although last_login holds whole seconds.
    let short = Duration::from_millis(300);
    assert_eq!(
        store.check_login_delay(fine, short, 0).unwrap(),
        LoginDelay::Allowed
    );
    let wait = match store.check_login_delay(fine, short, 0).unwrap() {
        LoginDelay::TooSoon { retry_after } => retry_after,
        LoginDelay::Allowed => panic!("allowed too soon"),
    };
    assert!(
        wait > Duration::from_millis(200) && wait <= short,
        "{wait:?}"
    );
    std::thread::sleep(wait + Duration::from_millis(30));
    assert_eq!(
        store.check_login_delay(fine, short, 0).unwrap(),
        LoginDelay::Allowed
    );
    assert!(matches!(
        store.check_login_delay(fine, short, 0).unwrap(),
        LoginDelay::TooSoon { retry_after } if retry_after > Duration::from_millis(200)
    ));

    assert!(matches!(
        store.check_login_delay(fine + 100, two, 0),
        Err(StoreError::NoSuchAccount(_))
    ));
}

/// Two stores on one file stand for two processes: the bucket is never overdrawn.
pub(super) fn login_delay_is_atomic_across_connections(f: &dyn Fixture) {
    let first = f.open();
    let second = f.open();
    let account = first.create_account(&name("user"), "h").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &first } else { &second });
            std::thread::spawn(move || {
                (0..3)
                    .filter(|_| {
                        store.check_login_delay(account, HOUR, 2).unwrap() == LoginDelay::Allowed
                    })
                    .count()
            })
        })
        .collect();
    let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(allowed, 3);
}

/// RFC 2449 section 6.7: EXPIRE removes messages retrieved at least `retention` ago.
pub(super) fn expire_messages_deletes_only_old_retrieved_ones(f: &dyn Fixture) {
    let store = f.open();
    let (to, other) = (name("user"), name("other"));
    let account = store.create_account(&to, "h").unwrap();
    let other_account = store.create_account(&other, "h").unwrap();
    let day = 86_400;
    let [never, old, recent, just_now] = ["never", "old", "recent", "just now"]
        .map(|s| deliver(&*store, &to, &vec![b'x'; CHUNK_SIZE + s.len()]).id);
    let foreign = deliver(&*store, &other, b"retrieved long ago\n").id;
    let age = |id: MessageId, secs: i64| {
        exec(
            &*store,
            &format!(
                "UPDATE messages SET retrieved_at = {} WHERE id = {id}",
                now() - secs
            ),
        )
    };
    age(old, 10 * day);
    age(recent, day);
    age(just_now, 0);
    age(foreign, 10 * day);

    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    let five_days = Duration::from_secs(5 * 86_400);
    assert_eq!(store.expire_messages(&lock, five_days).unwrap(), 1);
    assert_eq!(ids(&*store, account), [never, recent, just_now]);
    assert!(store.read_chunk(old, 0).unwrap().is_none());
    assert_eq!(ids(&*store, other_account), [foreign]);
    // A retention reaching before 1970 expires nothing.
    assert_eq!(store.expire_messages(&lock, Duration::MAX).unwrap(), 0);
    // Retention zero: every retrieved message goes, never-retrieved ones stay.
    assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 2);
    assert_eq!(ids(&*store, account), [never]);
    assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 2 + 1);
    assert_eq!(store.expire_messages(&lock, Duration::ZERO).unwrap(), 0);
    store.release_lock(&lock).unwrap();

    // Fencing: after a takeover nothing expires.
    age(never, 10 * day);
    let (lapsed, thief) = lapsed_and_taken_over(&*store, account);
    assert!(matches!(
        store.expire_messages(&lapsed, Duration::ZERO),
        Err(StoreError::LockLost)
    ));
    assert_eq!(ids(&*store, account), [never]);
    assert_eq!(store.expire_messages(&thief, five_days).unwrap(), 1);
    assert!(ids(&*store, account).is_empty());
}

/// The batch of logins the server writes every few seconds: the latest per account wins, an
/// older record never replaces a newer one, a deleted account is skipped, and LOGIN-DELAY's
/// token bucket is not touched.
pub(super) fn logins_are_recorded_in_one_batch_latest_wins(f: &dyn Fixture) {
    let store = f.open();
    let (alice, bob, gone) = (name("alice"), name("bob"), name("gone"));
    let [a, b, g] = [&alice, &bob, &gone].map(|n| store.create_account(n, "h").unwrap());
    store.delete_account(&gone).unwrap();
    let login = |account, at, peer: &str, mechanism: &str| LoginRecord {
        account,
        at,
        source: LoginSource {
            peer: peer.into(),
            mechanism: mechanism.into(),
        },
    };
    assert_eq!(store.account_summary(&alice).unwrap().last_login, None);
    store
        .record_logins(&[
            login(a, 1_000, "192.0.2.1", "USER"),
            login(b, 2_000, "2001:db8::2", "SCRAM-SHA-256"),
            login(a, 3_000, "192.0.2.3", "APOP"),
            login(a, 2_500, "192.0.2.9", "PLAIN"),
            login(g, 3_000, "192.0.2.4", "USER"),
        ])
        .unwrap();
    let summary = store.account_summary(&alice).unwrap();
    assert_eq!(summary.last_login, Some(3_000));
    assert_eq!(
        summary.last_login_from,
        Some(LoginSource {
            peer: "192.0.2.3".into(),
            mechanism: "APOP".into()
        })
    );
    let list = store.list_accounts().unwrap();
    assert_eq!(list[1].last_login, Some(2_000));
    assert_eq!(
        list[1]
            .last_login_from
            .as_ref()
            .map(|s| s.mechanism.as_str()),
        Some("SCRAM-SHA-256")
    );
    // A late batch with an older login changes nothing.
    store
        .record_logins(&[login(a, 2_000, "192.0.2.5", "USER")])
        .unwrap();
    assert_eq!(
        store.account_summary(&alice).unwrap().last_login,
        Some(3_000)
    );
    assert_eq!(store.login_state(a), (None, None));
    store.record_logins(&[]).unwrap();
}
