//! What a session reports about itself (issue 17): why it ended (the `reason` of its summary
//! line) and what it counted in the metrics, by label.

use super::*;

/// The value of `series` (name and labels as exported) in the fixture's metrics, 0 when
/// not exported.
pub(super) fn metric(f: &Fixture, series: &str) -> f64 {
    let text = f.shared.metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

fn logins(f: &Fixture, mechanism: &str, result: &str) -> f64 {
    metric(
        f,
        &format!(r#"pop3d_logins_total{{mechanism="{mechanism}",result="{result}"}}"#),
    )
}

/// RFC 1939 section 6: QUIT ends the session whether or not it logged in.
#[tokio::test]
async fn rfc1939_s6_quit_is_the_reason_before_and_after_login() {
    let (f, mut c) = started().await;
    c.cmd("QUIT").await;
    assert_eq!(c.ended().await.1, EndReason::Quit);
    let mut c = f.connect().await;
    c.login().await;
    c.cmd("QUIT").await;
    assert_eq!(c.ended().await.1, EndReason::Quit);
}

/// The limits that close a session name themselves: bad commands, failed logins, and a
/// client gone without QUIT.
#[tokio::test]
async fn the_limits_and_a_vanished_client_are_reasons_of_their_own() {
    let f = Fixture::tuned(|c| c.max_auth_failures = 1);
    let mut c = f.connect().await;
    c.send(&"XYZZY\r\n".repeat(MAX_BAD_COMMANDS as usize)).await;
    assert_eq!(c.ended().await.1, EndReason::TooManyErrors);
    let mut c = f.connect().await;
    c.send("USER alice\r\nPASS wrong\r\n").await;
    assert_eq!(c.ended().await.1, EndReason::TooManyAuthFailures);
    let mut c = f.connect().await;
    c.login().await;
    let Client { io, session, .. } = c;
    drop(io);
    let reason = tokio::time::timeout(PATIENCE, session)
        .await
        .expect("ended");
    assert_eq!(reason.expect("session task"), EndReason::ClientVanished);
    f.untouched();
}

/// RFC 1939 section 3's autologout, the login deadline and shutdown each end a session with
/// their own reason.
#[tokio::test]
async fn rfc1939_s3_idle_login_deadline_and_shutdown_are_reasons() {
    let f = Fixture::tuned(|c| {
        c.idle_timeout = Duration::from_millis(200);
        c.login_timeout = Duration::from_secs(60);
    });
    let mut c = f.connect().await;
    c.login().await;
    assert_eq!(c.ended().await.1, EndReason::IdleTimeout);
    let f = Fixture::tuned(|c| c.login_timeout = Duration::from_millis(200));
    let c = f.connect().await;
    assert_eq!(c.ended().await.1, EndReason::LoginTimeout);
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.login().await;
    f.stop.send(true).expect("shutdown");
    assert_eq!(c.ended().await.1, EndReason::Shutdown);
    f.untouched();
}

/// RFC 2595 section 4: a failed handshake after STLS ends the session, and is counted as a
/// TLS failure of its listener.
#[tokio::test]
async fn rfc2595_s4_a_failed_stls_handshake_is_a_reason_and_a_metric() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect().await;
    assert_eq!(c.cmd("STLS").await, ok(Text::StlsGo));
    c.send("USER alice\r\n").await;
    assert_eq!(c.ended().await.1, EndReason::TlsFailed);
    let series = r#"pop3d_tls_handshake_failures_total{listener="pop3+stls"}"#;
    assert_eq!(metric(&f, series), 1.0);
}

/// Logins are counted by mechanism and result: a maildrop in use (RFC 2449 section 8.1.1
/// `[IN-USE]`), a wrong password, SASL PLAIN (RFC 4616); commands by keyword, and a line
/// naming no command as `unknown`, never as what the client sent.
#[tokio::test]
async fn logins_and_commands_are_counted_by_fixed_labels() {
    let (f, mut first) = started().await;
    first.login().await;
    let mut second = f.connect().await;
    second.cmd("USER alice").await;
    assert!(second.cmd("PASS right").await.starts_with("-ERR [IN-USE]"));
    assert_eq!(second.cmd("PASS right").await, refused(Text::UserFirst));
    second.cmd("USER alice").await;
    assert_eq!(second.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    assert!(second.cmd("XYZZY-SECRET").await.starts_with("-ERR"));
    first
        .multi("RETR 1", &ok_with(Text::Octets, &[&MESSAGES[0].len()]))
        .await;
    first.multi("TOP 3 0", &ok(Text::TopFollows)).await;
    first.cmd("QUIT").await;
    first.closed().await;
    let plain = B64.encode(b"\0alice\0right");
    assert!(second
        .cmd(&format!("AUTH PLAIN {plain}"))
        .await
        .starts_with("+OK"));
    assert_eq!(logins(&f, "USER", "success"), 1.0);
    assert_eq!(logins(&f, "USER", "in_use"), 1.0);
    assert_eq!(logins(&f, "USER", "failure"), 1.0);
    assert_eq!(logins(&f, "PLAIN", "success"), 1.0);
    assert_eq!(metric(&f, "pop3d_in_use_refusals_total"), 1.0);
    assert_eq!(metric(&f, "pop3d_messages_retrieved_total"), 1.0);
    assert_eq!(metric(&f, r#"pop3d_commands_total{command="PASS"}"#), 4.0);
    assert_eq!(metric(&f, r#"pop3d_commands_total{command="TOP"}"#), 1.0);
    assert_eq!(metric(&f, r#"pop3d_commands_total{command="AUTH"}"#), 1.0);
    assert_eq!(
        metric(&f, r#"pop3d_commands_total{command="unknown"}"#),
        1.0
    );
    assert_eq!(
        metric(&f, r#"pop3d_updates_total{result="committed"}"#),
        1.0
    );
    assert_eq!(metric(&f, "pop3d_sessions_active"), 1.0);
    assert!(!f.shared.metrics.encode().contains("XYZZY"));
}

/// A failed login delayed by the penalty counts as a penalty; one without a delay does not.
#[tokio::test]
async fn delayed_failures_count_as_penalties() {
    let f = Fixture::tuned(|c| c.auth_failure_delay = Duration::from_millis(1));
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    assert_eq!(metric(&f, "pop3d_auth_penalties_total"), 1.0);
    let (f, mut c) = started().await;
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    assert_eq!(metric(&f, "pop3d_auth_penalties_total"), 0.0);
}
