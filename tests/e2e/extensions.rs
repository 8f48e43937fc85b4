//! RFC 2449 LOGIN-DELAY and EXPIRE enforced, PIPELINING under load, RFC 6856 UTF8 and LANG.

use e2e::{popadm_ok, Fixture};

const PW: &str = "ext pass";

fn fixture(tag: &str, flags: &[&str]) -> Fixture {
    let f = Fixture::with_flags(tag, flags);
    f.add_user("alice", PW);
    f
}

fn capa(c: &mut e2e::Client) -> Vec<String> {
    c.listing("CAPA")
}

#[test]
fn login_delay_is_advertised_enforced_overridable_and_persistent() {
    let mut f = fixture("logindelay", &["--login-delay", "3600"]);
    let mut c = f.server.connect();
    // RFC 2449 section 6.8: the USER tag before login, the user's value after it.
    assert!(capa(&mut c).contains(&"LOGIN-DELAY 3600 USER".to_string()));
    c.login("alice", PW);
    assert!(capa(&mut c).contains(&"LOGIN-DELAY 3600".to_string()));
    c.ok("QUIT");
    // RFC 2449 section 8.1.2 / RFC 3206: too soon gets [LOGIN-DELAY].
    let mut c = f.server.connect();
    c.ok("USER alice");
    let r = c.err(&format!("PASS {PW}"));
    assert!(r.starts_with("-ERR [LOGIN-DELAY] "), "{r}");
    // A wrong password is still [AUTH], not a hint that the password was right.
    c.ok("USER alice");
    assert!(c.err("PASS wrong").starts_with("-ERR [AUTH] "));
    // The last login survives a restart.
    f.restart(&["--login-delay", "3600"]);
    let mut c = f.server.connect();
    c.ok("USER alice");
    assert!(c
        .err(&format!("PASS {PW}"))
        .starts_with("-ERR [LOGIN-DELAY] "));
    // A per-user override lifts it for that user only.
    popadm_ok(
        f.data(),
        &["user", "set", "alice", "--login-delay", "0"],
        b"",
    );
    let mut c = f.server.login("alice", PW);
    assert!(capa(&mut c).contains(&"LOGIN-DELAY 0".to_string()));
    c.ok("QUIT");
}

#[test]
fn login_delay_burst_allows_extra_logins() {
    let f = fixture(
        "burst",
        &["--login-delay", "3600", "--login-delay-burst", "2"],
    );
    for _ in 0..3 {
        let mut c = f.server.login("alice", PW);
        c.ok("QUIT");
    }
    let mut c = f.server.connect();
    c.ok("USER alice");
    assert!(c
        .err(&format!("PASS {PW}"))
        .starts_with("-ERR [LOGIN-DELAY] "));
}

#[test]
fn expire_zero_removes_retrieved_mail_at_quit_only() {
    let f = fixture("expire0", &["--expire", "0"]);
    for i in 1..=3 {
        f.deliver("alice", format!("Subject: {i}\r\n\r\n{i}\r\n").as_bytes());
    }
    let mut c = f.server.connect();
    assert!(capa(&mut c).contains(&"EXPIRE 0 USER".to_string()));
    c.login("alice", PW);
    assert!(capa(&mut c).contains(&"EXPIRE 0".to_string()));
    c.multi("RETR 1");
    c.multi("TOP 2 0");
    c.ok("QUIT");
    // RETR'd message 1 is gone; message 2 was only TOP'd.
    let mut c = f.server.login("alice", PW);
    assert!(c.ok("STAT").starts_with("+OK 2 "));
    c.multi("RETR 1");
    // A session that does not QUIT removes nothing, EXPIRE or not.
    c.drop_connection();
    std::thread::sleep(std::time::Duration::from_millis(300));
    f.server.login("alice", PW).stat_and_quit(2);
}

#[test]
fn expire_override_is_advertised_after_login() {
    let f = fixture("expireuser", &["--expire", "30"]);
    popadm_ok(
        f.data(),
        &["user", "set", "alice", "--expire", "never"],
        b"",
    );
    let mut c = f.server.connect();
    assert!(capa(&mut c).contains(&"EXPIRE 30 USER".to_string()));
    c.login("alice", PW);
    assert!(capa(&mut c).contains(&"EXPIRE NEVER".to_string()));
    c.ok("QUIT");
}

#[test]
fn a_thousand_pipelined_retrs_are_all_answered() {
    // RFC 2449 section 6.6: the client may send many commands without waiting.
    let f = fixture("pipeline1000", &[]);
    let body: Vec<u8> = (0..400)
        .flat_map(|i| format!("line {i} of a pipelined message\r\n").into_bytes())
        .collect();
    let msg = [b"Subject: p\r\n\r\n".as_slice(), &body].concat();
    f.deliver("alice", &msg);
    let mut c = f.server.login("alice", PW);
    let batch: String = "RETR 1\r\n".repeat(1000);
    // 8 KB of commands in one write; the server answers them in order, writing ~14 MB that
    // we only start reading once the whole batch is sent.
    c.send_raw(batch.as_bytes());
    for _ in 0..1000 {
        let status = c.line();
        assert!(status.starts_with("+OK"), "{status}");
        assert_eq!(c.body(), msg);
    }
    c.ok("QUIT");
}

#[test]
fn utf8_headers_need_utf8_mode() {
    // RFC 6856 section 3: UTF8 in AUTHORIZATION only, advertised as "UTF8 USER"; messages
    // with UTF-8 headers are refused with [UTF8] until the client sends it.
    let f = fixture("utf8", &[]);
    f.add_user("jöran", "pässword");
    let utf8_msg =
        "Subject: caf\u{e9} \u{2615}\r\nFrom: J\u{f6}ran <j@example.org>\r\n\r\nbody\r\n";
    f.deliver("alice", utf8_msg.as_bytes());
    f.deliver("alice", b"Subject: latin-1 \xe9\r\n\r\nbody \xff\r\n");
    let mut c = f.server.connect();
    assert!(capa(&mut c).contains(&"UTF8 USER".to_string()));
    c.login("alice", PW);
    let r = c.err("RETR 1");
    assert!(r.starts_with("-ERR [UTF8] "), "{r}");
    assert!(c.err("TOP 1 0").starts_with("-ERR [UTF8] "));
    // Raw 8-bit that is not UTF-8 is served as it is.
    c.multi("RETR 2");
    c.err("UTF8");
    c.ok("QUIT");

    let mut c = f.server.connect();
    // A non-ASCII user name needs UTF8 first.
    assert!(c.err("USER jöran").starts_with("-ERR [UTF8] "));
    c.ok("UTF8");
    // SASLprep (RFC 4013): the decomposed spelling of the password matches.
    c.ok("USER jöran");
    c.ok("PASS pa\u{308}ssword");
    c.ok("QUIT");
    let mut c = f.server.connect();
    c.ok("UTF8");
    c.login("alice", PW);
    let (_, body) = c.multi("RETR 1");
    assert_eq!(body, utf8_msg.as_bytes());
    c.ok("QUIT");
}

#[test]
fn lang_lists_and_selects() {
    // RFC 6856 section 4.
    let f = fixture("lang", &[]);
    let mut c = f.server.connect();
    assert!(capa(&mut c).contains(&"LANG".to_string()));
    let langs = c.listing("LANG");
    assert!(langs.iter().any(|l| l.starts_with("en ")), "{langs:?}");
    assert!(
        langs.iter().any(|l| l.starts_with("i-default ")),
        "{langs:?}"
    );
    c.ok("LANG i-default");
    c.ok("LANG EN");
    c.ok("LANG *");
    c.err("LANG tlh");
    c.login("alice", PW);
    c.ok("LANG en");
    c.ok("QUIT");
}
