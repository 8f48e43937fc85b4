//! Reading mbox files (mboxrd, and mboxo as its subset), one message at a time.
//!
//! The rules, chosen to be predictable rather than clever:
//! - a line starting with `From ` separates messages only at the start of the file or right
//!   after an empty line; the separator line is not part of any message;
//! - the one empty line before a separator, and the one at the end of the file, belong to the
//!   format (writers add one after every message), not to the message;
//! - mboxrd quoting is undone: a line matching `^>+From ` loses one `>`;
//! - LF and CRLF files alike; line ends are kept as found (the store normalises to CRLF);
//! - a non-empty file must start with `From ` ("not an mbox file"); an empty file holds no
//!   messages.

use std::io::{BufRead, Read};

use anyhow::{bail, Context as _};
use store::ImportMessage;

use super::{stored_size, too_large, x_uidl};

const SEPARATOR: &[u8] = b"From ";

/// The messages of an mbox, in file order, each with its `X-UIDL:` UID if it has one.
pub struct Mbox<R> {
    input: R,
    max_size: u64,
    line: Vec<u8>,
    /// Lines read so far.
    line_no: u64,
    /// Line number of the separator that opened the message to read next.
    next_start: u64,
    /// Messages returned so far.
    count: u64,
    /// The file is read to its end (or an error was returned): nothing more to yield.
    done: bool,
}

impl<R: BufRead> Mbox<R> {
    /// Checks that `input` is an mbox (or empty) and prepares to read its messages, each limited
    /// to `max_size` octets once stored.
    pub fn open(input: R, max_size: u64) -> anyhow::Result<Self> {
        let mut mbox = Mbox {
            input,
            max_size,
            line: Vec::new(),
            line_no: 0,
            next_start: 1,
            count: 0,
            done: false,
        };
        if !mbox.read_line()? {
            mbox.done = true;
        } else if !mbox.line.starts_with(SEPARATOR) {
            bail!("not an mbox file: it does not start with a \"From \" line");
        }
        Ok(mbox)
    }

    /// Reads the next line into `self.line`; `false` at the end of the file. A line is read no
    /// further than the size limit, so a file without line ends cannot exhaust memory.
    fn read_line(&mut self) -> anyhow::Result<bool> {
        self.line.clear();
        let n = Read::take(&mut self.input, self.max_size.saturating_add(1))
            .read_until(b'\n', &mut self.line)
            .with_context(|| format!("reading line {}", self.line_no + 1))?;
        if n == 0 {
            return Ok(false);
        }
        self.line_no += 1;
        Ok(true)
    }

    /// The message after the current separator line; `None` once the file is exhausted.
    fn next_message(&mut self) -> anyhow::Result<Option<ImportMessage>> {
        if self.done {
            return Ok(None);
        }
        let which = format!("message {} (line {})", self.count + 1, self.next_start);
        let mut bytes = Vec::new();
        // Length of the empty line that ends `bytes` (1 or 2 octets), 0 if it ends otherwise.
        let mut trailing_empty = 0;
        loop {
            if !self.read_line()? {
                self.done = true;
                break;
            }
            if trailing_empty > 0 && self.line.starts_with(SEPARATOR) {
                self.next_start = self.line_no;
                break;
            }
            let line = unquote(&self.line);
            trailing_empty = if is_empty_line(line) { line.len() } else { 0 };
            bytes.extend_from_slice(line);
            if bytes.len() as u64 > self.max_size {
                return Err(too_large(&which, bytes.len() as u64, self.max_size));
            }
        }
        bytes.truncate(bytes.len() - trailing_empty);
        if bytes.is_empty() {
            bail!("{which} is empty");
        }
        let size = stored_size(&bytes);
        if size > self.max_size {
            return Err(too_large(&which, size, self.max_size));
        }
        self.count += 1;
        let uid = x_uidl(&bytes);
        // Only ever an `X-UIDL:` header: the sender's claim, not the old server's record.
        Ok(Some(ImportMessage {
            bytes,
            uid,
            uid_claimed: true,
        }))
    }
}

impl<R: BufRead> Iterator for Mbox<R> {
    type Item = anyhow::Result<ImportMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        let result = self.next_message();
        if result.is_err() {
            self.done = true;
        }
        result.transpose()
    }
}

/// mboxrd unquoting: `>From ` becomes `From `, `>>From ` becomes `>From `, and so on.
fn unquote(line: &[u8]) -> &[u8] {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    match line.get(quotes..) {
        Some(rest) if quotes > 0 && rest.starts_with(SEPARATOR) => line.get(1..).unwrap_or(line),
        _ => line,
    }
}

fn is_empty_line(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8], max_size: u64) -> anyhow::Result<Vec<(String, Option<String>)>> {
        Mbox::open(input, max_size)?
            .map(|m| m.map(|m| (String::from_utf8_lossy(&m.bytes).into_owned(), m.uid)))
            .collect()
    }

    #[test]
    fn mbox_table() {
        type Want<'a> = &'a [(&'a str, Option<&'a str>)];
        let cases: &[(&str, Want)] = &[
            ("", &[]),
            (
                "From a@b Mon Jan  1 00:00:00 2024\nSubject: one\n\nbody\n",
                &[("Subject: one\n\nbody\n", None)],
            ),
            // The empty line before a separator and the one at the end belong to the format.
            (
                "From a\nSubject: one\n\nbody\n\nFrom b\nSubject: two\n\nbody2\n\n",
                &[
                    ("Subject: one\n\nbody\n", None),
                    ("Subject: two\n\nbody2\n", None),
                ],
            ),
            // Only one empty line is the format's; further ones are the message's.
            (
                "From a\nS: 1\n\nb\n\n\nFrom b\nS: 2\n",
                &[("S: 1\n\nb\n\n", None), ("S: 2\n", None)],
            ),
            // CRLF files.
            (
                "From a\r\nSubject: one\r\n\r\nbody\r\n\r\nFrom b\r\nX-UIDL: u2\r\n\r\nbody2\r\n",
                &[
                    ("Subject: one\r\n\r\nbody\r\n", None),
                    ("X-UIDL: u2\r\n\r\nbody2\r\n", Some("u2")),
                ],
            ),
            // mboxrd unquoting, one '>' at a time; other '>' lines are untouched.
            (
                "From a\nS: q\n\n>From me\n>>From you\n>>>From them\n> From not\n>From\n",
                &[(
                    "S: q\n\nFrom me\n>From you\n>>From them\n> From not\n>From\n",
                    None,
                )],
            ),
            // A `From ` line after a non-empty line is body text, not a separator.
            (
                "From a\nS: x\n\nhello\nFrom me to you\n\nFrom b\nS: y\n",
                &[("S: x\n\nhello\nFrom me to you\n", None), ("S: y\n", None)],
            ),
            // X-UIDL only from the header section, trimmed.
            (
                "From a\nX-UIDL:  abc \nS: 1\n\nb\n\nFrom b\nS: 2\n\nX-UIDL: body\n",
                &[
                    ("X-UIDL:  abc \nS: 1\n\nb\n", Some("abc")),
                    ("S: 2\n\nX-UIDL: body\n", None),
                ],
            ),
            // No line end at the end of the file.
            ("From a\nS: 1\n\nlast", &[("S: 1\n\nlast", None)]),
        ];
        for (input, want) in cases {
            let got =
                parse(input.as_bytes(), 1 << 20).unwrap_or_else(|e| panic!("{input:?}: {e:#}"));
            let want: Vec<(String, Option<String>)> = want
                .iter()
                .map(|(m, u)| ((*m).to_owned(), u.map(str::to_owned)))
                .collect();
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn mbox_errors() {
        let cases: &[(&str, u64, &str)] = &[
            ("Subject: x\n\nbody\n", 100, "not an mbox file"),
            ("\nFrom a\nS: 1\n", 100, "not an mbox file"),
            (
                "From a\n\nFrom b\nS: 1\n",
                100,
                "message 1 (line 1) is empty",
            ),
            (
                "From a\nS: 1\n\nFrom b\n",
                100,
                "message 2 (line 4) is empty",
            ),
            (
                "From a\nS: 1\n\nFrom b\nS: 0123456789\n",
                12,
                "message 2 (line 4) is too large",
            ),
            // Stored with CRLF line ends, "S: 1\nxx\n" takes 10 octets.
            ("From a\nS: 1\nxx\n", 9, "message 1 (line 1) is too large"),
            // A huge line without line end is not read whole.
            (
                &format!("From a\n{}", "x".repeat(10_000)),
                100,
                "message 1 (line 1) is too large",
            ),
        ];
        for (input, max, want) in cases {
            let err = parse(input.as_bytes(), *max).expect_err(input);
            assert!(format!("{err:#}").contains(want), "{input:?}: {err:#}");
        }
        assert_eq!(parse(b"From a\nS: 1\nxx\n", 10).expect("fits").len(), 1);
    }

    #[test]
    fn stops_after_an_error() {
        let mut mbox = Mbox::open(&b"From a\n\nFrom b\nS: 1\n"[..], 100).expect("open");
        assert!(matches!(mbox.next(), Some(Err(_))));
        assert!(mbox.next().is_none());
    }
}
