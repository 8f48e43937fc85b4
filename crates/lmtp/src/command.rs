//! Command lines (RFC 5321 section 4.1 with RFC 2033's LHLO): parsing one line into a
//! [`Command`], and the [`Decoder`] that cuts a byte stream into lines, then, after DATA, into
//! the unstuffed message (see [`crate::data`]).
//!
//! Invariants: a command line is at most [`MAX_COMMAND_LINE`] octets with its CRLF (RFC 5321
//! section 4.5.3.1.4); a longer one yields one [`CommandError::LineTooLong`] as soon as the cap
//! is passed and the rest of it is dropped, so the buffer holds at most the cap plus one feed.
//! Bytes after a DATA line stay in the buffer for [`Decoder::read_data`] (PIPELINING, RFC 2920:
//! a client may send the message right behind DATA once it has seen 354, and the buffer holds
//! what came in one read).

use crate::data::{DataStatus, Unstuffer};

/// RFC 5321 section 4.5.3.1.4: a command line, CRLF included.
pub const MAX_COMMAND_LINE: usize = 512;

/// Longest `SIZE=` value taken (20 digits fit any `u64`).
const MAX_SIZE_DIGITS: usize = 20;

/// The body type a client declares (RFC 6152: `BODY=8BITMIME`, or `BODY=7BIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// One command as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 2033 section 4.1.
    Lhlo(String),
    /// `MAIL FROM:<path>`: the path without its brackets (empty for the null sender), with
    /// RFC 1870's `SIZE=` and RFC 6152's `BODY=`.
    Mail {
        from: String,
        size: Option<u64>,
        body: Body,
    },
    /// `RCPT TO:<path>`: the address without brackets or source route.
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
}

/// Why a line is no command; each becomes one reply and the session goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("line too long")]
    LineTooLong,
    #[error("command unrecognized")]
    Unknown,
    #[error("HELO and EHLO are SMTP; LMTP says LHLO")]
    NotLmtp,
    #[error("syntax error in parameters or arguments")]
    Syntax,
    #[error("syntax error in the address")]
    BadPath,
    #[error("parameter not recognized or not implemented")]
    UnknownParameter,
}

/// Parses one line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax)?;
    if line.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(CommandError::Syntax);
    }
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, r),
        None => (line, ""),
    };
    let no_argument = |c: Command| match rest.trim().is_empty() {
        true => Ok(c),
        false => Err(CommandError::Syntax),
    };
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" => {
            let domain = rest.trim();
            if domain.is_empty() || domain.contains(' ') {
                return Err(CommandError::Syntax);
            }
            Ok(Command::Lhlo(domain.to_owned()))
        }
        "HELO" | "EHLO" => Err(CommandError::NotLmtp),
        "MAIL" => mail(rest),
        "RCPT" => rcpt(rest),
        "DATA" => no_argument(Command::Data),
        "RSET" => no_argument(Command::Rset),
        "QUIT" => no_argument(Command::Quit),
        // RFC 5321 section 4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "VRFY" if !rest.trim().is_empty() => Ok(Command::Vrfy),
        "VRFY" => Err(CommandError::Syntax),
        "HELP" => Ok(Command::Help),
        _ => Err(CommandError::Unknown),
    }
}

/// `FROM:<path> [SP params]`, the keyword case-insensitive (RFC 5321 section 4.1.1.2); a
/// space after the colon is tolerated, as most servers do.
fn mail(rest: &str) -> Result<Command, CommandError> {
    let (path, params) = path_and_params(rest, "FROM:")?;
    let from = strip_route(path)?;
    let mut size = None;
    let mut body = Body::default();
    for param in params {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            // RFC 1870 section 6: size-value ::= 1*20DIGIT.
            "SIZE" if size.is_none() => {
                if value.is_empty()
                    || value.len() > MAX_SIZE_DIGITS
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(CommandError::Syntax);
                }
                size = Some(value.parse().unwrap_or(u64::MAX));
            }
            "BODY" => {
                body = match value.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(CommandError::Syntax),
                }
            }
            _ => return Err(CommandError::UnknownParameter),
        }
    }
    Ok(Command::Mail { from, size, body })
}

/// `TO:<path>`; no RCPT parameter is offered.
fn rcpt(rest: &str) -> Result<Command, CommandError> {
    let (path, mut params) = path_and_params(rest, "TO:")?;
    if params.next().is_some() {
        return Err(CommandError::UnknownParameter);
    }
    let to = strip_route(path)?;
    if to.is_empty() {
        return Err(CommandError::BadPath);
    }
    Ok(Command::Rcpt(to))
}

/// Splits `KEYWORD:<path> params...` into the path between its brackets and the parameters.
fn path_and_params<'a>(
    rest: &'a str,
    keyword: &str,
) -> Result<(&'a str, std::str::SplitAsciiWhitespace<'a>), CommandError> {
    let head = rest.get(..keyword.len()).ok_or(CommandError::Syntax)?;
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(CommandError::Syntax);
    }
    let rest = rest[keyword.len()..].trim_start_matches(' ');
    let rest = rest.strip_prefix('<').ok_or(CommandError::BadPath)?;
    // The path ends at the first `>` outside a quoted local part.
    let mut quoted = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end.ok_or(CommandError::BadPath)?;
    let after = &rest[end + 1..];
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(CommandError::Syntax);
    }
    Ok((&rest[..end], after.split_ascii_whitespace()))
}

/// RFC 5321 section 4.1.2: an A-d-l source route (`@a,@b:`) before the mailbox is accepted
/// and ignored (Appendix C); the mailbox itself is checked by the session.
fn strip_route(path: &str) -> Result<String, CommandError> {
    if path.starts_with('@') {
        let (_, mailbox) = path.split_once(':').ok_or(CommandError::BadPath)?;
        return Ok(mailbox.to_owned());
    }
    Ok(path.to_owned())
}

/// Cuts the client's bytes into command lines and, after DATA, into the message.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Dropping the rest of an over-long line, up to its LF.
    discarding: bool,
    /// Reading a message (between DATA's 354 and the final `.`).
    data: Option<Unstuffer>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Adds bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Octets held, not yet taken as a command or message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next command, `Ok(None)` when a whole line is not there yet. A line may end in CRLF
    /// or a bare LF. Not to be called while reading a message.
    pub fn next_command(&mut self) -> Result<Option<Command>, CommandError> {
        debug_assert!(self.data.is_none(), "reading a message");
        loop {
            let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.discarding {
                    self.buf.clear();
                } else if self.buf.len() >= MAX_COMMAND_LINE {
                    self.discarding = true;
                    self.buf.clear();
                    return Err(CommandError::LineTooLong);
                }
                return Ok(None);
            };
            let line: Vec<u8> = self.buf.drain(..=lf).collect();
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if line.len() > MAX_COMMAND_LINE {
                return Err(CommandError::LineTooLong);
            }
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return parse(line).map(Some);
        }
    }

    /// Starts reading a message (after 354): at most `limit` octets of it are handed out.
    pub fn start_data(&mut self, limit: u64) {
        self.data = Some(Unstuffer::new(limit));
    }

    /// Moves the buffered part of the message, unstuffed, to `out`. `Done` once the final
    /// `CRLF.CRLF` is read: the bytes after it stay for [`Decoder::next_command`].
    pub fn read_data(&mut self, out: &mut Vec<u8>) -> DataStatus {
        let Some(unstuffer) = &mut self.data else {
            return DataStatus::NeedMore;
        };
        let (used, status) = unstuffer.unstuff(&self.buf, out);
        self.buf.drain(..used);
        if let DataStatus::Done { .. } = status {
            self.data = None;
        }
        status
    }

    /// Whether a message is being read.
    pub fn in_data(&self) -> bool {
        self.data.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(from: &str, size: Option<u64>, body: Body) -> Command {
        Command::Mail {
            from: from.into(),
            size,
            body,
        }
    }

    /// RFC 5321 section 4.1.1 and RFC 2033 section 4.1: one line, its command.
    #[test]
    fn commands_parse_as_rfc_5321_4_1_writes_them() {
        use CommandError::*;
        let cases: &[(&str, Result<Command, CommandError>)] = &[
            (
                "LHLO mx.example.org",
                Ok(Command::Lhlo("mx.example.org".into())),
            ),
            ("lhlo [127.0.0.1]", Ok(Command::Lhlo("[127.0.0.1]".into()))),
            ("LHLO", Err(Syntax)),
            ("EHLO x", Err(NotLmtp)),
            ("HELO x", Err(NotLmtp)),
            ("MAIL FROM:<a@b>", Ok(mail("a@b", None, Body::SevenBit))),
            ("mail from:<>", Ok(mail("", None, Body::SevenBit))),
            ("MAIL FROM: <a@b>", Ok(mail("a@b", None, Body::SevenBit))),
            (
                "MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME",
                Ok(mail("a@b", Some(1000), Body::EightBitMime)),
            ),
            (
                "MAIL FROM:<a@b> body=7bit",
                Ok(mail("a@b", None, Body::SevenBit)),
            ),
            ("MAIL FROM:<a@b> BODY=BINARYMIME", Err(Syntax)),
            ("MAIL FROM:<a@b> SIZE=", Err(Syntax)),
            ("MAIL FROM:<a@b> SIZE=12x", Err(Syntax)),
            ("MAIL FROM:<a@b> SIZE=123456789012345678901", Err(Syntax)),
            (
                "MAIL FROM:<a@b> SIZE=99999999999999999999",
                Ok(mail("a@b", Some(u64::MAX), Body::SevenBit)),
            ),
            ("MAIL FROM:<a@b> SMTPUTF8", Err(UnknownParameter)),
            ("MAIL FROM:a@b", Err(BadPath)),
            ("MAIL FROM:<a@b", Err(BadPath)),
            ("MAIL FROM:<a@b>x", Err(Syntax)),
            ("MAIL TO:<a@b>", Err(Syntax)),
            ("MAIL", Err(Syntax)),
            (
                "MAIL FROM:<\"a>b\"@c>",
                Ok(mail("\"a>b\"@c", None, Body::SevenBit)),
            ),
            // RFC 5321 Appendix C: a source route is accepted and ignored.
            (
                "MAIL FROM:<@x,@y:a@b>",
                Ok(mail("a@b", None, Body::SevenBit)),
            ),
            (
                "RCPT TO:<alice@example.org>",
                Ok(Command::Rcpt("alice@example.org".into())),
            ),
            (
                "rcpt to:<Postmaster>",
                Ok(Command::Rcpt("Postmaster".into())),
            ),
            ("RCPT TO:<>", Err(BadPath)),
            ("RCPT TO:<a@b> NOTIFY=NEVER", Err(UnknownParameter)),
            ("DATA", Ok(Command::Data)),
            ("DATA x", Err(Syntax)),
            ("RSET", Ok(Command::Rset)),
            ("NOOP anything", Ok(Command::Noop)),
            ("QUIT", Ok(Command::Quit)),
            ("VRFY alice", Ok(Command::Vrfy)),
            ("VRFY", Err(Syntax)),
            ("HELP", Ok(Command::Help)),
            ("BDAT 10", Err(Unknown)),
            ("STARTTLS", Err(Unknown)),
            ("", Err(Unknown)),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(line.as_bytes()), want, "{line:?}");
        }
        assert_eq!(parse(b"MAIL FROM:<a\xffb>"), Err(Syntax));
        assert_eq!(parse(b"NOOP \0"), Err(Syntax));
    }

    /// Every table of lines replayed at every chunk size: split reads are proven.
    #[test]
    fn lines_split_anywhere_decode_the_same() {
        let input = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\nDATA\r\n";
        let want = vec![
            Command::Lhlo("x".into()),
            mail("a@b", None, Body::SevenBit),
            Command::Rcpt("c@d".into()),
            Command::Data,
        ];
        for chunk in 1..=input.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in input.chunks(chunk) {
                d.feed(piece);
                while let Some(c) = d.next_command().expect("valid") {
                    got.push(c);
                }
            }
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    /// RFC 5321 section 4.5.3.1.4: 512 octets with CRLF; one error for a longer line, then the
    /// next line is read as usual; the buffer never holds more than the cap and one feed.
    #[test]
    fn command_lines_are_capped_at_512_octets() {
        let fits = format!("NOOP {}\r\n", "a".repeat(MAX_COMMAND_LINE - 7));
        assert_eq!(fits.len(), MAX_COMMAND_LINE);
        let mut d = Decoder::new();
        d.feed(fits.as_bytes());
        assert_eq!(d.next_command(), Ok(Some(Command::Noop)));
        for chunk in [1, 7, 100, 600] {
            let mut d = Decoder::new();
            let long = format!("NOOP {}\r\nQUIT\r\n", "a".repeat(2000));
            let mut got = Vec::new();
            for piece in long.as_bytes().chunks(chunk) {
                d.feed(piece);
                assert!(d.buffered() <= MAX_COMMAND_LINE + piece.len());
                loop {
                    match d.next_command() {
                        Ok(None) => break,
                        r => got.push(r),
                    }
                }
            }
            assert_eq!(
                got,
                vec![Err(CommandError::LineTooLong), Ok(Some(Command::Quit))],
                "chunk {chunk}"
            );
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes never make the decoder panic or hold more than a line and a feed.
        #[test]
        fn arbitrary_bytes_keep_the_decoder_bounded(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            chunk in 1usize..700,
        ) {
            let mut d = Decoder::new();
            for piece in input.chunks(chunk) {
                d.feed(piece);
                proptest::prop_assert!(d.buffered() <= MAX_COMMAND_LINE + piece.len());
                for _ in 0..=input.len() {
                    if let Ok(None) = d.next_command() {
                        break;
                    }
                }
            }
        }
    }

    /// RFC 2920 (PIPELINING): the message may follow DATA in the same read; what follows
    /// the final dot is the next command.
    #[test]
    fn a_message_behind_data_in_one_read_is_kept_for_read_data() {
        let mut d = Decoder::new();
        d.feed(b"DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        assert_eq!(d.next_command(), Ok(Some(Command::Data)));
        d.start_data(1000);
        let mut out = Vec::new();
        assert!(matches!(d.read_data(&mut out), DataStatus::Done { .. }));
        assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\n");
        assert!(!d.in_data());
        assert_eq!(d.next_command(), Ok(Some(Command::Quit)));
    }
}
