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
