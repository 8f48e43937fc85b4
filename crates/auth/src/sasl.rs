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
mod tests;
