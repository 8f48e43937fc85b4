//! The incremental line and command decoder.

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
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
    /// Inside an over-long line whose error was already reported.
    discarding: bool,
    max_line: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
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
            discarding: false,
            max_line: max_line.max(3),
        }
    }

    /// Changes the cap for the lines that follow.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line.max(3);
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        if self.discarding {
            // Keep nothing of the over-long line but what follows its end.
            if let Some(i) = data.iter().position(|&b| b == b'\n') {
                self.discarding = false;
                self.buf.extend_from_slice(&data[i + 1..]);
            }
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// Octets received but not yet taken out as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drops everything buffered and returns how many octets that was. Used after STLS
    /// (RFC 2595 section 4: nothing sent before the TLS handshake may be acted on after it).
    pub fn clear(&mut self) -> usize {
        let n = self.buffered();
        self.buf.clear();
        self.start = 0;
        self.discarding = false;
        n
    }

    /// The next complete line without its line end, `Ok(None)` if more bytes are needed.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
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
                if end - begin + 2 > self.max_line {
                    return Err(LineTooLong);
                }
                Ok(Some(&self.buf[begin..end]))
            }
            None => {
                // Even if the line ended right now it would not fit.
                if window.len() >= self.max_line {
                    self.buf.clear();
                    self.start = 0;
                    self.discarding = true;
                    return Err(LineTooLong);
                }
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(None)
            }
        }
    }

    /// The next complete command, `Ok(None)` if more bytes are needed.
    pub fn next_command(&mut self) -> Result<Option<Command>, CommandError> {
        match self.next_line() {
            Ok(Some(line)) => Command::parse(line).map(Some),
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

    #[test]
    fn sasl_lines_may_have_a_larger_cap() {
        let mut d = Decoder::with_max_line(12_288);
        let line = vec![b'Q'; 4000];
        d.feed(&line);
        d.feed(b"\r\n");
        assert_eq!(d.next_line(), Ok(Some(&line[..])));
    }
}
