//! Harness of the end-to-end suite: starts the real `pop3d` on an ephemeral loopback port with
//! a temporary data directory, runs the real `popadm`, and speaks POP3 over TCP.
//!
//! The binaries are taken from `POP3D_BIN` / `POPADM_BIN`, or else from the cargo target
//! directory this test binary runs from (`cargo xtask test` builds them first).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod clients;

pub use testbed::TempDir;

/// How long any single wait in the suite may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it first (`cargo build --bins`) or run `cargo xtask test`",
        path.display()
    );
    path
}

/// Whether a client program the suite drives is installed. When it is not, the calling test
/// skips with a printed reason, unless `E2E_REQUIRE_CLIENTS=1` (set in CI), which makes a
/// missing client a failure.
pub fn client_available(program: &str, version_arg: &str) -> bool {
    let found = Command::new(program)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    report_missing(program, found)
}

/// Says why a test skips for want of `program`, or fails when CI requires it.
fn report_missing(program: &str, found: bool) -> bool {
    if !found {
        let required = std::env::var("E2E_REQUIRE_CLIENTS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{program} is required (E2E_REQUIRE_CLIENTS=1) but not installed"
        );
        eprintln!("SKIPPED: {program} is not installed (run `cargo xtask deps`)");
    }
    found
}

/// Returns from the calling test (which then skips) unless `"program"` is installed (see
/// [`client_available`]), or unless a check of the test's own (`e2e::require!(can_run())`) holds.
#[macro_export]
macro_rules! require {
    ($program:literal) => {
        if !$crate::client_available($program, "--version") {
            return;
        }
    };
    ($ready:expr) => {
        if !$ready {
            return;
        }
    };
}

/// Runs `cmd` to its end; a program that cannot be started is a test failure.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()))
}

/// Runs `cmd` and asserts that it exits 0; the failure shows the command and its stderr.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", failure(&out));
    out
}

/// A failed program's exit status and stderr, for an assertion's message.
fn failure(out: &Output) -> String {
    format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr))
}

/// The trimmed standard output of `cmd` (a Python one-liner's answer, say).
pub fn run_text(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_owned()
}

/// `curl --silent --show-error --max-time 20`: the flags every test passes to curl.
pub fn curl() -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "20"]);
    cmd
}

/// curl retrieving message 1 from `pop3://ADDR/1` as `user`, authenticating with the SASL
/// mechanism `mech` (`--login-options AUTH=...`).
pub fn curl_sasl(addr: SocketAddr, user: &str, pass: &str, mech: &str) -> Output {
    run(curl()
        .args(["--user", &format!("{user}:{pass}")])
        .args(["--login-options", &format!("AUTH={mech}")])
        .arg(format!("pop3://{addr}/1")))
}

/// Asserts that a client which retrieves one message (curl, say) exited 0 and printed
/// `message` as stored (see [`crlf`]).
pub fn assert_fetched(out: &Output, message: &[u8]) {
    assert_success(out);
    assert_eq!(out.stdout, crlf(message));
}

/// Asserts that a client exited 0; the failure shows its stderr.
pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "{}", failure(out));
}

/// Like [`client_available`] for programs without a `--version` (daemons, admin tools): true
/// when `program` is an executable on `PATH` (or in /usr/sbin and /sbin, where Debian puts
/// daemons).
pub fn client_available_on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file());
    report_missing(program, found)
}

/// A port free for both UDP and TCP on 127.0.0.1 (see [`testbed::free_port`]).
pub fn free_port() -> u16 {
    testbed::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `popadm --data-dir DIR ARGS` with its standard streams piped.
pub fn popadm_spawn(data_dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(bin("popadm"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn popadm")
}

/// Runs `popadm --data-dir DIR ARGS` with `stdin` as its standard input.
pub fn popadm(data_dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = popadm_spawn(data_dir, args);
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait popadm");
    let _ = writer.join();
    out
}

/// `popadm user add NAME --password-stdin` in `data_dir`, which must succeed; its output.
pub fn add_user(data_dir: &Path, name: &str, password: &str) -> String {
    popadm_ok(
        data_dir,
        &["user", "add", name, "--password-stdin"],
        format!("{password}\n").as_bytes(),
    )
}

/// `popadm` that must succeed.
pub fn popadm_ok(data_dir: &Path, args: &[&str], stdin: &[u8]) -> String {
    let out = popadm(data_dir, args, stdin);
    assert!(
        out.status.success(),
        "popadm {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `popadm --data-dir DIR CMD --host 127.0.0.1 --port PORT --user USER --password-stdin EXTRA
/// NAME` with `password` on stdin: `migrate pop3` or `uidl diff` against a server on loopback.
pub fn popadm_remote(
    data_dir: &Path,
    cmd: &[&str],
    port: u16,
    user: &str,
    password: &str,
    extra: &[&str],
    name: &str,
) -> Output {
    let port = port.to_string();
    let mut args: Vec<&str> = cmd.to_vec();
    args.extend(["--host", "127.0.0.1", "--port", &port, "--user", user]);
    args.push("--password-stdin");
    args.extend(extra);
    args.push(name);
    popadm(data_dir, &args, format!("{password}\n").as_bytes())
}

/// The LEGACY-AUTH column of `popadm user list` for the account `name`, or `""`.
pub fn legacy_auth_column(data_dir: &Path, name: &str) -> String {
    user_list_column(data_dir, name, "LEGACY-AUTH")
}

/// The column `column` (named by its header) of `popadm user list` for the account `name`,
/// or `""`.
pub fn user_list_column(data_dir: &Path, name: &str, column: &str) -> String {
    let list = popadm_ok(data_dir, &["user", "list"], b"");
    let mut lines = list.lines();
    let header = lines.next().unwrap_or_default();
    let Some(index) = header.split('\t').position(|h| h == column) else {
        panic!("no column {column} in {header}");
    };
    lines
        .find(|l| l.split('\t').next() == Some(name))
        .and_then(|l| l.split('\t').nth(index))
        .map(str::to_owned)
        .unwrap_or_default()
}

/// A running `pop3d` on a loopback port, killed on drop. Its listeners (`addr`, `tls_addr`,
/// `listeners`) are those of the [`testbed::Pop3d`] it derefs to.
pub struct Server {
    pop3d: testbed::Pop3d,
    data_dir: PathBuf,
}

impl std::ops::Deref for Server {
    type Target = testbed::Pop3d;

    fn deref(&self) -> &testbed::Pop3d {
        &self.pop3d
    }
}

impl Server {
    /// Waits (up to [`TIMEOUT`]) until the log holds `needle`: pop3d's stderr is read by
    /// another thread, so a line written just before an effect a test observed may not be in
    /// [`log`](testbed::Pop3d::log) yet. Panics with the log when it never comes.
    pub fn await_log(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never logged:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts pop3d on `data_dir` with extra flags, and waits until it is ready. Unless the
    /// flags name a `--config` or listeners of their own, it listens on an ephemeral POP3 and
    /// an ephemeral POP3S port.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawn(Server::command(data_dir, extra), data_dir)
    }

    /// The command [`Server::start`] runs: pop3d with the suite's defaults and `extra`.
    pub fn command(data_dir: &Path, extra: &[&str]) -> Command {
        let own_listeners = extra
            .iter()
            .any(|a| ["--config", "--listen", "--listen-tls"].contains(a));
        let default_listeners: &[&str] = if own_listeners {
            &[]
        } else {
            &["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"]
        };
        // Failed logins are not delayed unless a test asks (the penalty has tests of its own).
        let no_penalty: &[&str] = if extra.contains(&"--auth-failure-delay") {
            &[]
        } else {
            &["--auth-failure-delay", "0"]
        };
        let default_log: &[&str] = if extra.contains(&"--log") {
            &[]
        } else {
            &["--log", "info,server=debug"]
        };
        let mut cmd = Command::new(bin("pop3d"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(default_log)
            .args(default_listeners)
            .args(no_penalty)
            .args(extra)
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs `cmd` (pop3d, or a program that becomes pop3d) and waits for its READY=1 (see
    /// [`testbed::Pop3d::spawn`]); stderr is kept as the log.
    pub fn spawn(cmd: Command, data_dir: &Path) -> Server {
        match testbed::Pop3d::spawn(cmd, testbed::Log::Capture, TIMEOUT) {
            Ok(pop3d) => Server {
                pop3d,
                data_dir: data_dir.to_path_buf(),
            },
            Err(e) => panic!("pop3d did not start: {e}"),
        }
    }

    /// The self-signed certificate pop3d generated in its data directory.
    pub fn self_signed_cert(&self) -> PathBuf {
        self.data_dir.join("tls").join("cert.pem")
    }

    /// The next sd_notify datagram after READY=1 (e.g. `STOPPING=1`).
    pub fn notification(&self) -> Option<String> {
        self.pop3d.notification(TIMEOUT)
    }

    /// Sends a signal with kill(1) (e.g. "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        assert!(self.pop3d.signal(sig), "kill -{sig} failed");
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.pop3d.alive()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        assert!(self.pop3d.wait_exit(TIMEOUT), "pop3d did not exit");
        self.pop3d.exit_status().expect("exited")
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connects and logs in with USER/PASS, retrying for up to ten seconds while the maildrop
    /// is still locked by an earlier session (`-ERR [IN-USE]`, RFC 2449 section 8.1.1).
    pub fn login_when_free(&self, user: &str, pass: &str) -> Client {
        let every = Duration::from_millis(50);
        eventually(
            "maildrop stayed locked",
            Duration::from_secs(10),
            every,
            || {
                let mut c = self.connect();
                c.ok(&format!("USER {user}"));
                let r = c.cmd(&format!("PASS {pass}"));
                assert!(
                    r.starts_with("+OK") || r.starts_with("-ERR [IN-USE]"),
                    "unexpected {r:?}"
                );
                r.starts_with("+OK").then_some(c)
            },
        )
    }

    /// Connects and logs in with USER/PASS, asserting success.
    pub fn login(&self, user: &str, pass: &str) -> Client {
        let mut c = self.connect();
        c.login(user, pass);
        c
    }
}

/// Calls `attempt` every `every` until it returns a value, for at most `within`: a bounded wait
/// for something a peer does in its own time. Past `within` the test fails, saying `what`.
pub fn eventually<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(done) = attempt() {
            return done;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(every);
    }
}

/// The value of `r`, or a panic with its error (a test failure).
fn must<T>(r: std::io::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A synchronous POP3 client for tests: [`testbed::Client`] whose errors are test failures.
pub struct Client {
    inner: testbed::Client,
    /// The greeting line.
    pub greeting: String,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a connection made elsewhere (e.g. one that sent a PROXY header first);
    /// reads the greeting.
    pub fn from_stream(stream: TcpStream) -> Client {
        let inner = must(testbed::Client::from_stream(stream));
        let greeting = inner.greeting.clone();
        Client { inner, greeting }
    }

    /// Logs in with USER and PASS (RFC 1939 section 7), asserting `+OK` to both; returns the
    /// reply to PASS.
    pub fn login(&mut self, user: &str, pass: &str) -> String {
        self.ok(&format!("USER {user}"));
        self.ok(&format!("PASS {pass}"))
    }

    /// Asserts that STAT counts `messages` messages (RFC 1939 section 5), then QUITs.
    pub fn stat_and_quit(mut self, messages: usize) {
        let stat = self.ok("STAT");
        assert!(stat.starts_with(&format!("+OK {messages} ")), "{stat}");
        self.ok("QUIT");
    }

    /// USER, then a PASS that must answer `-ERR`; returns that reply.
    pub fn login_refused(&mut self, user: &str, pass: &str) -> String {
        self.ok(&format!("USER {user}"));
        self.err(&format!("PASS {pass}"))
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        must(self.inner.send_raw(bytes));
    }

    /// Sends one command line (CRLF added).
    pub fn send(&mut self, line: &str) {
        must(self.inner.send(line));
    }

    /// Reads one line, without its CRLF; panics on EOF.
    pub fn line(&mut self) -> String {
        must(self.inner.line())
    }

    /// Sends a command and returns its status line.
    pub fn cmd(&mut self, line: &str) -> String {
        must(self.inner.cmd(line))
    }

    /// Sends a command that must answer `+OK`.
    pub fn ok(&mut self, line: &str) -> String {
        must(self.inner.ok(line))
    }

    /// Sends a command that must answer `-ERR`.
    pub fn err(&mut self, line: &str) -> String {
        must(self.inner.err(line))
    }

    /// Reads a multi-line body after a `+OK`, unstuffed.
    pub fn body(&mut self) -> Vec<u8> {
        must(self.inner.body())
    }

    /// A multi-line command: status line and unstuffed body; asserts `+OK`.
    pub fn multi(&mut self, line: &str) -> (String, Vec<u8>) {
        let status = self.ok(line);
        (status, self.body())
    }

    /// Body lines of a listing (LIST, UIDL, CAPA).
    pub fn listing(&mut self, line: &str) -> Vec<String> {
        must(self.inner.lines(line))
    }

    /// True once the server closed the connection (reads EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        self.inner.closed()
    }

    /// Drops the connection without QUIT.
    pub fn drop_connection(self) {
        self.inner.drop_connection();
    }
}

/// A data directory with pop3d running on it and helpers to provision users.
pub struct Fixture {
    pub dir: TempDir,
    pub server: Server,
}

impl Fixture {
    pub fn new(tag: &str) -> Fixture {
        Fixture::with_flags(tag, &[])
    }

    pub fn with_flags(tag: &str, flags: &[&str]) -> Fixture {
        let dir = TempDir::new(tag);
        let server = Server::start(dir.path(), flags);
        Fixture { dir, server }
    }

    /// [`Fixture::with_flags`] with the account `name` holding `messages`, delivered in order.
    pub fn with_mailbox(
        tag: &str,
        flags: &[&str],
        name: &str,
        password: &str,
        messages: &[Vec<u8>],
    ) -> Fixture {
        let f = Fixture::with_flags(tag, flags);
        f.add_user(name, password);
        for m in messages {
            f.deliver(name, m);
        }
        f
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    pub fn add_user(&self, name: &str, password: &str) {
        add_user(self.data(), name, password);
    }

    /// Delivers `message` byte for byte (`--no-lda-headers`), so tests can compare what a
    /// client retrieves with what was delivered.
    pub fn deliver(&self, name: &str, message: &[u8]) {
        popadm_ok(self.data(), &["deliver", "--no-lda-headers", name], message);
    }

    /// Restarts pop3d on the same data directory (SIGTERM, wait, start).
    pub fn restart(&mut self, flags: &[&str]) {
        if self.server.running() {
            self.server.signal("TERM");
            self.server.wait();
        }
        self.server = Server::start(self.dir.path(), flags);
    }
}

/// The bytes a message is stored and retrieved as: CRLF line ends, ending in CRLF.
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads the whole of `r` (for client outputs).
pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// Standard base64 with padding (RFC 4648 section 4), for SASL payloads.
pub fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `curl pop3s://localhost:PORT/PATH` (localhost resolved to 127.0.0.1), trusting `cafile`,
/// logging in as `user`; `None` when curl is not installed (the caller skips; a failure in CI,
/// see [`client_available`]).
pub fn curl_pop3s(port: u16, cafile: &Path, user: &str, path: &str) -> Option<Output> {
    let out = curl()
        .arg("--cacert")
        .arg(cafile)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--user", user])
        .arg(format!("pop3s://localhost:{port}/{path}"))
        .output();
    match out {
        Ok(out) => Some(out),
        Err(_) => {
            assert!(!client_available("curl", "--version"));
            None
        }
    }
}
