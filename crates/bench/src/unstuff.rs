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
    /// Inside a line that did not start with `.`: copied as is.
    Plain,
    /// Inside a line that started with `.`: proto decides.
    Dotted(Unstuffer),
}

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

    /// As `proto::Unstuffer::push`: hands body octets to `out`; `Some(n)` when the
    /// terminator ended within the first `n` octets of `input`.
    pub fn push(&mut self, input: &[u8], out: &mut impl Sink) -> Option<usize> {
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match &mut self.state {
                State::LineStart => {
                    self.state = if rest[0] == b'.' {
                        State::Dotted(Unstuffer::new())
                    } else {
                        State::Plain
                    };
                }
                State::Plain => match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.note_lf(&rest[..=i]);
                        out.put(&rest[..=i]);
                        at += i + 1;
                        self.state = State::LineStart;
                    }
                    None => {
                        out.put(rest);
                        self.last = rest[rest.len() - 1];
                        at = input.len();
                    }
                },
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

    /// `line` ends with LF: was it preceded by CR (in this slice, or at the end of the last)?
    fn note_lf(&mut self, line: &[u8]) {
        let cr = match line.len() {
            1 => self.last == b'\r',
            n => line[n - 2] == b'\r',
        };
        if !cr {
            self.bare_lf = true;
        }
        self.last = b'\n';
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

    #[test]
    fn bare_lf_is_noticed_across_chunks() {
        for chunk in 1..20 {
            assert!(!ours(b"ab\r\n..c\r\n\r\n.\r\n", chunk).2, "chunk {chunk}");
            assert!(ours(b"ab\r\nc\n.\r\n", chunk).2, "chunk {chunk}");
            assert!(ours(b"ab\r\n..c\n.\r\n", chunk).2, "chunk {chunk}");
        }
    }
}
