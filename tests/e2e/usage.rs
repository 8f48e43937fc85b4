//! What popadm shows and enforces of an account's use: quotas at every way in (`deliver`,
//! `import`), use against them in `user list` and `stat`, the last login pop3d records in
//! batches, and the long commands' output without a terminal.

use std::time::Duration;

use e2e::{popadm, popadm_ok, user_list_column, Fixture, TempDir};

/// The stored size of `Subject: N\r\n\r\nbody\r\n` as `deliver --no-lda-headers` stores it.
const MESSAGE: &[u8] = b"Subject: q\r\n\r\nbody 12345\r\n";

fn deliver(d: &std::path::Path, extra: &[&str], name: &str) -> std::process::Output {
    let mut args = vec!["deliver", "--no-lda-headers"];
    args.extend_from_slice(extra);
    args.push(name);
    popadm(d, &args, MESSAGE)
}

/// Quotas resolve account, then domain, then the global default (kept in the store); a full
/// mailbox bounces (77, EX_NOPERM) or waits (75, EX_TEMPFAIL, `--quota-full-temporary`), and
/// `user list` and `stat` show the use against the limit.
#[test]
fn deliver_refuses_a_full_mailbox_with_the_configured_exit_code() {
    let dir = TempDir::new("quota-deliver");
    let d = dir.path();
    e2e::add_user(d, "ann@quota.example", "pw");
    e2e::add_user(d, "solo", "pw");
    let said = popadm_ok(d, &["quota", "default", "--quota-messages", "2"], b"");
    assert_eq!(
        said,
        "global default: quota-messages 2, quota-octets none\n"
    );
    assert_eq!(
        popadm_ok(d, &["quota", "default"], b""),
        "global default: quota-messages 2, quota-octets none\n"
    );
    popadm_ok(
        d,
        &["domain", "set", "quota.example", "--quota-messages", "3"],
        b"",
    );
    // The global default for the account without a domain: two fit, the third bounces.
    for _ in 0..2 {
        assert_eq!(deliver(d, &[], "solo").status.code(), Some(0));
    }
    let full = deliver(d, &[], "solo");
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("solo is over quota"), "{stderr}");
    let temporary = deliver(d, &["--quota-full-temporary"], "solo");
    assert_eq!(temporary.status.code(), Some(75));
    assert_eq!(user_list_column(d, "solo", "QUOTA-MESSAGES"), "2/2");

    // The domain's default for its account: three fit.
    for _ in 0..3 {
        assert_eq!(deliver(d, &[], "ann@quota.example").status.code(), Some(0));
    }
    assert_eq!(deliver(d, &[], "ann@quota.example").status.code(), Some(77));

    // The account's own limit beats both; octets take K/M/G suffixes.
    let said = popadm_ok(
        d,
        &[
            "user",
            "set",
            "ann@quota.example",
            "--quota-messages",
            "none",
            "--quota-octets",
            "1K",
        ],
        b"",
    );
    assert_eq!(
        said,
        "ann@quota.example: quota-messages none, quota-octets 1024\n"
    );
    assert_eq!(deliver(d, &[], "ann@quota.example").status.code(), Some(0));
    let octets = 4 * MESSAGE.len();
    assert_eq!(
        user_list_column(d, "ann@quota.example", "QUOTA-OCTETS"),
        format!("{octets}/1024")
    );
    assert_eq!(
        user_list_column(d, "ann@quota.example", "QUOTA-MESSAGES"),
        "4/-"
    );
    let stat = popadm_ok(d, &["stat", "ann@quota.example"], b"");
    assert!(
        stat.contains(&format!("quota octets: {octets}/1024\n"))
            && stat.contains("quota messages: 4/-\n"),
        "{stat}"
    );
    let json = popadm_ok(d, &["stat", "ann@quota.example", "--json"], b"");
    assert!(
        json.contains(&format!("\"octets\":{octets},\"lock\":null"))
            && json.contains("\"quota\":{\"messages\":null,\"octets\":1024}}"),
        "{json}"
    );
    assert_valid_json(&popadm_ok(d, &["user", "list", "--json"], b""));
    // Back to the domain's default with `default`.
    popadm_ok(
        d,
        &[
            "user",
            "set",
            "ann@quota.example",
            "--quota-messages",
            "default",
        ],
        b"",
    );
    assert_eq!(deliver(d, &[], "ann@quota.example").status.code(), Some(77));
    // Bad values are usage errors.
    for bad in ["1.5M", "-1", "lots"] {
        let out = popadm(d, &["user", "set", "solo", "--quota-octets", bad], b"");
        assert_eq!(out.status.code(), Some(64), "{bad}");
    }
    let out = popadm(
        d,
        &["domain", "set", "nowhere.example", "--quota-messages", "1"],
        b"",
    );
    assert!(!out.status.success());
}

/// `import` refuses an import that would go over the quota, names the account and stores
/// nothing; `--ignore-quota` imports it anyway. Without a terminal, no progress bar is drawn:
/// stderr holds no escape sequence and no carriage return.
#[test]
fn import_refuses_to_go_over_quota_unless_told() {
    let f = Fixture::new("quota-import");
    let d = f.data();
    f.add_user("ivy", "pw");
    popadm_ok(d, &["user", "set", "ivy", "--quota-messages", "2"], b"");
    let mbox = b"From a@example.org Thu Nov 26 10:00:00 2026\nSubject: one\n\n1\n\n\
                 From a@example.org Thu Nov 26 10:00:01 2026\nSubject: two\n\n2\n\n\
                 From a@example.org Thu Nov 26 10:00:02 2026\nSubject: three\n\n3\n";
    let path = d.join("box.mbox");
    std::fs::write(&path, mbox).expect("write");
    let p = path.to_str().expect("utf8");
    let out = popadm(d, &["import", "mbox", p, "ivy"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ivy is over quota") && stderr.contains("--ignore-quota"),
        "{stderr}"
    );
    assert!(popadm_ok(d, &["stat", "ivy"], b"").contains("messages: 0\n"));

    let out = popadm(d, &["import", "mbox", p, "ivy", "--ignore-quota"], b"");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "imported 3 messages into ivy\n"
    );
    assert_no_progress(&out.stderr);
    assert_eq!(user_list_column(d, "ivy", "QUOTA-MESSAGES"), "3/2");
}

/// `text` parses as JSON (checked by Python's json module, where installed).
fn assert_valid_json(text: &str) {
    if !e2e::client_available("python3", "--version") {
        return;
    }
    let mut child = std::process::Command::new("python3")
        .args(["-c", "import json, sys; json.load(sys.stdin)"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success(), "not JSON: {text}");
}

/// What a long command writes to stderr when it is not a terminal: nothing of a progress bar.
fn assert_no_progress(stderr: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    assert!(
        !stderr.contains(&0x1b) && !stderr.contains(&b'\r'),
        "progress output without a terminal: {text:?}"
    );
}

/// Every login is recorded (not only with LOGIN-DELAY), with its address and mechanism, in a
/// batch pop3d writes every few seconds: awaited with a bounded poll.
#[test]
fn user_list_shows_every_login_with_address_and_mechanism() {
    let f = Fixture::new("last-login");
    let d = f.data();
    f.add_user("lou", "pw");
    assert_eq!(user_list_column(d, "lou", "LAST-LOGIN"), "never");
    f.server.login("lou", "pw").stat_and_quit(0);
    let from = e2e::eventually(
        "the login recorded",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let from = user_list_column(d, "lou", "LAST-LOGIN-FROM");
            (from != "-").then_some(from)
        },
    );
    assert_eq!(from, "127.0.0.1");
    assert_eq!(user_list_column(d, "lou", "LAST-LOGIN-MECHANISM"), "USER");
    assert_ne!(user_list_column(d, "lou", "LAST-LOGIN"), "never");
    let stat = popadm_ok(d, &["stat", "lou"], b"");
    assert!(stat.contains(" from 127.0.0.1 (USER)\n"), "{stat}");
    let json = popadm_ok(d, &["user", "list", "--json"], b"");
    assert!(
        json.contains("\"last_login_from\":\"127.0.0.1\",\"last_login_mechanism\":\"USER\""),
        "{json}"
    );
    assert_valid_json(&json);

    // A login just before shutdown is written by the last batch, at shutdown (RFC 5034: a
    // SASL login records its mechanism).
    let Fixture { dir, server } = f;
    let mut c = server.connect();
    c.ok("AUTH PLAIN AGxvdQBwdw==");
    c.ok("QUIT");
    assert!(server.stop().success());
    assert_eq!(
        user_list_column(dir.path(), "lou", "LAST-LOGIN-MECHANISM"),
        "PLAIN"
    );
}

/// On a terminal (script(1) gives popadm a pseudo-terminal) a long import draws its bar
/// (messages and octets) and clears it, leaving the summary; `backup` without one prints
/// only its summary.
#[test]
fn a_long_import_draws_a_progress_bar_only_on_a_terminal() {
    e2e::require!("script");
    let f = Fixture::new("progress");
    let d = f.data();
    f.add_user("pat", "pw");
    let mut mbox = Vec::new();
    for i in 0..3000 {
        mbox.extend_from_slice(
            format!("From a@example.org Thu Nov 26 10:00:00 2026\nSubject: {i}\n\nbody {i}\n\n")
                .as_bytes(),
        );
    }
    let path = d.join("big.mbox");
    std::fs::write(&path, &mbox).expect("write");
    let command = format!(
        "'{}' --data-dir '{}' import mbox '{}' pat",
        e2e::bin("popadm").display(),
        d.display(),
        path.display()
    );
    let out = e2e::run(
        std::process::Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null()),
    );
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("imported 3000 messages into pat"),
        "{screen}"
    );
    assert!(
        screen.contains(" eta ") && screen.contains(" KiB") && screen.contains('\u{1b}'),
        "no progress bar drawn: {screen:?}"
    );

    let copy = d.join("copy.sqlite3");
    let out = popadm(d, &["backup", copy.to_str().expect("utf8")], b"");
    assert!(out.status.success());
    assert_no_progress(&out.stderr);
}
