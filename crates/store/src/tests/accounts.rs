//! Accounts: creation and lookup, deletion, secrets and their rehashing, SCRAM keys,
//! account import, domains.

use std::time::Duration;

use super::{count, deliver, name, Fixture, HOUR};
use crate::{AccountImport, AccountSecrets, OnExisting, StoreError, CHUNK_SIZE};

pub(super) fn accounts_create_lookup_duplicate(f: &dyn Fixture) {
    let store = f.open();
    let alice = store
        .create_account(&name("Alice@Example.ORG"), "$argon2id$a")
        .unwrap();
    let bob = store
        .create_account(&name("bob@example.org"), "$b")
        .unwrap();
    let plain = store.create_account(&name("alice"), "$c").unwrap();
    assert_eq!(count(&*store, "SELECT count(*) FROM domains"), 1);
    assert_ne!(alice, plain);

    let found = store.account(&name("ALICE@example.org")).unwrap().unwrap();
    assert_eq!(found.id, alice);
    assert_eq!(found.name.to_string(), "alice@example.org");
    assert_eq!(found.password_hash, "$argon2id$a");
    assert!(found.created_at > 1_600_000_000);
    assert_eq!(store.account(&name("Alice")).unwrap().unwrap().id, plain);
    assert!(store.account(&name("carol")).unwrap().is_none());
    assert!(store.account(&name("alice@example.com")).unwrap().is_none());

    for dup in ["alice@EXAMPLE.org", "ALICE"] {
        assert!(matches!(
            store.create_account(&name(dup), "$x"),
            Err(StoreError::AccountExists(n)) if n == dup.to_lowercase()
        ));
    }

    store
        .set_password(&name("bob@example.org"), "$new")
        .unwrap();
    let bob_row = store.account(&name("bob@example.org")).unwrap().unwrap();
    assert_eq!((bob_row.id, bob_row.password_hash.as_str()), (bob, "$new"));
    assert!(matches!(
        store.set_password(&name("carol"), "$x"),
        Err(StoreError::NoSuchAccount(_))
    ));

    deliver(&*store, &name("bob@example.org"), b"Subject: hi\n\nbody\n");
    let list = store.list_accounts().unwrap();
    let names: Vec<String> = list.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["alice", "alice@example.org", "bob@example.org"]);
    assert_eq!((list[2].messages, list[2].octets), (1, 21));
    let summary = store.account_summary(&name("bob@example.org")).unwrap();
    assert_eq!(summary, list[2]);
    assert!(matches!(
        store.account_summary(&name("carol")),
        Err(StoreError::NoSuchAccount(_))
    ));
}

pub(super) fn delete_account_refuses_while_locked(f: &dyn Fixture) {
    let store = f.open();
    let to = name("user@example.org");
    let account = store.create_account(&to, "h").unwrap();
    deliver(&*store, &to, &vec![b'z'; CHUNK_SIZE * 2]);
    let lock = store.lock_maildrop(account, "a@h:1#1", HOUR).unwrap();
    assert!(matches!(
        store.delete_account(&to),
        Err(StoreError::Locked { holder }) if holder == "a@h:1#1"
    ));
    assert!(store.account(&to).unwrap().is_some());
    store.release_lock(&lock).unwrap();

    // An expired lock does not block deletion.
    store
        .lock_maildrop(account, "a@h:1#2", Duration::ZERO)
        .unwrap();
    store.delete_account(&to).unwrap();
    assert!(store.account(&to).unwrap().is_none());
    for table in ["messages", "chunks", "locks", "accounts"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(count(&*store, &sql), 0, "{table}");
    }
    assert!(matches!(
        store.delete_account(&to),
        Err(StoreError::NoSuchAccount(_))
    ));
    assert!(matches!(
        store.deliver(&to, &mut &b"x\n"[..], 100),
        Err(StoreError::NoSuchAccount(_))
    ));
}

pub(super) fn secrets_are_stored_replaced_together_and_not_debugged(f: &dyn Fixture) {
    let store = f.open();
    let n = name("sec");
    let secrets = AccountSecrets {
        scram_sha256: Some("SCRAM-SHA-256$4096:c2FsdA==$a:b".into()),
        legacy_secret: Some("hunter2".into()),
        cram_md5_states: Some("cd3ba7de".into()),
    };
    store
        .create_account_with(&n, "$argon2id$x", &secrets)
        .unwrap();
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(acct.secrets, secrets);
    assert!(!format!("{acct:?}").contains("hunter2"));
    assert!(!format!("{acct:?}").contains("cd3ba7de"));
    let summary = store.account_summary(&n).unwrap();
    assert!(summary.legacy && summary.cram_md5);
    // A new password drops secrets derived from the old one.
    store.set_password(&n, "$argon2id$y").unwrap();
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(acct.secrets, AccountSecrets::default());
    let summary = store.account_summary(&n).unwrap();
    assert!(!summary.legacy && !summary.cram_md5);
}

pub(super) fn account_import_is_all_or_nothing(f: &dyn Fixture) {
    let store = f.open();
    let states = |s: &str| AccountSecrets {
        cram_md5_states: Some(s.into()),
        ..AccountSecrets::default()
    };
    store
        .create_account_with(&name("old"), "$argon2id$old", &states("o"))
        .unwrap();
    let batch = |hash: &str| {
        ["new@example.org", "old"].map(|n| AccountImport {
            name: name(n),
            password_hash: hash.into(),
            secrets: states(hash),
        })
    };
    // Refused on the second account: the first one is not created either.
    assert!(matches!(
        store.import_accounts(&batch("!1"), OnExisting::Refuse),
        Err(StoreError::AccountExists(n)) if n == "old"
    ));
    assert!(store.account(&name("new@example.org")).unwrap().is_none());
    assert_eq!(
        store.account(&name("old")).unwrap().unwrap().password_hash,
        "$argon2id$old"
    );
    // Replacing: one created (with its domain), one updated in place.
    let old_id = store.account(&name("old")).unwrap().unwrap().id;
    assert_eq!(
        store
            .import_accounts(&batch("!2"), OnExisting::Replace)
            .unwrap(),
        vec![true, false]
    );
    let old = store.account(&name("old")).unwrap().unwrap();
    assert_eq!((old.id, old.password_hash.as_str()), (old_id, "!2"));
    assert_eq!(old.secrets, states("!2"));
    let new = store.account(&name("new@example.org")).unwrap().unwrap();
    assert_eq!(new.secrets, states("!2"));
    assert_eq!(
        store.list_domains().unwrap(),
        vec![("example.org".into(), 1)]
    );
}

pub(super) fn rehash_replaces_only_the_hash_it_was_given(f: &dyn Fixture) {
    let store = f.open();
    let n = name("rehash");
    let secrets = AccountSecrets {
        scram_sha256: Some("s".into()),
        ..AccountSecrets::default()
    };
    let id = store.create_account_with(&n, "$old", &secrets).unwrap();
    assert!(store.rehash_password(id, "$old", "$new").unwrap());
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(
        (acct.password_hash.as_str(), acct.secrets),
        ("$new", secrets)
    );
    // A stale "old" hash (the password was changed meanwhile) changes nothing.
    assert!(!store.rehash_password(id, "$old", "$other").unwrap());
    assert_eq!(store.account(&n).unwrap().unwrap().password_hash, "$new");
}

pub(super) fn scram_keys_are_added_only_where_missing_and_for_the_same_hash(f: &dyn Fixture) {
    let store = f.open();
    let n = name("scramless");
    let id = store.create_account(&n, "$h").unwrap();
    // A password changed meanwhile: nothing stored.
    assert!(!store
        .add_scram_keys(id, "$other", "SCRAM-SHA-256$x")
        .unwrap());
    assert!(store.add_scram_keys(id, "$h", "SCRAM-SHA-256$a").unwrap());
    // Keys already there are never replaced this way.
    assert!(!store.add_scram_keys(id, "$h", "SCRAM-SHA-256$b").unwrap());
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(
        acct.secrets.scram_sha256.as_deref(),
        Some("SCRAM-SHA-256$a")
    );
    assert_eq!(acct.password_hash, "$h");
    // Replaced (another iteration count) only from the keys and hash still stored.
    assert!(!store
        .replace_scram_keys(id, "$h", "SCRAM-SHA-256$x", "SCRAM-SHA-256$c")
        .unwrap());
    assert!(!store
        .replace_scram_keys(id, "$other", "SCRAM-SHA-256$a", "SCRAM-SHA-256$c")
        .unwrap());
    assert!(store
        .replace_scram_keys(id, "$h", "SCRAM-SHA-256$a", "SCRAM-SHA-256$c")
        .unwrap());
    let acct = store.account(&n).unwrap().unwrap();
    assert_eq!(
        acct.secrets.scram_sha256.as_deref(),
        Some("SCRAM-SHA-256$c")
    );
}

pub(super) fn domains_list_add_and_delete_with_their_accounts(f: &dyn Fixture) {
    let store = f.open();
    store.create_account(&name("a@example.org"), "$x").unwrap();
    store.create_account(&name("b@example.org"), "$x").unwrap();
    store.create_account(&name("c@other.test"), "$x").unwrap();
    store.add_domain("empty.test").unwrap();
    assert!(matches!(
        store.add_domain("empty.test"),
        Err(StoreError::DomainExists(_))
    ));
    assert_eq!(
        store.list_domains().unwrap(),
        vec![
            ("empty.test".to_string(), 0),
            ("example.org".to_string(), 2),
            ("other.test".to_string(), 1)
        ]
    );
    let id = store.account(&name("a@example.org")).unwrap().unwrap().id;
    let lock = store
        .lock_maildrop(id, "pop3d@elsewhere:1#1", Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        store.delete_domain("example.org"),
        Err(StoreError::Locked { .. })
    ));
    store.release_lock(&lock).unwrap();
    let gone = store.delete_domain("example.org").unwrap();
    assert_eq!(gone, vec![name("a@example.org"), name("b@example.org")]);
    assert!(store.account(&name("b@example.org")).unwrap().is_none());
    assert!(store.account(&name("c@other.test")).unwrap().is_some());
    assert!(matches!(
        store.delete_domain("example.org"),
        Err(StoreError::NoSuchDomain(_))
    ));
}
