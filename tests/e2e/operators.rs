//! What an operator installs besides the binaries: the manual pages and shell completion
//! scripts the built `pop3d` and `popadm` generate from their own clap definitions
//! (`cargo xtask man` runs the same entry points), and systemd socket activation (the
//! `sd_listen_fds` protocol of dist/pop3d.socket) with its `READY=1` notification.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use e2e::{bin, crlf, popadm_ok, run_ok, Client, Server, TempDir, TIMEOUT};

/// The pages in `dir`, as `clidoc` represents them.
fn read_pages(dir: &Path) -> Vec<clidoc::Page> {
    let mut pages: Vec<clidoc::Page> = std::fs::read_dir(dir)
        .expect("read man dir")
        .map(|e| e.expect("entry").path())
        .map(|p| clidoc::Page {
            file_name: p.file_name().expect("name").to_string_lossy().into_owned(),
            roff: std::fs::read_to_string(&p).expect("read page"),
        })
        .collect();
    pages.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    pages
}

/// Every long flag (`--name`) a `--help` text shows.
fn help_flags(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || ",[]=".contains(c))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn man_pages_document_every_command_and_flag() {
    let dir = TempDir::new("man");
    let popadm_dir = dir.path().join("popadm");
    let pop3d_dir = dir.path().join("pop3d");
    run_ok(
        Command::new(bin("popadm"))
            .arg("generate-man")
            .arg(&popadm_dir),
    );
    run_ok(
        Command::new(bin("pop3d"))
            .arg("--generate-man")
            .arg(&pop3d_dir),
    );

    // popadm: a page per command, each naming its flags, arguments and subcommands, checked
    // against the clap definition the binary parses with.
    let written = read_pages(&popadm_dir);
    let mut want: Vec<String> = clidoc::pages(admin::command(), admin::MAN_SECTION)
        .into_iter()
        .map(|p| p.file_name)
        .collect();
    want.sort();
    let got: Vec<&str> = written.iter().map(|p| p.file_name.as_str()).collect();
    assert_eq!(got, want);
    assert!(got.contains(&"popadm-user-add.8") && got.contains(&"popadm.8"));
    assert_eq!(
        clidoc::undocumented(admin::command(), &written, admin::MAN_SECTION),
        Vec::<String>::new()
    );

    // pop3d (no library to ask): every flag its --help shows is in the page.
    let pages = read_pages(&pop3d_dir);
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].file_name, "pop3d.8");
    let page = pages[0].roff.replace("\\-", "-");
    let help = String::from_utf8_lossy(&run_ok(Command::new(bin("pop3d")).arg("--help")).stdout)
        .into_owned();
    let flags = help_flags(&help);
    assert!(flags.len() > 20, "{flags:?}");
    for flag in &flags {
        assert!(page.contains(flag.as_str()), "pop3d.8 lacks {flag}");
    }

    // man(1) renders every page without a warning.
    e2e::require!("man");
    for page in written
        .iter()
        .map(|p| popadm_dir.join(&p.file_name))
        .chain([pop3d_dir.join("pop3d.8")])
    {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .output()
            .expect("run man");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}: {stderr}",
            page.display()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    }
}

#[test]
fn help_flags_parses_clap_help() {
    assert_eq!(
        help_flags("  -h, --help   Print\n      --data-dir <DIR>  x [default: ./a]\n--x-y=Z"),
        ["--data-dir", "--help", "--x-y"]
    );
}

#[test]
fn completion_scripts_are_valid_shell() {
    let dir = TempDir::new("completions");
    for (program, flag) in [("popadm", "completions"), ("pop3d", "--completions")] {
        for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
            let script = run_ok(Command::new(bin(program)).args([flag, shell])).stdout;
            let text = String::from_utf8_lossy(&script);
            assert!(text.contains(program), "{program} {shell}: {text}");
            if program == "popadm" {
                for sub in ["user", "deliver", "import", "backup"] {
                    assert!(text.contains(sub), "{program} {shell} lacks {sub}");
                }
            } else {
                assert!(text.contains("listen-tls"), "{program} {shell}");
            }
            let file = dir.path().join(format!("{program}.{shell}"));
            std::fs::write(&file, &script).expect("write script");
            // bash is always there; zsh and fish only where installed.
            let available = Command::new(shell)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !available {
                assert_ne!(
                    shell, "bash",
                    "bash is needed to check the completion script"
                );
                eprintln!("SKIPPED: {shell} is not installed; its script is not syntax-checked");
                continue;
            }
            run_ok(Command::new(shell).arg(check).arg(&file));
        }
    }
    // The bash script works when sourced: it registers the completion function.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p popadm",
            dir.path().join("popadm.bash").display()
        ))
        .output()
        .expect("run bash");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("popadm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Socket activation

const USER: &str = "sam@example.org";
const PW: &str = "activated pw";
const MESSAGE: &[u8] = b"Subject: activated\r\n\r\nserved on a socket systemd passed\r\n";

/// Binds one loopback listener per name, prints `fds NAME=PORT ...` on stderr, moves the sockets
/// to descriptors 3, 4, ... (inheritable), sets LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (its own
/// pid, or argv[2] when given: the pid survives execve) and becomes pop3d: what systemd does
/// for a `.socket` unit, without `unsafe` in the suite.
const ACTIVATE: &str = r#"
import os, socket, sys
names = sys.argv[1].split(':')
socks = []
for name in names:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(('127.0.0.1', 0))
    s.listen(64)
    socks.append(s)
print('fds ' + ' '.join('%s=%d' % (n, s.getsockname()[1]) for n, s in zip(names, socks)),
      file=sys.stderr, flush=True)
# Out of the way first, so that moving one into place never closes another.
high = [os.dup(s.fileno()) for s in socks]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
env = dict(os.environ, LISTEN_FDS=str(len(names)), LISTEN_FDNAMES=sys.argv[1],
           LISTEN_PID=sys.argv[2] or str(os.getpid()))
os.execve(sys.argv[3], sys.argv[3:], env)
"#;

/// pop3d (with the suite's defaults, which name listeners of its own) started through
/// [`ACTIVATE`] with sockets named `names`; `listen_pid` overrides LISTEN_PID. The test bed
/// gives it a NOTIFY_SOCKET and waits for its READY=1.
fn activated(data_dir: &Path, names: &str, listen_pid: &str) -> Server {
    let inner = Server::command(data_dir, &[]);
    let mut outer = Command::new("python3");
    outer
        .arg("-c")
        .arg(ACTIVATE)
        .arg(names)
        .arg(listen_pid)
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            outer.env(key, value);
        }
    }
    Server::spawn(outer, data_dir)
}

/// The ports [`ACTIVATE`] bound, by name.
fn passed_ports(log: &str) -> Vec<(String, u16)> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("fds "))
        .expect("the activation line");
    line.split(' ')
        .map(|pair| {
            let (name, port) = pair.split_once('=').expect("name=port");
            (name.to_owned(), port.parse().expect("port"))
        })
        .collect()
}

/// A scratch directory with a data directory holding [`USER`] and [`MESSAGE`], when python3
/// (which plays systemd) is there.
fn provisioned(tag: &str) -> Option<(TempDir, std::path::PathBuf)> {
    if !e2e::client_available("python3", "--version") {
        return None;
    }
    let dir = TempDir::new(tag);
    let data = dir.path().join("data");
    provision(&data);
    Some((dir, data))
}

fn provision(data: &Path) {
    e2e::add_user(data, USER, PW);
    popadm_ok(data, &["deliver", "--no-lda-headers", USER], MESSAGE);
}

/// USER/PASS (loopback may log in before TLS), then RETR 1 byte for byte.
fn fetch_over_plain(client: &mut Client) {
    client.login(USER, PW);
    let (_, body) = client.multi("RETR 1");
    assert_eq!(body, crlf(MESSAGE));
    client.ok("QUIT");
}

#[test]
fn socket_activation_serves_the_sockets_systemd_passes() {
    let Some((_dir, data)) = provisioned("activation") else {
        return;
    };
    let mut server = activated(&data, "pop3:pop3s", "");
    let log = server.log();
    let ports = passed_ports(&log);
    // pop3d served exactly the passed sockets, by their names, and bound none of its own
    // (its flags name two ephemeral listeners, which socket activation replaces).
    let served: Vec<(String, u16)> = server
        .listeners
        .iter()
        .map(|(kind, addr)| (kind.clone(), addr.port()))
        .collect();
    assert_eq!(
        served,
        [
            ("pop3+stls".to_owned(), ports[0].1),
            ("pop3s".to_owned(), ports[1].1)
        ],
        "{log}"
    );
    assert_eq!(
        log.matches("using a socket passed by systemd").count(),
        2,
        "{log}"
    );

    // sd_notify: READY=1 once the listeners are up.
    assert!(
        server.ready.lines().any(|l| l == "READY=1"),
        "{:?}",
        server.ready
    );

    fetch_over_plain(&mut server.connect());
    // The pop3s socket speaks TLS from the first byte (RFC 8314).
    let cert = server.self_signed_cert();
    if let Some(out) = e2e::curl_pop3s(ports[1].1, &cert, &format!("{USER}:{PW}"), "1") {
        e2e::assert_fetched(&out, MESSAGE);
    }
    // SIGTERM: STOPPING=1, then a clean exit.
    server.signal("TERM");
    let status = server.wait();
    assert!(status.success(), "{status}");
    let stopping = server.notification().expect("STOPPING=1 from pop3d");
    assert!(stopping.contains("STOPPING=1"), "{stopping:?}");
}

#[test]
fn socket_activation_variables_for_another_process_are_ignored() {
    let Some((_dir, data)) = provisioned("activation-other") else {
        return;
    };
    // LISTEN_PID names another process (pid 1): the descriptors are not ours to take
    // (sd_listen_fds(3)); pop3d binds the listeners its flags name.
    let server = activated(&data, "pop3", "1");
    let log = server.log();
    let passed = passed_ports(&log)[0].1;
    assert!(!log.contains("passed by systemd"), "{log}");
    assert_eq!(server.listeners.len(), 2, "{log}");
    assert!(
        server.listeners.iter().all(|(_, a)| a.port() != passed),
        "{log}"
    );
    fetch_over_plain(&mut server.connect());
}

#[test]
fn socket_activation_refuses_an_unknown_socket_name() {
    let Some((_dir, data)) = provisioned("activation-typo") else {
        return;
    };
    let inner = Server::command(&data, &[]);
    let out = Command::new("python3")
        .arg("-c")
        .arg(ACTIVATE)
        .arg("pop3:pops")
        .arg("")
        .arg(inner.get_program())
        .args(inner.get_args())
        .output()
        .expect("run pop3d");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"pops\"") && stderr.contains("socket 4"),
        "{stderr}"
    );
}

/// A process of this test, killed (by its pid) and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// systemd's own tool: it listens, waits for the first connection, then executes pop3d with
/// the socket (an unnamed one, so cleartext POP3), the way a `.socket` unit starts its service
/// on demand. The first client is served by the pop3d it started.
#[test]
fn systemd_socket_activate_starts_pop3d_on_the_first_connection() {
    e2e::require!(e2e::client_available_on_path("systemd-socket-activate"));
    let dir = TempDir::new("socket-activate");
    let data = dir.path().join("data");
    provision(&data);
    // A free port: bound, read, released (systemd-socket-activate needs a number).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(addr.to_string())
        .arg(bin("pop3d"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--auth-failure-delay", "0", "--no-self-signed"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let _guard = Reaped(child);
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "systemd-socket-activate never listened: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    drop(stream);
    // That connection started pop3d; this one is served by it.
    let mut client = Client::connect(addr);
    assert!(client.greeting.starts_with("+OK"), "{}", client.greeting);
    fetch_over_plain(&mut client);
}

/// The uid and gid of `name` from /etc/passwd, if it exists.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Issue 19: with `user = ...` pop3d reads a root-only certificate key before it drops
/// privileges (bind, read secrets, then drop), so the documented setup starts; a SIGHUP reload
/// that the dropped user cannot read keeps the old certificates and says why.
#[test]
fn secrets_are_read_before_privileges_are_dropped() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let Some((uid, gid)) = system_user("nobody").filter(|_| is_root) else {
        eprintln!("SKIPPED: needs root and a `nobody` user");
        return;
    };
    let dir = TempDir::new("drop-privileges");
    // A certificate, made by a first pop3d (as root) in a scratch directory.
    let scratch = dir.path().join("scratch");
    provision(&scratch);
    let first = Server::start(&scratch, &[]);
    let (cert, key) = (
        first.self_signed_cert(),
        scratch.join("tls").join("key.pem"),
    );
    drop(first);
    // The certificate is public; the key goes where only root can read it, as keys usually
    // are.
    let public_cert = dir.path().join("cert.pem");
    std::fs::copy(&cert, &public_cert).expect("copy cert");
    std::fs::set_permissions(
        &public_cert,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let cert = public_cert;
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("mkdir");
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let root_key = secrets.join("key.pem");
    std::fs::copy(&key, &root_key).expect("copy key");
    std::fs::set_permissions(
        &root_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    // The data directory belongs to the user pop3d becomes.
    let data = dir.path().join("data");
    provision(&data);
    for entry in walk(&data) {
        std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).expect("chown");
    }
    let server = Server::start(
        &data,
        &[
            "--user",
            "nobody",
            "--tls-cert",
            cert.to_str().expect("utf8"),
            "--tls-key",
            root_key.to_str().expect("utf8"),
        ],
    );
    fetch_over_plain(&mut server.connect());
    // A reload reads as `nobody`: refused, named, and the old certificates stay in use.
    server.signal("HUP");
    server.await_log("SIGHUP: reload failed");
    let log = server.log();
    assert!(
        log.contains("user=nobody") || log.contains("user: nobody"),
        "{log}"
    );
    assert!(log.contains("key.pem"), "{log}");
    fetch_over_plain(&mut server.connect());
}

/// `dir` and everything below it.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let children: Vec<_> = std::fs::read_dir(&out[i])
                .expect("read_dir")
                .flatten()
                .map(|e| e.path())
                .collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// Issue 19: a log that is not a terminal (a file, the journal, fail2ban's input) carries no
/// colour escape codes, with or without NO_COLOR, so the shipped fail2ban filter matches it.
#[test]
fn logs_to_a_pipe_are_not_coloured() {
    let dir = TempDir::new("no-colour");
    let data = dir.path().join("data");
    provision(&data);
    let mut cmd = Server::command(&data, &[]);
    cmd.env_remove("NO_COLOR");
    let server = Server::spawn(cmd, &data);
    let mut c = server.connect();
    c.ok(&format!("USER {USER}"));
    c.err("PASS wrong");
    server.await_log("login failed");
    let log = server.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a piped log:\n{log}"
    );
}

/// Issue 19: `login failed` lines carry the attempted user name (quoted, never the password),
/// the span shows `tls` once, and the shipped fail2ban filter's pattern (applied with Python's
/// `re`, as fail2ban does) finds the real client in them, never an address a user name claims.
#[test]
fn failed_logins_name_the_user_and_the_fail2ban_filter_finds_the_real_peer() {
    if !e2e::client_available("python3", "--version") {
        return;
    }
    let dir = TempDir::new("fail2ban");
    let data = dir.path().join("data");
    provision(&data);
    let server = Server::start(&data, &[]);
    let mut c = server.connect();
    // A SASL PLAIN name may hold spaces and braces: it poses as another session's line.
    let forged = "session{id=9 peer=192.0.2.66:1}: x: login failed";
    let plain = e2e::base64(format!("\0{forged}\0secret-password-123").as_bytes());
    c.err(&format!("AUTH PLAIN {plain}"));
    c.ok(&format!("USER {USER}"));
    c.err("PASS wrong-again");
    let deadline = Instant::now() + TIMEOUT;
    // The forged name holds "login failed" too: count the lines of the event itself.
    let event = ": login failed failures=";
    while server.log().matches(event).count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains(event)).collect();
    assert_eq!(failed.len(), 2, "{log}");
    assert!(failed[1].contains(&format!("user=\"{USER}\"")), "{log}");
    assert!(!log.contains("secret-password-123"), "{log}");
    assert!(!log.contains("tls=false"), "{log}");
    let filter = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/fail2ban/filter.d/pop3d.conf"),
    )
    .expect("filter");
    let regex = filter
        .lines()
        .find_map(|l| l.strip_prefix("failregex = "))
        .expect("failregex");
    // fail2ban's <HOST> is a named group; an address or a bracketed IPv6 address here.
    let script = "import re,sys\n\
                  rx=re.compile(sys.argv[1].replace('<HOST>', r'(?P<host>[0-9a-fA-F.:]+)'))\n\
                  for line in sys.stdin:\n    m=rx.search(line)\n    print(m.group('host') if m else '-')\n";
    let mut child = Command::new("python3")
        .args(["-c", script, regex])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        failed.join("\n").as_bytes(),
    )
    .expect("write");
    let out = child.wait_with_output().expect("python3");
    let hosts = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        hosts.lines().collect::<Vec<_>>(),
        ["127.0.0.1", "127.0.0.1"],
        "{log}"
    );
}
