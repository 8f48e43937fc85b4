//! Where TOP stops (RFC 1939 section 7): after the header section and n more body lines.

/// Where TOP stops: after the header section and `lines` more line ends.
pub(crate) struct TopCut {
    header_left: u64,
    lines_left: u32,
}

impl TopCut {
    pub fn new(header_octets: u64, lines: u32) -> TopCut {
        TopCut {
            header_left: header_octets,
            lines_left: lines,
        }
    }

    /// The part of `chunk` that TOP sends, and whether TOP is complete after it.
    pub fn take<'a>(&mut self, chunk: &'a [u8]) -> (&'a [u8], bool) {
        let header = (self.header_left.min(chunk.len() as u64)) as usize;
        self.header_left -= header as u64;
        if self.header_left > 0 {
            return (chunk, false);
        }
        if self.lines_left == 0 {
            return (&chunk[..header], true);
        }
        for (i, &b) in chunk[header..].iter().enumerate() {
            if b == b'\n' {
                self.lines_left -= 1;
                if self.lines_left == 0 {
                    return (&chunk[..header + i + 1], true);
                }
            }
        }
        (chunk, false)
    }
}

#[cfg(test)]
mod tests {
    use super::TopCut;

    fn top(message: &[u8], header: u64, lines: u32, chunk: usize) -> Vec<u8> {
        let mut cut = TopCut::new(header, lines);
        let mut out = Vec::new();
        for piece in message.chunks(chunk) {
            let (part, done) = cut.take(piece);
            out.extend_from_slice(part);
            if done {
                break;
            }
        }
        out
    }

    #[test]
    fn top_sends_headers_blank_line_and_n_lines() {
        // RFC 1939 section 7 (TOP): the headers, the blank line, then n body lines, or the
        // whole body if it has fewer.
        let msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        let header = 14;
        for chunk in 1..=msg.len() {
            assert_eq!(top(msg, header, 0, chunk), b"A: 1\r\nB: 2\r\n\r\n");
            assert_eq!(
                top(msg, header, 2, chunk),
                b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
            );
            assert_eq!(top(msg, header, 9, chunk), msg);
        }
    }
}
