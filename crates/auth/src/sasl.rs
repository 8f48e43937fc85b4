//! SASL mechanisms (RFC 4422) as step machines: PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195)
//! and SCRAM-SHA-256 (RFC 7677).
//!
//! An [`Exchange`] never reads the store and does no I/O: it returns a [`Step`] that tells the
//! caller what to send, or what it needs (an account's stored secrets, or an argon2 check of a
//! password), and the caller feeds the answer back. Framing (base64, `+ ` lines, `*`) is the
//! caller's business too.

use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::gss::GssAcceptor;
use crate::legacy::{verify_cram_md5, CramKey};
use crate::scram::{self, ClientFirst, Record};
use crate::{SaslError, Verdict};

/// The mechanisms this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    ScramSha256,
    /// RFC 4752; needs a [`GssAcceptor`] ([`Exchange::start_gssapi`]).
    Gssapi,
}

impl Mechanism {
    pub const ALL: [Mechanism; 5] = [
        Mechanism::Gssapi,
        Mechanism::ScramSha256,
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

    /// Offered before TLS only where the cleartext policy allows: the cleartext mechanisms,
    /// and SCRAM, whose salt and proof let a passive listener guess the password offline.
    pub fn needs_cleartext_policy(self) -> bool {
        self.is_cleartext() || self == Mechanism::ScramSha256
    }

    /// Needs the account's password-equivalent legacy secret.
    pub fn needs_legacy_secret(self) -> bool {
        matches!(self, Mechanism::CramMd5)
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
            Step::Success { authcid } => write!(f, "Success({authcid:?})"),
            Step::Failure(e) => write!(f, "Failure({e})"),
        }
    }
}

/// Per-exchange values the caller makes: the CRAM-MD5 challenge (a msg-id) and the SCRAM
/// server nonce.
#[derive(Debug, Clone)]
pub struct Context {
    pub challenge: String,
    pub nonce: String,
    /// The PBKDF2 count an unknown user's made-up SCRAM record shows, the one real records
    /// are derived with, so the count does not tell the two apart.
    pub scram_iterations: u32,
}

impl Context {
    /// A fresh context for `hostname` with random values, and SCRAM records derived with
    /// `scram_iterations`.
    pub fn new(hostname: &str, scram_iterations: u32) -> Context {
        let mut random = [0u8; 18];
        OsRng.fill_bytes(&mut random);
        let nonce: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Context {
            challenge: format!("<{}.{now}@{hostname}>", &nonce[..16]),
            nonce,
            scram_iterations,
        }
    }
}

enum State {
    Plain,
    LoginUser,
    LoginPassword {
        user: String,
    },
    Cram {
        challenge: String,
    },
    CramNeedSecret {
        challenge: String,
        user: String,
        digest: String,
    },
    ScramFirst {
        server_nonce: String,
        iterations: u32,
    },
    ScramNeedRecord {
        first: ClientFirst,
        server_nonce: String,
        iterations: u32,
    },
    ScramFinal {
        first: ClientFirst,
        server_first: String,
        nonce: String,
        record: Record,
        known: bool,
    },
    ScramOutcome {
        user: String,
    },
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

impl Exchange {
    /// Starts `mechanism`, with the client's initial response if it sent one (overwritten
    /// here once used: it may hold a password).
    pub fn start(
        mechanism: Mechanism,
        initial: Option<Vec<u8>>,
        ctx: &Context,
    ) -> (Exchange, Step) {
        let initial = initial.map(Zeroizing::new);
        let state = match mechanism {
            Mechanism::Plain => State::Plain,
            Mechanism::Login => State::LoginUser,
            Mechanism::CramMd5 => State::Cram {
                challenge: ctx.challenge.clone(),
            },
            Mechanism::ScramSha256 => State::ScramFirst {
                server_nonce: ctx.nonce.clone(),
                iterations: ctx.scram_iterations,
            },
            Mechanism::Gssapi => {
                return (
                    Exchange {
                        state: State::Done,
                        gss_realms: Vec::new(),
                    },
                    Step::Failure(SaslError::Unsupported),
                );
            }
        };
        let mut exchange = Exchange {
            state,
            gss_realms: Vec::new(),
        };
        let step = match (initial, mechanism) {
            (Some(data), Mechanism::Plain | Mechanism::Login | Mechanism::ScramSha256) => {
                exchange.respond(&data)
            }
            // CRAM-MD5 starts with the server's challenge; an initial response is an error.
            (Some(_), Mechanism::CramMd5) => {
                exchange.state = State::Done;
                Step::Failure(SaslError::Malformed)
            }
            (None, Mechanism::Plain | Mechanism::ScramSha256) => Step::Challenge(Vec::new()),
            (None, Mechanism::Login) => Step::Challenge(b"Username:".to_vec()),
            (None, Mechanism::CramMd5) => Step::Challenge(ctx.challenge.as_bytes().to_vec()),
            (_, Mechanism::Gssapi) => Step::Failure(SaslError::Unsupported),
        };
        (exchange, step)
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
            State::Plain => {
                // RFC 4616 section 2: [authzid] NUL authcid NUL passwd
                let mut parts = data.split(|&b| b == 0);
                let (Some(authzid), Some(authcid), Some(password), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(SaslError::Malformed);
                };
                let authzid = field(authzid)?;
                let authcid = field(authcid)?;
                if authcid.is_empty() || password.is_empty() || password.len() > MAX_FIELD {
                    return Err(SaslError::Malformed);
                }
                if password.iter().any(|&b| b == b'\r' || b == b'\n') {
                    return Err(SaslError::ControlInField);
                }
                if !authzid.is_empty() && authzid != authcid {
                    return Err(SaslError::AuthzidMismatch);
                }
                Ok(Step::CheckPassword {
                    authcid,
                    password: Zeroizing::new(password.to_vec()),
                })
            }
            State::LoginUser => {
                let user = field(data)?;
                if user.is_empty() {
                    return Err(SaslError::Malformed);
                }
                self.state = State::LoginPassword { user };
                Ok(Step::Challenge(b"Password:".to_vec()))
            }
            State::LoginPassword { user } => {
                if data.is_empty() || data.len() > MAX_FIELD {
                    return Err(SaslError::Malformed);
                }
                if data.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(SaslError::ControlInField);
                }
                Ok(Step::CheckPassword {
                    authcid: user,
                    password: Zeroizing::new(data.to_vec()),
                })
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
            State::ScramFirst {
                server_nonce,
                iterations,
            } => {
                let first = scram::parse_client_first(data)?;
                let authcid = first.user.clone();
                self.state = State::ScramNeedRecord {
                    first,
                    server_nonce,
                    iterations,
                };
                Ok(Step::NeedCredentials { authcid })
            }
            State::ScramFinal {
                first,
                server_first,
                nonce,
                record,
                known,
            } => {
                let v = scram::verify_client_final(data, &first, &server_first, &nonce, &record)?;
                if !known {
                    return Err(SaslError::BadCredentials);
                }
                self.state = State::ScramOutcome { user: first.user };
                Ok(Step::Challenge(v.into_bytes()))
            }
            State::ScramOutcome { user } => {
                // RFC 5034 section 4: the client answers the final challenge with an empty line.
                if !data.is_empty() {
                    return Err(SaslError::Malformed);
                }
                Ok(Step::Success { authcid: user })
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
            State::CramNeedSecret { .. } | State::ScramNeedRecord { .. } | State::Done => {
                Err(SaslError::Malformed)
            }
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
                first,
                server_nonce,
                iterations,
            } => {
                let stored = creds.and_then(|c| c.scram).and_then(Record::parse);
                let known = stored.is_some();
                // An unknown user (or one without SCRAM keys) gets a plausible, stable salt
                // and fails only at the proof, as a wrong password would.
                let record = stored.unwrap_or_else(|| fake_record(&first.user, iterations));
                let nonce = format!("{}{}", first.nonce, server_nonce);
                let server_first = scram::server_first(&nonce, &record);
                self.state = State::ScramFinal {
                    first,
                    server_first: server_first.clone(),
                    nonce,
                    record,
                    known,
                };
                Step::Challenge(server_first.into_bytes())
            }
            _ => Step::Failure(SaslError::Malformed),
        }
    }
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
            nonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            scram_iterations: scram::MIN_ITERATIONS,
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

    #[test]
    fn rfc7677_scram_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let record = Record::derive(b"pencil", &salt, 4096).encode();
        let (mut ex, step) = Exchange::start(
            Mechanism::ScramSha256,
            Some(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO".to_vec()),
            &ctx(),
        );
        assert!(matches!(step, Step::NeedCredentials { ref authcid } if authcid == "user"));
        let creds = Credentials {
            scram: Some(&record),
            ..Credentials::default()
        };
        let Step::Challenge(sf) = ex.credentials(Some(creds)) else {
            panic!("server-first")
        };
        assert_eq!(sf, b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        let step = ex.respond(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert!(
            matches!(step, Step::Challenge(v) if v == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        );
        assert!(matches!(ex.respond(b""), Step::Success { authcid } if authcid == "user"));

        // An unknown user gets a server-first with a stable fake salt, then fails.
        let ghost = || {
            let first = Some(b"n,,n=ghost,r=abc".to_vec());
            let (mut ex, _) = Exchange::start(Mechanism::ScramSha256, first, &ctx());
            let Step::Challenge(server_first) = ex.credentials(None) else {
                panic!("server-first")
            };
            (ex, server_first)
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
    }
}
