//! What `faults` and `soak` share: a seeded random source, the built binaries, a `pop3d`
//! process on a temporary data directory and the blocking POP3 client (both from `testbed`),
//! the test messages with their ledger ids, and the database integrity check.
//!
//! Every wait here has a deadline; nothing loops without a bound.

use std::collections::HashMap;
use std::io::{self, Read as _, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use testbed::rng::Rng;

/// A seed from the clock, for runs without `--seed`.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5EED)
}

/// Parses `--name VALUE` from an argument list.
pub fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let value = args
                .get(i + 1)
                .ok_or_else(|| format!("{name} needs a value"))?;
            value
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}: cannot parse {value:?}"))
        }
    }
}

/// Refuses arguments other than the given `--flag VALUE` pairs.
pub fn only_flags(args: &[String], known: &[&str]) -> Result<(), String> {
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            return Err(format!(
                "unknown argument {:?} (known: {})",
                args[i],
                known.join(" ")
            ));
        }
        i += 2;
    }
    Ok(())
}

/// Prints up to 50 violations; `Ok` when there are none, else an error naming the seed, with
/// the work directory kept for a look.
pub fn verdict(violations: &[String], seed: u64, dir: &mut TempDir) -> Result<(), String> {
    for v in violations.iter().take(50) {
        println!("  VIOLATION: {v}");
    }
    if violations.is_empty() {
        return Ok(());
    }
    dir.keep = true;
    Err(format!(
        "{} invariant violations (seed {seed}; data kept in {})",
        violations.len(),
        dir.path().display()
    ))
}

/// The built `pop3d` and `popadm`, and the store `popadm` works on.
#[derive(Clone, Debug)]
pub struct Bins {
    pub pop3d: PathBuf,
    pub popadm: PathBuf,
    /// `popadm --store URL` (a PostgreSQL store) instead of the data directory's SQLite.
    pub store: Option<String>,
}

impl Bins {
    /// The debug binaries in the target directory; they must have been built.
    pub fn debug() -> Result<Bins, String> {
        let dir = crate::target_dir().join("debug");
        let bins = Bins {
            pop3d: dir.join("pop3d"),
            popadm: dir.join("popadm"),
            store: None,
        };
        for b in [&bins.pop3d, &bins.popadm] {
            if !b.exists() {
                return Err(format!(
                    "{} not found: run `cargo build --workspace --bins` first",
                    b.display()
                ));
            }
        }
        Ok(bins)
    }

    /// Builds `pop3d` and `popadm`, then finds them.
    pub fn build() -> Result<Bins, String> {
        let mut build = crate::cargo();
        build.args([
            "build",
            "--package",
            "pop3d",
            "--package",
            "admin",
            "--bins",
        ]);
        crate::run(build, "building pop3d and popadm")?;
        Bins::debug()
    }

    /// `popadm --data-dir DATA ARGS` with `stdin`; its exit status and stderr.
    pub fn popadm(
        &self,
        data: &Path,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<(ExitStatus, String), String> {
        let mut child = self.spawn_popadm(data, args)?;
        feed(&mut child, stdin.to_vec());
        let out = child
            .wait_with_output()
            .map_err(|e| format!("popadm {args:?}: {e}"))?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `popadm` that must succeed.
    pub fn popadm_ok(&self, data: &Path, args: &[&str], stdin: &[u8]) -> Result<(), String> {
        let (status, stderr) = self.popadm(data, args, stdin)?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("popadm {args:?}: {status}: {stderr}"))
        }
    }

    pub fn spawn_popadm(&self, data: &Path, args: &[&str]) -> Result<Child, String> {
        let mut popadm = Command::new(&self.popadm);
        popadm.arg("--data-dir").arg(data);
        if let Some(url) = &self.store {
            popadm.arg("--store").arg(url);
        }
        popadm
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning popadm: {e}"))
    }
}

/// Writes `data` to the child's stdin from a thread and closes it (errors ignored: a killed
/// child closes its end).
pub fn feed(child: &mut Child, data: Vec<u8>) {
    if let Some(mut stdin) = child.stdin.take() {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
}

/// How a `popadm deliver` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Exit 0: the message must be stored.
    Acked,
    /// Another exit code (75: try again): the message may or may not be stored.
    Refused(i32),
    /// Killed by a signal: the message may or may not be stored, but never partially.
    Killed,
}

/// Runs `popadm deliver USER` with `bytes`; with `kill_after`, sends it SIGKILL after that long
/// if it is still running.
pub fn deliver(
    bins: &Bins,
    data: &Path,
    user: &str,
    bytes: Vec<u8>,
    kill_after: Option<Duration>,
) -> Result<Delivery, String> {
    let mut child = bins.spawn_popadm(data, &["deliver", user])?;
    feed(&mut child, bytes);
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("popadm deliver {user} did not finish in 120 s"));
            }
            Err(e) => return Err(format!("waiting for popadm: {e}")),
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    Ok(match status.code() {
        Some(0) => Delivery::Acked,
        Some(code) => Delivery::Refused(code),
        None => Delivery::Killed,
    })
}

/// Delivers `bytes` to `user` over LMTP at `addr` (RFC 2033: LHLO, MAIL, RCPT and DATA
/// pipelined, the message dot-stuffed). With `cut`, the connection is dropped after that many
/// octets of the message, mid-DATA: [`Delivery::Killed`], which must leave nothing stored. A
/// `250` after the final dot is [`Delivery::Acked`], another reply [`Delivery::Refused`] with its
/// code, a connection lost on the way (pop3d killed) [`Delivery::Killed`].
pub fn deliver_lmtp(
    addr: SocketAddr,
    user: &str,
    bytes: &[u8],
    cut: Option<usize>,
) -> Result<Delivery, String> {
    use std::io::BufRead as _;
    let lost = |_: io::Error| Delivery::Killed;
    let attempt = || -> Result<Delivery, Delivery> {
        let stream =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(lost)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(lost)?;
        let mut writer = stream.try_clone().map_err(lost)?;
        let mut reader = io::BufReader::new(stream);
        // The code of the next reply (its last line, for a multi-line one).
        let mut reply = || -> Result<u16, Delivery> {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map_err(lost)? == 0 {
                    return Err(Delivery::Killed);
                }
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(code);
                }
            }
        };
        let expect = |code: u16, want: u16| match code == want {
            true => Ok(()),
            false => Err(Delivery::Refused(i32::from(code))),
        };
        expect(reply()?, 220)?;
        let envelope =
            format!("LHLO xtask\r\nMAIL FROM:<xtask@localhost>\r\nRCPT TO:<{user}>\r\nDATA\r\n");
        writer.write_all(envelope.as_bytes()).map_err(lost)?;
        for want in [250, 250, 250, 354] {
            expect(reply()?, want)?;
        }
        let mut stuffed = Vec::with_capacity(bytes.len() + bytes.len() / 32 + 8);
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'.' && (i == 0 || bytes[i - 1] == b'\n') {
                stuffed.push(b'.');
            }
            stuffed.push(b);
        }
        if let Some(cut) = cut {
            let _ = writer.write_all(&stuffed[..cut.min(stuffed.len())]);
            return Err(Delivery::Killed);
        }
        stuffed.extend_from_slice(b".\r\nQUIT\r\n");
        writer.write_all(&stuffed).map_err(lost)?;
        expect(reply()?, 250)?;
        Ok(Delivery::Acked)
    };
    Ok(attempt().unwrap_or_else(|d| d))
}

/// A temporary directory, removed on drop unless `keep` is set: [`testbed::TempDir`] with
/// errors as strings.
pub struct TempDir(testbed::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir, String> {
        testbed::TempDir::try_new(&format!("xtask-{tag}"))
            .map(TempDir)
            .map_err(|e| format!("temp dir {tag}: {e}"))
    }
}

impl std::ops::Deref for TempDir {
    type Target = testbed::TempDir;

    fn deref(&self) -> &testbed::TempDir {
        &self.0
    }
}

impl std::ops::DerefMut for TempDir {
    fn deref_mut(&mut self) -> &mut testbed::TempDir {
        &mut self.0
    }
}

/// A running `pop3d` ([`testbed::Pop3d`], which it derefs to) listening on loopback, its
/// log in a file; SIGKILLed on drop.
pub struct Pop3d {
    inner: testbed::Pop3d,
}

impl Pop3d {
    /// Starts pop3d (cleartext listener on 127.0.0.1:0, no certificate) with `extra` flags,
    /// logging to `log`, and waits until it is ready.
    pub fn start(bins: &Bins, data: &Path, log: &Path, extra: &[&str]) -> Result<Pop3d, String> {
        Pop3d::start_at(bins, data, log, "127.0.0.1:0", extra)
    }

    /// [`Pop3d::start`] with the listener on `listen` (a fixed port, so that a restarted
    /// process is found where the old one was).
    pub fn start_at(
        bins: &Bins,
        data: &Path,
        log: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Result<Pop3d, String> {
        let mut cmd = Command::new(&bins.pop3d);
        cmd.arg("--data-dir")
            .arg(data)
            .args(["--listen", listen, "--no-self-signed"])
            .args(extra)
            .env("NO_COLOR", "1");
        let log = testbed::Log::File(log.to_path_buf());
        let inner = testbed::Pop3d::spawn(cmd, log, Duration::from_secs(30))?;
        Ok(Pop3d { inner })
    }

    /// How it exited, once it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.inner.exit_status()
    }

    pub fn alive(&mut self) -> bool {
        self.inner.alive()
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. True when it exited on its own.
    pub fn stop(self, grace: Duration) -> bool {
        self.inner.stop(grace)
    }
}

impl std::ops::Deref for Pop3d {
    type Target = testbed::Pop3d;

    fn deref(&self) -> &testbed::Pop3d {
        &self.inner
    }
}

impl std::ops::DerefMut for Pop3d {
    fn deref_mut(&mut self) -> &mut testbed::Pop3d {
        &mut self.inner
    }
}

/// A `kill -9 PID` armed in advance (a shell waiting on its stdin), so that firing it costs a
/// pipe write rather than a process start: the kill lands within a millisecond of [`fire`].
///
/// [`fire`]: KillTrigger::fire
pub struct KillTrigger {
    shell: Child,
    stdin: std::sync::Mutex<Option<std::process::ChildStdin>>,
}

impl KillTrigger {
    pub fn arm(pid: u32) -> Result<KillTrigger, String> {
        let mut shell = Command::new("sh")
            .args(["-c", &format!("read _ && kill -9 {pid}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning sh: {e}"))?;
        let stdin = shell.stdin.take();
        Ok(KillTrigger {
            shell,
            stdin: std::sync::Mutex::new(stdin),
        })
    }

    /// Kills the process; true the first time only.
    pub fn fire(&self) -> bool {
        let taken = self.stdin.lock().map(|mut s| s.take()).unwrap_or(None);
        match taken {
            Some(mut stdin) => {
                let _ = stdin.write_all(b"go\n");
                true
            }
            None => false,
        }
    }
}

impl Drop for KillTrigger {
    fn drop(&mut self) {
        // Closing stdin unfired makes `read` fail, and the shell exits without killing.
        if let Ok(mut s) = self.stdin.lock() {
            s.take();
        }
        let _ = self.shell.wait();
    }
}

pub use testbed::{signal, Client};

/// Connects, sends USER and PASS; the client and PASS's reply, whatever it is.
pub fn try_login(addr: SocketAddr, user: &str, pass: &str) -> Result<(Client, String), String> {
    let mut c = Client::connect(addr).map_err(|e| format!("connect: {e}"))?;
    if !c.greeting.starts_with("+OK") {
        return Err(format!("greeting {:?}", c.greeting));
    }
    c.ok(&format!("USER {user}"))
        .map_err(|e| format!("USER: {e}"))?;
    let reply = c
        .cmd(&format!("PASS {pass}"))
        .map_err(|e| format!("PASS: {e}"))?;
    Ok((c, reply))
}

/// Logs in with USER/PASS, retrying while the maildrop is `[IN-USE]` until `patience` has
/// passed. Returns the client and how long the maildrop stayed locked.
pub fn login(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    patience: Duration,
) -> Result<(Client, Duration), String> {
    let start = Instant::now();
    let deadline = start + patience;
    loop {
        let (mut c, reply) = try_login(addr, user, pass)?;
        if reply.starts_with("+OK") {
            return Ok((c, start.elapsed()));
        }
        if !reply.starts_with("-ERR [IN-USE]") {
            return Err(format!("login {user}: {reply:?}"));
        }
        let _ = c.cmd("QUIT");
        if Instant::now() > deadline {
            return Err(format!(
                "maildrop {user} still locked after {:.1} s",
                start.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The test message with ledger id `id`, about `size` octets, CRLF line ends throughout (so
/// it is stored byte for byte as sent). Some lines start with a dot, to be stuffed.
pub fn message(id: u64, size: usize) -> Vec<u8> {
    let mut m = format!(
        "Message-Id: <m{id}@xtask.invalid>\r\nSubject: ledger message {id}\r\n\
         From: xtask@localhost\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0u64;
    while m.len() < size {
        let line = if i.is_multiple_of(11) {
            format!(".{id} line {i}\r\n")
        } else {
            format!("{id} line {i} {}\r\n", "x".repeat((i * 7 % 61) as usize))
        };
        m.extend_from_slice(line.as_bytes());
        i += 1;
    }
    m
}

/// The ledger id in a message's `Message-Id` header (`<mID@xtask.invalid>`).
pub fn message_id(bytes: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]);
    let start = text.find("Message-Id: <m")? + "Message-Id: <m".len();
    let end = start + text[start..].find('@')?;
    text[start..end].parse().ok()
}

/// Most octets of trace headers (`Return-Path:`, `Delivered-To:`) `popadm deliver` may put on
/// top of a message.
pub const MAX_TRACE: usize = 1024;

/// Whether `stored` (as RETR returned it) is `delivered` whole, below nothing but a few trace
/// header lines that popadm adds.
pub fn stored_as_delivered(stored: &[u8], delivered: &[u8]) -> bool {
    let Some(prefix) = stored.strip_suffix(delivered) else {
        return false;
    };
    prefix.len() < MAX_TRACE && prefix.split_inclusive(|&b| b == b'\n').all(is_header_line)
}

/// `Name: value CRLF`, the name made of letters, digits and `-`.
fn is_header_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && line.ends_with(b"\r\n")
}

/// One message as a session sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub number: u32,
    pub uid: String,
    pub size: u64,
    pub id: Option<u64>,
}

/// UIDL and LIST of a logged-in session; `ids` maps known UIDs to ledger ids, the others are
/// found with `TOP n 0`.
pub fn survey(c: &mut Client, ids: &HashMap<String, u64>) -> io::Result<Vec<Seen>> {
    let uidl = c.listing("UIDL")?;
    let list: HashMap<u32, String> = c.listing("LIST")?.into_iter().collect();
    let mut out = Vec::with_capacity(uidl.len());
    for (number, uid) in uidl {
        let size = list
            .get(&number)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("LIST lacks message {number}")))?;
        let id = match ids.get(&uid) {
            Some(id) => Some(*id),
            None => message_id(&c.multi(&format!("TOP {number} 0"))?),
        };
        out.push(Seen {
            number,
            uid,
            size,
            id,
        });
    }
    Ok(out)
}

/// `PRAGMA integrity_check` of the maildrop database: `Ok` when SQLite says `ok`.
pub fn integrity_check(data: &Path) -> Result<(), String> {
    let path = data.join("maildrops.sqlite3");
    let db = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {}: {e}", path.display()))?;
    db.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut stmt = db
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(format!("integrity_check: {}", rows.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip() {
        for (id, size) in [(0, 0), (7, 100), (123_456, 5000)] {
            let m = message(id, size);
            assert!(m.len() >= size);
            assert!(m.ends_with(b"\r\n"));
            assert_eq!(message_id(&m), Some(id));
        }
    }

    #[test]
    fn trace_headers_are_the_only_allowed_difference() {
        let m = message(3, 300);
        let mut traced = b"Return-Path: <>\r\nDelivered-To: u\r\n".to_vec();
        traced.extend_from_slice(&m);
        assert!(stored_as_delivered(&m, &m));
        assert!(stored_as_delivered(&traced, &m));
        assert!(!stored_as_delivered(&traced[..traced.len() - 1], &m));
        let mut junk = b"junk\r\n".to_vec();
        junk.extend_from_slice(&m);
        assert!(!stored_as_delivered(&junk, &m));
    }

    /// A scripted LMTP server on loopback: answers the pipelined envelope, then reads the
    /// message to its final dot (or EOF) and answers `last`. What it read after 354.
    fn fake_lmtp(last: &'static str) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        use std::io::BufRead as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut w = stream.try_clone().expect("clone");
            let mut r = io::BufReader::new(stream);
            w.write_all(b"220 fake\r\n").expect("greeting");
            let mut line = String::new();
            for reply in [
                "250-fake\r\n250 SIZE 9\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "354 go\r\n",
            ] {
                line.clear();
                r.read_line(&mut line).expect("command");
                w.write_all(reply.as_bytes()).expect("reply");
            }
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).expect("data") == 0 {
                    return data;
                }
                if l == b".\r\n" {
                    let _ = w.write_all(last.as_bytes());
                    return data;
                }
                data.extend_from_slice(&l);
            }
        });
        (addr, server)
    }

    /// The faults' LMTP client: dot-stuffing, the outcome of each ending.
    #[test]
    fn lmtp_deliveries_stuff_and_report_their_outcome() {
        let m = message(9, 400);
        let (addr, server) = fake_lmtp("250 2.0.0 delivered\r\n");
        assert_eq!(deliver_lmtp(addr, "u", &m, None), Ok(Delivery::Acked));
        let got = server.join().expect("server");
        let stuffed = String::from_utf8_lossy(&m).replace("\r\n.", "\r\n..");
        assert_eq!(String::from_utf8_lossy(&got), stuffed);
        let (addr, server) = fake_lmtp("452 4.2.2 full\r\n");
        assert_eq!(
            deliver_lmtp(addr, "u", &m, None),
            Ok(Delivery::Refused(452))
        );
        server.join().expect("server");
        let (addr, server) = fake_lmtp("250 2.0.0 delivered\r\n");
        assert_eq!(deliver_lmtp(addr, "u", &m, Some(100)), Ok(Delivery::Killed));
        assert_eq!(server.join().expect("server").len(), 100);
    }

    #[test]
    fn rng_is_deterministic() {
        let (mut a, mut b) = (Rng::new(5), Rng::new(5));
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert!((0..1000).all(|_| a.below(7) < 7));
    }
}
