//! `deliver [-f SENDER] NAME`: one message from stdin into a maildrop, as a local delivery agent
//! for an MTA (Postfix pipe transport or `mailbox_command`, Exim pipe transport, fetchmail `mda`).
//! Silent on success; exit codes follow sysexits (see [`crate::exit::deliver_code`]).
//!
//! As an LDA does (RFC 5321 section 4.4, and Postfix local(8) / Dovecot LDA habits) it puts
//! `Return-Path: <sender>` and `Delivered-To: NAME` on top of the message. The sender is `-f`,
//! else the `SENDER` environment variable (Postfix sets it for `mailbox_command`), else the
//! address of an mbox `From ` envelope line at the very start of the input, which is removed (an
//! LDA is handed one by Postfix's local(8) and by procmail-style callers); with none of them, no
//! `Return-Path:` is added. An empty sender (a bounce) gives `Return-Path: <>`.
//!
//! The message is read whole before the store is written ([`spool`]): a slow pipe or a large
//! message must not hold the database's write lock (logins, UPDATE and lease renewals wait for
//! it), so the transaction only copies a spool that is already complete. Up to
//! [`SPOOL_IN_MEMORY`] octets stay in memory; a larger message goes on to an unlinked temporary
//! file in the data directory (the system's temporary directory with PostgreSQL), never more
//! than the size limit plus one octet, so a message over it is refused as before.

use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context as _;
use store::{AccountName, StoreError};

use crate::{account_name, open_existing, require_account, Location};
pub use lmtp::address::{clean_sender, BadSender};

/// Messages up to this size are spooled in memory.
pub const SPOOL_IN_MEMORY: usize = 1 << 20;

/// Environment variable with the envelope sender (set by Postfix for `mailbox_command`).
pub const SENDER_ENV: &str = "SENDER";

/// Longest first line inspected for a `From ` envelope line (RFC 5322 section 2.1.1's limit).
const MAX_FIRST_LINE: u64 = 1000;

pub fn run(
    location: &Location,
    name: &str,
    max_size: u64,
    from: Option<String>,
    lda_headers: bool,
) -> anyhow::Result<()> {
    let name = account_name(name)?;
    let sender = match lda_headers {
        true => from.or_else(|| std::env::var(SENDER_ENV).ok()),
        false => None,
    };
    let sender = sender.as_deref().map(clean_sender).transpose()?;
    // A missing database is not created: it means a wrong data directory (an MTA's environment
    // lacking POP3D_DATA_DIR, say), and bouncing every message as "no such user" would lose
    // mail that a fixed configuration could still deliver. Exit 75 keeps it queued.
    let store = open_existing(location)?;
    // Look the account up before reading anything, so an unknown user costs no I/O.
    require_account(&*store, &name)?;
    let mut stdin = std::io::stdin().lock();
    let prefix = if lda_headers {
        prefix(&mut stdin, &name, sender.as_deref())
    } else {
        raw_prefix(&mut stdin)
    };
    let prefix = prefix
        .map_err(StoreError::Input)
        .context("reading the message from stdin")??;
    // The limit is the message's: the headers added here do not count against it.
    let added = prefix.added as u64;
    let limit = max_size.saturating_add(added);
    let spool_dir = match location {
        Location::Dir(dir, _) => dir.clone(),
        Location::Postgres(_) => std::env::temp_dir(),
    };
    let mut message = spool(
        &mut Cursor::new(prefix.bytes).chain(stdin),
        limit,
        &spool_dir,
    )
    .map_err(StoreError::Input)
    .context("reading the message from stdin")?;
    store
        .deliver(&name, &mut message, limit)
        .map_err(|e| match e {
            // Sizes as the MTA sees them: the message's, without the lines added here.
            StoreError::TooLarge { size, limit } => StoreError::TooLarge {
                size: size.saturating_sub(added),
                limit: limit.saturating_sub(added),
            },
            e => e,
        })
        .with_context(|| format!("delivering to {name}"))?;
    Ok(())
}

/// Reads all of `input` (at most `limit` + 1 octets: normalising only adds octets, so more is
/// over the limit anyway and the store refuses it) before anything is stored: into memory up to
/// [`SPOOL_IN_MEMORY`] octets, else into an unlinked temporary file in `dir`.
fn spool(input: &mut dyn Read, limit: u64, dir: &Path) -> std::io::Result<Box<dyn Read>> {
    let mut input = input.take(limit.saturating_add(1));
    let mut head = Vec::new();
    (&mut input)
        .take(SPOOL_IN_MEMORY as u64)
        .read_to_end(&mut head)?;
    if head.len() < SPOOL_IN_MEMORY {
        return Ok(Box::new(Cursor::new(head)));
    }
    let mut file = store::unlinked_file(dir, "popadm-deliver")?;
    file.write_all(&head)?;
    drop(head);
    std::io::copy(&mut input, &mut file)?;
    file.flush()?;
    file.seek(SeekFrom::Start(0))?;
    Ok(Box::new(BufReader::new(file)))
}

/// What goes before the rest of stdin: the added header lines and the first line of the
/// message (unless it was a `From ` envelope line).
#[derive(Debug, PartialEq, Eq)]
struct Prefix {
    bytes: Vec<u8>,
    /// Octets of added header lines at the start of `bytes`.
    added: usize,
}

/// Reads the first line of `input` (at most [`MAX_FIRST_LINE`] octets) and builds the
/// [`Prefix`]. `sender` (already cleaned) wins over a `From ` line's. The inner error is an
/// empty message, refused with EX_DATAERR.
fn prefix(
    input: &mut dyn BufRead,
    name: &AccountName,
    sender: Option<&str>,
) -> std::io::Result<anyhow::Result<Prefix>> {
    let mut first = Vec::new();
    input.take(MAX_FIRST_LINE).read_until(b'\n', &mut first)?;
    let mut envelope_sender = None;
    // Only a whole line: a longer one is message text, passed on as it is.
    if first.starts_with(b"From ") && first.ends_with(b"\n") {
        envelope_sender = Some(from_line_sender(&first));
        first.clear();
    }
    if first.is_empty() && input.fill_buf()?.is_empty() {
        return Ok(Err(
            StoreError::InvalidMessage("the message is empty").into()
        ));
    }
    let sender = match (sender, envelope_sender) {
        (Some(s), _) => Some(s.to_owned()),
        (None, Some(s)) => match clean_sender(&s) {
            Ok(s) => Some(s),
            Err(e) => return Ok(Err(e.into())),
        },
        (None, None) => None,
    };
    // The same lines as the LMTP listener writes.
    let mut bytes = lmtp::lda_headers(sender.as_deref(), &name.to_string());
    let added = bytes.len();
    bytes.extend_from_slice(&first);
    Ok(Ok(Prefix { bytes, added }))
}

/// `--no-lda-headers`: nothing added; only the check that the message is not empty (peeking
/// keeps the bytes in stdin's buffer, so the store still reads the whole message).
fn raw_prefix(input: &mut dyn BufRead) -> std::io::Result<anyhow::Result<Prefix>> {
    if input.fill_buf()?.is_empty() {
        return Ok(Err(
            StoreError::InvalidMessage("the message is empty").into()
        ));
    }
    Ok(Ok(Prefix {
        bytes: Vec::new(),
        added: 0,
    }))
}

/// The address of an mbox `From sender date` line; `MAILER-DAEMON` (Postfix's word for the null
/// sender) gives the empty sender.
fn from_line_sender(line: &[u8]) -> String {
    let line = String::from_utf8_lossy(line);
    let sender = line.split_ascii_whitespace().nth(1).unwrap_or_default();
    if sender.eq_ignore_ascii_case("MAILER-DAEMON") {
        String::new()
    } else {
        sender.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> AccountName {
        AccountName::parse("Alice@Example.org").expect("valid")
    }

    /// The whole message as the store would read it: the prefix chained with the rest.
    fn delivered(input: &[u8], sender: Option<&str>) -> anyhow::Result<Vec<u8>> {
        let mut r: &[u8] = input;
        let p = prefix(&mut r, &name(), sender).expect("no I/O error")?;
        assert!(p.added <= p.bytes.len());
        let mut out = Vec::new();
        Cursor::new(p.bytes)
            .chain(r)
            .read_to_end(&mut out)
            .expect("read");
        Ok(out)
    }

    #[test]
    fn lda_headers_go_on_top() {
        // RFC 5321 section 4.4: the final delivery inserts the return path at the beginning.
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (
                b"Subject: x\n\nbody\n",
                Some("bob@example.net"),
                "Return-Path: <bob@example.net>\r\nDelivered-To: alice@example.org\r\nSubject: x\n\nbody\n",
            ),
            (
                b"Subject: x\r\n\r\nbody\r\n",
                None,
                "Delivered-To: alice@example.org\r\nSubject: x\r\n\r\nbody\r\n",
            ),
            // The null sender of a bounce.
            (
                b"Subject: bounce\n\n",
                Some(""),
                "Return-Path: <>\r\nDelivered-To: alice@example.org\r\nSubject: bounce\n\n",
            ),
            // An mbox From_ line is removed and gives the sender when none is given.
            (
                b"From carol@example.com Thu Nov 26 10:00:00 2026\nSubject: y\n\nz\n",
                None,
                "Return-Path: <carol@example.com>\r\nDelivered-To: alice@example.org\r\nSubject: y\n\nz\n",
            ),
            (
                b"From MAILER-DAEMON Thu Nov 26 10:00:00 2026\nSubject: y\n\nz\n",
                None,
                "Return-Path: <>\r\nDelivered-To: alice@example.org\r\nSubject: y\n\nz\n",
            ),
            // -f wins over the From_ line.
            (
                b"From carol@example.com Thu Nov 26 10:00:00 2026\nSubject: y\n\n",
                Some("dave@example.com"),
                "Return-Path: <dave@example.com>\r\nDelivered-To: alice@example.org\r\nSubject: y\n\n",
            ),
            // `From:` is a header, not an envelope line.
            (
                b"From: carol@example.com\n\nhi\n",
                None,
                "Delivered-To: alice@example.org\r\nFrom: carol@example.com\n\nhi\n",
            ),
            // No line end at all.
            (
                b"Subject: short",
                None,
                "Delivered-To: alice@example.org\r\nSubject: short",
            ),
        ];
        for (input, sender, want) in cases {
            let got = delivered(input, *sender).expect("accepted");
            assert_eq!(
                String::from_utf8_lossy(&got),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_long_first_line_is_streamed_not_dropped() {
        let mut input = "X-Long: ".as_bytes().to_vec();
        input.extend(std::iter::repeat_n(b'a', 5000));
        input.extend_from_slice(b"\n\nbody\n");
        let got = delivered(&input, None).expect("accepted");
        assert_eq!(
            &got[b"Delivered-To: alice@example.org\r\n".len()..],
            &input[..]
        );
    }

    #[test]
    fn raw_delivery_adds_nothing() {
        let mut r: &[u8] = b"From a@b date\nS: 1\n\n";
        let p = raw_prefix(&mut r)
            .expect("no I/O error")
            .expect("not empty");
        assert_eq!(
            p,
            Prefix {
                bytes: Vec::new(),
                added: 0
            }
        );
        assert_eq!(r, b"From a@b date\nS: 1\n\n");
        let mut empty: &[u8] = b"";
        assert!(raw_prefix(&mut empty).expect("no I/O error").is_err());
    }

    #[test]
    fn empty_messages_are_refused() {
        for input in [&b""[..], b"From a@b Thu Nov 26 10:00:00 2026\n"] {
            let err = delivered(input, None).expect_err("empty");
            assert!(
                matches!(
                    err.downcast_ref::<StoreError>(),
                    Some(StoreError::InvalidMessage(_))
                ),
                "{err:#}"
            );
        }
    }

    fn spooled(input: &[u8], limit: u64, dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        spool(&mut &input[..], limit, dir)
            .expect("spool")
            .read_to_end(&mut out)
            .expect("read");
        out
    }

    #[test]
    fn the_spool_holds_the_whole_message_in_memory_or_an_unlinked_file() {
        let dir = testbed::TempDir::new("spool");
        let small = b"Subject: s\r\n\r\nbody\r\n".to_vec();
        assert_eq!(spooled(&small, 1 << 30, dir.path()), small);
        let big: Vec<u8> = (0..SPOOL_IN_MEMORY * 3 + 7)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        assert_eq!(spooled(&big, 1 << 30, dir.path()), big);
        // Never more than the limit and one octet, in memory or on disk.
        assert_eq!(spooled(&small, 4, dir.path()), &small[..5]);
        let limit = SPOOL_IN_MEMORY as u64 + 10;
        assert_eq!(spooled(&big, limit, dir.path()).len() as u64, limit + 1);
        // Nothing is left in the directory.
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_from_line_with_a_bad_sender_is_refused() {
        // The sender rules themselves are lmtp::address's (tested there).
        // A From_ line with a sender that would break the header is refused too.
        let err = delivered(b"From a>b@x date\nS: 1\n\n", None).expect_err("refused");
        assert!(err.downcast_ref::<BadSender>().is_some(), "{err:#}");
    }
}
