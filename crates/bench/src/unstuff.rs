//! Reading multi-line bodies fast enough that the client is never the bottleneck.
//!
//! `proto::Unstuffer` handles one octet at a time; at several hundred MiB/s that would make the
//! load generator, not the server, the limit. [`LineUnstuffer`] copies whole lines that do not
//! start with `.` (the only lines dot-stuffing touches) with `memchr`, and hands every line that
//! does start with `.` to a fresh `proto::Unstuffer`, which is in its line-start state exactly
//! there. So the rules (stuffed dots, the terminator, CRLF or bare LF) stay proto's; the tests
//! check the output equals `proto::Unstuffer`'s at every chunk size.
//!
//! The output goes to a [`Sink`]: a `Vec` for listings, or a checker that digests a message as
//! it arrives (`corpus::Streamed`), so a RETR body is never copied into a buffer of its own:
//! plain lines are handed over as slices of the read buffer, and only lines that start with
//! `.` pass through a small reused scratch buffer.

use proto::Unstuffer;

/// Where unstuffed body octets go, in order.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
    /// Octets put so far.
    fn len(&self) -> u64;
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
}

#[derive(Debug)]
enum State {
    LineStart,
    /// Inside a run of lines that do not start with `.`: handed on as is.
    Plain,
    /// Inside a line that started with `.`: proto decides.
    Dotted(Unstuffer),
}

/// Where the next line starting with `.` begins: the LF before it.
static DOT_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n."));

#[derive(Debug)]
pub struct LineUnstuffer {
    state: State,
    /// A body line ended by LF without CR was seen.
    pub bare_lf: bool,
    last: u8,
    /// The output of a line that starts with `.` (proto writes to a `Vec`).
    scratch: Vec<u8>,
}

impl Default for LineUnstuffer {
    fn default() -> Self {
        LineUnstuffer::new()
    }
}

impl LineUnstuffer {
    pub fn new() -> LineUnstuffer {
        LineUnstuffer {
            state: State::LineStart,
            bare_lf: false,
            last: b'\n',
            scratch: Vec::new(),
        }
    }

    /// Ready for the next body, keeping the scratch buffer.
    pub fn reset(&mut self) {
        self.state = State::LineStart;
        self.bare_lf = false;
        self.last = b'\n';
    }

    /// As `proto::Unstuffer::push`: hands body octets to `out`; `Some(n)` when the
    /// terminator ended within the first `n` octets of `input`. Lines that do not start with
    /// `.` go to `out` in runs, up to the next line that does (found with `memmem`), so
    /// `out` sees a few large slices, not one per line.
    pub fn push(&mut self, input: &[u8], out: &mut impl Sink) -> Option<usize> {
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match &mut self.state {
                State::LineStart => {
                    self.state = match rest {
                        // A stuffed line (or any dot-led line but the terminator): its first
                        // dot is dropped and the rest is an ordinary run, as
                        // `proto::Unstuffer` would do octet by octet.
                        [b'.', next, ..] if !matches!(next, b'\r' | b'\n') => {
                            at += 1;
                            State::Plain
                        }
                        [b'.', ..] => State::Dotted(Unstuffer::new()),
                        _ => State::Plain,
                    };
                }
                State::Plain => {
                    // Up to and including the LF before the next dot-led line, or all of it.
                    let (run, next) = match DOT_LINE.find(rest) {
                        Some(i) => (&rest[..=i], State::LineStart),
                        None if rest[rest.len() - 1] == b'\n' => (rest, State::LineStart),
                        None => (rest, State::Plain),
                    };
                    self.bare_lf |= proto::has_bare_lf(self.last == b'\r', run);
                    out.put(run);
                    self.last = run[run.len() - 1];
                    at += run.len();
                    self.state = next;
                }
                State::Dotted(u) => {
                    let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
                    let prev = self.last;
                    self.scratch.clear();
                    let done = u.push(&rest[..end], &mut self.scratch);
                    out.put(&self.scratch);
                    if let Some(n) = done {
                        return Some(at + n);
                    }
                    if let Some(&b) = self.scratch.last() {
                        self.last = b;
                    }
                    if rest[end - 1] == b'\n' {
                        // The octet before the LF: in this piece's output, or the last one
                        // before it.
                        let before_lf = match self.scratch.len() {
                            0 | 1 => prev,
                            n => self.scratch[n - 2],
                        };
                        if out.len() >= 2 && before_lf != b'\r' {
                            self.bare_lf = true;
                        }
                        self.state = State::LineStart;
                    }
                    at += end;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto_unstuff(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut out = Vec::new();
        let n = Unstuffer::new().push(input, &mut out);
        (out, n)
    }

    fn ours(input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>, bool) {
        let mut u = LineUnstuffer::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(chunk) {
            if let Some(n) = u.push(piece, &mut out) {
                return (out, Some(consumed + n), u.bare_lf);
            }
            consumed += piece.len();
        }
        (out, None, u.bare_lf)
    }

    #[test]
    fn equals_proto_at_every_chunk_size() {
        let cases: &[&[u8]] = &[
            b".\r\nrest",
            b"..\r\n.\r\n",
            b"a\r\n..b\r\n...\r\n.\r\nX",
            b".\rx\r\n.\r\n",
            b"a\n.b\n.\nZZ",
            b"line\r\n..\r\n\r\n.\r\n",
            b"no terminator\r\n..x",
            b"",
        ];
        let mut rng = crate::corpus::Rng::new(9);
        let mut random = Vec::new();
        for _ in 0..300 {
            let mut v: Vec<u8> = (0..rng.below(40))
                .map(|_| b".\r\nab"[rng.below(5) as usize])
                .collect();
            v.extend_from_slice(b"\r\n.\r\ntail");
            random.push(v);
        }
        for input in cases
            .iter()
            .copied()
            .chain(random.iter().map(Vec::as_slice))
        {
            let (want, want_n) = proto_unstuff(input);
            for chunk in 1..=input.len().max(1) {
                let (got, n, _) = ours(input, chunk);
                assert_eq!((&got, n), (&want, want_n), "{input:?} in chunks of {chunk}");
            }
        }
    }

    /// Counts the slices handed over.
    struct Counting(Vec<u8>, usize);

    impl Sink for Counting {
        fn put(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
            self.1 += 1;
        }

        fn len(&self) -> u64 {
            self.0.len() as u64
        }
    }

    /// A body of 1,000 lines, one in a hundred dot-led, goes out in a few dozen slices (one
    /// per run between dot-led lines), not a thousand; and a reset unstuffer reads the next
    /// body as a fresh one would.
    #[test]
    fn plain_lines_go_out_in_runs() {
        let mut body = Vec::new();
        for i in 0..1000 {
            if i % 100 == 50 {
                body.extend_from_slice(b"..dot-led\r\n");
            } else {
                body.extend_from_slice(b"a plain line of text\r\n");
            }
        }
        body.extend_from_slice(b".\r\n");
        let (want, want_n) = proto_unstuff(&body);
        let mut u = LineUnstuffer::new();
        for _ in 0..2 {
            let mut out = Counting(Vec::new(), 0);
            assert_eq!(u.push(&body, &mut out), want_n);
            assert_eq!(out.0, want);
            assert!(out.1 <= 40, "{} slices", out.1);
            assert!(!u.bare_lf);
            u.reset();
        }
        let mut bare = body.clone();
        bare[500] = b'\n';
        bare[499] = b'x';
        let mut out = Counting(Vec::new(), 0);
        u.push(&bare, &mut out);
        assert!(u.bare_lf, "a bare LF inside a run");
    }

    #[test]
    fn bare_lf_is_noticed_across_chunks() {
        for chunk in 1..20 {
            assert!(!ours(b"ab\r\n..c\r\n\r\n.\r\n", chunk).2, "chunk {chunk}");
            assert!(ours(b"ab\r\nc\n.\r\n", chunk).2, "chunk {chunk}");
            assert!(ours(b"ab\r\n..c\n.\r\n", chunk).2, "chunk {chunk}");
        }
    }
}
