//! The real popadm binary: account management, delivery exit codes, imports, stat.

use std::io::Write as _;
use std::time::{Duration, Instant};

use e2e::{crlf, popadm, popadm_ok, Fixture, Server, TempDir};

#[test]
fn user_lifecycle() {
    let dir = TempDir::new("users");
    let d = dir.path();
    assert!(e2e::add_user(d, "dave@Example.org", "pw one").contains("dave@example.org"));
    // Duplicate account: clear error, non-zero exit.
    let dup = popadm(
        d,
        &["user", "add", "dave@example.org", "--password-stdin"],
        b"x\n",
    );
    assert!(!dup.status.success());
    assert!(!dup.stderr.is_empty());
    // Empty password refused.
    let empty = popadm(d, &["user", "add", "erin", "--password-stdin"], b"\n");
    assert!(!empty.status.success());
    // Invalid names refused.
    for bad in ["a b", "@example.org", "a@b@c", ""] {
        let out = popadm(d, &["user", "add", bad, "--password-stdin"], b"pw\n");
        assert!(!out.status.success(), "{bad:?} accepted");
    }
    e2e::add_user(d, "erin", "pw two");
    let list = popadm_ok(d, &["user", "list"], b"");
    assert!(
        list.contains("dave@example.org") && list.contains("erin"),
        "{list}"
    );

    // The password change takes effect for POP3 logins.
    popadm_ok(
        d,
        &["user", "passwd", "erin", "--password-stdin"],
        b"new pw\n",
    );
    let server = e2e::Server::start(d, &[]);
    let mut c = server.connect();
    c.ok("USER erin");
    c.err("PASS pw two");
    c.login("erin", "new pw");
    c.ok("QUIT");
    drop(server);

    // Deleting without --yes and without a terminal is refused; with --yes it goes.
    let refused = popadm(d, &["user", "del", "erin"], b"y\n");
    assert!(!refused.status.success());
    popadm_ok(d, &["user", "del", "erin", "--yes"], b"");
    assert!(!popadm_ok(d, &["user", "list"], b"").contains("erin"));
    let gone = popadm(d, &["user", "del", "erin", "--yes"], b"");
    assert!(!gone.status.success());
}

#[test]
fn deliver_uses_sysexits() {
    let dir = TempDir::new("deliver");
    let d = dir.path();
    // No database yet: temporary failure, so an MTA keeps the mail queued.
    let out = popadm(d, &["deliver", "nobody"], b"Subject: x\r\n\r\nx\r\n");
    assert_eq!(out.status.code(), Some(75));
    e2e::add_user(d, "frank", "pw");
    // (arguments, message, exit code, what stderr says)
    let cases: &[(&[&str], &[u8], i32, &str)] = &[
        (&["deliver", "nobody"], b"Subject: x\r\n\r\nx\r\n", 67, ""),
        (&["deliver", "frank"], b"", 65, ""),
        // The limit named is the one given, not that plus the headers deliver adds (issue 19).
        (
            &["deliver", "frank", "--max-size", "10"],
            b"Subject: too big\r\n\r\n",
            65,
            "exceeds the limit of 10\n",
        ),
        // A sender that is no address (a space outside quotes) is refused (EX_DATAERR); one
        // pair of enclosing angle brackets is not.
        (
            &["deliver", "-f", "bad sender", "frank"],
            b"Subject: x\r\n\r\n",
            65,
            "invalid envelope sender",
        ),
        // A sender that would inject a header line is refused for good (EX_DATAERR).
        (
            &["deliver", "-f", "a@b\r\nBcc: x", "frank"],
            b"Subject: x\r\n\r\n",
            65,
            "",
        ),
        (&["deliver", "frank"], b"Subject: ok\r\n\r\nok\r\n", 0, ""),
    ];
    for (args, message, code, said) in cases {
        let out = popadm(d, args, message);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    let stat = popadm_ok(d, &["stat", "frank"], b"");
    assert!(stat.contains("messages: 1"), "{stat}");
    let stored = b"Delivered-To: frank\r\nSubject: ok\r\n\r\nok\r\n";
    assert!(
        stat.contains(&format!("octets: {}", stored.len())),
        "{stat}"
    );
    assert!(stat.contains("lock: none"), "{stat}");
}

/// Issue 15 item 13: `deliver` reads (spools) the whole message before its write transaction,
/// so a slow pipe holds no database lock: another account's login (which takes its maildrop
/// lock, a write) and QUIT go through while `deliver`'s stdin is still open, well inside the
/// store's 5 s busy timeout.
#[test]
fn a_slow_deliver_does_not_block_other_logins() {
    let f = Fixture::new("slow-deliver");
    f.add_user("olga", "pw");
    f.add_user("pete", "pw");
    let mut child = e2e::popadm_spawn(f.data(), &["deliver", "olga"]);
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(b"Subject: slow\r\n\r\nfirst part\r\n")
        .expect("write");
    pipe.flush().expect("flush");
    // deliver has its first line and waits for the rest.
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let mut c = f.server.login("pete", "pw");
    c.ok("STAT");
    c.ok("QUIT");
    let took = started.elapsed();
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "deliver did not wait for its stdin"
    );
    pipe.write_all(b"last part\r\n").expect("write");
    drop(pipe);
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(2),
        "login and QUIT took {took:?}"
    );
    let mut c = f.server.login("olga", "pw");
    let (_, body) = c.multi("RETR 1");
    assert_eq!(
        body,
        b"Delivered-To: olga\r\nSubject: slow\r\n\r\nfirst part\r\nlast part\r\n"
    );
    c.ok("QUIT");
}

/// `deliver` as a local delivery agent: `Return-Path:` and `Delivered-To:` on top (RFC 5321
/// section 4.4), the sender from `-f`, else `$SENDER`, else a leading mbox `From ` line, which
/// is removed; `--no-lda-headers` stores the bytes as given.
#[test]
fn deliver_adds_lda_headers() {
    let f = Fixture::new("lda");
    f.add_user("Kim@Example.org", "pw");
    let body = b"Subject: hi\n\nbody\n";
    let run = |args: &[&str], sender_env: Option<&str>, input: &[u8]| {
        let mut cmd = std::process::Command::new(e2e::bin("popadm"));
        cmd.arg("--data-dir").arg(f.data()).args(args);
        cmd.env_remove("SENDER");
        if let Some(s) = sender_env {
            cmd.env("SENDER", s);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn popadm");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input)
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        &["deliver", "-f", "<bob@example.net>", "kim@example.org"],
        Some("env@x"),
        body,
    );
    run(
        &["deliver", "kim@example.org"],
        Some("env@example.net"),
        body,
    );
    let mut from_line = b"From carol@example.com Thu Nov 26 10:00:00 2026\n".to_vec();
    from_line.extend_from_slice(body);
    run(&["deliver", "kim@example.org"], None, &from_line);
    run(&["deliver", "--from", "", "kim@example.org"], None, body);
    run(
        &["deliver", "--no-lda-headers", "kim@example.org"],
        Some("env@x"),
        body,
    );
    let want: Vec<Vec<u8>> = [
        "Return-Path: <bob@example.net>\r\nDelivered-To: kim@example.org\r\n",
        "Return-Path: <env@example.net>\r\nDelivered-To: kim@example.org\r\n",
        "Return-Path: <carol@example.com>\r\nDelivered-To: kim@example.org\r\n",
        "Return-Path: <>\r\nDelivered-To: kim@example.org\r\n",
        "",
    ]
    .iter()
    .map(|h| {
        let mut m = h.as_bytes().to_vec();
        m.extend_from_slice(&crlf(body));
        m
    })
    .collect();
    let mut c = f.server.login("kim@example.org", "pw");
    for (i, m) in want.iter().enumerate() {
        let (_, got) = c.multi(&format!("RETR {}", i + 1));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(m),
            "message {}",
            i + 1
        );
    }
    c.ok("QUIT");
}

#[test]
fn stat_shows_the_lock_holder_during_a_session() {
    let f = Fixture::new("statlock");
    f.add_user("gina", "pw");
    let mut c = f.server.login("gina", "pw");
    let stat = popadm_ok(f.data(), &["stat", "gina"], b"");
    assert!(stat.contains("lock: pop3d@"), "{stat}");
    // Deleting a locked account is refused.
    let out = popadm(f.data(), &["user", "del", "gina", "--yes"], b"");
    assert!(!out.status.success());
    c.ok("QUIT");
}

#[test]
fn imports_are_byte_exact_and_all_or_nothing() {
    let f = Fixture::new("import");
    f.add_user("hank", "pw");
    let mbox = b"From a@example.org Thu Nov 26 10:00:00 2026\nSubject: one\nX-UIDL: legacy-uid-1\n\nbody\n>From quoted\n\nFrom b@example.org Thu Nov 26 10:00:01 2026\nSubject: two\n\n.dot\n";
    let path = f.data().join("box.mbox");
    std::fs::write(&path, mbox).expect("write");
    let p = path.to_str().expect("utf8");
    assert!(popadm_ok(f.data(), &["import", "mbox", p, "hank"], b"").contains("imported 2"));

    // A maildir with new/ and cur/, ordered by delivery time.
    let md = f.data().join("Maildir");
    maildir(
        &md,
        &[
            ("cur/1700000002.M1P1.host:2,S", "Subject: md2\n\nsecond\n"),
            ("new/1700000001.M1P1.host", "Subject: md1\n\nfirst\n"),
        ],
    );
    let m = md.to_str().expect("utf8");
    assert!(popadm_ok(f.data(), &["import", "maildir", m, "hank"], b"").contains("imported 2"));

    let mut c = f.server.login("hank", "pw");
    let expected: Vec<Vec<u8>> = vec![
        crlf(b"Subject: one\nX-UIDL: legacy-uid-1\n\nbody\nFrom quoted\n"),
        crlf(b"Subject: two\n\n.dot\n"),
        crlf(b"Subject: md1\n\nfirst\n"),
        crlf(b"Subject: md2\n\nsecond\n"),
    ];
    for (i, m) in expected.iter().enumerate() {
        let (_, body) = c.multi(&format!("RETR {}", i + 1));
        assert_eq!(&body, m, "message {}", i + 1);
    }
    // qpopper's X-UIDL is kept, so clients do not download again after a migration.
    assert_eq!(c.ok("UIDL 1"), "+OK 1 legacy-uid-1");
    c.ok("QUIT");

    // A failing import stores nothing: the second message is empty.
    let bad = b"From x Thu Nov 26 10:00:00 2026\nSubject: fine\n\nok\n\nFrom y Thu Nov 26 10:00:00 2026\n\n";
    std::fs::write(&path, bad).expect("write");
    let out = popadm(f.data(), &["import", "mbox", p, "hank"], b"");
    assert!(!out.status.success());
    let stat = popadm_ok(f.data(), &["stat", "hank"], b"");
    assert!(stat.contains("messages: 4"), "{stat}");
    // An X-UIDL: header is the sender's to write (issue 15 item 12): one repeating an existing
    // UID does not fail the import (as it did), the message gets a new UID, and the summary
    // says so.
    let dup = b"From x Thu Nov 26 10:00:00 2026\nSubject: fine\n\nok\n\nFrom y Thu Nov 26 10:00:00 2026\nX-UIDL: legacy-uid-1\n\ndup\n";
    std::fs::write(&path, dup).expect("write");
    let said = popadm_ok(f.data(), &["import", "mbox", p, "hank"], b"");
    assert!(
        said.contains("imported 2 messages into hank; 1 of them got a new UID"),
        "{said}"
    );
    let mut c = f.server.login("hank", "pw");
    assert_eq!(c.ok("UIDL 1"), "+OK 1 legacy-uid-1");
    assert_ne!(c.ok("UIDL 6"), "+OK 6 legacy-uid-1");
    c.ok("QUIT");
    // Not an mbox at all.
    std::fs::write(&path, b"hello\n").expect("write");
    assert!(!popadm(f.data(), &["import", "mbox", p, "hank"], b"")
        .status
        .success());
}

/// A maildir at `md` (new/, cur/ and tmp/) holding `files` (path under `md`, contents).
fn maildir(md: &std::path::Path, files: &[(&str, &str)]) {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).expect("mkdir");
    }
    for (path, contents) in files {
        std::fs::write(md.join(path), contents).expect("write");
    }
}

/// Issue 15 item 11: the maildir belongs to its owner, who can plant `cur/x -> /etc/shadow`;
/// an import (often run as root) follows no link: it fails naming the file, importing nothing.
#[test]
fn import_maildir_refuses_a_planted_symbolic_link() {
    let f = Fixture::new("symlink");
    f.add_user("ivy", "pw");
    let md = f.data().join("ivy-maildir");
    std::fs::create_dir_all(md.join("cur")).expect("mkdir");
    std::fs::write(md.join("cur/1.a.host:2,S"), b"Subject: a\n\na\n").expect("w");
    std::fs::write(f.data().join("not-hers"), b"root:secret-hash:19000::::::\n").expect("w");
    std::os::unix::fs::symlink(f.data().join("not-hers"), md.join("cur/2.b.host:2,S"))
        .expect("symlink");
    let m = md.to_str().expect("utf8");
    let out = popadm(f.data(), &["import", "maildir", m, "ivy"], b"");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2.b.host:2,S is a symbolic link"),
        "{stderr}"
    );
    let stat = popadm_ok(f.data(), &["stat", "ivy"], b"");
    assert!(stat.contains("messages: 0"), "{stat}");
}

#[test]
fn passwords_are_never_taken_from_argv() {
    let dir = TempDir::new("argv");
    let out = popadm(dir.path(), &["user", "add", "ivan", "--password", "x"], b"");
    assert!(!out.status.success());
}

/// A maildir left by Dovecot keeps its POP3 UIDLs (Dovecot's default `%08Xu%08Xv` from
/// `dovecot-uidlist`), so clients do not download again after the move (RFC 1939 section 7).
#[test]
fn dovecot_maildir_import_keeps_uidls() {
    let f = Fixture::new("dovecot");
    f.add_user("lena", "pw");
    let md = f.data().join("dovecot-maildir");
    let uidlist = "3 V1700000000 N3 G6f1ab2c3d4e5f60718293a4b5c6d7e8f\n\
                   1 :1700000001.M1P1.host,S=15\n\
                   2 W30 :1700000002.M2P2.host:2,S\n";
    maildir(
        &md,
        &[
            ("dovecot-uidlist", uidlist),
            ("cur/1700000001.M1P1.host,S=15:2,S", "Subject: a\n\na\n"),
            ("cur/1700000002.M2P2.host:2,RS", "Subject: b\n\nb\n"),
            ("new/1700000003.M3P3.host", "Subject: c\n\nc\n"),
        ],
    );
    let map = f.data().join("uidl.map");
    std::fs::write(&map, "1700000003.M3P3.host from-map\n").expect("w");
    let m = md.to_str().expect("utf8");
    let out = popadm_ok(
        f.data(),
        &[
            "import",
            "maildir",
            m,
            "lena",
            "--uidl-format",
            "dovecot",
            "--uidl-map",
            map.to_str().expect("utf8"),
        ],
        b"",
    );
    assert!(out.contains("imported 3"), "{out}");
    let mut c = f.server.login("lena", "pw");
    assert_eq!(
        c.listing("UIDL"),
        ["1 000000016553f100", "2 000000026553f100", "3 from-map"]
    );
    c.ok("QUIT");
}

/// `popadm backup` copies the database while a session holds a maildrop lock and mail is
/// delivered; the copy serves the same maildrop.
#[test]
fn backup_while_a_session_runs() {
    let f = Fixture::new("backup");
    f.add_user("nina", "pw");
    f.deliver("nina", b"Subject: one\r\n\r\n1\r\n");
    let mut c = f.server.login("nina", "pw");
    let (_, first) = c.multi("RETR 1");
    f.deliver("nina", b"Subject: two\r\n\r\n2\r\n");
    let copy_dir = TempDir::new("backup-copy");
    let copy = copy_dir.path().join(store_file());
    let out = popadm_ok(f.data(), &["backup", copy.to_str().expect("utf8")], b"");
    assert!(out.starts_with("backup written to "), "{out}");
    // The copy holds password hashes: owner-only whatever the umask (issue 19).
    let mode = std::fs::metadata(&copy).expect("copy").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // The session goes on undisturbed.
    c.stat_and_quit(1);
    // An existing file is never overwritten.
    let again = popadm(f.data(), &["backup", copy.to_str().expect("utf8")], b"");
    assert!(!again.status.success());
    // The copy is a complete store: pop3d serves both messages from it.
    let server = Server::start(copy_dir.path(), &[]);
    let mut c = server.login("nina", "pw");
    assert!(c.ok("STAT").starts_with("+OK 2 "));
    let (_, body) = c.multi("RETR 1");
    assert_eq!(body, first);
    c.ok("QUIT");
}

fn store_file() -> &'static str {
    "maildrops.sqlite3"
}

#[test]
fn domains_are_listed_added_and_deleted_with_their_accounts() {
    let dir = TempDir::new("domains");
    let d = dir.path();
    e2e::add_user(d, "a@example.org", "pw");
    e2e::add_user(d, "b@example.org", "pw");
    popadm_ok(d, &["domain", "add", "Empty.TEST"], b"");
    assert!(!popadm(d, &["domain", "add", "empty.test"], b"")
        .status
        .success());
    let list = popadm_ok(d, &["domain", "list"], b"");
    assert_eq!(list, "DOMAIN\tACCOUNTS\nempty.test\t0\nexample.org\t2\n");
    // Deleting a domain with users needs --yes and says what would go.
    let refused = popadm(d, &["domain", "del", "example.org"], b"y\n");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("a@example.org") && err.contains("b@example.org"),
        "{err}"
    );
    assert!(popadm_ok(d, &["domain", "del", "example.org", "--yes"], b"").contains("2 accounts"));
    assert!(!popadm_ok(d, &["user", "list"], b"").contains("example.org"));
    popadm_ok(d, &["domain", "del", "empty.test"], b"");
    assert!(!popadm(d, &["domain", "del", "nope.test", "--yes"], b"")
        .status
        .success());
}

/// `popadm import passwd`: a Dovecot passwd-file, all or nothing; a user imported from a
/// `{CRAM-MD5}` line only logs in with CRAM-MD5 (RFC 2195) through curl and nothing else.
#[test]
fn dovecot_passwd_import() {
    let dir = TempDir::new("passwd-import");
    let d = dir.path();
    e2e::add_user(d, "bob@example.org", "old pw");
    let bob_mail: &[u8] = b"Subject: kept\r\n\r\nbob's mail survives the import\r\n";
    popadm_ok(
        d,
        &["deliver", "--no-lda-headers", "bob@example.org"],
        bob_mail,
    );
    // `doveadm pw` output (Dovecot 2.3.19): CRAM-MD5 of the RFC 2195 secret
    // "tanstaaftanstaaf", ARGON2ID of "dovecot secret".
    let file = d.join("passwd");
    std::fs::write(
        &file,
        "# users of the old Dovecot\n\
         tim:{CRAM-MD5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b:1000:1000::/home/tim::\n\
         ann:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$yGJLnXGCzr82xREyeXyQBg$eigLtF86yU0Qw1dNpTZY2P71I35eJq6jJDnaLtoGgAI\n\
         bob:{PLAIN}bob pw::\n\
         old:{SHA512-CRYPT}$6$rounds=5000$salt$hash\n",
    )
    .expect("write passwd");
    let file = file.to_str().expect("utf8 path");
    let users = || popadm_ok(d, &["user", "list"], b"");
    let import = |extra: &[&str]| {
        let mut args = vec!["import", "passwd", file, "--domain", "example.org"];
        args.extend_from_slice(extra);
        popadm(d, &args, b"")
    };

    // An unsupported scheme fails the whole import, naming the line.
    let out = import(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5: old@example.org") && err.contains("{SHA512-CRYPT}"),
        "{err}"
    );
    assert!(!users().contains("tim@"), "half-applied: {}", users());
    // Skipping it, the existing bob still refuses the import: nothing is written.
    let out = import(&["--skip-unsupported"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bob@example.org"));
    assert!(!users().contains("tim@"), "half-applied: {}", users());
    // A dry run says what would happen and writes nothing.
    let out = import(&["--skip-unsupported", "--update", "--dry-run"]);
    e2e::assert_success(&out);
    let dry = String::from_utf8_lossy(&out.stdout);
    assert!(dry.contains("tim@example.org: would be created"), "{dry}");
    assert!(dry.contains("bob@example.org: would be updated"), "{dry}");
    assert!(!users().contains("tim@"));
    // The real thing.
    let out = import(&["--skip-unsupported", "--update"]);
    e2e::assert_success(&out);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("tim@example.org: created") && report.contains("CRAM-MD5 only"),
        "{report}"
    );
    assert!(
        report.contains("imported 3 accounts") && report.contains("1 skipped"),
        "{report}"
    );
    let list = users();
    let legacy_column = |name: &str| e2e::legacy_auth_column(d, name);
    assert_eq!(
        legacy_column("tim@example.org").as_str(),
        "cram-md5",
        "{list}"
    );
    assert_eq!(legacy_column("ann@example.org").as_str(), "no", "{list}");
    assert!(!list.contains("old@"), "{list}");

    let tim_mail: &[u8] = b"Subject: hi tim\r\n\r\nCRAM-MD5 from Dovecot states\r\n";
    popadm_ok(
        d,
        &["deliver", "--no-lda-headers", "tim@example.org"],
        tim_mail,
    );
    popadm_ok(d, &["deliver", "ann@example.org"], tim_mail);
    let server = Server::start(d, &["--legacy-auth"]);
    if e2e::client_available("curl", "--version") {
        let curl = |user: &str, pass: &str, mech: &str| {
            std::process::Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "20"])
                .args(["--user", &format!("{user}:{pass}")])
                .args(["--login-options", &format!("AUTH={mech}")])
                .arg(format!("pop3://{}/1", server.addr))
                .output()
                .expect("run curl")
        };
        let out = curl("tim@example.org", "tanstaaftanstaaf", "CRAM-MD5");
        e2e::assert_success(&out);
        assert_eq!(out.stdout, crlf(tim_mail));
        assert!(!curl("tim@example.org", "tanstaaf", "CRAM-MD5")
            .status
            .success());
        let out = curl("ann@example.org", "dovecot secret", "PLAIN");
        e2e::assert_success(&out);
        // bob's new password works and his mail is still there.
        let out = curl("bob@example.org", "bob pw", "PLAIN");
        e2e::assert_success(&out);
        assert_eq!(out.stdout, crlf(bob_mail));
    }
    // The states serve CRAM-MD5 only: USER/PASS with the very password is refused.
    let mut c = server.connect();
    c.ok("USER tim@example.org");
    assert!(c.err("PASS tanstaaftanstaaf").starts_with("-ERR [AUTH] "));
    c.ok("USER bob@example.org");
    assert!(c.err("PASS old pw").starts_with("-ERR [AUTH] "));
    drop(c);
    // APOP needs the password itself: the right digest for tim is refused all the same.
    if e2e::client_available("python3", "--version") {
        let mut c = server.connect();
        let ts = c
            .greeting
            .find('<')
            .map(|i| c.greeting[i..].to_owned())
            .expect("APOP timestamp in the greeting");
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys;print(hashlib.md5(sys.argv[1].encode()).hexdigest())",
                &format!("{ts}tanstaaftanstaaf"),
            ])
            .output()
            .expect("python3");
        let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(digest.len(), 32);
        assert!(c
            .err(&format!("APOP tim@example.org {digest}"))
            .starts_with("-ERR [AUTH] "));
    }
}

/// The row of node `id` in `popadm node list`, split into its columns.
fn node_row(data: &std::path::Path, id: &str) -> Option<Vec<String>> {
    let list = popadm_ok(data, &["node", "list", "--heartbeat", "1"], b"");
    let mut lines = list.lines();
    assert_eq!(
        lines.next(),
        Some("NODE\tADDRESS\tSTATE\tSESSIONS\tHEARTBEAT-AGE\tSTATUS")
    );
    lines
        .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>())
        .find(|row| row[0] == id)
}

/// Logs in until the reply is no longer `[IN-USE]`/`+OK` as before: the node read the state
/// at its next heartbeat (1 s). Returns the first reply that `done` accepts.
fn login_until(server: &Server, user: &str, done: impl Fn(&str) -> bool) -> String {
    let (within, every) = (Duration::from_secs(15), Duration::from_millis(200));
    e2e::eventually("no change of the node's state", within, every, || {
        let mut c = server.connect();
        c.ok(&format!("USER {user}"));
        let reply = c.cmd("PASS pw");
        c.cmd("QUIT");
        done(&reply).then_some(reply)
    })
}

/// A rolling restart's moves: a pop3d with --node-id appears in `popadm node list`; drained,
/// it refuses new logins with `-ERR [SYS/TEMP]` while a session logged in before still
/// retrieves, deletes and quits with its deletions applied; `node up` lets logins in again.
#[test]
fn node_list_drain_and_up() {
    let dir = TempDir::new("nodes");
    let d = dir.path();
    for user in ["alice", "bob"] {
        e2e::add_user(d, user, "pw");
    }
    for i in 0..2 {
        let message = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        popadm_ok(
            d,
            &["deliver", "--no-lda-headers", "alice"],
            message.as_bytes(),
        );
    }
    let server = Server::start(d, &["--node-id", "pop-e2e", "--heartbeat", "1"]);
    // The first heartbeat comes before pop3d takes connections (and says "ready").
    let row = node_row(d, "pop-e2e").expect("the node in `node list`");
    let addr = server.addr.to_string();
    assert_eq!(
        (row[1].as_str(), row[2].as_str(), row[5].as_str()),
        (addr.as_str(), "up", "live"),
        "{row:?}"
    );

    let mut inside = server.login("alice", "pw");
    let out = popadm_ok(d, &["node", "drain", "pop-e2e"], b"");
    assert!(out.contains("draining"), "{out}");
    assert_eq!(node_row(d, "pop-e2e").expect("row")[2], "draining");
    let refused = login_until(&server, "bob", |r| !r.starts_with("+OK"));
    assert!(refused.starts_with("-ERR [SYS/TEMP] "), "{refused}");
    assert!(refused.contains("drain"), "{refused}");

    // The session from before the drain goes on to the end, and its UPDATE is applied.
    let (_, body) = inside.multi("RETR 1");
    assert_eq!(body, b"Subject: 0\r\n\r\nbody 0\r\n");
    inside.ok("DELE 1");
    inside.ok("QUIT");
    let stat = popadm_ok(d, &["stat", "alice"], b"");
    assert!(stat.contains("messages: 1"), "{stat}");

    popadm_ok(d, &["node", "up", "pop-e2e"], b"");
    let back = login_until(&server, "bob", |r| r.starts_with("+OK"));
    assert!(back.starts_with("+OK"), "{back}");

    // Unknown ids: a clear error and exit 67; remove takes the row away.
    for cmd in ["drain", "up", "remove"] {
        let out = popadm(d, &["node", cmd, "no-such-node"], b"");
        assert_eq!(out.status.code(), Some(67), "node {cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no such node: no-such-node"), "{stderr}");
    }
    server.stop();
    popadm_ok(d, &["node", "remove", "pop-e2e"], b"");
    assert_eq!(node_row(d, "pop-e2e"), None);
}

/// Issue 19: popadm never makes a database by accident. In a fresh directory, without
/// `--data-dir` or `POP3D_DATA_DIR`, `user add` refuses, says how to name one, and creates
/// nothing; with `--data-dir` it says that it creates one.
#[test]
fn a_store_is_created_only_where_named() {
    let dir = TempDir::new("no-implicit-store");
    let run = |args: &[&str]| {
        let mut child = std::process::Command::new(e2e::bin("popadm"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("POP3D_DATA_DIR")
            .env_remove("POP3D_STORE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn popadm");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"pw\n")
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    };
    let out = run(&["user", "add", "eve", "--password-stdin"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(!dir.path().join("pop3d-data").exists());
    let out = run(&[
        "--data-dir",
        "named",
        "user",
        "add",
        "eve",
        "--password-stdin",
    ]);
    e2e::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("creating a new maildrop database in named"),
        "{stderr}"
    );
    // Once it exists, the default directory works as before (pop3d's own default).
    std::fs::rename(dir.path().join("named"), dir.path().join("pop3d-data")).expect("rename");
    let out = run(&["user", "list"]);
    e2e::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("eve"));
}

/// Issue 19: account names follow a defined syntax (RFC 5321's dot-string minus what breaks
/// tools), a new domain is made only on purpose once the store has domains, and a bare name
/// beside the same name in a domain draws a warning.
#[test]
fn account_names_and_domains_are_created_on_purpose() {
    let dir = TempDir::new("names");
    let d = dir.path();
    popadm_ok(
        d,
        &["user", "add", "dave@example.org", "--password-stdin"],
        b"pw\n",
    );
    for bad in ["o'brien", "a/b", "a:b", ".dot", "x@bad_domain.org"] {
        let out = popadm(d, &["user", "add", bad, "--password-stdin"], b"pw\n");
        assert!(!out.status.success(), "{bad:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("may hold only") || stderr.contains("may not"),
            "{stderr}"
        );
    }
    // A typo of the domain is no new domain...
    let out = popadm(
        d,
        &["user", "add", "eve@exmaple.org", "--password-stdin"],
        b"pw\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("popadm domain add exmaple.org"), "{stderr}");
    assert!(!popadm_ok(d, &["domain", "list"], b"").contains("exmaple"));
    // ... unless asked for, or added first.
    let out = popadm_ok(
        d,
        &[
            "user",
            "add",
            "eve@example.net",
            "--new-domain",
            "--password-stdin",
        ],
        b"pw\n",
    );
    assert!(out.contains("new domain example.net"), "{out}");
    popadm_ok(d, &["domain", "add", "example.com"], b"");
    popadm_ok(
        d,
        &["user", "add", "fay@example.com", "--password-stdin"],
        b"pw\n",
    );
    // `dave` beside dave@example.org: created, with a warning naming both.
    let out = popadm(d, &["user", "add", "dave", "--password-stdin"], b"pw\n");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("dave@example.org"),
        "{stderr}"
    );
}

/// Issue 19: imports are idempotent. The same mbox imported again (one message with an
/// X-UIDL, one without, found by its content, which has a dot-led line: stored in wire form,
/// byte-stuffed) stores nothing new and says how many it skipped; a Maildir too.
#[test]
fn a_second_import_skips_what_is_there() {
    let f = Fixture::new("reimport");
    f.add_user("ida", "pw");
    let mbox = f.data().join("box.mbox");
    std::fs::write(
        &mbox,
        b"From a Thu Nov 26 10:00:00 2026\nX-UIDL: q-1\nSubject: one\n\n1\n\nFrom b Thu Nov 26 10:00:01 2026\nSubject: two\n\n.dot-led\n2\n",
    )
    .expect("write");
    let p = mbox.to_str().expect("utf8");
    let first = popadm_ok(f.data(), &["import", "mbox", p, "ida"], b"");
    assert!(first.contains("imported 2 messages"), "{first}");
    let second = popadm_ok(f.data(), &["import", "mbox", p, "ida"], b"");
    assert!(
        second.contains("imported 0 messages into ida; skipped 2 already there"),
        "{second}"
    );
    let md = f.data().join("Maildir");
    maildir(
        &md,
        &[("new/1700000001.M1P1.host", "Subject: three\n\n3\n")],
    );
    let m = md.to_str().expect("utf8");
    assert!(popadm_ok(f.data(), &["import", "maildir", m, "ida"], b"").contains("imported 1"));
    let again = popadm_ok(f.data(), &["import", "maildir", m, "ida"], b"");
    assert!(again.contains("skipped 1 already there"), "{again}");
    let stat = popadm_ok(f.data(), &["stat", "ida"], b"");
    assert!(stat.contains("messages: 3"), "{stat}");
}
