//! TRANSACTION (RFC 1939 section 5): the maildrop commands, deleted-message rules, pipelining
//! (RFC 2449), and what login itself may refuse (IN-USE, LOGIN-DELAY, draining).

use super::*;

/// RFC 1939 section 5: STAT, LIST, UIDL (with and without an argument), RETR (dot-stuffed,
/// RFC 1939 section 3), TOP (RFC 1939 section 7) and NOOP on a fresh maildrop.
#[tokio::test]
async fn rfc1939_s5_stat_list_uidl_retr_top_noop() {
    let (f, mut c) = started().await;
    c.login().await;
    let sizes: Vec<u64> = MESSAGES.iter().map(|m| m.len() as u64).collect();
    let total = octets(&MESSAGES);
    assert_eq!(c.cmd("STAT").await, ok_bare(&format!("3 {total}")));
    let list = c
        .multi("LIST", &ok_with(Text::ListFollows, &[&3, &total]))
        .await;
    let want: Vec<String> = (1..=3).map(|n| format!("{n} {}", sizes[n - 1])).collect();
    assert_eq!(list, want);
    assert_eq!(c.cmd("LIST 2").await, ok_bare(&format!("2 {}", sizes[1])));
    assert_eq!(c.cmd("LIST 4").await, refused(Text::NoSuchMessage));
    assert_eq!(c.cmd("LIST 0").await, refused(Text::NoSuchMessage));
    let uidl = c.multi("UIDL", &ok(Text::UidlFollows)).await;
    assert_eq!(uidl.len(), 3);
    let uid2 = uidl[1].split_once(' ').expect("uid").1.to_string();
    assert_eq!(c.cmd("UIDL 2").await, ok_bare(&format!("2 {uid2}")));
    assert_eq!(c.cmd("UIDL 9").await, refused(Text::NoSuchMessage));
    let body = c
        .multi("RETR 2", &ok_with(Text::Octets, &[&sizes[1]]))
        .await;
    assert_eq!(
        body,
        ["Subject: two", "", "..starts with a dot", "line 2"],
        "dot-stuffed"
    );
    assert_eq!(c.cmd("RETR 4").await, refused(Text::NoSuchMessage));
    let top = c.multi("TOP 3 0", &ok(Text::TopFollows)).await;
    assert_eq!(top, ["Subject: three", "X-Test: y", ""]);
    let top = c.multi("TOP 3 2", &ok(Text::TopFollows)).await;
    assert_eq!(top, ["Subject: three", "X-Test: y", "", "b1", "b2"]);
    assert_eq!(c.cmd("TOP 4 1").await, refused(Text::NoSuchMessage));
    assert!(c.cmd("NOOP").await.starts_with("+OK"));
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&0, &3]));
    c.closed().await;
    f.untouched();
}

/// RFC 1939 section 5: DELE marks; a deleted message is gone from STAT, LIST and UIDL and
/// refused by LIST n, UIDL n, RETR, TOP and a second DELE; RSET unmarks them all.
#[tokio::test]
async fn rfc1939_s5_deleted_message_rules_and_rset() {
    let (_f, mut c) = started().await;
    c.login().await;
    let sizes: Vec<u64> = MESSAGES.iter().map(|m| m.len() as u64).collect();
    assert_eq!(c.cmd("DELE 2").await, ok_with(Text::Deleted, &[&2]));
    for line in ["DELE 2", "LIST 2", "UIDL 2", "RETR 2", "TOP 2 0"] {
        assert_eq!(c.cmd(line).await, refused(Text::AlreadyDeleted), "{line}");
    }
    assert_eq!(c.cmd("DELE 7").await, refused(Text::NoSuchMessage));
    let left = sizes[0] + sizes[2];
    assert_eq!(c.cmd("STAT").await, ok_bare(&format!("2 {left}")));
    let list = c
        .multi("LIST", &ok_with(Text::ListFollows, &[&2, &left]))
        .await;
    assert_eq!(
        list,
        [format!("1 {}", sizes[0]), format!("3 {}", sizes[2])],
        "numbers stay"
    );
    let uidl = c.multi("UIDL", &ok(Text::UidlFollows)).await;
    assert_eq!(uidl.len(), 2);
    assert!(uidl[1].starts_with("3 "), "{uidl:?}");
    assert_eq!(c.cmd("RSET").await, full_login());
    assert_eq!(c.cmd("LIST 2").await, ok_bare(&format!("2 {}", sizes[1])));
}

/// RFC 1939 section 5: in TRANSACTION the AUTHORIZATION commands are refused and the
/// session goes on; UTF8 is refused after login (RFC 6856 section 3.1); CAPA still answers
/// (RFC 2449 section 5).
#[tokio::test]
async fn rfc1939_s5_authorization_commands_after_login_are_refused() {
    let (_f, mut c) = started().await;
    c.login().await;
    let plain = auth_plain("right");
    let digest = "0".repeat(32);
    for line in [
        "USER alice".to_string(),
        "PASS right".into(),
        apop(&digest),
        "AUTH".into(),
        plain.clone(),
        "STLS".into(),
    ] {
        assert_eq!(c.cmd(&line).await, refused(Text::AfterLogin), "{line}");
    }
    assert_eq!(c.cmd("UTF8").await, refused(Text::Utf8Refused));
    assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(caps.iter().any(|c| c == "PIPELINING"), "{caps:?}");
    assert!(caps.iter().any(|c| c.starts_with("EXPIRE")), "{caps:?}");
    assert!(
        caps.iter().any(|c| c.starts_with("LOGIN-DELAY")),
        "{caps:?}"
    );
    assert_eq!(c.cmd("STAT").await, full_stat());
}

/// RFC 6856 section 3.3: a message with UTF-8 headers is refused `-ERR [UTF8]` by RETR and
/// TOP unless UTF8 was given before login.
#[tokio::test]
async fn rfc6856_s3_utf8_headers_need_utf8_mode() {
    let (f, mut c) = started().await;
    c.cmd("USER carol").await;
    c.cmd("PASS right").await;
    assert_eq!(c.cmd("RETR 1").await, err(reply::UTF8_NEEDED));
    assert_eq!(c.cmd("TOP 1 0").await, err(reply::UTF8_NEEDED));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.closed().await;
    let mut c = f.connect().await;
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    c.cmd("USER carol").await;
    c.cmd("PASS right").await;
    let size = UTF8_MESSAGE.len();
    let body = c.multi("RETR 1", &ok_with(Text::Octets, &[&size])).await;
    assert_eq!(body, ["Subject: h\u{e9}llo", "", "body"]);
}

/// RFC 2449 section 6.6 (PIPELINING): many commands in one write are all answered, in order.
#[tokio::test]
async fn rfc2449_s6_6_pipelined_commands_are_answered_in_order() {
    let (f, mut c) = started().await;
    c.send("CAPA\r\nUSER alice\r\nPASS right\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nDELE 1\r\nSTAT\r\nNOOP\r\nQUIT\r\n")
        .await;
    let sizes: Vec<u64> = MESSAGES.iter().map(|m| m.len() as u64).collect();
    let total = octets(&MESSAGES);
    assert_eq!(c.line().await, ok(Text::CapaFollows));
    c.body().await;
    assert_eq!(c.line().await, ok(Text::SendPass));
    assert_eq!(c.line().await, logged_in(3, total));
    assert_eq!(c.line().await, ok_bare(&format!("3 {total}")));
    assert_eq!(c.line().await, ok_bare(&format!("1 {}", sizes[0])));
    assert_eq!(c.line().await, ok_with(Text::Octets, &[&sizes[0]]));
    assert_eq!(c.body().await, ["Subject: one", "", "first body"]);
    assert_eq!(c.line().await, ok_with(Text::Deleted, &[&1]));
    assert_eq!(c.line().await, ok_bare(&format!("2 {}", total - sizes[0])));
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, ok_with(Text::SigningOff, &[&1, &2]));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 2);
}

/// RFC 2449 section 8.1.1, RFC 3206: a second session for a locked maildrop is refused
/// `-ERR [IN-USE]` after the credentials were checked, and can log in once the first quits.
#[tokio::test]
async fn rfc2449_s8_1_1_locked_maildrop_is_in_use() {
    let f = Fixture::new();
    let mut first = f.connect().await;
    first.login().await;
    let mut second = f.connect().await;
    second.cmd("USER alice").await;
    let in_use = err(ErrReply {
        code: Some(ResponseCode::InUse),
        text: Text::InUse,
    });
    assert_eq!(second.cmd("PASS right").await, in_use);
    assert!(first.cmd("QUIT").await.starts_with("+OK"));
    first.closed().await;
    second.login().await;
}

/// RFC 2449 section 8.1.2: a login too soon after the last one is refused
/// `-ERR [LOGIN-DELAY]` naming the seconds to wait.
#[tokio::test]
async fn rfc2449_s8_1_2_login_delay_refuses_a_second_login() {
    let f = Fixture::new();
    f.store
        .set_policy(
            &name("alice"),
            AccountPolicy {
                login_delay: Some(600),
                expire: None,
            },
        )
        .expect("policy");
    let mut c = f.connect().await;
    c.login().await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.closed().await;
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    let reply = c.cmd("PASS right").await;
    // The wait is rounded down to whole seconds: 600, or 599 if a second began meanwhile.
    let delayed = |secs: u64| {
        let wait = fill(Text::LoginDelay, &[&secs]);
        render(|o| write_err(o, Some(ResponseCode::LoginDelay), &wait))
    };
    assert!(reply == delayed(600) || reply == delayed(599), "{reply}");
    // The refused login released the lock: CAPA still works and the session goes on.
    c.multi("CAPA", &ok(Text::CapaFollows)).await;
}

/// RFC 2449 section 6.7: with EXPIRE 0 a retrieved message is removed at UPDATE.
#[tokio::test]
async fn rfc2449_s6_7_expire_0_removes_retrieved_messages_at_update() {
    let f = Fixture::tuned(|c| c.expire = store::Expire::Days(0));
    let mut c = f.connect().await;
    c.login().await;
    c.multi("RETR 1", &ok_with(Text::Octets, &[&MESSAGES[0].len()]))
        .await;
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&1, &2]));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 2);
}

/// A node being drained (`popadm node drain`) checks the credentials, then refuses the
/// login `-ERR [SYS/TEMP]` (RFC 3206) and keeps the session in AUTHORIZATION.
#[tokio::test]
async fn rfc3206_draining_node_refuses_logins_with_sys_temp() {
    let f = Fixture::new();
    f.shared.draining.store(true, Ordering::Relaxed);
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS right").await, err(reply::DRAINING));
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
}

/// RFC 1939 section 3 on the vectored path (TCP's, where a chunk goes to the socket with the
/// stuffing dots between its pieces, not copied): a message of several chunks whose lines
/// start with `.`, are a lone `.`, and cross chunk boundaries (one chunk starts with a dot-led
/// line) comes out stuffed exactly as the octet-at-a-time rules say, over partial writes; TOP
/// on the same message (header and 3 body lines) too; and a message with a bare LF, which
/// takes the copying path, still leaves with CRLF. (Dot-led lines are one in 211 here, so
/// each chunk stays under `VECTORED_DOTS`.)
/// Both ways a message may be stored: in wire form, sent as stored, and in the plain form of
/// messages delivered before schema v8, stuffed as it is sent.
#[tokio::test]
async fn rfc1939_s3_retr_and_top_over_vectored_writes_are_stuffed() {
    for wire in [true, false] {
        retr_and_top_over_vectored_writes(wire).await;
    }
}

async fn retr_and_top_over_vectored_writes(wire: bool) {
    let f = Fixture::new();
    let mut big = String::from("Subject: vectored\r\n\r\n.first body line\r\n");
    let mut i = 0;
    while big.len() < 3 * store::CHUNK_SIZE {
        // A dot-led line exactly at the start of the second chunk.
        if big.len() + 80 > store::CHUNK_SIZE && big.len() < store::CHUNK_SIZE {
            big.push_str(&"y".repeat(store::CHUNK_SIZE - big.len() - 2));
            big.push_str("\r\n");
            big.push_str(".at the boundary\r\n");
        }
        match i % 211 {
            0 => big.push_str(".\r\n"),
            1 => big.push_str("..two dots\r\n"),
            _ => big.push_str(&format!("line {i} {}\r\n", "x".repeat(i % 90))),
        }
        i += 1;
    }
    assert_eq!(&big.as_bytes()[store::CHUNK_SIZE..][..3], b".at");
    f.store
        .deliver(&name("alice"), &mut big.as_bytes(), 1 << 20)
        .expect("deliver");
    let mut bare = big.clone().into_bytes();
    bare.extend_from_slice(b"a bare\nline\r\n");
    f.store
        .deliver(&name("alice"), &mut &bare[..], 1 << 20)
        .expect("deliver");
    if !wire {
        to_plain_form(&f);
    }
    let want: Vec<String> = big
        .trim_end_matches("\r\n")
        .split("\r\n")
        .map(|l| match l.starts_with('.') {
            true => format!(".{l}"),
            false => l.to_string(),
        })
        .collect();
    let mut c = f.connect_vectored().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert!(c.cmd("PASS right").await.starts_with("+OK"));
    let status = ok_with(Text::Octets, &[&big.len()]);
    assert!(c.multi("RETR 4", &status).await == want, "RETR 4 differs");
    let top = c.multi("TOP 4 3", &ok(Text::TopFollows)).await;
    assert_eq!(top, want[..5], "header, blank line, 3 body lines");
    assert!(c.cmd("RETR 5").await.starts_with("+OK"));
    let mut want_bare = want.clone();
    want_bare.extend(["a bare".to_string(), "line".to_string()]);
    assert!(c.body().await == want_bare, "RETR 5 differs");
}

/// RFC 1939 section 3: what the store keeps in wire form is exactly what proto's stuffer
/// would send for the normalised message, over messages of dots, CRs, LFs and text (a fixed
/// pseudo-random sequence, so a failure repeats), and the store's `from_wire` gives the
/// normalised message back: the two ways a message leaves (as stored, or stuffed as sent)
/// cannot differ.
#[test]
fn rfc1939_s3_the_stored_wire_form_is_what_the_stuffer_sends() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let len = (next() % 60) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| b".\r\nab."[(next() % 6) as usize])
            .collect();
        let (plain, summary) = store::normalise(&input);
        let mut sent = Vec::new();
        proto::DotStuffer::new().push(&plain, &mut sent);
        let (stored, wire) = store::to_wire(&input);
        let shown = input.escape_ascii().to_string();
        assert_eq!(stored, sent, "{shown}");
        assert_eq!(wire.size, summary.size, "{shown}");
        assert_eq!(wire.stored_octets, stored.len() as u64, "{shown}");
        assert_eq!(store::from_wire(&stored), plain, "{shown}");
    }
}

/// RFC 1939 section 7: TOP cuts after the header section and n body lines of the message as
/// sent, also where a header line starts with `.` (so a message in wire form has one more
/// octet of header stored than its plain form); the same for a message in either form.
#[tokio::test]
async fn rfc1939_s7_top_of_a_message_with_dot_led_header_and_body_lines() {
    let message = "Subject: x\r\n.odd: header\r\n\r\n.body\r\nline2\r\n.\r\n";
    let want = ["Subject: x", "..odd: header", "", "..body"];
    for wire in [true, false] {
        let f = Fixture::new();
        f.store
            .deliver(&name("alice"), &mut message.as_bytes(), 1 << 20)
            .expect("deliver");
        if !wire {
            to_plain_form(&f);
        }
        let mut c = f.connect().await;
        assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
        assert!(c.cmd("PASS right").await.starts_with("+OK"));
        let top = c.multi("TOP 4 1", &ok(Text::TopFollows)).await;
        assert_eq!(top, want, "wire: {wire}");
        let all = c.multi("TOP 4 9", &ok(Text::TopFollows)).await;
        assert_eq!(all[4..], ["line2", ".."], "wire: {wire}");
        let status = ok_with(Text::Octets, &[&message.len()]);
        assert_eq!(c.multi("RETR 4", &status).await, all, "wire: {wire}");
    }
}

/// RFC 1939 section 3: a RETR or TOP reply of a message that fits one write leaves in one
/// write, its `+OK`, body and terminating "." line together, also when the body goes out as a
/// vectored write: a terminator written apart waits in a relay without TCP_NODELAY (nginx's
/// mail proxy) for the client's delayed ACK. A body that does not end in CRLF gets its line
/// end in that write too.
#[tokio::test]
async fn rfc1939_s3_a_reply_that_fits_leaves_in_one_write() {
    let f = Fixture::new();
    let mut mid = String::from("Subject: mid\r\n\r\n");
    let mut i = 0;
    while mid.len() < 40 * 1024 {
        match i % 100 {
            7 => mid.push_str(".dot-led line\r\n"),
            _ => mid.push_str(&format!("line {i} {}\r\n", "y".repeat(i % 70))),
        }
        i += 1;
    }
    let unended = format!("{}no line end", mid);
    for body in [&mid, &unended] {
        f.store
            .deliver(&name("alice"), &mut body.as_bytes(), 1 << 20)
            .expect("deliver");
    }
    let (mut c, writes) = f.connect_counted().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert!(c.cmd("PASS right").await.starts_with("+OK"));
    for (line, lines) in [("RETR 4", 0), ("RETR 5", 0), ("TOP 4 300", 302)] {
        let before = writes.load(Ordering::Relaxed);
        c.send(&format!("{line}\r\n")).await;
        let status = c.line().await;
        assert!(status.starts_with("+OK"), "{line}: {status}");
        let body = c.body().await;
        assert_eq!(writes.load(Ordering::Relaxed) - before, 1, "{line}: writes");
        if lines > 0 {
            assert_eq!(body.len(), lines, "{line}");
        } else {
            assert!(body.len() > 500 && body.iter().any(|l| l == "..dot-led line"));
        }
    }
    assert_eq!(c.cmd("NOOP").await, ok_bare(""));
}

/// RFC 1939 section 3: a multi-line reply ends with the line "." only when it is whole. A
/// stored message that cannot be read to the end (here its middle chunk row is gone, removed
/// behind the session's back) is not sent as if complete: after the +OK and what could be read,
/// the connection is dropped without the terminating line, so the client cannot take a
/// truncated message for a whole one (issue 15 item 14). The same through the vectored path,
/// which sends the terminator with a message's last part: the last chunk read is not the
/// message's last.
#[tokio::test]
async fn rfc1939_s3_a_message_that_cannot_be_read_whole_drops_the_connection() {
    let mut big = String::from("Subject: big\r\n\r\n");
    while big.len() < 3 * store::CHUNK_SIZE {
        big.push_str(&"x".repeat(78));
        big.push_str("\r\n");
    }
    for vectored in [false, true] {
        let f = Fixture::new();
        f.store
            .deliver(&name("alice"), &mut big.as_bytes(), 1 << 20)
            .expect("deliver");
        remove_chunk(
            &f,
            "seq = 1 AND message_id = (SELECT max(id) FROM messages)",
        );
        let mut c = match vectored {
            false => f.connect().await,
            true => f.connect_vectored().await,
        };
        assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
        assert!(c.cmd("PASS right").await.starts_with("+OK"));
        assert_eq!(c.cmd("RETR 4").await, ok_with(Text::Octets, &[&big.len()]));
        let rest = c.last_bytes().await;
        assert!(rest.len() >= store::CHUNK_SIZE, "{} octets", rest.len());
        assert!(rest.len() < big.len(), "{} octets", rest.len());
        assert!(!rest.ends_with(b"\r\n.\r\n"), "sent as if complete");
        // Nothing was deleted: the session ended without UPDATE.
        assert_eq!(f.stored(f.alice), MESSAGES.len() + 1);
    }
}

/// The same when the only chunk of a message is gone: no empty message with its "." line (the
/// +OK, still unflushed when the first read fails, is not sent either).
#[tokio::test]
async fn rfc1939_s3_a_message_with_no_chunk_left_drops_the_connection() {
    let f = Fixture::new();
    remove_chunk(&f, "message_id = (SELECT min(id) FROM messages)");
    let mut c = f.connect().await;
    c.login().await;
    c.send("RETR 1\r\n").await;
    nothing_but_the_status(&c.last_bytes().await, MESSAGES[0].len());
    f.untouched();
}

/// What a session sent before dropping the connection on a message it could not read at all:
/// nothing, or only the `+OK` of a RETR of `octets` (unflushed when the read failed).
pub(super) fn nothing_but_the_status(rest: &[u8], octets: usize) {
    let status = format!("{}\r\n", ok_with(Text::Octets, &[&octets]));
    assert!(
        rest.is_empty() || rest == status.as_bytes(),
        "{:?}",
        String::from_utf8_lossy(rest)
    );
}

/// Deletes the one chunk row `condition` selects, behind the store's back.
/// Rewrites every message stored in wire form as a message from before schema v8 is stored:
/// plain, in full chunks but the last, its header octets those of the plain form.
fn to_plain_form(f: &Fixture) {
    let mut db = rusqlite::Connection::open(f._dir.path().join(store::DB_FILE)).expect("open");
    let tx = db.transaction().expect("begin");
    let ids: Vec<i64> = tx
        .prepare("SELECT id FROM messages WHERE wire")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("ids");
    assert!(!ids.is_empty(), "no message in wire form");
    for id in ids {
        let stored: Vec<Vec<u8>> = tx
            .prepare("SELECT data FROM chunks WHERE message_id = ?1 ORDER BY seq")
            .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
            .expect("chunks");
        let plain = store::from_wire(&stored.concat());
        let (_, summary) = store::normalise(&plain);
        tx.execute("DELETE FROM chunks WHERE message_id = ?1", [id])
            .expect("delete");
        for (seq, piece) in plain.chunks(store::CHUNK_SIZE).enumerate() {
            tx.execute(
                "INSERT INTO chunks (message_id, seq, data) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, seq as i64, piece],
            )
            .expect("insert");
        }
        tx.execute(
            "UPDATE messages SET wire = 0, header_octets = ?2, chunks = ?3 WHERE id = ?1",
            rusqlite::params![
                id,
                summary.header_octets as i64,
                plain.len().div_ceil(store::CHUNK_SIZE) as i64
            ],
        )
        .expect("update");
    }
    tx.commit().expect("commit");
}

pub(super) fn remove_chunk(f: &Fixture, condition: &str) {
    let db = rusqlite::Connection::open(f._dir.path().join(store::DB_FILE)).expect("open");
    let removed = db
        .execute(&format!("DELETE FROM chunks WHERE {condition}"), [])
        .expect("delete");
    assert_eq!(removed, 1);
}

/// RFC 1939 section 5: the maildrop is fixed at login (issue 18: login reads a snapshot,
/// the first LIST, UIDL, RETR, TOP or DELE loads its listing). STAT right after PASS says
/// what PASS said; mail delivered after login stays out of the session, before and after the
/// listing is loaded, and message numbers never move; the next session sees it.
#[tokio::test]
async fn rfc1939_s5_mail_delivered_after_login_is_not_in_the_session() {
    let (f, mut c) = started().await;
    c.login().await;
    let total = octets(&MESSAGES);
    assert_eq!(c.cmd("STAT").await, ok_bare(&format!("3 {total}")));
    let late = [
        "Subject: late\r\n\r\none\r\n",
        "Subject: later\r\n\r\ntwo\r\n",
    ];
    let deliver = |body: &str| {
        f.store
            .deliver(&name("alice"), &mut body.as_bytes(), 1 << 20)
            .expect("deliver");
    };
    deliver(late[0]);
    assert_eq!(c.cmd("STAT").await, ok_bare(&format!("3 {total}")));
    let uidl = c.multi("UIDL", &ok(Text::UidlFollows)).await;
    assert_eq!(uidl.len(), 3, "{uidl:?}");
    deliver(late[1]);
    let list = c
        .multi("LIST", &ok_with(Text::ListFollows, &[&3, &total]))
        .await;
    let want: Vec<String> = (1..=3)
        .map(|n| format!("{n} {}", MESSAGES[n - 1].len()))
        .collect();
    assert_eq!(list, want);
    for line in ["RETR 4", "TOP 4 0", "LIST 4", "UIDL 4", "DELE 4"] {
        assert_eq!(c.cmd(line).await, refused(Text::NoSuchMessage), "{line}");
    }
    assert_eq!(c.cmd("UIDL 2").await, ok_bare(&uidl[1]));
    assert_eq!(c.cmd("DELE 1").await, ok_with(Text::Deleted, &[&1]));
    let left = total - MESSAGES[0].len() as u64;
    assert_eq!(c.cmd("STAT").await, ok_bare(&format!("2 {left}")));
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&1, &2]));
    c.closed().await;
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(
        c.cmd("PASS right").await,
        logged_in(4, left + octets(&late))
    );
}

/// RFC 1939 section 5: numbers are fixed at login. When messages of the login snapshot are
/// gone before its listing is loaded (the lease ran out, another holder took the lock and
/// deleted one), the numbers cannot be kept: the first command that needs the listing gets
/// `-ERR [SYS/TEMP]` and the session ends without UPDATE.
#[tokio::test]
async fn rfc1939_s5_a_snapshot_whose_messages_are_gone_ends_the_session() {
    let f = Fixture::tuned(|c| c.lock_lease = Duration::ZERO);
    let mut c = f.connect().await;
    c.login().await;
    let intruder = f
        .store
        .lock_maildrop(f.alice, "intruder", Duration::from_secs(60))
        .expect("the expired lock is taken over");
    let first = f.store.list_messages(f.alice).expect("list")[0].id;
    f.store
        .commit_update(&intruder, &[first], &[])
        .expect("delete");
    f.store.release_lock(&intruder).expect("release");
    let lost = err(ErrReply {
        code: Some(ResponseCode::SysTemp),
        text: Text::LockLost,
    });
    assert_eq!(c.cmd("LIST").await, lost);
    c.closed().await;
    assert_eq!(f.stored(f.alice), 2);
}
