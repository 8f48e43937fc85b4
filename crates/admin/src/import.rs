//! `import mbox FILE NAME` and `import maildir DIR NAME`: move a mailbox from another server into
//! an existing account in one [`Store::import`] call, so it lands whole or not at all.
//!
//! Messages are parsed lazily while the store consumes them: a mailbox of many gigabytes never
//! sits in memory, only one message at a time (bounded by [`DEFAULT_MAX_MESSAGE_SIZE`]). A source
//! error in the middle of the stream (a message too large, an unreadable file) must still leave
//! nothing stored; [`AbortOnError`] then hands the store a message it is bound to refuse, which
//! rolls the whole import back, and reports the source error instead of the store's.
//!
//! UIDs given by the old server are kept, so clients do not download everything again after the
//! migration: qpopper's `X-UIDL:` header for both formats, and for maildirs Dovecot's
//! `dovecot-uidlist` ([`dovecot`]) or a map file, through the pluggable
//! [`maildir::UidSource`] ([`uidl::MaildirUids`]). Any sender can write an `X-UIDL:` header, so
//! one that is invalid, too long or already taken does not fail the import: that message gets a
//! generated UID ([`ImportMessage::uid_claimed`]), and the summary says how many did.

pub mod dovecot;
pub mod maildir;
pub mod mbox;
pub mod passwd;
pub mod present;
pub mod uidl;

use std::fs::File;
use std::io::BufReader;

use anyhow::{anyhow, Context as _};
use store::{
    AccountName, Delivered, ImportMessage, QuotaCheck, Store, StoreError, DEFAULT_MAX_MESSAGE_SIZE,
};

use crate::output::print;
use crate::progress::Progress;
use crate::{account_name, open_existing, quota_check, ImportCommand, Location};

pub fn run(location: &Location, cmd: ImportCommand) -> anyhow::Result<()> {
    match cmd {
        ImportCommand::Passwd {
            file,
            domain,
            dry_run,
            update,
            skip_unsupported,
            legacy_auth,
        } => passwd::run(
            location,
            &file,
            &passwd::Options {
                domain,
                dry_run,
                update,
                skip_unsupported,
                legacy_auth,
            },
        ),
        ImportCommand::Mbox {
            file,
            name,
            ignore_quota,
        } => {
            let name = account_name(&name)?;
            let what = file.display().to_string();
            let input = File::open(&file).with_context(|| format!("opening {what}"))?;
            let octets = input.metadata().ok().map(|m| m.len());
            let mut source = mbox::Mbox::open(BufReader::new(input), DEFAULT_MAX_MESSAGE_SIZE)
                .with_context(|| format!("reading {what}"))?;
            let check = quota_check(ignore_quota);
            let mut progress = Progress::messages(&what, None, octets);
            let mut source = progress.count(&mut source);
            let (delivered, skipped) = import_all(location, &name, &mut source, &what, check)?;
            // The bar goes before the summary is printed.
            drop(source);
            drop(progress);
            print(&summary(&name, &delivered, 0, skipped))
        }
        ImportCommand::Maildir {
            dir,
            name,
            uidl_format,
            dovecot_uidl_format,
            uidl_map,
            ignore_quota,
        } => {
            let name = account_name(&name)?;
            let what = dir.display().to_string();
            let entries = maildir::list(&dir)?;
            let uids = uidl::MaildirUids::new(
                &dir,
                uidl_format,
                &dovecot_uidl_format,
                uidl_map.as_deref(),
            )?;
            // Totals only for a bar: a stat per file is not free on a large maildir.
            let octets = Progress::wanted().then(|| {
                let size = |e: &maildir::MaildirEntry| std::fs::symlink_metadata(&e.path).ok();
                entries.iter().filter_map(size).map(|m| m.len()).sum()
            });
            let mut progress = Progress::messages(&what, Some(entries.len() as u64), octets);
            let mut source = maildir::Messages::new(entries, &uids, DEFAULT_MAX_MESSAGE_SIZE);
            let check = quota_check(ignore_quota);
            let mut source = progress.count(&mut source);
            let (delivered, skipped) = import_all(location, &name, &mut source, &what, check)?;
            // The bar goes before the summary is printed.
            drop(source);
            drop(progress);
            print(&summary(
                &name,
                &delivered,
                uids.claims_refused.get(),
                skipped,
            ))?;
            let unnamed = uids.unnamed.get();
            if unnamed > 0 && uidl_format != uidl::UidlPolicy::None {
                eprintln!(
                    "popadm: {unnamed} messages had no UIDL in the sources used \
                     (--uidl-format, --uidl-map) and got new ones: clients will download them again"
                );
            }
            Ok(())
        }
    }
}

/// Imports everything `source` yields into `name` in one call, or nothing, skipping what the
/// maildrop holds already ([`present`]): the delivered messages and how many were skipped.
fn import_all(
    location: &Location,
    name: &AccountName,
    source: &mut dyn Iterator<Item = anyhow::Result<ImportMessage>>,
    what: &str,
    check: QuotaCheck,
) -> anyhow::Result<(Vec<Delivered>, u64)> {
    let store = open_existing(location)?;
    let mut present = present::Present::of(&*store, name)?;
    let delivered = import_into(&*store, name, &mut present.filter(source), what, check)?;
    Ok((delivered, present.skipped))
}

/// What an import did: how many messages, how many the maildrop held already (`skipped`),
/// and how many `X-UIDL:` headers were not kept (the store's refusals plus `refused_before`,
/// those the UID source turned down).
fn summary(
    name: &AccountName,
    delivered: &[Delivered],
    refused_before: u64,
    skipped: u64,
) -> String {
    let mut out = format!("imported {} messages into {name}", delivered.len());
    if skipped > 0 {
        out.push_str(&format!("; skipped {skipped} already there"));
    }
    let refused = delivered.iter().filter(|d| d.claim_refused).count() as u64 + refused_before;
    if refused > 0 {
        out.push_str(&format!(
            "; {refused} of them got a new UID because their X-UIDL: header was invalid, too \
             long or already taken"
        ));
    }
    out.push('\n');
    out
}

/// One [`Store::import`] call with everything `source` yields; on any error nothing is stored.
pub(crate) fn import_into(
    store: &dyn Store,
    name: &AccountName,
    source: &mut dyn Iterator<Item = anyhow::Result<ImportMessage>>,
    what: &str,
    check: QuotaCheck,
) -> anyhow::Result<Vec<Delivered>> {
    if store
        .account(name)
        .context("looking the account up")?
        .is_none()
    {
        return Err(StoreError::NoSuchAccount(name.to_string()).into());
    }
    let mut guarded = AbortOnError::new(source);
    let result = store.import_with(name, &mut guarded, check);
    match (guarded.error.take(), result) {
        (None, Err(e @ StoreError::OverQuota { .. })) => Err(e).with_context(|| {
            format!(
                "importing {what} into {name}; nothing was imported (--ignore-quota imports \
                 anyway)"
            )
        }),
        (None, result) => {
            result.with_context(|| format!("importing {what} into {name}; nothing was imported"))
        }
        (Some(source_error), Err(_refused_poison)) => Err(source_error)
            .with_context(|| format!("importing {what} into {name}; nothing was imported")),
        // Only a store that breaks its contract (UIDs are validated) gets here.
        (Some(source_error), Ok(stored)) => Err(source_error).with_context(|| {
            format!(
                "importing {what} into {name}: the store did not roll back, {} messages \
                 were stored",
                stored.len()
            )
        }),
    }
}

/// Passes messages through until the source fails; then records the error, yields one
/// [`poison`] message that makes the store refuse (and roll back) the whole import, and ends.
struct AbortOnError<'a> {
    source: &'a mut dyn Iterator<Item = anyhow::Result<ImportMessage>>,
    error: Option<anyhow::Error>,
    finished: bool,
}

impl<'a> AbortOnError<'a> {
    fn new(source: &'a mut dyn Iterator<Item = anyhow::Result<ImportMessage>>) -> Self {
        AbortOnError {
            source,
            error: None,
            finished: false,
        }
    }
}

impl Iterator for AbortOnError<'_> {
    type Item = ImportMessage;

    fn next(&mut self) -> Option<ImportMessage> {
        if self.finished {
            return None;
        }
        match self.source.next() {
            Some(Ok(message)) => Some(message),
            Some(Err(e)) => {
                self.error = Some(e);
                self.finished = true;
                Some(poison())
            }
            None => {
                self.finished = true;
                None
            }
        }
    }
}

/// A message no store may accept: it is empty and its UID breaks RFC 1939 section 7 (spaces,
/// and longer than 70 octets). Refusing it rolls the import back.
fn poison() -> ImportMessage {
    ImportMessage {
        bytes: Vec::new(),
        uid: Some(
            "popadm aborted this import because its source failed: store nothing of it".into(),
        ),
        // A record, so its invalid UID fails the import instead of being replaced.
        uid_claimed: false,
    }
}

/// The `X-UIDL:` header of a message (qpopper keeps its UIDs there), unfolded and trimmed;
/// `None` when absent or empty. Only the header section is searched.
pub fn x_uidl(message: &[u8]) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for line in message.split_inclusive(|&b| b == b'\n') {
        let content = strip_line_end(line);
        if content.is_empty() {
            break; // end of the header section
        }
        if let Some(v) = value.as_mut() {
            if content.starts_with(b" ") || content.starts_with(b"\t") {
                v.extend_from_slice(content); // folded continuation (RFC 5322 section 2.2.3)
                continue;
            }
            break;
        }
        if let Some(v) = header_value(content, b"x-uidl") {
            value = Some(v.to_vec());
        }
    }
    let value = String::from_utf8_lossy(&value?).trim().to_owned();
    (!value.is_empty()).then_some(value)
}

/// The value of a header line if its field name is `name` (ASCII case-insensitive).
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (field, value) = line.split_at(colon);
    // RFC 5322 section 4.5.3 (obsolete syntax) allows white space before the colon.
    field
        .trim_ascii_end()
        .eq_ignore_ascii_case(name)
        .then(|| value.get(1..).unwrap_or_default())
}

/// A line without its LF or CRLF.
fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Octets the message takes once stored with CRLF line ends (what LIST reports).
pub fn stored_size(message: &[u8]) -> u64 {
    let bare_lf = message
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || message.get(i - 1) != Some(&b'\r')))
        .count();
    let missing_end = if message.is_empty() || message.ends_with(b"\n") {
        0
    } else {
        2
    };
    (message.len() + bare_lf + missing_end) as u64
}

/// The error for a message over the size limit.
pub(crate) fn too_large(which: &str, size: u64, limit: u64) -> anyhow::Error {
    anyhow!("{which} is too large: {size} octets or more, the limit is {limit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_uidl_table() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"X-UIDL: abc123\n\nbody\n", Some("abc123")),
            (b"Subject: x\r\nx-uidl:   spaced \r\n\r\n", Some("spaced")),
            (b"X-Uidl\t: tab\n\n", Some("tab")),
            (
                b"X-UIDL: folded\n\tmore\nSubject: y\n\n",
                Some("folded\tmore"),
            ),
            (b"X-UIDL:\n\n", None),
            (b"Subject: none\n\nX-UIDL: in-body\n", None),
            (b"X-UIDLS: other\n\n", None),
            (b"X-UIDL: first\nX-UIDL: second\n\n", Some("first")),
            (b"X-UIDL: no-body-no-newline", Some("no-body-no-newline")),
            (b"", None),
        ];
        for (message, want) in cases {
            assert_eq!(
                x_uidl(message).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn stored_size_counts_crlf() {
        let cases: &[(&[u8], u64)] = &[
            (b"", 0),
            (b"a\r\n", 3),
            (b"a\n", 3),
            (b"a\nb\r\n", 6),
            (b"a", 3),
            (b"\n\n", 4),
        ];
        for (message, want) in cases {
            assert_eq!(stored_size(message), *want, "{message:?}");
        }
    }

    #[test]
    fn abort_on_error_stops_with_a_poison() {
        let mut source = vec![
            Ok(ImportMessage {
                bytes: b"a\r\n".to_vec(),
                uid: None,
                uid_claimed: false,
            }),
            Err(anyhow!("broken")),
            Ok(ImportMessage {
                bytes: b"b\r\n".to_vec(),
                uid: None,
                uid_claimed: false,
            }),
        ]
        .into_iter();
        let mut guarded = AbortOnError::new(&mut source);
        let out: Vec<ImportMessage> = guarded.by_ref().collect();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes, b"a\r\n");
        assert!(out[1].bytes.is_empty());
        let uid = out[1].uid.as_deref().expect("poison uid");
        assert!(uid.len() > 70 && uid.contains(' '));
        assert_eq!(
            guarded.error.as_ref().map(|e| e.to_string()).as_deref(),
            Some("broken")
        );
        assert!(guarded.next().is_none());
    }

    mod with_store {
        use super::super::*;
        use store::SqliteStore;
        use testbed::TempDir;

        /// A store in a temp dir with the empty account `bob`.
        fn store_with_bob() -> (TempDir, SqliteStore, AccountName) {
            let dir = TempDir::new("import");
            let store = SqliteStore::open(&dir.path().join("data")).expect("open store");
            let bob = AccountName::parse("bob").expect("name");
            store
                .create_account(&bob, "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA")
                .expect("create");
            (dir, store, bob)
        }

        fn mbox_import(
            store: &SqliteStore,
            bob: &AccountName,
            mbox: &str,
            max: u64,
        ) -> anyhow::Result<Vec<Delivered>> {
            let mut source = mbox::Mbox::open(mbox.as_bytes(), max)?;
            import_into(store, bob, &mut source, "test.mbox", QuotaCheck::Enforce)
        }

        fn stored(store: &SqliteStore, bob: &AccountName) -> u64 {
            store.account_summary(bob).expect("summary").messages
        }

        /// An mbox import as `popadm import mbox` runs it: what the maildrop holds is skipped.
        fn import_skipping(store: &SqliteStore, bob: &AccountName, mbox: &str) -> (usize, u64) {
            let mut source = mbox::Mbox::open(mbox.as_bytes(), 1 << 20).expect("mbox");
            let mut present = present::Present::of(store, bob).expect("present");
            let delivered = import_into(
                store,
                bob,
                &mut present.filter(&mut source),
                "t",
                QuotaCheck::Enforce,
            )
            .expect("import");
            (delivered.len(), present.skipped)
        }

        /// Issue 19: importing the same mailbox twice stores nothing twice, with or without
        /// X-UIDL; a message the mailbox holds twice is kept twice, and a third copy added
        /// later is imported once.
        #[test]
        fn a_second_import_of_the_same_mailbox_adds_nothing() {
            let (_dir, store, bob) = store_with_bob();
            let mbox = "From a\nX-UIDL: qpop-1\nSubject: 1\n\none\n\n\
                        From b\nSubject: 2\n\ntwo\n\n\
                        From b\nSubject: 2\n\ntwo\n\n";
            assert_eq!(import_skipping(&store, &bob, mbox), (3, 0));
            assert_eq!(import_skipping(&store, &bob, mbox), (0, 3));
            assert_eq!(stored(&store, &bob), 3);
            let more = format!("{mbox}From b\nSubject: 2\n\ntwo\n\nFrom c\nSubject: 3\n\nnew\n");
            assert_eq!(import_skipping(&store, &bob, &more), (2, 3));
            assert_eq!(stored(&store, &bob), 5);
        }

        #[test]
        fn mbox_import_keeps_x_uidl_and_order() {
            let (_dir, store, bob) = store_with_bob();
            let mbox = "From a\nX-UIDL: qpop-1\nSubject: 1\n\none\n\n\
                        From b\nSubject: 2\n\ntwo\n\n\
                        From c\nX-UIDL: qpop-3\nSubject: 3\n\n>From three\n\n";
            let delivered = mbox_import(&store, &bob, mbox, 1 << 20).expect("import");
            assert_eq!(delivered.len(), 3);
            assert_eq!(delivered[0].uid, "qpop-1");
            assert_eq!(delivered[2].uid, "qpop-3");
            assert_ne!(delivered[1].uid, "qpop-1");
            // Stored with CRLF line ends, the mboxrd quote undone.
            let size = b"X-UIDL: qpop-3\r\nSubject: 3\r\n\r\nFrom three\r\n".len() as u64;
            assert_eq!(delivered[2].size, size);
            assert_eq!(stored(&store, &bob), 3);
        }

        #[test]
        fn a_source_error_midway_stores_nothing() {
            let (_dir, store, bob) = store_with_bob();
            let mbox = "From a\nSubject: 1\n\none\n\nFrom b\nSubject: 2\n\ntwo\n\n\
                        From c\nSubject: 3\n\n0123456789012345678901234567890123456789\n";
            let err = mbox_import(&store, &bob, mbox, 40).expect_err("too large");
            let text = format!("{err:#}");
            assert!(text.contains("message 3 (line 11) is too large"), "{text}");
            assert!(text.contains("nothing was imported"), "{text}");
            assert_eq!(stored(&store, &bob), 0);
        }

        /// Messages with UIDs the old server recorded (not claimed by the messages).
        fn recorded(uids: &[&str]) -> Vec<anyhow::Result<ImportMessage>> {
            uids.iter()
                .map(|uid| {
                    Ok(ImportMessage {
                        bytes: b"S: x\n\nx\n".to_vec(),
                        uid: Some((*uid).to_owned()),
                        uid_claimed: false,
                    })
                })
                .collect()
        }

        #[test]
        fn a_store_error_stores_nothing() {
            // Recorded UIDs (a UID list, a map, a remote server's UIDL) must be kept: a
            // duplicate or invalid one fails the import. (An `X-UIDL:` header no longer does:
            // see `a_bad_x_uidl_gets_a_new_uid_and_is_counted`.)
            let (_dir, store, bob) = store_with_bob();
            let mut source = recorded(&["same", "same"]).into_iter();
            let err = import_into(&store, &bob, &mut source, "t", QuotaCheck::Enforce)
                .expect_err("duplicate");
            assert!(format!("{err:#}").contains("already in use"), "{err:#}");
            let mut source = recorded(&["ok", "has space"]).into_iter();
            let err = import_into(&store, &bob, &mut source, "t", QuotaCheck::Enforce)
                .expect_err("invalid uid");
            assert!(format!("{err:#}").contains("invalid UID"), "{err:#}");
            assert_eq!(stored(&store, &bob), 0);
        }

        #[test]
        fn a_bad_x_uidl_gets_a_new_uid_and_is_counted() {
            // Issue 15 item 12: any sender can write an X-UIDL: header; a duplicate, invalid
            // (RFC 1939 section 7: 0x21..0x7E) or over-long one must not fail the import.
            let (_dir, store, bob) = store_with_bob();
            let long = "u".repeat(71);
            let mbox = format!(
                "From a\nX-UIDL: same\n\none\n\nFrom b\nX-UIDL: same\n\ntwo\n\n\
                 From c\nX-UIDL: has space\n\nthree\n\nFrom d\nX-UIDL: {long}\n\nfour\n\n\
                 From e\nX-UIDL: caf\u{e9}\n\nfive\n"
            );
            let delivered = mbox_import(&store, &bob, &mbox, 1 << 20).expect("import");
            assert_eq!(delivered.len(), 5);
            assert_eq!(delivered[0].uid, "same");
            let refused: Vec<bool> = delivered.iter().map(|d| d.claim_refused).collect();
            assert_eq!(refused, [false, true, true, true, true]);
            assert_eq!(
                summary(&bob, &delivered, 0, 0),
                "imported 5 messages into bob; 4 of them got a new UID because their X-UIDL: \
                 header was invalid, too long or already taken\n"
            );
            // One already in the maildrop is taken too.
            let again = mbox_import(&store, &bob, "From a\nX-UIDL: same\n\nsix\n", 1 << 20)
                .expect("import");
            assert!(again[0].claim_refused && again[0].uid != "same");
            assert_eq!(stored(&store, &bob), 6);
            assert_eq!(
                summary(&bob, &[], 0, 0),
                "imported 0 messages into bob\n",
                "nothing said when nothing was refused"
            );
        }

        #[test]
        fn unknown_account() {
            let (_dir, store, _bob) = store_with_bob();
            let alice = AccountName::parse("alice").expect("name");
            let err = mbox_import(&store, &alice, "From a\nS: 1\n", 100).expect_err("unknown");
            assert_eq!(crate::exit::admin_code(&err), crate::EX_NOUSER);
        }

        #[test]
        fn maildir_import_in_delivery_order() {
            let (dir, store, bob) = store_with_bob();
            dir.write("md/new/300.c.host", "Subject: c\n\n");
            dir.write("md/cur/100.a.host:2,S", "X-UIDL: old-a\nSubject: a\n\n");
            dir.write("md/cur/200.b.host:2,S", "Subject: b\n\n");
            let entries = maildir::list(&dir.path().join("md")).expect("list");
            let mut source = maildir::Messages::new(entries, &maildir::XUidlHeader, 1 << 20);
            let delivered =
                import_into(&store, &bob, &mut source, "md", QuotaCheck::Enforce).expect("import");
            assert_eq!(delivered.len(), 3);
            assert_eq!(delivered[0].uid, "old-a");
            let sizes: Vec<u64> = delivered.iter().map(|d| d.size).collect();
            assert_eq!(sizes, [29, 14, 14]);
        }
    }
}
