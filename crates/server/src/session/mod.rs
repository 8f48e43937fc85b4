//! One POP3 session: AUTHORIZATION, TRANSACTION and UPDATE (RFC 1939 sections 3 to 6), with
//! CAPA (RFC 2449), STLS (RFC 2595), UTF8 and LANG (RFC 6856).
//!
//! Two halves, in the manner of `auth::sasl::Step`. [`Session`] is the state machine: it takes
//! one command (or, inside AUTH, one SASL line), writes its replies into an output buffer and
//! returns [`Next`], what the driver must do before the next one. It knows no socket. The
//! driver ([`serve`]) does the I/O over any [`Stream`]: reads into the decoder, answers every
//! complete command in order (RFC 2449 PIPELINING), batches and flushes the replies, keeps the
//! deadlines (login, idle, a peer that stops reading), runs the STLS handshake and streams
//! messages.
//!
//! The phases have their own files: `authorization` (everything before login), `transaction`
//! (the maildrop commands) and `update` (QUIT after login, and the way out without it).

mod authorization;
#[cfg(test)]
mod tests;
mod transaction;
mod update;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::response::{write_end, write_err, write_listing_line, write_ok};
use proto::{Command, CommandError, Decoder, DotStuffer, MAX_COMMAND_LINE};
use store::{MessageId, StoreError};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::capa;
use crate::conn::{Conn, Stream};
use crate::lang::{self, Language, Text};
use crate::limits::ClientSlot;
use crate::reply::{self, ErrReply, SessionError};
use crate::topcut::TopCut;
use crate::{Cleartext, ListenerInfo, ListenerKind, Shared};

use authorization::{Auth, SASL_MAX_LINE};
use transaction::Transaction;

/// Invalid command lines a session may send before it is closed (unknown commands, syntax
/// errors, over-long lines, commands in the wrong state).
pub const MAX_BAD_COMMANDS: u32 = 20;

/// Longest a write to a logged-in client may wait for it to read (before login the login
/// deadline bounds every write): a client that stops reading gives its slot back by then.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest the close of a connection waits for the peer (TLS close_notify to a client that
/// no longer reads).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Replies are batched and written once this much is pending (or no command is left).
const FLUSH_AT: usize = 64 * 1024;
/// An idle session keeps at most this much reply buffer; a larger one (a RETR's) is freed
/// before waiting for the next command, so thousands of idle sessions cost little.
const OUT_KEEP: usize = 1024;
/// Chunks a RETR or TOP reads with one store statement (128 KiB each).
const READ_RUN: u32 = 4;

/// What the driver must do after the session took a command.
#[derive(Debug)]
enum Next {
    /// Go on with the next command.
    Continue,
    /// Write what is pending and close.
    Close,
    /// STLS was accepted: write the `+OK`, drop what was received after it, run the TLS
    /// handshake, then [`Session::tls_started`] (RFC 2595 section 4).
    StartTls,
    /// The `+OK` is written: stream this message, whole (RETR) or its headers and first
    /// `lines` body lines (TOP), dot-stuffed.
    Send {
        id: MessageId,
        size: u64,
        top: Option<Top>,
    },
}

/// What TOP sends of a message: its header section (`header_octets`, as stored) and the
/// first `lines` body lines.
#[derive(Debug, Clone, Copy)]
struct Top {
    header_octets: u64,
    lines: u32,
}

/// The session's state (RFC 1939 section 3). UPDATE is not a state a session rests in: QUIT
/// in TRANSACTION runs it and the session ends.
enum State {
    Authorization(Auth),
    Transaction(Box<Transaction>),
}

/// What the session did, for the summary line at its end.
#[derive(Debug, Default)]
struct Tally {
    retrieved: u64,
    retrieved_octets: u64,
    deleted: u64,
    /// Failed logins on this connection.
    auth_failures: u32,
}

/// The state machine of one session.
struct Session {
    /// The TCP peer: the client, or on a proxied listener the proxy. Cleartext policy is
    /// judged on it (the link this server can see).
    peer: SocketAddr,
    /// The real client: the PROXY header's source on a proxied listener, else `peer`. The
    /// failed-login penalty keys on it.
    client: SocketAddr,
    listener: ListenerInfo,
    shared: Arc<Shared>,
    id: u64,
    /// Replies not yet written.
    out: Vec<u8>,
    state: State,
    /// The connection is under TLS (implicit TLS, or after STLS).
    tls: bool,
    bad_commands: u32,
    lang: &'static Language,
    /// RFC 6856 UTF8 mode is on.
    utf8: bool,
    /// The greeting's timestamp, when APOP is offered (RFC 1939 section 7).
    apop_timestamp: Option<String>,
    tally: Tally,
    /// This connection's place under `max_connections_per_ip`, held until login: only
    /// connections still logging in count there (a NAT's logged-in users, one per account
    /// by the maildrop lock, count against the global cap alone).
    client_slot: Option<ClientSlot>,
    /// Output-only listings already given before login on this connection (free once each,
    /// and once more after STLS; a repeat counts towards [`MAX_BAD_COMMANDS`]).
    listed: Listed,
}

/// Which output-only listings a client has had before login.
#[derive(Debug, Default, Clone, Copy)]
struct Listed {
    capa: bool,
    lang: bool,
    mechanisms: bool,
}

/// An output-only command before login: which listing it is.
#[derive(Debug, Clone, Copy)]
enum Listing {
    Capa,
    Lang,
    Mechanisms,
}

/// Serves one connection until QUIT, a drop, the idle timeout or shutdown.
pub(crate) async fn serve<S: Stream>(
    conn: Conn<S>,
    peer: SocketAddr,
    client: SocketAddr,
    id: u64,
    listener: ListenerInfo,
    shared: Arc<Shared>,
    client_slot: Option<ClientSlot>,
) {
    debug!("connected");
    let login_deadline = Instant::now() + shared.config.login_timeout;
    let session = Session {
        peer,
        client,
        listener,
        shared,
        id,
        out: Vec::new(),
        state: State::Authorization(Auth::Idle),
        tls: conn.is_tls(),
        bad_commands: 0,
        lang: lang::default_language(),
        utf8: false,
        apop_timestamp: None,
        tally: Tally::default(),
        listed: Listed::default(),
        client_slot,
    };
    let mut driver = Driver {
        conn,
        decoder: Decoder::new(),
        session,
        login_deadline,
    };
    let started = Instant::now();
    if let Err(e) = driver.run().await {
        debug!(error = %e, "connection ended");
    }
    driver.session.abandon().await;
    // close_notify on TLS: bounded, a peer that stopped reading does not hold the slot.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, driver.conn.shutdown()).await;
    // One stable line per session (fail2ban and log analysis read it; no secrets in it).
    let tally = &driver.session.tally;
    info!(
        retrieved = tally.retrieved,
        retrieved_octets = tally.retrieved_octets,
        deleted = tally.deleted,
        auth_failures = tally.auth_failures,
        duration_ms = started.elapsed().as_millis() as u64,
        "session end"
    );
}

/// The I/O around a [`Session`].
struct Driver<S> {
    conn: Conn<S>,
    decoder: Decoder,
    session: Session,
    /// A login must be complete by then.
    login_deadline: Instant,
}

impl<S: Stream> Driver<S> {
    async fn run(&mut self) -> io::Result<()> {
        self.session.greet();
        let mut shutdown = self.session.shared.shutdown.clone();
        loop {
            // Answer every complete command already received, in order (RFC 2449 PIPELINING).
            loop {
                if *shutdown.borrow() {
                    self.session.send_err(reply::SHUTTING_DOWN);
                    return self.flush().await;
                }
                let next = if self.session.in_sasl() {
                    // RFC 5034 section 4: inside AUTH each line is a base64 response.
                    match self.decoder.next_line() {
                        Ok(Some(line)) => {
                            let line = line.to_vec();
                            self.session.sasl_line(line).await
                        }
                        Ok(None) => break,
                        Err(_) => self.session.sasl_line_too_long(),
                    }
                } else {
                    match self.decoder.next_command() {
                        Ok(Some(cmd)) => self.session.handle(cmd).await,
                        Ok(None) => break,
                        Err(e) => self.session.bad_command(&e),
                    }
                };
                let max_line = if self.session.in_sasl() {
                    SASL_MAX_LINE
                } else {
                    MAX_COMMAND_LINE
                };
                self.decoder.set_max_line(max_line);
                match next {
                    Next::Continue => {}
                    Next::Close => return self.flush().await,
                    Next::StartTls => {
                        if !self.starttls().await? {
                            return Ok(());
                        }
                    }
                    Next::Send { id, size, top } => self.send_message(id, size, top).await?,
                }
                if self.session.out.len() >= FLUSH_AT {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            if self.session.out.capacity() > OUT_KEEP {
                self.session.out = Vec::new();
            }
            let idle = self.session.shared.config.idle_timeout;
            let logging_in = matches!(self.session.state, State::Authorization(_));
            let wait = if logging_in {
                idle.min(
                    self.login_deadline
                        .saturating_duration_since(Instant::now()),
                )
            } else {
                idle
            };
            let n = tokio::select! {
                read = tokio::time::timeout(wait, self.conn.receive(&mut self.decoder)) => match read {
                    Err(_) if logging_in && Instant::now() >= self.login_deadline => {
                        info!("login timeout; closing");
                        self.session.err(Text::LoginTimeout);
                        return self.flush().await;
                    }
                    // RFC 1939 section 3: autologout closes without a reply and without UPDATE.
                    Err(_) => {
                        info!("idle timeout; closing without UPDATE");
                        return Ok(());
                    }
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(e),
                },
                _ = shutdown.changed() => continue,
            };
            debug_assert!(n > 0);
        }
    }

    /// Writes the pending replies. A peer that stops reading gets until the login deadline
    /// before login, [`WRITE_TIMEOUT`] (at most the idle timeout) after it.
    async fn flush(&mut self) -> io::Result<()> {
        if self.session.out.is_empty() {
            return Ok(());
        }
        let limit = self.write_limit();
        match tokio::time::timeout(limit, self.conn.write_all(&self.session.out)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading",
                ))
            }
        }
        self.session.out.clear();
        match tokio::time::timeout(limit, self.conn.flush()).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            )),
        }
    }

    /// How long the next write may wait for the peer to read.
    fn write_limit(&self) -> Duration {
        let idle = self.session.shared.config.idle_timeout;
        match self.session.state {
            State::Authorization(_) => idle.min(
                self.login_deadline
                    .saturating_duration_since(Instant::now()),
            ),
            State::Transaction(_) => idle.min(WRITE_TIMEOUT),
        }
    }

    /// STLS (RFC 2595 section 4) after its `+OK`: the handshake, then a fresh session:
    /// everything received after the STLS line is discarded, and nothing learned before is
    /// kept. False when the connection is lost.
    async fn starttls(&mut self) -> io::Result<bool> {
        let Some(tls) = self.session.shared.tls.clone() else {
            return Ok(false);
        };
        self.flush().await?;
        let discarded = self.decoder.clear();
        if discarded > 0 {
            warn!(
                discarded,
                "discarded octets sent after STLS before the handshake"
            );
        }
        let Conn::Plain(stream) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Ok(false);
        };
        let handshake = tls.acceptor(self.session.listener.min_tls).accept(stream);
        let timeout = self.session.shared.config.tls_handshake_timeout;
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => {
                self.conn = Conn::Tls(Box::new(stream));
                tracing::Span::current().record("tls", true);
                self.decoder = Decoder::new();
                self.session.tls_started();
                debug!("TLS active");
                Ok(true)
            }
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake after STLS failed");
                Ok(false)
            }
            Err(_) => {
                debug!("TLS handshake after STLS timed out");
                Ok(false)
            }
        }
    }

    /// Streams a message (RETR) or its headers and first `lines` body lines (TOP),
    /// dot-stuffed. Chunks are read in runs of [`READ_RUN`] (one store statement each, so a
    /// message of one chunk, most mail, takes one), each on a blocking thread while the
    /// previous run is being written, and no thread waits on the network: a client that stops
    /// reading holds no thread and at most two runs of memory.
    async fn send_message(&mut self, id: MessageId, size: u64, top: Option<Top>) -> io::Result<()> {
        let store = self.session.shared.store.clone();
        // `reply::blocking` starts the read at once: the next run is read while this one is
        // written.
        let read = |first: u32| {
            let store = store.clone();
            reply::blocking(move || store.read_chunks(id, first, READ_RUN))
        };
        let mut stuffer = DotStuffer::new();
        let mut cut = top.map(|t| TopCut::new(t.header_octets, t.lines));
        let mut sent = 0u64;
        // Octets read from the store, whether sent or cut by TOP.
        let mut read_so_far = 0u64;
        // The first chunk not yet read.
        let mut index = 0u32;
        let mut next = Some(read(index));
        'runs: while let Some(pending) = next.take() {
            let run = pending.await.map_err(|e| read_failed(id, &e))?;
            // A short run is the last: the message ends there (or a chunk is missing).
            let full = run.len() == READ_RUN as usize;
            index += run.len() as u32;
            if full {
                next = Some(read(index));
            }
            for chunk in run {
                read_so_far += chunk.len() as u64;
                let (part, done) = match &mut cut {
                    Some(cut) => cut.take(&chunk),
                    None => (&chunk[..], false),
                };
                sent += part.len() as u64;
                stuffer.push(part, &mut self.session.out);
                if self.session.out.len() >= FLUSH_AT {
                    self.flush().await?;
                }
                if done {
                    break 'runs;
                }
            }
            // The chunks end before the message does: one is missing.
            if !full && read_so_far < size {
                return Err(read_failed(id, &truncated(index, read_so_far, size)));
            }
        }
        if top.is_none() && sent != size {
            warn!(
                message = id,
                sent,
                size = size,
                "stored size differs from content"
            );
        }
        stuffer.finish(&mut self.session.out);
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

impl Session {
    /// The greeting; with APOP offered it carries the timestamp (RFC 1939 section 7: a
    /// msg-id that differs for every greeting).
    fn greet(&mut self) {
        let mut greeting = self.shared.config.greeting.clone();
        if self.shared.config.legacy_auth {
            let ts = authorization::apop_timestamp(self.id, &self.shared.config.hostname);
            greeting = format!("{greeting} {ts}");
            self.apop_timestamp = Some(ts);
        }
        write_ok(&mut self.out, &greeting);
    }

    /// One command line, in whatever state the session is.
    async fn handle(&mut self, cmd: Command) -> Next {
        debug!(command = %cmd.keyword(), "command");
        // Valid in every state. Before login they only produce output, so a repeat is
        // counted like a refused command: a client may not loop on them to hold its slot.
        let listing = match cmd {
            Command::Capa => Some(Listing::Capa),
            Command::Lang(_) => Some(Listing::Lang),
            _ => None,
        };
        if let Some(close) = listing.and_then(|l| self.count_before_login(l)) {
            return close;
        }
        match cmd {
            Command::Capa => {
                self.capa();
                return Next::Continue;
            }
            Command::Lang(tag) => {
                self.language(tag.as_deref());
                return Next::Continue;
            }
            _ => {}
        }
        match &self.state {
            State::Authorization(_) => self.authorization(cmd).await,
            State::Transaction(t) => {
                if t.lock.is_lost() {
                    self.send_err(reply::session_error(&SessionError::Store(
                        StoreError::LockLost,
                    )));
                    return Next::Close;
                }
                self.transaction(cmd).await
            }
        }
    }

    /// The TLS handshake after STLS succeeded: back to the start of AUTHORIZATION, with no
    /// pending USER, UTF8 off and the default language (RFC 2595 section 4).
    fn tls_started(&mut self) {
        self.tls = true;
        self.state = State::Authorization(Auth::Idle);
        self.utf8 = false;
        self.lang = lang::default_language();
        self.listed = Listed::default();
    }

    fn ok(&mut self, text: Text) {
        write_ok(&mut self.out, self.lang.text(text));
    }

    fn ok_with(&mut self, text: Text, args: &[&dyn std::fmt::Display]) {
        let line = self.lang.fill(text, args);
        write_ok(&mut self.out, &line);
    }

    fn send_err(&mut self, e: ErrReply) {
        write_err(&mut self.out, e.code, self.lang.text(e.text));
    }

    fn err(&mut self, text: Text) {
        self.send_err(ErrReply { code: None, text });
    }

    fn bad_command(&mut self, e: &CommandError) -> Next {
        debug!(error = %e, "bad command");
        // RFC 1939 section 7: a failed PASS, a malformed one included, ends the USER/PASS
        // exchange: the client may start again with USER.
        if e.keyword() == Some(proto::Keyword::Pass) {
            self.take_user();
        }
        self.refuse(reply::command_error(e))
    }

    /// A refused command line: counts towards [`MAX_BAD_COMMANDS`].
    fn refuse(&mut self, e: ErrReply) -> Next {
        if let Some(close) = self.count_bad() {
            return close;
        }
        self.send_err(e);
        Next::Continue
    }

    /// One more command towards [`MAX_BAD_COMMANDS`]; at the limit the session is closed
    /// (the reply is written here).
    fn count_bad(&mut self) -> Option<Next> {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            self.send_err(reply::TOO_MANY_BAD_COMMANDS);
            return Some(Next::Close);
        }
        None
    }

    /// [`Session::count_bad`] for a command that only produces output (CAPA, LANG, AUTH's
    /// mechanism list): before login, the first of each kind is free (a client asks CAPA once,
    /// and again after STLS), a repeat counts; after login nothing counts.
    fn count_before_login(&mut self, listing: Listing) -> Option<Next> {
        if matches!(self.state, State::Transaction(_)) {
            return None;
        }
        let seen = match listing {
            Listing::Capa => &mut self.listed.capa,
            Listing::Lang => &mut self.listed.lang,
            Listing::Mechanisms => &mut self.listed.mechanisms,
        };
        if !std::mem::replace(seen, true) {
            return None;
        }
        self.count_bad()
    }

    fn wrong_state(&mut self, text: Text) -> Next {
        self.refuse(ErrReply { code: None, text })
    }

    /// RFC 2595 section 2.2, RFC 8314: may cleartext credentials be sent on this connection?
    fn cleartext_ok(&self) -> bool {
        !self.kpop() && self.tls
            || !self.kpop()
                && match self.listener.cleartext {
                    Cleartext::Always => true,
                    Cleartext::Never => false,
                    Cleartext::Loopback => self.peer.ip().to_canonical().is_loopback(),
                }
    }

    /// STLS is possible: a certificate, a cleartext listener, not yet under TLS.
    /// STLS is offered on a plain listener with a certificate, before TLS, and only in
    /// AUTHORIZATION (RFC 2595 section 4): never in CAPA after login.
    fn stls_offered(&self) -> bool {
        self.shared.tls.is_some()
            && self.listener.kind == ListenerKind::Plain
            && !self.tls
            && matches!(self.state, State::Authorization(_))
    }

    /// A KPOP listener: Kerberos only.
    fn kpop(&self) -> bool {
        self.listener.kind == ListenerKind::Kpop
    }

    /// CAPA (RFC 2449 section 5): what is true for this connection in this state. What is
    /// usable before login is announced after login too.
    fn capa(&mut self) {
        let mechanisms = self.mechanisms();
        let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
        let logged_in = match &self.state {
            State::Authorization(_) => None,
            State::Transaction(t) => Some((t.login_delay, t.expire)),
        };
        let ctx = capa::Context {
            cleartext: self.cleartext_ok(),
            stls: self.stls_offered(),
            mechanisms: &names,
            logged_in,
        };
        let caps = capa::list(&self.shared.config, &ctx);
        self.ok(Text::CapaFollows);
        for cap in caps {
            write_listing_line(&mut self.out, cap.as_bytes());
        }
        write_end(&mut self.out);
    }

    /// LANG (RFC 6856 section 4): list the languages, or switch to one (`*`: the default).
    fn language(&mut self, tag: Option<&str>) {
        match tag {
            None => {
                self.ok(Text::LangFollows);
                for l in lang::languages() {
                    write_listing_line(
                        &mut self.out,
                        format!("{} {}", l.tag, l.description).as_bytes(),
                    );
                }
                write_end(&mut self.out);
            }
            Some(tag) => {
                let found = if tag == "*" {
                    Some(lang::default_language())
                } else {
                    lang::find(tag)
                };
                match found {
                    Some(l) => {
                        self.lang = l;
                        self.ok(Text::LangSet);
                    }
                    None => self.err(Text::LangUnknown),
                }
            }
        }
    }
}
