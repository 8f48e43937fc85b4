//! Where `import maildir` takes each message's UIDL from: a `--uidl-map` file first, then (by
//! `--uidl-format`) qpopper's `X-UIDL:` header and/or Dovecot's `dovecot-uidlist`; a message
//! none of them names gets a fresh UID from the store, and is counted.
//!
//! The map and the list are the old server's records; an `X-UIDL:` header is only the message's
//! claim, which any sender can write. A claim of a UID that a record gives another message is
//! not kept (that message keeps it, and the claimant gets its own record or a fresh UID), and
//! the store replaces a claim that is invalid or taken; both are counted.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context as _};

use super::dovecot::{base_name, UidList, UidlFormat, UIDLIST_FILE};
use super::maildir::{FoundUid, MaildirEntry, UidSource};
use super::x_uidl;

/// `--uidl-format`: which UIDLs of the old server to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UidlPolicy {
    /// The `X-UIDL:` header, else `dovecot-uidlist` when the maildir has one
    Auto,
    /// `dovecot-uidlist` only (required), ignoring `X-UIDL:` headers, as Dovecot does unless
    /// `pop3_reuse_xuidl = yes`
    Dovecot,
    /// The `X-UIDL:` header only (qpopper and the servers that copied it)
    Xuidl,
    /// None: every message gets a fresh UID (clients download everything again)
    None,
}

/// The UID source of one maildir import.
pub struct MaildirUids {
    map: HashMap<String, String>,
    xuidl: bool,
    dovecot: Option<(UidList, UidlFormat)>,
    /// Every UID the map and the list give (a claim of one of them is not kept).
    recorded: HashSet<String>,
    /// Messages that none of the sources named (they get fresh UIDs).
    pub unnamed: Cell<u64>,
    /// `X-UIDL:` headers not kept because a record gives their UID to another message.
    pub claims_refused: Cell<u64>,
}

impl MaildirUids {
    /// Reads what `policy` and `map_file` need from the maildir `dir`; `format` is Dovecot's
    /// `pop3_uidl_format`.
    pub fn new(
        dir: &Path,
        policy: UidlPolicy,
        format: &str,
        map_file: Option<&Path>,
    ) -> anyhow::Result<MaildirUids> {
        let map = match map_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parse_map(&text).with_context(|| format!("reading {}", path.display()))?
            }
            None => HashMap::new(),
        };
        let uidlist = dir.join(UIDLIST_FILE);
        let dovecot = match policy {
            UidlPolicy::Xuidl | UidlPolicy::None => None,
            UidlPolicy::Auto if !uidlist.exists() => None,
            UidlPolicy::Auto | UidlPolicy::Dovecot => {
                // Owned by the mailbox owner like the messages: not followed if a link.
                let text = super::maildir::read_regular(&uidlist)
                    .with_context(|| format!("reading {}", uidlist.display()))?;
                let list = UidList::parse(&text)
                    .with_context(|| format!("reading {}", uidlist.display()))?;
                let format = UidlFormat::parse(format).context("--dovecot-uidl-format")?;
                Some((list, format))
            }
        };
        let mut recorded: HashSet<String> = map.values().cloned().collect();
        if let Some((list, format)) = &dovecot {
            for base in list.records.keys() {
                // A record that cannot be rendered fails at its own message, if that exists.
                if let Some(uid) = record_uid(list, format, base).ok().flatten() {
                    recorded.insert(uid);
                }
            }
        }
        Ok(MaildirUids {
            map,
            xuidl: matches!(policy, UidlPolicy::Auto | UidlPolicy::Xuidl),
            dovecot,
            recorded,
            unnamed: Cell::new(0),
            claims_refused: Cell::new(0),
        })
    }
}

/// The UIDL Dovecot gives the message `base` by its list: the kept one, else the format's.
fn record_uid(list: &UidList, format: &UidlFormat, base: &str) -> anyhow::Result<Option<String>> {
    let Some(record) = list.records.get(base) else {
        return Ok(None);
    };
    match &record.pop3_uidl {
        Some(uidl) => Ok(Some(uidl.clone())),
        None => format.render(record, list.uid_validity, base).map(Some),
    }
}

impl UidSource for MaildirUids {
    fn uid(&self, entry: &MaildirEntry, message: &[u8]) -> anyhow::Result<Option<FoundUid>> {
        let base = entry.base_name();
        if let Some(uid) = self.map.get(base.as_ref()) {
            return Ok(Some(FoundUid::recorded(uid.clone())));
        }
        let claim = if self.xuidl { x_uidl(message) } else { None };
        if let Some(uid) = &claim {
            if !self.recorded.contains(uid) {
                return Ok(Some(FoundUid::claimed(uid.clone())));
            }
        }
        let own = match &self.dovecot {
            Some((list, format)) => record_uid(list, format, &base)?,
            None => None,
        };
        if claim.is_some() && claim != own {
            self.claims_refused.set(self.claims_refused.get() + 1);
        } else if own.is_none() {
            self.unnamed.set(self.unnamed.get() + 1);
        }
        Ok(own.map(FoundUid::recorded))
    }
}

/// `--uidl-map`: lines of `file-name SP uidl` (the file name with or without its `:2,` flags);
/// empty lines and lines starting with `#` are skipped.
fn parse_map(text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((file, uidl)) = line.split_once(char::is_whitespace) else {
            bail!("line {}: expected `file-name uidl`: {line:?}", i + 1);
        };
        let uidl = uidl.trim();
        if uidl.contains(char::is_whitespace) {
            bail!("line {}: a UIDL has no spaces: {line:?}", i + 1);
        }
        if map
            .insert(base_name(file).to_owned(), uidl.to_owned())
            .is_some()
        {
            bail!("line {}: {file} is listed twice", i + 1);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::maildir::{list, Messages};
    use testbed::TempDir;

    use crate::import::dovecot::tests::FIXTURE as UIDLIST;

    /// A maildir as Dovecot leaves it: three listed messages (one with a kept POP3 UIDL, one
    /// with an `X-UIDL:` header), one delivered after the list was last written; the list's
    /// fourth record has no file (expunged since).
    fn maildir() -> TempDir {
        let dir = TempDir::new("dovecot");
        dir.write("dovecot-uidlist", UIDLIST);
        dir.write("new/1700000001.M1P1.host", "Subject: 1\n\n1\n");
        dir.write(
            "cur/1700000002.M2P2.host,S=1234,W=1260:2,RS",
            "X-UIDL: qpop-2\nSubject: 2\n\n2\n",
        );
        dir.write("cur/1700000003.M3P3.host:2,S", "Subject: 3\n\n3\n");
        dir.write("new/1700000009.M9P9.host", "Subject: 9\n\n9\n");
        dir
    }

    fn uids(
        dir: &TempDir,
        policy: UidlPolicy,
        format: &str,
        map: Option<&Path>,
    ) -> anyhow::Result<(Vec<Option<String>>, u64)> {
        let source = MaildirUids::new(dir.path(), policy, format, map)?;
        let got = Messages::new(list(dir.path())?, &source, 1 << 20)
            .map(|m| m.map(|m| m.uid))
            .collect::<anyhow::Result<_>>()?;
        Ok((got, source.unnamed.get()))
    }

    fn some(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_owned)).collect()
    }

    #[test]
    fn dovecot_default_uidls() {
        let dir = maildir();
        // %08Xu%08Xv: Dovecot's default pop3_uidl_format, in lower-case hex as Dovecot prints it;
        // 1700000000 = 0x6553f100.
        let (got, unnamed) = uids(&dir, UidlPolicy::Dovecot, "%08Xu%08Xv", None).expect("import");
        assert_eq!(
            got,
            some(&[
                Some("000000016553f100"),
                Some("000000026553f100"),
                Some("0000abcd-legacy"),
                None
            ])
        );
        assert_eq!(unnamed, 1);
        // auto: the X-UIDL header wins over the list.
        let (got, _) = uids(&dir, UidlPolicy::Auto, "%08Xu%08Xv", None).expect("import");
        assert_eq!(got[1].as_deref(), Some("qpop-2"));
        assert_eq!(got[0].as_deref(), Some("000000016553f100"));
        // Another configured format.
        let (got, _) = uids(&dir, UidlPolicy::Dovecot, "%v.%u", None).expect("import");
        assert_eq!(got[0].as_deref(), Some("1700000000.1"));
    }

    #[test]
    fn other_policies() {
        let dir = maildir();
        let (got, unnamed) = uids(&dir, UidlPolicy::Xuidl, "%u", None).expect("import");
        assert_eq!(got, some(&[None, Some("qpop-2"), None, None]));
        assert_eq!(unnamed, 3);
        let (got, _) = uids(&dir, UidlPolicy::None, "%u", None).expect("import");
        assert_eq!(got, some(&[None, None, None, None]));
        // dovecot without a dovecot-uidlist is an error; auto falls back to X-UIDL.
        std::fs::remove_file(dir.path().join("dovecot-uidlist")).expect("rm");
        assert!(uids(&dir, UidlPolicy::Dovecot, "%u", None).is_err());
        let (got, _) = uids(&dir, UidlPolicy::Auto, "%u", None).expect("import");
        assert_eq!(got, some(&[None, Some("qpop-2"), None, None]));
    }

    #[test]
    fn a_map_file_comes_first() {
        let dir = maildir();
        let map = dir.path().join("map.txt");
        std::fs::write(
            &map,
            "# file uidl\n\n1700000009.M9P9.host mapped-9\n1700000001.M1P1.host:2,S  mapped-1\n",
        )
        .expect("write");
        let (got, unnamed) =
            uids(&dir, UidlPolicy::Dovecot, "%08Xu%08Xv", Some(&map)).expect("import");
        assert_eq!(
            got,
            some(&[
                Some("mapped-1"),
                Some("000000026553f100"),
                Some("0000abcd-legacy"),
                Some("mapped-9")
            ])
        );
        assert_eq!(unnamed, 0);
    }

    #[test]
    fn an_x_uidl_claiming_a_recorded_uidl_of_another_message_is_not_kept() {
        // Issue 15 item 12: a sender who writes the Dovecot UIDL of another message into an
        // X-UIDL: header (here one delivered before it) neither takes that UIDL nor fails the
        // import: the recorded message keeps it, the claimant gets a fresh one, counted.
        let dir = maildir();
        dir.write(
            "cur/1700000000.M0P0.host:2,S",
            "X-UIDL: 000000016553f100\nSubject: 0\n\n0\n",
        );
        let source =
            MaildirUids::new(dir.path(), UidlPolicy::Auto, "%08Xu%08Xv", None).expect("uids");
        let got: Vec<(Option<String>, bool)> =
            Messages::new(list(dir.path()).expect("list"), &source, 1 << 20)
                .map(|m| m.map(|m| (m.uid, m.uid_claimed)))
                .collect::<anyhow::Result<_>>()
                .expect("read");
        let owned = |s: &str| Some(s.to_owned());
        assert_eq!(
            got,
            [
                (None, false),
                (owned("000000016553f100"), false),
                (owned("qpop-2"), true),
                (owned("0000abcd-legacy"), false),
                (None, false),
            ]
        );
        assert_eq!((source.claims_refused.get(), source.unnamed.get()), (1, 1));
    }

    #[test]
    fn map_errors() {
        for (text, want) in [
            ("lonely\n", "expected"),
            ("a u1\na:2,S u2\n", "twice"),
            ("a u 1\n", "no spaces"),
        ] {
            let err = parse_map(text).expect_err(text);
            assert!(format!("{err:#}").contains(want), "{text:?}: {err:#}");
        }
    }
}
