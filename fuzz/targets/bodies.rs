//! The bodies of the fuzz targets, shared by the cargo-fuzz targets in `fuzz/fuzz_targets/`
//! (libFuzzer, nightly) and by the proptest fallback and crash-corpus replay in
//! `tests/e2e/fuzz.rs` (stable): one copy of the logic, included with `#[path]` by both.
//!
//! Each body takes arbitrary bytes and asserts the invariants the code under test documents;
//! a panic is a finding. Chunk sizes are drawn from the input itself, so one input always
//! replays the same way.
//!
//! Needs the crates `proto`, `store`, `admin` and `lmtp` in scope.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;

use proto::{Command, CommandError, Decoder, DotStuffer, Unstuffer, MAX_COMMAND_LINE};

// `TARGETS`: the names of the targets (shared with `cargo xtask fuzz`).
include!("names.rs");

/// Runs the body of the target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "decoder" => decoder(data),
        "stuffing" => stuffing(data),
        "sasl_line" => sasl_line(data),
        "mbox" => mbox(data),
        "maildir" => maildir(data),
        "proxy" => proxy(data),
        "lmtp" => lmtp(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// Splits `data` into chunks whose sizes (1..=64) come from a byte of the input.
fn chunks(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first % 64) + 1, rest),
        None => (1, data),
    }
}

/// Everything a decoder yields for `input` fed in chunks of `chunk` octets, drained after
/// each feed; checks the buffer bound on the way.
fn decode_all(input: &[u8], chunk: usize) -> Vec<Result<Command, CommandError>> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        d.feed(piece);
        assert!(
            d.buffered() <= MAX_COMMAND_LINE + piece.len(),
            "decoder holds {} octets after a feed of {}",
            d.buffered(),
            piece.len()
        );
        // Each pass takes out one line or stops: bounded by the octets fed.
        for _ in 0..=input.len() {
            match d.next_command() {
                Ok(None) => break,
                Ok(Some(c)) => out.push(Ok(c)),
                Err(e) => out.push(Err(e)),
            }
        }
        assert!(
            d.buffered() <= MAX_COMMAND_LINE,
            "partial line over the cap"
        );
    }
    out
}

/// Command decoder: never panics; the same commands and errors whatever the chunking; the
/// buffer stays bounded; every decoded command encodes to a line that decodes to itself.
pub fn decoder(data: &[u8]) {
    let (chunk, input) = chunks(data);
    let whole = decode_all(input, input.len().max(1));
    let split = decode_all(input, chunk);
    assert_eq!(whole, split, "chunks of {chunk} decode differently");
    for c in whole.into_iter().flatten() {
        let mut line = Vec::new();
        c.encode(&mut line);
        let again = decode_all(&line, line.len());
        assert_eq!(again, vec![Ok(c.clone())], "{c:?} does not round-trip");
    }
}

/// Dot-stuffing: what RETR sends is a stored message (CRLF line ends, a final CRLF) through
/// `DotStuffer`; `Unstuffer` must give those bytes back exactly, find the terminator exactly at
/// the end, and no body line may read as the terminator. Raw input (not normalised first)
/// must round-trip too, up to the line end that `finish` supplies.
pub fn stuffing(data: &[u8]) {
    let (chunk, raw) = chunks(data);
    let (stored, _) = store::normalise(raw);
    assert_eq!(round_trip(&stored, chunk), stored, "RETR bytes change");
    let back = round_trip(raw, chunk);
    // A final lone CR is taken as the line end by `finish`, where the store keeps it and adds
    // CRLF; the store never hands the stuffer such a body.
    if raw.ends_with(b"\r") {
        let mut want = stored[..stored.len() - 3].to_vec();
        want.extend_from_slice(b"\r\n");
        assert_eq!(back, want, "{raw:?}");
    } else {
        assert_eq!(back, stored, "round trip differs from what the store keeps");
    }
}

/// `body` through `DotStuffer` and back through `Unstuffer`, both fed `chunk` octets at a time.
fn round_trip(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut s = DotStuffer::new();
    for piece in body.chunks(chunk) {
        s.push(piece, &mut wire);
    }
    s.finish(&mut wire);
    assert!(wire.ends_with(b".\r\n"));
    let end = wire.len() - 3;
    assert!(
        !wire[..end]
            .split(|&b| b == b'\n')
            .any(|l| l == b"." || l == b".\r"),
        "a body line reads as the terminator"
    );
    let mut u = Unstuffer::new();
    let mut back = Vec::new();
    let mut consumed = 0;
    for piece in wire.chunks(chunk) {
        match u.push(piece, &mut back) {
            Some(n) => {
                consumed += n;
                break;
            }
            None => consumed += piece.len(),
        }
    }
    assert!(u.is_done(), "no terminator found");
    assert_eq!(consumed, wire.len(), "terminator found before the end");
    back
}

/// SASL-sized lines (`Decoder::with_max_line`): never panics, no line longer than the cap,
/// no line holding LF, the buffer bounded by the cap plus one feed.
pub fn sasl_line(data: &[u8]) {
    let (chunk, rest) = chunks(data);
    let (cap, input) = match rest.split_first() {
        Some((&b, input)) => (usize::from(b) * 48, input),
        None => (0, rest),
    };
    let cap = cap.max(3);
    let mut d = Decoder::with_max_line(cap);
    for piece in input.chunks(chunk) {
        d.feed(piece);
        assert!(d.buffered() <= cap + piece.len());
        for _ in 0..=input.len() {
            match d.next_line() {
                Ok(None) => break,
                Ok(Some(line)) => {
                    assert!(
                        line.len() + 2 <= cap,
                        "line of {} over cap {cap}",
                        line.len()
                    );
                    assert!(!line.contains(&b'\n'));
                }
                Err(_) => {}
            }
        }
    }
}

/// mbox reader: never panics, ends, and every message it yields is non-empty and within the
/// size limit once stored.
pub fn mbox(data: &[u8]) {
    let max_size = 4096;
    let Ok(messages) = admin::Mbox::open(std::io::Cursor::new(data), max_size) else {
        return;
    };
    let mut count = 0usize;
    for m in messages.take(data.len() + 1) {
        count += 1;
        let Ok(m) = m else { break };
        assert!(!m.bytes.is_empty());
        assert!(admin::stored_size(&m.bytes) <= max_size);
        assert_eq!(
            admin::stored_size(&m.bytes),
            store::normalise(&m.bytes).0.len() as u64,
            "import size check disagrees with the store"
        );
        if let Some(uid) = &m.uid {
            assert!(!uid.is_empty() && uid.trim() == uid);
        }
    }
    assert!(count <= data.len() / 5 + 1, "more messages than separators");
}

/// Maildir parsing: `X-UIDL:` extraction and file-name parsing never panic; a UID found is
/// trimmed and non-empty; the base name is a prefix of the file name.
pub fn maildir(data: &[u8]) {
    if let Some(uid) = admin::x_uidl(data) {
        assert!(!uid.is_empty() && uid.trim() == uid);
    }
    let name: Vec<u8> = data
        .iter()
        .copied()
        .take(255)
        .filter(|&b| b != b'/' && b != 0)
        .collect();
    let entry = admin::MaildirEntry {
        path: std::path::PathBuf::from("cur"),
        subdir: "cur",
        file_name: OsString::from_vec(name.clone()),
    };
    let _ = entry.delivery_time();
    let base = entry.base_name();
    assert!(String::from_utf8_lossy(&name).starts_with(base.as_ref()));
}

/// PROXY protocol header (`proto::proxy`): never panics; the verdict reached byte by byte is
/// the verdict on the whole input; undecided input stays under the caps; a header never
/// claims more octets than it was given, and its own octets parse to the same header. The
/// first byte picks a start (none, a v1 prefix, the v2 signature) so inputs reach past the
/// signatures.
pub fn proxy(data: &[u8]) {
    use proto::proxy::{parse, MAX_HEADER, MAX_V1_LINE, V2_SIGNATURE};
    let (start, rest): (&[u8], &[u8]) = match data.split_first() {
        Some((&b, rest)) => match b % 5 {
            0 => (b"", rest),
            1 => (b"PROXY ", rest),
            2 => (b"PROXY TCP4 ", rest),
            3 => (b"PROXY TCP6 ", rest),
            _ => (&V2_SIGNATURE, rest),
        },
        None => (b"", data),
    };
    let input = [start, rest].concat();
    let whole = parse(&input);
    let mut decided = None;
    for n in 0..=input.len() {
        match parse(&input[..n]) {
            Ok(None) => {
                assert!(decided.is_none(), "undecided again at {n}");
                assert!(n < MAX_HEADER, "{n} octets undecided");
                assert!(
                    n < MAX_V1_LINE || input.first() != Some(&b'P'),
                    "long v1 line undecided"
                );
            }
            other => {
                if decided.is_none() {
                    assert_eq!(other, whole, "prefix of {n} octets decides otherwise");
                    decided = Some(n);
                }
            }
        }
    }
    if let Ok(Some(h)) = whole {
        assert!(h.len <= input.len() && h.len <= MAX_HEADER);
        assert_eq!(parse(&input[..h.len]), Ok(Some(h)));
        assert_eq!(h.source.is_some(), h.destination.is_some());
    }
}

/// The LMTP codec (crates/lmtp) driven as the listener drives it, the input as the client's
/// bytes in chunks: the command buffer stays within its cap, a message never yields more than
/// the limit, every reply is well-formed (CRLF only at line ends, lines within 512 octets).
/// Then the unstuffer against a reference stuffing of the input taken as a message
/// (RFC 5321 section 4.5.2), at the same chunk size.
pub fn lmtp(data: &[u8]) {
    use lmtp::{DataStatus, Decoder, Limits, Next, Session, Unstuffer, MAX_COMMAND_LINE};
    const LIMIT: u64 = 4096;
    let (chunk, input) = chunks(data);
    let mut decoder = Decoder::new();
    let mut session = Session::new(Limits {
        hostname: "fuzz.test".into(),
        max_size: LIMIT,
    });
    let mut replies = Vec::new();
    let mut message = Vec::new();
    let mut closed = false;
    for piece in input.chunks(chunk) {
        if closed {
            break;
        }
        decoder.feed(piece);
        loop {
            if decoder.in_data() {
                match decoder.read_data(&mut message) {
                    DataStatus::NeedMore => break,
                    DataStatus::Done { size, over_limit } => {
                        assert!(message.len() as u64 <= LIMIT);
                        assert_eq!(over_limit, size > LIMIT);
                        match session.message_read(over_limit) {
                            Ok(envelope) => assert!(!envelope.recipients.is_empty()),
                            Err(r) => replies.extend(r),
                        }
                        message.clear();
                    }
                }
                continue;
            }
            assert!(decoder.buffered() <= MAX_COMMAND_LINE + piece.len());
            let Some(command) = decoder.next_command().transpose() else {
                break;
            };
            match session.command(command) {
                Next::Reply(r) => replies.push(r),
                Next::CheckRecipient(a) => replies.push(session.recipient_found(a.clone(), a)),
                Next::ReadData { reply, limit } => {
                    assert_eq!(limit, LIMIT);
                    replies.push(reply);
                    decoder.start_data(limit);
                }
                Next::Close(r) => {
                    replies.push(r);
                    closed = true;
                    break;
                }
            }
        }
    }
    for reply in &replies {
        let wire = reply.to_wire();
        for line in wire.split_terminator("\r\n") {
            assert!(line.len() <= 510, "{line:?}");
            assert!(!line.contains(['\r', '\n']), "{wire:?}");
        }
    }
    // The input as a message: stuffed by the reference rule, unstuffed back.
    let mut want = input.to_vec();
    if !want.is_empty() && !want.ends_with(b"\r\n") {
        want.extend_from_slice(b"\r\n");
    }
    let mut stuffed = Vec::with_capacity(want.len() + 8);
    let mut at_line_start = true;
    for (i, &b) in want.iter().enumerate() {
        if at_line_start && b == b'.' {
            stuffed.push(b'.');
        }
        stuffed.push(b);
        at_line_start = b == b'\n' && i > 0 && want[i - 1] == b'\r';
    }
    stuffed.extend_from_slice(b".\r\nNEXT");
    let mut u = Unstuffer::new(u64::MAX);
    let mut out = Vec::new();
    let mut used_total = 0;
    let mut done = false;
    for piece in stuffed.chunks(chunk) {
        let (used, status) = u.unstuff(piece, &mut out);
        used_total += used;
        if let DataStatus::Done { size, over_limit } = status {
            assert_eq!(size, out.len() as u64);
            assert!(!over_limit);
            done = true;
            break;
        }
    }
    assert!(done, "the terminator was not found");
    assert_eq!(out, want);
    assert_eq!(&stuffed[used_total..], b"NEXT");
}
