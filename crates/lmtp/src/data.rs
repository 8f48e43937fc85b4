//! The message after DATA (RFC 5321 section 4.1.1.4): read up to the line that is a single
//! `.`, with the extra dot of every other line that begins with one taken off (section 4.5.2).
//!
//! Invariants: the message ends only at `CRLF . CRLF` (or `. CRLF` as its first line): a bare
//! LF neither ends a line for this purpose nor ends the message, so `LF . LF` and `LF . CRLF`
//! are message text (the "SMTP smuggling" class of boundary disagreements cannot split one
//! message into two). Nothing is buffered here but the state: each octet fed is handed out or
//! dropped at once, so memory is the caller's to bound. At most `limit` octets are handed out;
//! the rest is read and dropped, and [`DataStatus::Done`] says the message was over.

/// Where the reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// At the start of a line (after CRLF, or the first octet of the message).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
}

/// Whether the message is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    NeedMore,
    /// The final `.` line was read. `size` counts the message's octets after unstuffing,
    /// those over the limit included; `over_limit` when some were dropped.
    Done {
        size: u64,
        over_limit: bool,
    },
}

/// Unstuffs one message.
#[derive(Debug, Clone)]
pub struct Unstuffer {
    at: At,
    size: u64,
    limit: u64,
}

impl Unstuffer {
    /// A message of which at most `limit` octets are handed out.
    pub fn new(limit: u64) -> Unstuffer {
        Unstuffer {
            at: At::LineStart,
            size: 0,
            limit,
        }
    }

    /// Unstuffs `input` into `out`, stopping right after the final `.` line: returns the
    /// octets of `input` used, and whether the message is complete.
    pub fn unstuff(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, DataStatus) {
        for (i, &b) in input.iter().enumerate() {
            match (self.at, b) {
                (At::LineStart, b'.') => self.at = At::Dot,
                (At::Dot, b'\r') => self.at = At::DotCr,
                (At::DotCr, b'\n') => {
                    self.at = At::LineStart;
                    let status = DataStatus::Done {
                        size: self.size,
                        over_limit: self.size > self.limit,
                    };
                    return (i + 1, status);
                }
                // `.` CR then something else: the dot was stuffing; the CR is text.
                (At::DotCr, b) => {
                    self.push(b'\r', out);
                    self.text(b, out);
                }
                // Any other line that starts with a dot: the first dot goes (section 4.5.2).
                (At::Dot, b) => self.text(b, out),
                (At::LineStart | At::Text, b) => self.text(b, out),
                (At::Cr, b'\n') => {
                    self.push(b'\n', out);
                    self.at = At::LineStart;
                }
                (At::Cr, b) => self.text(b, out),
            }
        }
        (input.len(), DataStatus::NeedMore)
    }

    /// An octet inside a line.
    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        self.push(b, out);
        self.at = if b == b'\r' { At::Cr } else { At::Text };
    }

    fn push(&mut self, b: u8, out: &mut Vec<u8>) {
        self.size += 1;
        if self.size <= self.limit {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole message for `input` fed `chunk` octets at a time, and what was left over.
    fn unstuffed(input: &[u8], chunk: usize, limit: u64) -> Option<(Vec<u8>, DataStatus, usize)> {
        let mut u = Unstuffer::new(limit);
        let mut out = Vec::new();
        let mut offset = 0;
        for piece in input.chunks(chunk) {
            let (used, status) = u.unstuff(piece, &mut out);
            offset += used;
            if status != DataStatus::NeedMore {
                return Some((out, status, input.len() - offset));
            }
            assert_eq!(used, piece.len());
        }
        None
    }

    /// RFC 5321 sections 4.1.1.4 and 4.5.2, at every chunk size.
    #[test]
    fn dots_are_unstuffed_and_the_end_found_at_every_chunk_size() {
        let cases: &[(&[u8], &[u8])] = &[
            (b".\r\n", b""),
            (b"a\r\n.\r\n", b"a\r\n"),
            (b"..\r\n.\r\n", b".\r\n"),
            (b"...x\r\n.\r\n", b"..x\r\n"),
            (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),
            // `.` CR not followed by LF: stuffing, then text.
            (b".\rx\r\n.\r\n", b"\rx\r\n"),
            // A bare LF is text, so `LF . LF` ends nothing.
            (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),
            (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n"),
            (b"a\r\r\n.\r\n", b"a\r\r\n"),
            (b"x.\r\n.\r\n", b"x.\r\n"),
        ];
        for (input, want) in cases {
            let mut with_tail = input.to_vec();
            with_tail.extend_from_slice(b"QUIT\r\n");
            for chunk in 1..=with_tail.len() {
                let (out, status, left) = unstuffed(&with_tail, chunk, 1 << 20).expect("complete");
                assert_eq!(
                    out,
                    *want,
                    "{:?} chunk {chunk}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(
                    status,
                    DataStatus::Done {
                        size: want.len() as u64,
                        over_limit: false
                    }
                );
                assert_eq!(left, 6, "the next command stays");
            }
        }
        assert!(unstuffed(b"a\r\n.\n", 1, 100).is_none());
        assert!(unstuffed(b"a\n.\r\n", 1, 100).is_none());
    }

    proptest::proptest! {
        /// RFC 5321 section 4.5.2 as a round trip: any message of CRLF lines, stuffed by the
        /// rule and ended with `.` CRLF, unstuffs to itself, and the octets after the end stay.
        #[test]
        fn stuffing_round_trips(
            lines in proptest::collection::vec("[.a\r\n]{0,6}", 0..20),
            chunk in 1usize..16,
        ) {
            let mut message = Vec::new();
            let mut stuffed = Vec::new();
            for line in &lines {
                let line = line.replace(['\r', '\n'], "");
                if line.starts_with('.') {
                    stuffed.push(b'.');
                }
                for part in [&mut message, &mut stuffed] {
                    part.extend_from_slice(line.as_bytes());
                    part.extend_from_slice(b"\r\n");
                }
            }
            stuffed.extend_from_slice(b".\r\nQUIT\r\n");
            let (out, status, left) = unstuffed(&stuffed, chunk, 1 << 20).expect("complete");
            proptest::prop_assert_eq!(out, message.clone());
            proptest::prop_assert_eq!(
                status,
                DataStatus::Done { size: message.len() as u64, over_limit: false }
            );
            proptest::prop_assert_eq!(left, 6);
        }
    }

    /// A message over the limit is read to its end; only `limit` octets are handed out.
    #[test]
    fn octets_over_the_limit_are_dropped_and_counted() {
        let (out, status, _) = unstuffed(b"0123456789\r\n.\r\n", 3, 4).expect("complete");
        assert_eq!(out, b"0123");
        assert_eq!(
            status,
            DataStatus::Done {
                size: 12,
                over_limit: true
            }
        );
        let (_, status, _) = unstuffed(b"0123456789\r\n.\r\n", 3, 12).expect("complete");
        assert_eq!(
            status,
            DataStatus::Done {
                size: 12,
                over_limit: false
            }
        );
    }
}
