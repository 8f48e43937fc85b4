//! OAuth 2.0 bearer tokens (OAUTHBEARER, RFC 7628; XOAUTH2): the seam between the SASL
//! exchange, which only carries a token, and whatever validates it (a JWKS or an RFC 7662
//! introspection endpoint), which lives outside this crate because it does network I/O.

use std::fmt;

/// Validates bearer tokens. Implementations may block (network fetches): callers on an async
/// runtime run [`BearerValidator::validate`] on a blocking thread.
pub trait BearerValidator: Send + Sync + 'static {
    /// The user name the token's configured claim carries, or why it is refused. Whether an
    /// account of that name exists is the caller's check.
    fn validate(&self, token: &str) -> Result<String, TokenError>;
    /// The RFC 7628 section 3.2.2 error document sent in the failure continuation
    /// (`{"status":"invalid_token","scope":...,"openid-configuration":...}`).
    fn error_json(&self) -> String;
}

/// Why a token was not accepted. Never carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is bad (signature, issuer, audience, expiry, no such claim...): `[AUTH]`.
    #[error("token refused: {0}")]
    Rejected(String),
    /// The validator could not decide (identity provider or JWKS unreachable): `[SYS/TEMP]`.
    #[error("token validation unavailable: {0}")]
    Unavailable(String),
}

impl fmt::Debug for dyn BearerValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerValidator")
    }
}
