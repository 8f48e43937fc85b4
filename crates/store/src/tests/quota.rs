//! Quotas: resolution (account, then domain, then global) and refusal of deliveries and
//! imports, also under concurrent deliveries.

use super::{count, deliver, name, uids, Fixture};
use crate::{
    AccountName, ImportMessage, Limit, Quota, QuotaCheck, QuotaScope, QuotaSetting, StoreError,
};

pub(super) fn quota_resolves_account_then_domain_then_global(f: &dyn Fixture) {
    let store = f.open();
    let (alice, bob, carol) = (name("alice@a.org"), name("bob@a.org"), name("carol"));
    for n in [&alice, &bob, &carol] {
        store.create_account(n, "h").unwrap();
    }
    let quota = |n: &AccountName| store.account_summary(n).unwrap().quota;
    let setting = |messages, octets| QuotaSetting { messages, octets };
    // Nothing set anywhere: unlimited.
    assert_eq!(quota(&alice), Quota::default());
    assert_eq!(
        store.quota_setting(QuotaScope::Global).unwrap(),
        setting(Limit::Unlimited, Limit::Unlimited)
    );
    assert_eq!(
        store.quota_setting(QuotaScope::Account(&alice)).unwrap(),
        setting(Limit::Default, Limit::Default)
    );

    let global = store
        .set_quota(
            QuotaScope::Global,
            Some(Limit::At(100)),
            Some(Limit::At(1 << 20)),
        )
        .unwrap();
    assert_eq!(global, setting(Limit::At(100), Limit::At(1 << 20)));
    let both = Quota {
        messages: Some(100),
        octets: Some(1 << 20),
    };
    assert_eq!((quota(&alice), quota(&carol)), (both, both));

    // The domain's default beats the global one, for the limit it sets.
    let set = store
        .set_quota(QuotaScope::Domain("a.org"), Some(Limit::At(10)), None)
        .unwrap();
    assert_eq!(set, setting(Limit::At(10), Limit::Default));
    assert_eq!(quota(&alice).messages, Some(10));
    assert_eq!(quota(&alice).octets, Some(1 << 20));
    assert_eq!(quota(&carol), both);

    // The account's own beats both; `Unlimited` there lifts the limit for it alone.
    store
        .set_quota(
            QuotaScope::Account(&alice),
            Some(Limit::Unlimited),
            Some(Limit::At(5)),
        )
        .unwrap();
    assert_eq!(
        quota(&alice),
        Quota {
            messages: None,
            octets: Some(5)
        }
    );
    assert_eq!(quota(&bob).messages, Some(10));
    let list = store.list_accounts().unwrap();
    assert_eq!(list[0].quota, quota(&alice));

    // Back to the defaults, level by level.
    store
        .set_quota(
            QuotaScope::Account(&alice),
            Some(Limit::Default),
            Some(Limit::Default),
        )
        .unwrap();
    assert_eq!(quota(&alice).messages, Some(10));
    store
        .set_quota(
            QuotaScope::Global,
            Some(Limit::Default),
            Some(Limit::Unlimited),
        )
        .unwrap();
    assert_eq!(quota(&carol), Quota::default());

    assert!(matches!(
        store.set_quota(QuotaScope::Domain("b.org"), Some(Limit::At(1)), None),
        Err(StoreError::NoSuchDomain(d)) if d == "b.org"
    ));
    assert!(matches!(
        store.quota_setting(QuotaScope::Account(&name("dave"))),
        Err(StoreError::NoSuchAccount(_))
    ));
}

fn over_quota(result: crate::Result<impl std::fmt::Debug>, account: &str, what: &str) {
    match result {
        Err(StoreError::OverQuota { account: a, detail }) => {
            assert_eq!(a, account);
            assert!(detail.starts_with(what), "{detail}");
        }
        other => panic!("expected OverQuota, got {other:?}"),
    }
}

pub(super) fn quota_refuses_deliveries_and_imports_whole(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    store
        .set_quota(
            QuotaScope::Account(&to),
            Some(Limit::At(3)),
            Some(Limit::At(44)),
        )
        .unwrap();
    // 11 octets each ("message N" and CRLF): three fit, exactly at the message limit.
    for i in 0..3 {
        deliver(&*store, &to, format!("message {i}\n").as_bytes());
    }
    let mut fourth: &[u8] = b"message 3\n";
    over_quota(store.deliver(&to, &mut fourth, 1000), "user", "messages");
    assert_eq!(uids(&*store, account).len(), 3);
    assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 3);

    // Octets: the fourth now fits exactly, then not one more message of 3 octets.
    store
        .set_quota(QuotaScope::Account(&to), Some(Limit::Unlimited), None)
        .unwrap();
    deliver(&*store, &to, b"message 3\n");
    let mut more: &[u8] = b"x\n";
    over_quota(store.deliver(&to, &mut more, 1000), "user", "octets");
    assert_eq!(store.account_summary(&to).unwrap().octets, 44);

    // An import is refused whole when all of it does not fit, and names the account.
    store
        .set_quota(QuotaScope::Account(&to), None, Some(Limit::At(60)))
        .unwrap();
    let batch = || {
        (0..3).map(|i| ImportMessage {
            bytes: format!("import {i}\r\n").into_bytes(),
            uid: None,
            uid_claimed: false,
        })
    };
    over_quota(store.import(&to, &mut batch()), "user", "octets");
    assert_eq!(uids(&*store, account).len(), 4);
    // Unless the quota is ignored (`popadm import --ignore-quota`).
    let imported = store
        .import_with(&to, &mut batch(), QuotaCheck::Ignore)
        .unwrap();
    assert_eq!(imported.len(), 3);
    assert_eq!(uids(&*store, account).len(), 7);
    // Now over, even an empty import of nothing new is fine, but no delivery is.
    store.import(&to, &mut std::iter::empty()).unwrap();
    let mut one: &[u8] = b"x\n";
    over_quota(store.deliver(&to, &mut one, 1000), "user", "octets");
    // Raising the limit lets mail in again.
    store
        .set_quota(QuotaScope::Account(&to), None, Some(Limit::Default))
        .unwrap();
    deliver(&*store, &to, b"x\n");
}

/// Deliveries from several threads (on PostgreSQL several connections, as several nodes'
/// LMTP listeners or `popadm deliver` processes would be) into a maildrop with room for ten:
/// exactly ten are stored, the rest refused, never one more.
pub(super) fn concurrent_deliveries_cannot_overshoot_the_quota(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user@quota.example");
    let account = store.create_account(&to, "h").unwrap();
    store
        .set_quota(
            QuotaScope::Domain("quota.example"),
            Some(Limit::At(10)),
            None,
        )
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (store, to) = (f.open(), to.clone());
            std::thread::spawn(move || {
                let mut outcomes = (0, 0);
                for i in 0..6 {
                    let body = format!("thread {t} message {i}\n");
                    match store.deliver(&to, &mut body.as_bytes(), 1000) {
                        Ok(_) => outcomes.0 += 1,
                        Err(StoreError::OverQuota { .. }) => outcomes.1 += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                outcomes
            })
        })
        .collect();
    let (mut stored, mut refused) = (0, 0);
    for thread in threads {
        let (s, r) = thread.join().unwrap();
        stored += s;
        refused += r;
    }
    assert_eq!((stored, refused), (10, 14));
    assert_eq!(uids(&*store, account).len(), 10);
}
