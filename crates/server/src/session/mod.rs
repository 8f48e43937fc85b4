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
mod readahead;
mod send;
#[cfg(test)]
mod tests;
mod transaction;
mod update;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::response::{write_end, write_err, write_listing_line, write_ok};
use proto::{Command, CommandError, Decoder, MAX_COMMAND_LINE};
use store::StoreError;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::capa;
use crate::conn::{Conn, Stream};
use crate::lang::{self, Language, Text};
use crate::limits::ClientSlot;
use crate::reply::{self, ErrReply, SessionError};
use crate::{Cleartext, ListenerInfo, ListenerKind, Shared};

use authorization::{Auth, SASL_MAX_LINE};
use send::{Outgoing, Top};
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
/// Longest a session keeps messages read ahead ([`readahead`]) while it waits for its next
/// command: a client fetching in a loop asks for the next message within a round trip; one
/// that pauses longer reads it again, and meanwhile costs no more than an idle session.
const AHEAD_KEEP: Duration = Duration::from_secs(1);

/// What the driver must do after the session took a command.
#[derive(Debug)]
enum Next {
    /// Go on with the next command.
    Continue,
    /// Write what is pending and close.
    Close(EndReason),
    /// STLS was accepted: write the `+OK`, drop what was received after it, run the TLS
    /// handshake, then [`Session::tls_started`] (RFC 2595 section 4).
    StartTls,
    /// The `+OK` is written: stream this message.
    Send(Outgoing),
}

/// The session's state (RFC 1939 section 3). UPDATE is not a state a session rests in: QUIT
/// in TRANSACTION runs it and the session ends.
enum State {
    Authorization(Auth),
    Transaction(Box<Transaction>),
}

/// Why a session ended: the `reason` of its summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The client said QUIT (in any state).
    Quit,
    /// RFC 1939 section 3's autologout: no command for `idle_timeout`.
    IdleTimeout,
    /// No login within `login_timeout`.
    LoginTimeout,
    /// The client closed the connection (or reset it) without QUIT.
    ClientVanished,
    /// The server is shutting down.
    Shutdown,
    /// [`MAX_BAD_COMMANDS`] refused command lines.
    TooManyErrors,
    /// `max_auth_failures` failed logins.
    TooManyAuthFailures,
    /// The maildrop lock was lost (another node took it after its lease ran out).
    LockLost,
    /// Messages of the session's snapshot were gone when its listing was loaded (removed
    /// behind the maildrop lock's back).
    SnapshotLost,
    /// The TLS handshake after STLS failed or timed out.
    TlsFailed,
    /// The client stopped reading: a write waited out its deadline.
    WriteTimeout,
    /// Any other I/O error, a message that could not be read from the store included.
    IoError,
}

impl EndReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::Quit => "quit",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::LoginTimeout => "login_timeout",
            EndReason::ClientVanished => "client_vanished",
            EndReason::Shutdown => "shutdown",
            EndReason::TooManyErrors => "too_many_errors",
            EndReason::TooManyAuthFailures => "too_many_auth_failures",
            EndReason::LockLost => "lock_lost",
            EndReason::SnapshotLost => "snapshot_lost",
            EndReason::TlsFailed => "tls_failed",
            EndReason::WriteTimeout => "write_timeout",
            EndReason::IoError => "io_error",
        }
    }

    /// The reason an I/O error ends a session with.
    fn of(e: &io::Error) -> EndReason {
        match e.kind() {
            io::ErrorKind::TimedOut => EndReason::WriteTimeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => EndReason::ClientVanished,
            _ => EndReason::IoError,
        }
    }
}

/// What became of UPDATE, for the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Update {
    /// No QUIT in TRANSACTION.
    #[default]
    None,
    Committed,
    /// The store refused or failed: nothing was deleted.
    Failed,
}

impl Update {
    fn as_str(self) -> &'static str {
        match self {
            Update::None => "none",
            Update::Committed => "committed",
            Update::Failed => "failed",
        }
    }
}

/// What the session did, for the summary line at its end.
#[derive(Debug, Default)]
struct Tally {
    /// The account logged in, if one did.
    user: Option<String>,
    /// How it logged in: `USER`, `APOP`, `TICKET` or a SASL mechanism.
    mechanism: Option<&'static str>,
    /// Command lines received (SASL responses are not commands).
    commands: u64,
    retrieved: u64,
    retrieved_octets: u64,
    /// TOP commands answered.
    top: u64,
    deleted: u64,
    update: Update,
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
    /// The TLS connection's channel binding, for SCRAM-SHA-256-PLUS.
    channel_binding: Option<auth::ChannelBinding>,
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
    /// The mechanism of the login attempt in hand (`USER`, `APOP`, `TICKET` or a SASL
    /// mechanism's name), for the login metrics and the record of the last login.
    mechanism: &'static str,
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

/// Serves one connection until QUIT, a drop, the idle timeout or shutdown; says which.
pub(crate) async fn serve<S: Stream>(
    conn: Conn<S>,
    peer: SocketAddr,
    client: SocketAddr,
    id: u64,
    listener: ListenerInfo,
    shared: Arc<Shared>,
    client_slot: Option<ClientSlot>,
) -> EndReason {
    debug!("connected");
    let _active = shared.metrics.session();
    let login_deadline = Instant::now() + shared.config.login_timeout;
    let channel_binding = channel_binding(&conn, &shared);
    let session = Session {
        peer,
        client,
        listener,
        shared,
        id,
        out: Vec::new(),
        state: State::Authorization(Auth::Idle),
        tls: conn.is_tls(),
        channel_binding,
        bad_commands: 0,
        lang: lang::default_language(),
        utf8: false,
        apop_timestamp: None,
        tally: Tally::default(),
        listed: Listed::default(),
        client_slot,
        mechanism: "USER",
    };
    let mut driver = Driver {
        conn,
        decoder: command_decoder(),
        session,
        login_deadline,
    };
    let started = Instant::now();
    let reason = match driver.run().await {
        Ok(reason) => reason,
        Err(e) => {
            debug!(error = %e, "connection ended");
            EndReason::of(&e)
        }
    };
    driver.session.abandon().await;
    // close_notify on TLS: bounded, a peer that stopped reading does not hold the slot.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, driver.conn.shutdown()).await;
    summary(&driver.session, reason, started.elapsed());
    reason
}

/// The one summary line of a session, as Dovecot writes one at logout, in the session's
/// span (which names it by `id`): each item a field of its own, so `--log-format json` gives
/// a log shipper fields to index, not a sentence to parse. No secrets in it; the account
/// name is quoted (`?`-style) like every name a client could influence.
fn summary(session: &Session, reason: EndReason, duration: Duration) {
    let tally = &session.tally;
    info!(
        user = tally.user.as_deref().unwrap_or_default(),
        peer = %session.client,
        mechanism = %tally.mechanism.unwrap_or_default(),
        tls = session.tls,
        duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        commands = tally.commands,
        retrieved = tally.retrieved,
        retrieved_octets = tally.retrieved_octets,
        top = tally.top,
        deleted = tally.deleted,
        update = %tally.update.as_str(),
        auth_failures = tally.auth_failures,
        reason = %reason.as_str(),
        "session end"
    );
}

/// The decoder of command lines: 255 octets (RFC 2449 section 4), except an AUTH line, which
/// may carry an initial response as long as a SASL response line (mpop sends OAuth 2.0 bearer
/// tokens inline, and no JWT fits in 255 octets).
fn command_decoder() -> Decoder {
    let mut decoder = Decoder::new();
    decoder.set_auth_max_line(SASL_MAX_LINE);
    decoder
}

/// The connection's channel binding where SCRAM-SHA-256-PLUS is offered (`scram_plus`).
fn channel_binding<S: Stream>(conn: &Conn<S>, shared: &Shared) -> Option<auth::ChannelBinding> {
    if !shared.config.scram_plus {
        return None;
    }
    conn.channel_binding(shared.tls.as_deref())
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
    /// The session until it ends, and why it did (an I/O error is a reason too).
    async fn run(&mut self) -> io::Result<EndReason> {
        self.session.greet();
        let mut shutdown = self.session.shared.shutdown.clone();
        'session: loop {
            // Answer every complete command already received, in order (RFC 2449 PIPELINING).
            loop {
                if *shutdown.borrow() {
                    self.session.send_err(reply::SHUTTING_DOWN);
                    self.flush().await?;
                    return Ok(EndReason::Shutdown);
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
                        Ok(Some(cmd)) => {
                            self.session.counted(Some(cmd.keyword()));
                            self.session.handle(cmd).await
                        }
                        Ok(None) => break,
                        Err(e) => {
                            self.session.counted(e.keyword());
                            self.session.bad_command(&e)
                        }
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
                    Next::Close(reason) => {
                        self.flush().await?;
                        return Ok(reason);
                    }
                    Next::StartTls => {
                        if !self.starttls().await? {
                            return Ok(EndReason::TlsFailed);
                        }
                    }
                    Next::Send(message) => self.send_message(message).await?,
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
            let waiting = Instant::now();
            // Messages read ahead wait for the next RETR only AHEAD_KEEP; then they are
            // dropped and the wait goes on, so an idle session holds none.
            let n = loop {
                let holding = self.session.holds_read_ahead();
                let left = wait.saturating_sub(waiting.elapsed());
                let receive = tokio::time::timeout(left, self.conn.receive(&mut self.decoder));
                tokio::select! {
                    read = receive => match read {
                        Err(_) if logging_in && Instant::now() >= self.login_deadline => {
                            info!("login timeout; closing");
                            self.session.err(Text::LoginTimeout);
                            self.flush().await?;
                            return Ok(EndReason::LoginTimeout);
                        }
                        // RFC 1939 section 3: autologout closes without a reply and without UPDATE.
                        Err(_) => {
                            info!("idle timeout; closing without UPDATE");
                            return Ok(EndReason::IdleTimeout);
                        }
                        Ok(Ok(0)) => return Ok(EndReason::ClientVanished),
                        Ok(Ok(n)) => break n,
                        Ok(Err(e)) => return Err(e),
                    },
                    () = tokio::time::sleep(AHEAD_KEEP), if holding => {
                        self.session.drop_read_ahead();
                    }
                    _ = shutdown.changed() => continue 'session,
                }
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
        self.session.shared.metrics.sent(self.session.out.len());
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
                self.decoder = command_decoder();
                let binding = channel_binding(&self.conn, &self.session.shared);
                self.session.tls_started(binding);
                debug!("TLS active");
                Ok(true)
            }
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake after STLS failed");
                self.tls_failed();
                Ok(false)
            }
            Err(_) => {
                debug!("TLS handshake after STLS timed out");
                self.tls_failed();
                Ok(false)
            }
        }
    }

    fn tls_failed(&self) {
        let listener = self.session.listener.kind.name(true);
        self.session.shared.metrics.tls_failure(listener);
    }
}

impl Session {
    /// Whether the session holds messages read ahead.
    fn holds_read_ahead(&self) -> bool {
        matches!(&self.state, State::Transaction(t) if t.ahead.holds())
    }

    fn drop_read_ahead(&mut self) {
        if let State::Transaction(t) = &mut self.state {
            t.ahead.clear();
        }
    }

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

    /// Counts a command line (by its keyword, `None`: none of POP3's) for the summary and
    /// the metrics.
    fn counted(&mut self, keyword: Option<proto::Keyword>) {
        self.tally.commands += 1;
        self.shared.metrics.command(keyword);
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
                    return Next::Close(EndReason::LockLost);
                }
                self.transaction(cmd).await
            }
        }
    }

    /// The TLS handshake after STLS succeeded: back to the start of AUTHORIZATION, with no
    /// pending USER, UTF8 off and the default language (RFC 2595 section 4).
    fn tls_started(&mut self, channel_binding: Option<auth::ChannelBinding>) {
        self.tls = true;
        self.channel_binding = channel_binding;
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
            return Some(Next::Close(EndReason::TooManyErrors));
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
