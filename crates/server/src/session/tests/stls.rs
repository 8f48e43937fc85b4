//! STLS (RFC 2595 section 4) and implicit TLS (RFC 8314).

use super::*;

/// RFC 2595 section 4: STLS without a certificate is refused, and the session goes on.
#[tokio::test]
async fn rfc2595_s4_stls_without_tls_configured_is_refused() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsUnconfigured));
    c.login().await;
}

/// RFC 2595 section 4: STLS, the handshake, then a fresh AUTHORIZATION: what the client
/// pipelined after STLS is discarded (CVE-2011-0411), STLS is no longer offered and is
/// refused, and cleartext logins from a remote peer are allowed under TLS.
#[tokio::test]
async fn rfc2595_s4_stls_discards_pipelined_input_then_refuses_a_second_stls() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect_as(plain(), REMOTE).await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(caps.iter().any(|c| c == "STLS"), "{caps:?}");
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    c.send("STLS\r\nUSER alice\r\n").await;
    assert_eq!(c.line().await, ok(Text::StlsGo));
    c.starttls(&f).await;
    // The USER sent before the handshake was dropped, not run.
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(|c| c == "STLS"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "USER"), "{caps:?}");
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsActive));
    // UTF8 mode was reset by the handshake: a non-ASCII USER needs it again.
    assert_eq!(
        c.cmd("USER j\u{f6}rg").await,
        err(ErrReply {
            code: Some(ResponseCode::Utf8),
            text: Text::NotAscii
        })
    );
    c.login().await;
    assert_eq!(c.cmd("STLS").await, refused(Text::AfterLogin));
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&0, &3]));
}

/// RFC 2595 section 4: STLS is an AUTHORIZATION command, so it is accepted after USER; the
/// handshake starts a fresh AUTHORIZATION in which the USER is forgotten.
#[tokio::test]
async fn rfc2595_s4_stls_after_user_forgets_the_user() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("STLS").await, ok(Text::StlsGo));
    c.starttls(&f).await;
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    c.login().await;
}

/// RFC 8314 section 3, RFC 2595 section 4: on an implicit-TLS connection STLS is refused
/// (TLS is already active) and cleartext logins are allowed.
#[tokio::test]
async fn rfc8314_stls_on_implicit_tls_is_refused() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect_tls().await;
    assert!(c.greeting.starts_with("+OK "), "{}", c.greeting);
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsActive));
    c.login().await;
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&0, &3]));
    c.closed().await;
}

/// RFC 2595 section 4: a handshake that fails (no TLS after the `+OK`) or does not come within
/// `tls_handshake_timeout` ends the connection; the session never reads cleartext again.
#[tokio::test]
async fn rfc2595_s4_failed_or_missing_handshake_closes_the_connection() {
    let mut config = config();
    config.tls_handshake_timeout = Duration::from_millis(200);
    let f = Fixture::build(config, true);
    let mut c = f.connect().await;
    assert_eq!(c.cmd("STLS").await, ok(Text::StlsGo));
    c.send("USER alice\r\nPASS right\r\n").await;
    // A TLS alert (content type 21), no POP3 reply.
    let alert = c.last_bytes().await;
    assert_eq!(alert.first(), Some(&21), "{alert:?}");
    let mut c = f.connect().await;
    assert_eq!(c.cmd("STLS").await, ok(Text::StlsGo));
    c.closed().await;
}

/// RFC 2595 section 4: STLS is for cleartext POP3 listeners; a KPOP listener does not offer
/// it even with a certificate.
#[tokio::test]
async fn rfc2595_s4_stls_not_offered_on_kpop() {
    let f = Fixture::build(config(), true);
    let kpop = ListenerInfo {
        kind: ListenerKind::Kpop,
        ..plain()
    };
    let mut c = f.connect_as(kpop, LOOPBACK).await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(|c| c == "STLS"), "{caps:?}");
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsUnconfigured));
}

/// RFC 2595 section 4: STLS is only permitted in AUTHORIZATION, so CAPA after login on a
/// cleartext connection does not announce it (and STLS itself is refused there).
#[tokio::test]
async fn rfc2595_s4_capa_after_login_does_not_offer_stls() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect().await;
    let before = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(before.iter().any(|l| l == "STLS"), "{before:?}");
    c.login().await;
    let after = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!after.iter().any(|l| l == "STLS"), "{after:?}");
}
