//! One POP3 session: AUTHORIZATION, TRANSACTION and UPDATE (RFC 1939 sections 3 to 6), with
//! CAPA (RFC 2449), STLS (RFC 2595), UTF8 and LANG (RFC 6856).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::{Credentials, Exchange, Mechanism, Step};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proto::response::{write_continuation, write_end, write_err, write_listing_line, write_ok};
use proto::{Command, CommandError, Decoder, DotStuffer, ResponseCode, Secret, MAX_COMMAND_LINE};
use store::{Account, Expire, LoginDelay, MessageMeta, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::capa;
use crate::conn::Conn;
use crate::lang::{self, Language, Text};
use crate::lock::HeldLock;
use crate::maildrop::Maildrop;
use crate::reply::{self, ErrReply, SessionError};
use crate::topcut::TopCut;
use crate::verify;
use crate::{Cleartext, ListenerInfo, ListenerKind, Shared};

/// Invalid command lines a session may send before it is closed (unknown commands, syntax
/// errors, over-long lines, commands in the wrong state).
pub const MAX_BAD_COMMANDS: u32 = 20;

/// Size of one socket read.
const READ_BUF: usize = 8 * 1024;
/// Replies are batched and written once this much is pending (or no command is left).
const FLUSH_AT: usize = 64 * 1024;
/// An idle session keeps at most this much reply buffer; a larger one (a RETR's) is freed
/// before waiting for the next command, so thousands of idle sessions cost little.
const OUT_KEEP: usize = 1024;
/// Longest SASL response line (RFC 5034 section 4 lets responses exceed 255 octets).
const SASL_MAX_LINE: usize = 12 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// A logged-in session's state.
struct Transaction {
    account: Account,
    maildrop: Maildrop,
    lock: HeldLock,
    login_delay: Duration,
    expire: Expire,
}

enum State {
    /// `user` is the name of an accepted USER command waiting for PASS.
    Authorization {
        user: Option<String>,
    },
    Transaction(Box<Transaction>),
}

struct Session {
    conn: Conn,
    /// The TCP peer: the client, or on a proxied listener the proxy. Cleartext policy is
    /// judged on it (the link this server can see).
    peer: SocketAddr,
    /// The real client: the PROXY header's source on a proxied listener, else `peer`. The
    /// failed-login penalty keys on it.
    client: SocketAddr,
    listener: ListenerInfo,
    shared: Arc<Shared>,
    decoder: Decoder,
    out: Vec<u8>,
    state: State,
    bad_commands: u32,
    lang: &'static Language,
    /// RFC 6856 UTF8 mode is on.
    utf8: bool,
    id: u64,
    /// A login must be complete by then.
    login_deadline: Instant,
    /// The SASL exchange in progress (AUTH), and the account it named.
    sasl: Option<Exchange>,
    sasl_account: Option<Account>,
    /// The greeting's timestamp, when APOP is offered (RFC 1939 section 7).
    apop_timestamp: Option<String>,
    /// Failed logins on this connection.
    auth_failures: u32,
    /// What the session did, for the summary line at its end.
    retrieved: u64,
    retrieved_octets: u64,
    deleted: u64,
}

/// Serves one connection until QUIT, a drop, the idle timeout or shutdown.
pub(crate) async fn serve(
    conn: Conn,
    peer: SocketAddr,
    client: SocketAddr,
    id: u64,
    listener: ListenerInfo,
    shared: Arc<Shared>,
) {
    debug!("connected");
    let shared_login_timeout = shared.config.login_timeout;
    let mut session = Session {
        conn,
        peer,
        client,
        listener,
        shared,
        decoder: Decoder::new(),
        out: Vec::new(),
        state: State::Authorization { user: None },
        bad_commands: 0,
        lang: lang::default_language(),
        utf8: false,
        id,
        login_deadline: Instant::now() + shared_login_timeout,
        sasl: None,
        sasl_account: None,
        apop_timestamp: None,
        auth_failures: 0,
        retrieved: 0,
        retrieved_octets: 0,
        deleted: 0,
    };
    let started = Instant::now();
    if let Err(e) = session.run().await {
        debug!(error = %e, "connection ended");
    }
    // Any way out but QUIT removes nothing (RFC 1939 section 6); just let the lock go.
    if let State::Transaction(t) = session.take_state() {
        t.lock.release().await;
    }
    let _ = session.conn.shutdown().await;
    // One stable line per session (fail2ban and log analysis read it; no secrets in it).
    info!(
        retrieved = session.retrieved,
        retrieved_octets = session.retrieved_octets,
        deleted = session.deleted,
        auth_failures = session.auth_failures,
        duration_ms = started.elapsed().as_millis() as u64,
        "session end"
    );
}

impl Session {
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Authorization { user: None })
    }

    async fn run(&mut self) -> io::Result<()> {
        let mut greeting = self.shared.config.greeting.clone();
        if self.shared.config.legacy_auth {
            // RFC 1939 section 7: a msg-id that differs for every greeting.
            let ts = apop_timestamp(self.id, &self.shared.config.hostname);
            greeting = format!("{greeting} {ts}");
            self.apop_timestamp = Some(ts);
        }
        write_ok(&mut self.out, &greeting);
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            // Answer every complete command already received, in order (RFC 2449 PIPELINING).
            loop {
                if *shutdown.borrow() {
                    self.send_err(reply::SHUTTING_DOWN);
                    return self.flush().await;
                }
                let flow = if self.sasl.is_some() {
                    // RFC 5034 section 4: inside AUTH each line is a base64 response.
                    match self.decoder.next_line() {
                        Ok(Some(line)) => {
                            let line = line.to_vec();
                            self.sasl_line(line).await
                        }
                        Ok(None) => break,
                        Err(_) => {
                            self.end_sasl();
                            self.bad_command(&CommandError::LineTooLong)
                        }
                    }
                } else {
                    match self.decoder.next_command() {
                        Ok(Some(cmd)) => self.handle(cmd).await?,
                        Ok(None) => break,
                        Err(e) => self.bad_command(&e),
                    }
                };
                if flow == Flow::Close {
                    return self.flush().await;
                }
                if self.out.len() >= FLUSH_AT {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            if self.out.capacity() > OUT_KEEP {
                self.out = Vec::new();
            }
            let idle = self.shared.config.idle_timeout;
            let logging_in = matches!(self.state, State::Authorization { .. });
            let wait = if logging_in {
                idle.min(
                    self.login_deadline
                        .saturating_duration_since(Instant::now()),
                )
            } else {
                idle
            };
            let n = tokio::select! {
                read = tokio::time::timeout(wait, receive(&mut self.conn, &mut self.decoder)) => match read {
                    Err(_) if logging_in && Instant::now() >= self.login_deadline => {
                        info!("login timeout; closing");
                        self.err(Text::LoginTimeout);
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

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let idle = self.shared.config.idle_timeout;
        match tokio::time::timeout(idle, self.conn.write_all(&self.out)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading",
                ))
            }
        }
        self.out.clear();
        self.conn.flush().await
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

    fn bad_command(&mut self, e: &CommandError) -> Flow {
        debug!(error = %e, "bad command");
        self.refuse(reply::command_error(e))
    }

    /// A refused command line: counts towards [`MAX_BAD_COMMANDS`].
    fn refuse(&mut self, e: ErrReply) -> Flow {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            self.send_err(reply::TOO_MANY_BAD_COMMANDS);
            return Flow::Close;
        }
        self.send_err(e);
        Flow::Continue
    }

    fn wrong_state(&mut self, text: Text) -> Flow {
        self.refuse(ErrReply { code: None, text })
    }

    /// RFC 2595 section 2.2, RFC 8314: may cleartext credentials be sent on this connection?
    fn cleartext_ok(&self) -> bool {
        !self.kpop() && self.conn.is_tls()
            || !self.kpop()
                && match self.listener.cleartext {
                    Cleartext::Always => true,
                    Cleartext::Never => false,
                    Cleartext::Loopback => self.peer.ip().to_canonical().is_loopback(),
                }
    }

    /// STLS is possible: a certificate, a cleartext listener, not yet under TLS.
    fn stls_offered(&self) -> bool {
        self.shared.tls.is_some()
            && self.listener.kind == ListenerKind::Plain
            && !self.conn.is_tls()
    }

    async fn handle(&mut self, cmd: Command) -> io::Result<Flow> {
        debug!(command = %cmd.keyword(), "command");
        // Valid in every state.
        match cmd {
            Command::Capa => {
                self.capa();
                return Ok(Flow::Continue);
            }
            Command::Lang(tag) => {
                self.language(tag.as_deref());
                return Ok(Flow::Continue);
            }
            _ => {}
        }
        match &self.state {
            State::Authorization { .. } => self.authorization(cmd).await,
            State::Transaction(t) => {
                if t.lock.is_lost() {
                    self.send_err(reply::session_error(&SessionError::Store(
                        StoreError::LockLost,
                    )));
                    return Ok(Flow::Close);
                }
                self.transaction(cmd).await
            }
        }
    }

    async fn authorization(&mut self, cmd: Command) -> io::Result<Flow> {
        let has_user = matches!(self.state, State::Authorization { user: Some(_) });
        match cmd {
            Command::User(_) | Command::Pass(_) | Command::Apop { .. } if self.kpop() => {
                self.set_pending_user(None);
                return Ok(self.refuse(reply::KERBEROS_ONLY));
            }
            Command::User(_) | Command::Pass(_) if !self.cleartext_ok() => {
                self.set_pending_user(None);
                return Ok(self.refuse(reply::CLEARTEXT_REFUSED));
            }
            Command::User(name) => {
                // RFC 1939 section 7: USER only after the greeting or a failed USER/PASS.
                if has_user {
                    return Ok(self.wrong_state(Text::UserGiven));
                }
                // RFC 6856 section 3.2: UTF-8 user names only in UTF8 mode.
                if !self.utf8 && !name.is_ascii() {
                    return Ok(self.refuse(ErrReply {
                        code: Some(ResponseCode::Utf8),
                        text: Text::NotAscii,
                    }));
                }
                self.set_pending_user(Some(name));
                self.ok(Text::SendPass);
            }
            Command::Pass(password) => match self.set_pending_user(None) {
                None => return Ok(self.wrong_state(Text::UserFirst)),
                Some(name) => return Ok(self.login(name, password).await),
            },
            Command::Quit => {
                self.ok(Text::Bye);
                return Ok(Flow::Close);
            }
            Command::Stls => return self.starttls().await,
            Command::Utf8 => {
                self.utf8 = true;
                self.ok(Text::Utf8On);
            }
            Command::Apop { name, digest } => {
                self.set_pending_user(None);
                return Ok(self.apop(name, digest).await);
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                self.set_pending_user(None);
                return Ok(self.start_auth(mechanism, initial_response).await);
            }
            Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Dele(_)
            | Command::Noop
            | Command::Rset
            | Command::Top { .. }
            | Command::Uidl(_) => return Ok(self.wrong_state(Text::BeforeLogin)),
            Command::Capa | Command::Lang(_) => {}
        }
        Ok(Flow::Continue)
    }

    /// Sets the name waiting for PASS and returns the previous one.
    fn set_pending_user(&mut self, name: Option<String>) -> Option<String> {
        match &mut self.state {
            State::Authorization { user } => std::mem::replace(user, name),
            State::Transaction(_) => None,
        }
    }

    /// STLS (RFC 2595 section 4): `+OK`, the handshake, then a fresh session: everything
    /// received after the STLS line is discarded, and nothing learned before is kept.
    async fn starttls(&mut self) -> io::Result<Flow> {
        if !self.stls_offered() {
            let text = if self.conn.is_tls() {
                Text::StlsActive
            } else {
                Text::StlsUnconfigured
            };
            return Ok(self.refuse(ErrReply { code: None, text }));
        }
        let Some(tls) = self.shared.tls.clone() else {
            return Ok(Flow::Continue);
        };
        self.ok(Text::StlsGo);
        self.flush().await?;
        let discarded = self.decoder.clear();
        if discarded > 0 {
            warn!(
                discarded,
                "discarded octets sent after STLS before the handshake"
            );
        }
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Ok(Flow::Close);
        };
        let handshake = tls.acceptor(self.listener.min_tls).accept(tcp);
        match tokio::time::timeout(self.shared.config.tls_handshake_timeout, handshake).await {
            Ok(Ok(stream)) => {
                self.conn = Conn::Tls(Box::new(stream));
                tracing::Span::current().record("tls", true);
                self.decoder = Decoder::new();
                self.state = State::Authorization { user: None };
                self.utf8 = false;
                self.lang = lang::default_language();
                self.end_sasl();
                debug!("TLS active");
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake after STLS failed");
                Ok(Flow::Close)
            }
            Err(_) => {
                debug!("TLS handshake after STLS timed out");
                Ok(Flow::Close)
            }
        }
    }

    /// PASS (and SASL PLAIN/LOGIN): check the password against the argon2id hash.
    async fn login(&mut self, name: String, password: Secret<Vec<u8>>) -> Flow {
        if let Some(ticket) = self.ticket(&password) {
            return self.ticket_login(name, ticket).await;
        }
        let fingerprint = self.shared.penalties.fingerprint(password.expose());
        let attempted = name.clone();
        let verified = verify::password(&self.shared, name, password, self.utf8).await;
        self.finish_login(verified, &attempted, Some(fingerprint))
            .await
    }

    /// A login ticket of the `auth_http` endpoint in PASS: looked for only on a proxied
    /// listener of a cluster node (nginx's link); anywhere else it is just a wrong password.
    fn ticket(&self, password: &Secret<Vec<u8>>) -> Option<String> {
        if !self.listener.proxied || self.shared.config.cluster.is_none() {
            return None;
        }
        let text = std::str::from_utf8(password.expose()).ok()?;
        text.starts_with(auth::ticket::PREFIX)
            .then(|| text.to_owned())
    }

    /// PASS with a ticket: it must be signed with the cluster's key for this user, this node
    /// and this client address, unexpired and unused. No argon2 runs: the endpoint checked
    /// the credentials.
    async fn ticket_login(&mut self, name: String, ticket: String) -> Flow {
        let checked = match (&self.shared.config.cluster, &self.shared.config.node) {
            (Some(cluster), Some(node)) => cluster
                .keys
                .verify(&ticket, &name, &node.id, self.client.ip())
                .and_then(|v| self.shared.tickets.first_use(&v)),
            _ => Err(auth::ticket::TicketError::Malformed),
        };
        if let Err(e) = checked {
            warn!(error = %e, "login ticket refused");
            return self.auth_failure(Some(&name), None).await;
        }
        let attempted = name.clone();
        let account = verify::lookup(&self.shared, name, false).await;
        debug!("logged in with a ticket of the auth_http endpoint");
        self.finish_login(account, &attempted, None).await
    }

    /// APOP (RFC 1939 section 7): the digest of the greeting's timestamp and the account's
    /// legacy secret.
    async fn apop(&mut self, name: String, digest: String) -> Flow {
        let Some(timestamp) = self.apop_timestamp.clone() else {
            self.err(Text::ApopUnavailable);
            return Flow::Continue;
        };
        let attempted = name.clone();
        let verified = verify::apop(&self.shared, name, timestamp, digest, self.utf8).await;
        self.finish_login(verified, &attempted, None).await
    }

    /// SASL mechanisms offered on this connection now.
    fn mechanisms(&self) -> Vec<Mechanism> {
        let gssapi = self.shared.config.gssapi.is_some();
        if self.kpop() {
            return if gssapi {
                vec![Mechanism::Gssapi]
            } else {
                Vec::new()
            };
        }
        let cleartext = self.cleartext_ok();
        let legacy = self.shared.config.legacy_auth;
        Mechanism::ALL
            .into_iter()
            .filter(|m| cleartext || !m.is_cleartext())
            .filter(|m| legacy || !m.needs_legacy_secret())
            .filter(|m| gssapi || *m != Mechanism::Gssapi)
            .collect()
    }

    /// A KPOP listener: Kerberos only.
    fn kpop(&self) -> bool {
        self.listener.kind == ListenerKind::Kpop
    }

    /// AUTH (RFC 5034): bare AUTH lists the mechanisms (an old Outlook habit); otherwise the
    /// exchange starts, with the initial response if given (`=` is an empty one).
    async fn start_auth(
        &mut self,
        mechanism: Option<String>,
        initial: Option<Secret<String>>,
    ) -> Flow {
        let offered = self.mechanisms();
        let Some(name) = mechanism else {
            self.ok(Text::MechanismsFollow);
            for m in &offered {
                write_listing_line(&mut self.out, m.name().as_bytes());
            }
            write_end(&mut self.out);
            return Flow::Continue;
        };
        let mech = match Mechanism::parse(&name) {
            Some(m) if offered.contains(&m) => m,
            Some(m) if m.is_cleartext() => return self.refuse(reply::CLEARTEXT_REFUSED),
            _ => {
                self.err(Text::UnknownMechanism);
                return Flow::Continue;
            }
        };
        let initial = match initial.as_ref().map(|s| s.expose().as_str()) {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(data) => match B64.decode(data) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.err(Text::BadBase64);
                    return Flow::Continue;
                }
            },
        };
        let (exchange, step) = if mech == Mechanism::Gssapi {
            let acceptor = match self.shared.config.gssapi.as_ref().map(|f| f.acceptor()) {
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    warn!(error = %e, "GSSAPI acceptor unavailable");
                    self.send_err(ErrReply {
                        code: Some(ResponseCode::SysTemp),
                        text: Text::TempFailure,
                    });
                    return Flow::Continue;
                }
                None => {
                    self.err(Text::UnknownMechanism);
                    return Flow::Continue;
                }
            };
            Exchange::start_gssapi(acceptor, initial)
        } else {
            let ctx = auth::sasl::Context::new(&self.shared.config.hostname);
            Exchange::start(mech, initial, &ctx)
        };
        debug!(mechanism = mech.name(), "AUTH");
        self.sasl = Some(exchange);
        self.decoder.set_max_line(SASL_MAX_LINE);
        self.sasl_step(step).await
    }

    fn end_sasl(&mut self) {
        self.sasl = None;
        self.sasl_account = None;
        self.decoder.set_max_line(MAX_COMMAND_LINE);
    }

    /// One client line inside AUTH: `*` cancels (RFC 5034 section 4), anything else must be
    /// base64.
    async fn sasl_line(&mut self, line: Vec<u8>) -> Flow {
        if line == b"*" {
            self.end_sasl();
            self.err(Text::AuthCancelled);
            return Flow::Continue;
        }
        let Ok(data) = B64.decode(line.trim_ascii()) else {
            self.end_sasl();
            self.err(Text::BadBase64);
            return Flow::Continue;
        };
        let step = match self.sasl.as_mut() {
            Some(exchange) => exchange.respond(&data),
            None => return Flow::Continue,
        };
        self.sasl_step(step).await
    }

    /// Carries a SASL exchange on until it needs the client again or ends.
    async fn sasl_step(&mut self, mut step: Step) -> Flow {
        loop {
            step = match step {
                Step::Challenge(c) => {
                    write_continuation(&mut self.out, &B64.encode(c));
                    return Flow::Continue;
                }
                Step::NeedCredentials { authcid } => {
                    let account = match verify::lookup(&self.shared, authcid, self.utf8).await {
                        Ok(a) => a,
                        Err(e) => return self.sasl_error(e),
                    };
                    let creds = account.as_ref().map(|a| Credentials {
                        legacy_secret: a.secrets.legacy_secret.as_deref(),
                        cram_md5_states: a.secrets.cram_md5_states.as_deref(),
                        scram: a.secrets.scram_sha256.as_deref(),
                    });
                    let next = match self.sasl.as_mut() {
                        Some(exchange) => exchange.credentials(creds),
                        None => return Flow::Continue,
                    };
                    self.sasl_account = account;
                    next
                }
                Step::CheckPassword { authcid, password } => {
                    self.end_sasl();
                    return self.login(authcid, Secret::new(password)).await;
                }
                Step::Success { authcid } => {
                    self.end_sasl();
                    let account = match self.sasl_account.take() {
                        Some(a) => Ok(Some(a)),
                        // GSSAPI names the user only at the end: look the account up now.
                        None => verify::lookup(&self.shared, authcid.clone(), self.utf8).await,
                    };
                    return self.finish_login(account, &authcid, None).await;
                }
                Step::Failure(e) => {
                    debug!(error = %e, "SASL exchange failed");
                    let attempted = self.sasl_account.take().map(|a| a.name.to_string());
                    self.end_sasl();
                    return self.auth_failure(attempted.as_deref(), None).await;
                }
            };
        }
    }

    fn sasl_error(&mut self, e: SessionError) -> Flow {
        warn!(error = %e, "AUTH could not be completed");
        self.end_sasl();
        self.send_err(reply::session_error(&e));
        Flow::Continue
    }

    /// A failed login: penalty delay (a timer, no thread held), then `-ERR [AUTH]`; after
    /// `max_auth_failures` on this connection it is closed.
    async fn auth_failure(&mut self, attempted: Option<&str>, password: Option<u64>) -> Flow {
        self.auth_failures += 1;
        info!(failures = self.auth_failures, "login failed");
        let account = attempted.map(str::to_lowercase);
        let delay = self.shared.penalties.failure(
            self.client.ip(),
            account.as_deref(),
            password,
            Instant::now(),
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.auth_failures >= self.shared.config.max_auth_failures {
            self.send_err(reply::TOO_MANY_AUTH_FAILURES);
            return Flow::Close;
        }
        self.send_err(reply::BAD_CREDENTIALS);
        Flow::Continue
    }

    /// After the credentials were checked: on success take the maildrop, on failure the
    /// penalty.
    async fn finish_login(
        &mut self,
        verified: Result<Option<Account>, SessionError>,
        attempted: &str,
        password: Option<u64>,
    ) -> Flow {
        let account = match verified {
            Ok(Some(account)) => account,
            Ok(None) => return self.auth_failure(Some(attempted), password).await,
            Err(e) => {
                warn!(error = %e, "login could not be completed");
                self.send_err(reply::session_error(&e));
                return Flow::Continue;
            }
        };
        self.shared.penalties.success(&account.name.to_string());
        // A draining node takes no new login, by any path (USER/PASS, APOP, AUTH): all end
        // here, after the credentials were checked, so a wrong password is still answered as
        // one (and penalised) and a right one learns to come back later or elsewhere.
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            info!(user = %account.name, "login refused: node draining");
            self.send_err(reply::DRAINING);
            return Flow::Continue;
        }
        match self.open_maildrop(account).await {
            Ok(Ok(t)) => {
                let (count, octets) = t.maildrop.stat();
                tracing::Span::current().record("user", tracing::field::display(&t.account.name));
                info!(messages = count, octets, "logged in");
                self.ok_with(Text::LoggedIn, &[&count, &octets]);
                self.state = State::Transaction(t);
            }
            Ok(Err(refusal)) => {
                info!(reason = ?refusal.text, "login refused");
                match refusal.wait {
                    Some(secs) => {
                        let text = self.lang.fill(Text::LoginDelay, &[&secs]);
                        write_err(&mut self.out, refusal.code, &text);
                    }
                    None => self.send_err(ErrReply {
                        code: refusal.code,
                        text: refusal.text,
                    }),
                }
            }
            Err(e) => {
                warn!(error = %e, "login could not be completed");
                self.send_err(reply::session_error(&e));
            }
        }
        Flow::Continue
    }

    /// Takes the maildrop of an authenticated account: the lock, LOGIN-DELAY, EXPIRE, the
    /// listing.
    async fn open_maildrop(
        &self,
        account: Account,
    ) -> Result<Result<Box<Transaction>, Refusal>, SessionError> {
        let config = &self.shared.config;
        let store = self.shared.store.clone();
        let lease = self.shared.locks.lease();
        let holder = store::holder_string(self.id);
        let account_id = account.id;
        let lock =
            tokio::task::spawn_blocking(move || store.lock_maildrop(account_id, &holder, lease))
                .await??;
        // From here the lock is held: every way out below releases it.
        let lock = HeldLock::new(&self.shared.locks, lock);
        let login_delay = account
            .policy
            .login_delay
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(config.login_delay);
        let expire = account.policy.expire.unwrap_or(config.expire);
        let store = self.shared.store.clone();
        let burst = config.login_delay_burst;
        let fence = lock.lock.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            // RFC 2449 section 8.1.2: a login too soon after the last one is refused.
            if !login_delay.is_zero() {
                if let LoginDelay::TooSoon { retry_after } =
                    store.check_login_delay(account_id, login_delay, burst)?
                {
                    return Ok(Err(retry_after));
                }
            }
            // RFC 2449 section 6.7: messages retrieved in earlier sessions expire.
            if let Expire::Days(days) = expire {
                let retention = Duration::from_secs(u64::from(days) * 86_400);
                let n = store.expire_messages(&fence, retention)?;
                if n > 0 {
                    info!(expired = n, days, "expired retrieved messages");
                }
            }
            Ok(Ok(store.list_messages(account_id)?))
        })
        .await;
        match prepared {
            Ok(Ok(Ok(messages))) => Ok(Ok(Box::new(Transaction {
                account,
                maildrop: Maildrop::new(messages),
                lock,
                login_delay,
                expire,
            }))),
            Ok(Ok(Err(retry_after))) => {
                lock.release().await;
                let mut refusal = Refusal::new(ErrReply {
                    code: Some(ResponseCode::LoginDelay),
                    text: Text::LoginDelay,
                });
                refusal.wait = Some(retry_after.as_secs().max(1));
                Ok(Err(refusal))
            }
            Ok(Err(e)) => {
                lock.release().await;
                Err(e.into())
            }
            Err(e) => {
                lock.release().await;
                Err(e.into())
            }
        }
    }

    /// CAPA (RFC 2449 section 5): what is true for this connection in this state. What is
    /// usable before login is announced after login too.
    fn capa(&mut self) {
        let mechanisms = self.mechanisms();
        let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
        let logged_in = match &self.state {
            State::Authorization { .. } => None,
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

    async fn transaction(&mut self, cmd: Command) -> io::Result<Flow> {
        let State::Transaction(t) = &mut self.state else {
            return Ok(Flow::Continue);
        };
        let md = &mut t.maildrop;
        match cmd {
            Command::Stat => {
                let (count, octets) = md.stat();
                write_ok(&mut self.out, &format!("{count} {octets}"));
            }
            Command::List(None) => {
                let (count, octets) = md.stat();
                let text = self.lang.fill(Text::ListFollows, &[&count, &octets]);
                write_ok(&mut self.out, &text);
                for (n, m) in md.live() {
                    write_listing_line(&mut self.out, format!("{n} {}", m.size).as_bytes());
                }
                write_end(&mut self.out);
            }
            Command::List(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.size)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Uidl(None) => {
                write_ok(&mut self.out, self.lang.text(Text::UidlFollows));
                for (n, m) in md.live() {
                    write_listing_line(&mut self.out, format!("{n} {}", m.uid).as_bytes());
                }
                write_end(&mut self.out);
            }
            Command::Uidl(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.uid)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Retr(n) => match md.get(n) {
                Ok(m) if m.utf8_headers && !self.utf8 => self.send_err(reply::UTF8_NEEDED),
                Ok(m) => {
                    let m = m.clone();
                    md.mark_retrieved(n);
                    self.retrieved += 1;
                    self.retrieved_octets += m.size;
                    self.ok_with(Text::Octets, &[&m.size]);
                    self.send_message(m, None).await?;
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Top { msg, lines } => match md.get(msg) {
                Ok(m) if m.utf8_headers && !self.utf8 => self.send_err(reply::UTF8_NEEDED),
                Ok(m) => {
                    let m = m.clone();
                    self.ok(Text::TopFollows);
                    self.send_message(m, Some(lines)).await?;
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Dele(n) => match md.delete(n) {
                Ok(()) => self.ok_with(Text::Deleted, &[&n]),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Rset => {
                md.reset();
                let (count, octets) = md.stat();
                self.ok_with(Text::LoggedIn, &[&count, &octets]);
            }
            Command::Noop => write_ok(&mut self.out, ""),
            Command::Quit => {
                self.update().await;
                return Ok(Flow::Close);
            }
            Command::Utf8 => return Ok(self.wrong_state(Text::Utf8Refused)),
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::Auth { .. }
            | Command::Stls => return Ok(self.wrong_state(Text::AfterLogin)),
            Command::Capa | Command::Lang(_) => {}
        }
        Ok(Flow::Continue)
    }

    /// The UPDATE state (RFC 1939 section 6): remove the marked messages and record the
    /// retrieved ones in one transaction, release the lock, say goodbye. With EXPIRE 0
    /// (RFC 2449 section 6.7) what was retrieved is removed too.
    async fn update(&mut self) {
        let State::Transaction(t) = self.take_state() else {
            return;
        };
        let mut deleted = t.maildrop.marked();
        let retrieved = t.maildrop.retrieved();
        if t.expire == Expire::Days(0) {
            deleted.extend(&retrieved);
        }
        let result = if deleted.is_empty() && retrieved.is_empty() {
            Ok(())
        } else {
            let store = self.shared.store.clone();
            let lock = t.lock.lock.clone();
            let (d, r) = (deleted.clone(), retrieved);
            reply::blocking(move || store.commit_update(&lock, &d, &r)).await
        };
        t.lock.release().await;
        match result {
            Ok(()) => {
                let n = deleted.len();
                self.deleted = n as u64;
                let left = t.maildrop.len() - n;
                info!(deleted = n, left, "update done");
                self.ok_with(Text::SigningOff, &[&n, &left]);
            }
            Err(e) => {
                warn!(error = %e, "update failed; nothing was deleted");
                let r = reply::session_error(&e);
                let text = self
                    .lang
                    .fill(Text::UpdateFailed, &[&self.lang.text(r.text)]);
                write_err(&mut self.out, r.code, &text);
            }
        }
    }

    /// Streams a message (RETR) or its headers and first `lines` body lines (TOP),
    /// dot-stuffed. Each chunk is read on a blocking thread while the previous one is being
    /// written, and no thread waits on the network: a client that stops reading holds no
    /// thread and at most two chunks of memory.
    async fn send_message(&mut self, meta: MessageMeta, lines: Option<u32>) -> io::Result<()> {
        let id = meta.id;
        let store = self.shared.store.clone();
        let read = |index: u32| {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.read_chunk(id, index))
        };
        let mut stuffer = DotStuffer::new();
        let mut cut = lines.map(|n| TopCut::new(meta.header_octets, n));
        let mut sent = 0u64;
        let mut index = 0u32;
        let mut next = Some(read(index));
        while let Some(pending) = next.take() {
            let chunk = match pending.await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(self.read_failed(id, &e)),
                Err(e) => return Err(self.read_failed(id, &e)),
            };
            let (part, done) = match &mut cut {
                Some(cut) => cut.take(&chunk),
                None => (&chunk[..], false),
            };
            if !done {
                index += 1;
                next = Some(read(index));
            }
            sent += part.len() as u64;
            stuffer.push(part, &mut self.out);
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
        if lines.is_none() && sent != meta.size {
            warn!(
                message = id,
                sent,
                size = meta.size,
                "stored size differs from content"
            );
        }
        stuffer.finish(&mut self.out);
        Ok(())
    }

    /// The +OK is out when a read fails: the only honest thing left is to drop the connection,
    /// so the client does not take a truncated message for a whole one.
    fn read_failed(&self, message: i64, e: &dyn std::fmt::Display) -> io::Error {
        warn!(error = %e, message, "reading a message failed mid-transfer");
        io::Error::other("message read failed")
    }
}

/// Reads what the client sent next into `decoder`; 0 at end of stream. A cleartext connection
/// waits for readiness first and reads into a buffer on the stack, so a session waiting for
/// its next command holds no read buffer at all (TLS streams keep their own buffers anyway).
async fn receive(conn: &mut Conn, decoder: &mut Decoder) -> io::Result<usize> {
    if let Conn::Plain(tcp) = conn {
        loop {
            tcp.readable().await?;
            if let Some(n) = read_ready(tcp, decoder)? {
                return Ok(n);
            }
        }
    }
    let mut buf = vec![0u8; READ_BUF];
    let n = conn.read(&mut buf).await?;
    decoder.feed(&buf[..n]);
    Ok(n)
}

/// One non-blocking read of a ready socket; `None` if the readiness was spurious.
fn read_ready(tcp: &tokio::net::TcpStream, decoder: &mut Decoder) -> io::Result<Option<usize>> {
    let mut buf = [0u8; READ_BUF];
    match tcp.try_read(&mut buf) {
        Ok(n) => {
            decoder.feed(&buf[..n]);
            Ok(Some(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a login was refused, with the seconds to wait for LOGIN-DELAY.
#[derive(Debug)]
struct Refusal {
    code: Option<ResponseCode>,
    text: Text,
    wait: Option<u64>,
}

impl Refusal {
    fn new(e: ErrReply) -> Refusal {
        Refusal {
            code: e.code,
            text: e.text,
            wait: None,
        }
    }
}

/// A msg-id style timestamp for the APOP greeting, unique per connection.
fn apop_timestamp(session: u64, hostname: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("<{}.{session}.{nanos}@{hostname}>", std::process::id())
}
