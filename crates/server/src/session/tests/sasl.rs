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
