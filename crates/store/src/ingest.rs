//! Streaming normalisation of incoming messages to CRLF line ends.
//!
//! Every bare LF becomes CRLF, an existing CRLF stays, and a bare CR (one not followed by LF)
//! is kept as an ordinary octet. Input may arrive in slices of any size: a CR at the end of
//! one slice is held back until the next slice shows whether an LF follows.
//!
//! Stored messages always end with CRLF: [`Ingest::finish`] appends one when the input does
//! not end with a line end, so the stored size is exactly what RETR sends (before
//! dot-stuffing and the terminating `.` line, RFC 1939 section 3).

/// What [`Ingest`] learned about a normalised message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestSummary {
    /// Total octets of the normalised message.
    pub size: u64,
    /// Octets of the header section including the empty line that ends it; the whole
    /// message when it has no empty line.
    pub header_octets: u64,
    /// CRLF-terminated lines after the header section; 0 when there is no empty line.
    pub body_lines: u64,
}

/// A streaming CRLF normaliser: feed it with [`Ingest::push`], end with [`Ingest::finish`].
#[derive(Debug, Clone)]
pub struct Ingest {
    /// A CR ended the previous slice; whether it is bare depends on the next octet.
    pending_cr: bool,
    /// Octets of the current (unterminated) output line.
    line_len: u64,
    /// Still inside the header section (no empty line seen yet).
    in_header: bool,
    size: u64,
    header_octets: u64,
    body_lines: u64,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest::new()
    }
}

impl Ingest {
    /// A normaliser at the start of a message.
    pub fn new() -> Ingest {
        Ingest {
            pending_cr: false,
            line_len: 0,
            in_header: true,
            size: 0,
            header_octets: 0,
            body_lines: 0,
        }
    }

    /// Normalises `input` (any slice of the message) and appends the result to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 1);
        if self.pending_cr {
            match input.first() {
                None => return,
                Some(b'\n') => {
                    input = &input[1..];
                    self.line_end(out);
                }
                Some(_) => self.content(b"\r", out),
            }
            self.pending_cr = false;
        }
        while let Some(pos) = input.iter().position(|&b| b == b'\r' || b == b'\n') {
            self.content(&input[..pos], out);
            if input[pos] == b'\n' {
                self.line_end(out);
                input = &input[pos + 1..];
                continue;
            }
            match input.get(pos + 1) {
                Some(b'\n') => {
                    self.line_end(out);
                    input = &input[pos + 2..];
                }
                Some(_) => {
                    self.content(b"\r", out);
                    input = &input[pos + 1..];
                }
                None => {
                    self.pending_cr = true;
                    return;
                }
            }
        }
        self.content(input, out);
    }

    /// Ends the message: flushes a held-back CR and appends CRLF unless the message already
    /// ends with a line end (a trailing bare CR is not one). An empty input stays empty, with
    /// size 0; the store refuses to deliver it.
    pub fn finish(mut self, out: &mut Vec<u8>) -> IngestSummary {
        if self.pending_cr {
            self.content(b"\r", out);
        }
        if self.line_len > 0 {
            self.line_end(out);
        }
        IngestSummary {
            size: self.size,
            header_octets: self.header_octets,
            body_lines: self.body_lines,
        }
    }

    /// Octets written to the output so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(bytes);
        let n = bytes.len() as u64;
        self.line_len += n;
        self.size += n;
    }

    fn line_end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.size += 2;
        if self.in_header {
            self.header_octets += self.line_len + 2;
            if self.line_len == 0 {
                self.in_header = false;
            }
        } else {
            self.body_lines += 1;
        }
        self.line_len = 0;
    }
}

/// Normalises a whole message held in memory.
pub fn normalise(input: &[u8]) -> (Vec<u8>, IngestSummary) {
    let mut out = Vec::with_capacity(input.len() + 2);
    let mut ingest = Ingest::new();
    ingest.push(input, &mut out);
    let summary = ingest.finish(&mut out);
    (out, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input, normalised output, header octets, body lines.
    const CASES: &[(&[u8], &[u8], u64, u64)] = &[
        (b"", b"", 0, 0),
        (b"\n", b"\r\n", 2, 0),
        (b"\r\n", b"\r\n", 2, 0),
        (b"\r", b"\r\r\n", 3, 0),
        (b"a", b"a\r\n", 3, 0),
        (
            b"Subject: x\n\nbody\n",
            b"Subject: x\r\n\r\nbody\r\n",
            14,
            1,
        ),
        (
            b"Subject: x\r\n\r\nbody\r\n",
            b"Subject: x\r\n\r\nbody\r\n",
            14,
            1,
        ),
        (b"Subject: x\n\nbody", b"Subject: x\r\n\r\nbody\r\n", 14, 1),
        (b"A: 1\nB: 2\n", b"A: 1\r\nB: 2\r\n", 12, 0),
        (b"A: 1\nB: 2", b"A: 1\r\nB: 2\r\n", 12, 0),
        (b"\nbody\nmore\n", b"\r\nbody\r\nmore\r\n", 2, 2),
        (b"\r\n\r\n", b"\r\n\r\n", 2, 1),
        (b"H: v\n\n", b"H: v\r\n\r\n", 8, 0),
        (b"H: v\n\n\n\n", b"H: v\r\n\r\n\r\n\r\n", 8, 2),
        (b"a\rb\n", b"a\rb\r\n", 5, 0),
        (b"a\r\rb", b"a\r\rb\r\n", 6, 0),
        (b"a\r\r\n", b"a\r\r\n", 4, 0),
        (b"a\n\r\n\rb\r", b"a\r\n\r\n\rb\r\r\n", 5, 1),
        (b"\n\n\n", b"\r\n\r\n\r\n", 2, 2),
        (b"H: v\r\n\rx\n", b"H: v\r\n\rx\r\n", 10, 0),
        (b"H: v\r\n\r\n.\r\n..\n", b"H: v\r\n\r\n.\r\n..\r\n", 8, 2),
    ];

    fn replay(input: &[u8], split: usize) -> (Vec<u8>, IngestSummary) {
        let mut out = Vec::new();
        let mut ingest = Ingest::new();
        for piece in input.chunks(split) {
            ingest.push(piece, &mut out);
            // An empty push anywhere must change nothing.
            ingest.push(b"", &mut out);
            assert_eq!(ingest.size(), out.len() as u64);
        }
        let summary = ingest.finish(&mut out);
        (out, summary)
    }

    #[test]
    fn table_at_every_split() {
        for &(input, expected, header_octets, body_lines) in CASES {
            let want = IngestSummary {
                size: expected.len() as u64,
                header_octets,
                body_lines,
            };
            let (out, summary) = normalise(input);
            assert_eq!(out, expected, "{:?}", input.escape_ascii().to_string());
            assert_eq!(summary, want, "{:?}", input.escape_ascii().to_string());
            for split in 1..=input.len() {
                let (out, summary) = replay(input, split);
                let shown = input.escape_ascii().to_string();
                assert_eq!(out, expected, "{shown:?} split {split}");
                assert_eq!(summary, want, "{shown:?} split {split}");
            }
        }
    }

    #[test]
    fn empty_message_has_size_zero() {
        let (out, summary) = normalise(b"");
        assert!(out.is_empty());
        assert_eq!(summary.size, 0);
    }

    #[test]
    fn output_always_ends_with_crlf_and_has_no_bare_lf() {
        let inputs: &[&[u8]] = &[b"x", b"x\r", b"x\n\r", b"\r\r\r", b"a\n\nb\r\n\n\r"];
        for &input in inputs {
            let (out, summary) = normalise(input);
            assert!(out.ends_with(b"\r\n"));
            assert_eq!(summary.size, out.len() as u64);
            for (i, &b) in out.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(out.get(i.wrapping_sub(1)), Some(&b'\r'));
                }
            }
        }
    }
}
