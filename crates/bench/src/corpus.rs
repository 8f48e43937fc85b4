//! The deterministic corpus: the same seed gives the same messages, byte for byte, so the
//! load generator can check that what a server sends is what was delivered.
//!
//! Every message opens with `X-Bench-Id: SEED/USER/INDEX`, which is how the checker finds what
//! it should have received whatever order a server lists the maildrop in. Messages are written
//! with LF line ends (mbox, Maildir); on the wire they are CRLF, and that is what [`Expected`]
//! records. Bodies contain lines starting with `.` and lines that are a lone `.`, so dot-stuffing
//! is exercised, and never a line starting with `From ` (mbox separators).

use std::collections::HashMap;

use crate::unstuff::Sink;

pub use testbed::rng::Rng;

fn mix(seed: u64, user: &str, index: u32) -> u64 {
    let mut h = seed ^ 0x5151_5151_5151_5151;
    for &b in user.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    (h ^ u64::from(index)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Size of message `index` of `user`: 1 KiB plus an exponential tail with a mean of 9 KiB,
/// capped at 96 KiB, so sizes are mixed and average about 10 KiB.
pub fn mixed_size(seed: u64, user: &str, index: u32) -> usize {
    let mut rng = Rng::new(mix(seed, user, index) ^ 0xA5A5);
    let tail = -(1.0 - rng.unit()).ln() * 9.0 * 1024.0;
    (1024.0 + tail).min(96.0 * 1024.0) as usize
}

const WORDS: &[&str] = &[
    "the",
    "mail",
    "server",
    "message",
    "drop",
    "octet",
    "line",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "post",
    "office",
    "protocol",
    "version",
    "three",
    "retrieve",
    "list",
    "unique",
    "id",
    "listing",
    "stat",
    "quit",
    "update",
    "state",
    "transaction",
    "authorization",
    "benchmark",
    "dovecot",
    "rust",
    "tokio",
    "sqlite",
    "from",
    "to",
    "subject",
    "reply",
    "12345",
    "0xdeadbeef",
    "=?utf-8?q?caf=C3=A9?=",
    "--",
    "::",
];

/// Message `index` of `user`, about `target` octets, LF line ends.
pub fn message(seed: u64, user: &str, index: u32, target: usize) -> Vec<u8> {
    let mut rng = Rng::new(mix(seed, user, index));
    let mut m = Vec::with_capacity(target + 128);
    m.extend_from_slice(format!("X-Bench-Id: {seed}/{user}/{index}\n").as_bytes());
    m.extend_from_slice(
        format!(
            "From: Bench Sender <bench@example.org>\nTo: {user}@example.org\n\
             Subject: benchmark message {index} for {user}\n\
             Date: Mon, 01 Jan 2024 00:00:00 +0000\n\
             Message-ID: <{seed}.{index}.{user}@bench.example.org>\n\
             MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        )
        .as_bytes(),
    );
    while m.len() < target {
        match rng.below(64) {
            0 => m.extend_from_slice(b".\n"),
            1..=4 => m.push(b'.'),
            5 => {
                m.push(b'\n');
                continue;
            }
            _ => {}
        }
        let width = 20 + rng.below(57) as usize;
        let start = m.len();
        loop {
            let word = WORDS[rng.below(WORDS.len() as u64) as usize];
            m.extend_from_slice(word.as_bytes());
            if m.len() - start >= width {
                break;
            }
            m.push(b' ');
        }
        m.push(b'\n');
    }
    m
}

/// LF line ends to CRLF (the generator never writes a bare CR).
pub fn to_crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 30);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A fast 64-bit digest for comparing received bytes with the corpus (not cryptographic: it
/// catches a wrong or damaged message, not an adversary).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut d = Digest::new(bytes.len() as u64);
    d.update(bytes);
    d.finish()
}

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;
/// Octets one step of [`Digest`] takes: four independent 8-octet lanes, so the multiplies
/// overlap and the digest runs at several GB/s.
const BLOCK: usize = 32;

/// [`digest`] over bytes that arrive in pieces: 32-octet blocks in four lanes of 8-octet
/// words, the last block padded with zeros, seeded with the length (which the reader knows
/// from LIST; a wrong length fails the size check anyway). Equal for every way of cutting
/// the same bytes into pieces.
#[derive(Debug, Clone)]
pub struct Digest {
    lanes: [u64; 4],
    block: [u8; BLOCK],
    filled: usize,
}

fn mix_word(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(MIX);
    h ^ (h >> 29)
}

impl Digest {
    pub fn new(len: u64) -> Digest {
        let seed = 0x243F_6A88_85A3_08D3u64 ^ len;
        Digest {
            lanes: [
                seed,
                seed.rotate_left(16) ^ 1,
                seed.rotate_left(32) ^ 2,
                seed.rotate_left(48) ^ 3,
            ],
            block: [0; BLOCK],
            filled: 0,
        }
    }

    fn mix_block(&mut self, block: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *lane = mix_word(*lane, u64::from_le_bytes(w));
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.filled > 0 {
            let take = (BLOCK - self.filled).min(bytes.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < BLOCK {
                return;
            }
            let block = self.block;
            self.mix_block(&block);
            self.filled = 0;
        }
        let mut blocks = bytes.chunks_exact(BLOCK);
        for block in &mut blocks {
            self.mix_block(block);
        }
        let rest = blocks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    pub fn finish(mut self) -> u64 {
        let filled = self.filled;
        self.block[filled..].fill(0);
        let block = self.block;
        self.mix_block(&block);
        let h = self
            .lanes
            .iter()
            .fold(filled as u64, |h, &lane| mix_word(h, lane))
            .wrapping_mul(MIX);
        h ^ (h >> 32)
    }
}

/// A RETR body checked as it arrives ([`Sink`]): its size, last two octets, first line (the
/// `X-Bench-Id` header, up to [`HEAD_MAX`] octets) and [`Digest`], with no copy of the
/// message; [`Expected::verify`] judges it.
#[derive(Debug)]
pub struct Streamed {
    len: u64,
    digest: Digest,
    /// The first line, kept in place: no allocation per message.
    head: [u8; HEAD_MAX],
    head_len: usize,
    head_done: bool,
    tail: [u8; 2],
}

/// The longest first line [`Streamed`] keeps.
pub const HEAD_MAX: usize = 256;

impl Streamed {
    /// A body LIST says is `size` octets.
    pub fn new(size: u64) -> Streamed {
        Streamed {
            len: 0,
            digest: Digest::new(size),
            head: [0; HEAD_MAX],
            head_len: 0,
            head_done: false,
            tail: [0; 2],
        }
    }

    /// Whether the body ends with CRLF.
    pub fn ends_with_crlf(&self) -> bool {
        self.len >= 2 && self.tail == *b"\r\n"
    }
}

impl Sink for Streamed {
    fn put(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.head_done {
            let line_end = memchr::memchr(b'\n', bytes);
            let take = line_end.map_or(bytes.len(), |i| i + 1);
            let n = take.min(HEAD_MAX - self.head_len);
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            self.head_done = line_end.is_some() || self.head_len >= HEAD_MAX;
        }
        self.digest.update(bytes);
        self.len += bytes.len() as u64;
        match bytes {
            [.., a, b] => self.tail = [*a, *b],
            [b] => self.tail = [self.tail[1], *b],
            [] => {}
        }
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// What every message should look like on the wire: CRLF size and digest by `X-Bench-Id`, and
/// how many messages each user holds.
#[derive(Debug, Default)]
pub struct Expected {
    pub seed: u64,
    by_id: HashMap<String, (u64, u64)>,
    per_user: HashMap<String, u32>,
}

impl Expected {
    pub fn new(seed: u64) -> Expected {
        Expected {
            seed,
            ..Expected::default()
        }
    }

    /// Records message `index` of `user` given its LF form.
    pub fn add(&mut self, user: &str, index: u32, lf: &[u8]) {
        let crlf = to_crlf(lf);
        self.by_id.insert(
            format!("{}/{user}/{index}", self.seed),
            (crlf.len() as u64, digest(&crlf)),
        );
        *self.per_user.entry(user.to_string()).or_default() += 1;
    }

    /// The corpus of `users` x `messages` mixed-size messages (and nothing written anywhere).
    pub fn mixed(seed: u64, users: &[String], messages: u32) -> Expected {
        let mut e = Expected::new(seed);
        for user in users {
            for i in 0..messages {
                e.add(user, i, &message(seed, user, i, mixed_size(seed, user, i)));
            }
        }
        e
    }

    pub fn messages_of(&self, user: &str) -> Option<u32> {
        self.per_user.get(user).copied()
    }

    /// Checks one received message (unstuffed, CRLF): its id names `user`, and its size and
    /// digest are the corpus's. Returns the id.
    #[cfg(test)]
    pub fn check(&self, user: &str, body: &[u8]) -> Result<String, String> {
        let mut streamed = Streamed::new(body.len() as u64);
        streamed.put(body);
        self.verify(user, &streamed)
    }

    /// [`Expected::check`] for a message checked as it arrived. Returns its id.
    pub fn verify(&self, user: &str, body: &Streamed) -> Result<String, String> {
        let first = body.head[..body.head_len]
            .strip_prefix(b"X-Bench-Id: ")
            .and_then(|l| l.strip_suffix(b"\r\n"))
            .and_then(|l| std::str::from_utf8(l).ok())
            .ok_or("message does not start with an X-Bench-Id header")?;
        let (size, hash) = self
            .by_id
            .get(first)
            .ok_or_else(|| format!("unknown message id {first}"))?;
        let owner = first.split('/').nth(1).unwrap_or_default();
        if owner != user {
            return Err(format!("message {first} in the maildrop of {user}"));
        }
        if body.len != *size {
            return Err(format!(
                "message {first}: {} octets, delivered {size}",
                body.len
            ));
        }
        if body.digest.clone().finish() != *hash {
            return Err(format!(
                "message {first}: content differs from what was delivered"
            ));
        }
        Ok(first.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_mixed() {
        let a = message(7, "user0", 3, mixed_size(7, "user0", 3));
        let b = message(7, "user0", 3, mixed_size(7, "user0", 3));
        assert_eq!(a, b);
        assert_ne!(a, message(8, "user0", 3, mixed_size(8, "user0", 3)));
        let sizes: Vec<usize> = (0..2000).map(|i| mixed_size(1, "u", i)).collect();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((8 * 1024..12 * 1024).contains(&mean), "mean {mean}");
        assert!(sizes.iter().any(|&s| s < 3000) && sizes.iter().any(|&s| s > 30_000));
    }

    #[test]
    fn no_mbox_separators_and_dots_present() {
        let m = message(1, "user1", 0, 200_000);
        let text = String::from_utf8(m).expect("ascii");
        assert!(text.ends_with('\n'));
        assert!(!text
            .lines()
            .any(|l| l.starts_with("From ") || l.starts_with(">From ")));
        assert!(text.lines().any(|l| l == "."));
        assert!(text.lines().any(|l| l.starts_with('.') && l.len() > 1));
        assert!(!text.contains('\r'));
    }

    #[test]
    fn check_accepts_the_corpus_and_rejects_changes() {
        let users = vec!["user0".to_string(), "user1".to_string()];
        let e = Expected::mixed(5, &users, 3);
        let good = to_crlf(&message(5, "user1", 2, mixed_size(5, "user1", 2)));
        assert_eq!(e.check("user1", &good).as_deref(), Ok("5/user1/2"));
        assert!(e.check("user0", &good).is_err());
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 5] ^= 1;
        assert!(e.check("user1", &bad).is_err());
        assert!(e.check("user1", &good[..n - 2]).is_err());
        assert_eq!(e.messages_of("user0"), Some(3));
    }

    #[test]
    fn the_streaming_digest_equals_the_whole_one_at_every_split() {
        let bytes: Vec<u8> = (0..101u32).map(|i| (i * 37 % 251) as u8).collect();
        for len in 0..bytes.len() {
            let whole = digest(&bytes[..len]);
            for piece in 1..=len.max(1) {
                let mut d = Digest::new(len as u64);
                for c in bytes[..len].chunks(piece) {
                    d.update(c);
                }
                assert_eq!(d.finish(), whole, "{len} octets in pieces of {piece}");
            }
        }
    }

    /// Any one octet changed, in any lane of any block or in the padded tail, changes the
    /// digest; so does a length that differs by zero octets of padding.
    #[test]
    fn the_digest_sees_every_octet() {
        let bytes: Vec<u8> = (0..77u32).map(|i| (i * 13 % 256) as u8).collect();
        let whole = digest(&bytes);
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            assert_ne!(digest(&changed), whole, "octet {i}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_ne!(digest(&padded), whole);
    }

    /// The stuffed wire form of a corpus message, unstuffed into a [`Streamed`] in pieces of
    /// every size a read might return: verified as the whole message is; one changed octet
    /// is not.
    #[test]
    fn a_message_checked_as_it_arrives_is_judged_as_the_whole() {
        let e = Expected::mixed(5, &["user1".to_string()], 1);
        let good = to_crlf(&message(5, "user1", 0, mixed_size(5, "user1", 0)));
        let mut wire = Vec::new();
        let mut stuffer = proto::DotStuffer::new();
        stuffer.push(&good, &mut wire);
        stuffer.finish(&mut wire);
        // A letter in the middle of the body: flipping its case changes content, not lines.
        let middle = (wire.len() / 2..wire.len())
            .find(|&i| wire[i].is_ascii_alphabetic())
            .expect("a letter");
        for piece in [1, 2, 3, 7, 64, 1000, 4096, wire.len()] {
            for flip in [None, Some(middle)] {
                let mut wire = wire.clone();
                if let Some(at) = flip {
                    wire[at] ^= 0x20;
                }
                let mut u = crate::unstuff::LineUnstuffer::new();
                let mut body = Streamed::new(good.len() as u64);
                let mut done = false;
                for c in wire.chunks(piece) {
                    if u.push(c, &mut body).is_some() {
                        done = true;
                        break;
                    }
                }
                assert!(
                    done && !u.bare_lf && body.ends_with_crlf(),
                    "pieces of {piece}"
                );
                let verdict = e.verify("user1", &body);
                match flip {
                    None => assert_eq!(verdict.as_deref(), Ok("5/user1/0"), "pieces of {piece}"),
                    Some(_) => assert!(verdict.is_err(), "pieces of {piece}"),
                }
            }
        }
    }
}
