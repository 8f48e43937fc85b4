//! Mail in from a real Postfix: a private instance (its own `config_directory`, queue, data
//! directory, log file and loopback SMTP port, all in a temporary directory; no system mail
//! configuration is read or touched) accepts messages by SMTP (RFC 5321) and hands them to
//! `popadm deliver` through a pipe(8) transport, the wiring docs/admin-guide.md gives. The
//! messages are then fetched from pop3d over POP3 and compared byte for byte.
//!
//! Postfix adds one header of its own at the top, `Received:` (RFC 5321 section 4.4), above
//! which `popadm deliver` puts `Return-Path:` and `Delivered-To:`; every byte of the message as
//! submitted follows unchanged. (Postfix would also add `Date:` or `Message-ID:` to a message
//! from a local client that lacks them; the messages here have both.) An unknown user is
//! bounced (exit 67, EX_NOUSER, to DSN 5.1.1) and the bounce reaches the sender's maildrop; a
//! store that cannot be opened (exit 75, EX_TEMPFAIL) leaves the message deferred in the queue.
//!
//! Needs Debian's `postfix` (installed by `cargo xtask deps`) and root, since Postfix's master
//! starts as root and pipe(8) runs the command as the unprivileged `nobody`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::clients::{output_text, strip_first_header};
use e2e::{bin, crlf, free_port, Server, TempDir, TIMEOUT};

const USER: &str = "mia@example.org";
const SENDER: &str = "sam@example.org";
const PW: &str = "pw mia";
/// The account pipe(8) runs popadm as: never root, never Postfix's own `mail_owner`.
const PIPE_USER: &str = "nobody";

/// A private Postfix, stopped on drop (`postfix stop`, then its master's PID is killed if it is
/// still there).
struct Postfix {
    dir: TempDir,
    port: u16,
}

/// main.cf's routing for the pipe transport: the wiring docs/admin-guide.md gives.
const PIPE_ROUTING: &str = "virtual_mailbox_domains = example.org
virtual_transport = pop3d
pop3d_destination_recipient_limit = 1
# A domain whose store cannot be opened: popadm exits 75 and the mail stays queued.
transport_maps = inline:{ broken.example=pop3d-broken }
pop3d-broken_destination_recipient_limit = 1
";

impl Postfix {
    /// Writes main.cf and master.cf for an instance routed by `routing` (main.cf lines), whose
    /// pipe transport `pop3d` delivers into `store` with the popadm at `popadm` and whose `lmtp`
    /// client is there for LMTP routes, and starts it.
    fn start(store: &Path, popadm: &Path, routing: &str) -> Postfix {
        let dir = TempDir::new("postfix");
        let d = dir.path();
        let port = free_port();
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let main_cf = format!(
            "# A private Postfix for the end-to-end suite.
compatibility_level = 3.6
config_directory = {d}/conf
queue_directory = {d}/queue
data_directory = {d}/data
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.test
mydomain = example.test
myorigin = example.test
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
notify_classes =
biff = no
# Nothing leaves this host: anything not routed below fails at once.
default_transport = error:no outside delivery in the test
{routing}",
            d = d.display()
        );
        let popadm = popadm.display();
        let store = store.display();
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
lmtp      unix  -       -       n       -       -       lmtp
pop3d     unix  -       n       n       -       -       pipe
  flags=q user={PIPE_USER} null_sender= argv={popadm} --data-dir {store} deliver -f ${{sender}} ${{recipient}}
pop3d-broken unix -     n       n       -       -       pipe
  flags=q user={PIPE_USER} null_sender= argv={popadm} --data-dir {store}/missing deliver -f ${{sender}} ${{recipient}}
"
        );
        std::fs::write(d.join("conf/main.cf"), main_cf).expect("main.cf");
        std::fs::write(d.join("conf/master.cf"), master_cf).expect("master.cf");
        // `postfix check` wants the data directory owned by mail_owner.
        chown("postfix", &d.join("data"));
        let pf = Postfix { dir, port };
        let out = pf.postfix("start");
        assert!(
            out.status.success(),
            "postfix start failed: {}\n{}",
            output_text(&out),
            pf.maillog()
        );
        // `postfix start` returns once master is initialised; the listener is then open.
        pf.wait_for("the SMTP listener", || {
            TcpStream::connect(("127.0.0.1", pf.port)).is_ok()
        });
        pf
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    fn postfix(&self, cmd: &str) -> Output {
        Command::new("postfix")
            .arg("-c")
            .arg(self.conf())
            .arg(cmd)
            .output()
            .expect("run postfix")
    }

    /// The last lines of Postfix's log, for failure messages.
    fn maillog(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- maillog (last 40 lines) ---\n{tail}")
    }

    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits (at most [`TIMEOUT`]) until `done` holds; fails with the log tail otherwise.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "Postfix: timed out waiting for {what}\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Submits `message` from `from` to `rcpt` by SMTP; fails with the log tail.
    fn submit(&self, from: &str, rcpt: &str, message: &[u8]) {
        self.submit_to(from, &[rcpt], message)
    }

    /// [`Postfix::submit`] to several recipients in one transaction.
    fn submit_to(&self, from: &str, rcpts: &[&str], message: &[u8]) {
        if let Err(e) = smtp_send(self.port, from, rcpts, message) {
            panic!("SMTP: {e}\n{}", self.maillog());
        }
    }

    /// Waits until Postfix bounced the message to `rcpt` as an unknown user (DSN 5.1.1).
    fn assert_bounced_unknown(&self, rcpt: &str) {
        let bounced = self.outcome(rcpt);
        assert!(
            bounced.contains("dsn=5.1.1") && bounced.contains("status=bounced"),
            "{bounced}\n{}",
            self.maillog()
        );
    }

    /// Waits until Postfix logs the fate of a message to `rcpt` (`status=sent`, `bounced` or
    /// `deferred`) and returns that log line.
    fn outcome(&self, rcpt: &str) -> String {
        let needle = format!("to=<{rcpt}>");
        let mut line = String::new();
        self.wait_for(&format!("the delivery to {rcpt}"), || {
            let log = std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default();
            match log
                .lines()
                .find(|l| l.contains(&needle) && l.contains(" status="))
            {
                Some(l) => {
                    line = l.to_string();
                    true
                }
                None => false,
            }
        });
        line
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = self.postfix("stop");
        let Some(pid) = pid else { return };
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn chown(user: &str, path: &Path) {
    let out = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(path)
        .output()
        .expect("run chown");
    assert!(out.status.success(), "chown {user}: {}", output_text(&out));
}

/// Regular files under `dir`, at any depth (Postfix hashes queue directories).
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => files_under(&e.path()),
                Ok(t) if t.is_file() => 1,
                _ => 0,
            })
            .sum()
    })
}

/// Reads one SMTP reply (its last line, after any `250-` continuation lines) and checks its
/// code (RFC 5321 section 4.2).
fn reply(r: &mut impl BufRead, want: &str, after: &str) -> Result<(), String> {
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("reading the reply to {after}: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed after {after}"));
        }
        if !line.starts_with(want) {
            return Err(format!("{after} answered {line:?}, wanted {want}"));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// Submits `message` by SMTP (RFC 5321 section 3.3; dot-stuffing per section 4.5.2).
fn smtp_send(port: u16, from: &str, rcpts: &[&str], message: &[u8]) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    reply(&mut r, "220", "connect")?;
    let mut cmd = |line: &[u8], want: &str| {
        w.write_all(line)
            .and_then(|()| w.write_all(b"\r\n"))
            .map_err(|e| e.to_string())?;
        let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
        reply(&mut r, want, &shown)
    };
    cmd(b"EHLO client.example.org", "250")?;
    cmd(
        format!("MAIL FROM:<{from}> BODY=8BITMIME").as_bytes(),
        "250",
    )?;
    for rcpt in rcpts {
        cmd(format!("RCPT TO:<{rcpt}>").as_bytes(), "250")?;
    }
    cmd(b"DATA", "354")?;
    let mut data = Vec::new();
    for line in crlf(message).split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data.push(b'.');
    cmd(&data, "250")?;
    cmd(b"QUIT", "221")
}

/// Mia's one message over POP3, after the `Return-Path:` (Sam) and `Delivered-To:` lines that
/// must open it, as popadm deliver and the LMTP listener write them.
fn mias_message(pop3d: &Server) -> Vec<u8> {
    let mut c = pop3d.login(USER, PW);
    assert_eq!(c.listing("LIST").len(), 1, "one message for {USER}");
    let (_, got) = c.multi("RETR 1");
    c.ok("QUIT");
    let lda = format!("Return-Path: <{SENDER}>\r\nDelivered-To: {USER}\r\n");
    assert!(
        got.starts_with(lda.as_bytes()),
        "{}",
        String::from_utf8_lossy(&got)
    );
    got[lda.len()..].to_vec()
}

/// Runs as root (Postfix's master must), with Postfix installed; else says why not.
fn can_run() -> bool {
    if !e2e::client_available_on_path("postfix") {
        return false;
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("SKIPPED: Postfix's master must start as root; run the suite as root");
    }
    root
}

#[test]
fn postfix_delivers_through_popadm_and_pop3_serves_it_byte_exact() {
    e2e::require!(can_run());
    let work = TempDir::new("postfix-store");
    // pipe(8) runs popadm as `nobody`, which may not reach the cargo target directory (a home
    // directory, say): give it its own copy.
    let popadm = work.path().join("popadm");
    std::fs::copy(bin("popadm"), &popadm).expect("copy popadm");
    std::fs::set_permissions(&popadm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let store = work.path().join("data");
    for user in [USER, SENDER] {
        e2e::add_user(&store, user, PW);
    }
    // The store belongs to the account popadm runs as (as /var/lib/pop3d belongs to pop3d).
    chown(PIPE_USER, &store);

    let postfix = Postfix::start(&store, &popadm, PIPE_ROUTING);
    let message = b"From: Sam <sam@example.org>\r\n\
To: Mia <mia@example.org>\r\n\
Subject: through Postfix\r\n\
\x20folded subject line\r\n\
Date: Thu, 01 Jan 2026 10:00:00 +0000\r\n\
Message-ID: <postfix-e2e-1@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Hello Mia,\r\n\
.a line with a leading dot\r\n\
..and one with two\r\n\
.\r\n\
From the start of a line, not quoted\r\n\
8-bit: caf\xc3\xa9\r\n\
trailing spaces   \r\n\
\r\n\
\r\n\
last line\r\n"
        .to_vec();
    postfix.submit(SENDER, USER, &message);
    let sent = postfix.outcome(USER);
    assert!(
        sent.contains("relay=pop3d") && sent.contains("status=sent"),
        "{sent}\n{}",
        postfix.maillog()
    );

    // An unknown user: popadm exits 67 (EX_NOUSER), Postfix bounces with 5.1.1 and the bounce
    // (null sender) is delivered to the sender's maildrop through the same transport.
    postfix.submit(
        SENDER,
        "ghost@example.org",
        b"From: sam@example.org\r\nTo: ghost@example.org\r\nSubject: to nobody\r\n\
Date: Thu, 01 Jan 2026 10:00:01 +0000\r\nMessage-ID: <postfix-e2e-2@example.org>\r\n\r\nlost?\r\n",
    );
    postfix.assert_bounced_unknown("ghost@example.org");
    let returned = postfix.outcome(SENDER);
    assert!(returned.contains("status=sent"), "{returned}");

    // A store that cannot be opened: popadm exits 75 (EX_TEMPFAIL) and the mail stays queued.
    postfix.submit(
        SENDER,
        "kim@broken.example",
        b"Subject: later\r\nFrom: sam@example.org\r\nTo: kim@broken.example\r\n\
Date: Thu, 01 Jan 2026 10:00:02 +0000\r\nMessage-ID: <postfix-e2e-3@example.org>\r\n\r\nlater\r\n",
    );
    let deferred = postfix.outcome("kim@broken.example");
    assert!(
        deferred.contains("status=deferred") && deferred.contains("temporary failure"),
        "{deferred}\n{}",
        postfix.maillog()
    );
    assert_eq!(
        files_under(&postfix.dir.path().join("queue/deferred")),
        1,
        "the deferred message is in the queue"
    );

    let pop3d = Server::start(&store, &[]);
    let after = mias_message(&pop3d);
    let after = &after[..];
    let rest = strip_first_header(after, "Received");
    let received = String::from_utf8_lossy(&after[..after.len() - rest.len()]);
    assert!(
        received.starts_with("Received: from ")
            && received.contains("by mx.example.test (Postfix)")
            && received.contains(&format!("for <{USER}>")),
        "{received}"
    );
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&message)
    );
    assert_eq!(rest, message, "bytes differ");

    let mut c = pop3d.login(SENDER, PW);
    let (_, bounce) = c.multi("RETR 1");
    c.ok("QUIT");
    let bounce = String::from_utf8_lossy(&bounce);
    assert!(
        bounce.starts_with(&format!("Return-Path: <>\r\nDelivered-To: {SENDER}\r\n")),
        "{bounce}"
    );
    assert!(
        bounce.contains("<ghost@example.org>: user unknown")
            && bounce.contains("no such account: ghost@example.org")
            && bounce.contains("Message-ID: <postfix-e2e-2@example.org>"),
        "{bounce}"
    );
}

/// Postfix's `lmtp` client delivering into pop3d's LMTP listeners, as docs/admin-guide.md
/// shows: `virtual_transport = lmtp:inet:127.0.0.1:PORT`, and a domain routed to
/// `lmtp:unix:PATH` (a socket of group `postfix`, mode 0660). One message to two known
/// recipients and an unknown one goes as one LMTP transaction (RFC 2033 section 4.2: a reply
/// per recipient): the unknown one bounces with 5.1.1 (refused at RCPT), the others get their
/// copy byte for byte under the same `Return-Path:` and `Delivered-To:` lines popadm writes.
#[test]
fn postfix_delivers_over_lmtp_inet_and_unix() {
    use std::os::unix::fs::FileTypeExt as _;
    e2e::require!(can_run());
    let work = TempDir::new("postfix-lmtp");
    let store = work.path().join("data");
    const UNA: &str = "una@sock.example";
    for domain in ["example.org", "sock.example"] {
        e2e::popadm_ok(&store, &["domain", "add", domain], b"");
    }
    for user in [USER, SENDER, UNA] {
        e2e::add_user(&store, user, PW);
    }
    // Postfix's lmtp client runs as `postfix`: it must reach the socket's directory.
    let sockets = work.path().join("sockets");
    std::fs::create_dir_all(&sockets).expect("mkdir");
    for dir in [work.path(), sockets.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let socket = sockets.join("lmtp.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let pop3d = Server::start(
        &store,
        &[
            "--listen-lmtp",
            "127.0.0.1:0",
            "--listen-lmtp-unix",
            socket_arg,
            "--lmtp-unix-group",
            "postfix",
        ],
    );
    let meta = std::fs::metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let lmtp = pop3d
        .listeners
        .iter()
        .find(|(kind, _)| kind == "lmtp")
        .map(|(_, a)| *a)
        .expect("lmtp listener");
    let routing = format!(
        "virtual_mailbox_domains = example.org, sock.example
virtual_transport = lmtp:inet:{lmtp}
transport_maps = inline:{{ sock.example=lmtp:unix:{socket_arg} }}
"
    );
    let postfix = Postfix::start(&store, Path::new("/nonexistent"), &routing);
    let message = b"From: Sam <sam@example.org>\r\n\
To: Mia <mia@example.org>, ghost@example.org\r\n\
Subject: over LMTP\r\n\
Date: Thu, 01 Jan 2026 11:00:00 +0000\r\n\
Message-ID: <postfix-lmtp-1@example.org>\r\n\
\r\n\
Hello over LMTP,\r\n\
.a line with a leading dot\r\n\
.\r\n\
8-bit: caf\xc3\xa9\r\n"
        .to_vec();
    postfix.submit_to(SENDER, &[USER, "ghost@example.org", SENDER], &message);
    for rcpt in [USER, SENDER] {
        let sent = postfix.outcome(rcpt);
        assert!(
            sent.contains(&format!("relay={lmtp}")) || sent.contains("relay=127.0.0.1"),
            "{sent}"
        );
        assert!(
            sent.contains("status=sent") && sent.contains(&format!("<{rcpt}> delivered")),
            "{sent}\n{}",
            postfix.maillog()
        );
    }
    postfix.assert_bounced_unknown("ghost@example.org");
    postfix.submit(
        SENDER,
        UNA,
        b"Subject: through the socket\r\nFrom: sam@example.org\r\n\
To: una@sock.example\r\nDate: Thu, 01 Jan 2026 11:00:01 +0000\r\n\
Message-ID: <postfix-lmtp-2@example.org>\r\n\r\nvia lmtp:unix\r\n",
    );
    let sent = postfix.outcome(UNA);
    assert!(
        sent.contains("status=sent") && sent.contains(socket_arg),
        "{sent}\n{}",
        postfix.maillog()
    );

    let after = mias_message(&pop3d);
    let rest = strip_first_header(&after, "Received");
    assert_eq!(rest, message, "bytes differ");
    // The sender's maildrop: its own copy, then the bounce for ghost (null sender).
    let mut c = pop3d.login(SENDER, PW);
    assert_eq!(c.listing("LIST").len(), 2);
    let both: Vec<String> = (1..=2)
        .map(|i| String::from_utf8_lossy(&c.multi(&format!("RETR {i}")).1).into_owned())
        .collect();
    c.ok("QUIT");
    let bounce = both
        .iter()
        .find(|m| m.starts_with(&format!("Return-Path: <>\r\nDelivered-To: {SENDER}\r\n")))
        .expect("the bounce for ghost");
    assert!(bounce.contains("<ghost@example.org>"), "{bounce}");
    assert!(
        both.iter().any(|m| m.ends_with("8-bit: caf\u{e9}\r\n")),
        "the sender's own copy: {both:?}"
    );
    let mut c = pop3d.login(UNA, PW);
    let (_, got) = c.multi("RETR 1");
    c.ok("QUIT");
    assert!(String::from_utf8_lossy(&got).ends_with("\r\n\r\nvia lmtp:unix\r\n"));
}
