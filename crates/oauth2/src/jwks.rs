//! The issuer's signing keys: a JWKS (RFC 7517) parsed into verification keys, and the cache
//! that keeps it. Invariants: the document is at most [`Limits::max_jwks_octets`] and
//! [`Limits::max_keys`] keys, or it is refused whole; only signature keys of the asymmetric
//! families are kept (a symmetric `oct` key is never used, RFC 8725 section 2.1); the set is
//! kept for its Cache-Control max-age clamped to [`Limits::min_ttl`]..[`Limits::max_ttl`]; an
//! unknown `kid` fetches the set again at most once per [`Limits::refetch_interval`]; after a
//! failed fetch none is tried for [`Limits::retry_after`], and keys past their time are used
//! for up to [`Limits::stale_grace`] more while the issuer cannot be reached.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::http::Http;
use crate::Limits;

/// One verification key of the set.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: a token must then use exactly that.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl Key {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// Parses a JWKS, keeping the usable signature keys; errors say why the document is refused.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not a key set: {e}"))?;
    if set.keys.len() > limits.max_keys {
        return Err(format!(
            "the JWKS has {} keys, more than {}",
            set.keys.len(),
            limits.max_keys
        ));
    }
    Ok(set.keys.into_iter().filter_map(usable).collect())
}

/// A signature key of an allowed family, or `None` (encryption keys, `oct` secrets, curves
/// ring cannot verify, keys jsonwebtoken cannot read).
fn usable(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {}
        AlgorithmParameters::EllipticCurve(p)
            if matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) => {}
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {}
        _ => return None,
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if key.family() == AlgorithmFamily::Hmac {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id,
        alg,
        key,
    })
}

/// Where the set comes from: a configured URL, or the issuer's discovery document.
pub enum Source {
    Url(String),
    Discovery { document: String, issuer: String },
}

/// The cached set (see the module's invariants).
pub struct Cache {
    source: Source,
    /// The JWKS URL, once discovered.
    url: Option<String>,
    keys: Vec<Key>,
    /// When the keys were fetched, and how long they are good.
    fetched: Option<(Instant, Duration)>,
    /// The last fetch attempt, and whether it failed.
    last_attempt: Option<(Instant, bool)>,
    /// How many times the set was fetched (tests and `popadm oauth2 check`).
    pub fetches: u64,
}

/// What a lookup found.
pub enum Lookup {
    Keys(Vec<Key>),
    /// The set has no key of that `kid` (after a refetch, or with the refetch rate-limited).
    UnknownKid,
}

impl Cache {
    pub fn new(source: Source) -> Cache {
        let url = match &source {
            Source::Url(u) => Some(u.clone()),
            Source::Discovery { .. } => None,
        };
        Cache {
            source,
            url,
            keys: Vec::new(),
            fetched: None,
            last_attempt: None,
            fetches: 0,
        }
    }

    /// The keys a token with `kid` (or none) may be checked with, fetching the set when it is
    /// missing, expired or lacks `kid`. `Err`: the issuer could not be reached and no keys
    /// are usable (`TokenError::Unavailable`).
    pub fn lookup(
        &mut self,
        kid: Option<&str>,
        http: &Http,
        limits: &Limits,
    ) -> Result<Lookup, String> {
        let now = Instant::now();
        let age = self.fetched.map(|(at, ttl)| (now.duration_since(at), ttl));
        let fresh = age.is_some_and(|(age, ttl)| age < ttl);
        let usable_stale = age.is_some_and(|(age, ttl)| age < ttl + limits.stale_grace);
        if !fresh {
            if let Err(e) = self.refresh(http, limits, now) {
                if !usable_stale {
                    return Err(e);
                }
            }
        }
        // A key without a kid may have signed any token (some issuers publish none).
        let matching = |keys: &[Key]| -> Vec<Key> {
            keys.iter()
                .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
                .cloned()
                .collect()
        };
        let found = matching(&self.keys);
        if !found.is_empty() || kid.is_none() {
            return Ok(Lookup::Keys(found));
        }
        // An unknown kid: the issuer may have rotated its keys. Fetch again, rate-limited so
        // that tokens with invented kids cannot make this server hammer the issuer.
        let recent = self
            .last_attempt
            .is_some_and(|(at, _)| now.duration_since(at) < limits.refetch_interval);
        if recent {
            return Ok(Lookup::UnknownKid);
        }
        self.refresh(http, limits, now)?;
        let found = matching(&self.keys);
        Ok(if found.is_empty() {
            Lookup::UnknownKid
        } else {
            Lookup::Keys(found)
        })
    }

    fn refresh(&mut self, http: &Http, limits: &Limits, now: Instant) -> Result<(), String> {
        if let Some((at, true)) = self.last_attempt {
            if now.duration_since(at) < limits.retry_after {
                return Err("the JWKS could not be fetched a moment ago; not retried yet".into());
            }
        }
        let result = self.fetch(http, limits);
        self.last_attempt = Some((now, result.is_err()));
        let (keys, max_age) = result?;
        self.fetches += 1;
        self.keys = keys;
        let ttl = max_age
            .unwrap_or(limits.default_ttl)
            .clamp(limits.min_ttl, limits.max_ttl);
        self.fetched = Some((now, ttl));
        Ok(())
    }

    fn fetch(
        &mut self,
        http: &Http,
        limits: &Limits,
    ) -> Result<(Vec<Key>, Option<Duration>), String> {
        let url = match (&self.url, &self.source) {
            (Some(url), _) => url.clone(),
            (None, Source::Url(url)) => url.clone(),
            (None, Source::Discovery { document, issuer }) => {
                let url = discover(http, document, issuer, limits)?;
                self.url = Some(url.clone());
                url
            }
        };
        let fetched = http.get(&url, limits.max_jwks_octets)?;
        let keys = parse(&fetched.body, limits)?;
        if keys.is_empty() {
            return Err(format!("the JWKS at {url} has no usable signature key"));
        }
        Ok((keys, fetched.max_age))
    }
}

/// The `jwks_uri` of the discovery document (OpenID Connect Discovery 1.0 section 4), whose
/// `issuer` must be the configured one (section 4.3).
fn discover(http: &Http, document: &str, issuer: &str, limits: &Limits) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let fetched = http.get(document, limits.max_jwks_octets)?;
    let d: Discovery = serde_json::from_slice(&fetched.body)
        .map_err(|e| format!("{document}: not a discovery document: {e}"))?;
    if d.issuer != issuer {
        return Err(format!(
            "{document} names the issuer {:?}, not the configured {issuer:?}",
            d.issuer
        ));
    }
    if !d.jwks_uri.starts_with("https://") {
        return Err(format!(
            "{document}: jwks_uri {:?} is not https",
            d.jwks_uri
        ));
    }
    Ok(d.jwks_uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_signature_keys_are_kept() {
        let body = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","alg":"RSA-OAEP","n":"xjlCRBqkOZA","e":"AQAB"},
            {"kty":"RSA","kid":"r","use":"sig","alg":"RS256","n":"xjlCRBqkOZA","e":"AQAB"},
            {"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"},
            {"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"weird"}
        ]}"#;
        let keys = parse(body, &Limits::default()).expect("set");
        let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["r", "ed"]);
        assert!(keys[0].fits(Algorithm::RS256));
        assert!(!keys[0].fits(Algorithm::PS256), "the JWK's alg pins it");
        assert!(keys[1].fits(Algorithm::EdDSA));
        assert!(!keys[1].fits(Algorithm::ES256));
    }

    #[test]
    fn too_many_keys_refuse_the_set() {
        let key = r#"{"kty":"RSA","n":"xjlCRBqkOZA","e":"AQAB"}"#;
        let limits = Limits::default();
        let body = format!(
            "{{\"keys\":[{}]}}",
            vec![key; limits.max_keys + 1].join(",")
        );
        let err = parse(body.as_bytes(), &limits).err().expect("refused");
        assert!(err.contains("more than"), "{err}");
    }
}
