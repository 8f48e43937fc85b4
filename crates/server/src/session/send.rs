//! Streaming a message after its `+OK` (RETR, TOP): its chunks read from the store in runs on
//! a blocking thread while the previous run is written, sent as stored when in wire form or
//! byte-stuffed on the way (RFC 1939 section 3), the terminator in the same write as the last
//! part.

use std::io;

use proto::DotStuffer;
use store::MessageId;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::warn;

use super::{Driver, FLUSH_AT};
use crate::conn::Stream;
use crate::reply;
use crate::topcut::TopCut;

/// A part of a message at least this long goes out as a vectored write from the store's
/// buffer ([`Driver::write_stuffed`]); shorter ones are copied into the reply buffer, so a
/// small message leaves in one write with its `+OK` and terminator.
const VECTORED_AT: usize = 16 * 1024;
/// At most this many stuffing dots in a vectored write: each one costs two more pieces for
/// the kernel to gather, and past a few dozen copying the chunk (as [`DotStuffer::push`]
/// does) is cheaper (`perf`: `_copy_from_iter` doubled on a chunk of 200 dots).
const VECTORED_DOTS: usize = 32;
/// Chunks a RETR or TOP reads with one store statement (128 KiB each).
const READ_RUN: u32 = 4;

/// A message to stream after its `+OK`: whole (RETR) or its headers and first `lines` body
/// lines (TOP), dot-stuffed.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub id: MessageId,
    /// Octets of the message (what LIST says).
    pub size: u64,
    /// Stored in wire form: sent as stored.
    pub wire: bool,
    pub top: Option<Top>,
    /// All of it when it was read ahead.
    pub held: Option<Vec<u8>>,
}

/// What TOP sends of a message: its header section (`header_octets`, as stored) and the
/// first `lines` body lines.
#[derive(Debug, Clone, Copy)]
pub(super) struct Top {
    pub header_octets: u64,
    pub lines: u32,
}

impl<S: Stream> Driver<S> {
    /// Streams a message (RETR) or its headers and first `lines` body lines (TOP),
    /// dot-stuffed. Chunks are read in runs of [`READ_RUN`] (one store statement each, so a
    /// message of one chunk, most mail, takes one), each on a blocking thread while the
    /// previous run is being written, and no thread waits on the network: a client that stops
    /// reading holds no thread and at most two runs of memory. A message read ahead (`held`)
    /// is one run, already read.
    pub(super) async fn send_message(&mut self, message: Outgoing) -> io::Result<()> {
        let Outgoing {
            id,
            size,
            wire,
            top,
            held,
        } = message;
        // Whether the chunks read so far are the whole message: one in wire form ends with a
        // chunk shorter than a full one (the store keeps it so); one in plain form when its
        // size is read.
        let whole = |read: u64, last: Option<usize>| match wire {
            true => last.is_some_and(|len| len < store::CHUNK_SIZE),
            false => read >= size,
        };
        let store = self.session.shared.store.clone();
        // `reply::blocking` starts the read at once: the next run is read while this one is
        // written.
        let read = |first: u32| {
            let store = store.clone();
            reply::blocking(move || store.read_chunks(id, first, READ_RUN))
        };
        let mut stuffer = DotStuffer::new();
        // Where the stuffing dots go in the chunk being written (reused).
        let mut dots = Vec::new();
        let mut cut = top.map(|t| TopCut::new(t.header_octets, t.lines));
        let mut sent = 0u64;
        // Octets read from the store, whether sent or cut by TOP.
        let mut read_so_far = 0u64;
        // The first chunk not yet read.
        let mut index = 0u32;
        let mut ready = held.map(|chunk| vec![chunk]);
        let mut next = ready.is_none().then(|| read(index));
        // The terminator went out with the last part.
        let mut terminated = false;
        // The length of the last chunk read.
        let mut last_len = None;
        'runs: loop {
            let run = match (ready.take(), next.take()) {
                (Some(run), _) => run,
                (None, Some(pending)) => pending.await.map_err(|e| read_failed(id, &e))?,
                (None, None) => break,
            };
            // A short run is the last: the message ends there (or a chunk is missing).
            let full = run.len() == READ_RUN as usize;
            index += run.len() as u32;
            if full {
                next = Some(read(index));
            }
            let count = run.len();
            for (at, chunk) in run.into_iter().enumerate() {
                read_so_far += chunk.len() as u64;
                last_len = Some(chunk.len());
                let (part, done) = match &mut cut {
                    Some(cut) => cut.take(&chunk),
                    None => (&chunk[..], false),
                };
                sent += part.len() as u64;
                // The reply's last part: the terminator leaves in the same write, so the
                // reply is one write unless it passes FLUSH_AT. Written apart, the few octets
                // of `.` CRLF wait behind the body in a relay without TCP_NODELAY (nginx's mail
                // proxy) until the client's delayed ACK: about 40 ms per message.
                let end = done || (!full && at + 1 == count);
                // The chunks end before the message does: one is missing. What was read goes
                // out, the terminator does not, and the connection is dropped below, so a
                // truncated message never looks whole.
                let short = end && !done && !whole(read_so_far, last_len);
                let last = end && !short;
                if wire {
                    // Stuffed already: no pass over it, no dots to place.
                    stuffer.pass(part);
                    dots.clear();
                }
                if part.len() >= VECTORED_AT && self.conn.is_write_vectored() {
                    if wire || stuffer.dots(part, &mut dots, VECTORED_DOTS, &mut self.session.out) {
                        let tail = if last { stuffer.terminator() } else { b"" };
                        self.write_stuffed(part, &dots, tail).await?;
                        terminated = last;
                    } else if !last && self.session.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                } else {
                    match wire {
                        true => self.session.out.extend_from_slice(part),
                        false => stuffer.push(part, &mut self.session.out),
                    }
                    if !last && self.session.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                if done {
                    break 'runs;
                }
            }
            // A short run or an empty one after a full one: the chunks end here.
            if !full && !whole(read_so_far, last_len) {
                return Err(read_failed(id, &truncated(index, read_so_far, size)));
            }
        }
        // In wire form the octets sent count the stuffing dots too.
        if top.is_none() && !wire && sent != size {
            warn!(
                message = id,
                sent,
                size = size,
                "stored size differs from content"
            );
        }
        if !terminated {
            stuffer.finish(&mut self.session.out);
        }
        Ok(())
    }

    /// Writes what is pending, then `part` with a `.` before each offset in `dots` (RFC 1939
    /// section 3's byte-stuffing, placed by [`DotStuffer::dots`]), as vectored writes: the
    /// chunk goes from the store's buffer to the socket with no copy in between. Bounded by
    /// the same deadline as [`Driver::flush`].
    async fn write_stuffed(&mut self, part: &[u8], dots: &[usize], tail: &[u8]) -> io::Result<()> {
        let limit = self.write_limit();
        let mut slices = Vec::with_capacity(2 * dots.len() + 3);
        slices.push(io::IoSlice::new(&self.session.out));
        let mut from = 0;
        for &at in dots {
            slices.push(io::IoSlice::new(&part[from..at]));
            slices.push(io::IoSlice::new(b"."));
            from = at;
        }
        slices.push(io::IoSlice::new(&part[from..]));
        if !tail.is_empty() {
            slices.push(io::IoSlice::new(tail));
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let conn = &mut self.conn;
        let write = async {
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = conn.write_vectored(rest).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                io::IoSlice::advance_slices(&mut rest, n);
            }
            conn.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading",
                ))
            }
        }
        self.session.shared.metrics.sent(total);
        self.session.out.clear();
        Ok(())
    }
}

/// The +OK is out when a read fails: the only honest thing left is to drop the connection,
/// so the client does not take a truncated message for a whole one.
fn read_failed(message: i64, e: &dyn std::fmt::Display) -> io::Error {
    warn!(error = %e, message, "reading a message failed mid-transfer");
    io::Error::other("message read failed")
}

/// What [`read_failed`] says when a message's chunks end before its size.
fn truncated(missing: u32, read: u64, size: u64) -> String {
    format!("chunk {missing} is missing: {read} of {size} octets stored")
}
