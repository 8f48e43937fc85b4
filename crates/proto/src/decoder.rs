//! The incremental line and command decoder.

use core::fmt;

use zeroize::Zeroize;

use crate::{Command, CommandError, MAX_COMMAND_LINE};

/// A line longer than the decoder's cap. The rest of that line, up to its line end, is
/// discarded without another error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line too long")]
pub struct LineTooLong;

/// Incremental decoder: feed it bytes as they arrive, take complete lines or commands out.
///
/// "Need more bytes" is `Ok(None)`, never an error. Lines end in CRLF or a bare LF. A line
/// longer than the cap (CRLF included) yields one error as soon as the cap is passed; the
/// decoder then drops bytes until the next line end and carries on with the line after it,
/// so its buffer never holds more than the cap plus what one `feed` gave it.
///
/// Lines may carry secrets (PASS, AUTH's initial response, SASL response lines), so no octet
/// of a line outlives its use in the buffer: a command's line is overwritten as soon as the
/// command is parsed, a line taken by [`Decoder::next_line`] (borrowed by the caller) at the
/// next call, and the buffer is wiped before it is cleared, compacted, grown or dropped.
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
    /// `buf[..wiped]` is already overwritten; `buf[wiped..start]` was taken but not yet.
    wiped: usize,
    /// Inside an over-long line whose error was already reported.
    discarding: bool,
    max_line: usize,
    /// The cap of a line that starts with `AUTH ` (see [`Decoder::set_auth_max_line`]).
    auth_max_line: usize,
}

/// Never the buffered octets: they may be a password.
impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buffered())
            .field("discarding", &self.discarding)
            .field("max_line", &self.max_line)
            .field("auth_max_line", &self.auth_max_line)
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl Decoder {
    /// A decoder for command lines of up to [`MAX_COMMAND_LINE`] octets.
    pub fn new() -> Decoder {
        Decoder::with_max_line(MAX_COMMAND_LINE)
    }

    /// A decoder with another cap (CRLF included), e.g. for SASL response lines.
    pub fn with_max_line(max_line: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            wiped: 0,
            discarding: false,
            max_line: max_line.max(3),
            auth_max_line: 0,
        }
    }

    /// Lets a line that starts with `AUTH ` (any case) be up to `max_line` octets, CRLF
    /// included, when that is more than the cap. RFC 5034 section 4 has a client send an
    /// initial response that would pass 255 octets after an empty challenge instead, but some
    /// send it inline anyway (mpop 1.4 with an OAuth 2.0 bearer token, which never fits), and
    /// the same octets are accepted as a SASL response line after the challenge.
    pub fn set_auth_max_line(&mut self, max_line: usize) {
        self.auth_max_line = max_line;
    }

    /// The cap of the line starting at `line`: the AUTH one when it begins with `AUTH `.
    fn cap_for(&self, line: &[u8]) -> usize {
        if self.auth_max_line > self.max_line
            && line.len() >= 5
            && line[..5].eq_ignore_ascii_case(b"AUTH ")
        {
            self.auth_max_line
        } else {
            self.max_line
        }
    }

    /// Changes the cap for the lines that follow.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line.max(3);
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.wipe_taken();
        if self.start == self.buf.len() {
            self.reset();
        }
        let data = if self.discarding {
            // Keep nothing of the over-long line but what follows its end.
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.discarding = false;
                    &data[i + 1..]
                }
                None => return,
            }
        } else {
            data
        };
        if self.buf.len() + data.len() > self.buf.capacity() {
            // Grow by hand: `Vec`'s own growth would free the old allocation unwiped.
            let unread = self.buf.len() - self.start;
            let capacity = (unread + data.len()).max(2 * self.buf.capacity()).max(64);
            let mut grown = Vec::with_capacity(capacity);
            grown.extend_from_slice(&self.buf[self.start..]);
            let mut old = core::mem::replace(&mut self.buf, grown);
            old.zeroize();
            self.start = 0;
            self.wiped = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Octets received but not yet taken out as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drops everything buffered and returns how many octets that was. Used after STLS
    /// (RFC 2595 section 4: nothing sent before the TLS handshake may be acted on after it).
    pub fn clear(&mut self) -> usize {
        let n = self.buffered();
        self.reset();
        self.discarding = false;
        n
    }

    /// Overwrites the lines already taken out.
    fn wipe_taken(&mut self) {
        self.buf[self.wiped..self.start].zeroize();
        self.wiped = self.start;
    }

    /// Overwrites and empties the buffer (its capacity stays, all zeros).
    fn reset(&mut self) {
        self.buf.as_mut_slice().zeroize();
        self.buf.clear();
        self.start = 0;
        self.wiped = 0;
    }

    /// Moves the unread part to the front and overwrites what it leaves behind.
    fn compact(&mut self) {
        let len = self.buf.len();
        let unread = len - self.start;
        self.buf.copy_within(self.start.., 0);
        self.buf[unread..].zeroize();
        self.buf.truncate(unread);
        self.start = 0;
        self.wiped = 0;
    }

    /// The next complete line without its line end, `Ok(None)` if more bytes are needed. The
    /// line's octets are overwritten at the next call on the decoder.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        self.wipe_taken();
        let window = &self.buf[self.start..];
        match window.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let begin = self.start;
                self.start += i + 1;
                let mut end = begin + i;
                if end > begin && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                // Counted as if it ended in CRLF, whatever it ended in.
                if end - begin + 2 > self.cap_for(&self.buf[begin..end]) {
                    self.wipe_taken();
                    return Err(LineTooLong);
                }
                Ok(Some(&self.buf[begin..end]))
            }
            None => {
                // Even if the line ended right now it would not fit.
                if window.len() >= self.cap_for(window) {
                    self.reset();
                    self.discarding = true;
                    return Err(LineTooLong);
                }
                if self.start > 0 {
                    self.compact();
                }
                Ok(None)
            }
        }
    }

    /// The next complete command, `Ok(None)` if more bytes are needed.
    pub fn next_command(&mut self) -> Result<Option<Command>, CommandError> {
        match self.next_line() {
            Ok(Some(line)) => {
                let command = Command::parse(line).map(Some);
                // The command owns what it needs; a PASS line must not stay behind.
                self.wipe_taken();
                command
            }
            Ok(None) => Ok(None),
            Err(LineTooLong) => Err(CommandError::LineTooLong),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Keyword, Secret};

    type Item = Result<Command, CommandError>;

    /// Feeds `input` `chunk` octets at a time and collects every command or error.
    fn decode_all(input: &[u8], chunk: usize) -> Vec<Item> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            d.feed(piece);
            loop {
                match d.next_command() {
                    Ok(Some(c)) => out.push(Ok(c)),
                    Ok(None) => break,
                    Err(e) => out.push(Err(e)),
                }
            }
        }
        out
    }

    /// Replays a table at every chunk size from 1 to the input's length.
    fn check(table: &[(&[u8], Vec<Item>)]) {
        for (input, expected) in table {
            for chunk in 1..=input.len().max(1) {
                assert_eq!(
                    &decode_all(input, chunk),
                    expected,
                    "input {:?} at chunk size {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn lines_and_pipelining_at_every_chunk_size() {
        use Command as C;
        check(&[
            (b"STAT\r\n", vec![Ok(C::Stat)]),
            (b"STAT", vec![]),
            (b"STAT\r", vec![]),
            // Bare LF is accepted as a line end.
            (b"STAT\nNOOP\n", vec![Ok(C::Stat), Ok(C::Noop)]),
            // RFC 2449 section 6.6 PIPELINING: many commands in one read, in order.
            (
                b"USER a\r\nPASS b c\r\nLIST\r\nRETR 1\r\nQUIT\r\n",
                vec![
                    Ok(C::User("a".into())),
                    Ok(C::Pass(Secret::new(b"b c".to_vec()))),
                    Ok(C::List(None)),
                    Ok(C::Retr(1)),
                    Ok(C::Quit),
                ],
            ),
            (
                b"\r\nFOO\r\nNOOP\r\n",
                vec![
                    Err(CommandError::Empty),
                    Err(CommandError::Unknown),
                    Ok(C::Noop),
                ],
            ),
            (
                b"RETR x\r\nDELE 1\r\n",
                vec![
                    Err(CommandError::InvalidNumber(Keyword::Retr)),
                    Ok(C::Dele(1)),
                ],
            ),
            // A CR inside a line is not a line end.
            (b"NO\rOP\r\n", vec![Err(CommandError::Unknown)]),
        ]);
    }

    #[test]
    fn line_cap_is_255_octets_with_crlf() {
        // RFC 2449 section 4: lines of up to 255 octets including CRLF are accepted.
        let mut ok = b"USER ".to_vec();
        ok.extend(std::iter::repeat_n(b'a', 253 - 5));
        ok.extend_from_slice(b"\r\n");
        assert_eq!(ok.len(), 255);
        let name = "a".repeat(248);
        check(&[(&ok, vec![Ok(Command::User(name.clone()))])]);
        // The same line with a bare LF is measured as if it ended in CRLF.
        let bare_lf = [&ok[..253], b"\n"].concat();
        check(&[(&bare_lf, vec![Ok(Command::User(name))])]);
        // One more octet is too long: one error, then the decoder is back in step.
        let mut long = b"USER ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 249));
        long.extend_from_slice(b"\r\nNOOP\r\n");
        check(&[(
            &long,
            vec![Err(CommandError::LineTooLong), Ok(Command::Noop)],
        )]);
    }

    #[test]
    fn huge_line_gives_one_error_and_bounded_buffer() {
        let mut d = Decoder::new();
        let mut errors = 0;
        for _ in 0..100 {
            d.feed(&[b'x'; 1000]);
            while let Err(e) = d.next_command() {
                assert_eq!(e, CommandError::LineTooLong);
                errors += 1;
            }
            assert!(d.buffered() <= 1000 + MAX_COMMAND_LINE);
        }
        d.feed(b"yyy\r\nQUIT\r\n");
        assert_eq!(d.next_command(), Ok(Some(Command::Quit)));
        assert_eq!(d.next_command(), Ok(None));
        assert_eq!(errors, 1);
    }

    #[test]
    fn clear_drops_pipelined_plaintext() {
        // RFC 2595 section 4: after STLS nothing received before the handshake may run.
        let mut d = Decoder::new();
        d.feed(b"STLS\r\nUSER injected\r\n");
        assert_eq!(d.next_command(), Ok(Some(Command::Stls)));
        assert_eq!(d.clear(), b"USER injected\r\n".len());
        assert_eq!(d.next_command(), Ok(None));
    }

    /// RFC 5034 section 4 clients send a long initial response after an empty challenge, but
    /// an AUTH line may carry one inline up to the AUTH cap; other commands keep 255 octets.
    #[test]
    fn auth_lines_may_have_the_sasl_cap() {
        let response = "A".repeat(600);
        let auth = format!("auth XOAUTH2 {response}\r\nNOOP\r\n");
        let long_noop = format!("NOOP {response}\r\nNOOP\r\n");
        let too_long = format!("AUTH XOAUTH2 {}\r\nNOOP\r\n", "A".repeat(1100));
        for chunk in [1, 7, 64, 4096] {
            let run = |input: &str| {
                let mut d = Decoder::new();
                d.set_auth_max_line(1024);
                let mut out = Vec::new();
                for piece in input.as_bytes().chunks(chunk) {
                    d.feed(piece);
                    loop {
                        match d.next_command() {
                            Ok(Some(c)) => out.push(Ok(c.keyword())),
                            Ok(None) => break,
                            Err(e) => out.push(Err(e)),
                        }
                    }
                }
                out
            };
            assert_eq!(
                run(&auth),
                [Ok(Keyword::Auth), Ok(Keyword::Noop)],
                "{chunk}"
            );
            assert_eq!(
                run(&long_noop),
                [Err(CommandError::LineTooLong), Ok(Keyword::Noop)],
                "{chunk}"
            );
            assert_eq!(
                run(&too_long),
                [Err(CommandError::LineTooLong), Ok(Keyword::Noop)],
                "{chunk}"
            );
        }
        // Without the setting, 255 octets for AUTH too.
        let mut d = Decoder::new();
        d.feed(auth.as_bytes());
        assert_eq!(d.next_command(), Err(CommandError::LineTooLong));
    }

    #[test]
    fn sasl_lines_may_have_a_larger_cap() {
        let mut d = Decoder::with_max_line(12_288);
        let line = vec![b'Q'; 4000];
        d.feed(&line);
        d.feed(b"\r\n");
        assert_eq!(d.next_line(), Ok(Some(&line[..])));
    }

    fn holds(d: &Decoder, needle: &[u8]) -> bool {
        d.buf.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn no_password_octet_stays_in_the_buffer_after_pass_is_taken() {
        let input = b"USER a\r\nPASS s3cr3t pw\r\nSTAT\r\nNOOP";
        for chunk in 1..=input.len() {
            let mut d = Decoder::new();
            let mut passes = 0;
            for piece in input.chunks(chunk) {
                d.feed(piece);
                while let Ok(Some(c)) = d.next_command() {
                    if matches!(c, Command::Pass(_)) {
                        passes += 1;
                        assert!(!holds(&d, b"s3cr3t"), "chunk size {chunk}");
                    }
                }
                if passes > 0 {
                    assert!(!holds(&d, b"s3cr3t"), "chunk size {chunk}");
                }
            }
            assert_eq!(passes, 1);
            // The rest is still there to be read.
            d.feed(b"\r\n");
            assert_eq!(d.next_command(), Ok(Some(Command::Noop)));
        }
    }

    #[test]
    fn a_sasl_line_is_wiped_at_the_next_call() {
        // RFC 5034 section 4: a base64 response line (here "\0alice\0s3cr3t").
        let mut d = Decoder::with_max_line(12_288);
        d.feed(b"AGFsaWNlAHMzY3IzdA==\r\nQUIT\r\n");
        assert_eq!(d.next_line(), Ok(Some(&b"AGFsaWNlAHMzY3IzdA=="[..])));
        d.feed(b"");
        assert!(!holds(&d, b"AGFsaWNl"));
        assert_eq!(d.next_command(), Ok(Some(Command::Quit)));
        // A line over the cap is wiped as well, and so is all of it at `clear`.
        let mut d = Decoder::with_max_line(8);
        d.feed(b"s3cr3t-too-long\r\nPASS s3cr3t");
        assert_eq!(d.next_line(), Err(LineTooLong));
        assert!(!holds(&d, b"s3cr3t-"));
        d.clear();
        assert!(!holds(&d, b"s3cr3t"));
    }

    #[test]
    fn debug_shows_no_buffered_octets() {
        let mut d = Decoder::new();
        d.feed(b"PASS s3cr3t");
        assert!(!format!("{d:?}").contains("115"));
        assert!(format!("{d:?}").contains("buffered: 11"));
    }
}
