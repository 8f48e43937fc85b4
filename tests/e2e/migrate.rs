//! `popadm migrate pop3` and `popadm uidl diff` against the real pop3d: a maildrop moves to a
//! second data directory with every UIDL kept (RFC 1939 section 7), over plain POP3, STLS
//! (RFC 2595) and implicit TLS (RFC 8314), and the diff proves it before cut-over.

use std::process::Output;

use e2e::{crlf, popadm, popadm_ok, popadm_remote, Fixture, Server, TempDir};

const PW: &str = "old pw";

fn messages() -> Vec<Vec<u8>> {
    vec![
        b"Subject: one\r\n\r\nfirst\r\n.leading dot\r\n".to_vec(),
        b"Subject: two\n\n8-bit \xe9\n.\nend".to_vec(),
        b"Subject: three\r\n\r\n".to_vec(),
    ]
}

fn source(tag: &str) -> Fixture {
    Fixture::with_mailbox(tag, &[], "olga@example.org", PW, &messages())
}

fn target(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    e2e::add_user(dir.path(), "olga", "new pw");
    dir
}

/// `popadm --data-dir DIR <cmd> --host 127.0.0.1 --port PORT --user ... [extra] olga`.
fn remote_cmd(dir: &TempDir, cmd: &[&str], port: u16, extra: &[&str]) -> Output {
    popadm_remote(dir.path(), cmd, port, "olga@example.org", PW, extra, "olga")
}

use e2e::clients::output_text as text;

/// `migrate pop3` with `migrate_flags` into a new target `tag`, then `uidl diff` with
/// `diff_flags`, which must find both sides identical.
fn migrate_then_diff(tag: &str, port: u16, migrate_flags: &[&str], diff_flags: &[&str]) {
    let dst = target(tag);
    let out = remote_cmd(&dst, &["migrate", "pop3"], port, migrate_flags);
    assert!(out.status.success(), "{}", text(&out));
    let out = remote_cmd(&dst, &["uidl", "diff"], port, diff_flags);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn uidls(server: &Server, user: &str, pw: &str) -> Vec<String> {
    let mut c = server.login(user, pw);
    let l = c.listing("UIDL");
    c.ok("QUIT");
    l
}

#[test]
fn migrate_keeps_uidls_and_diff_proves_it() {
    let src = source("migsrc");
    let dst = target("migdst");
    let port = src.server.addr.port();

    let out = remote_cmd(&dst, &["migrate", "pop3"], port, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("migrated 3 messages"),
        "{}",
        text(&out)
    );
    let out = remote_cmd(&dst, &["uidl", "diff"], port, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "uidl: identical (3 messages)\n"
    );

    // Nothing was deleted or marked on the source; its listing is unchanged.
    let before = uidls(&src.server, "olga@example.org", PW);
    assert_eq!(before.len(), 3);

    // The target serves the same bytes under the same UIDLs.
    let dst_server = Server::start(dst.path(), &[]);
    assert_eq!(uidls(&dst_server, "olga", "new pw"), before);
    let mut c = dst_server.login("olga", "new pw");
    for (i, m) in messages().iter().enumerate() {
        let (_, body) = c.multi(&format!("RETR {}", i + 1));
        assert_eq!(body, crlf(m), "message {}", i + 1);
    }
    c.ok("QUIT");
    drop(dst_server);

    // Mail that arrives at the old server before cut-over shows up as remote-only (exit 1)...
    src.deliver("olga@example.org", b"Subject: late\r\n\r\nlate\r\n");
    let out = remote_cmd(&dst, &["uidl", "diff"], port, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let late = uidls(&src.server, "olga@example.org", PW)
        .pop()
        .expect("four messages");
    let late_uid = late.split(' ').nth(1).expect("uid");
    assert!(
        stdout.contains(&format!("remote-only {late_uid} (message 4 there)")),
        "{stdout}"
    );
    assert!(
        stdout.contains("uidl: 1 remote-only, 0 local-only, 3 in both"),
        "{stdout}"
    );
    // ...and a second run fetches it alone.
    let out = remote_cmd(&dst, &["migrate", "pop3"], port, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("migrated 1 messages")
            && String::from_utf8_lossy(&out.stdout).contains("3 already present"),
        "{}",
        text(&out)
    );
    let out = remote_cmd(&dst, &["uidl", "diff"], port, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A wrong password fails without storing anything.
    let out = popadm(
        dst.path(),
        &[
            "uidl",
            "diff",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--user",
            "olga@example.org",
            "--password-stdin",
            "olga",
        ],
        b"wrong\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[AUTH]"),
        "{}",
        text(&out)
    );
}

#[test]
fn migrate_over_tls_and_stls() {
    let src = source("migtls");
    let cert = src.server.self_signed_cert();
    let cafile = cert.to_str().expect("utf8");
    let tls_port = src.server.tls_addr.expect("pop3s listener").port();

    // Implicit TLS (RFC 8314), trusting the server's self-signed certificate.
    let tls = ["--tls", "--cafile", cafile];
    migrate_then_diff("migtlsdst", tls_port, &tls, &tls);

    // STLS (RFC 2595) on the cleartext port.
    let port = src.server.addr.port();
    let (verified, insecure) = (
        ["--starttls", "--cafile", cafile],
        ["--starttls", "--insecure"],
    );
    migrate_then_diff("migstlsdst", port, &verified, &insecure);

    // An untrusted certificate is refused: the system bundle does not know it.
    let dst3 = target("migtlsbad");
    let out = remote_cmd(&dst3, &["migrate", "pop3"], tls_port, &["--tls"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        popadm_ok(dst3.path(), &["stat", "olga"], b"").contains("messages: 0"),
        "nothing stored"
    );
}
