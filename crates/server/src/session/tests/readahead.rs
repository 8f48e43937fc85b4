//! The read-ahead of a sequential run of RETRs (`session::readahead`): counted through the
//! store's call metrics, with every message checked byte for byte.

use super::transaction::{nothing_but_the_status, remove_chunk};
use super::*;

/// Delivers `count` small messages (a dot-led line each, so stuffing shows) after
/// [`MESSAGES`]; all of alice's messages, in order.
fn with_small_messages(f: &Fixture, count: usize) -> Vec<String> {
    let mut all: Vec<String> = MESSAGES.iter().map(|m| m.to_string()).collect();
    for i in 0..count {
        let m = format!(
            "Subject: m{i}\r\n\r\n.dot-led {i}\r\n{}\r\n",
            "z".repeat(i * 37 % 500)
        );
        f.store
            .deliver(&name("alice"), &mut m.as_bytes(), 1 << 20)
            .expect("deliver");
        all.push(m);
    }
    all
}

/// A message's lines as RETR sends them: dot-stuffed (RFC 1939 section 3).
fn stuffed(message: &str) -> Vec<String> {
    let body = message.strip_suffix("\r\n").unwrap_or(message);
    body.split("\r\n")
        .map(|l| match l.starts_with('.') {
            true => format!(".{l}"),
            false => l.to_string(),
        })
        .collect()
}

/// USER and PASS for alice, whatever her maildrop holds.
async fn log_in(c: &mut Client) {
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert!(c.cmd("PASS right").await.starts_with("+OK"));
}

/// RETR `n`, checked whole against `message`.
async fn retr(c: &mut Client, n: usize, message: &str) {
    let body = c
        .multi(
            &format!("RETR {n}"),
            &ok_with(Text::Octets, &[&message.len()]),
        )
        .await;
    assert_eq!(body, stuffed(message), "RETR {n}");
}

/// RFC 1939 section 5: a download (UIDL, then RETR of every message in order) reads the small
/// messages ahead, 16 in one store statement: 40 messages take 1 + 3 reads instead of 40
/// (RETR 1 alone; 2 to 17, 18 to 33, 34 to 40 ahead), and each arrives as stored.
#[tokio::test]
async fn rfc1939_s5_a_download_reads_small_messages_ahead_sixteen_at_a_time() {
    let f = Fixture::new();
    let all = with_small_messages(&f, 37);
    let mut c = f.connect().await;
    log_in(&mut c).await;
    assert_eq!(c.multi("UIDL", &ok(Text::UidlFollows)).await.len(), 40);
    for (i, m) in all.iter().enumerate() {
        retr(&mut c, i + 1, m).await;
    }
    assert_eq!(f.store_calls("read_chunks"), 1);
    assert_eq!(f.store_calls("read_first_chunks"), 3);
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.closed().await;
}

/// The read-ahead holds at most 256 KiB: messages of 100 KiB go two at a time.
#[tokio::test]
async fn a_read_ahead_holds_at_most_its_octet_budget() {
    let f = Fixture::new();
    let mut all: Vec<String> = MESSAGES.iter().map(|m| m.to_string()).collect();
    for i in 0..4 {
        let mut m = format!("Subject: large {i}\r\n\r\n");
        while m.len() < 100 * 1024 {
            m.push_str(&format!("{i} {}\r\n", "w".repeat(70)));
        }
        f.store
            .deliver(&name("alice"), &mut m.as_bytes(), 1 << 20)
            .expect("deliver");
        all.push(m);
    }
    let mut c = f.connect().await;
    log_in(&mut c).await;
    for (i, m) in all.iter().enumerate().skip(2) {
        retr(&mut c, i + 1, m).await;
    }
    // RETR 3 alone; 4 and 5 ahead (100 KiB each past the budget with a third), 6 and 7.
    assert_eq!(f.store_calls("read_chunks"), 1);
    assert_eq!(f.store_calls("read_first_chunks"), 2);
}

/// A lone RETR, RETRs out of order and TOP read nothing ahead: one read each.
#[tokio::test]
async fn a_lone_retr_retrs_out_of_order_and_top_read_nothing_ahead() {
    let f = Fixture::new();
    let all = with_small_messages(&f, 3);
    let mut c = f.connect().await;
    log_in(&mut c).await;
    assert_eq!(c.multi("TOP 1 0", &ok(Text::TopFollows)).await.len(), 2);
    for n in [2, 1, 4, 3, 5] {
        retr(&mut c, n, &all[n - 1]).await;
    }
    assert_eq!(c.multi("TOP 6 0", &ok(Text::TopFollows)).await.len(), 2);
    assert_eq!(f.store_calls("read_first_chunks"), 0);
    assert_eq!(f.store_calls("read_chunks"), 7);
}

/// RFC 1939 section 5: a message marked deleted may not be referred to. A read-ahead passes
/// over one deleted before it; one deleted after it was read ahead is refused all the same
/// and never sent, and the run goes on from the held messages (RFC 1939 section 7: TOP may
/// use one of them).
#[tokio::test]
async fn rfc1939_s5_a_read_ahead_skips_messages_deleted_before_or_after_it() {
    let f = Fixture::new();
    let all = with_small_messages(&f, 37);
    let mut c = f.connect().await;
    log_in(&mut c).await;
    retr(&mut c, 1, &all[0]).await;
    assert_eq!(c.cmd("DELE 3").await, ok_with(Text::Deleted, &[&3]));
    // Ahead: 2, then 4 to 18 (3 is passed over).
    retr(&mut c, 2, &all[1]).await;
    assert_eq!(c.cmd("RETR 3").await, refused(Text::AlreadyDeleted));
    retr(&mut c, 4, &all[3]).await;
    assert_eq!(c.cmd("DELE 5").await, ok_with(Text::Deleted, &[&5]));
    assert_eq!(c.cmd("RETR 5").await, refused(Text::AlreadyDeleted));
    // TOP takes a held message (no read); RETR 7 then reads it as usual.
    let top = c.multi("TOP 7 0", &ok(Text::TopFollows)).await;
    assert_eq!(top, stuffed(&all[6])[..2]);
    assert_eq!(f.store_calls("read_chunks"), 1);
    for n in 6..=18 {
        retr(&mut c, n, &all[n - 1]).await;
    }
    assert_eq!(f.store_calls("read_chunks"), 2);
    assert_eq!(f.store_calls("read_first_chunks"), 1);
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 38);
}

/// An idle session holds no read-ahead: what is held is dropped once the session has waited
/// `AHEAD_KEEP` for its next command, and the next RETR in order reads ahead again.
#[tokio::test]
async fn messages_read_ahead_are_dropped_while_the_session_waits() {
    let f = Fixture::new();
    let all = with_small_messages(&f, 10);
    let mut c = f.connect().await;
    log_in(&mut c).await;
    retr(&mut c, 1, &all[0]).await;
    retr(&mut c, 2, &all[1]).await;
    assert_eq!(f.store_calls("read_first_chunks"), 1);
    tokio::time::sleep(crate::session::AHEAD_KEEP + Duration::from_millis(300)).await;
    retr(&mut c, 3, &all[2]).await;
    retr(&mut c, 4, &all[3]).await;
    assert_eq!(f.store_calls("read_first_chunks"), 2);
    assert_eq!(f.store_calls("read_chunks"), 1);
}

/// RFC 1939 section 3: a message whose chunk the read-ahead did not find is read as usual,
/// and as a message that cannot be read whole, it drops the connection without the "." line.
#[tokio::test]
async fn rfc1939_s3_a_message_missing_from_the_read_ahead_is_read_as_usual() {
    let f = Fixture::new();
    remove_chunk(&f, "message_id = (SELECT min(id) + 2 FROM messages)");
    let mut c = f.connect().await;
    c.login().await;
    retr(&mut c, 1, MESSAGES[0]).await;
    retr(&mut c, 2, MESSAGES[1]).await;
    assert_eq!(f.store_calls("read_first_chunks"), 1);
    c.send("RETR 3\r\n").await;
    nothing_but_the_status(&c.last_bytes().await, MESSAGES[2].len());
    assert_eq!(f.store_calls("read_chunks"), 2);
    f.untouched();
}
