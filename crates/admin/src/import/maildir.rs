//! Reading maildirs: the files of `cur/` and `new/` (`tmp/` holds deliveries in progress and is
//! never read), in delivery order, each with a UID from a pluggable [`UidSource`].
//!
//! Delivery order is the time at the start of a maildir file name (`1700000000.M1P2.host:2,S`:
//! the decimal number before the first `.`); ties are broken by file name, and names without a
//! time come last, ordered by file name. Dotfiles and subdirectories are skipped.
//!
//! Nothing is followed: the maildir belongs to its mailbox owner, and an import may run as
//! root, so a planted `cur/1.x -> /etc/shadow` would copy that file into the owner's maildrop.
//! `cur/` and `new/` must be real directories and every message a regular file; a symbolic link
//! or a special file fails the import, naming it. The check is made again on the open file
//! (the same device and inode as the name had), so swapping a link in between is caught too.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use store::ImportMessage;

use super::{stored_size, too_large, x_uidl};

/// The subdirectories read, in the order used when two files share a name.
const SUBDIRS: [&str; 2] = ["cur", "new"];

/// One message file of a maildir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildirEntry {
    /// Full path of the file.
    pub path: PathBuf,
    /// `cur` or `new`.
    pub subdir: &'static str,
    /// The file name, flags included (`...:2,S`).
    pub file_name: OsString,
}

impl MaildirEntry {
    /// The file name without its `:2,...` flags: the message's unique name, which stays the same
    /// when flags change (the key of files such as dovecot-uidlist).
    pub fn base_name(&self) -> Cow<'_, str> {
        match self.file_name.to_string_lossy() {
            Cow::Borrowed(s) => Cow::Borrowed(s.split(':').next().unwrap_or(s)),
            Cow::Owned(s) => Cow::Owned(s.split(':').next().unwrap_or(&s).to_owned()),
        }
    }

    /// The delivery time at the start of the file name (unix seconds), if it has one.
    pub fn delivery_time(&self) -> Option<u64> {
        let name = self.file_name.as_encoded_bytes();
        let digits = name.split(|&b| b == b'.').next()?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// Sort key: timed names by time, then untimed ones; ties by file name, then subdirectory.
    fn order_key(&self) -> (bool, u64, &OsString, &'static str) {
        match self.delivery_time() {
            Some(t) => (false, t, &self.file_name, self.subdir),
            None => (true, 0, &self.file_name, self.subdir),
        }
    }
}

/// Where the UID of an imported maildir message comes from. The default is the `X-UIDL:` header
/// ([`XUidlHeader`]); a source reading another server's UID list (dovecot-uidlist) keys on
/// [`MaildirEntry::base_name`].
pub trait UidSource {
    /// The UID to keep for this message, or `None` to let the store assign a fresh one.
    fn uid(&self, entry: &MaildirEntry, message: &[u8]) -> anyhow::Result<Option<FoundUid>>;
}

/// A UID a [`UidSource`] found, and how far it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundUid {
    pub uid: String,
    /// The message's own claim (an `X-UIDL:` header, which any sender can write): the store
    /// replaces it with a generated UID when it is invalid or taken
    /// ([`ImportMessage::uid_claimed`]). Otherwise the old server's record (a UID list, a
    /// map file), which must be kept or the import fails.
    pub claimed: bool,
}

impl FoundUid {
    pub fn recorded(uid: String) -> FoundUid {
        FoundUid {
            uid,
            claimed: false,
        }
    }

    pub fn claimed(uid: String) -> FoundUid {
        FoundUid { uid, claimed: true }
    }
}

/// UIDs from qpopper's `X-UIDL:` header.
#[derive(Debug, Clone, Copy, Default)]
pub struct XUidlHeader;

impl UidSource for XUidlHeader {
    fn uid(&self, _entry: &MaildirEntry, message: &[u8]) -> anyhow::Result<Option<FoundUid>> {
        Ok(x_uidl(message).map(FoundUid::claimed))
    }
}

/// The message files of the maildir `dir`, in delivery order. At least one of `cur/` and `new/`
/// must exist.
pub fn list(dir: &Path) -> anyhow::Result<Vec<MaildirEntry>> {
    let mut entries = Vec::new();
    let mut found = false;
    for subdir in SUBDIRS {
        let path = dir.join(subdir);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => bail!(
                "{} is a symbolic link: refusing to follow it (it could lead to any directory)",
                path.display()
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let read =
            std::fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?;
        found = true;
        for entry in read {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            let file_name = entry.file_name();
            if file_name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            // The entry itself, never what a link points at.
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", path.display()))?;
            if kind.is_dir() {
                continue;
            }
            refuse_unless_regular(&path, kind)?;
            entries.push(MaildirEntry {
                path,
                subdir,
                file_name,
            });
        }
    }
    if !found {
        bail!("not a maildir: {} has neither cur/ nor new/", dir.display());
    }
    entries.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    Ok(entries)
}

/// Reads one message file, refusing it if it is empty or over `max_size` octets once stored.
pub fn read_message(
    entry: &MaildirEntry,
    uids: &dyn UidSource,
    max_size: u64,
) -> anyhow::Result<ImportMessage> {
    let which = entry.path.display().to_string();
    let file = open_regular(&entry.path).with_context(|| format!("opening {which}"))?;
    let mut bytes = Vec::new();
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {which}"))?;
    if bytes.is_empty() {
        bail!("{which} is empty");
    }
    let size = stored_size(&bytes);
    if size > max_size {
        return Err(too_large(&which, size, max_size));
    }
    let found = uids
        .uid(entry, &bytes)
        .with_context(|| format!("finding the UID of {which}"))?;
    let uid_claimed = found.as_ref().is_some_and(|f| f.claimed);
    Ok(ImportMessage {
        bytes,
        uid: found.map(|f| f.uid),
        uid_claimed,
    })
}

/// Fails for anything but a regular file, saying what it is.
fn refuse_unless_regular(path: &Path, kind: std::fs::FileType) -> anyhow::Result<()> {
    if kind.is_symlink() {
        bail!(
            "{} is a symbolic link: not imported (it could point at any file the importer may \
             read)",
            path.display()
        );
    }
    if !kind.is_file() {
        bail!("{} is not a regular file: not imported", path.display());
    }
    Ok(())
}

/// The text of a file of the maildir (`dovecot-uidlist`), opened as [`open_regular`] does.
pub(super) fn read_regular(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    open_regular(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Opens `path` only if it is a regular file and not a symbolic link, and only if the file
/// opened is the one that was checked (same device and inode), so a link swapped in between
/// the check and the open is refused rather than followed.
fn open_regular(path: &Path) -> anyhow::Result<File> {
    let before = std::fs::symlink_metadata(path)?;
    refuse_unless_regular(path, before.file_type())?;
    let file = File::open(path)?;
    let opened = file.metadata()?;
    if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) || !opened.is_file() {
        bail!(
            "{} changed while it was opened (replaced, perhaps by a symbolic link): not imported",
            path.display()
        );
    }
    Ok(file)
}

/// The messages of listed maildir entries, read one at a time as they are consumed.
pub struct Messages<'a> {
    entries: std::vec::IntoIter<MaildirEntry>,
    uids: &'a dyn UidSource,
    max_size: u64,
}

impl<'a> Messages<'a> {
    pub fn new(entries: Vec<MaildirEntry>, uids: &'a dyn UidSource, max_size: u64) -> Self {
        Messages {
            entries: entries.into_iter(),
            uids,
            max_size,
        }
    }
}

impl Iterator for Messages<'_> {
    type Item = anyhow::Result<ImportMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.entries.next()?;
        Some(read_message(&entry, self.uids, self.max_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed::TempDir;

    /// The messages of the maildir at `dir`, as `subdir/file name`, in import order.
    fn listed(dir: &Path) -> Vec<String> {
        list(dir)
            .expect("list")
            .iter()
            .map(|e| format!("{}/{}", e.subdir, e.file_name.to_string_lossy()))
            .collect()
    }

    /// The import order of a maildir holding `files` (and a subfolder, `cur/subfolder`).
    fn import_order(files: &[&str]) -> Vec<String> {
        let dir = TempDir::new("maildir");
        for name in files {
            dir.write(name, "Subject: x\n\nbody\n");
        }
        std::fs::create_dir_all(dir.path().join("cur/subfolder")).expect("mkdir");
        listed(dir.path())
    }

    #[test]
    fn ordered_by_delivery_time_then_name() {
        let files = [
            "cur/1700000300.M1P1.host:2,S",
            "new/1700000100.M9P9.host",
            "cur/1700000200.M2P2.host:2,",
            "new/1700000200.M1P1.host",
            "cur/99.M1P1.host:2,S",
            "new/zebra",
            "cur/alpha:2,S",
            "new/.hidden",
            "cur/.dovecot-index",
            "tmp/1.M1P1.host",
        ];
        let want = [
            "cur/99.M1P1.host:2,S",
            "new/1700000100.M9P9.host",
            "new/1700000200.M1P1.host",
            "cur/1700000200.M2P2.host:2,",
            "cur/1700000300.M1P1.host:2,S",
            "cur/alpha:2,S",
            "new/zebra",
        ];
        assert_eq!(import_order(&files), want);
    }

    #[test]
    fn same_time_ties_by_file_name() {
        let (a, b, c) = (
            "cur/1700000000.a.host:2,S",
            "new/1700000000.b.host",
            "cur/1700000000.c.host:2,S",
        );
        assert_eq!(import_order(&[b, a, c]), [a, b, c]);
    }

    #[test]
    fn only_new_or_only_cur_is_enough_and_neither_is_an_error() {
        let dir = TempDir::new("maildir");
        let err = list(dir.path()).expect_err("no cur/ or new/");
        assert!(format!("{err:#}").contains("not a maildir"), "{err:#}");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("mkdir");
        assert!(list(dir.path()).is_err());
        std::fs::create_dir_all(dir.path().join("new")).expect("mkdir");
        assert!(list(dir.path()).expect("new/ only").is_empty());
        let missing = dir.path().join("missing");
        assert!(list(&missing).is_err());
    }

    #[test]
    fn messages_with_x_uidl() {
        let dir = TempDir::new("maildir");
        dir.write(
            "cur/1.a.host:2,S",
            "X-UIDL:  qpop-1 \r\nSubject: a\r\n\r\nX-UIDL: no\r\n",
        );
        dir.write("new/2.b.host", "Subject: b\n\nbody\n");
        dir.write("new/3.c.host", "Subject: c\n\nX-UIDL: body-only\n");
        let entries = list(dir.path()).expect("list");
        assert_eq!(entries[0].base_name(), "1.a.host");
        assert_eq!(entries[0].delivery_time(), Some(1));
        let got: Vec<(Vec<u8>, Option<String>)> = Messages::new(entries, &XUidlHeader, 1 << 20)
            .map(|m| m.map(|m| (m.bytes, m.uid)))
            .collect::<anyhow::Result<_>>()
            .expect("read");
        assert_eq!(
            got,
            vec![
                (
                    b"X-UIDL:  qpop-1 \r\nSubject: a\r\n\r\nX-UIDL: no\r\n".to_vec(),
                    Some("qpop-1".to_owned())
                ),
                (b"Subject: b\n\nbody\n".to_vec(), None),
                (b"Subject: c\n\nX-UIDL: body-only\n".to_vec(), None),
            ]
        );
    }

    #[test]
    fn a_pluggable_uid_source_keys_on_the_base_name() {
        struct ByName;
        impl UidSource for ByName {
            fn uid(&self, entry: &MaildirEntry, _: &[u8]) -> anyhow::Result<Option<FoundUid>> {
                Ok(Some(FoundUid::recorded(format!(
                    "uid-{}",
                    entry.base_name()
                ))))
            }
        }
        let dir = TempDir::new("maildir");
        dir.write("cur/5.x.host:2,RS", "S: x\n\n");
        let got: Vec<Option<String>> = Messages::new(list(dir.path()).expect("list"), &ByName, 100)
            .map(|m| m.map(|m| m.uid))
            .collect::<anyhow::Result<_>>()
            .expect("read");
        assert_eq!(got, [Some("uid-5.x.host".to_owned())]);
    }

    #[test]
    fn empty_and_oversized_files_are_named() {
        let dir = TempDir::new("maildir");
        dir.write("new/1.empty.host", "");
        dir.write("new/2.big.host", &"x".repeat(200));
        let entries = list(dir.path()).expect("list");
        let errors: Vec<String> = Messages::new(entries, &XUidlHeader, 100)
            .map(|m| m.err().map(|e| format!("{e:#}")).unwrap_or_default())
            .collect();
        assert!(errors[0].contains("1.empty.host is empty"), "{}", errors[0]);
        assert!(
            errors[1].contains("2.big.host is too large"),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn a_planted_symbolic_link_fails_the_import_naming_it() {
        let dir = TempDir::new("maildir");
        dir.write("cur/1.a.host:2,S", "Subject: a\n\na\n");
        dir.write("secret", "root:$6$hash:19000::::::\n");
        let planted = dir.path().join("cur/2.b.host:2,S");
        std::os::unix::fs::symlink(dir.path().join("secret"), &planted).expect("symlink");
        let err = list(dir.path()).expect_err("a link is refused");
        let text = format!("{err:#}");
        assert!(text.contains("2.b.host:2,S is a symbolic link"), "{text}");
        assert!(!text.contains("root:"), "{text}");
        // A dangling link is no better.
        std::fs::remove_file(dir.path().join("secret")).expect("rm");
        assert!(list(dir.path()).is_err());
    }

    #[test]
    fn a_link_swapped_in_after_listing_is_not_followed() {
        let dir = TempDir::new("maildir");
        dir.write("new/1.a.host", "Subject: a\n\na\n");
        dir.write("secret", "root:$6$hash:19000::::::\n");
        let entries = list(dir.path()).expect("list");
        std::fs::remove_file(&entries[0].path).expect("rm");
        std::os::unix::fs::symlink(dir.path().join("secret"), &entries[0].path).expect("ln");
        let Err(err) = read_message(&entries[0], &XUidlHeader, 1 << 20) else {
            panic!("a swapped-in link was followed");
        };
        assert!(
            format!("{err:#}").contains("1.a.host is a symbolic link"),
            "{err:#}"
        );
    }

    #[test]
    fn cur_or_new_as_a_symbolic_link_is_not_followed() {
        let dir = TempDir::new("maildir");
        dir.write("elsewhere/1.a.host", "Subject: a\n\na\n");
        std::fs::create_dir_all(dir.path().join("cur")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("new"))
            .expect("symlink");
        let err = list(dir.path()).expect_err("refused");
        let text = format!("{err:#}");
        assert!(text.contains("new is a symbolic link"), "{text}");
    }

    #[test]
    fn delivery_time_parsing() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1700000000.M1P2.host:2,S", Some(1700000000)),
            ("42", Some(42)),
            ("42:2,S", None),
            (".5", None),
            ("x1.host", None),
            ("99999999999999999999999.a", None),
            ("", None),
        ];
        for (name, want) in cases {
            let e = MaildirEntry {
                path: PathBuf::from(name),
                subdir: "cur",
                file_name: OsString::from(name),
            };
            assert_eq!(e.delivery_time(), *want, "{name}");
        }
    }
}
