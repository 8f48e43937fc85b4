//! Whole POP3 sessions against the real pop3d, provisioned with the real popadm.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use e2e::{crlf, popadm_ok, Client, Fixture, Server};

const PW: &str = "pass word"; // RFC 1939 section 7: spaces are part of the password.

fn fixture_with_user(tag: &str) -> Fixture {
    let f = Fixture::new(tag);
    f.add_user("alice", PW);
    f
}

/// Logs in, retrying while a lock of an earlier session is still being released.
fn login_when_free(server: &Server, user: &str) -> Client {
    server.login_when_free(user, PW)
}

fn uidl(c: &mut Client) -> Vec<(u32, String)> {
    c.listing("UIDL")
        .iter()
        .map(|l| {
            let (n, uid) = l.split_once(' ').expect("n uid");
            (n.parse().expect("number"), uid.to_string())
        })
        .collect()
}

#[test]
fn greeting_carries_no_apop_timestamp_while_apop_is_off() {
    // RFC 1939 section 7: a server that implements APOP puts a timestamp in its greeting.
    // Clients (curl among them) take a timestamp as an offer of APOP and do not fall back to
    // USER/PASS, so without APOP there must be none.
    let f = Fixture::new("greeting");
    let g = f.server.connect().greeting;
    assert!(g.starts_with("+OK "), "{g}");
    assert!(!g.contains('<'), "{g}");
}

#[test]
fn retr_is_byte_exact_for_awkward_messages() {
    let f = fixture_with_user("retr");
    let messages: Vec<&[u8]> = vec![
        b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
        b"Subject: lone dot last\r\n\r\nbody\r\n.\r\n",
        b"Subject: 8bit \xe9\r\n\r\nna\xefve caf\xe9 \xff\x80\r\n",
        b"Subject: no final newline\r\n\r\nlast line",
        b"Subject: bare LF\n\nline one\n.dot line\nline three\n",
        b"Subject: bare CR\r\n\r\nx\ry\r\n",
    ];
    for m in &messages {
        f.deliver("alice", m);
    }
    let mut c = f.server.login("alice", PW);
    let list = c.listing("LIST");
    assert_eq!(list.len(), messages.len());
    for (i, m) in messages.iter().enumerate() {
        let n = i + 1;
        let expected = crlf(m);
        // RFC 1939 section 11: the size counts CRLF line ends and no stuffed dots.
        assert_eq!(list[i], format!("{n} {}", expected.len()));
        let (status, body) = c.multi(&format!("RETR {n}"));
        assert_eq!(status, format!("+OK {} octets", expected.len()));
        assert_eq!(body, expected, "message {n}");
    }
    // On the wire a line starting with "." carries one more (RFC 1939 section 3).
    c.send("RETR 1");
    assert!(c.line().starts_with("+OK"));
    let mut wire = Vec::new();
    loop {
        let l = c.line();
        wire.push(l.clone());
        if l == "." {
            break;
        }
    }
    assert_eq!(
        wire,
        [
            "Subject: dots",
            "",
            "..starts with a dot",
            "...two dots",
            "..",
            "end",
            "."
        ]
    );
    c.ok("QUIT");
}

#[test]
fn large_message_streams_intact() {
    let f = fixture_with_user("large");
    let mut msg = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u64;
    while msg.len() < 3 * 1024 * 1024 {
        // Every 7th line starts with a dot, to be stuffed across chunk boundaries.
        let line = if i.is_multiple_of(7) {
            format!(".line {i} {}\r\n", "x".repeat((i % 97) as usize))
        } else {
            format!("line {i} {}\r\n", "y".repeat((i % 89) as usize))
        };
        msg.extend_from_slice(line.as_bytes());
        i += 1;
    }
    f.deliver("alice", &msg);
    let mut c = f.server.login("alice", PW);
    let (_, body) = c.multi("RETR 1");
    assert_eq!(body.len(), msg.len());
    assert!(body == msg, "3 MiB message differs after RETR");
    c.ok("QUIT");
}

#[test]
fn deletions_apply_only_after_quit() {
    let f = fixture_with_user("dele");
    for i in 1..=4 {
        f.deliver(
            "alice",
            format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
    }
    let mut c = f.server.login("alice", PW);
    let before = uidl(&mut c);
    let total: usize = c
        .listing("LIST")
        .iter()
        .map(|l| {
            l.split(' ')
                .nth(1)
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(c.ok("STAT"), format!("+OK 4 {total}"));
    c.ok("DELE 2");
    // RFC 1939 section 5: a deleted message may not be used, counted or listed.
    c.err("DELE 2");
    c.err("RETR 2");
    c.err("TOP 2 0");
    c.err("LIST 2");
    c.err("UIDL 2");
    assert!(c.ok("STAT").starts_with("+OK 3 "));
    assert_eq!(c.listing("LIST").len(), 3);
    assert!(!c.listing("UIDL").iter().any(|l| l.starts_with("2 ")));
    // RSET unmarks.
    c.ok("RSET");
    assert_eq!(c.ok("STAT"), format!("+OK 4 {total}"));
    c.ok("DELE 1");
    c.ok("DELE 3");
    // Message numbers stay fixed within the session.
    assert!(c.ok("LIST 4").starts_with("+OK 4 "));
    c.ok("QUIT");
    assert!(c.closed());

    let mut c = f.server.login("alice", PW);
    let after = uidl(&mut c);
    // Survivors keep their UIDs and are renumbered only in the new session.
    assert_eq!(
        after,
        vec![(1, before[1].1.clone()), (2, before[3].1.clone())]
    );
    let (_, body) = c.multi("RETR 1");
    assert_eq!(body, b"Subject: 2\r\n\r\nbody 2\r\n");
    c.ok("QUIT");
}

#[test]
fn a_dropped_connection_deletes_nothing() {
    // RFC 1939 section 6: only QUIT in TRANSACTION enters UPDATE.
    let f = fixture_with_user("drop");
    f.deliver("alice", b"Subject: keep me\r\n\r\nx\r\n");
    f.deliver("alice", b"Subject: me too\r\n\r\ny\r\n");
    let mut c = f.server.login("alice", PW);
    c.ok("DELE 1");
    c.ok("DELE 2");
    c.drop_connection();
    login_when_free(&f.server, "alice").stat_and_quit(2);
}

#[test]
fn second_login_gets_in_use_and_wrong_credentials_get_auth() {
    let f = fixture_with_user("inuse");
    f.add_user("bob@example.org", "bobpw");
    let mut a = f.server.login("alice", PW);
    // RFC 2449 section 8.1.1 / RFC 3206: credentials fine, maildrop busy.
    let mut b = f.server.connect();
    b.ok("USER alice");
    let r = b.err(&format!("PASS {PW}"));
    assert!(r.starts_with("-ERR [IN-USE] "), "{r}");
    // The failed attempt leaves the first session intact, and another user is unaffected.
    a.ok("NOOP");
    let mut bob = f.server.login("BOB@Example.ORG", "bobpw");
    bob.ok("QUIT");
    // RFC 3206 section 4: [AUTH] for credential problems; an unknown user gets exactly the
    // reply a wrong password gets.
    let mut c = f.server.connect();
    c.ok("USER alice");
    let wrong = c.err("PASS not the password");
    c.ok("USER nobody");
    let unknown = c.err("PASS whatever");
    assert!(wrong.starts_with("-ERR [AUTH] "), "{wrong}");
    assert_eq!(wrong, unknown);
    // After a failed PASS the client may start over with USER (RFC 1939 section 7).
    a.ok("QUIT");
    c.login("alice", PW);
    c.ok("QUIT");
}

#[test]
fn uids_survive_sessions_and_restarts_and_are_never_reused() {
    let mut f = fixture_with_user("uids");
    for i in 0..3 {
        f.deliver("alice", format!("Subject: {i}\r\n\r\n{i}\r\n").as_bytes());
    }
    let mut c = f.server.login("alice", PW);
    let first = uidl(&mut c);
    assert_eq!(first.len(), 3);
    for (_, uid) in &first {
        // RFC 1939 section 7: 1 to 70 characters in 0x21..0x7E.
        assert!((1..=70).contains(&uid.len()));
        assert!(uid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    assert_eq!(c.ok("UIDL 2"), format!("+OK 2 {}", first[1].1));
    // A session that ends without UPDATE changes nothing.
    c.ok("DELE 3");
    c.drop_connection();

    f.restart(&[]);
    let mut c = login_when_free(&f.server, "alice");
    assert_eq!(uidl(&mut c), first);
    c.ok("DELE 3");
    c.ok("QUIT");
    // A new message never gets the UID of the deleted one.
    f.deliver("alice", b"Subject: new\r\n\r\nnew\r\n");
    let mut c = f.server.login("alice", PW);
    let now = uidl(&mut c);
    assert_eq!(now.len(), 3);
    assert_eq!(&now[..2], &first[..2]);
    assert_ne!(now[2].1, first[2].1);
    c.ok("QUIT");
}

#[test]
fn top_sends_headers_and_n_body_lines() {
    // RFC 1939 section 7 (TOP).
    let f = fixture_with_user("top");
    f.deliver(
        "alice",
        b"From: a@example.org\r\nSubject: top\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n",
    );
    f.deliver("alice", b"Subject: headers only\r\nX: y\r\n");
    let mut c = f.server.login("alice", PW);
    let (_, b) = c.multi("TOP 1 0");
    assert_eq!(b, b"From: a@example.org\r\nSubject: top\r\n\r\n");
    let (_, b) = c.multi("TOP 1 2");
    assert_eq!(
        b,
        b"From: a@example.org\r\nSubject: top\r\n\r\nline 1\r\n.line 2\r\n"
    );
    let (_, b) = c.multi("TOP 1 100");
    assert_eq!(
        b,
        b"From: a@example.org\r\nSubject: top\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n"
    );
    let (_, b) = c.multi("TOP 2 5");
    assert_eq!(b, b"Subject: headers only\r\nX: y\r\n");
    c.err("TOP 3 1");
    c.err("TOP 1");
    c.ok("QUIT");
}

#[test]
fn a_5000_message_maildrop_lists_correctly() {
    let f = fixture_with_user("many");
    let mut mbox = Vec::new();
    for i in 0..5000 {
        mbox.extend_from_slice(
            format!("From sender@example.org Thu Nov 26 10:00:00 2026\nSubject: m{i}\n\nbody {i}\n{}\n\n", "z".repeat(i % 50))
                .as_bytes(),
        );
    }
    let mbox_path = f.data().join("in.mbox");
    std::fs::write(&mbox_path, &mbox).expect("write mbox");
    popadm_ok(
        f.data(),
        &[
            "import",
            "mbox",
            mbox_path.to_str().expect("utf8 path"),
            "alice",
        ],
        b"",
    );
    let mut c = f.server.login("alice", PW);
    let list = c.listing("LIST");
    assert_eq!(list.len(), 5000);
    let mut total = 0usize;
    for (i, line) in list.iter().enumerate() {
        let expected = format!(
            "Subject: m{i}\r\n\r\nbody {i}\r\n{}\r\n",
            "z".repeat(i % 50)
        );
        assert_eq!(*line, format!("{} {}", i + 1, expected.len()));
        total += expected.len();
    }
    assert_eq!(c.ok("STAT"), format!("+OK 5000 {total}"));
    let uids = uidl(&mut c);
    assert_eq!(uids.len(), 5000);
    assert_eq!(
        uids.iter().map(|(_, u)| u).collect::<HashSet<_>>().len(),
        5000
    );
    let (_, b) = c.multi("RETR 4321");
    assert_eq!(
        b,
        format!(
            "Subject: m4320\r\n\r\nbody 4320\r\n{}\r\n",
            "z".repeat(4320 % 50)
        )
        .as_bytes()
    );
    c.ok("QUIT");
}

#[test]
fn every_command_is_answered_in_every_state() {
    let f = fixture_with_user("states");
    f.deliver("alice", b"Subject: s\r\n\r\nx\r\n");
    let mut c = f.server.connect();
    // RFC 1939 sections 4 and 5: TRANSACTION commands are refused before login.
    for cmd in [
        "STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL",
    ] {
        c.err(cmd);
    }
    c.err("PASS before user");
    c.err("FOO bar");
    c.err("USER");
    c.err("");
    let caps = c.listing("CAPA");
    for cap in ["TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING"] {
        assert!(caps.iter().any(|l| l == cap), "CAPA lacks {cap}: {caps:?}");
    }
    // Keywords are case-insensitive (RFC 1939 section 3).
    c.ok("user alice");
    c.err("USER alice");
    c.ok(&format!("pass {PW}"));
    // AUTHORIZATION-only commands are refused after login; the session goes on.
    c.err("USER alice");
    c.err(&format!("PASS {PW}"));
    c.err("LIST 0");
    c.err("LIST 2");
    c.err("RETR 4294967295");
    c.err("RETR 4294967296");
    c.err("DELE -1");
    c.err("RETR");
    c.err("XYZZY");
    c.ok("NOOP");
    assert!(c.listing("CAPA").iter().any(|l| l == "UIDL"));
    assert_eq!(c.ok("LIST 1"), "+OK 1 17");
    c.ok("QUIT");
    assert!(c.closed());
}

#[test]
fn quit_before_login_is_answered() {
    let f = Fixture::new("quit");
    let mut c = f.server.connect();
    c.ok("QUIT");
    assert!(c.closed());
}

#[test]
fn overlong_lines_are_refused_and_the_session_goes_on() {
    // RFC 2449 section 4: 255 octets including CRLF; longer gets -ERR.
    let f = fixture_with_user("longline");
    let mut c = f.server.connect();
    c.send(&format!("USER {}", "a".repeat(300)));
    assert!(c.line().starts_with("-ERR"));
    c.send_raw(&vec![b'x'; 100_000]);
    c.send("");
    assert!(c.line().starts_with("-ERR"));
    c.send_raw(b"NOOP\0\r\n");
    assert!(c.line().starts_with("-ERR"));
    c.login("alice", PW);
    c.ok("QUIT");
}

#[test]
fn too_many_bad_commands_close_the_connection() {
    let f = Fixture::new("badcmds");
    let mut c = f.server.connect();
    for _ in 1..e2e_max_bad() {
        c.err("BOGUS");
    }
    let last = c.err("BOGUS");
    assert!(last.contains("too many bad commands"), "{last}");
    assert!(c.closed());
}

fn e2e_max_bad() -> u32 {
    20
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    // RFC 2449 section 6.6: commands sent at once are processed in turn.
    let f = fixture_with_user("pipeline");
    for i in 1..=3 {
        f.deliver("alice", format!("Subject: {i}\r\n\r\n{i}\r\n").as_bytes());
    }
    let mut c = f.server.connect();
    c.send_raw(
        format!("USER alice\r\nPASS {PW}\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\nDELE 1\r\nLIST\r\nQUIT\r\n")
            .as_bytes(),
    );
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK 3 "));
    for i in 1..=3 {
        assert!(c.line().starts_with("+OK"));
        assert_eq!(c.body(), format!("Subject: {i}\r\n\r\n{i}\r\n").as_bytes());
    }
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK"));
    assert_eq!(c.body(), b"2 17\r\n3 17\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(c.closed());
}

#[test]
fn delivery_during_a_session_shows_in_the_next_one() {
    let f = fixture_with_user("deliverlive");
    f.deliver("alice", b"Subject: 1\r\n\r\n1\r\n");
    let mut c = f.server.login("alice", PW);
    f.deliver("alice", b"Subject: 2\r\n\r\n2\r\n");
    assert!(c.ok("STAT").starts_with("+OK 1 "));
    c.err("RETR 2");
    c.ok("DELE 1");
    c.ok("QUIT");
    let mut c = f.server.login("alice", PW);
    assert!(c.ok("STAT").starts_with("+OK 1 "));
    let (_, b) = c.multi("RETR 1");
    assert_eq!(b, b"Subject: 2\r\n\r\n2\r\n");
    c.ok("QUIT");
}

#[test]
fn idle_timeout_closes_without_reply_and_without_update() {
    // RFC 1939 section 3: the autologout closes the connection without a response and
    // without entering UPDATE.
    let f = Fixture::with_flags(
        "idle",
        &["--idle-timeout", "1", "--allow-short-idle-timeout"],
    );
    f.add_user("alice", PW);
    f.deliver("alice", b"Subject: stay\r\n\r\nx\r\n");
    let mut c = f.server.login("alice", PW);
    c.ok("DELE 1");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.closed(), "expected EOF without a reply");
    login_when_free(&f.server, "alice").stat_and_quit(1);
}

#[test]
fn pop3d_refuses_an_idle_timeout_below_ten_minutes() {
    let dir = e2e::TempDir::new("idleflag");
    let out = std::process::Command::new(e2e::bin("pop3d"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--idle-timeout", "60"])
        .output()
        .expect("run pop3d");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("600"));
}

#[test]
fn shutdown_answers_sessions_and_applies_no_half_update() {
    let mut f = fixture_with_user("shutdown");
    f.deliver("alice", b"Subject: 1\r\n\r\n1\r\n");
    f.deliver("alice", b"Subject: 2\r\n\r\n2\r\n");
    let mut c = f.server.login("alice", PW);
    c.ok("DELE 1");
    let mut idle = f.server.connect();
    f.server.signal("TERM");
    // Sessions waiting for a command are told why they are closed, in POP3 terms.
    let r = c.line();
    assert!(r.starts_with("-ERR [SYS/TEMP] "), "{r}");
    assert!(idle.line().starts_with("-ERR [SYS/TEMP] "));
    assert!(f.server.wait().success());
    f.server.await_log("shutting down");
    f.restart(&[]);
    f.server.login("alice", PW).stat_and_quit(2);
}

#[test]
fn connections_over_the_cap_get_sys_temp() {
    let f = Fixture::with_flags("cap", &["--max-connections", "2"]);
    let _a = f.server.connect();
    let _b = f.server.connect();
    let mut c = e2e::Client::connect(f.server.addr);
    assert!(c.greeting.starts_with("-ERR [SYS/TEMP] "), "{}", c.greeting);
    assert!(c.closed());
    drop(_a);
    // A freed slot is usable again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = e2e::Client::connect(f.server.addr);
        if d.greeting.starts_with("+OK") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_logs_are_one_object_per_line_and_sessions_end_with_a_summary() {
    use std::io::BufRead;
    let dir = e2e::TempDir::new("jsonlog");
    let mut child = std::process::Command::new(e2e::bin("pop3d"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-self-signed",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut addr = None;
    for line in lines.by_ref().take(20) {
        let line = line.expect("line");
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        if line.contains("\"listening\"") {
            let start = line.find("\"addr\":\"").expect("addr") + 8;
            let end = line[start..].find('"').expect("end") + start;
            addr = Some(
                line[start..end]
                    .parse::<std::net::SocketAddr>()
                    .expect("socket addr"),
            );
            break;
        }
    }
    let mut c = Client::connect(addr.expect("listening line"));
    c.ok("QUIT");
    let summary = lines
        .take(20)
        .map_while(Result::ok)
        .find(|l| l.contains("session end"));
    let _ = child.kill();
    let _ = child.wait();
    let summary = summary.expect("a session end line");
    for field in ["\"retrieved\":0", "\"deleted\":0", "\"peer\":\"127.0.0.1:"] {
        assert!(summary.contains(field), "{field} missing in {summary}");
    }
}

#[test]
fn pop3d_drops_privileges_after_binding() {
    let uid_line = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    if !uid_line("self").starts_with("Uid:\t0\t") {
        eprintln!("SKIPPED: dropping privileges needs root");
        return;
    }
    let dir = e2e::TempDir::new("dropprivs");
    // nobody:nogroup owns the data directory.
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
    let server = Server::start(dir.path(), &["--user", "nobody"]);
    let uid = uid_line(&server.pid().to_string());
    assert!(uid.starts_with("Uid:\t65534\t65534\t65534"), "{uid}");
    e2e::add_user(dir.path(), "alice", "pw");
    let mut c = server.login("alice", "pw");
    c.ok("QUIT");
}
