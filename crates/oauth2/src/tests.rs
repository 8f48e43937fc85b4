//! The validator against the test issuer (HTTPS on loopback, keys made here): every check of
//! RFC 8725 (JWT best practice), RFC 7519 section 4.1 (`iss`, `aud`, `exp`, `nbf`), the JWKS
//! cache and RFC 7662 introspection.

use std::time::Duration;

use auth::{BearerValidator, TokenError};
use serde_json::{json, Value};

use crate::test_issuer::{self, now, SigningKey, TestIssuer, AUDIENCE, CLIENT_ID};
use crate::{Limits, Settings, Validator};

struct Fixture {
    issuer: TestIssuer,
    dir: std::path::PathBuf,
    _temp: testbed::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(TestIssuer::start())
    }

    fn with(issuer: TestIssuer) -> Fixture {
        let temp = testbed::TempDir::new("oauth2");
        Fixture {
            issuer,
            dir: temp.path().to_owned(),
            _temp: temp,
        }
    }

    fn settings(&self) -> Settings {
        self.issuer.settings(&self.issuer.write_ca(&self.dir))
    }

    fn validator(&self) -> Validator {
        Validator::new(&self.settings()).expect("validator")
    }

    fn validator_with(&self, settings: &Settings, limits: Limits) -> Validator {
        Validator::with_limits(settings, limits).expect("validator")
    }
}

/// A refusal, checked to be `Rejected` and not to quote the token.
#[track_caller]
fn rejected(v: &Validator, token: &str) -> String {
    match v.validate(token) {
        Err(TokenError::Rejected(reason)) => {
            assert!(
                token.is_empty() || !reason.contains(token),
                "the reason quotes the token"
            );
            reason
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

#[test]
fn a_valid_token_gives_its_email_claim() {
    let f = Fixture::new();
    let v = f.validator();
    let token = f.issuer.token(&f.issuer.claims("alice@example.org"));
    assert_eq!(v.validate(&token), Ok("alice@example.org".into()));
    let accepted = v.inspect(&token).expect("accepted");
    assert_eq!(accepted.via, "JWT RS256, key \"rsa-1\"");
    assert!(accepted.expires.is_some());
    // The discovery document was read once, the JWKS fetched once.
    assert_eq!(f.issuer.requests(test_issuer::DISCOVERY_PATH), 1);
    assert_eq!(v.jwks_fetches(), 1);
}

#[test]
fn the_username_claim_is_configurable() {
    let f = Fixture::new();
    let token = f.issuer.token(&f.issuer.claims("bob@example.org"));
    for (claim, expected) in [
        ("preferred_username", "bob"),
        ("sub", "sub-bob@example.org"),
    ] {
        let settings = Settings {
            username_claim: Some(claim.into()),
            ..f.settings()
        };
        let v = f.validator_with(&settings, Limits::default());
        assert_eq!(v.validate(&token), Ok(expected.into()), "{claim}");
    }
    let settings = Settings {
        username_claim: Some("upn".into()),
        ..f.settings()
    };
    let v = f.validator_with(&settings, Limits::default());
    assert!(rejected(&v, &token).contains("upn"));
}

/// RFC 7519 section 4.1.4, with the 60 s leeway for clock skew.
#[test]
fn expired_tokens_are_refused_beyond_the_leeway() {
    let f = Fixture::new();
    let v = f.validator();
    let claims = f.issuer.claims("alice@example.org");
    let old = with(
        claims.clone(),
        json!({"exp": now() - 120, "nbf": now() - 600}),
    );
    assert!(rejected(&v, &f.issuer.token(&old)).contains("expired"));
    let skewed = with(claims.clone(), json!({"exp": now() - 20}));
    assert!(v.validate(&f.issuer.token(&skewed)).is_ok());
    let no_exp = with(claims, json!({"exp": null}));
    assert!(rejected(&v, &f.issuer.token(&no_exp)).contains("exp"));
}

/// RFC 7519 section 4.1.5.
#[test]
fn tokens_not_yet_valid_are_refused() {
    let f = Fixture::new();
    let v = f.validator();
    let early = with(
        f.issuer.claims("alice@example.org"),
        json!({"nbf": now() + 600}),
    );
    assert!(rejected(&v, &f.issuer.token(&early)).contains("not valid yet"));
}

/// RFC 7519 sections 4.1.1 and 4.1.3.
#[test]
fn issuer_and_audience_must_match() {
    let f = Fixture::new();
    let v = f.validator();
    let claims = f.issuer.claims("alice@example.org");
    let other_iss = with(
        claims.clone(),
        json!({"iss": "https://evil.example/realms/test"}),
    );
    assert!(rejected(&v, &f.issuer.token(&other_iss)).contains("issuer"));
    let other_aud = with(claims.clone(), json!({"aud": "webmail"}));
    assert!(rejected(&v, &f.issuer.token(&other_aud)).contains("audience"));
    // An array with one of the audiences is fine.
    let listed = with(claims.clone(), json!({"aud": ["webmail", AUDIENCE]}));
    assert!(v.validate(&f.issuer.token(&listed)).is_ok());
    // Several configured audiences: one match suffices.
    let settings = Settings {
        audience: vec!["other".into(), "webmail".into()],
        ..f.settings()
    };
    let v = f.validator_with(&settings, Limits::default());
    assert!(v.validate(&f.issuer.token(&other_aud)).is_ok());
    assert!(rejected(&v, &f.issuer.token(&claims)).contains("audience"));
}

/// RFC 8725 section 2.1: an unsigned token is never accepted.
#[test]
fn alg_none_is_refused() {
    let f = Fixture::new();
    let v = f.validator();
    let claims = f.issuer.claims("alice@example.org");
    assert!(rejected(&v, &test_issuer::unsigned(&claims)).contains("alg none"));
    // With a signature part and a kid too.
    let forged = format!("{}{}", test_issuer::unsigned(&claims), "c2lnbmF0dXJl");
    rejected(&v, &forged);
}

/// RFC 8725 section 2.1 (algorithm confusion): an HS256 token whose HMAC key is the issuer's
/// RSA public key, in every form an attacker would try, is refused.
#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let f = Fixture::new();
    let v = f.validator();
    // Warm the cache, so a failure cannot come from fetching.
    let claims = f.issuer.claims("alice@example.org");
    assert!(v.validate(&f.issuer.token(&claims)).is_ok());
    let key = f.issuer.current();
    let forms = key.rsa_public_forms();
    assert_eq!(forms.len(), 2);
    for secret in forms {
        for header in [
            json!({"alg": "HS256", "typ": "JWT"}),
            json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"}),
        ] {
            let forged = test_issuer::sign_hs256(&secret, &header, &claims);
            assert!(rejected(&v, &forged).contains("HMAC"));
        }
    }
    // Other spellings of the algorithm fail too.
    for alg in ["hs256", "HS512", "RS1", "ES512", ""] {
        let forged = test_issuer::sign_hs256(b"k", &json!({"alg": alg}), &claims);
        rejected(&v, &forged);
    }
}

#[test]
fn a_bad_signature_is_refused() {
    let f = Fixture::new();
    let v = f.validator();
    let claims = f.issuer.claims("alice@example.org");
    // Another key under the published kid.
    let impostor = SigningKey::ec("rsa-1");
    let forged = impostor.sign(&json!({"alg": "ES256", "kid": "rsa-1"}), &claims);
    rejected(&v, &forged);
    let other_rsa = SigningKey::rsa("rsa-1");
    let forged = other_rsa.sign(&json!({"alg": "RS256", "kid": "rsa-1"}), &claims);
    assert!(rejected(&v, &forged).contains("signature"));
    // A changed payload under a good signature.
    let good = f.issuer.token(&claims);
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = f
        .issuer
        .token(&with(claims, json!({"email": "root@example.org"})));
    parts[1] = evil.split('.').nth(1).expect("payload");
    assert!(rejected(&v, &parts.join(".")).contains("signature"));
}

#[test]
fn es256_and_eddsa_issuers_work() {
    for key in [SigningKey::ec("ec-1"), SigningKey::ed25519("ed-1")] {
        let alg = key.alg;
        let f = Fixture::with(TestIssuer::start_with(key));
        let v = f.validator();
        let token = f.issuer.token(&f.issuer.claims("carol@example.org"));
        assert_eq!(v.validate(&token), Ok("carol@example.org".into()), "{alg}");
    }
}

/// A token signed with a key the cached JWKS does not have makes one refetch (the issuer
/// rotated its keys); invented kids do not make a refetch each.
#[test]
fn an_unknown_kid_refetches_once_then_rotation_works() {
    let f = Fixture::new();
    let v = f.validator();
    let claims = f.issuer.claims("alice@example.org");
    assert!(v.validate(&f.issuer.token(&claims)).is_ok());
    assert_eq!(v.jwks_fetches(), 1);
    f.issuer.rotate_to(SigningKey::ec("ec-2"));
    let rotated = f.issuer.token(&claims);
    // The refetch for an unknown kid is rate-limited: right after the first fetch, none.
    assert!(rejected(&v, &rotated).contains("ec-2"));
    assert_eq!(v.jwks_fetches(), 1);

    let limits = Limits {
        refetch_interval: Duration::ZERO,
        ..Limits::default()
    };
    let v = f.validator_with(&f.settings(), limits);
    let old_key = f.issuer.token(&claims);
    assert!(v.validate(&old_key).is_ok());
    assert_eq!(v.jwks_fetches(), 1);
    f.issuer.rotate_to(SigningKey::ed25519("ed-3"));
    let rotated = f.issuer.token(&claims);
    assert_eq!(v.validate(&rotated), Ok("alice@example.org".into()));
    assert_eq!(v.jwks_fetches(), 2, "one refetch for the new kid");
    let bogus = SigningKey::ec("nobody").sign(&json!({"alg": "ES256", "kid": "nobody"}), &claims);
    assert!(rejected(&v, &bogus).contains("nobody"));
    assert_eq!(v.jwks_fetches(), 3);
}

/// The JWKS is kept for its Cache-Control max-age, within the floor and the ceiling.
#[test]
fn the_jwks_is_cached_by_max_age() {
    let f = Fixture::new();
    let token = f.issuer.token(&f.issuer.claims("alice@example.org"));
    let v = f.validator();
    for _ in 0..3 {
        assert!(v.validate(&token).is_ok());
    }
    assert_eq!(v.jwks_fetches(), 1);
    // max-age=0 with no floor: every validation fetches.
    f.issuer.set_cache_control("no-cache");
    let limits = Limits {
        min_ttl: Duration::ZERO,
        ..Limits::default()
    };
    let v = f.validator_with(&f.settings(), limits.clone());
    for _ in 0..3 {
        assert!(v.validate(&token).is_ok());
    }
    assert_eq!(v.jwks_fetches(), 3);
    // The floor holds even so.
    let v = f.validator_with(
        &f.settings(),
        Limits {
            min_ttl: Duration::from_secs(60),
            ..limits
        },
    );
    for _ in 0..3 {
        assert!(v.validate(&token).is_ok());
    }
    assert_eq!(v.jwks_fetches(), 1);
}

/// An issuer that cannot be reached is `Unavailable` (`[SYS/TEMP]`), not a refusal; so is
/// one whose certificate is not from the configured CA.
#[test]
fn an_unreachable_jwks_is_unavailable() {
    let mut f = Fixture::new();
    let token = f.issuer.token(&f.issuer.claims("alice@example.org"));
    let untrusting = Settings {
        ca_file: None,
        ..f.settings()
    };
    let v = f.validator_with(&untrusting, Limits::default());
    assert!(matches!(
        v.validate(&token),
        Err(TokenError::Unavailable(_))
    ));
    let v = f.validator();
    f.issuer.stop();
    match v.validate(&token) {
        Err(TokenError::Unavailable(reason)) => assert!(!reason.contains(&token)),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Not retried at once: the next answer comes without a connection attempt.
    assert!(
        matches!(v.validate(&token), Err(TokenError::Unavailable(r)) if r.contains("not retried"))
    );
}

/// Fetched keys serve on while the issuer is down, for the grace period.
#[test]
fn expired_keys_serve_while_the_issuer_is_down() {
    let mut f = Fixture::new();
    let token = f.issuer.token(&f.issuer.claims("alice@example.org"));
    f.issuer.set_cache_control("no-store");
    let limits = Limits {
        min_ttl: Duration::ZERO,
        ..Limits::default()
    };
    let v = f.validator_with(&f.settings(), limits);
    assert!(v.validate(&token).is_ok());
    f.issuer.stop();
    assert!(v.validate(&token).is_ok());
    let v = f.validator_with(
        &f.settings(),
        Limits {
            min_ttl: Duration::ZERO,
            stale_grace: Duration::ZERO,
            ..Limits::default()
        },
    );
    assert!(matches!(
        v.validate(&token),
        Err(TokenError::Unavailable(_))
    ));
}

/// The JWKS is bounded in size and in keys: a larger one is refused whole.
#[test]
fn an_oversized_jwks_is_refused() {
    let f = Fixture::new();
    let token = f.issuer.token(&f.issuer.claims("alice@example.org"));
    let huge = format!(
        "{{\"keys\":[],\"padding\":\"{}\"}}",
        "x".repeat(Limits::default().max_jwks_octets as usize)
    );
    f.issuer.set_jwks(Some(huge));
    let v = f.validator();
    match v.validate(&token) {
        Err(TokenError::Unavailable(reason)) => assert!(reason.contains("larger"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let key = f.issuer.current().jwk();
    let many = json!({ "keys": vec![key; Limits::default().max_keys + 1] }).to_string();
    f.issuer.set_jwks(Some(many));
    let v = f.validator();
    match v.validate(&token) {
        Err(TokenError::Unavailable(reason)) => assert!(reason.contains("keys"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A configured JWKS URL is used as it is: no discovery.
#[test]
fn a_jwks_url_skips_discovery() {
    let f = Fixture::new();
    let settings = Settings {
        jwks_url: Some(f.issuer.jwks_url()),
        ..f.settings()
    };
    let v = f.validator_with(&settings, Limits::default());
    let token = f.issuer.token(&f.issuer.claims("alice@example.org"));
    assert!(v.validate(&token).is_ok());
    assert_eq!(f.issuer.requests(test_issuer::DISCOVERY_PATH), 0);
}

/// RFC 7662: an opaque token goes to the introspection endpoint; `active: false` refuses it.
#[test]
fn opaque_tokens_are_introspected() {
    let f = Fixture::new();
    let plain = f.validator();
    assert!(rejected(&plain, "opaque-token-1").contains("introspection"));
    let settings = Settings {
        introspection_url: Some(f.issuer.introspection_url()),
        client_id: Some(CLIENT_ID.into()),
        client_secret_file: Some(f.issuer.write_client_secret(&f.dir)),
        ..f.settings()
    };
    let v = f.validator_with(&settings, Limits::default());
    f.issuer.set_introspection(
        "opaque-token-1",
        json!({"active": true, "username": "dave", "email": "dave@example.org",
               "iss": f.issuer.issuer(), "aud": [AUDIENCE], "exp": now() + 300}),
    );
    assert_eq!(v.validate("opaque-token-1"), Ok("dave@example.org".into()));
    assert_eq!(
        v.inspect("opaque-token-1").expect("ok").via,
        "introspection"
    );
    // Unknown to the endpoint: {"active": false}.
    assert!(rejected(&v, "opaque-token-2").contains("not active"));
    f.issuer
        .set_introspection("opaque-token-3", json!({"active": false, "email": "x@y"}));
    assert!(rejected(&v, "opaque-token-3").contains("not active"));
    f.issuer.set_introspection(
        "opaque-token-4",
        json!({"active": true, "email": "e@example.org", "aud": "webmail"}),
    );
    assert!(rejected(&v, "opaque-token-4").contains("audience"));
    f.issuer.set_introspection(
        "opaque-token-5",
        json!({"active": true, "username": "erin"}),
    );
    assert_eq!(v.validate("opaque-token-5"), Ok("erin".into()));
    // A wrong client secret: the endpoint answers 401, which is no verdict on the token.
    std::fs::write(f.dir.join("client-secret"), "wrong").expect("write");
    let v = f.validator_with(&settings, Limits::default());
    assert!(matches!(
        v.validate("opaque-token-1"),
        Err(TokenError::Unavailable(_))
    ));
}

/// RFC 7628 section 3.2.2: the error document of the failure challenge.
#[test]
fn error_json_names_the_discovery_document() {
    let f = Fixture::new();
    let v = f.validator();
    let doc: Value = serde_json::from_str(&v.error_json()).expect("JSON");
    assert_eq!(doc["status"], "invalid_token");
    assert_eq!(doc["scope"], "openid email");
    assert_eq!(
        doc["openid-configuration"],
        format!("{}/.well-known/openid-configuration", f.issuer.issuer())
    );
}

#[test]
fn settings_errors_and_unreadable_files_are_reported() {
    let f = Fixture::new();
    let missing = Settings {
        ca_file: Some(f.dir.join("nope.pem")),
        ..f.settings()
    };
    let err = Validator::new(&missing).expect_err("missing CA file");
    assert!(err.to_string().contains("nope.pem"), "{err}");
    std::fs::write(f.dir.join("empty.pem"), "not a certificate").expect("write");
    let empty = Settings {
        ca_file: Some(f.dir.join("empty.pem")),
        ..f.settings()
    };
    assert!(Validator::new(&empty).is_err());
    let no_secret = Settings {
        introspection_url: Some(f.issuer.introspection_url()),
        client_id: Some(CLIENT_ID.into()),
        client_secret_file: Some(f.dir.join("no-secret")),
        ..f.settings()
    };
    assert!(Validator::new(&no_secret)
        .expect_err("missing secret")
        .to_string()
        .contains("no-secret"));
}

#[test]
fn oversized_and_empty_tokens_are_refused_unread() {
    let f = Fixture::new();
    let v = f.validator();
    rejected(&v, "");
    rejected(&v, &"a".repeat(crate::MAX_TOKEN_OCTETS + 1));
    assert_eq!(f.issuer.requests(test_issuer::DISCOVERY_PATH), 0);
}

/// A JWKS whose keys carry no `kid` still verifies tokens that name one (or none).
#[test]
fn keys_without_a_kid_verify_any_token() {
    let f = Fixture::new();
    let mut jwk = f.issuer.current().jwk();
    jwk.as_object_mut().expect("object").remove("kid");
    f.issuer
        .set_jwks(Some(json!({ "keys": [jwk] }).to_string()));
    let v = f.validator();
    let claims = f.issuer.claims("alice@example.org");
    assert!(v.validate(&f.issuer.token(&claims)).is_ok());
    let no_kid = f.issuer.current().sign(&json!({"alg": "RS256"}), &claims);
    assert!(v.validate(&no_kid).is_ok());
    assert_eq!(v.jwks_fetches(), 1);
}

/// `prefetch` fetches the keys (once; tokens then need no fetch), or says why it cannot.
#[test]
fn prefetch_fetches_the_keys_or_says_why_not() {
    let mut f = Fixture::new();
    let v = f.validator();
    assert_eq!(v.prefetch(), Ok(1));
    assert!(v
        .validate(&f.issuer.token(&f.issuer.claims("alice@example.org")))
        .is_ok());
    assert_eq!(v.jwks_fetches(), 1);
    let fresh = f.validator();
    f.issuer.stop();
    assert!(fresh.prefetch().is_err());
}
