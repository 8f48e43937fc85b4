//! Every wait on a client is bounded (issue 15): output-only commands before login count
//! towards the bad-command limit, a client that stops reading before login is closed at the
//! login deadline, and a failed-login penalty ends at shutdown (issue 19).

use super::*;

/// RFC 1939 section 3 leaves a server free to close a misbehaving client: before login,
/// commands that only produce output (CAPA, LANG, AUTH's mechanism list) are free once each
/// and count like refused ones when repeated, and an unknown mechanism is a refusal, so a
/// client cannot loop on them to hold a slot.
#[tokio::test]
async fn rfc2449_output_only_commands_before_login_count_towards_the_limit() {
    let (f, mut c) = started().await;
    // The first round is free, the second counts three.
    for _ in 0..2 {
        c.cmd("CAPA").await;
        c.body().await;
        c.cmd("LANG").await;
        c.body().await;
        c.cmd("AUTH").await;
        c.body().await;
    }
    assert_eq!(
        c.cmd("AUTH X-UNKNOWN").await,
        refused(Text::UnknownMechanism)
    );
    for _ in 4..MAX_BAD_COMMANDS - 1 {
        c.cmd("CAPA").await;
        c.body().await;
    }
    assert_eq!(c.cmd("CAPA").await, err(reply::TOO_MANY_BAD_COMMANDS));
    c.closed().await;
    f.untouched();
}

/// After login CAPA is a client's right as often as it asks (RFC 2449 section 5).
#[tokio::test]
async fn rfc2449_s5_capa_after_login_is_not_counted() {
    let (_f, mut c) = started().await;
    c.login().await;
    for _ in 0..MAX_BAD_COMMANDS + 5 {
        assert!(c.cmd("CAPA").await.starts_with("+OK"));
        c.body().await;
    }
    assert_eq!(c.cmd("QUIT").await.get(..3), Some("+OK"));
}

/// A client that sends and never reads: before login its blocked writes end at the login
/// deadline (not the ten-minute idle timeout), and the session gives its slot back.
#[tokio::test]
async fn a_client_that_stops_reading_before_login_is_closed_at_the_login_deadline() {
    let f = Fixture::tuned(|c| c.login_timeout = Duration::from_millis(500));
    let mut c = f.connect_buffered(plain(), LOOPBACK, 64).await;
    // The CAPA listing is larger than the pipe holds: the session's write blocks.
    c.send("CAPA\r\n").await;
    tokio::time::timeout(PATIENCE, &mut c.session)
        .await
        .expect("the session ended at the login deadline")
        .expect("session task");
}

/// Issue 19: a session waiting out a failed-login penalty does not hold shutdown: the wait
/// ends, the failure is answered, then the shutdown notice (RFC 3206 `[SYS/TEMP]`).
#[tokio::test]
async fn a_failed_login_penalty_ends_at_shutdown() {
    let f = Fixture::tuned(|c| c.auth_failure_delay = MAX_AUTH_FAILURE_DELAY);
    let mut c = f.connect().await;
    // Pipelined: the replies are flushed together once PASS is answered.
    c.send("USER alice\r\nPASS wrong\r\n").await;
    // The penalty (15 s) is longer than the test waits for any reply (PATIENCE).
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.stop.send(true).expect("shutdown");
    assert_eq!(c.line().await, ok(Text::SendPass));
    assert_eq!(c.line().await, err(reply::BAD_CREDENTIALS));
    assert_eq!(c.line().await, err(reply::SHUTTING_DOWN));
    c.closed().await;
    f.untouched();
}
