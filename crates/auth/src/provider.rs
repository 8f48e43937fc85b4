//! rsasl's provider (server) side, as [`crate::sasl::Exchange`] drives it: one `SASLConfig`
//! per exchange whose callback only answers from values the caller already fetched (a SCRAM
//! record, a token verdict) and whose `validate` copies what the mechanism learnt into the
//! validation value [`Outcome`]. No callback here reads the store, hashes a password or
//! validates a token: those happen off the async workers, between two steps, in the caller.

use std::sync::{Arc, Mutex};

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::oauthbearer::properties::{OAuthBearerError, OAuthBearerValidate};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::xoauth2::properties::XOAuth2Validate;
use rsasl::prelude::{
    ChannelBindingCallback, MessageSent, SASLConfig, SASLServer, Session, SessionError, State,
    Validation,
};
use rsasl::prelude::{Mechanism as RsaslMechanism, Registry};
use rsasl::property::{AuthId, AuthzId, OAuthBearerToken, Password};
use rsasl::validate::{Validate, ValidationError};
use zeroize::Zeroizing;

use crate::scram::Record;
use crate::SaslError;

pub(crate) use rsasl::mechanisms::login::LOGIN;
pub(crate) use rsasl::mechanisms::oauthbearer::OAUTHBEARER;
pub(crate) use rsasl::mechanisms::plain::PLAIN;
pub(crate) use rsasl::mechanisms::scram::{SCRAM_SHA256, SCRAM_SHA256_PLUS};
pub(crate) use rsasl::mechanisms::xoauth2::XOAUTH2;

/// Channel-binding data of the connection (RFC 5056) for SCRAM-SHA-256-PLUS: `tls-exporter`
/// (RFC 9266) on TLS 1.3, `tls-server-end-point` (RFC 5929) on TLS 1.2. The server computes
/// it from its TLS connection; the data is not secret, but only meaningful on that connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelBinding {
    /// The channel-binding type, as the client names it in `p=`.
    pub name: &'static str,
    pub data: Vec<u8>,
}

impl ChannelBinding {
    pub const TLS_EXPORTER: &'static str = "tls-exporter";
    pub const TLS_SERVER_END_POINT: &'static str = "tls-server-end-point";
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChannelBinding({}, {} octets)",
            self.name,
            self.data.len()
        )
    }
}

/// rsasl asks for the connection's channel-binding data by type name; only ours matches.
pub struct Binding(pub Option<ChannelBinding>);

impl ChannelBindingCallback for Binding {
    fn get_cb_data(&self, cbname: &str) -> Option<&[u8]> {
        self.0
            .as_ref()
            .filter(|b| b.name == cbname)
            .map(|b| b.data.as_slice())
    }
}

/// What a finished mechanism established, copied out of rsasl by `validate`.
pub(crate) enum Validated {
    /// PLAIN, LOGIN: the caller checks the password (argon2, on its hashing threads).
    Password {
        authzid: String,
        authcid: String,
        password: Zeroizing<Vec<u8>>,
    },
    /// SCRAM: the proof matched a stored record.
    Scram,
    /// OAUTHBEARER, XOAUTH2: the caller's validator accepted the token for this user.
    Bearer { user: String },
}

/// The validation type of every exchange here.
pub(crate) struct Outcome;

impl Validation for Outcome {
    type Value = Validated;
}

pub(crate) type Server = Session<Outcome, Binding>;

/// Starts rsasl's server for the first mechanism of `registry`, which lists what the
/// connection offers (that matters to SCRAM: with the -PLUS variant in it, a client's `y`
/// flag is a downgrade), with `callback` answering and `binding` the connection's channel
/// binding.
pub(crate) fn start(
    registry: &'static [RsaslMechanism],
    callback: impl SessionCallback + 'static,
    binding: Option<ChannelBinding>,
) -> Result<Server, SaslError> {
    let mechanism = registry.first().ok_or(SaslError::Unsupported)?;
    let config: Arc<SASLConfig> = SASLConfig::builder()
        .with_registry(Registry::with_mechanisms(registry))
        .with_callback(callback)
        .map_err(|_| SaslError::Unsupported)?;
    SASLServer::<Outcome, Binding>::with_cb(config, Binding(binding))
        .start_suggested(mechanism.mechanism)
        .map_err(|_| SaslError::Unsupported)
}

/// How one rsasl step ended.
pub(crate) enum Stepped {
    /// Send this challenge; the mechanism wants the client again.
    Running(Vec<u8>),
    /// The mechanism is done: with its last message (sent or not) and what it validated.
    Finished {
        message: Option<Vec<u8>>,
        validated: Option<Validated>,
    },
}

/// One step of `server` with `input`.
pub(crate) fn step(server: &mut Server, input: Option<&[u8]>) -> Result<Stepped, SaslError> {
    let mut out = Vec::new();
    let state = server.step(input, &mut out).map_err(|e| match e {
        SessionError::MissingChannelBindingData(_) => SaslError::Unsupported,
        _ => SaslError::Malformed,
    })?;
    Ok(match state {
        State::Running => Stepped::Running(out),
        State::Finished(sent) => Stepped::Finished {
            message: (sent == MessageSent::Yes).then_some(out),
            validated: server.validation(),
        },
    })
}

/// PLAIN and LOGIN: nothing to answer; `validate` copies the identities and the password.
pub(crate) struct PasswordCallback;

impl SessionCallback for PasswordCallback {
    fn validate(
        &self,
        _session: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let authcid = context
            .get_ref::<AuthId>()
            .ok_or(ValidationError::MissingRequiredProperty)?;
        let password = context
            .get_ref::<Password>()
            .ok_or(ValidationError::MissingRequiredProperty)?;
        validate.finalize::<Outcome>(Validated::Password {
            authzid: context.get_ref::<AuthzId>().unwrap_or_default().to_string(),
            authcid: authcid.to_string(),
            password: Zeroizing::new(password.to_vec()),
        });
        Ok(())
    }
}

/// SCRAM: answers `ScramStoredPassword` from the record the caller fetched (a stable fake one
/// for an unknown name, so the exchange looks the same until the proof fails).
pub(crate) struct ScramCallback {
    pub record: Record,
    /// The record is the account's own: only then may a matching proof validate.
    pub known: bool,
}

impl SessionCallback for ScramCallback {
    fn callback(
        &self,
        _session: &SessionData,
        _context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        let r = &self.record;
        request.satisfy::<ScramStoredPassword<'static>>(&ScramStoredPassword::new(
            r.iterations,
            &r.salt,
            &r.stored_key,
            &r.server_key,
        ))?;
        Ok(())
    }

    fn validate(
        &self,
        _session: &SessionData,
        _context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        if self.known {
            validate.finalize::<Outcome>(Validated::Scram);
        }
        Ok(())
    }
}

/// What a bearer-token mechanism's client message carried.
pub(crate) struct Presented {
    pub token: Zeroizing<String>,
    /// OAUTHBEARER's `a=` authzid, XOAUTH2's `user=`.
    pub user: Option<String>,
}

/// The first pass over a bearer-token message: rsasl parses it and asks for a verdict; this
/// callback keeps the token and the name instead of answering, which ends the pass. The
/// caller validates the token off the async workers and steps a fresh server with
/// [`VerdictCallback`].
#[derive(Default)]
pub(crate) struct TokenProbe {
    pub seen: Arc<Mutex<Option<Presented>>>,
}

impl SessionCallback for TokenProbe {
    fn callback(
        &self,
        _session: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        if request.is::<OAuthBearerValidate>() || request.is::<XOAuth2Validate>() {
            if let Some(token) = context.get_ref::<OAuthBearerToken>() {
                let user = context
                    .get_ref::<AuthzId>()
                    .or_else(|| context.get_ref::<AuthId>())
                    .filter(|u| !u.is_empty())
                    .map(str::to_string);
                let presented = Presented {
                    token: Zeroizing::new(token.to_string()),
                    user,
                };
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(presented);
            }
        }
        Ok(())
    }
}

/// The caller's verdict on a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVerdict {
    /// The token is good and names this existing account.
    Accepted { user: String },
    /// Refused: the client gets `error_json` in a continuation (RFC 7628 section 3.2.2).
    Refused { error_json: String },
}

/// The second pass: answers the mechanism's validation request with the verdict.
pub(crate) struct VerdictCallback(pub TokenVerdict);

impl SessionCallback for VerdictCallback {
    fn callback(
        &self,
        _session: &SessionData,
        _context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        match &self.0 {
            TokenVerdict::Accepted { .. } => {
                request
                    .satisfy::<OAuthBearerValidate>(&Ok(()))?
                    .satisfy::<XOAuth2Validate>(&Ok(()))?;
            }
            TokenVerdict::Refused { error_json } => {
                // rsasl writes the document from its fields (status, scope,
                // openid-configuration); a document it cannot read is replaced by the bare
                // status RFC 7628 section 3.2.2 requires.
                let fields = serde_json::from_str::<OAuthBearerError<'_>>(error_json)
                    .unwrap_or(OAuthBearerError::new("invalid_token", None, None));
                request
                    .satisfy::<OAuthBearerValidate>(&Err(fields))?
                    .satisfy::<XOAuth2Validate>(&Err(error_json.as_str()))?;
            }
        }
        Ok(())
    }

    fn validate(
        &self,
        _session: &SessionData,
        _context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        if let TokenVerdict::Accepted { user } = &self.0 {
            validate.finalize::<Outcome>(Validated::Bearer { user: user.clone() });
        }
        Ok(())
    }
}
