//! What `faults` and `soak` share: a seeded random source, the built binaries, a `pop3d`
//! process on a temporary data directory, a small blocking POP3 client over `std::net`, the
//! test messages with their ledger ids, and the database integrity check.
//!
//! Every wait here has a deadline; nothing loops without a bound.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proto::Unstuffer;

/// Longest any single network read or write may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// splitmix64: small, fast, and the same sequence for the same seed on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn millis(&mut self, max_ms: u64) -> Duration {
        Duration::from_millis(self.below(max_ms + 1))
    }

    /// An independent generator for another thread.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

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

/// A temporary directory, removed on drop unless kept.
pub struct TempDir {
    path: PathBuf,
    pub keep: bool,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "pop3-xtask-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running `pop3d` listening on an ephemeral loopback port; SIGKILLed on drop.
pub struct Pop3d {
    child: Child,
    pub addr: SocketAddr,
}

impl Pop3d {
    /// Starts pop3d (cleartext listener on 127.0.0.1:0, no certificate) with `extra` flags,
    /// logging to `log`, and waits until it says `ready`.
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
        let file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&bins.pop3d)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", listen, "--no-self-signed"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("spawning pop3d: {e}"))?;
        let mut server = Pop3d {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(listening_addr) {
                if text.contains(" ready") {
                    server.addr = addr;
                    return Ok(server);
                }
            }
            if !server.alive() {
                return Err(format!("pop3d exited at start:\n{text}"));
            }
            if Instant::now() > deadline {
                return Err(format!("pop3d not ready after 30 s:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, once it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the process to exit; true when it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. True when it exited on its own.
    pub fn stop(mut self, grace: Duration) -> bool {
        signal(self.pid(), "TERM");
        if self.wait_exit(grace) {
            return true;
        }
        self.kill9();
        false
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(|d| d.count())
    }
}

impl Drop for Pop3d {
    fn drop(&mut self) {
        self.kill9();
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

/// Sends a signal with kill(1) (no libc in xtask).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The address of a `listening addr=... kind=...` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(" listening ")?..];
    let start = rest.find("addr=")? + "addr=".len();
    let value = rest[start..].split_whitespace().next()?;
    value.trim_matches('"').parse().ok()
}

/// A blocking POP3 client; every error is an `io::Error`, a `-ERR` where `+OK` was needed
/// included.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> io::Result<(Client, String)> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = c.line()?;
        Ok((c, greeting))
    }

    pub fn send(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())
    }

    /// One reply line without its CRLF; EOF is an error.
    pub fn line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        (&mut self.reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut buf)?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends a command, returns its status line whatever it is.
    pub fn cmd(&mut self, line: &str) -> io::Result<String> {
        self.send(line)?;
        self.line()
    }

    /// A command that must answer `+OK`.
    pub fn ok(&mut self, line: &str) -> io::Result<String> {
        let reply = self.cmd(line)?;
        if reply.starts_with("+OK") {
            Ok(reply)
        } else {
            Err(io::Error::other(format!("{line:?} answered {reply:?}")))
        }
    }

    /// The unstuffed body of a multi-line reply whose `+OK` was read.
    pub fn body(&mut self) -> io::Result<Vec<u8>> {
        let mut u = Unstuffer::new();
        let mut out = Vec::new();
        // Bounded by the reply: every pass consumes at least one octet or fails.
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside a multi-line reply",
                ));
            }
            let len = buf.len();
            match u.push(buf, &mut out) {
                Some(n) => {
                    self.reader.consume(n);
                    return Ok(out);
                }
                None => self.reader.consume(len),
            }
        }
    }

    /// A multi-line command that must answer `+OK`: its body.
    pub fn multi(&mut self, line: &str) -> io::Result<Vec<u8>> {
        self.ok(line)?;
        self.body()
    }

    /// Lines of a listing (LIST, UIDL): `(number, rest)`.
    pub fn listing(&mut self, line: &str) -> io::Result<Vec<(u32, String)>> {
        let body = self.multi(line)?;
        let mut out = Vec::new();
        for l in String::from_utf8_lossy(&body).split("\r\n") {
            if l.is_empty() {
                continue;
            }
            let (n, rest) = l
                .split_once(' ')
                .ok_or_else(|| io::Error::other(format!("bad listing line {l:?}")))?;
            let n = n
                .parse()
                .map_err(|_| io::Error::other(format!("bad listing line {l:?}")))?;
            out.push((n, rest.to_string()));
        }
        Ok(out)
    }

    /// The client's own address (what a proxy in between names in a PROXY header).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Closes both directions without QUIT.
    pub fn drop_connection(self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

/// Connects, sends USER and PASS; the client and PASS's reply, whatever it is.
pub fn try_login(addr: SocketAddr, user: &str, pass: &str) -> Result<(Client, String), String> {
    let (mut c, greeting) = Client::connect(addr).map_err(|e| format!("connect: {e}"))?;
    if !greeting.starts_with("+OK") {
        return Err(format!("greeting {greeting:?}"));
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

    #[test]
    fn listening_lines_parse() {
        let line =
            "2026-11-26T18:24:06Z  INFO server: listening addr=127.0.0.1:42757 kind=\"pop3\"";
        assert_eq!(
            listening_addr(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 42757)))
        );
        assert_eq!(listening_addr("ready listeners=1"), None);
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
