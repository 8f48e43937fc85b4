//! SASL mechanisms (RFC 4422) as step machines: PLAIN (RFC 4616), LOGIN, SCRAM-SHA-256 and
//! SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677), OAUTHBEARER (RFC 7628) and XOAUTH2 on rsasl;
//! CRAM-MD5 (RFC 2195) and GSSAPI (RFC 4752) of our own.
//!
//! An [`Exchange`] never reads the store, runs argon2 or validates a token, and does no I/O:
//! it returns a [`Step`] that tells the caller what to send, or what it needs (an account's
//! stored secrets, an argon2 check of a password, a token's verdict), and the caller feeds the
//! answer back. rsasl's callbacks are synchronous and run inside its `step`, so the exchange
//! steps rsasl only once the answer is at hand: SCRAM's client-first is parsed here for the
//! name and stepped through rsasl after the record comes back; a bearer token is read out of
//! a first rsasl pass and stepped again with the verdict (see `provider`). Framing (base64,
//! `+ ` lines, `*`) is the caller's business.

use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use rsasl::prelude::Mechanism as RsaslMechanism;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::gss::GssAcceptor;
use crate::legacy::{verify_cram_md5, CramKey};
use crate::provider::{self, PasswordCallback, Presented, ScramCallback, Server, Stepped};
pub use crate::provider::{ChannelBinding, TokenVerdict};
use crate::provider::{TokenProbe, Validated, VerdictCallback};
use crate::scram::{self, Record};
use crate::{SaslError, Verdict};

/// The mechanisms this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    ScramSha256,
    /// SCRAM-SHA-256 bound to the TLS channel (RFC 5802 section 6); only where there is one.
    ScramSha256Plus,
    /// RFC 7628; only where a [`crate::BearerValidator`] is configured.
    OAuthBearer,
    /// Google's XOAUTH2; as OAUTHBEARER.
    XOAuth2,
    /// RFC 4752; needs a [`GssAcceptor`] ([`Exchange::start_gssapi`]).
    Gssapi,
}

impl Mechanism {
    pub const ALL: [Mechanism; 8] = [
        Mechanism::Gssapi,
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha256,
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::Gssapi => "GSSAPI",
        }
    }

    /// Case-insensitive lookup.
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The password crosses the wire as it is: only over TLS, or where the cleartext
    /// policy allows (RFC 4616 section 6, RFC 8314).
    pub fn is_cleartext(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }

    /// Offered before TLS only where the cleartext policy allows: the cleartext mechanisms;
    /// SCRAM, whose salt and proof let a passive listener guess the password offline; the
    /// bearer tokens, which are credentials as they are (RFC 7628 section 5). The -PLUS
    /// variant needs TLS anyway.
    pub fn needs_cleartext_policy(self) -> bool {
        !matches!(self, Mechanism::CramMd5 | Mechanism::Gssapi)
    }

    /// Needs the account's password-equivalent legacy secret.
    pub fn needs_legacy_secret(self) -> bool {
        matches!(self, Mechanism::CramMd5)
    }

    /// Needs a bearer-token validator.
    pub fn needs_bearer_validator(self) -> bool {
        matches!(self, Mechanism::OAuthBearer | Mechanism::XOAuth2)
    }

    /// Needs the connection's channel binding.
    pub fn needs_channel_binding(self) -> bool {
        self == Mechanism::ScramSha256Plus
    }
}

/// What the caller has of an account, for the mechanisms that need stored secrets. `None`
/// fields mean the account has no such secret.
#[derive(Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub legacy_secret: Option<&'a str>,
    /// Dovecot-style HMAC-MD5 states (64 hex digits), which serve CRAM-MD5 only.
    pub cram_md5_states: Option<&'a str>,
    pub scram: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// What CRAM-MD5 verifies with: the legacy secret if there is one, else the states.
    pub fn cram_key(&self) -> Option<CramKey<'a>> {
        self.legacy_secret
            .map(CramKey::Secret)
            .or(self.cram_md5_states.map(CramKey::States))
    }
}

/// What to do next.
pub enum Step {
    /// Send this challenge (the caller base64-encodes it) and feed the reply to
    /// [`Exchange::respond`].
    Challenge(Vec<u8>),
    /// Look the account up and call [`Exchange::credentials`] (with `None` for an unknown
    /// account: the exchange then fails the way a wrong password does).
    NeedCredentials { authcid: String },
    /// Check this password against the account's argon2 hash; the exchange is over and the
    /// outcome of that check is the outcome of the login.
    CheckPassword {
        authcid: String,
        password: Zeroizing<Vec<u8>>,
    },
    /// Validate this bearer token (off the async workers), check that the user it names is an
    /// account (and the one `authzid` names, when the client gave one), and call
    /// [`Exchange::token_verdict`].
    CheckToken {
        token: Zeroizing<String>,
        authzid: Option<String>,
    },
    /// Authenticated as `authcid`.
    Success { authcid: String },
    /// The exchange failed.
    Failure(SaslError),
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Challenge(c) => write!(f, "Challenge({} octets)", c.len()),
            Step::NeedCredentials { authcid } => write!(f, "NeedCredentials({authcid:?})"),
            Step::CheckPassword { authcid, .. } => {
                write!(f, "CheckPassword({authcid:?}, <redacted>)")
            }
            Step::CheckToken { authzid, .. } => write!(f, "CheckToken(<redacted>, {authzid:?})"),
            Step::Success { authcid } => write!(f, "Success({authcid:?})"),
            Step::Failure(e) => write!(f, "Failure({e})"),
        }
    }
}

/// Per-exchange values the caller makes: the CRAM-MD5 challenge (a msg-id), SCRAM's count for
/// unknown users, and the connection's channel binding.
#[derive(Debug, Clone)]
pub struct Context {
    pub challenge: String,
    /// The PBKDF2 count an unknown user's made-up SCRAM record shows, the one real records
    /// are derived with, so the count does not tell the two apart.
    pub scram_iterations: u32,
    /// The TLS connection's channel binding, for SCRAM-SHA-256-PLUS; `None` without TLS.
    pub channel_binding: Option<ChannelBinding>,
}

impl Context {
    /// A fresh context for `hostname` with a random challenge, SCRAM records derived with
    /// `scram_iterations`, and no channel binding.
    pub fn new(hostname: &str, scram_iterations: u32) -> Context {
        let mut random = [0u8; 8];
        OsRng.fill_bytes(&mut random);
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Context {
            challenge: format!("<{random}.{now}@{hostname}>"),
            scram_iterations,
            channel_binding: None,
        }
    }
}

enum State {
    Plain(Box<Server>),
    LoginUser(Box<Server>),
    LoginPassword(Box<Server>),
    Cram {
        challenge: String,
    },
    CramNeedSecret {
        challenge: String,
        user: String,
        digest: String,
    },
    ScramFirst {
        plus: bool,
        iterations: u32,
    },
    ScramNeedRecord {
        /// The client-first message as sent, stepped through rsasl once the record is here.
        client_first: Vec<u8>,
        user: String,
        plus: bool,
        iterations: u32,
    },
    ScramFinal {
        server: Box<Server>,
        user: String,
    },
    ScramOutcome {
        user: String,
    },
    /// OAUTHBEARER or XOAUTH2 waits for the client's message.
    TokenFirst {
        mechanism: Mechanism,
    },
    /// The token went to the caller; the message is stepped again with the verdict.
    TokenNeedVerdict {
        mechanism: Mechanism,
        message: Zeroizing<Vec<u8>>,
    },
    /// The error document is sent; the client answers (RFC 7628 section 3.2.3: `%x01`) and
    /// the exchange fails.
    TokenRefused(Box<Server>),
    Gss {
        acceptor: Box<dyn GssAcceptor>,
    },
    /// The context is established and its last token sent; the client answers empty.
    GssEstablished {
        acceptor: Box<dyn GssAcceptor>,
    },
    /// The security-layer offer is sent; the client answers with its choice and authzid.
    GssLayer {
        acceptor: Box<dyn GssAcceptor>,
    },
    Done,
}

/// One SASL exchange on the server side.
pub struct Exchange {
    state: State,
    /// GSSAPI: realms accepted besides the service principal's own.
    gss_realms: Vec<String>,
    /// The connection's channel binding (SCRAM).
    channel_binding: Option<ChannelBinding>,
}

/// Longest field of PLAIN (RFC 4616 section 2: up to 255 octets each).
const MAX_FIELD: usize = 255;

fn field(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.len() > MAX_FIELD {
        return Err(SaslError::Malformed);
    }
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(SaslError::ControlInField);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::Malformed)
}

/// A password as PLAIN and LOGIN carry it: not empty, at most 255 octets, no CR or LF (and
/// no NUL, which PLAIN's split already took).
fn password_field(bytes: &[u8]) -> Result<(), SaslError> {
    if bytes.is_empty() || bytes.len() > MAX_FIELD {
        return Err(SaslError::Malformed);
    }
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(SaslError::ControlInField);
    }
    Ok(())
}

/// RFC 4616 section 2, `[authzid] NUL authcid NUL passwd`, checked before rsasl sees it:
/// fields of at most 255 octets, no CR, LF or NUL inside one (they could smuggle a line into a
/// log or a lookup).
fn check_plain(data: &[u8]) -> Result<(), SaslError> {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    field(authzid)?;
    if field(authcid)?.is_empty() {
        return Err(SaslError::Malformed);
    }
    password_field(password)
}

/// The rsasl mechanisms a SCRAM exchange offers: with a channel binding, the -PLUS variant
/// too, so that a client flagging `y` (it could bind, but thinks we cannot) is refused as the
/// downgrade it is (RFC 5802 section 6). The chosen mechanism comes first.
fn scram_registry(plus: bool, bound: bool) -> &'static [RsaslMechanism] {
    static SCRAM: [RsaslMechanism; 1] = [provider::SCRAM_SHA256];
    static BOTH: [RsaslMechanism; 2] = [provider::SCRAM_SHA256, provider::SCRAM_SHA256_PLUS];
    static PLUS: [RsaslMechanism; 1] = [provider::SCRAM_SHA256_PLUS];
    match (plus, bound) {
        (true, _) => &PLUS,
        (false, true) => &BOTH,
        (false, false) => &SCRAM,
    }
}

/// The one-mechanism registry of PLAIN, LOGIN, OAUTHBEARER or XOAUTH2.
fn only(m: Mechanism) -> Result<&'static [RsaslMechanism], SaslError> {
    static PLAIN: [RsaslMechanism; 1] = [provider::PLAIN];
    static LOGIN: [RsaslMechanism; 1] = [provider::LOGIN];
    static OAUTHBEARER: [RsaslMechanism; 1] = [provider::OAUTHBEARER];
    static XOAUTH2: [RsaslMechanism; 1] = [provider::XOAUTH2];
    match m {
        Mechanism::Plain => Ok(&PLAIN),
        Mechanism::Login => Ok(&LOGIN),
        Mechanism::OAuthBearer => Ok(&OAUTHBEARER),
        Mechanism::XOAuth2 => Ok(&XOAUTH2),
        _ => Err(SaslError::Unsupported),
    }
}

/// rsasl's server for PLAIN or LOGIN.
fn password_server(m: Mechanism) -> Result<Box<Server>, SaslError> {
    provider::start(only(m)?, PasswordCallback, None).map(Box::new)
}

impl Exchange {
    /// Starts `mechanism`, with the client's initial response if it sent one (overwritten
    /// here once used: it may hold a password or a token).
    pub fn start(
        mechanism: Mechanism,
        initial: Option<Vec<u8>>,
        ctx: &Context,
    ) -> (Exchange, Step) {
        let initial = initial.map(Zeroizing::new);
        let mut exchange = Exchange {
            state: State::Done,
            gss_realms: Vec::new(),
            channel_binding: ctx.channel_binding.clone(),
        };
        match exchange.begin(mechanism, initial, ctx) {
            Ok(step) => (exchange, step),
            Err(e) => {
                exchange.state = State::Done;
                (exchange, Step::Failure(e))
            }
        }
    }

    fn begin(
        &mut self,
        mechanism: Mechanism,
        initial: Option<Zeroizing<Vec<u8>>>,
        ctx: &Context,
    ) -> Result<Step, SaslError> {
        let first_challenge = match mechanism {
            Mechanism::Plain => {
                self.state = State::Plain(password_server(mechanism)?);
                Vec::new()
            }
            Mechanism::Login => {
                let mut server = password_server(mechanism)?;
                // rsasl's LOGIN opens with its own prompt; the one sent is the customary
                // "Username:" that clients have matched on since the draft.
                provider::step(&mut server, None)?;
                self.state = State::LoginUser(server);
                b"Username:".to_vec()
            }
            Mechanism::CramMd5 => {
                // CRAM-MD5 starts with the server's challenge; an initial response is an error.
                if initial.is_some() {
                    return Err(SaslError::Malformed);
                }
                self.state = State::Cram {
                    challenge: ctx.challenge.clone(),
                };
                ctx.challenge.as_bytes().to_vec()
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => {
                let plus = mechanism == Mechanism::ScramSha256Plus;
                if plus && self.channel_binding.is_none() {
                    return Err(SaslError::Unsupported);
                }
                self.state = State::ScramFirst {
                    plus,
                    iterations: ctx.scram_iterations,
                };
                Vec::new()
            }
            Mechanism::OAuthBearer | Mechanism::XOAuth2 => {
                self.state = State::TokenFirst { mechanism };
                Vec::new()
            }
            Mechanism::Gssapi => return Err(SaslError::Unsupported),
        };
        Ok(match initial {
            Some(data) => self.respond(&data),
            None => Step::Challenge(first_challenge),
        })
    }

    /// Starts GSSAPI (RFC 4752) with a fresh acceptor context. A client principal is accepted
    /// from the service principal's realm and from `extra_realms` only: a cross-realm trust
    /// must not make `alice@PARTNER.REALM` the local `alice`.
    pub fn start_gssapi(
        acceptor: Box<dyn GssAcceptor>,
        initial: Option<Vec<u8>>,
        extra_realms: &[String],
    ) -> (Exchange, Step) {
        let mut exchange = Exchange {
            state: State::Gss { acceptor },
            gss_realms: extra_realms.to_vec(),
            channel_binding: None,
        };
        let step = match initial {
            Some(token) => exchange.respond(&token),
            None => Step::Challenge(Vec::new()),
        };
        (exchange, step)
    }

    /// Whether the client `principal`'s realm is the service's own or a configured one.
    fn realm_accepted(&self, acceptor: &mut dyn GssAcceptor, principal: &str) -> bool {
        let Some((_, realm)) = principal.rsplit_once('@') else {
            return false;
        };
        acceptor.service_realm().is_ok_and(|own| own == realm)
            || self.gss_realms.iter().any(|r| r == realm)
    }

    /// RFC 4752 section 3.1: after the context, offer "no security layer" (bit 1) with a
    /// maximum message size of 0, integrity-protected.
    fn offer_layers(&mut self, mut acceptor: Box<dyn GssAcceptor>) -> Result<Step, SaslError> {
        let offer = acceptor
            .wrap(&[0x01, 0, 0, 0])
            .map_err(|_| SaslError::BadCredentials)?;
        self.state = State::GssLayer { acceptor };
        Ok(Step::Challenge(offer))
    }

    /// Feeds the client's (decoded) response.
    pub fn respond(&mut self, data: &[u8]) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        match self.advance(state, data) {
            Ok(step) => step,
            Err(e) => {
                self.state = State::Done;
                Step::Failure(e)
            }
        }
    }

    fn advance(&mut self, state: State, data: &[u8]) -> Result<Step, SaslError> {
        match state {
            State::Plain(mut server) => {
                check_plain(data)?;
                match provider::step(&mut server, Some(data))? {
                    Stepped::Finished {
                        validated:
                            Some(Validated::Password {
                                authzid,
                                authcid,
                                password,
                            }),
                        ..
                    } => {
                        // No proxy authorisation: an authzid must name the user itself.
                        if !authzid.is_empty() && authzid != authcid {
                            return Err(SaslError::AuthzidMismatch);
                        }
                        Ok(Step::CheckPassword { authcid, password })
                    }
                    _ => Err(SaslError::Malformed),
                }
            }
            State::LoginUser(mut server) => {
                if field(data)?.is_empty() {
                    return Err(SaslError::Malformed);
                }
                match provider::step(&mut server, Some(data))? {
                    Stepped::Running(_) => {
                        self.state = State::LoginPassword(server);
                        Ok(Step::Challenge(b"Password:".to_vec()))
                    }
                    Stepped::Finished { .. } => Err(SaslError::Malformed),
                }
            }
            State::LoginPassword(mut server) => {
                password_field(data)?;
                match provider::step(&mut server, Some(data))? {
                    Stepped::Finished {
                        validated:
                            Some(Validated::Password {
                                authcid, password, ..
                            }),
                        ..
                    } => Ok(Step::CheckPassword { authcid, password }),
                    _ => Err(SaslError::Malformed),
                }
            }
            State::Cram { challenge } => {
                // RFC 2195 section 2: "user SP digest", the digest 32 lower-case hex digits.
                let text = field(data)?;
                let (user, digest) = text.rsplit_once(' ').ok_or(SaslError::Malformed)?;
                if user.is_empty()
                    || digest.len() != 32
                    || !digest.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(SaslError::Malformed);
                }
                self.state = State::CramNeedSecret {
                    challenge,
                    user: user.to_string(),
                    digest: digest.to_string(),
                };
                Ok(Step::NeedCredentials {
                    authcid: user.to_string(),
                })
            }
            State::ScramFirst { plus, iterations } => {
                let binding = self.channel_binding.as_ref().map(|b| b.name);
                let first = scram::parse_client_first(data, plus.then_some(binding).flatten())?;
                let authcid = first.user.clone();
                self.state = State::ScramNeedRecord {
                    client_first: data.to_vec(),
                    user: first.user,
                    plus,
                    iterations,
                };
                Ok(Step::NeedCredentials { authcid })
            }
            State::ScramFinal { mut server, user } => {
                match provider::step(&mut server, Some(data))? {
                    // The proof matched a stored record: send the server signature.
                    Stepped::Finished {
                        message: Some(verifier),
                        validated: Some(Validated::Scram),
                    } => {
                        self.state = State::ScramOutcome { user };
                        Ok(Step::Challenge(verifier))
                    }
                    // A wrong proof, an unknown user, a channel binding of another connection: rsasl
                    // finishes without a validation value; the exchange fails as a wrong password.
                    _ => Err(SaslError::BadCredentials),
                }
            }
            State::ScramOutcome { user } => {
                // RFC 5034 section 4: the client answers the final challenge with an empty line.
                if !data.is_empty() {
                    return Err(SaslError::Malformed);
                }
                Ok(Step::Success { authcid: user })
            }
            State::TokenFirst { mechanism } => {
                let Presented { token, user } = probe_token(mechanism, data)?;
                self.state = State::TokenNeedVerdict {
                    mechanism,
                    message: Zeroizing::new(data.to_vec()),
                };
                Ok(Step::CheckToken {
                    token,
                    authzid: user,
                })
            }
            State::TokenRefused(mut server) => {
                // Whatever the client answers, rsasl ends the refused exchange unvalidated.
                let _ = provider::step(&mut server, Some(data));
                Err(SaslError::BadCredentials)
            }
            State::Gss { mut acceptor } => {
                let (token, established) =
                    acceptor.step(data).map_err(|_| SaslError::BadCredentials)?;
                match (established, token.is_empty()) {
                    (false, _) => {
                        self.state = State::Gss { acceptor };
                        Ok(Step::Challenge(token))
                    }
                    (true, false) => {
                        self.state = State::GssEstablished { acceptor };
                        Ok(Step::Challenge(token))
                    }
                    (true, true) => self.offer_layers(acceptor),
                }
            }
            State::GssEstablished { acceptor } => {
                if !data.is_empty() {
                    return Err(SaslError::Malformed);
                }
                self.offer_layers(acceptor)
            }
            State::GssLayer { mut acceptor } => {
                let reply = acceptor
                    .unwrap(data)
                    .map_err(|_| SaslError::BadCredentials)?;
                // The client must pick "no security layer": we offered nothing else.
                if reply.len() < 4 || reply[0] != 0x01 {
                    return Err(SaslError::Unsupported);
                }
                let principal = acceptor
                    .client_name()
                    .map_err(|_| SaslError::BadCredentials)?;
                if !self.realm_accepted(acceptor.as_mut(), &principal) {
                    return Err(SaslError::ForeignRealm);
                }
                let authzid = field(&reply[4..])?;
                let user = principal_user(&principal).to_string();
                if !authzid.is_empty() && authzid != user && authzid != principal {
                    return Err(SaslError::AuthzidMismatch);
                }
                Ok(Step::Success { authcid: user })
            }
            State::CramNeedSecret { .. }
            | State::ScramNeedRecord { .. }
            | State::TokenNeedVerdict { .. }
            | State::Done => Err(SaslError::Malformed),
        }
    }

    /// Feeds the account's stored secrets after [`Step::NeedCredentials`] (`None`: unknown
    /// account).
    pub fn credentials(&mut self, creds: Option<Credentials<'_>>) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::CramNeedSecret {
                challenge,
                user,
                digest,
            } => {
                let key = creds.and_then(|c| c.cram_key());
                match verify_cram_md5(&challenge, key, &digest) {
                    Verdict::Accepted => Step::Success { authcid: user },
                    Verdict::Rejected => Step::Failure(SaslError::BadCredentials),
                }
            }
            State::ScramNeedRecord {
                client_first,
                user,
                plus,
                iterations,
            } => {
                let stored = creds.and_then(|c| c.scram).and_then(Record::parse);
                let known = stored.is_some();
                // An unknown user (or one without SCRAM keys) gets a plausible, stable salt
                // and fails only at the proof, as a wrong password would.
                let record = stored.unwrap_or_else(|| fake_record(&user, iterations));
                let registry = scram_registry(plus, self.channel_binding.is_some());
                let callback = ScramCallback { record, known };
                let started = provider::start(registry, callback, self.channel_binding.clone());
                let server_first = started.and_then(|mut server| {
                    match provider::step(&mut server, Some(&client_first))? {
                        Stepped::Running(server_first) => Ok((server, server_first)),
                        Stepped::Finished { .. } => Err(SaslError::Malformed),
                    }
                });
                match server_first {
                    Ok((server, server_first)) => {
                        self.state = State::ScramFinal {
                            server: Box::new(server),
                            user,
                        };
                        Step::Challenge(server_first)
                    }
                    Err(e) => Step::Failure(e),
                }
            }
            _ => Step::Failure(SaslError::Malformed),
        }
    }

    /// Feeds the caller's verdict after [`Step::CheckToken`]. Accepted: the exchange succeeds.
    /// Refused: the error document goes to the client as a challenge (RFC 7628 section
    /// 3.2.2), and its answer ends the exchange in failure.
    pub fn token_verdict(&mut self, verdict: TokenVerdict) -> Step {
        let State::TokenNeedVerdict { mechanism, message } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return Step::Failure(SaslError::Malformed);
        };
        let stepped = only(mechanism)
            .and_then(|registry| provider::start(registry, VerdictCallback(verdict), None))
            .map(Box::new)
            .and_then(|mut server| {
                let stepped = provider::step(&mut server, Some(&message))?;
                Ok((server, stepped))
            });
        match stepped {
            Ok((
                _,
                Stepped::Finished {
                    validated: Some(Validated::Bearer { user }),
                    ..
                },
            )) => Step::Success { authcid: user },
            Ok((server, Stepped::Running(error))) => {
                self.state = State::TokenRefused(server);
                Step::Challenge(error)
            }
            Ok(_) => Step::Failure(SaslError::BadCredentials),
            Err(e) => Step::Failure(e),
        }
    }
}

/// The first rsasl pass over a bearer-token message: its token (the `Bearer` scheme taken
/// off, RFC 6750 section 2.1) and the user it claims.
fn probe_token(mechanism: Mechanism, data: &[u8]) -> Result<Presented, SaslError> {
    let probe = TokenProbe::default();
    let seen = probe.seen.clone();
    let mut server = provider::start(only(mechanism)?, probe, None)?;
    // The pass ends without a verdict (the probe gives none), which rsasl reports as an error.
    let _ = provider::step(&mut server, Some(data));
    let presented = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or(SaslError::Malformed)?;
    let token = match mechanism {
        // OAUTHBEARER's `auth=` holds the whole header value, "Bearer <token>".
        Mechanism::OAuthBearer => {
            let (scheme, token) = presented
                .token
                .split_once(' ')
                .ok_or(SaslError::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(SaslError::Malformed);
            }
            Zeroizing::new(token.trim_start().to_string())
        }
        _ => presented.token.clone(),
    };
    if token.is_empty() {
        return Err(SaslError::Malformed);
    }
    if let Some(user) = &presented.user {
        field(user.as_bytes())?;
    }
    Ok(Presented {
        token,
        user: presented.user,
    })
}

/// The user part of a Kerberos principal: `alice@EXAMPLE.ORG` names account `alice`.
pub fn principal_user(principal: &str) -> &str {
    principal
        .rsplit_once('@')
        .map(|(user, _realm)| user)
        .unwrap_or(principal)
}

/// A record for a user the store does not know: same shape every time for that name.
fn fake_record(user: &str, iterations: u32) -> Record {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        k
    });
    let digest = Sha256::new()
        .chain_update(key)
        .chain_update(user.as_bytes())
        .finalize();
    let mut random = [0u8; 64];
    OsRng.fill_bytes(&mut random);
    Record {
        iterations: iterations.max(scram::MIN_ITERATIONS),
        salt: digest[..16].to_vec(),
        stored_key: random[..32].try_into().unwrap_or([0; 32]),
        server_key: random[32..].try_into().unwrap_or([0; 32]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    fn ctx() -> Context {
        Context {
            challenge: "<1896.697170952@postoffice.reston.mci.net>".into(),
            scram_iterations: scram::MIN_ITERATIONS,
            channel_binding: None,
        }
    }

    /// The first step of PLAIN with `initial` as the initial response.
    fn plain(initial: &[u8]) -> Step {
        Exchange::start(Mechanism::Plain, Some(initial.to_vec()), &ctx()).1
    }

    #[test]
    fn rfc4616_plain_examples() {
        // RFC 4616 section 4.
        match plain(b"\0tim\0tanstaaftanstaaf") {
            Step::CheckPassword { authcid, password } => {
                assert_eq!(authcid, "tim");
                assert_eq!(*password, b"tanstaaftanstaaf");
            }
            other => panic!("{other:?}"),
        }
        // "Ursel" acting as "Kurt": no proxy authorisation here.
        let step = plain(b"Ursel\0Kurt\0xipj3plmq");
        assert!(matches!(step, Step::Failure(SaslError::AuthzidMismatch)));
        assert!(matches!(plain(b"tim\0tim\0pw"), Step::CheckPassword { .. }));
        // Fields with CR or LF are refused before use (they could smuggle commands).
        let step = plain(b"\0tim\r\nQUIT\0pw");
        assert!(matches!(step, Step::Failure(SaslError::ControlInField)));
        assert!(matches!(
            plain(b"\0tim"),
            Step::Failure(SaslError::Malformed)
        ));
        // Without an initial response the server sends an empty challenge.
        let (mut ex, step) = Exchange::start(Mechanism::Plain, None, &ctx());
        assert!(matches!(step, Step::Challenge(c) if c.is_empty()));
        assert!(matches!(ex.respond(b"\0u\0p"), Step::CheckPassword { .. }));
    }

    #[test]
    fn cr_lf_and_nul_in_decoded_fields_are_refused_before_use() {
        // RFC 5034 section 4 hands the decoded fields to the server as octets; a CR, LF or NUL
        // in a user name or password could smuggle a line into a log or a lookup. None of
        // these reaches NeedCredentials or CheckPassword.
        let refused = |step: Step| {
            matches!(
                step,
                Step::Failure(SaslError::ControlInField | SaslError::Malformed)
            )
        };
        for bad in [
            &b"\0tim\rx\0pw"[..],
            b"\0tim\0p\nw",
            b"ti\nm\0tim\0pw",
            b"\0tim\0pw\r",
        ] {
            assert!(refused(plain(bad)), "PLAIN {bad:?}");
        }
        for bad in [&b"ti\0m"[..], b"tim\r\nQUIT", b"tim\n"] {
            let (mut ex, _) = Exchange::start(Mechanism::Login, None, &ctx());
            assert!(refused(ex.respond(bad)), "LOGIN user {bad:?}");
        }
        for bad in [&b"p\0w"[..], b"pw\r\nQUIT", b"\npw"] {
            let (mut ex, _) = Exchange::start(Mechanism::Login, None, &ctx());
            ex.respond(b"tim");
            assert!(refused(ex.respond(bad)), "LOGIN password {bad:?}");
        }
        for bad in [
            &b"t\0im b913a602c7eda7a495b4e6e7334d3890"[..],
            b"tim\r\n b913a602c7eda7a495b4e6e7334d3890",
            b"tim b913a602c7eda7a495b4e6e7334d3890\n",
        ] {
            let (mut ex, _) = Exchange::start(Mechanism::CramMd5, None, &ctx());
            assert!(refused(ex.respond(bad)), "CRAM-MD5 {bad:?}");
        }
        for bad in [
            &b"n,,n=us\0er,r=abc"[..],
            b"n,,n=us\r\ner,r=abc",
            b"n,,n=user,r=a\nbc",
        ] {
            let (_, step) = Exchange::start(Mechanism::ScramSha256, Some(bad.to_vec()), &ctx());
            assert!(
                matches!(step, Step::Failure(_)),
                "SCRAM-SHA-256 {bad:?}: {step:?}"
            );
        }
    }

    #[test]
    fn login_asks_for_user_then_password() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, None, &ctx());
        assert!(matches!(step, Step::Challenge(c) if c == b"Username:"));
        assert!(matches!(ex.respond(b"tim"), Step::Challenge(c) if c == b"Password:"));
        assert!(
            matches!(ex.respond(b"pass word"), Step::CheckPassword { authcid, .. } if authcid == "tim")
        );
    }

    #[test]
    fn rfc2195_cram_md5_exchange() {
        let (mut ex, step) = Exchange::start(Mechanism::CramMd5, None, &ctx());
        assert!(matches!(step, Step::Challenge(c) if c == ctx().challenge.as_bytes()));
        let step = ex.respond(b"tim b913a602c7eda7a495b4e6e7334d3890");
        assert!(matches!(step, Step::NeedCredentials { ref authcid } if authcid == "tim"));
        let creds = Credentials {
            legacy_secret: Some("tanstaaftanstaaf"),
            ..Credentials::default()
        };
        assert!(
            matches!(ex.credentials(Some(creds)), Step::Success { authcid } if authcid == "tim")
        );
        // An account imported from Dovecot with only the HMAC-MD5 states of that secret.
        let states = Credentials {
            cram_md5_states: Some(
                "d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b",
            ),
            ..Credentials::default()
        };
        let (mut ex, _) = Exchange::start(Mechanism::CramMd5, None, &ctx());
        ex.respond(b"tim b913a602c7eda7a495b4e6e7334d3890");
        assert!(
            matches!(ex.credentials(Some(states)), Step::Success { authcid } if authcid == "tim")
        );
        // Unknown user, or a user with neither: the same failure.
        for creds in [None, Some(Credentials::default())] {
            let (mut ex, _) = Exchange::start(Mechanism::CramMd5, None, &ctx());
            ex.respond(b"tim b913a602c7eda7a495b4e6e7334d3890");
            assert!(matches!(
                ex.credentials(creds),
                Step::Failure(SaslError::BadCredentials)
            ));
        }
    }

    /// A SCRAM exchange between rsasl's client and the exchange, from the client-first
    /// through the server's empty final answer; the server-first is returned for inspection.
    fn scram_round_trip(
        mechanism: Mechanism,
        ctx: &Context,
        client: &mut crate::testing::ScramClient,
        record: Option<&str>,
    ) -> (Vec<u8>, Step) {
        let first = client.step(None).expect("client-first");
        let (mut ex, step) = Exchange::start(mechanism, Some(first), ctx);
        let Step::NeedCredentials { authcid } = step else {
            return (Vec::new(), step);
        };
        assert_eq!(authcid, "user");
        let creds = Credentials {
            scram: record,
            ..Credentials::default()
        };
        let Step::Challenge(server_first) = ex.credentials(Some(creds)) else {
            panic!("server-first")
        };
        let client_final = client.step(Some(&server_first)).expect("client-final");
        let step = match ex.respond(&client_final) {
            Step::Challenge(v) => {
                // The client checks the server's signature (RFC 5802 section 3).
                client.step(Some(&v)).expect("server signature accepted");
                ex.respond(b"")
            }
            other => other,
        };
        (server_first, step)
    }

    /// RFC 7677 section 3's user and password, as a round trip with rsasl's client (rsasl
    /// picks its own nonce; the fixed messages of the RFC are checked in `scram`'s tests).
    #[test]
    fn rfc7677_scram_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let record = Record::derive(b"pencil", &salt, 4096).encode();
        let mut client = crate::testing::ScramClient::new("user", "pencil", None);
        let (sf, step) =
            scram_round_trip(Mechanism::ScramSha256, &ctx(), &mut client, Some(&record));
        let sf = String::from_utf8(sf).expect("UTF-8");
        assert!(sf.starts_with("r="), "{sf}");
        assert!(sf.ends_with(",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), "{sf}");
        assert!(matches!(step, Step::Success { authcid } if authcid == "user"));
        // The wrong password fails at the proof.
        let mut client = crate::testing::ScramClient::new("user", "pencil2", None);
        let (_, step) =
            scram_round_trip(Mechanism::ScramSha256, &ctx(), &mut client, Some(&record));
        assert!(matches!(step, Step::Failure(SaslError::BadCredentials)));

        // An unknown user gets a server-first with a stable fake salt, then fails.
        let ghost = || {
            let first = Some(b"n,,n=ghost,r=abc".to_vec());
            let (mut ex, _) = Exchange::start(Mechanism::ScramSha256, first, &ctx());
            let Step::Challenge(server_first) = ex.credentials(None) else {
                panic!("server-first")
            };
            let server_first = String::from_utf8(server_first).expect("UTF-8");
            let salt = server_first
                .split_once(",s=")
                .map(|(_, rest)| rest.to_string())
                .expect("salt");
            (ex, salt)
        };
        let ((mut ex, a), (_, b)) = (ghost(), ghost());
        assert_eq!(a, b, "the fake salt must not give the unknown user away");
        // Nor the count: it is the one real records are derived with.
        let mut counted = ctx();
        counted.scram_iterations = 100_000;
        let (mut ex3, _) = Exchange::start(
            Mechanism::ScramSha256,
            Some(b"n,,n=ghost,r=abc".to_vec()),
            &counted,
        );
        let Step::Challenge(c) = ex3.credentials(None) else {
            panic!("server-first")
        };
        assert!(c.ends_with(b",i=100000"), "{}", String::from_utf8_lossy(&c));
        let step = ex.respond(b"c=biws,r=abc%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert!(matches!(step, Step::Failure(SaslError::BadCredentials)));
        // The unknown user with a client that computes a real proof fails the same way.
        let mut client = crate::testing::ScramClient::new("user", "pencil", None);
        let (_, step) = scram_round_trip(Mechanism::ScramSha256, &ctx(), &mut client, None);
        assert!(matches!(step, Step::Failure(SaslError::BadCredentials)));
    }

    fn bound(name: &'static str, data: &[u8]) -> Option<ChannelBinding> {
        Some(ChannelBinding {
            name,
            data: data.to_vec(),
        })
    }

    /// RFC 5802 section 6 and RFC 9266: SCRAM-SHA-256-PLUS binds the proof to the
    /// connection's channel binding; a client holding another connection's data fails, as
    /// does -PLUS where there is no binding, and SCRAM-SHA-256 with the `y` flag where the
    /// server could have bound (a downgrade).
    #[test]
    fn rfc5802_scram_plus_binds_to_this_connection() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let record = Record::derive(b"pencil", &salt, 4096).encode();
        let mut tls = ctx();
        tls.channel_binding = bound(ChannelBinding::TLS_EXPORTER, b"this connection");
        let mut client =
            crate::testing::ScramClient::new("user", "pencil", tls.channel_binding.clone());
        let (_, step) =
            scram_round_trip(Mechanism::ScramSha256Plus, &tls, &mut client, Some(&record));
        assert!(
            matches!(step, Step::Success { ref authcid } if authcid == "user"),
            "{step:?}"
        );
        // Another connection's data: the proof does not bind to this one.
        let other = bound(ChannelBinding::TLS_EXPORTER, b"another connection");
        let mut client = crate::testing::ScramClient::new("user", "pencil", other);
        let (_, step) =
            scram_round_trip(Mechanism::ScramSha256Plus, &tls, &mut client, Some(&record));
        assert!(
            matches!(step, Step::Failure(SaslError::BadCredentials)),
            "{step:?}"
        );
        // Another binding type than the connection's.
        let other = bound(ChannelBinding::TLS_SERVER_END_POINT, b"this connection");
        let mut client = crate::testing::ScramClient::new("user", "pencil", other);
        let (_, step) =
            scram_round_trip(Mechanism::ScramSha256Plus, &tls, &mut client, Some(&record));
        assert!(
            matches!(step, Step::Failure(SaslError::Unsupported)),
            "{step:?}"
        );
        // -PLUS without a channel binding (no TLS).
        let (_, step) = Exchange::start(Mechanism::ScramSha256Plus, None, &ctx());
        assert!(matches!(step, Step::Failure(SaslError::Unsupported)));
        // `y` where the server offers -PLUS: rsasl refuses the downgrade.
        let (mut ex, _) = Exchange::start(
            Mechanism::ScramSha256,
            Some(b"y,,n=user,r=abc".to_vec()),
            &tls,
        );
        let creds = Credentials {
            scram: Some(&record),
            ..Credentials::default()
        };
        assert!(matches!(ex.credentials(Some(creds)), Step::Failure(_)));
        // Without TLS, `y` is fine.
        let (mut ex, _) = Exchange::start(
            Mechanism::ScramSha256,
            Some(b"y,,n=user,r=abc".to_vec()),
            &ctx(),
        );
        assert!(matches!(ex.credentials(Some(creds)), Step::Challenge(_)));
    }

    /// RFC 7628 section 3.1 and XOAUTH2: the token (without its `Bearer` scheme) and the
    /// claimed user go to the caller; an accepted verdict succeeds as the verdict's user, a
    /// refused one sends the error document (section 3.2.2) and fails at the client's answer.
    #[test]
    fn rfc7628_bearer_tokens_go_to_the_caller_and_back() {
        let oauthbearer = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        let xoauth2 = b"user=user@example.com\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        for (mechanism, message) in [
            (Mechanism::OAuthBearer, &oauthbearer[..]),
            (Mechanism::XOAuth2, &xoauth2[..]),
        ] {
            // With the initial response, and without (an empty challenge first).
            let (mut ex, step) = Exchange::start(mechanism, Some(message.to_vec()), &ctx());
            let Step::CheckToken { token, authzid } = step else {
                panic!("{mechanism:?}: {step:?}")
            };
            assert_eq!(*token, "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");
            assert_eq!(authzid.as_deref(), Some("user@example.com"));
            let accepted = TokenVerdict::Accepted {
                user: "user@example.com".into(),
            };
            assert!(
                matches!(ex.token_verdict(accepted), Step::Success { authcid } if authcid == "user@example.com")
            );

            let (mut ex, step) = Exchange::start(mechanism, None, &ctx());
            assert!(matches!(step, Step::Challenge(c) if c.is_empty()));
            assert!(matches!(ex.respond(message), Step::CheckToken { .. }));
            let json = r#"{"status":"invalid_token","scope":"mail","openid-configuration":"https://idp.example/.well-known/openid-configuration"}"#;
            let refused = TokenVerdict::Refused {
                error_json: json.into(),
            };
            let Step::Challenge(error) = ex.token_verdict(refused) else {
                panic!("{mechanism:?}: an error challenge")
            };
            let error: serde_json::Value = serde_json::from_slice(&error).expect("JSON");
            let expected: serde_json::Value = serde_json::from_str(json).expect("JSON");
            assert_eq!(error, expected, "{mechanism:?}");
            assert!(matches!(
                ex.respond(b"\x01"),
                Step::Failure(SaslError::BadCredentials)
            ));
        }
        // Malformed: no auth=, another scheme, CR/LF in the claimed user.
        for (mechanism, bad) in [
            (Mechanism::OAuthBearer, &b"n,,\x01host=x\x01\x01"[..]),
            (
                Mechanism::OAuthBearer,
                b"n,,\x01auth=Basic dXNlcjpwdw==\x01\x01",
            ),
            (Mechanism::XOAuth2, b"user=a\r\nb\x01auth=Bearer t\x01\x01"),
            (Mechanism::XOAuth2, b"garbage"),
        ] {
            let (_, step) = Exchange::start(mechanism, Some(bad.to_vec()), &ctx());
            assert!(
                matches!(step, Step::Failure(_)),
                "{mechanism:?} {bad:?}: {step:?}"
            );
        }
        // The token never shows in a step's Debug.
        let (_, step) = Exchange::start(Mechanism::XOAuth2, Some(xoauth2.to_vec()), &ctx());
        assert!(!format!("{step:?}").contains("vF9dft"));
    }

    #[test]
    fn login_takes_the_user_name_as_initial_response() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, Some(b"tim".to_vec()), &ctx());
        assert!(matches!(step, Step::Challenge(c) if c == b"Password:"));
        assert!(
            matches!(ex.respond(b"pw"), Step::CheckPassword { authcid, password } if authcid == "tim" && *password == b"pw")
        );
    }

    /// An acceptor that takes "token-1" then "token-2" as a two-leg context for `principal`
    /// (alice of the service's realm unless set), for service `pop/host@EXAMPLE.TEST`.
    struct FakeGss {
        legs: u8,
        principal: &'static str,
    }

    fn fake_gss() -> Box<FakeGss> {
        Box::new(FakeGss {
            legs: 0,
            principal: "alice@EXAMPLE.TEST",
        })
    }

    impl GssAcceptor for FakeGss {
        fn step(&mut self, token: &[u8]) -> Result<(Vec<u8>, bool), String> {
            self.legs += 1;
            match (self.legs, token) {
                (1, b"token-1") => Ok((b"reply-1".to_vec(), false)),
                (2, b"token-2") => Ok((b"final".to_vec(), true)),
                _ => Err("bad token".into()),
            }
        }
        fn wrap(&mut self, m: &[u8]) -> Result<Vec<u8>, String> {
            Ok([b"W:".as_slice(), m].concat())
        }
        fn unwrap(&mut self, m: &[u8]) -> Result<Vec<u8>, String> {
            m.strip_prefix(b"W:")
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "not wrapped".into())
        }
        fn client_name(&mut self) -> Result<String, String> {
            Ok(self.principal.into())
        }
        fn service_realm(&mut self) -> Result<String, String> {
            Ok("EXAMPLE.TEST".into())
        }
    }

    #[test]
    fn rfc4752_gssapi_exchange() {
        let (mut ex, step) = Exchange::start_gssapi(fake_gss(), Some(b"token-1".to_vec()), &[]);
        assert!(matches!(step, Step::Challenge(c) if c == b"reply-1"));
        assert!(matches!(ex.respond(b"token-2"), Step::Challenge(c) if c == b"final"));
        // The client answers the last context token with an empty response; then the
        // wrapped offer: bit 1 (no security layer), max size 0.
        assert!(matches!(ex.respond(b""), Step::Challenge(c) if c == b"W:\x01\x00\x00\x00"));
        assert!(
            matches!(ex.respond(b"W:\x01\x00\x00\x00"), Step::Success { authcid } if authcid == "alice")
        );

        // A client that asks for a security layer we did not offer, or another identity.
        let run = |reply: &[u8]| {
            let (mut ex, _) = Exchange::start_gssapi(fake_gss(), Some(b"token-1".to_vec()), &[]);
            ex.respond(b"token-2");
            ex.respond(b"");
            ex.respond(reply)
        };
        assert!(matches!(
            run(b"W:\x04\x00\x10\x00"),
            Step::Failure(SaslError::Unsupported)
        ));
        assert!(matches!(
            run(b"W:\x01\x00\x00\x00bob"),
            Step::Failure(SaslError::AuthzidMismatch)
        ));
        assert!(matches!(
            run(b"W:\x01\x00\x00\x00alice"),
            Step::Success { .. }
        ));
        assert!(matches!(
            run(b"unwrapped"),
            Step::Failure(SaslError::BadCredentials)
        ));
        // A bad token fails the exchange.
        let (_, step) = Exchange::start_gssapi(fake_gss(), Some(b"junk".to_vec()), &[]);
        assert!(matches!(step, Step::Failure(SaslError::BadCredentials)));
        assert_eq!(principal_user("pop/host@REALM"), "pop/host");
    }

    /// Issue 15: a principal of another realm (a cross-realm trust) is not the local user of
    /// that name; the service's own realm and configured extra realms are accepted.
    #[test]
    fn rfc4752_gssapi_accepts_only_the_service_realm_and_configured_ones() {
        let run = |principal: &'static str, extra: &[String]| {
            let acceptor = Box::new(FakeGss { legs: 0, principal });
            let (mut ex, _) = Exchange::start_gssapi(acceptor, Some(b"token-1".to_vec()), extra);
            ex.respond(b"token-2");
            ex.respond(b"");
            ex.respond(b"W:\x01\x00\x00\x00")
        };
        assert!(matches!(
            run("alice@PARTNER.REALM", &[]),
            Step::Failure(SaslError::ForeignRealm)
        ));
        assert!(matches!(
            run("alice", &[]),
            Step::Failure(SaslError::ForeignRealm)
        ));
        assert!(
            matches!(run("alice@EXAMPLE.TEST", &[]), Step::Success { authcid } if authcid == "alice")
        );
        let partner = ["PARTNER.REALM".to_string()];
        assert!(
            matches!(run("alice@PARTNER.REALM", &partner), Step::Success { authcid } if authcid == "alice")
        );
        // Realms are compared as Kerberos does: exactly.
        assert!(matches!(
            run("alice@partner.realm", &partner),
            Step::Failure(SaslError::ForeignRealm)
        ));
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(Mechanism::parse("cram-md5"), Some(Mechanism::CramMd5));
        assert_eq!(Mechanism::parse("gssapi"), Some(Mechanism::Gssapi));
        assert_eq!(Mechanism::parse("NTLM"), None);
        assert!(Mechanism::Plain.is_cleartext() && !Mechanism::ScramSha256.is_cleartext());
        assert_eq!(Mechanism::parse("xoauth2"), Some(Mechanism::XOAuth2));
        assert_eq!(
            Mechanism::parse("SCRAM-SHA-256-PLUS"),
            Some(Mechanism::ScramSha256Plus)
        );
        // Bearer tokens are credentials: the cleartext policy covers them.
        assert!(Mechanism::OAuthBearer.needs_cleartext_policy());
        assert!(Mechanism::XOAuth2.needs_cleartext_policy());
        assert!(!Mechanism::CramMd5.needs_cleartext_policy());
    }
}
