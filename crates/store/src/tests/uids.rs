//! UIDs and import: generated UIDs never reused, UIDs claimed by `X-UIDL:` kept or replaced,
//! an import kept whole or not at all.

use std::collections::HashSet;

use super::{count, deliver, name, uids, Fixture, HOUR};
use crate::{ImportMessage, StoreError};

pub(super) fn generated_uids_are_never_reused(f: &dyn Fixture) {
    let to = name("user@example.org");
    let mut seen = HashSet::new();
    let mut fresh = |uid: String| {
        assert_eq!(uid.len(), 16, "{uid}");
        assert!(
            uid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
            "{uid}"
        );
        assert!(seen.insert(uid.clone()), "UID {uid} given twice");
    };
    {
        let store = f.open();
        let account = store.create_account(&to, "h").unwrap();
        for i in 0..3 {
            let d = deliver(&*store, &to, format!("Message {i}\n").as_bytes());
            assert!(d.uid.starts_with(&format!("{:08X}", i + 1)));
            fresh(d.uid);
        }
        // Delete the newest message: its UID must not come back.
        let newest = store.list_messages(account).unwrap()[2].id;
        let lock = store.lock_maildrop(account, "t@h:1#1", HOUR).unwrap();
        store.commit_update(&lock, &[newest], &[]).unwrap();
        store.release_lock(&lock).unwrap();
        fresh(deliver(&*store, &to, b"after deletion\n").uid);
    }
    // After reopening.
    let store = f.open();
    fresh(deliver(&*store, &to, b"after reopening\n").uid);
    let before = uids(&*store, store.account(&to).unwrap().unwrap().id);
    let old_validity = before[0][8..].to_owned();
    // After deleting and re-creating the account under the same name.
    store.delete_account(&to).unwrap();
    let account = store.create_account(&to, "h").unwrap();
    for _ in 0..3 {
        fresh(deliver(&*store, &to, b"after re-creation\n").uid);
    }
    let after = uids(&*store, account);
    assert!(after.iter().all(|uid| uid[8..] != old_validity));
}

pub(super) fn generated_uid_skips_imported_one(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let validity: i64 = count(&*store, "SELECT uidvalidity FROM accounts");
    let taken = format!("{:08X}{validity:08X}", 1);
    store
        .import(
            &to,
            &mut [ImportMessage {
                bytes: b"x\n".to_vec(),
                uid: Some(taken.clone()),
                uid_claimed: false,
            }]
            .into_iter(),
        )
        .unwrap();
    let d = deliver(&*store, &to, b"y\n");
    assert_eq!(d.uid, format!("{:08X}{validity:08X}", 2));
    assert_eq!(uids(&*store, account), [taken, d.uid]);
}

/// An `X-UIDL:` header is the sender's claim (issue 15 item 12): an invalid, over-long or
/// taken one gets a generated UID instead of failing the import, and is reported; a valid
/// free one is kept, even in the generated form, which later deliveries then skip.
pub(super) fn claimed_uids_that_are_invalid_or_taken_give_way(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let validity: i64 = count(&*store, "SELECT uidvalidity FROM accounts");
    let delivered = deliver(&*store, &to, b"first\n");
    let next = format!("{:08X}{validity:08X}", 2);
    let msg = |uid: &str, claimed: bool| ImportMessage {
        bytes: b"Subject: old\n\nkept\n".to_vec(),
        uid: Some(uid.to_owned()),
        uid_claimed: claimed,
    };
    let long = "x".repeat(71);
    let batch = vec![
        msg(&next, true),
        msg("qpop-1", true),
        msg("has space", true),
        msg("qpop-1", true),
        msg(&delivered.uid, true),
        msg(&long, true),
        msg("recorded", false),
    ];
    let done = store.import(&to, &mut batch.into_iter()).unwrap();
    let refused: Vec<bool> = done.iter().map(|d| d.claim_refused).collect();
    assert_eq!(refused, [false, false, true, true, true, true, false]);
    assert_eq!(
        (&*done[0].uid, &*done[1].uid, &*done[6].uid),
        (&*next, "qpop-1", "recorded")
    );
    // The generated ones skip the claimed generated-form UID, as a later delivery does.
    for d in &done[2..6] {
        assert_eq!(d.uid.len(), 16, "{}", d.uid);
    }
    let later = deliver(&*store, &to, b"later\n");
    let mut all = uids(&*store, account);
    assert_eq!(all.len(), 9);
    assert!(all.contains(&later.uid));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "UIDs are unique");
    // A recorded UID still fails the import when taken.
    assert!(matches!(
        store.import(&to, &mut vec![msg("recorded", false)].into_iter()),
        Err(StoreError::DuplicateUid(u)) if u == "recorded"
    ));
}

pub(super) fn import_keeps_uids_and_is_all_or_nothing(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user");
    let account = store.create_account(&to, "h").unwrap();
    let msg = |uid: Option<&str>| ImportMessage {
        bytes: b"Subject: old\n\nkept\n".to_vec(),
        uid: uid.map(str::to_owned),
        uid_claimed: false,
    };
    let long = "x".repeat(71);
    let bad: Vec<(Vec<ImportMessage>, &str)> = vec![
        (vec![msg(Some("ok1")), msg(Some(""))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some("has space"))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some("tab\t"))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some("é"))], "invalid"),
        (vec![msg(Some("ok1")), msg(Some(&long))], "invalid"),
        (
            vec![msg(Some("ok1")), msg(None), msg(Some("ok1"))],
            "duplicate",
        ),
        (
            vec![
                msg(Some("ok1")),
                ImportMessage {
                    bytes: Vec::new(),
                    uid: None,
                    uid_claimed: false,
                },
            ],
            "empty",
        ),
    ];
    for (batch, kind) in bad {
        let err = store.import(&to, &mut batch.into_iter()).unwrap_err();
        let ok = match kind {
            "invalid" => matches!(err, StoreError::InvalidUid { .. }),
            "duplicate" => matches!(&err, StoreError::DuplicateUid(u) if u == "ok1"),
            _ => matches!(err, StoreError::InvalidMessage(_)),
        };
        assert!(ok, "{kind}: {err:?}");
        assert!(store.list_messages(account).unwrap().is_empty());
        assert_eq!(count(&*store, "SELECT count(*) FROM chunks"), 0);
    }

    let max = "~".repeat(70);
    let done = store
        .import(
            &to,
            &mut vec![msg(Some("UID-1")), msg(None), msg(Some(&max))].into_iter(),
        )
        .unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(done[0].uid, "UID-1");
    assert_eq!(done[1].uid.len(), 16);
    assert_eq!(done[2].uid, max);
    assert!(done.iter().all(|d| d.size == 22));
    let listed = store.list_messages(account).unwrap();
    assert_eq!(uids(&*store, account), [&*done[0].uid, &done[1].uid, &max]);
    assert_eq!((listed[0].header_octets, listed[0].body_lines), (16, 1));
    assert_eq!(
        store.read_chunk(done[0].id, 0).unwrap().unwrap(),
        b"Subject: old\r\n\r\nkept\r\n"
    );
    assert!(matches!(
        store.import(&to, &mut vec![msg(Some("new")), msg(Some("UID-1"))].into_iter()),
        Err(StoreError::DuplicateUid(u)) if u == "UID-1"
    ));
    assert_eq!(store.list_messages(account).unwrap().len(), 3);
    // The same UID is fine in another maildrop.
    let other = name("other");
    store.create_account(&other, "h").unwrap();
    store
        .import(&other, &mut vec![msg(Some("UID-1"))].into_iter())
        .unwrap();
}
