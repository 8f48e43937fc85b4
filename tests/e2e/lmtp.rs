//! The LMTP listener (RFC 2033) of the real pop3d, driven by Python's `smtplib.LMTP` and by
//! raw sockets for what a library hides (pipelining, a client that vanishes mid-DATA), with
//! every delivery checked by retrieving it over POP3.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use e2e::{Fixture, Server};

const PW: &str = "lmtp-pass";
/// An LMTP listener on a loopback port, and bare names in example.org.
const LMTP_FLAGS: &[&str] = &[
    "--listen-lmtp",
    "127.0.0.1:0",
    "--default-domain",
    "example.org",
];

/// pop3d with an LMTP listener on a loopback port, alice and bob in example.org (also
/// reachable as bare names through the default domain), and `extra` flags.
fn fixture(tag: &str, extra: &[&str]) -> Fixture {
    let flags = [LMTP_FLAGS, extra].concat();
    let f = Fixture::with_flags(tag, &flags);
    f.add_user("alice@example.org", PW);
    f.add_user("bob@example.org", PW);
    f
}

/// The LMTP listener's address, as pop3d's readiness status names it.
fn lmtp_addr(server: &Server) -> SocketAddr {
    server
        .listeners
        .iter()
        .find(|(kind, _)| kind == "lmtp")
        .map(|(_, a)| *a)
        .expect("an lmtp listener")
}

/// Runs `script` after a prelude that connects `c = smtplib.LMTP(...)` to `target` (an
/// address, or a Unix socket path) and sends LHLO; what it prints.
fn smtplib(target: &str, script: &str) -> String {
    let prelude = r#"
import smtplib, sys
target = sys.argv[1]
if target.startswith("/"):
    c = smtplib.LMTP(target, timeout=20)
else:
    host, port = target.rsplit(":", 1)
    c = smtplib.LMTP(host, int(port), timeout=20)
code, lhlo = c.ehlo("client.test")
assert code == 250, (code, lhlo)
def reply(r):
    code, text = r
    print(code, text.decode())
"#;
    e2e::run_text(Command::new("python3").args(["-c", &format!("{prelude}{script}"), target]))
}

/// One message (a Python bytes literal) from `sender` to alice through smtplib, which must be
/// delivered.
fn deliver_to_alice(target: &str, sender: &str, message: &str) {
    let out = smtplib(
        target,
        &format!(
            "reply(c.mail({sender:?}))\nreply(c.rcpt(\"alice@example.org\"))\n\
             reply(c.data({message}))\nc.quit()\n"
        ),
    );
    assert_eq!(
        out.lines().last(),
        Some("250 2.0.0 <alice@example.org> delivered"),
        "{out}"
    );
}

/// The messages of `user`, retrieved over POP3 (and left there).
fn mailbox(server: &Server, user: &str) -> Vec<String> {
    let mut c = server.login_when_free(user, PW);
    let count: usize = c
        .ok("STAT")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("STAT count");
    let messages = (1..=count)
        .map(|i| String::from_utf8_lossy(&c.multi(&format!("RETR {i}")).1).into_owned())
        .collect();
    c.ok("QUIT");
    messages
}

/// RFC 2033 section 4.2: one reply per accepted recipient after DATA, in RCPT order; an
/// unknown recipient is refused at RCPT (550 5.1.1) and the others get their copy, each with
/// `Return-Path:` and `Delivered-To:` as popadm deliver writes them. A bare name is an account
/// of the default domain, as at a POP3 login.
#[test]
fn several_recipients_one_unknown_each_known_one_gets_a_copy() {
    e2e::require!("python3");
    let f = fixture("lmtp-rcpts", &[]);
    let out = smtplib(
        &lmtp_addr(&f.server).to_string(),
        r#"
reply(c.mail("sender@example.net", ["BODY=8BITMIME"]))
reply(c.rcpt("alice@example.org"))
reply(c.rcpt("ghost@example.org"))
reply(c.rcpt("bob"))
reply(c.data(b"Subject: hello\r\n\r\nbody \xc3\xa9\r\n"))
reply(c.getreply())
reply(c.quit())
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "250 2.1.0 sender OK", "{out}");
    assert_eq!(lines[1], "250 2.1.5 <alice@example.org> OK", "{out}");
    assert_eq!(
        lines[2], "550 5.1.1 <ghost@example.org> no such user",
        "{out}"
    );
    assert_eq!(lines[3], "250 2.1.5 <bob> OK", "{out}");
    assert_eq!(lines[4], "250 2.0.0 <alice@example.org> delivered", "{out}");
    assert_eq!(lines[5], "250 2.0.0 <bob> delivered", "{out}");
    assert!(lines[6].starts_with("221 2.0.0"), "{out}");
    for user in ["alice@example.org", "bob@example.org"] {
        let got = mailbox(&f.server, user);
        assert_eq!(
            got,
            [format!(
                "Return-Path: <sender@example.net>\r\nDelivered-To: {user}\r\n\
                 Subject: hello\r\n\r\nbody \u{e9}\r\n"
            )],
            "{user}"
        );
    }
}

/// Issue 17 with RFC 2033 section 4.2 and RFC 3463: in one transaction an unknown recipient
/// is refused at RCPT (550 5.1.1), a recipient over quota gets 552 5.2.2 after DATA (or
/// 452 4.2.2 with `--quota-full-temporary`: the MTA keeps the message), and the third gets its
/// copy; the full mailbox stays as it was.
#[test]
fn one_transaction_with_an_unknown_and_an_over_quota_recipient() {
    e2e::require!("python3");
    for (temporary, want) in [(false, "552 5.2.2"), (true, "452 4.2.2")] {
        let extra: &[&str] = if temporary {
            &["--quota-full-temporary"]
        } else {
            &[]
        };
        let f = fixture("lmtp-quota", extra);
        e2e::popadm_ok(
            f.data(),
            &["user", "set", "bob@example.org", "--quota-messages", "0"],
            b"",
        );
        let out = smtplib(
            &lmtp_addr(&f.server).to_string(),
            r#"
reply(c.mail("sender@example.net"))
reply(c.rcpt("ghost@example.org"))
reply(c.rcpt("bob@example.org"))
reply(c.rcpt("alice@example.org"))
reply(c.data(b"Subject: quota\r\n\r\nbody\r\n"))
reply(c.getreply())
reply(c.quit())
"#,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1], "550 5.1.1 <ghost@example.org> no such user",
            "{out}"
        );
        assert_eq!(lines[2], "250 2.1.5 <bob@example.org> OK", "{out}");
        assert_eq!(lines[3], "250 2.1.5 <alice@example.org> OK", "{out}");
        // smtplib's data() returns the first recipient's reply, getreply() the next.
        assert!(lines[4].starts_with(want), "{out}");
        assert_eq!(lines[5], "250 2.0.0 <alice@example.org> delivered", "{out}");
        assert_eq!(mailbox(&f.server, "alice@example.org").len(), 1);
        assert!(mailbox(&f.server, "bob@example.org").is_empty());
    }
}

/// RFC 5321 section 4.5.2: smtplib stuffs lines that begin with a dot; the server takes the
/// extra dot off again, and a lone `.` inside a line ends nothing.
#[test]
fn dot_stuffed_lines_are_stored_as_they_were_written() {
    e2e::require!("python3");
    let f = fixture("lmtp-dots", &[]);
    deliver_to_alice(
        &lmtp_addr(&f.server).to_string(),
        "<>",
        r#"b"Subject: dots\r\n\r\n.\r\n..two\r\n.three\r\nend .\r\n""#,
    );
    assert_eq!(
        mailbox(&f.server, "alice@example.org"),
        [
            "Return-Path: <>\r\nDelivered-To: alice@example.org\r\nSubject: dots\r\n\r\n\
          .\r\n..two\r\n.three\r\nend .\r\n"
        ]
    );
}

/// RFC 1870: the limit is announced in LHLO (`SIZE n`); a declared SIZE over it is refused at
/// MAIL, an undeclared message over it after DATA (552 5.3.4), and nothing is stored.
#[test]
fn messages_over_the_size_limit_are_refused_552_5_3_4() {
    e2e::require!("python3");
    let f = fixture("lmtp-size", &["--lmtp-max-message-size", "1000"]);
    let out = smtplib(
        &lmtp_addr(&f.server).to_string(),
        r#"
print("SIZE", c.esmtp_features.get("size"))
reply(c.mail("a@example.net", ["SIZE=1001"]))
reply(c.mail("a@example.net", ["SIZE=900"]))
reply(c.rcpt("alice@example.org"))
reply(c.rcpt("bob@example.org"))
reply(c.data(b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n"))
reply(c.getreply())
reply(c.mail("a@example.net"))
reply(c.rcpt("alice@example.org"))
reply(c.data(b"Subject: small\r\n\r\nfits\r\n"))
c.quit()
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "SIZE 1000", "{out}");
    assert_eq!(
        lines[1], "552 5.3.4 message exceeds the size limit of 1000 octets",
        "{out}"
    );
    assert_eq!(lines[2], "250 2.1.0 sender OK", "{out}");
    assert!(lines[5].starts_with("552 5.3.4"), "{out}");
    assert!(lines[6].starts_with("552 5.3.4"), "{out}");
    assert_eq!(lines[9], "250 2.0.0 <alice@example.org> delivered", "{out}");
    let got = mailbox(&f.server, "alice@example.org");
    assert_eq!(got.len(), 1, "only the small one: {got:?}");
    assert!(
        got[0].ends_with("Subject: small\r\n\r\nfits\r\n"),
        "{got:?}"
    );
    assert!(mailbox(&f.server, "bob@example.org").is_empty());
}

/// RFC 5321 section 4.1.1.5: RSET ends the transaction (DATA then has no MAIL, 503), and the
/// next transaction is whole; VRFY is 252 (section 3.5.3), NOOP 250.
#[test]
fn rset_ends_the_transaction() {
    e2e::require!("python3");
    let f = fixture("lmtp-rset", &[]);
    let out = smtplib(
        &lmtp_addr(&f.server).to_string(),
        r#"
reply(c.mail("a@example.net"))
reply(c.rcpt("alice@example.org"))
reply(c.rset())
reply(c.docmd("DATA"))
reply(c.verify("alice"))
reply(c.noop())
reply(c.mail("b@example.net"))
reply(c.rcpt("bob@example.org"))
reply(c.data(b"Subject: after rset\r\n\r\nx\r\n"))
c.quit()
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[2], "250 2.0.0 OK", "{out}");
    assert_eq!(lines[3], "503 5.5.1 MAIL first", "{out}");
    assert!(lines[4].starts_with("252 "), "{out}");
    assert_eq!(lines[5], "250 2.0.0 OK", "{out}");
    assert_eq!(lines[8], "250 2.0.0 <bob@example.org> delivered", "{out}");
    assert!(mailbox(&f.server, "alice@example.org").is_empty());
    assert_eq!(mailbox(&f.server, "bob@example.org").len(), 1);
}

/// A raw LMTP connection: the greeting read.
fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let greeting = line(&mut reader);
    assert!(greeting.starts_with("220 "), "{greeting}");
    (stream, reader)
}

fn line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read");
    assert!(line.ends_with("\r\n"), "{line:?}");
    line.truncate(line.len() - 2);
    line
}

/// RFC 2920 (PIPELINING) and RFC 2033 section 4.2: the whole envelope in one write, the
/// message and QUIT in another; the replies come in order, one per command and then one per
/// accepted recipient.
#[test]
fn a_pipelined_transaction_is_answered_in_order() {
    let f = fixture("lmtp-pipe", &[]);
    let (mut stream, mut reader) = connect(lmtp_addr(&f.server));
    stream
        .write_all(
            b"LHLO raw\r\nMAIL FROM:<p@example.net>\r\nRCPT TO:<alice@example.org>\r\n\
              RCPT TO:<nobody@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n",
        )
        .expect("write");
    let mut lhlo = Vec::new();
    loop {
        let l = line(&mut reader);
        let last = l.as_bytes().get(3) == Some(&b' ');
        lhlo.push(l);
        if last {
            break;
        }
    }
    for cap in ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-8BITMIME"] {
        assert!(lhlo.iter().any(|l| l == cap), "{lhlo:?}");
    }
    assert!(
        lhlo.last().is_some_and(|l| l.starts_with("250 SIZE ")),
        "{lhlo:?}"
    );
    let want = [
        "250 2.1.0 sender OK",
        "250 2.1.5 <alice@example.org> OK",
        "550 5.1.1 <nobody@example.org> no such user",
        "250 2.1.5 <bob@example.org> OK",
    ];
    for w in want {
        assert_eq!(line(&mut reader), w);
    }
    assert!(line(&mut reader).starts_with("354 "));
    stream
        .write_all(b"Subject: piped\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
        .expect("write");
    assert_eq!(line(&mut reader), "250 2.0.0 <alice@example.org> delivered");
    assert_eq!(line(&mut reader), "250 2.0.0 <bob@example.org> delivered");
    assert!(line(&mut reader).starts_with("221 2.0.0"));
    let got = mailbox(&f.server, "bob@example.org");
    assert!(
        got[0].ends_with("Subject: piped\r\n\r\n.leading dot\r\n"),
        "{got:?}"
    );
}

/// A client that goes away in the middle of DATA leaves nothing stored (RFC 5321 section
/// 4.1.1.4: the transaction counts only after the final dot).
#[test]
fn a_client_vanishing_mid_data_stores_nothing() {
    let f = fixture("lmtp-vanish", &[]);
    let (mut stream, mut reader) = connect(lmtp_addr(&f.server));
    stream
        .write_all(
            b"LHLO raw\r\nMAIL FROM:<v@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n",
        )
        .expect("write");
    while !line(&mut reader).starts_with("354 ") {}
    // More than the in-memory spool, so part of it went to the temporary file.
    let chunk = "0123456789abcdef".repeat(64) + "\r\n";
    stream
        .write_all(format!("Subject: cut\r\n\r\n{}", chunk.repeat(1200)).as_bytes())
        .expect("write");
    drop(stream);
    drop(reader);
    f.server
        .await_log("client went away inside a transaction; nothing stored");
    assert!(mailbox(&f.server, "alice@example.org").is_empty());
}

/// pop3d killed (SIGKILL) while a message is arriving: after the restart nothing of it is
/// stored, and the MTA, which saw no reply, delivers it again in full.
#[test]
fn pop3d_killed_mid_data_stores_nothing() {
    let mut f = fixture("lmtp-killed", &[]);
    let (mut stream, mut reader) = connect(lmtp_addr(&f.server));
    stream
        .write_all(
            b"LHLO raw\r\nMAIL FROM:<k@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n",
        )
        .expect("write");
    while !line(&mut reader).starts_with("354 ") {}
    stream
        .write_all(b"Subject: killed\r\n\r\nhalf a message\r\n")
        .expect("write");
    f.server.await_log("LMTP session started");
    f.server.signal("KILL");
    f.server.wait();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    f.restart(&[
        "--listen-lmtp",
        "127.0.0.1:0",
        "--default-domain",
        "example.org",
    ]);
    assert!(mailbox(&f.server, "alice@example.org").is_empty());
}

/// LMTP carries no authentication (RFC 2033 section 1): a peer outside
/// `lmtp_trusted_networks` is closed without a byte.
#[test]
fn an_untrusted_peer_is_closed_unanswered() {
    let f = fixture(
        "lmtp-untrusted",
        &["--lmtp-trusted-network", "192.0.2.0/24"],
    );
    let mut stream = TcpStream::connect(lmtp_addr(&f.server)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut got = Vec::new();
    let n = stream.read_to_end(&mut got).unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&got));
    f.server.await_log("LMTP peer not in lmtp_trusted_networks");
}

/// `--listen-lmtp-unix`: the socket gets its mode, and smtplib delivers through it.
#[test]
fn the_unix_socket_listener_delivers() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    e2e::require!("python3");
    let dir = testbed::TempDir::new("lmtp-unix-sock");
    let path = dir.path().join("lmtp.sock");
    let path_arg = path.to_str().expect("utf-8 path");
    let f = fixture(
        "lmtp-unix",
        &["--listen-lmtp-unix", path_arg, "--lmtp-unix-mode", "0600"],
    );
    let meta = std::fs::metadata(&path).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    deliver_to_alice(
        path_arg,
        "u@example.net",
        r#"b"Subject: unix\r\n\r\nvia the socket\r\n""#,
    );
    let got = mailbox(&f.server, "alice@example.org");
    assert!(
        got[0].ends_with("Subject: unix\r\n\r\nvia the socket\r\n"),
        "{got:?}"
    );
}

/// LMTP connections count against `max_connections` with POP3's: one over the cap is told
/// `421 4.3.2` (RFC 5321 section 3.8) and closed.
#[test]
fn a_connection_over_the_cap_gets_421() {
    let f = fixture("lmtp-cap", &["--max-connections", "1"]);
    let (_held, _reader) = connect(lmtp_addr(&f.server));
    let stream = TcpStream::connect(lmtp_addr(&f.server)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let refusal = line(&mut reader);
    assert!(
        refusal.starts_with("421 4.3.2 ") && refusal.ends_with("too many connections"),
        "{refusal}"
    );
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap_or(0), 0, "closed");
}

/// With `--log-format json` a delivery is logged with its recipient and sender as fields, in
/// the LMTP session's span, so a log shipper can index them.
#[test]
fn deliveries_are_logged_as_json_fields() {
    let f = fixture("lmtp-json", &["--log-format", "json"]);
    let (mut stream, mut reader) = connect(lmtp_addr(&f.server));
    stream
        .write_all(
            b"LHLO raw\r\nMAIL FROM:<j@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n\
              Subject: json\r\n\r\nx\r\n.\r\nQUIT\r\n",
        )
        .expect("write");
    while !line(&mut reader).starts_with("221 ") {}
    f.server.await_log("\"to\":\"alice@example.org\"");
    let log = f.server.log();
    let entry = log
        .lines()
        .find(|l| l.contains("\"to\":\"alice@example.org\""))
        .expect("the delivery's line");
    for field in [
        "\"message\":\"delivered\"",
        "\"from\":\"j@example.net\"",
        "\"name\":\"lmtp\"",
    ] {
        assert!(entry.contains(field), "{field} not in {entry}");
    }
}
