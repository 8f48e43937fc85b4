//! The AUTHORIZATION state (RFC 1939 section 4): USER and PASS, APOP (RFC 1939 section 7),
//! AUTH (RFC 5034) with its SASL exchange, STLS (RFC 2595), UTF8 (RFC 6856), and what a
//! login ends in: the maildrop taken (lock, LOGIN-DELAY, EXPIRE, listing) or the failed-login
//! penalty.

use std::time::Duration;

use auth::{Credentials, Exchange, Mechanism, Step, TokenError, TokenVerdict};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proto::response::{write_continuation, write_end, write_err, write_listing_line};
use proto::{Command, CommandError, ResponseCode, Secret};
use store::{Account, Expire, LoginDelay, MaildropStat};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::readahead::ReadAhead;
use super::{EndReason, Next, Session, State, Transaction};
use crate::lang::Text;
use crate::lock::HeldLock;
use crate::maildrop::Maildrop;
use crate::metrics::LoginResult;
use crate::reply::{self, ErrReply, SessionError};
use crate::verify;

/// Longest SASL response line (RFC 5034 section 4 lets responses exceed 255 octets).
pub(super) const SASL_MAX_LINE: usize = 12 * 1024;

/// Where a session stands in AUTHORIZATION.
pub(super) enum Auth {
    /// After the greeting, a failed login, or STLS.
    Idle,
    /// USER was accepted; PASS must follow (RFC 1939 section 7).
    UserGiven(String),
    /// An AUTH exchange waits for the client's next line (RFC 5034 section 4).
    Sasl(Box<Sasl>),
}

/// A SASL exchange between two client lines.
pub(super) struct Sasl {
    exchange: Exchange,
    /// The account the exchange named, once looked up.
    account: Option<Account>,
    /// The name a refused bearer token claimed, for the failed-login penalty.
    claimed: Option<String>,
    /// A bearer token was refused: the exchange can only fail now, and a cancel (`*`) is
    /// that failure too, so a client cannot test tokens without the penalty.
    token_refused: bool,
}

/// How long a bearer token's validation may take (a JWKS or introspection fetch) before the
/// login fails as a temporary error.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `-ERR [SYS/TEMP]`: the exchange could not be judged (no keytab, no identity provider).
const SASL_UNAVAILABLE: ErrReply = ErrReply {
    code: Some(ResponseCode::SysTemp),
    text: Text::TempFailure,
};

/// How taking the maildrop after a good login ended.
enum Opened {
    /// The lock is held and the listing read: TRANSACTION starts.
    Ready(Box<Transaction>),
    /// RFC 2449 section 8.1.2: too soon after the last login; the client may retry after
    /// this many seconds.
    TooSoon { retry_after: u64 },
    /// The store failed (the maildrop in use, a busy database, ...).
    Failed(SessionError),
}

/// What the store says about a maildrop once it is locked.
enum Prepared {
    TooSoon(Duration),
    Snapshot(MaildropStat),
}

impl Session {
    /// Inside AUTH, the next line is a SASL response, not a command.
    pub(super) fn in_sasl(&self) -> bool {
        matches!(self.state, State::Authorization(Auth::Sasl(_)))
    }

    pub(super) async fn authorization(&mut self, cmd: Command) -> Next {
        let user_given = matches!(self.state, State::Authorization(Auth::UserGiven(_)));
        match cmd {
            Command::User(_) | Command::Pass(_) | Command::Apop { .. } if self.kpop() => {
                self.take_user();
                self.refuse(reply::KERBEROS_ONLY)
            }
            Command::User(_) | Command::Pass(_) if !self.cleartext_ok() => {
                self.take_user();
                self.refuse(reply::CLEARTEXT_REFUSED)
            }
            Command::User(name) => {
                // RFC 1939 section 7: USER only after the greeting or a failed USER/PASS.
                if user_given {
                    return self.wrong_state(Text::UserGiven);
                }
                // RFC 6856 section 3.2: UTF-8 user names only in UTF8 mode.
                if !self.utf8 && !name.is_ascii() {
                    return self.refuse(ErrReply {
                        code: Some(ResponseCode::Utf8),
                        text: Text::NotAscii,
                    });
                }
                self.state = State::Authorization(Auth::UserGiven(name));
                self.ok(Text::SendPass);
                Next::Continue
            }
            Command::Pass(password) => match self.take_user() {
                None => self.wrong_state(Text::UserFirst),
                Some(name) => {
                    self.mechanism = "USER";
                    self.login(name, password).await
                }
            },
            Command::Quit => {
                self.ok(Text::Bye);
                Next::Close(EndReason::Quit)
            }
            Command::Stls => self.stls(),
            Command::Utf8 => {
                self.utf8 = true;
                self.ok(Text::Utf8On);
                Next::Continue
            }
            Command::Apop { name, digest } => {
                self.take_user();
                self.mechanism = "APOP";
                self.apop(name, digest).await
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                self.take_user();
                self.start_auth(mechanism, initial_response).await
            }
            Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Dele(_)
            | Command::Noop
            | Command::Rset
            | Command::Top { .. }
            | Command::Uidl(_) => self.wrong_state(Text::BeforeLogin),
            Command::Capa | Command::Lang(_) => Next::Continue,
        }
    }

    /// Puts AUTHORIZATION back to [`Auth::Idle`] and returns where it stood.
    fn reset_auth(&mut self) -> Auth {
        match &mut self.state {
            State::Authorization(auth) => std::mem::replace(auth, Auth::Idle),
            State::Transaction(_) => Auth::Idle,
        }
    }

    /// Forgets the name waiting for PASS and returns it (called on commands, so never
    /// inside a SASL exchange).
    pub(super) fn take_user(&mut self) -> Option<String> {
        match self.reset_auth() {
            Auth::UserGiven(name) => Some(name),
            _ => None,
        }
    }

    /// Takes the SASL exchange out of the state (called on SASL lines, so only inside one).
    fn take_sasl(&mut self) -> Option<Box<Sasl>> {
        match self.reset_auth() {
            Auth::Sasl(sasl) => Some(sasl),
            _ => None,
        }
    }

    /// STLS (RFC 2595 section 4): `+OK` and the handshake when offered, `-ERR` otherwise.
    fn stls(&mut self) -> Next {
        if !self.stls_offered() {
            let text = if self.tls {
                Text::StlsActive
            } else {
                Text::StlsUnconfigured
            };
            return self.refuse(ErrReply { code: None, text });
        }
        self.ok(Text::StlsGo);
        Next::StartTls
    }

    /// PASS (and SASL PLAIN/LOGIN): check the password against the argon2id hash.
    async fn login(&mut self, name: String, password: Secret<Vec<u8>>) -> Next {
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
    async fn ticket_login(&mut self, name: String, ticket: String) -> Next {
        self.mechanism = "TICKET";
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
    async fn apop(&mut self, name: String, digest: String) -> Next {
        let Some(timestamp) = self.apop_timestamp.clone() else {
            self.err(Text::ApopUnavailable);
            return Next::Continue;
        };
        let attempted = name.clone();
        let verified = verify::apop(&self.shared, name, timestamp, digest, self.utf8).await;
        self.finish_login(verified, &attempted, None).await
    }

    /// SASL mechanisms offered on this connection now.
    pub(super) fn mechanisms(&self) -> Vec<Mechanism> {
        self.mechanisms_if(self.cleartext_ok())
    }

    /// SASL mechanisms offered on this connection if the cleartext policy said `cleartext`.
    fn mechanisms_if(&self, cleartext: bool) -> Vec<Mechanism> {
        let config = &self.shared.config;
        let gssapi = config.gssapi.is_some();
        if self.kpop() {
            return if gssapi {
                vec![Mechanism::Gssapi]
            } else {
                Vec::new()
            };
        }
        Mechanism::ALL
            .into_iter()
            // SCRAM and bearer tokens too: before TLS SCRAM's salt and proof let a listener
            // guess offline, and a token is a credential as it is.
            .filter(|m| cleartext || !m.needs_cleartext_policy())
            .filter(|m| config.legacy_auth || !m.needs_legacy_secret())
            .filter(|m| gssapi || *m != Mechanism::Gssapi)
            .filter(|m| config.oauth2.is_some() || !m.needs_bearer_validator())
            // -PLUS only where TLS gives a channel binding.
            .filter(|m| self.channel_binding.is_some() || !m.needs_channel_binding())
            .collect()
    }

    /// AUTH (RFC 5034): bare AUTH lists the mechanisms (an old Outlook habit); otherwise the
    /// exchange starts, with the initial response if given (`=` is an empty one).
    async fn start_auth(
        &mut self,
        mechanism: Option<String>,
        initial: Option<Secret<String>>,
    ) -> Next {
        let offered = self.mechanisms();
        let Some(name) = mechanism else {
            if let Some(close) = self.count_before_login(super::Listing::Mechanisms) {
                return close;
            }
            self.ok(Text::MechanismsFollow);
            for m in &offered {
                write_listing_line(&mut self.out, m.name().as_bytes());
            }
            write_end(&mut self.out);
            return Next::Continue;
        };
        let mech = match Mechanism::parse(&name) {
            Some(m) if offered.contains(&m) => m,
            Some(m) if self.mechanisms_if(true).contains(&m) => {
                return self.refuse(reply::CLEARTEXT_REFUSED)
            }
            _ => {
                return self.refuse(ErrReply {
                    code: None,
                    text: Text::UnknownMechanism,
                })
            }
        };
        let initial = match initial.as_ref().map(|s| s.expose().as_str()) {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(data) => match B64.decode(data) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.err(Text::BadBase64);
                    return Next::Continue;
                }
            },
        };
        let (exchange, step) = if mech == Mechanism::Gssapi {
            let acceptor = match self.shared.config.gssapi.as_ref().map(|f| f.acceptor()) {
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    warn!(error = %e, "GSSAPI acceptor unavailable");
                    self.send_err(SASL_UNAVAILABLE);
                    return Next::Continue;
                }
                None => {
                    self.err(Text::UnknownMechanism);
                    return Next::Continue;
                }
            };
            Exchange::start_gssapi(acceptor, initial, &self.shared.config.gssapi_realms)
        } else {
            let config = &self.shared.config;
            let mut ctx = auth::sasl::Context::new(&config.hostname, config.scram_iterations);
            ctx.channel_binding = self.channel_binding.clone();
            Exchange::start(mech, initial, &ctx)
        };
        debug!(mechanism = mech.name(), "AUTH");
        self.mechanism = mech.name();
        let sasl = Box::new(Sasl {
            exchange,
            account: None,
            claimed: None,
            token_refused: false,
        });
        self.sasl_step(sasl, step).await
    }

    /// One client line inside AUTH: `*` cancels (RFC 5034 section 4), anything else must be
    /// base64.
    pub(super) async fn sasl_line(&mut self, line: Vec<u8>) -> Next {
        // The line and what it decodes to may be a password: both are overwritten once used.
        let line = Zeroizing::new(line);
        let Some(mut sasl) = self.take_sasl() else {
            return Next::Continue;
        };
        if *line == b"*" {
            if sasl.token_refused {
                return self.auth_failure(sasl.claimed.as_deref(), None).await;
            }
            self.err(Text::AuthCancelled);
            return Next::Continue;
        }
        let Ok(data) = B64.decode(line.trim_ascii()).map(Zeroizing::new) else {
            self.err(Text::BadBase64);
            return Next::Continue;
        };
        let step = sasl.exchange.respond(&data);
        self.sasl_step(sasl, step).await
    }

    /// A SASL line over [`SASL_MAX_LINE`]: the exchange ends, and the line counts as a bad
    /// command.
    pub(super) fn sasl_line_too_long(&mut self) -> Next {
        self.take_sasl();
        self.bad_command(&CommandError::LineTooLong)
    }

    /// Carries a SASL exchange on until it needs the client again (then it waits in the
    /// state) or ends.
    async fn sasl_step(&mut self, mut sasl: Box<Sasl>, mut step: Step) -> Next {
        loop {
            step = match step {
                Step::Challenge(c) => {
                    write_continuation(&mut self.out, &B64.encode(c));
                    self.state = State::Authorization(Auth::Sasl(sasl));
                    return Next::Continue;
                }
                Step::NeedCredentials { authcid } => {
                    let account = match verify::lookup(&self.shared, authcid, self.utf8).await {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "AUTH could not be completed");
                            self.count_login(LoginResult::Error);
                            self.send_err(reply::session_error(&e));
                            return Next::Continue;
                        }
                    };
                    let creds = account.as_ref().map(|a| Credentials {
                        legacy_secret: a.secrets.legacy_secret.as_deref(),
                        cram_md5_states: a.secrets.cram_md5_states.as_deref(),
                        scram: a.secrets.scram_sha256.as_deref(),
                    });
                    let next = sasl.exchange.credentials(creds);
                    sasl.account = account;
                    next
                }
                Step::CheckPassword {
                    authcid,
                    mut password,
                } => {
                    // Moved, not copied: the allocation is the one `Secret` wipes.
                    let password = Secret::new(std::mem::take(&mut *password));
                    return self.login(authcid, password).await;
                }
                Step::CheckToken { token, authzid } => {
                    let Some((verdict, account)) = self.check_token(token, authzid.clone()).await
                    else {
                        // Not judged (the identity provider is unreachable): a temporary
                        // failure, no penalty.
                        self.send_err(SASL_UNAVAILABLE);
                        return Next::Continue;
                    };
                    sasl.claimed = authzid;
                    sasl.token_refused = matches!(verdict, TokenVerdict::Refused { .. });
                    sasl.account = account;
                    sasl.exchange.token_verdict(verdict)
                }
                Step::Success { authcid } => {
                    let account = match sasl.account.take() {
                        Some(a) => Ok(Some(a)),
                        // GSSAPI names the user only at the end: look the account up now.
                        None => verify::lookup(&self.shared, authcid.clone(), self.utf8).await,
                    };
                    return self.finish_login(account, &authcid, None).await;
                }
                Step::Failure(e) => {
                    debug!(error = %e, "SASL exchange failed");
                    let attempted =
                        (sasl.account.take().map(|a| a.name.to_string())).or(sasl.claimed.take());
                    return self.auth_failure(attempted.as_deref(), None).await;
                }
            };
        }
    }

    /// Judges a bearer token (OAUTHBEARER, XOAUTH2): the validator runs on a blocking
    /// thread (it may fetch a JWKS), then the user it names must be an account, the one the
    /// client's authzid names if it gave one. `None` when the token could not be judged.
    async fn check_token(
        &self,
        token: Zeroizing<String>,
        authzid: Option<String>,
    ) -> Option<(TokenVerdict, Option<Account>)> {
        let validator = self.shared.config.oauth2.clone()?;
        let refused = TokenVerdict::Refused {
            error_json: validator.error_json(),
        };
        let judge = validator.clone();
        let judged = tokio::task::spawn_blocking(move || judge.validate(&token));
        let user = match tokio::time::timeout(TOKEN_TIMEOUT, judged).await {
            Ok(Ok(Ok(user))) => user,
            Ok(Ok(Err(TokenError::Rejected(reason)))) => {
                debug!(reason, "bearer token refused");
                return Some((refused, None));
            }
            Ok(Ok(Err(TokenError::Unavailable(reason)))) => {
                warn!(reason, "bearer token could not be validated");
                return None;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "bearer token validation failed");
                return None;
            }
            Err(_) => {
                warn!("bearer token validation timed out");
                return None;
            }
        };
        let account = match verify::lookup(&self.shared, user, self.utf8).await {
            Ok(account) => account,
            Err(e) => {
                warn!(error = %e, "AUTH could not be completed");
                return None;
            }
        };
        let domain = self.shared.config.default_domain.as_deref();
        match account {
            Some(a)
                if authzid
                    .as_deref()
                    .is_none_or(|z| verify::penalty_key(z, domain) == a.name.to_string()) =>
            {
                let user = a.name.to_string();
                Some((TokenVerdict::Accepted { user }, Some(a)))
            }
            _ => {
                debug!("bearer token names no account, or another than the authzid");
                Some((refused, None))
            }
        }
    }

    /// A failed login: penalty delay (a timer, no thread held), then `-ERR [AUTH]`; after
    /// `max_auth_failures` on this connection it is closed.
    async fn auth_failure(&mut self, attempted: Option<&str>, password: Option<u64>) -> Next {
        self.tally.auth_failures += 1;
        self.count_login(LoginResult::Failure);
        // The attempted name (never the password) for operators and fail2ban, quoted by `?`
        // so a name cannot pose as another field or line.
        info!(
            failures = self.tally.auth_failures,
            user = ?attempted.unwrap_or_default(),
            "login failed"
        );
        let domain = self.shared.config.default_domain.as_deref();
        let account = attempted.map(|name| verify::penalty_key(name, domain));
        let delay = self.shared.penalties.failure(
            self.client.ip(),
            account.as_deref(),
            password,
            // tokio's clock, which the delay below sleeps on (and a paused test clock moves).
            tokio::time::Instant::now().into_std(),
        );
        if !delay.is_zero() {
            self.shared.metrics.penalty();
            // The penalty ends early at shutdown: a guesser's wait holds no drain.
            let mut shutdown = self.shared.shutdown.clone();
            if !*shutdown.borrow() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        if self.tally.auth_failures >= self.shared.config.max_auth_failures {
            self.send_err(reply::TOO_MANY_AUTH_FAILURES);
            return Next::Close(EndReason::TooManyAuthFailures);
        }
        self.send_err(reply::BAD_CREDENTIALS);
        Next::Continue
    }

    /// After the credentials were checked: on success take the maildrop, on failure the
    /// penalty.
    async fn finish_login(
        &mut self,
        verified: Result<Option<Account>, SessionError>,
        attempted: &str,
        password: Option<u64>,
    ) -> Next {
        let account = match verified {
            Ok(Some(account)) => account,
            Ok(None) => return self.auth_failure(Some(attempted), password).await,
            Err(e) => {
                warn!(error = %e, "login could not be completed");
                self.count_login(LoginResult::Error);
                self.send_err(reply::session_error(&e));
                return Next::Continue;
            }
        };
        let domain = self.shared.config.default_domain.as_deref();
        let key = verify::penalty_key(&account.name.to_string(), domain);
        self.shared.penalties.success(&key);
        // A draining node takes no new login, by any path (USER/PASS, APOP, AUTH): all end
        // here, after the credentials were checked, so a wrong password is still answered as
        // one (and penalised) and a right one learns to come back later or elsewhere.
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            info!(user = %account.name, "login refused: node draining");
            self.count_login(LoginResult::Refused);
            self.send_err(reply::DRAINING);
            return Next::Continue;
        }
        match self.open_maildrop(account).await {
            Opened::Ready(t) => {
                let (count, octets) = t.maildrop.stat();
                tracing::Span::current().record("user", tracing::field::display(&t.account.name));
                info!(messages = count, octets, "logged in");
                self.count_login(LoginResult::Success);
                self.tally.user = Some(t.account.name.to_string());
                self.tally.mechanism = Some(self.mechanism);
                // Written with others every few seconds, not now (see `logins`).
                let id = t.account.id;
                self.shared
                    .logins
                    .record(id, self.client.ip(), self.mechanism);
                self.ok_with(Text::LoggedIn, &[&count, &octets]);
                self.state = State::Transaction(t);
                // Logged in: no longer counted under max_connections_per_ip.
                self.client_slot = None;
            }
            Opened::TooSoon { retry_after } => {
                info!(reason = ?Text::LoginDelay, "login refused");
                self.count_login(LoginResult::Refused);
                let text = self.lang.fill(Text::LoginDelay, &[&retry_after]);
                write_err(&mut self.out, Some(ResponseCode::LoginDelay), &text);
            }
            Opened::Failed(e) => {
                warn!(error = %e, "login could not be completed");
                if matches!(e, SessionError::Store(store::StoreError::Locked { .. })) {
                    self.shared.metrics.in_use();
                    self.count_login(LoginResult::InUse);
                } else {
                    self.count_login(LoginResult::Error);
                }
                self.send_err(reply::session_error(&e));
            }
        }
        Next::Continue
    }

    /// A login attempt ended with `result`, under the mechanism in hand.
    fn count_login(&self, result: LoginResult) {
        self.shared.metrics.login(self.mechanism, result);
    }

    /// Takes the maildrop of an authenticated account: the lock, LOGIN-DELAY, EXPIRE, the
    /// snapshot (count, octets, highest id).
    async fn open_maildrop(&self, account: Account) -> Opened {
        let config = &self.shared.config;
        let store = self.shared.store.clone();
        let lease = self.shared.locks.lease();
        let holder = store::holder_string(self.id);
        let account_id = account.id;
        let lock =
            match reply::blocking(move || store.lock_maildrop(account_id, &holder, lease)).await {
                Ok(lock) => lock,
                Err(e) => return Opened::Failed(e),
            };
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
        let prepared = reply::blocking(move || {
            // RFC 2449 section 8.1.2: a login too soon after the last one is refused.
            if !login_delay.is_zero() {
                if let LoginDelay::TooSoon { retry_after } =
                    store.check_login_delay(account_id, login_delay, burst)?
                {
                    return Ok(Prepared::TooSoon(retry_after));
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
            // The snapshot only (count, octets, highest id): the listing is loaded by the
            // first command that needs it.
            Ok(Prepared::Snapshot(store.maildrop_stat(account_id)?))
        })
        .await;
        match prepared {
            Ok(Prepared::Snapshot(stat)) => Opened::Ready(Box::new(Transaction {
                account,
                maildrop: Maildrop::new(stat),
                lock,
                login_delay,
                expire,
                ahead: ReadAhead::default(),
            })),
            Ok(Prepared::TooSoon(retry_after)) => {
                lock.release().await;
                Opened::TooSoon {
                    retry_after: retry_after.as_secs().max(1),
                }
            }
            Err(e) => {
                lock.release().await;
                Opened::Failed(e)
            }
        }
    }
}

/// A msg-id style timestamp for the APOP greeting, unique per connection.
pub(super) fn apop_timestamp(session: u64, hostname: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("<{}.{session}.{nanos}@{hostname}>", std::process::id())
}
