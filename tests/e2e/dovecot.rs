//! Migration from a real Dovecot keeping every UIDL (RFC 1939 section 7), the way an operator
//! would do it: a private Dovecot POP3 server (its own configuration, `base_dir`, passwd-file and
//! Maildir in a temporary directory, on a loopback port) serves a maildrop; fetchmail, leaving
//! mail on the server (`keep`, `uidl`), downloads it; `popadm migrate pop3` copies it into
//! pop3d and `popadm uidl diff` proves the UIDLs equal; then the same fetchmail, with the same
//! idfile, pointed at pop3d downloads nothing, and a message delivered since by `popadm deliver`
//! alone. `popadm import maildir` of the same Maildir, after Dovecot wrote its
//! `dovecot-uidlist`, gives the same UIDLs too.
//!
//! Dovecot's UIDLs here come from its default `pop3_uidl_format = %08Xu%08Xv`: the message's
//! IMAP UID then the mailbox's UID validity, each as 8 hex digits in lower case (Dovecot's `X`
//! modifier prints with `%llx`; the importer once assumed upper case), both read from
//! `dovecot-uidlist` (the test checks that too). Dovecot appends the missing CRLF to a message
//! whose file does not end in a newline; pop3d then stores and serves that.
//!
//! Needs Debian's `dovecot-pop3d` and fetchmail (`cargo xtask deps` installs both).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::clients::{assert_same, fetchmail, fetchmail_messages, lf, output_text, Scratch};
use e2e::{crlf, free_port, popadm_ok, popadm_remote, Client, Server, TempDir, TIMEOUT};

const USER: &str = "olga";
const PW: &str = "olga's pw";

/// The Maildir Dovecot serves, by file name (`cur/` or `new/` and the base name); Dovecot
/// numbers new files in name order. One has a line that is a lone dot, one does not end in a
/// newline.
fn maildir_messages() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "cur/1700000001.M1P1.old:2,S",
            b"From: a@example.org\nSubject: one\nMessage-ID: <1@example.org>\n\nHello.\n\
.leading dot\n..two dots\n"
                .to_vec(),
        ),
        (
            "cur/1700000002.M2P2.old:2,",
            b"Subject: a dot line\n\nbefore\n.\nafter\n".to_vec(),
        ),
        (
            "cur/1700000003.M3P3.old:2,RS",
            b"Subject: 8-bit\n\ncaf\xc3\xa9, latin-1 \xe9\n\n\n".to_vec(),
        ),
        (
            "new/1700000004.M4P4.old",
            b"Subject: no final newline\n\nlast line without newline".to_vec(),
        ),
    ]
}

/// A private Dovecot serving POP3 on a loopback port, stopped by its PID on drop.
struct Dovecot {
    child: Child,
    dir: TempDir,
    port: u16,
}

/// The accounts Dovecot uses: as root, the mail belongs to `nobody` and Dovecot's own
/// unprivileged users run its processes; otherwise everything runs as the current user.
struct Ids {
    uid: String,
    gid: String,
    internal_user: String,
    login_user: String,
}

fn id(args: &[&str]) -> Option<String> {
    let out = Command::new("id").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ids() -> Ids {
    let known = |u: &str| id(&["-u", u]).is_some();
    if id(&["-u"]).as_deref() == Some("0") {
        let pick = |u: &str| if known(u) { u } else { "nobody" }.to_string();
        Ids {
            uid: id(&["-u", "nobody"]).expect("user nobody"),
            gid: id(&["-g", "nobody"]).expect("group of nobody"),
            internal_user: pick("dovecot"),
            login_user: pick("dovenull"),
        }
    } else {
        let me = id(&["-un"]).expect("id -un");
        Ids {
            uid: id(&["-u"]).expect("id -u"),
            gid: id(&["-g"]).expect("id -g"),
            internal_user: me.clone(),
            login_user: me,
        }
    }
}

impl Dovecot {
    /// Writes the Maildir of [`USER`] under `DIR/mail` and starts Dovecot on it.
    fn start() -> Dovecot {
        let dir = TempDir::new("dovecot");
        let d = dir.path();
        let maildir = d.join("mail").join(USER).join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("mkdir");
        }
        for (name, body) in maildir_messages() {
            std::fs::write(maildir.join(name), body).expect("write message");
        }
        std::fs::write(d.join("passwd"), format!("{USER}:{{PLAIN}}{PW}::::::\n")).expect("passwd");
        let ids = ids();
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", ids.uid, ids.gid))
            .arg(d.join("mail"))
            .output()
            .expect("chown");
        assert!(out.status.success(), "chown: {}", output_text(&out));
        let port = free_port();
        // pop3_uidl_format is left at its default, %08Xu%08Xv.
        let conf = format!(
            "# A private Dovecot for the end-to-end suite.
{instance}ssl = no
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
first_valid_gid = {gid}
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{d}/mail/%u/Maildir
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {port}
  }}
}}
",
            d = d.display(),
            instance = testbed::dovecot_instance(d, &format!("pop3-e2e-{port}")),
            internal = ids.internal_user,
            login = ids.login_user,
            uid = ids.uid,
            gid = ids.gid,
        );
        std::fs::write(d.join("dovecot.conf"), conf).expect("dovecot.conf");
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("spawn dovecot");
        let mut dovecot = Dovecot { child, dir, port };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let mut greeting = String::new();
                let _ = BufReader::new(s).read_line(&mut greeting);
                if greeting.starts_with("+OK") {
                    break;
                }
            }
            let exited = matches!(dovecot.child.try_wait(), Ok(Some(_)));
            assert!(
                !exited && Instant::now() < deadline,
                "Dovecot did not start\n{}",
                dovecot.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dovecot
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail").join(USER).join("Maildir")
    }

    /// The tail of Dovecot's log and stderr, for failure messages.
    fn log(&self) -> String {
        let mut out = String::new();
        for name in ["dovecot.log", "stderr.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {name} (last 30 lines) ---\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            ));
        }
        out
    }

    fn login(&self) -> Client {
        let mut c = Client::connect(([127, 0, 0, 1], self.port).into());
        c.ok(&format!("USER {USER}"));
        let r = c.cmd(&format!("PASS {PW}"));
        assert!(r.starts_with("+OK"), "Dovecot login: {r}\n{}", self.log());
        c
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The UIDLs `dovecot-uidlist` implies under `%08Xu%08Xv` (lower-case hex), in UID order: its
/// header line is `3 V<uidvalidity> N<next uid> ...`, then one `<uid> [fields] :<file name>`
/// line a message.
fn uidlist_uidls(maildir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(maildir.join("dovecot-uidlist")).expect("dovecot-uidlist");
    let mut lines = text.lines();
    let header = lines.next().expect("uidlist header");
    let validity: u32 = header
        .split(' ')
        .find_map(|f| f.strip_prefix('V'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no UID validity in {header:?}"));
    lines
        .map(|l| {
            let uid: u32 = l
                .split(' ')
                .next()
                .and_then(|u| u.parse().ok())
                .unwrap_or_else(|| panic!("bad uidlist line {l:?}"));
            format!("{uid:08x}{validity:08x}")
        })
        .collect()
}

/// `UIDL` and every `RETR` of a logged-in session, then QUIT.
fn uidls_and_messages(mut c: Client) -> (Vec<String>, Vec<Vec<u8>>) {
    let uidls: Vec<String> = c
        .listing("UIDL")
        .iter()
        .map(|l| l.split(' ').nth(1).expect("uid").to_string())
        .collect();
    let messages = (1..=uidls.len())
        .map(|i| c.multi(&format!("RETR {i}")).1)
        .collect();
    c.ok("QUIT");
    (uidls, messages)
}

/// `popadm --data-dir DIR CMD --host 127.0.0.1 --port PORT --user olga --password-stdin olga`.
fn against(data: &Path, cmd: &[&str], port: u16) -> std::process::Output {
    popadm_remote(data, cmd, port, USER, PW, &[], USER)
}

/// `uidl diff` against Dovecot says the store holds exactly Dovecot's UIDLs, and pop3d on the
/// store serves `want` under them; returns that pop3d.
fn assert_serves_like_dovecot(
    store: &Path,
    dovecot: &Dovecot,
    dovecot_uidls: &[String],
    want: &[Vec<u8>],
    what: &str,
) -> Server {
    let out = against(store, &["uidl", "diff"], dovecot.port);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}\n{}",
        output_text(&out),
        dovecot.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("uidl: identical ({} messages)\n", want.len()),
        "{what}"
    );
    let pop3d = Server::start(store, &[]);
    let (uidls, messages) = uidls_and_messages(pop3d.login(USER, PW));
    assert_eq!(uidls, dovecot_uidls, "{what}");
    assert_same(&messages, want, what);
    pop3d
}

fn pop3d_store(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    e2e::add_user(dir.path(), USER, PW);
    dir
}

fn can_run() -> bool {
    e2e::client_available_on_path("dovecot") && e2e::client_available("fetchmail", "--version")
}

#[test]
fn fetchmail_state_survives_a_migration_from_dovecot() {
    e2e::require!(can_run());
    let dovecot = Dovecot::start();
    let want: Vec<Vec<u8>> = maildir_messages().iter().map(|(_, m)| crlf(m)).collect();

    // What Dovecot serves: the messages in name order, with CRLF line ends (a missing final
    // newline added) and the UIDLs its dovecot-uidlist implies.
    let (dovecot_uidls, served) = uidls_and_messages(dovecot.login());
    assert_same(&served, &want, "Dovecot RETR");
    assert_eq!(dovecot_uidls, uidlist_uidls(&dovecot.maildir()));

    // fetchmail leaves the mail on Dovecot and keeps the UIDLs it has seen in its idfile, under
    // `user@server name` (not the port), so only the port changes at the cut-over here, as only
    // the address behind the name would with a switch by DNS.
    let s = Scratch::new("dovecot-fetchmail");
    let rc = |port: u16| {
        format!(
            "poll 127.0.0.1 service {port} protocol pop3 uidl timeout 20 user \"{USER}\" \
             password \"{PW}\" keep sslproto '' mda \"{}\"",
            s.mda()
        )
    };
    let out = fetchmail(&s, &rc(dovecot.port));
    assert!(
        out.status.success(),
        "fetchmail from Dovecot: {}\n{}",
        output_text(&out),
        dovecot.log()
    );
    let want_lf: Vec<Vec<u8>> = maildir_messages().iter().map(|(_, m)| lf(m)).collect();
    assert_same(&fetchmail_messages(&s), &want_lf, "fetchmail from Dovecot");

    // The migration, and the proof before cut-over.
    let store = pop3d_store("dovecot-migrated");
    let out = against(store.path(), &["migrate", "pop3"], dovecot.port);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("migrated 4"),
        "{}\n{}",
        output_text(&out),
        dovecot.log()
    );

    // The proof before cut-over: `uidl diff` says identical, and pop3d serves the same bytes
    // under the same UIDLs...
    let pop3d = assert_serves_like_dovecot(
        store.path(),
        &dovecot,
        &dovecot_uidls,
        &want,
        "after migrate pop3",
    );

    // ...so fetchmail, same idfile, now talking to pop3d, has nothing new (exit 1)...
    let out = fetchmail(&s, &rc(pop3d.addr.port()));
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_eq!(
        fetchmail_messages(&s).len(),
        4,
        "fetchmail downloaded again"
    );

    // ...and fetches a message delivered after the cut-over alone.
    let late = b"Subject: after the move\n\nnew mail\n";
    popadm_ok(
        store.path(),
        &["deliver", "-f", "sender@example.org", USER],
        late,
    );
    let out = fetchmail(&s, &rc(pop3d.addr.port()));
    assert!(out.status.success(), "{}", output_text(&out));
    let got = fetchmail_messages(&s);
    assert_eq!(got.len(), 5, "one more message");
    let mut late_lf =
        format!("Return-Path: <sender@example.org>\nDelivered-To: {USER}\n").into_bytes();
    late_lf.extend_from_slice(late);
    assert_same(&got[4..], &[late_lf], "fetchmail after the cut-over");
}

#[test]
fn maildir_import_gives_the_uidls_dovecot_serves() {
    e2e::require!(e2e::client_available_on_path("dovecot"));
    let dovecot = Dovecot::start();
    // A first session makes Dovecot assign UIDs and write dovecot-uidlist (and move the file
    // in new/ to cur/).
    let (dovecot_uidls, served) = uidls_and_messages(dovecot.login());
    assert!(dovecot.maildir().join("dovecot-uidlist").exists());

    let store = pop3d_store("dovecot-imported");
    let maildir = dovecot.maildir();
    let out = popadm_ok(
        store.path(),
        &["import", "maildir", maildir.to_str().expect("utf8"), USER],
        b"",
    );
    assert!(out.contains("imported 4"), "{out}");
    assert_serves_like_dovecot(
        store.path(),
        &dovecot,
        &dovecot_uidls,
        &served,
        "after import maildir",
    );
}
