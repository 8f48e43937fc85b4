//! RFC 7662 token introspection, for opaque (non-JWT) tokens: the token is POSTed to the
//! endpoint with this server's client credentials (HTTP Basic, RFC 6749 section 2.3.1), and
//! the answer's `active`, then `iss`, `aud` and `exp` when present, decide.

use auth::TokenError;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::http::Http;
use crate::{Limits, LEEWAY_SECS};

pub struct Introspection {
    pub url: String,
    /// `Basic base64(urlencode(id):urlencode(secret))`.
    basic: String,
}

impl Introspection {
    pub fn new(url: String, client_id: &str, secret: &str) -> Introspection {
        let credentials = format!("{}:{}", form_encode(client_id), form_encode(secret));
        Introspection {
            url,
            basic: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
        }
    }

    /// The endpoint's claims for an active token whose `iss`, `aud` and `exp` (when present)
    /// fit; `active: false` and misfits are `Rejected`, an unreachable endpoint `Unavailable`.
    pub fn introspect(
        &self,
        token: &str,
        http: &Http,
        limits: &Limits,
        issuer: &str,
        audiences: &[String],
        now: u64,
    ) -> Result<Map<String, Value>, TokenError> {
        let form = [("token", token), ("token_type_hint", "access_token")];
        let fetched = http
            .post_form(&self.url, &self.basic, &form, limits.max_jwks_octets)
            .map_err(TokenError::Unavailable)?;
        let claims: Map<String, Value> = serde_json::from_slice(&fetched.body).map_err(|e| {
            TokenError::Unavailable(format!("{}: not an introspection answer: {e}", self.url))
        })?;
        let reject = |m: &str| Err(TokenError::Rejected(format!("introspection: {m}")));
        if claims.get("active") != Some(&Value::Bool(true)) {
            return reject("the token is not active");
        }
        if let Some(iss) = claims.get("iss") {
            if iss.as_str() != Some(issuer) {
                return reject("issued by another issuer");
            }
        }
        if let Some(aud) = claims.get("aud") {
            let listed = match aud {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !listed.iter().any(|a| audiences.iter().any(|b| b == a)) {
                return reject("not for this audience");
            }
        }
        if let Some(exp) = claims.get("exp") {
            if exp.as_u64().is_none_or(|exp| exp + LEEWAY_SECS < now) {
                return reject("the token has expired");
            }
        }
        Ok(claims)
    }
}

/// application/x-www-form-urlencoded, as RFC 6749 section 2.3.1 wants for Basic credentials.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_rfc6749_2_3_1() {
        let i = Introspection::new("https://idp/i".into(), "pop 3", "s:e/cr+t");
        let b64 = i.basic.strip_prefix("Basic ").expect("basic");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(decoded, b"pop+3:s%3Ae%2Fcr%2Bt");
    }
}
