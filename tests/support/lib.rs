//! Harness of the end-to-end suite: starts the real `pop3d` on an ephemeral loopback port with
//! a temporary data directory, runs the real `popadm`, and speaks POP3 over TCP.
//!
//! The binaries are taken from `POP3D_BIN` / `POPADM_BIN`, or else from the cargo target
//! directory this test binary runs from (`cargo xtask test` builds them first).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::Unstuffer;

pub mod clients;

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

/// A port free for both UDP and TCP on 127.0.0.1, for a daemon the suite configures itself
/// (a KDC, Postfix, Dovecot) and which cannot be handed a bound socket.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768-60999 by default): a port handed out by
    // binding port 0 is an ephemeral one, and any outgoing connection of a test running in
    // parallel may take it as its source port before the daemon binds it.
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..200 {
        let n = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed));
        let port = 20_000 + (n % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no port free for TCP and UDP in 20000-31999 on 127.0.0.1");
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "pop3-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `popadm --data-dir DIR ARGS` with `stdin` as its standard input.
pub fn popadm(data_dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin("popadm"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn popadm");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait popadm");
    let _ = writer.join();
    out
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

/// The LEGACY-AUTH column (the last) of `popadm user list` for the account `name`, or `""`.
pub fn legacy_auth_column(data_dir: &Path, name: &str) -> String {
    popadm_ok(data_dir, &["user", "list"], b"")
        .lines()
        .find(|l| l.split('\t').next() == Some(name))
        .and_then(|l| l.rsplit('\t').next())
        .map(str::to_owned)
        .unwrap_or_default()
}

/// A running `pop3d` on a loopback port, killed on drop.
pub struct Server {
    child: Child,
    /// The first cleartext (POP3, STLS) listener.
    pub addr: SocketAddr,
    /// The first implicit-TLS (POP3S) listener, if any.
    pub tls_addr: Option<SocketAddr>,
    /// Every listener as logged: kind (`pop3`, `pop3+stls`, `pop3s`) and address.
    pub listeners: Vec<(String, SocketAddr)>,
    data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts pop3d on `data_dir` with extra flags, and waits until it listens. Unless the
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

    /// Runs `cmd` (pop3d, or a program that becomes pop3d) and waits until pop3d has logged
    /// its listeners and "ready"; stderr is kept as the log.
    pub fn spawn(mut cmd: Command, data_dir: &Path) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pop3d");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(listener) = listening(&line) {
                    let _ = tx.send(Some(listener));
                } else if line.contains(" ready") || line.contains(" ERROR ") {
                    // pop3d logs "ready" once every listener is logged.
                    let _ = tx.send(None);
                }
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(None);
        });
        // Listeners are logged one after another, then "ready".
        let mut listeners = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while let Ok(Some(l)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            listeners.push(l);
        }
        if listeners.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pop3d did not start: {}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
        let find = |tls: bool| {
            listeners
                .iter()
                .find(|(kind, _)| (kind == "pop3s") == tls)
                .map(|(_, a)| *a)
        };
        Server {
            addr: find(false).or(find(true)).unwrap_or(listeners[0].1),
            tls_addr: find(true),
            listeners: listeners.clone(),
            data_dir: data_dir.to_path_buf(),
            child,
            log,
        }
    }

    /// The self-signed certificate pop3d generated in its data directory.
    pub fn self_signed_cert(&self) -> PathBuf {
        self.data_dir.join("tls").join("cert.pem")
    }

    /// What pop3d logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with kill(1) (e.g. "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "pop3d did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connects and logs in with USER/PASS, asserting success.
    pub fn login(&self, user: &str, pass: &str) -> Client {
        let mut c = self.connect();
        c.ok(&format!("USER {user}"));
        c.ok(&format!("PASS {pass}"));
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kind and address of a `listening` log line.
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains(" listening ") {
        return None;
    }
    let field = |name: &str| -> Option<String> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        let rest = &line[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        Some(rest[..end].trim_matches('"').to_string())
    };
    Some((field("kind")?, field("addr")?.parse().ok()?))
}

/// A synchronous POP3 client for tests.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
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
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
            greeting: String::new(),
        };
        c.greeting = c.line();
        c
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// Sends one command line (CRLF added).
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    /// Reads one line, without its CRLF; panics on EOF.
    pub fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf).expect("read line");
        assert!(n > 0, "connection closed while a line was expected");
        assert!(buf.ends_with(b"\r\n"), "line without CRLF: {buf:?}");
        buf.truncate(buf.len() - 2);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Sends a command and returns its status line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// Sends a command that must answer `+OK`.
    pub fn ok(&mut self, line: &str) -> String {
        let r = self.cmd(line);
        assert!(r.starts_with("+OK"), "{line:?} answered {r:?}");
        r
    }

    /// Sends a command that must answer `-ERR`.
    pub fn err(&mut self, line: &str) -> String {
        let r = self.cmd(line);
        assert!(r.starts_with("-ERR "), "{line:?} answered {r:?}");
        r
    }

    /// Reads a multi-line body after a `+OK`, unstuffed.
    pub fn body(&mut self) -> Vec<u8> {
        let mut u = Unstuffer::new();
        let mut out = Vec::new();
        loop {
            let buf = self.reader.fill_buf().expect("read body");
            assert!(
                !buf.is_empty(),
                "connection closed inside a multi-line reply"
            );
            let len = buf.len();
            match u.push(buf, &mut out) {
                Some(n) => {
                    self.reader.consume(n);
                    return out;
                }
                None => self.reader.consume(len),
            }
        }
    }

    /// A multi-line command: status line and unstuffed body; asserts `+OK`.
    pub fn multi(&mut self, line: &str) -> (String, Vec<u8>) {
        let status = self.ok(line);
        (status, self.body())
    }

    /// Body lines of a listing (LIST, UIDL, CAPA).
    pub fn listing(&mut self, line: &str) -> Vec<String> {
        let (_, body) = self.multi(line);
        String::from_utf8_lossy(&body)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// True once the server closed the connection (reads EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }

    /// Drops the connection without QUIT.
    pub fn drop_connection(self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
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

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    pub fn add_user(&self, name: &str, password: &str) {
        popadm_ok(
            self.data(),
            &["user", "add", name, "--password-stdin"],
            format!("{password}\n").as_bytes(),
        );
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
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
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
