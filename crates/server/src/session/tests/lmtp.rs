//! The LMTP driver (`crate::lmtp`) over `tokio::io::duplex` with the session tests' SQLite
//! store: deadlines on a silent client, shutdown between and inside transactions, and a message
//! larger than the in-memory spool stored whole. Protocol edges with real clients are in
//! tests/e2e/lmtp.rs.

use super::*;
use store::{Limit, QuotaScope};

/// An LMTP session over a pipe, greeting read.
async fn lmtp(f: &Fixture) -> Client {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let shared = f.shared.clone();
    // The client helper expects a POP3 session's end reason; an LMTP session has none.
    let session = tokio::spawn(async move {
        crate::lmtp::serve(far, shared).await;
        crate::session::EndReason::Quit
    });
    let mut c = Client {
        io: BufReader::new(Box::new(near)),
        session,
        greeting: String::new(),
    };
    c.greeting = c.line().await;
    assert_eq!(c.greeting, "220 pop.test LMTP ready");
    c
}

/// The last line of the LHLO reply.
async fn lhlo(c: &mut Client) {
    c.send("LHLO test\r\n").await;
    while !c.line().await.starts_with("250 ") {}
}

/// RFC 5321 section 4.5.3.2: a server may close a client that stays silent past its timeout;
/// it says `421 4.4.2` first. Nothing was stored.
#[tokio::test]
async fn rfc5321_4_5_3_2_a_silent_client_is_closed_with_421() {
    let f = Fixture::tuned(|c| c.lmtp.timeout = Duration::from_millis(300));
    let mut c = lmtp(&f).await;
    lhlo(&mut c).await;
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await, "250 2.1.0 sender OK");
    assert_eq!(c.cmd("RCPT TO:<alice>").await, "250 2.1.5 <alice> OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send("Subject: never finished\r\n").await;
    let rest = c.last_bytes().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "421 4.4.2 pop.test timeout; closing\r\n"
    );
    f.untouched();
}

/// Shutdown: a session waiting for a command is told `421 4.3.2` at once (RFC 5321 section
/// 3.8); one inside a transaction finishes it, and its message is stored.
#[tokio::test]
async fn shutdown_answers_idle_sessions_and_lets_a_transaction_finish() {
    let f = Fixture::new();
    let mut idle = lmtp(&f).await;
    lhlo(&mut idle).await;
    let mut busy = lmtp(&f).await;
    lhlo(&mut busy).await;
    assert_eq!(busy.cmd("MAIL FROM:<a@b>").await, "250 2.1.0 sender OK");
    assert_eq!(busy.cmd("RCPT TO:<alice>").await, "250 2.1.5 <alice> OK");
    f.stop.send(true).expect("stop");
    let rest = idle.last_bytes().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "421 4.3.2 pop.test shutting down\r\n"
    );
    assert!(busy.cmd("DATA").await.starts_with("354 "));
    busy.send("Subject: late\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(busy.line().await, "250 2.0.0 <alice> delivered");
    let rest = busy.last_bytes().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "421 4.3.2 pop.test shutting down\r\n"
    );
    assert_eq!(f.stored(f.alice), MESSAGES.len() + 1);
}

/// A message larger than the in-memory spool goes through the temporary file and is stored
/// whole, with the LDA lines on top (as `popadm deliver` writes them).
#[tokio::test]
async fn a_message_larger_than_the_memory_spool_is_stored_whole() {
    let f = Fixture::new();
    let mut c = lmtp(&f).await;
    lhlo(&mut c).await;
    assert_eq!(
        c.cmd("MAIL FROM:<big@example.net>").await,
        "250 2.1.0 sender OK"
    );
    assert_eq!(c.cmd("RCPT TO:<alice>").await, "250 2.1.5 <alice> OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    let line = format!("{}\r\n", "x".repeat(998));
    let lines = 3 * crate::lmtp::SPOOL_IN_MEMORY / line.len();
    let body = line.repeat(lines);
    c.send("Subject: big\r\n\r\n").await;
    for piece in body.as_bytes().chunks(60_000) {
        c.io.write_all(piece).await.expect("write");
    }
    c.send(".\r\n").await;
    assert_eq!(c.line().await, "250 2.0.0 <alice> delivered");
    let messages = f.store.list_messages(f.alice).expect("list");
    let last = messages.last().expect("stored");
    let want = format!(
        "Return-Path: <big@example.net>\r\nDelivered-To: alice\r\nSubject: big\r\n\r\n{body}"
    );
    assert_eq!(last.size, want.len() as u64);
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 pop.test closing");
}

fn deliveries(f: &Fixture, result: &str) -> f64 {
    super::summary::metric(
        f,
        &format!(r#"pop3d_lmtp_deliveries_total{{result="{result}"}}"#),
    )
}

/// Issue 17: every recipient's outcome is counted in `pop3d_lmtp_deliveries_total{result}`:
/// an unknown one at RCPT, a stored copy, and a copy refused because the mailbox is full
/// (RFC 2033 section 4.2 with RFC 3463's 5.2.2).
#[tokio::test]
async fn each_recipients_outcome_is_counted_in_the_metrics() {
    let f = Fixture::new();
    let mut c = lmtp(&f).await;
    lhlo(&mut c).await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "250 2.1.0 sender OK"
    );
    assert!(c.cmd("RCPT TO:<nobody>").await.starts_with("550 5.1.1"));
    assert_eq!(c.cmd("RCPT TO:<alice>").await, "250 2.1.5 <alice> OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    assert_eq!(
        c.cmd("Subject: one\r\n\r\nbody\r\n.").await,
        "250 2.0.0 <alice> delivered"
    );
    assert_eq!(deliveries(&f, "unknown_recipient"), 1.0);
    assert_eq!(deliveries(&f, "delivered"), 1.0);

    let held = f.store.list_messages(f.alice).expect("list").len() as u64;
    let name = f.store.list_accounts().expect("accounts")[0].name.clone();
    f.store
        .set_quota(QuotaScope::Account(&name), Some(Limit::At(held)), None)
        .expect("quota");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "250 2.1.0 sender OK"
    );
    assert_eq!(c.cmd("RCPT TO:<alice>").await, "250 2.1.5 <alice> OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    assert!(c
        .cmd("Subject: two\r\n\r\nbody\r\n.")
        .await
        .starts_with("552 5.2.2"));
    assert_eq!(deliveries(&f, "over_quota"), 1.0);
    assert_eq!(deliveries(&f, "delivered"), 1.0);
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 pop.test closing");
}

/// A client that sends and never reads: the replies back up, the write waits at most the
/// timeout, and the session ends (as hostile as one that stops writing).
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_timeout() {
    let f = Fixture::tuned(|c| c.lmtp.timeout = Duration::from_millis(300));
    let (mut near, far) = tokio::io::duplex(1024);
    let session = tokio::spawn(crate::lmtp::serve(far, f.shared.clone()));
    // About 2.4 KiB of replies for 1 KiB of commands: more than the pipe holds.
    near.write_all(&b"NOOP\r\n".repeat(170))
        .await
        .expect("write");
    tokio::time::timeout(PATIENCE, session)
        .await
        .expect("the session ended")
        .expect("session task");
}
