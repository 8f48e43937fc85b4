//! Streaming normalisation of incoming messages to CRLF line ends.
//!
//! Every bare LF becomes CRLF, an existing CRLF stays, and a bare CR (one not followed by LF)
//! is kept as an ordinary octet. Input may arrive in slices of any size: a CR at the end of
//! one slice is held back until the next slice shows whether an LF follows.
//!
//! Stored messages always end with CRLF: [`Ingest::finish`] appends one when the input does
//! not end with a line end, so the stored size is exactly what RETR sends (before
//! dot-stuffing and the terminating `.` line, RFC 1939 section 3).
//!
//! In wire form ([`Ingest::wire`], how the store keeps every message delivered since schema
//! v8) the output is also byte-stuffed as RFC 1939 section 3 sends it: a line that starts
//! with `.` gets one more `.` in front, so RETR sends the stored octets as they are. The
//! summary's `size` and `header_octets` still count the message itself (what LIST reports);
//! `stored_octets` and `stored_header_octets` count what is stored. [`from_wire`] undoes it.
//!
//! While normalising, the header section is checked for UTF-8 headers (RFC 6856 section 3,
//! RFC 6532): it holds at least one octet >= 0x80 and is valid UTF-8 as a whole. The check is
//! incremental, with constant memory, so a multi-octet sequence may span `push` slices.

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
    /// The header section (as `header_octets` counts it) holds at least one octet >= 0x80 and
    /// is valid UTF-8 as a whole (RFC 6856 section 3).
    pub utf8_headers: bool,
    /// Octets of the output: `size` plus, in wire form, one per stuffed line.
    pub stored_octets: u64,
    /// Octets of the header section in the output: `header_octets` plus, in wire form, one
    /// per stuffed header line (where TOP cuts the stored octets).
    pub stored_header_octets: u64,
}

/// An incremental UTF-8 validator (RFC 3629 section 4: no overlong forms, no surrogates,
/// nothing above U+10FFFF) that also notes whether any non-ASCII octet was seen.
#[derive(Debug, Clone, Copy)]
struct Utf8Check {
    /// Continuation octets still expected by the current sequence.
    need: u8,
    /// Inclusive range allowed for the next continuation octet.
    lo: u8,
    hi: u8,
    /// No invalid octet seen so far.
    valid: bool,
    /// At least one octet >= 0x80 seen.
    non_ascii: bool,
}

impl Utf8Check {
    const fn new() -> Utf8Check {
        Utf8Check {
            need: 0,
            lo: 0x80,
            hi: 0xBF,
            valid: true,
            non_ascii: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while self.valid {
            if self.need == 0 {
                // Fast path: skip ASCII between sequences.
                match rest.iter().position(|&b| b >= 0x80) {
                    None => return,
                    Some(pos) => rest = &rest[pos..],
                }
            }
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            rest = tail;
            if self.need > 0 {
                if b < self.lo || b > self.hi {
                    self.valid = false;
                }
                self.need -= 1;
                (self.lo, self.hi) = (0x80, 0xBF);
                continue;
            }
            self.non_ascii = true;
            (self.need, self.lo, self.hi) = match b {
                0xC2..=0xDF => (1, 0x80, 0xBF),
                0xE0 => (2, 0xA0, 0xBF), // no overlong 3-octet forms
                0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
                0xED => (2, 0x80, 0x9F), // no surrogates
                0xF0 => (3, 0x90, 0xBF), // no overlong 4-octet forms
                0xF1..=0xF3 => (3, 0x80, 0xBF),
                0xF4 => (3, 0x80, 0x8F), // nothing above U+10FFFF
                _ => {
                    // A stray continuation octet, C0, C1 or F5..FF.
                    self.valid = false;
                    return;
                }
            };
        }
    }

    /// True when everything fed so far is complete, valid UTF-8 with a non-ASCII octet.
    fn is_utf8(&self) -> bool {
        self.valid && self.need == 0 && self.non_ascii
    }
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
    /// UTF-8 check of the header section, fed while `in_header`.
    header_utf8: Utf8Check,
    /// Byte-stuff the output (wire form).
    wire: bool,
    /// Dots added by stuffing, in all and in the header section.
    stuffed: u64,
    header_stuffed: u64,
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
            header_utf8: Utf8Check::new(),
            wire: false,
            stuffed: 0,
            header_stuffed: 0,
        }
    }

    /// A normaliser whose output is also in wire form (byte-stuffed, RFC 1939 section 3).
    pub fn wire() -> Ingest {
        Ingest {
            wire: true,
            ..Ingest::new()
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
            utf8_headers: self.header_utf8.is_utf8(),
            stored_octets: self.size + self.stuffed,
            stored_header_octets: self.header_octets + self.header_stuffed,
        }
    }

    /// Octets of the normalised message so far (without stuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.in_header {
            self.header_utf8.feed(bytes);
        }
        if self.wire && self.line_len == 0 && bytes.first() == Some(&b'.') {
            out.push(b'.');
            self.stuffed += 1;
            if self.in_header {
                self.header_stuffed += 1;
            }
        }
        out.extend_from_slice(bytes);
        let n = bytes.len() as u64;
        self.line_len += n;
        self.size += n;
    }

    fn line_end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.size += 2;
        if self.in_header {
            // A line end inside a multi-octet sequence makes the header invalid UTF-8.
            self.header_utf8.feed(b"\r\n");
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
    whole(Ingest::new(), input)
}

/// Normalises a whole message held in memory into wire form.
pub fn to_wire(input: &[u8]) -> (Vec<u8>, IngestSummary) {
    whole(Ingest::wire(), input)
}

fn whole(mut ingest: Ingest, input: &[u8]) -> (Vec<u8>, IngestSummary) {
    let mut out = Vec::with_capacity(input.len() + 2);
    ingest.push(input, &mut out);
    let summary = ingest.finish(&mut out);
    (out, summary)
}

/// A message stored in wire form as it was normalised: the stuffing dot of every line that
/// starts with `.` taken off. Lines end with CRLF in both, so a line starts at the beginning
/// and after each LF.
pub fn from_wire(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len());
    let mut from = usize::from(stored.first() == Some(&b'.'));
    for at in memchr::memmem::find_iter(stored, b"\n.") {
        out.extend_from_slice(&stored[from..=at]);
        from = at + 2;
    }
    if from <= stored.len() {
        out.extend_from_slice(&stored[from..]);
    }
    out
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
                utf8_headers: false,
                stored_octets: expected.len() as u64,
                stored_header_octets: header_octets,
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

    /// Wire form (RFC 1939 section 3): the normalised message with one more `.` before every
    /// line that starts with `.`, header lines included, at every split of the input; sizes
    /// count the message, stored octets what is stored; `from_wire` gives the normalised
    /// message back.
    #[test]
    fn rfc1939_s3_wire_form_is_the_normalised_message_byte_stuffed() {
        let cases: &[(&[u8], &[u8], u64)] = &[
            (b".\n", b"..\r\n", 4),
            (
                b"A: 1\n.B\n\n.\n..\nx.\n.",
                b"A: 1\r\n..B\r\n\r\n..\r\n...\r\nx.\r\n..\r\n",
                13,
            ),
            (b"H: v\r\n\r\n.\r\n", b"H: v\r\n\r\n..\r\n", 8),
            (b"a\r.b\n", b"a\r.b\r\n", 6),
            (b"no dots\r\n", b"no dots\r\n", 9),
        ];
        for &(input, stored, stored_header_octets) in cases {
            let shown = input.escape_ascii().to_string();
            let (plain, want) = normalise(input);
            let want = IngestSummary {
                stored_octets: stored.len() as u64,
                stored_header_octets,
                ..want
            };
            for split in 1..=input.len() {
                let mut out = Vec::new();
                let mut ingest = Ingest::wire();
                for piece in input.chunks(split) {
                    ingest.push(piece, &mut out);
                }
                assert_eq!(ingest.finish(&mut out), want, "{shown:?} split {split}");
                assert_eq!(out, stored, "{shown:?} split {split}");
            }
            assert_eq!(to_wire(input), (stored.to_vec(), want), "{shown:?}");
            assert_eq!(from_wire(stored), plain, "{shown:?}");
        }
    }

    /// Input, and whether its header section is UTF-8 (RFC 6856 section 3).
    const UTF8_CASES: &[(&[u8], bool)] = &[
        (b"", false),
        (b"Subject: plain\n\nbody\n", false),
        (b"Subject: caf\xc3\xa9\n\nbody\n", true),
        (b"Subject: caf\xc3\xa9\r\n\r\n", true),
        (b"Subject: caf\xe9\n\nbody\n", false), // Latin-1
        (b"Subject: x\n\nbody caf\xc3\xa9\n", false), // 8-bit in the body only
        (b"Subject: x\n\n\xff\xfe\n", false),
        (b"Subject: caf\xc3\xa9\n\n\xff\n", true), // invalid body does not matter
        (b"\xc3\xa9", true),                       // no empty line: the whole message
        (b"\xc3\xa9\r", true),                     // a trailing bare CR is content
        (b"A: \xe2\x82\xac \xf0\x9f\x98\x80\n\n", true),
        (b"A: \xef\xbf\xbf \xf4\x8f\xbf\xbf \xc2\x80\n\n", true),
        (b"A: \xc3\xa9\nB: \xe9\n\n", false), // valid, then Latin-1 in a later field
        (b"A: \xe9\nB: \xc3\xa9\n\n", false),
        (b"A: \xc3\n\xa9\n\n", false), // a line end splits the sequence
        (b"A: \xc3\r\xa9\n\n", false), // so does a bare CR
        (b"A: \xc3", false),           // truncated at the end of the message
        (b"A: \xe2\x82", false),
        (b"A: \xf0\x9f\x98\n\n", false),
        (b"A: \xc3\n\n", false),     // truncated at the end of the header
        (b"A: \xc0\xaf\n\n", false), // overlong
        (b"A: \xc1\xbf\n\n", false),
        (b"A: \xe0\x80\xaf\n\n", false),
        (b"A: \xf0\x80\x80\xaf\n\n", false),
        (b"A: \xed\xa0\x80\n\n", false),     // surrogate
        (b"A: \xed\x9f\xbf\n\n", true),      // U+D7FF
        (b"A: \xf4\x90\x80\x80\n\n", false), // above U+10FFFF
        (b"A: \xf5\x80\x80\x80\n\n", false),
        (b"A: \x80\n\n", false), // stray continuation octet
        (b"A: \xc3\xa9\xa9\n\n", false),
        (b"A: \xff\n\n", false),
    ];

    /// The header section of the normalised message, checked with the standard library.
    fn reference_utf8_headers(input: &[u8]) -> bool {
        let (out, summary) = normalise(input);
        let header = &out[..usize::try_from(summary.header_octets).expect("fits in memory")];
        !header.is_ascii() && std::str::from_utf8(header).is_ok()
    }

    #[test]
    fn utf8_headers_table_at_every_split() {
        for &(input, want) in UTF8_CASES {
            let shown = input.escape_ascii().to_string();
            assert_eq!(reference_utf8_headers(input), want, "{shown:?} reference");
            assert_eq!(normalise(input).1.utf8_headers, want, "{shown:?}");
            for split in 1..=input.len() {
                let (_, summary) = replay(input, split);
                assert_eq!(summary.utf8_headers, want, "{shown:?} split {split}");
            }
        }
    }

    #[test]
    fn utf8_headers_agree_with_std_on_short_sequences() {
        // Every one- and two-octet field value, and three- and four-octet ones built from the
        // octets where UTF-8's rules change (also pushed one octet at a time).
        let edges: &[u8] = &[
            0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
            0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF,
        ];
        let mut values: Vec<Vec<u8>> = (0..=255u8).map(|a| vec![a]).collect();
        for a in 0..=255u8 {
            values.extend((0..=255u8).map(|b| vec![a, b]));
        }
        for &a in edges {
            for &b in edges {
                for &c in edges {
                    values.push(vec![a, b, c]);
                    // A fourth octet only decides between a continuation and anything else.
                    values.extend([0x41, 0x80, 0xBF, 0xC3].map(|d| vec![a, b, c, d]));
                }
            }
        }
        for value in values {
            let mut input = b"A: ".to_vec();
            input.extend_from_slice(&value);
            input.extend_from_slice(b"\n\nbody\n");
            let want = reference_utf8_headers(&input);
            let shown = input.escape_ascii().to_string();
            assert_eq!(normalise(&input).1.utf8_headers, want, "{shown:?}");
            if value.len() > 2 {
                assert_eq!(replay(&input, 1).1.utf8_headers, want, "{shown:?} split 1");
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
