//! Multi-line reply bodies: dot-stuffing on the way out, unstuffing on the way in
//! (RFC 1939 section 3).

/// Writes a multi-line body incrementally: a line that begins with `.` gets one more `.`,
/// bare LF becomes CRLF, and [`DotStuffer::finish`] ends the body with `CRLF.CRLF`, adding the
/// line end first when the body did not end with one. Chunk boundaries may fall anywhere,
/// including between CR and LF.
///
/// Only line ends need a look (is the LF preceded by CR, does the next line start with `.`),
/// so the input is scanned for LF with `memchr` and copied in runs as long as the lines allow:
/// a CRLF body with no dot-led line is one copy per call.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The last octet written was a CR (it may pair with an LF at the start of the next
    /// chunk).
    last_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            last_cr: false,
        }
    }

    /// Stuffs `input` onto `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else {
            return;
        };
        out.reserve(input.len() + input.len() / 64 + 4);
        if self.at_line_start && input[0] == b'.' {
            out.push(b'.');
        }
        // input[..copied] is written.
        let mut copied = 0;
        if !has_bare_lf(self.last_cr, input) {
            // Every line end is CRLF already (stored mail is): only the dot-led lines need
            // a look, so the scan skips from one to the next, not from line to line.
            for i in memchr::memmem::find_iter(input, b"\n.") {
                out.extend_from_slice(&input[copied..=i]);
                out.push(b'.');
                copied = i + 1;
            }
            out.extend_from_slice(&input[copied..]);
            self.at_line_start = last == b'\n';
            self.last_cr = last == b'\r';
            return;
        }
        for i in memchr::memchr_iter(b'\n', input) {
            let cr = match i {
                0 => self.last_cr,
                _ => input[i - 1] == b'\r',
            };
            if !cr {
                // A bare LF ends the line as CRLF would.
                out.extend_from_slice(&input[copied..i]);
                out.extend_from_slice(b"\r\n");
                copied = i + 1;
            }
            if input.get(i + 1) == Some(&b'.') {
                out.extend_from_slice(&input[copied..i + 1]);
                out.push(b'.');
                copied = i + 1;
            }
        }
        out.extend_from_slice(&input[copied..]);
        self.at_line_start = last == b'\n';
        self.last_cr = last == b'\r';
    }

    /// Stuffing without a copy where it pays: when `input` has no bare LF and needs at most
    /// `max` dots, its stuffed form is `input` with a `.` inserted before each offset this
    /// puts in `dots` (cleared first, ascending; 0 when a line starts at `input[0]`), and the
    /// caller writes the pieces as they are (a vectored write): true. Otherwise `input` is
    /// stuffed onto `out` as [`DotStuffer::push`] would (the dots found so far are not looked
    /// for again) and `dots` is left empty: false. Either way the stuffer moves on.
    pub fn dots(
        &mut self,
        input: &[u8],
        dots: &mut Vec<usize>,
        max: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        dots.clear();
        let Some(&last) = input.last() else {
            return true;
        };
        if has_bare_lf(self.last_cr, input) {
            self.push(input, out);
            return false;
        }
        if self.at_line_start && input[0] == b'.' {
            dots.push(0);
        }
        let mut found = memchr::memmem::find_iter(input, b"\n.");
        while dots.len() <= max {
            match found.next() {
                Some(i) => dots.push(i + 1),
                None => break,
            }
        }
        self.at_line_start = last == b'\n';
        self.last_cr = last == b'\r';
        if dots.len() <= max {
            return true;
        }
        out.reserve(input.len() + input.len() / 64 + 4);
        let mut from = 0;
        for at in dots.drain(..).chain(found.map(|i| i + 1)) {
            out.extend_from_slice(&input[from..at]);
            out.push(b'.');
            from = at;
        }
        out.extend_from_slice(&input[from..]);
        false
    }

    /// Takes note of `input` that is stuffed already (a message stored in wire form), so that
    /// [`DotStuffer::terminator`] knows where the body's last line ends; nothing is written.
    pub fn pass(&mut self, input: &[u8]) {
        if let Some(&last) = input.last() {
            self.at_line_start = last == b'\n';
            self.last_cr = last == b'\r';
        }
    }

    /// Ends the body: the missing line end if any, then the `.` line.
    pub fn finish(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.terminator());
    }

    /// What [`DotStuffer::finish`] writes: the missing line end if any (a CR that ended the
    /// body is already out: it only needs its LF), then the `.` line. For a caller that
    /// sends it in the same write as the body's last part.
    pub fn terminator(&self) -> &'static [u8] {
        match (self.at_line_start, self.last_cr) {
            (true, _) => b".\r\n",
            (false, true) => b"\n.\r\n",
            (false, false) => b"\r\n.\r\n",
        }
    }
}

/// Whether `input` has an LF not preceded by CR (`last_cr`: the octet before `input[0]` was
/// a CR). Branch-free over the whole slice, so the compiler vectorises it: no per-line work.
pub fn has_bare_lf(last_cr: bool, input: &[u8]) -> bool {
    let Some(&first) = input.first() else {
        return false;
    };
    let head = u8::from((first == b'\n') & !last_cr);
    let rest = input[1..].iter().zip(input).fold(0u8, |acc, (&b, &prev)| {
        acc | u8::from((b == b'\n') & (prev != b'\r'))
    });
    head | rest != 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnstuffState {
    LineStart,
    InLine,
    /// A `.` opened the line.
    Dot,
    /// `.` then CR opened the line.
    DotCr,
    Done,
}

/// Reads a multi-line body back (the client side): removes the stuffed `.`, stops at the
/// `.` line (CRLF or bare LF) and reports how much of the input belonged to the body.
#[derive(Debug, Clone)]
pub struct Unstuffer {
    state: UnstuffState,
}

impl Default for Unstuffer {
    fn default() -> Self {
        Unstuffer::new()
    }
}

impl Unstuffer {
    pub fn new() -> Unstuffer {
        Unstuffer {
            state: UnstuffState::LineStart,
        }
    }

    /// True once the terminating `.` line was read.
    pub fn is_done(&self) -> bool {
        self.state == UnstuffState::Done
    }

    /// Appends the body octets in `input` to `out`. Returns `Some(n)` when the terminator
    /// ended within the first `n` octets of `input` (the rest belongs to what follows), or
    /// `None` when all of `input` was body and more is needed.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        use UnstuffState as S;
        for (i, &b) in input.iter().enumerate() {
            self.state = match (self.state, b) {
                (S::Done, _) => return Some(i),
                (S::LineStart, b'.') => S::Dot,
                (S::Dot, b'\r') => S::DotCr,
                (S::Dot, b'\n') | (S::DotCr, b'\n') => {
                    self.state = S::Done;
                    return Some(i + 1);
                }
                (S::DotCr, other) => {
                    // ".\r" followed by something else: a line ".\rX..." that was stuffed.
                    out.push(b'\r');
                    out.push(other);
                    if other == b'\n' {
                        S::LineStart
                    } else {
                        S::InLine
                    }
                }
                (S::LineStart | S::InLine, b'\n') => {
                    out.push(b'\n');
                    S::LineStart
                }
                (S::LineStart | S::InLine | S::Dot, other) => {
                    out.push(other);
                    S::InLine
                }
            };
        }
        if self.state == S::Done {
            Some(input.len())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            s.push(piece, &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn unstuff(input: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut u = Unstuffer::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(chunk.max(1)) {
            match u.push(piece, &mut out) {
                Some(n) => {
                    consumed += n;
                    break;
                }
                None => consumed += piece.len(),
            }
        }
        assert!(
            u.is_done(),
            "no terminator in {:?}",
            String::from_utf8_lossy(input)
        );
        (out, consumed)
    }

    #[test]
    fn stuffing_table_at_every_chunk_size() {
        // RFC 1939 section 3: lines starting with "." get another "."; CRLF.CRLF ends it.
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"..x\r\n.\r\n", b"...x\r\n..\r\n.\r\n"),
            (b"a\r\n.b\r\nc", b"a\r\n..b\r\nc\r\n.\r\n"),
            // Bare LF becomes CRLF; a "." after a bare LF is at a line start.
            (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n"),
            // A body that does not end in CRLF still gets a correct terminator.
            (b"no newline", b"no newline\r\n.\r\n"),
            (b"ends in cr\r", b"ends in cr\r\n.\r\n"),
            // A CR inside a line is not a line end, so no stuffing after it.
            (b"a\r.b\r\n", b"a\r.b\r\n.\r\n"),
            (b"\r\n\r\n", b"\r\n\r\n.\r\n"),
            (b"8bit \xe9\xff\0\r\n", b"8bit \xe9\xff\0\r\n.\r\n"),
        ];
        for (input, expected) in table {
            for chunk in 1..=input.len().max(1) {
                assert_eq!(
                    stuff(input, chunk),
                    *expected,
                    "{:?} at chunk {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn unstuffing_table_at_every_chunk_size() {
        let table: &[(&[u8], &[u8], usize)] = &[
            (b".\r\n", b"", 3),
            (b".\r\nextra", b"", 3),
            (b"a\r\n..b\r\n.\r\n+OK", b"a\r\n.b\r\n", 11),
            (b"..\r\n.\n", b".\r\n", 6),
            (b"x\n.\n", b"x\n", 4),
        ];
        for (input, body, consumed) in table {
            for chunk in 1..=input.len() {
                assert_eq!(unstuff(input, chunk), (body.to_vec(), *consumed));
            }
        }
    }

    use proptest::prelude::*;

    /// What the stuffer promises to carry: CRLF line ends, ending in one.
    fn normalised(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev_cr = false;
        for &b in input {
            if b == b'\n' && !prev_cr {
                out.push(b'\r');
            }
            out.push(b);
            prev_cr = b == b'\r';
        }
        if prev_cr {
            out.push(b'\n');
        } else if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                4 => any::<u8>(),
                2 => Just(b'.'),
                2 => Just(b'\r'),
                2 => Just(b'\n'),
            ],
            0..300,
        )
    }

    /// Bodies whose every LF follows a CR, as stored mail's are: the stuffer's fast path.
    fn crlf_body() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![4 => Just(b'a'), 3 => Just(b'.'), 1 => Just(b'\r')],
                0..12,
            ),
            0..40,
        )
        .prop_map(|lines| lines.join(&b"\r\n"[..]))
    }

    /// The stuffing rules one octet at a time (the previous implementation), to compare the
    /// memchr-based one with.
    fn reference_stuff(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut at_line_start, mut pending_cr) = (true, false);
        for &b in input {
            if pending_cr {
                pending_cr = false;
                if b == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    at_line_start = true;
                    continue;
                }
                out.push(b'\r');
                at_line_start = false;
            }
            match b {
                b'\r' => pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    at_line_start = true;
                }
                _ => {
                    if at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    at_line_start = false;
                }
            }
        }
        if pending_cr || !at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    proptest! {
        #[test]
        fn stuffer_equals_the_octet_at_a_time_rules(input in body(), a in 1usize..40) {
            prop_assert_eq!(stuff(&input, a), reference_stuff(&input));
        }

        /// RFC 1939 section 3 on CRLF bodies (no bare LF anywhere: the `memmem` path), cut
        /// into chunks anywhere, between CR and LF included.
        #[test]
        fn stuffer_on_crlf_bodies_equals_the_octet_at_a_time_rules(input in crlf_body(), a in 1usize..40) {
            prop_assert_eq!(stuff(&input, a), reference_stuff(&input));
        }

        /// [`DotStuffer::dots`] gives what [`DotStuffer::push`] writes: piece by piece where
        /// it places the dots, onto the buffer where it stuffs (a bare LF, or more than `max`
        /// dots).
        #[test]
        fn dots_give_what_push_writes(
            input in prop_oneof![crlf_body(), body()],
            a in 1usize..40,
            max in prop_oneof![0usize..4, Just(usize::MAX)],
        ) {
            let (mut by_dots, mut offsets) = (DotStuffer::new(), Vec::new());
            let mut out = Vec::new();
            for piece in input.chunks(a) {
                if by_dots.dots(piece, &mut offsets, max, &mut out) {
                    prop_assert!(offsets.len() <= max);
                    let mut from = 0;
                    for &at in &offsets {
                        out.extend_from_slice(&piece[from..at]);
                        out.push(b'.');
                        from = at;
                    }
                    out.extend_from_slice(&piece[from..]);
                } else {
                    prop_assert!(offsets.is_empty());
                }
            }
            by_dots.finish(&mut out);
            prop_assert_eq!(out, reference_stuff(&input));
        }

        #[test]
        fn stuff_then_unstuff_round_trips(input in body(), a in 1usize..40, b in 1usize..40) {
            let wire = stuff(&input, a);
            let (back, consumed) = unstuff(&wire, b);
            prop_assert_eq!(consumed, wire.len());
            prop_assert_eq!(back, normalised(&input));
            // No line of the stuffed body is a lone "." before the end.
            let body = &wire[..wire.len() - 3];
            prop_assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"));
            prop_assert!(!body.starts_with(b".\r\n"));
        }

        #[test]
        fn unstuffer_never_panics(input in proptest::collection::vec(any::<u8>(), 0..400), c in 1usize..50) {
            let mut u = Unstuffer::new();
            let mut out = Vec::new();
            for piece in input.chunks(c) {
                if let Some(n) = u.push(piece, &mut out) {
                    prop_assert!(n <= piece.len());
                    break;
                }
            }
        }
    }
}
