//! AUTH (RFC 5034): the SASL exchange, its cancel, bad base64 and what a command line means
//! inside it.

use super::*;

/// RFC 5034 section 4: bare AUTH lists the mechanisms; AUTH PLAIN with an initial response
/// logs in at once (RFC 4616).
#[tokio::test]
async fn rfc5034_s4_auth_plain_with_initial_response() {
    let (_f, mut c) = started().await;
    let mechs = c.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert!(mechs.iter().any(|m| m == "PLAIN"), "{mechs:?}");
    assert!(
        !mechs.iter().any(|m| m == "CRAM-MD5"),
        "legacy off: {mechs:?}"
    );
    let plain = auth_plain("right");
    assert_eq!(c.cmd(&plain).await, full_login());
}

/// RFC 5034 section 4: AUTH LOGIN over two challenges; each response is one base64 line.
#[tokio::test]
async fn rfc5034_s4_auth_login_challenges_and_responses() {
    let (_f, mut c) = started().await;
    assert!(c.cmd("AUTH LOGIN").await.starts_with("+ "));
    assert!(c.cmd(&b64("alice")).await.starts_with("+ "));
    assert_eq!(c.cmd(&b64("right")).await, full_login());
}

/// RFC 5034 section 4: `*` cancels the exchange with `-ERR`, and the session is back in
/// AUTHORIZATION.
#[tokio::test]
async fn rfc5034_s4_star_cancels_the_exchange() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, refused(Text::AuthCancelled));
    c.login().await;
}

/// RFC 5034 section 4: a response that is not base64 ends the exchange with `-ERR`; so does
/// an initial response that is not.
#[tokio::test]
async fn rfc5034_s4_bad_base64_ends_the_exchange() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("not base64!").await, refused(Text::BadBase64));
    assert_eq!(
        c.cmd("AUTH PLAIN not-base64!").await,
        refused(Text::BadBase64)
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd(&b64("\0alice\0right")).await, full_login());
}

/// RFC 5034 section 4: an unknown mechanism is refused and the session goes on; a failed
/// exchange is `-ERR [AUTH]` (RFC 3206).
#[tokio::test]
async fn rfc5034_s4_unknown_mechanism_and_failed_exchange() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("AUTH FOO").await, refused(Text::UnknownMechanism));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(
        c.cmd(&b64("\0alice\0wrong")).await,
        err(reply::BAD_CREDENTIALS)
    );
    assert_eq!(c.cmd("AUTH LOGIN").await.get(..2), Some("+ "));
    c.cmd(&b64("nobody")).await;
    assert_eq!(c.cmd(&b64("right")).await, err(reply::BAD_CREDENTIALS));
    c.login().await;
}

/// RFC 5034 section 4: inside the exchange every line is a SASL response, whatever it looks
/// like: a command line there ends the exchange with `-ERR` (not base64, or a malformed
/// response) and is never run as a command.
#[tokio::test]
async fn rfc5034_s4_commands_inside_the_exchange_are_responses() {
    let (_f, mut c) = started().await;
    let mut lines: Vec<&str> = TRANSACTION_COMMANDS.to_vec();
    lines.extend([
        "USER alice",
        "PASS right",
        "APOP alice 0",
        "AUTH PLAIN",
        "STLS",
        "UTF8",
        "LANG",
        "CAPA",
        "QUIT",
    ]);
    for line in lines {
        assert_eq!(c.cmd("AUTH PLAIN").await, "+ ", "{line}");
        let reply = c.cmd(line).await;
        assert!(
            reply == refused(Text::BadBase64) || reply == err(reply::BAD_CREDENTIALS),
            "{line}: {reply}"
        );
    }
    c.login().await;
}

/// RFC 5034 section 4: a response line longer than the SASL line limit ends the exchange as
/// a bad command; the session reads commands again.
#[tokio::test]
async fn rfc5034_s4_overlong_response_ends_the_exchange() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    let long = "A".repeat(SASL_MAX_LINE + 10);
    assert_eq!(c.cmd(&long).await, refused(Text::LineTooLong));
    c.login().await;
}

/// HMAC-MD5 (RFC 2104) of `message` under a key shorter than MD5's 64-octet block.
fn hmac_md5(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let inner = Md5::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    let outer = Md5::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 2195 through RFC 5034: CRAM-MD5 (offered with legacy authentication) asks the store
/// for the account's secret in the middle of the exchange (`Step::NeedCredentials`); the
/// right digest logs in, a wrong one or an unknown user is `-ERR [AUTH]`.
#[tokio::test]
async fn rfc2195_cram_md5_fetches_the_secret_mid_exchange() {
    let f = Fixture::tuned(|c| c.legacy_auth = true);
    let mut c = f.connect().await;
    let mechs = c.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert!(mechs.iter().any(|m| m == "CRAM-MD5"), "{mechs:?}");
    for (user, key, reply) in [
        ("nobody", PASSWORD, err(reply::BAD_CREDENTIALS)),
        ("alice", "wrong", err(reply::BAD_CREDENTIALS)),
        ("alice", PASSWORD, full_login()),
    ] {
        let challenge = c.cmd("AUTH CRAM-MD5").await;
        let challenge = B64
            .decode(challenge.strip_prefix("+ ").expect("a challenge"))
            .expect("base64");
        assert!(challenge.ends_with(b"@pop.test>"), "{challenge:?}");
        let digest = hmac_md5(key.as_bytes(), &challenge);
        assert_eq!(
            c.cmd(&b64(&format!("{user} {digest}"))).await,
            reply,
            "{user}"
        );
    }
}

/// A Kerberos stand-in: one context token `ticket`, then "no security layer" wrapped as
/// `[...]`; the client is alice of realm POP.TEST, the service's realm is `realm`.
#[derive(Debug)]
struct FakeKerberos {
    available: bool,
    realm: &'static str,
}

struct FakeContext {
    realm: &'static str,
}

impl auth::GssAcceptorFactory for FakeKerberos {
    fn acceptor(&self) -> Result<Box<dyn auth::GssAcceptor>, String> {
        if self.available {
            Ok(Box::new(FakeContext { realm: self.realm }))
        } else {
            Err("no keytab".into())
        }
    }
}

impl auth::GssAcceptor for FakeContext {
    fn step(&mut self, token: &[u8]) -> Result<(Vec<u8>, bool), String> {
        (token == b"ticket")
            .then(|| (Vec::new(), true))
            .ok_or_else(|| "not a ticket".into())
    }
    fn wrap(&mut self, message: &[u8]) -> Result<Vec<u8>, String> {
        Ok([b"[", message, b"]"].concat())
    }
    fn unwrap(&mut self, message: &[u8]) -> Result<Vec<u8>, String> {
        let inner = message
            .strip_prefix(b"[")
            .and_then(|m| m.strip_suffix(b"]"));
        inner
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "not wrapped".into())
    }
    fn client_name(&mut self) -> Result<String, String> {
        Ok("alice@POP.TEST".into())
    }
    fn service_realm(&mut self) -> Result<String, String> {
        Ok(self.realm.into())
    }
}

/// RFC 4752 through RFC 5034, on a KPOP listener (Kerberos only): AUTH GSSAPI names the user
/// only at its end (`Step::Success`), when the session looks the account up; a bad token is
/// `-ERR [AUTH]`; an acceptor that cannot start (no keytab) is `-ERR [SYS/TEMP]`.
#[tokio::test]
async fn rfc4752_gssapi_names_the_user_at_the_end() {
    let kerberos = |available| {
        Fixture::tuned(|c| {
            c.gssapi = Some(Arc::new(FakeKerberos {
                available,
                realm: "POP.TEST",
            }));
        })
    };
    let kpop = ListenerInfo {
        kind: ListenerKind::Kpop,
        ..plain()
    };
    let f = kerberos(true);
    let mut c = f.connect_as(kpop, LOOPBACK).await;
    assert_eq!(
        c.multi("AUTH", &ok(Text::MechanismsFollow)).await,
        ["GSSAPI"]
    );
    let junk = b64("junk");
    assert_eq!(
        c.cmd(&format!("AUTH GSSAPI {junk}")).await,
        err(reply::BAD_CREDENTIALS)
    );
    let ticket = b64("ticket");
    let offer = c.cmd(&format!("AUTH GSSAPI {ticket}")).await;
    assert_eq!(offer, format!("+ {}", b64("[\u{1}\0\0\0]")));
    assert_eq!(c.cmd(&b64("[\u{1}\0\0\0]")).await, full_login());

    let f = kerberos(false);
    let mut c = f.connect_as(kpop, LOOPBACK).await;
    let unavailable = err(ErrReply {
        code: Some(ResponseCode::SysTemp),
        text: Text::TempFailure,
    });
    assert_eq!(c.cmd(&format!("AUTH GSSAPI {ticket}")).await, unavailable);
}

/// Issue 15: a principal of a realm other than the service's (a cross-realm trust) does not
/// log in as the local user of that name, unless its realm is in `gssapi_realms`.
#[tokio::test]
async fn rfc4752_gssapi_principal_of_another_realm_is_refused() {
    let kpop = ListenerInfo {
        kind: ListenerKind::Kpop,
        ..plain()
    };
    let ticket = b64("ticket");
    let layer = b64("[\u{1}\0\0\0]");
    for (realms, accepted) in [(vec![], false), (vec!["POP.TEST".to_string()], true)] {
        let f = Fixture::tuned(|c| {
            c.gssapi = Some(Arc::new(FakeKerberos {
                available: true,
                realm: "SERVICE.TEST",
            }));
            c.gssapi_realms = realms.clone();
        });
        let mut c = f.connect_as(kpop, LOOPBACK).await;
        assert!(c
            .cmd(&format!("AUTH GSSAPI {ticket}"))
            .await
            .starts_with("+ "));
        let reply = c.cmd(&layer).await;
        if accepted {
            assert_eq!(reply, full_login(), "{realms:?}");
        } else {
            assert_eq!(reply, err(reply::BAD_CREDENTIALS), "{realms:?}");
        }
    }
}

/// Issue 15, RFC 2595 section 2.2: SCRAM falls under the cleartext policy like PLAIN: before
/// TLS its salt and proof let a passive listener guess the password offline, so a remote
/// peer without TLS is not offered it (CAPA, bare AUTH) and is refused it; loopback is.
#[tokio::test]
async fn scram_is_not_offered_before_tls_where_cleartext_is_refused() {
    let f = Fixture::new();
    let mut remote = f.connect_as(plain(), REMOTE).await;
    let caps = remote.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(|c| c.contains("SCRAM")), "{caps:?}");
    let mechs = remote.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert!(!mechs.iter().any(|m| m.contains("SCRAM")), "{mechs:?}");
    assert_eq!(
        remote.cmd("AUTH SCRAM-SHA-256").await,
        err(reply::CLEARTEXT_REFUSED)
    );
    let mut local = f.connect_as(plain(), LOOPBACK).await;
    let caps = local.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(
        caps.iter()
            .any(|c| c.starts_with("SASL ") && c.contains("SCRAM-SHA-256")),
        "{caps:?}"
    );
}

/// Issue 15: SCRAM keys of another PBKDF2 count than `scram_iterations` are derived anew at
/// the next password login (RFC 5803 records carry the count).
#[tokio::test]
async fn scram_keys_are_rederived_at_a_password_login_when_the_count_changes() {
    let f = Fixture::tuned(|c| c.scram_iterations = 5000);
    let account = |f: &Fixture| {
        f.store
            .account(&name("alice"))
            .expect("read")
            .expect("alice")
    };
    let hash = account(&f).password_hash;
    let old = auth::derive_scram(PASSWORD.as_bytes(), 4096);
    assert!(f.store.add_scram_keys(f.alice, &hash, &old).expect("store"));
    let mut c = f.connect().await;
    c.login().await;
    let stored = account(&f).secrets.scram_sha256.expect("keys");
    let record = auth::scram::Record::parse(&stored).expect("record");
    assert_eq!(record.iterations, 5000);
    assert_ne!(stored, old);
}

/// A stand-in identity provider: `good-<user>` is a valid token for `<user>`, anything else
/// is refused; `down` makes every validation unavailable.
#[derive(Debug)]
struct FakeIdp {
    down: bool,
}

const IDP_ERROR: &str = r#"{"status":"invalid_token","scope":"pop"}"#;

impl auth::BearerValidator for FakeIdp {
    fn validate(&self, token: &str) -> Result<String, auth::TokenError> {
        if self.down {
            return Err(auth::TokenError::Unavailable("JWKS unreachable".into()));
        }
        token
            .strip_prefix("good-")
            .map(str::to_string)
            .ok_or_else(|| auth::TokenError::Rejected("bad signature".into()))
    }
    fn error_json(&self) -> String {
        IDP_ERROR.into()
    }
}

fn with_idp(down: bool) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| c.oauth2 = Some(Arc::new(FakeIdp { down }))
}

/// RFC 7628 section 3.1: OAUTHBEARER's client response (with an optional `a=` authzid).
fn oauthbearer(authzid: Option<&str>, token: &str) -> String {
    let a = authzid.map(|u| format!("a={u}")).unwrap_or_default();
    b64(&format!(
        "n,{a},\u{1}host=pop.test\u{1}port=110\u{1}auth=Bearer {token}\u{1}\u{1}"
    ))
}

/// XOAUTH2's client response.
fn xoauth2(user: &str, token: &str) -> String {
    b64(&format!("user={user}\u{1}auth=Bearer {token}\u{1}\u{1}"))
}

/// RFC 7628 section 3.2.2's failure: a continuation with the error document, the client's
/// `%x01`, then `-ERR [AUTH]`.
async fn refused_token(c: &mut Client, first: &str) {
    assert_eq!(
        c.cmd(first).await,
        format!("+ {}", b64(IDP_ERROR)),
        "{first}"
    );
    assert_eq!(c.cmd("AQ==").await, err(reply::BAD_CREDENTIALS));
}

/// RFC 7628 and XOAUTH2: a good token logs in, with the initial response or after the empty
/// challenge, validated by the configured validator.
#[tokio::test]
async fn rfc7628_oauthbearer_and_xoauth2_log_in_with_a_valid_token() {
    let f = Fixture::tuned(with_idp(false));
    let runs = [
        format!("AUTH OAUTHBEARER {}", oauthbearer(None, "good-alice")),
        format!(
            "AUTH OAUTHBEARER {}",
            oauthbearer(Some("alice"), "good-alice")
        ),
        format!("AUTH XOAUTH2 {}", xoauth2("alice", "good-alice")),
    ];
    for first in runs {
        let mut c = f.connect().await;
        assert_eq!(c.cmd(&first).await, full_login(), "{first}");
        c.cmd("QUIT").await;
    }
    for (mech, response) in [
        ("OAUTHBEARER", oauthbearer(None, "good-alice")),
        ("XOAUTH2", xoauth2("alice", "good-alice")),
    ] {
        let mut c = f.connect().await;
        assert_eq!(c.cmd(&format!("AUTH {mech}")).await, "+ ");
        assert_eq!(c.cmd(&response).await, full_login(), "{mech}");
        c.cmd("QUIT").await;
    }
}

/// RFC 7628 section 3.2.2: a refused token, a token for an unknown account, and a token for
/// another user than the authzid all fail the same way: the error document in a
/// continuation, the client's `%x01`, `-ERR [AUTH]`. Each counts as a failed login, and so
/// does cancelling (`*`, RFC 5034 section 4) after the error document.
#[tokio::test]
async fn rfc7628_s3_2_2_refused_tokens_get_the_error_document_then_auth() {
    let f = Fixture::tuned(|c| {
        with_idp(false)(c);
        c.max_auth_failures = 7;
    });
    let mut c = f.connect().await;
    for first in [
        format!("AUTH OAUTHBEARER {}", oauthbearer(None, "forged")),
        format!("AUTH XOAUTH2 {}", xoauth2("alice", "forged")),
        format!("AUTH OAUTHBEARER {}", oauthbearer(None, "good-ghost")),
        format!("AUTH XOAUTH2 {}", xoauth2("ghost", "good-ghost")),
        format!(
            "AUTH OAUTHBEARER {}",
            oauthbearer(Some("carol"), "good-alice")
        ),
    ] {
        refused_token(&mut c, &first).await;
    }
    let first = format!("AUTH OAUTHBEARER {}", oauthbearer(None, "forged"));
    assert_eq!(c.cmd(&first).await, format!("+ {}", b64(IDP_ERROR)));
    assert_eq!(c.cmd("*").await, err(reply::BAD_CREDENTIALS));
    // XOAUTH2's user names the account as OAUTHBEARER's authzid does.
    let first = format!("AUTH XOAUTH2 {}", xoauth2("carol", "good-alice"));
    assert_eq!(c.cmd(&first).await, format!("+ {}", b64(IDP_ERROR)));
    // The seventh failure on the connection closes it: the refusals were counted.
    assert_eq!(c.cmd("AQ==").await, err(reply::TOO_MANY_AUTH_FAILURES));
    c.closed().await;
}

/// An identity provider that cannot be reached gives `-ERR [SYS/TEMP]`, not `[AUTH]`, and
/// is not a failed login.
#[tokio::test]
async fn an_unavailable_token_validator_is_a_temporary_failure() {
    let f = Fixture::tuned(|c| {
        with_idp(true)(c);
        c.max_auth_failures = 1;
    });
    let mut c = f.connect().await;
    for first in [
        format!("AUTH OAUTHBEARER {}", oauthbearer(None, "good-alice")),
        format!("AUTH XOAUTH2 {}", xoauth2("alice", "good-alice")),
    ] {
        assert_eq!(c.cmd(&first).await, err(SASL_UNAVAILABLE_REPLY), "{first}");
    }
    c.login().await;
}

const SASL_UNAVAILABLE_REPLY: ErrReply = ErrReply {
    code: Some(ResponseCode::SysTemp),
    text: Text::TempFailure,
};

/// OAUTHBEARER and XOAUTH2 are offered only with a token validator, and as credentials
/// under the cleartext policy (RFC 7628 section 5): not to a remote peer before TLS, which
/// is refused them; after STLS they are offered.
#[tokio::test]
async fn bearer_mechanisms_need_a_validator_and_tls() {
    let bearer = |m: &String| m.contains("OAUTHBEARER") || m.contains("XOAUTH2");
    let mut c = Fixture::new().connect().await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(bearer), "{caps:?}");
    let first = format!("AUTH XOAUTH2 {}", xoauth2("alice", "good-alice"));
    assert_eq!(c.cmd(&first).await, refused(Text::UnknownMechanism));

    let mut config = config();
    with_idp(false)(&mut config);
    let f = Fixture::build(config, true);
    let mut c = f.connect_as(plain(), REMOTE).await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(bearer), "{caps:?}");
    assert!(!caps.iter().any(|m| m.contains("PLUS")), "{caps:?}");
    assert_eq!(c.cmd(&first).await, err(reply::CLEARTEXT_REFUSED));
    assert_eq!(c.cmd("STLS").await, ok(Text::StlsGo));
    c.starttls(&f).await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    let sasl = caps.iter().find(|c| c.starts_with("SASL ")).expect("SASL");
    assert_eq!(
        sasl, "SASL SCRAM-SHA-256 OAUTHBEARER XOAUTH2 PLAIN LOGIN",
        "{caps:?}"
    );
    let mechs = c.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert!(mechs.iter().any(|m| m == "OAUTHBEARER"), "{mechs:?}");
    assert_eq!(c.cmd(&first).await, full_login());
}

/// A TLS fixture where alice has SCRAM-SHA-256 keys, with SCRAM-SHA-256-PLUS on or off.
fn scram_tls_fixture(scram_plus: bool) -> Fixture {
    let mut config = config();
    config.scram_plus = scram_plus;
    let f = Fixture::build(config, true);
    let hash = f
        .store
        .account(&name("alice"))
        .expect("read")
        .expect("alice")
        .password_hash;
    let keys = auth::derive_scram(PASSWORD.as_bytes(), auth::scram::MIN_ITERATIONS);
    assert!(f
        .store
        .add_scram_keys(f.alice, &hash, &keys)
        .expect("store"));
    f
}

/// SCRAM-SHA-256-PLUS through the session with rsasl's client: `first` is the AUTH line's
/// mechanism. Returns the reply to the client-final (or to the client-first, if that
/// already failed).
async fn scram_plus(c: &mut Client, mech: &str, binding: auth::ChannelBinding) -> String {
    let mut client = auth::testing::ScramClient::new("alice", PASSWORD, Some(binding));
    let first = client.step(None).expect("client-first");
    let reply = c.cmd(&format!("AUTH {mech} {}", B64.encode(first))).await;
    let Some(server_first) = reply.strip_prefix("+ ") else {
        return reply;
    };
    let server_first = B64.decode(server_first).expect("base64");
    let client_final = client.step(Some(&server_first)).expect("client-final");
    let reply = c.cmd(&B64.encode(client_final)).await;
    let Some(verifier) = reply.strip_prefix("+ ") else {
        return reply;
    };
    client
        .step(Some(&B64.decode(verifier).expect("base64")))
        .expect("the server's signature");
    c.cmd("").await
}

/// RFC 5802 section 6 over real TLS: SCRAM-SHA-256-PLUS with `tls-exporter` (RFC 9266) on
/// TLS 1.3 and `tls-server-end-point` (RFC 5929) on TLS 1.2 logs in with rsasl's client; a
/// binding taken from another TLS connection fails as a wrong password.
#[tokio::test]
async fn rfc5802_scram_sha_256_plus_binds_to_the_tls_connection() {
    let f = scram_tls_fixture(true);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (mut c, binding) = f.connect_tls_with(&[version]).await;
        let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
        assert!(
            caps.iter().any(|c| c.contains("SCRAM-SHA-256-PLUS")),
            "{caps:?}"
        );
        assert_eq!(
            scram_plus(&mut c, "SCRAM-SHA-256-PLUS", binding).await,
            full_login(),
            "{version:?}"
        );
        c.cmd("QUIT").await;
    }
    // The binding of one connection presented on another.
    let (_other, foreign) = f.connect_tls_with(&[&rustls::version::TLS13]).await;
    let (mut c, _) = f.connect_tls_with(&[&rustls::version::TLS13]).await;
    assert_eq!(
        scram_plus(&mut c, "SCRAM-SHA-256-PLUS", foreign).await,
        err(reply::BAD_CREDENTIALS)
    );
    // Over cleartext there is no -PLUS at all.
    let mut c = f.connect().await;
    let mechs = c.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert!(!mechs.iter().any(|m| m.contains("PLUS")), "{mechs:?}");
}

/// SCRAM-SHA-256-PLUS is opt-in (`scram_plus`): NeoMutt 2022 on GNU SASL picks -PLUS whenever
/// offered and then fails its login (tests/e2e/mailclients.rs). Off, a TLS connection offers
/// SCRAM-SHA-256 alone, refuses -PLUS as unknown, and takes a client's `y` flag (it could
/// bind, the server offered no binding: RFC 5802 section 6).
#[tokio::test]
async fn scram_sha_256_plus_is_offered_only_when_configured() {
    let f = scram_tls_fixture(false);
    let (mut c, binding) = f.connect_tls_with(rustls::DEFAULT_VERSIONS).await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    let sasl = caps.iter().find(|c| c.starts_with("SASL ")).expect("SASL");
    assert!(
        sasl.contains("SCRAM-SHA-256") && !sasl.contains("PLUS"),
        "{sasl}"
    );
    assert_eq!(
        scram_plus(&mut c, "SCRAM-SHA-256-PLUS", binding).await,
        refused(Text::UnknownMechanism)
    );
    let first = b64("y,,n=alice,r=abcdefgh");
    assert!(c
        .cmd(&format!("AUTH SCRAM-SHA-256 {first}"))
        .await
        .starts_with("+ "));
}
