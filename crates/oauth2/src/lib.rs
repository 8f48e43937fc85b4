//! OAuth 2.0 bearer token validation for OAUTHBEARER (RFC 7628) and XOAUTH2 logins: the
//! [`Validator`] behind [`auth::BearerValidator`]. A JWT access token is checked against the
//! issuer's JWKS (`jwks.rs`: fetched over HTTPS, cached, refreshed on an unknown `kid`) with
//! a fixed list of asymmetric algorithms (`provider.rs`: ring does the signatures), then its
//! `iss`, `aud`, `exp` and `nbf` (60 s leeway); an opaque token goes to the RFC 7662
//! introspection endpoint (`introspect.rs`) when one is configured. The configured claim
//! (default `email`) is the user name. The settings pop3d and popadm share are `settings.rs`.
//!
//! Synchronous and blocking (HTTPS with timeouts, `http.rs`): callers on an async runtime run
//! [`Validator::validate`] on a blocking thread. It knows no store: whether the name is an
//! account is the caller's question. No error carries the token.

mod http;
mod introspect;
mod jwks;
mod provider;
mod settings;
#[cfg(feature = "test-issuer")]
pub mod test_issuer;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use auth::{BearerValidator, TokenError};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

pub use provider::ALLOWED as ALLOWED_ALGORITHMS;
#[cfg(feature = "clap")]
pub use settings::Flags;
pub use settings::{Settings, DEFAULT_USERNAME_CLAIM};

/// Seconds of clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;
/// The longest token looked at; longer ones are refused unread.
pub const MAX_TOKEN_OCTETS: usize = 16 * 1024;

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("oauth2: {0}")]
    Invalid(String),
    #[error("oauth2: reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The bounds of the HTTP side. The defaults are the production values; tests shorten them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Whole-request deadline of every fetch.
    pub timeout: Duration,
    /// Largest discovery document, JWKS or introspection answer.
    pub max_jwks_octets: u64,
    /// Most keys in a JWKS.
    pub max_keys: usize,
    /// Bounds of the JWKS cache lifetime taken from Cache-Control.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Lifetime when the JWKS response gives none.
    pub default_ttl: Duration,
    /// Least time between two fetches caused by unknown `kid`s.
    pub refetch_interval: Duration,
    /// Least time between a failed fetch and the next try.
    pub retry_after: Duration,
    /// How long expired keys still serve while the issuer cannot be reached.
    pub stale_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: Duration::from_secs(10),
            max_jwks_octets: 256 * 1024,
            max_keys: 64,
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(3600),
            refetch_interval: Duration::from_secs(30),
            retry_after: Duration::from_secs(10),
            stale_grace: Duration::from_secs(3600),
        }
    }
}

/// A token accepted: the user name and how it was checked (for `popadm oauth2 check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub username: String,
    /// `JWT RS256, key "kid"` or `introspection`.
    pub via: String,
    /// The `exp` claim, when there is one.
    pub expires: Option<u64>,
}

/// Validates bearer tokens of one issuer (see the crate's documentation).
pub struct Validator {
    issuer: String,
    audiences: Vec<String>,
    claim: String,
    http: http::Http,
    jwks: Mutex<jwks::Cache>,
    introspection: Option<introspect::Introspection>,
    limits: Limits,
    error_json: String,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// Checks `settings` and reads its files (the CA file and the client secret: call this
    /// before dropping privileges). Fetches nothing yet: the JWKS comes with the first token.
    pub fn new(settings: &Settings) -> Result<Validator, ConfigError> {
        Validator::with_limits(settings, Limits::default())
    }

    /// [`Validator::new`] with other bounds (tests).
    pub fn with_limits(settings: &Settings, limits: Limits) -> Result<Validator, ConfigError> {
        settings.check()?;
        provider::install();
        let issuer = settings.issuer.clone().unwrap_or_default();
        let ca = match &settings.ca_file {
            Some(path) => Some(read("the CA file", path)?),
            None => None,
        };
        let http = http::Http::new(ca.as_deref(), &limits)?;
        let discovery = discovery_url(&issuer);
        let source = match &settings.jwks_url {
            Some(url) => jwks::Source::Url(url.clone()),
            None => jwks::Source::Discovery {
                document: discovery.clone(),
                issuer: issuer.clone(),
            },
        };
        let introspection = match (
            &settings.introspection_url,
            &settings.client_id,
            &settings.client_secret_file,
        ) {
            (Some(url), Some(id), Some(file)) => {
                let secret = read("the client secret file", file)?;
                let secret = String::from_utf8(secret).map_err(|_| {
                    ConfigError::Invalid("the client secret file is not UTF-8".into())
                })?;
                let secret = secret.trim_end_matches(['\r', '\n']);
                if secret.is_empty() {
                    return Err(ConfigError::Invalid(
                        "the client secret file is empty".into(),
                    ));
                }
                Some(introspect::Introspection::new(url.clone(), id, secret))
            }
            _ => None,
        };
        let claim = settings.username_claim().to_owned();
        let error_json = serde_json::json!({
            "status": "invalid_token",
            "scope": scope_for(&claim),
            "openid-configuration": discovery,
        })
        .to_string();
        Ok(Validator {
            issuer,
            audiences: settings.audience.clone(),
            claim,
            http,
            jwks: Mutex::new(jwks::Cache::new(source)),
            introspection,
            limits,
            error_json,
        })
    }

    /// Fetches the issuer's signing keys now (pop3d does at start, so the first login does not
    /// wait and a wrong URL or CA shows in the log at once): how many usable keys there are.
    pub fn prefetch(&self) -> Result<usize, String> {
        match self.cache().lookup(None, &self.http, &self.limits)? {
            jwks::Lookup::Keys(keys) => Ok(keys.len()),
            jwks::Lookup::UnknownKid => Ok(0),
        }
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many times the JWKS was fetched so far.
    pub fn jwks_fetches(&self) -> u64 {
        self.cache().fetches
    }

    /// Validates `token`: the user name and how it was checked, or why it is refused.
    pub fn inspect(&self, token: &str) -> Result<Accepted, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Rejected("the token is empty".into()));
        }
        if token.len() > MAX_TOKEN_OCTETS {
            return Err(TokenError::Rejected(format!(
                "the token is longer than {MAX_TOKEN_OCTETS} octets"
            )));
        }
        if let Some(header) = jwt_header(token) {
            return self.check_jwt(token, &header);
        }
        let Some(introspection) = &self.introspection else {
            return Err(TokenError::Rejected(
                "not a JWT, and no introspection endpoint is configured".into(),
            ));
        };
        let now = jsonwebtoken::get_current_timestamp();
        let claims = introspection.introspect(
            token,
            &self.http,
            &self.limits,
            &self.issuer,
            &self.audiences,
            now,
        )?;
        // RFC 7662 section 2.2 names the owner `username`; the configured claim comes first.
        let username = name_in(&claims, &self.claim)
            .or_else(|| name_in(&claims, "username"))
            .ok_or_else(|| {
                TokenError::Rejected(format!(
                    "introspection: the answer has no {:?} or \"username\"",
                    self.claim
                ))
            })?;
        Ok(Accepted {
            username,
            via: "introspection".into(),
            expires: claims.get("exp").and_then(Value::as_u64),
        })
    }

    fn check_jwt(&self, token: &str, header: &Map<String, Value>) -> Result<Accepted, TokenError> {
        let reject = |m: String| Err(TokenError::Rejected(m));
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg_name.eq_ignore_ascii_case("none") || alg_name.is_empty() {
            return reject("an unsigned token (alg none)".into());
        }
        if alg_name.starts_with("HS") {
            return reject(format!(
                "the HMAC algorithm {alg_name} is refused: the issuer's keys are asymmetric"
            ));
        }
        let alg: Algorithm = match serde_json::from_value(Value::String(alg_name.into())) {
            Ok(alg) if provider::ALLOWED.contains(&alg) => alg,
            _ => return reject(format!("the algorithm {alg_name:?} is not allowed")),
        };
        let kid = header.get("kid").and_then(Value::as_str);
        let lookup = self
            .cache()
            .lookup(kid, &self.http, &self.limits)
            .map_err(TokenError::Unavailable)?;
        let keys = match lookup {
            jwks::Lookup::Keys(keys) => keys,
            jwks::Lookup::UnknownKid => {
                return reject(format!(
                    "no key {:?} in the issuer's JWKS",
                    kid.unwrap_or("")
                ))
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut refusal = format!("no key in the issuer's JWKS fits {alg_name}");
        for key in keys.iter().filter(|k| k.fits(alg)) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    let username = self.username(&data.claims)?;
                    return Ok(Accepted {
                        username,
                        via: format!("JWT {alg_name}, key {:?}", key.kid.as_deref().unwrap_or("")),
                        expires: data.claims.get("exp").and_then(Value::as_u64),
                    });
                }
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {
                    refusal = "the signature does not verify".into();
                }
                Err(e) => return reject(explain(e.kind())),
            }
        }
        reject(refusal)
    }

    /// The configured claim as a user name.
    fn username(&self, claims: &Map<String, Value>) -> Result<String, TokenError> {
        name_in(claims, &self.claim).ok_or_else(|| {
            TokenError::Rejected(format!("the token has no string claim {:?}", self.claim))
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, jwks::Cache> {
        self.jwks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BearerValidator for Validator {
    fn validate(&self, token: &str) -> Result<String, TokenError> {
        self.inspect(token).map(|a| a.username)
    }

    fn error_json(&self) -> String {
        self.error_json.clone()
    }
}

/// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 section 4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The scope RFC 7628 section 3.2.2's error names: what a client asks for to get a token
/// carrying `claim`.
fn scope_for(claim: &str) -> &'static str {
    match claim {
        "email" => "openid email",
        "preferred_username" | "name" => "openid profile",
        _ => "openid",
    }
}

/// A non-empty string claim without control characters.
fn name_in(claims: &Map<String, Value>, claim: &str) -> Option<String> {
    claims
        .get(claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
        .map(str::to_owned)
}

/// The header of a compact JWS (three base64url parts, the first a JSON object with an
/// `alg`), or `None` for anything else (an opaque token).
fn jwt_header(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let header = parts.next()?;
    if parts.clone().count() != 2 {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let map: Map<String, Value> = serde_json::from_slice(&json).ok()?;
    map.contains_key("alg").then_some(map)
}

/// Why jsonwebtoken refused a token whose signature held, in words for the log.
fn explain(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired (exp)".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)".into(),
        ErrorKind::InvalidAudience => "the token is not for this audience (aud)".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c:?} claim"),
        ErrorKind::InvalidAlgorithm => "the key does not fit the token's algorithm".into(),
        other => format!("a malformed token: {other:?}"),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
