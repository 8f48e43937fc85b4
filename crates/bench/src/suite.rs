//! The benchmark suite behind `cargo xtask bench`: builds the release binaries, provisions a
//! temporary pop3d store (and, with `--against dovecot`, a private Dovecot with the same
//! messages and the same argon2id hashes), runs every scenario against every server in one run,
//! interleaved repetition by repetition, and writes `target/bench/latest.{json,md}`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::client::{self, tls_connector, Target, Work};
use crate::corpus::{self, Expected};
use crate::idle::{self, Idle};
use crate::load::{self, Mode, RunResult};
use crate::procs::{self, RssSampler, ServerProcess};
use crate::shapes;

/// The one password every benchmark account has.
const PASSWORD: &str = "bench password 1";
/// Scenario 3: users with one large message each (20 MiB and 100 MiB).
const BIG: [(&str, usize); 2] = [("big0", 20 * 1024 * 1024), ("big1", 100 * 1024 * 1024)];
/// Scenario 5: the user with a very large maildrop of small messages.
const MANY_USER: &str = "many0";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// Small corpus and short runs (64 users x 20 messages; a few minutes)
    #[arg(long)]
    pub quick: bool,
    /// Also run every scenario against this server, side by side (only `dovecot`)
    #[arg(long, value_name = "SERVER", value_parser = ["dovecot"])]
    pub against: Option<String>,
    /// Repetitions of each measurement (the median is reported)
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Where latest.json and latest.md go (default: target/bench of the workspace)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Corpus seed
    #[arg(long, default_value_t = 20240101)]
    pub seed: u64,
    /// Keep the temporary directory (data, Maildirs, configuration, logs)
    #[arg(long)]
    pub keep: bool,
    /// Do not run `cargo build --release`; use the binaries next to this one
    #[arg(long)]
    pub no_build: bool,
    /// Run only these scenarios (S1 .. S6; S1 takes in S1c, S1-TLS and S1-STLS, and so on);
    /// repeat or separate by commas. Default: all.
    #[arg(long, value_name = "ID", value_delimiter = ',', value_parser = ["S1", "S2", "S3", "S4", "S5", "S6"])]
    pub only: Vec<String>,
    /// S6: the nginx binary for the three-node shape (`cargo xtask bench` passes the one it
    /// unpacked from the Debian packages `cargo xtask deps` fetched); without it that shape is
    /// left out
    #[arg(long, value_name = "FILE", requires = "nginx_mail_module")]
    pub nginx: Option<PathBuf>,
    /// S6: nginx's mail module (`ngx_mail_module.so`)
    #[arg(long, value_name = "FILE", requires = "nginx")]
    pub nginx_mail_module: Option<PathBuf>,
}

impl SuiteArgs {
    /// Whether scenario `id` (or one of its variants, `S1c` for `S1`) is to run.
    pub fn wants(&self, id: &str) -> bool {
        let family = id
            .split(|c: char| c == '-' || c.is_ascii_lowercase())
            .next();
        self.only.is_empty() || self.only.iter().any(|o| Some(o.as_str()) == family)
    }

    /// Whether any of S1 .. S5 (the scenarios on pop3d's own store, and Dovecot's) runs.
    fn classic(&self) -> bool {
        ["S1", "S2", "S3", "S4", "S5"]
            .iter()
            .any(|id| self.wants(id))
    }
}

struct Sizes {
    users: usize,
    messages: u32,
    /// Scenario 4: idle connections before login, and idle logged-in sessions.
    idle_conns: usize,
    idle_sessions: usize,
    /// Scenario 5: messages in the large maildrop.
    many: u32,
    s1_sessions: u64,
    s1_time: Duration,
    s2_time: Duration,
    reps: usize,
    s3_reps: usize,
}

/// A running server under test.
pub(crate) struct Endpoint {
    pub name: String,
    pub plain: u16,
    pub tls: u16,
    /// Its processes, stopped in this order; the first is the one whose memory S3 and S4
    /// sample.
    pub processes: Vec<ServerProcess>,
    /// Further process trees whose CPU time counts as the server's (a PostgreSQL store's).
    pub store_pids: Vec<u32>,
}

impl Endpoint {
    pub fn new(name: &str, plain: u16, tls: u16, process: ServerProcess) -> Endpoint {
        Endpoint {
            name: name.into(),
            plain,
            tls,
            processes: vec![process],
            store_pids: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.processes.first().map_or(0, ServerProcess::pid)
    }

    /// CPU seconds used so far by all its processes and their store's.
    fn cpu_seconds(&self, ticks: f64) -> f64 {
        self.processes
            .iter()
            .map(ServerProcess::pid)
            .chain(self.store_pids.iter().copied())
            .map(|pid| procs::cpu_seconds(pid, ticks))
            .sum()
    }

    pub fn stop(&mut self) {
        for p in &mut self.processes {
            p.stop();
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
enum Unit {
    #[serde(rename = "sessions/s")]
    Sessions,
    #[serde(rename = "MiB/s")]
    Mib,
    /// Lower is better.
    #[serde(rename = "ms")]
    Ms,
    /// Server memory per held connection; lower is better.
    #[serde(rename = "KiB/conn")]
    KibPerConn,
}

impl Unit {
    fn higher_is_better(self) -> bool {
        matches!(self, Unit::Sessions | Unit::Mib)
    }

    fn label(self) -> &'static str {
        match self {
            Unit::Sessions => "sessions/s",
            Unit::Mib => "MiB/s",
            Unit::Ms => "ms",
            Unit::KibPerConn => "KiB/conn",
        }
    }
}

/// How a scenario reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    /// POP3S (RFC 8314).
    Implicit,
    /// Cleartext port, STLS (RFC 2595), then the session.
    Stls,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Implicit => "implicit TLS",
            Transport::Stls => "STLS",
        }
    }
}

#[derive(Clone)]
struct Scenario {
    id: &'static str,
    title: String,
    work: Work,
    transport: Transport,
    concurrency: usize,
    users: Arc<Vec<String>>,
    mode: Mode,
    unit: Unit,
    rss: bool,
    reps: usize,
    /// Indexes into the endpoints; the first is ours.
    servers: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct Rep {
    run: RunResult,
    server_cpu_s: f64,
    client_cpu_s: f64,
    rss_base_kib: u64,
    rss_peak_kib: u64,
    /// The row's figure when it is not a rate: ms (S5) or KiB per connection (S4).
    figure: Option<f64>,
    /// S4: connections held, and the server tree's PSS before and while holding them.
    held: usize,
    pss_base_kib: u64,
    pss_held_kib: u64,
}

impl Rep {
    fn new(run: RunResult, server_cpu_s: f64, client_cpu_s: f64) -> Rep {
        Rep {
            run,
            server_cpu_s,
            client_cpu_s,
            rss_base_kib: 0,
            rss_peak_kib: 0,
            figure: None,
            held: 0,
            pss_base_kib: 0,
            pss_held_kib: 0,
        }
    }
}

#[derive(Debug, Serialize)]
struct Cell {
    server: String,
    valid: bool,
    errors: u64,
    first_error: Option<String>,
    /// Medians over the repetitions.
    throughput: f64,
    sessions_per_s: f64,
    messages_per_s: f64,
    mib_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu_ms_per_session: f64,
    server_cpu_ms_per_mib: f64,
    client_cpu_ms_per_session: f64,
    rss_growth_mib: f64,
    rss_peak_mib: f64,
    /// S4: median connections held, and PSS and RSS growth per connection (KiB).
    held: usize,
    pss_kib_per_conn: f64,
    rss_kib_per_conn: f64,
    reps: Vec<Rep>,
}

#[derive(Debug, Serialize)]
struct Row {
    id: &'static str,
    title: String,
    transport: &'static str,
    concurrency: usize,
    unit: Unit,
    /// S3: the server's RSS is sampled during the transfer.
    rss: bool,
    cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    machine: String,
    cpus: usize,
    kernel: String,
    pop3d_commit: String,
    dovecot: Option<String>,
    quick: bool,
    users: usize,
    messages_per_user: u32,
    corpus_mib: f64,
    reps: usize,
    seed: u64,
    notes: Vec<String>,
    rows: Vec<Row>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
}

fn check(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start"))?;
    if !status.success() {
        bail!("{what}: {status}");
    }
    Ok(())
}

pub fn dovecot_version() -> Option<String> {
    output("dovecot", &["--version"])
}

/// `pop3-bench deps`: install Dovecot's POP3 server from Debian packages when it is missing.
pub fn deps() -> Result<()> {
    if let Some(v) = dovecot_version() {
        eprintln!("pop3-bench: dovecot {v} is installed");
        return Ok(());
    }
    if output("apt-get", &["--version"]).is_none() {
        bail!("dovecot is missing and there is no apt-get: install Dovecot 2.3's pop3d yourself");
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    check(update, "apt-get update")?;
    let mut install = Command::new("apt-get");
    install
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "dovecot-pop3d",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive");
    check(install, "apt-get install dovecot-pop3d")?;
    // The package starts the system instance; the benchmark never uses it (it runs its own).
    eprintln!(
        "pop3-bench: installed dovecot {}",
        dovecot_version().unwrap_or_default()
    );
    Ok(())
}

/// How popadm reaches a store: pop3d's data directory and, for PostgreSQL, its URL.
pub(crate) struct Popadm<'a> {
    pub bin: &'a Path,
    pub data: &'a Path,
    pub store: Option<&'a str>,
}

impl Popadm<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--data-dir").arg(self.data);
        if let Some(url) = self.store {
            c.args(["--store", url]);
        }
        c.args(args);
        c
    }
}

/// Size of message `index` of the scenario-5 maildrop: small, 300 to 900 octets of body.
fn many_size(index: u32) -> usize {
    300 + (index % 7) as usize * 100
}

/// The users of scenario 4's idle logged-in sessions (empty maildrops).
fn idle_users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("idle{i}")).collect()
}

/// Users `user0..` and, with `extras`, `big*` and `many0`: their mbox files (and Maildirs for
/// Dovecot), and the expected corpus; the MiB figure is that of `user0..` (scenarios 1, 2 and
/// 6). Idle users get empty Maildirs.
fn write_corpus(
    tmp: &Path,
    users: &[String],
    sizes: &Sizes,
    seed: u64,
    maildirs: bool,
    extras: bool,
) -> Result<(Expected, f64)> {
    let mut expected = Expected::new(seed);
    let mut octets = 0u64;
    std::fs::create_dir_all(tmp.join("mbox"))?;
    let mut all: Vec<(String, Vec<(u32, usize)>)> = users
        .iter()
        .map(|u| {
            let msgs = (0..sizes.messages)
                .map(|i| (i, corpus::mixed_size(seed, u, i)))
                .collect();
            (u.clone(), msgs)
        })
        .collect();
    if extras {
        for (user, size) in BIG {
            all.push((user.to_string(), vec![(0, size)]));
        }
        all.push((
            MANY_USER.to_string(),
            (0..sizes.many).map(|i| (i, many_size(i))).collect(),
        ));
    }
    if maildirs && extras {
        for user in idle_users(sizes.idle_sessions) {
            for d in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(tmp.join("mail").join(&user).join("Maildir").join(d))?;
            }
        }
    }
    for (ui, (user, msgs)) in all.iter().enumerate() {
        let mut mbox = std::io::BufWriter::new(std::fs::File::create(
            tmp.join("mbox").join(format!("{user}.mbox")),
        )?);
        let maildir = tmp.join("mail").join(user).join("Maildir");
        if maildirs {
            for d in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(maildir.join(d))?;
            }
        }
        let big = BIG.iter().any(|(u, _)| u == user);
        for &(i, size) in msgs {
            let lf = corpus::message(seed, user, i, size);
            if big {
                // Over popadm import's message size cap: delivered alone (`popadm deliver`).
                std::fs::write(tmp.join("mbox").join(format!("{user}.eml")), &lf)?;
            } else {
                mbox.write_all(b"From bench@example.org Mon Jan  1 00:00:00 2024\n")?;
                mbox.write_all(&lf)?;
                mbox.write_all(b"\n")?;
            }
            let crlf_len = lf.len() + lf.iter().filter(|&&b| b == b'\n').count();
            if maildirs {
                let name = format!(
                    "{}.M{i}P{ui}.bench,S={},W={crlf_len}:2,",
                    1_700_000_000 + u64::from(i),
                    lf.len()
                );
                std::fs::write(maildir.join("cur").join(name), &lf)?;
            }
            expected.add(user, i, &lf);
            if ui < users.len() {
                octets += crlf_len as u64;
            }
        }
        mbox.flush()?;
    }
    Ok((expected, octets as f64 / MIB))
}

/// Creates the accounts and imports their mail (none for `idle`), two popadm processes at a
/// time; with `extras` also the S3 and S5 users.
pub(crate) fn provision(
    store: &Popadm,
    tmp: &Path,
    users: &[String],
    idle: &[String],
    extras: bool,
) -> Result<()> {
    let mut all: Vec<&str> = users.iter().map(String::as_str).collect();
    if extras {
        all.push(MANY_USER);
    }
    let with_mail = all.len();
    all.extend(idle.iter().map(String::as_str));
    if extras {
        all.extend(BIG.iter().map(|(u, _)| *u));
    }
    // The first account alone: it creates the store and its schema, which two popadm
    // processes must not race to do (the loser finds the database busy).
    let (first, rest) = all.split_at(all.len().min(1));
    for pair in std::iter::once(first).chain(rest.chunks(2)) {
        let mut children = Vec::new();
        for user in pair {
            let mut c = store.cmd(&["user", "add", user, "--password-stdin"]);
            let mut child = c.stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                writeln!(stdin, "{PASSWORD}")?;
            }
            children.push((*user, child));
        }
        for (user, mut child) in children {
            let status = child.wait()?;
            if !status.success() {
                bail!("popadm user add {user}: {status}");
            }
        }
    }
    for pair in all[..with_mail].chunks(2) {
        let mut children = Vec::new();
        for user in pair {
            let file = tmp.join("mbox").join(format!("{user}.mbox"));
            let file = file.to_string_lossy().into_owned();
            let mut c = store.cmd(&["import", "mbox", &file, user]);
            children.push((*user, c.stdout(Stdio::null()).spawn()?));
        }
        for (user, mut child) in children {
            let status = child.wait()?;
            if !status.success() {
                bail!("popadm import mbox for {user}: {status}");
            }
        }
    }
    for (user, size) in BIG.into_iter().filter(|_| extras) {
        let eml = std::fs::File::open(tmp.join("mbox").join(format!("{user}.eml")))?;
        let max = (2 * size).to_string();
        let mut c = store.cmd(&["deliver", "--no-lda-headers", "--max-size", &max, user]);
        c.stdin(eml).stdout(Stdio::null());
        check(c, &format!("popadm deliver to {user}"))?;
    }
    Ok(())
}

/// The argon2id PHC strings pop3d's store holds, by account name.
fn stored_hashes(data: &Path) -> Result<Vec<(String, String)>> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("maildrops.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .context("opening pop3d's store")?;
    let mut stmt =
        db.prepare("SELECT local, password_hash FROM accounts WHERE domain_id IS NULL")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    Ok(rows)
}

struct DovecotIds {
    uid: String,
    gid: String,
    internal_user: String,
    login_user: String,
}

fn dovecot_ids() -> Result<DovecotIds> {
    let root = output("id", &["-u"]).as_deref() == Some("0");
    if root {
        let (Some(uid), Some(gid)) = (
            output("id", &["-u", "nobody"]),
            output("id", &["-g", "nobody"]),
        ) else {
            bail!("no user nobody to own the Dovecot mail");
        };
        let known = |u: &str| output("id", &["-u", u]).is_some();
        Ok(DovecotIds {
            uid,
            gid,
            internal_user: if known("dovecot") {
                "dovecot"
            } else {
                "nobody"
            }
            .into(),
            login_user: if known("dovenull") {
                "dovenull"
            } else {
                "nobody"
            }
            .into(),
        })
    } else {
        let me = output("id", &["-un"]).context("id -un")?;
        Ok(DovecotIds {
            uid: output("id", &["-u"]).context("id -u")?,
            gid: output("id", &["-g"]).context("id -g")?,
            internal_user: me.clone(),
            login_user: me,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn dovecot_conf(
    dir: &Path,
    mail: &Path,
    passwd: &Path,
    ids: &DovecotIds,
    plain: u16,
    tls: u16,
    cert: &Path,
    key: &Path,
    cache: bool,
    idle_sessions: usize,
) -> String {
    let (d, m, p) = (dir.display(), mail.display(), passwd.display());
    let (uid, gid) = (&ids.uid, &ids.gid);
    let cache = if cache {
        "auth_cache_size = 10M\nauth_cache_ttl = 1 hour\nauth_cache_negative_ttl = 0\n"
    } else {
        "auth_cache_size = 0\n"
    };
    format!(
        "# Private Dovecot for pop3-bench; tuned mode: pop3 processes reused, long-lived
# high-performance login processes (each serving many connections), limits raised for the
# idle-connection scenario.
default_client_limit = 13000
default_vsz_limit = 1G
base_dir = {d}/run
state_dir = {d}/state
instance_name = pop3-bench-{plain}
log_path = {d}/dovecot.log
protocols = pop3
listen = 127.0.0.1
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
first_valid_gid = {gid}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain
{cache}mail_location = maildir:{m}/%u/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = {p}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={m}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {plain}
  }}
  inet_listener pop3s {{
    port = {tls}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = 6000
  process_limit = 4
}}
service pop3 {{
  service_count = 1000
  client_limit = 1
  process_limit = {pop3_processes}
}}
",
        pop3_processes = idle_sessions + 200,
        internal = ids.internal_user,
        login = ids.login_user,
        cert = cert.display(),
        key = key.display(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn own_cpu_seconds(ticks: f64) -> f64 {
    // Only this process (its threads), not the servers it started.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            let rest = t[t.rfind(')')? + 2..].to_string();
            let f: Vec<u64> = rest
                .split(' ')
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>() as f64 / ticks)
        })
        .unwrap_or(0.0)
}

/// `retr_only`: throughput over the time spent in RETR (scenario 3), not whole sessions.
fn cell(server: &str, reps: Vec<Rep>, unit: Unit, retr_only: bool) -> Cell {
    let m = |f: &dyn Fn(&Rep) -> f64| median(reps.iter().map(f).collect());
    let mib = |r: &Rep| r.run.octets as f64 / MIB;
    let sessions_per_s = m(&|r| r.run.sessions as f64 / r.run.seconds);
    let mib_per_s = m(&|r| {
        mib(r)
            / if retr_only {
                r.run.retr_seconds.max(1e-9)
            } else {
                r.run.seconds
            }
    });
    let errors = reps.iter().map(|r| r.run.errors).sum();
    let per_conn =
        |r: &Rep, base: u64, held: u64| held.saturating_sub(base) as f64 / r.held.max(1) as f64;
    Cell {
        server: server.to_string(),
        valid: errors == 0 && reps.iter().all(|r| !r.run.truncated && r.run.sessions > 0),
        errors,
        first_error: reps.iter().find_map(|r| r.run.first_error.clone()),
        throughput: match unit {
            Unit::Sessions => sessions_per_s,
            Unit::Mib => mib_per_s,
            Unit::Ms | Unit::KibPerConn => m(&|r| r.figure.unwrap_or(f64::NAN)),
        },
        sessions_per_s,
        messages_per_s: m(&|r| r.run.messages as f64 / r.run.seconds),
        mib_per_s,
        p50_ms: m(&|r| r.run.p50_ms),
        p99_ms: m(&|r| r.run.p99_ms),
        server_cpu_ms_per_session: m(&|r| 1000.0 * r.server_cpu_s / r.run.sessions.max(1) as f64),
        server_cpu_ms_per_mib: m(&|r| 1000.0 * r.server_cpu_s / mib(r).max(1e-9)),
        client_cpu_ms_per_session: m(&|r| 1000.0 * r.client_cpu_s / r.run.sessions.max(1) as f64),
        rss_growth_mib: m(&|r| r.rss_peak_kib.saturating_sub(r.rss_base_kib) as f64 / 1024.0),
        rss_peak_mib: m(&|r| r.rss_peak_kib as f64 / 1024.0),
        held: m(&|r| r.held as f64) as usize,
        pss_kib_per_conn: m(&|r| per_conn(r, r.pss_base_kib, r.pss_held_kib)),
        rss_kib_per_conn: m(&|r| per_conn(r, r.rss_base_kib, r.rss_peak_kib)),
        reps,
    }
}

pub fn run(args: SuiteArgs) -> Result<()> {
    let root = workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out_dir = args.out.clone().unwrap_or_else(|| target_dir.join("bench"));
    if !args.no_build {
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .current_dir(&root)
            .args(["build", "--release", "--bin", "pop3d", "--bin", "popadm"])
            // S6 runs pop3d on PostgreSQL too (pure Rust; the same build serves S1 .. S5).
            .args(["--features", "store/postgres"]);
        eprintln!("pop3-bench: building pop3d and popadm (release)");
        check(build, "cargo build --release")?;
    }
    let bins = match std::env::current_exe()?.parent() {
        Some(p) if args.no_build => p.to_path_buf(),
        _ => target_dir.join("release"),
    };
    let (pop3d_bin, popadm_bin) = (bins.join("pop3d"), bins.join("popadm"));

    let sizes = if args.quick {
        Sizes {
            users: 64,
            messages: 20,
            idle_conns: 10_000,
            idle_sessions: 500,
            many: 20_000,
            s1_sessions: 400,
            s1_time: Duration::from_secs(3),
            s2_time: Duration::from_secs(60),
            reps: args.reps.unwrap_or(3),
            s3_reps: args.reps.unwrap_or(3),
        }
    } else {
        Sizes {
            users: 200,
            messages: 100,
            idle_conns: 10_000,
            idle_sessions: 2_000,
            many: 100_000,
            s1_sessions: 3000,
            s1_time: Duration::from_secs(15),
            s2_time: Duration::from_secs(300),
            reps: args.reps.unwrap_or(3),
            s3_reps: args.reps.unwrap_or(5),
        }
    };
    let mut notes = vec![
        "The load generator runs on the same machine and shares its CPUs with the server under \
         test; its CPU time per session is in the JSON (client_cpu_ms_per_session)."
            .to_string(),
        "Every session is checked: UIDL and LIST agree, each RETR's unstuffed size equals LIST, \
         ends with CRLF, and its bytes equal the delivered corpus (by X-Bench-Id and digest)."
            .to_string(),
        "S1 and S2 rates are whole sessions (connect, USER/PASS with an argon2id check, ..., \
         QUIT), so the password hash weighs on both. S3's MiB/s is over the RETR alone (command \
         sent to terminating dot); its CPU per MiB includes the login."
            .to_string(),
        "TLS: implicit TLS (pop3s), full handshake every session (client resumption off), same \
         self-signed ECDSA certificate on both servers."
            .to_string(),
    ];
    let dovecot = match args.against.as_deref() {
        Some("dovecot") => match dovecot_version() {
            Some(v) => Some(v),
            None => {
                let msg = "--against dovecot: dovecot is not installed (cargo xtask deps \
                           --bench installs it); running pop3d alone";
                eprintln!("pop3-bench: {msg}");
                notes.push(msg.to_string());
                None
            }
        },
        _ => None,
    };

    let tmp = std::env::temp_dir().join(format!("pop3-bench-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let result = run_in(
        &args,
        &sizes,
        &tmp,
        &pop3d_bin,
        &popadm_bin,
        dovecot,
        notes,
        &out_dir,
    );
    if args.keep {
        eprintln!("pop3-bench: kept {}", tmp.display());
    } else if let Err(e) = std::fs::remove_dir_all(&tmp) {
        eprintln!("pop3-bench: removing {}: {e}", tmp.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    args: &SuiteArgs,
    sizes: &Sizes,
    tmp: &Path,
    pop3d_bin: &Path,
    popadm_bin: &Path,
    dovecot: Option<String>,
    notes: Vec<String>,
    out_dir: &Path,
) -> Result<()> {
    let load_start = loadavg();
    let mut notes = notes;
    let users: Vec<String> = (0..sizes.users).map(|n| format!("user{n}")).collect();
    let classic = args.classic();
    if classic {
        eprintln!(
            "pop3-bench: corpus: {} users x {} messages (seed {}), one 20 MiB and one 100 MiB \
             message, {} messages for {MANY_USER}, {} idle users",
            sizes.users, sizes.messages, args.seed, sizes.many, sizes.idle_sessions,
        );
    } else {
        eprintln!(
            "pop3-bench: corpus: {} users x {} messages (seed {})",
            sizes.users, sizes.messages, args.seed
        );
    }
    let (expected, corpus_mib) =
        write_corpus(tmp, &users, sizes, args.seed, dovecot.is_some(), classic)?;
    let expected = Arc::new(expected);
    let mut rows = Vec::new();
    if classic {
        rows = classic_rows(
            args,
            sizes,
            tmp,
            (pop3d_bin, popadm_bin),
            dovecot.is_some(),
            &users,
            &expected,
            &mut notes,
        )?;
    }
    if args.wants("S6") {
        let setup = shapes::Setup {
            pop3d: pop3d_bin,
            popadm: popadm_bin,
            tmp,
            users: &users,
            nginx: args.nginx.as_deref().zip(args.nginx_mail_module.as_deref()),
        };
        rows.extend(s6_rows(sizes, &setup, &expected, &mut notes)?);
    }
    notes.push(format!(
        "Load average (1, 5, 15 min) at the start: {load_start}; at the end: {}.",
        loadavg()
    ));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = Report {
        date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        machine: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default(),
        cpus,
        kernel: output("uname", &["-sr"]).unwrap_or_default(),
        pop3d_commit: output(
            "git",
            &[
                "-C",
                &workspace_root().to_string_lossy(),
                "describe",
                "--always",
                "--dirty",
            ],
        )
        .unwrap_or_default(),
        dovecot,
        quick: args.quick,
        users: sizes.users,
        messages_per_user: sizes.messages,
        corpus_mib,
        reps: sizes.reps,
        seed: args.seed,
        notes,
        rows,
    };
    std::fs::create_dir_all(out_dir)?;
    let md = markdown(&report);
    std::fs::write(
        out_dir.join("latest.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("latest.md"), &md)?;
    println!("{md}");
    eprintln!(
        "pop3-bench: wrote {} and {}",
        out_dir.join("latest.json").display(),
        out_dir.join("latest.md").display()
    );
    let invalid: Vec<String> = report
        .rows
        .iter()
        .flat_map(|r| {
            r.cells
                .iter()
                .filter(|c| !c.valid)
                .map(move |c| format!("{} c={} {}", r.id, r.concurrency, c.server))
        })
        .collect();
    if !invalid.is_empty() {
        bail!("failed or incomplete measurements: {}", invalid.join(", "));
    }
    Ok(())
}

/// S1 .. S5: pop3d on its own SQLite store (and Dovecot side by side), the scenarios
/// `args` wants; notes about them go to `notes`.
#[allow(clippy::too_many_arguments)]
fn classic_rows(
    args: &SuiteArgs,
    sizes: &Sizes,
    tmp: &Path,
    (pop3d_bin, popadm_bin): (&Path, &Path),
    against: bool,
    users: &[String],
    expected: &Arc<Expected>,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    let nofile = procs::raise_nofile();
    let needed = sizes.idle_conns as u64 + 1000;
    if nofile < needed {
        bail!(
            "the open-file limit is {nofile} (hard); scenario 4 needs {needed}: raise it \
             (ulimit -Hn) and run again"
        );
    }
    let users = users.to_vec();
    let idle = idle_users(sizes.idle_sessions);
    let data = tmp.join("pop3d-data");
    eprintln!("pop3-bench: provisioning pop3d (argon2id hashes)");
    let t0 = std::time::Instant::now();
    let store = Popadm {
        bin: popadm_bin,
        data: &data,
        store: None,
    };
    provision(&store, tmp, &users, &idle, true)?;
    eprintln!(
        "pop3-bench: provisioned in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let mut endpoints = Vec::new();
    // pop3d without its credential cache (every login runs argon2id, as Dovecot's do; its
    // auth cache keeps the stored hash, not a verified login) ...
    let start_pop3d = |name: &str, cache_ttl: &str| -> Result<Endpoint> {
        let (plain, tls) = (procs::free_port()?, procs::free_port()?);
        let mut cmd = pop3d_command(pop3d_bin, &data, plain, cache_ttl);
        cmd.args(["--listen-tls", &format!("127.0.0.1:{tls}")]);
        let log = tmp.join(format!("{}.log", name.replace('+', "-")));
        let process = ServerProcess::start(name, cmd, &log, plain)?;
        Ok(Endpoint::new(name, plain, tls, process))
    };
    endpoints.push(start_pop3d("pop3d", "0")?);
    let ours = 0;
    let cert = data.join("tls").join("cert.pem");
    let key = data.join("tls").join("key.pem");

    // Dovecot: "dovecot" for every scenario but S1c ("dovecot+cache") and the two phases of S4
    // ("dovecot-idle1", "dovecot-idle2": fresh, so their memory is not what earlier scenarios
    // left and freed).
    let mut theirs = None;
    let mut theirs_cached = None;
    let mut theirs_idle = [None, None];
    if against {
        let ids = dovecot_ids()?;
        let passwd = tmp.join("passwd");
        let mut text = String::new();
        for (user, phc) in stored_hashes(&data)? {
            if !phc.starts_with("$argon2id$") {
                bail!("{user}: stored hash is not argon2id");
            }
            writeln!(text, "{user}:{{ARGON2ID}}{phc}::::::")?;
        }
        std::fs::write(&passwd, text)?;
        let mail = tmp.join("mail");
        check(
            {
                let mut c = Command::new("chown");
                c.arg("-R")
                    .arg(format!("{}:{}", ids.uid, ids.gid))
                    .arg(&mail);
                c
            },
            "chown the Maildirs",
        )?;
        for (name, cache) in [
            ("dovecot", false),
            ("dovecot+cache", true),
            ("dovecot-idle1", false),
            ("dovecot-idle2", false),
        ] {
            let dir = tmp.join(name.replace('+', "-"));
            std::fs::create_dir_all(&dir)?;
            let (plain, tls) = (procs::free_port()?, procs::free_port()?);
            let conf = dir.join("dovecot.conf");
            std::fs::write(
                &conf,
                dovecot_conf(
                    &dir,
                    &mail,
                    &passwd,
                    &ids,
                    plain,
                    tls,
                    &cert,
                    &key,
                    cache,
                    sizes.idle_sessions,
                ),
            )?;
            let mut cmd = Command::new("dovecot");
            cmd.arg("-F").arg("-c").arg(&conf);
            let process = ServerProcess::start(name, cmd, &dir.join("stderr.log"), plain)?;
            let slot = match name {
                "dovecot" => &mut theirs,
                "dovecot+cache" => &mut theirs_cached,
                "dovecot-idle1" => &mut theirs_idle[0],
                _ => &mut theirs_idle[1],
            };
            *slot = Some(endpoints.len());
            endpoints.push(Endpoint::new(name, plain, tls, process));
        }
    }

    // ... and pop3d with it (scenario S1c), on the same data; and a fresh one for each phase
    // of S4.
    endpoints.push(start_pop3d("pop3d+cache", "300")?);
    let ours_cached = endpoints.len() - 1;
    let mut ours_idle = [0; 2];
    for (k, slot) in ours_idle.iter_mut().enumerate() {
        endpoints.push(start_pop3d(&format!("pop3d-idle{}", k + 1), "0")?);
        *slot = endpoints.len() - 1;
    }
    let pair = |a: usize, b: Option<usize>| -> Vec<usize> { std::iter::once(a).chain(b).collect() };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let connector = tls_connector(Some(&cert))?;
    let target = |ep: &Endpoint, transport: Transport| {
        Arc::new(Target {
            host: "127.0.0.1".into(),
            port: if transport == Transport::Implicit {
                ep.tls
            } else {
                ep.plain
            },
            tls: (transport != Transport::Plain).then(|| {
                (
                    connector.clone(),
                    rustls_pki_types::ServerName::try_from("localhost").expect("valid name"),
                )
            }),
            stls: transport == Transport::Stls,
            password: PASSWORD.into(),
        })
    };
    let users = Arc::new(users);
    let bigs: Vec<Arc<Vec<String>>> = BIG
        .iter()
        .map(|(u, _)| Arc::new(vec![u.to_string()]))
        .collect();

    // Warm-up (not measured): every maildrop downloaded once from every server, so Dovecot has
    // built its indexes and both have the mail in the page cache; the large maildrop listed
    // once. The S4 servers only log in a few times (both hashing threads warm).
    for (i, ep) in endpoints.iter().enumerate() {
        let s4 = ours_idle.contains(&i) || theirs_idle.contains(&Some(i));
        eprintln!("pop3-bench: warm-up of {}", ep.name);
        let runs: Vec<(Arc<Vec<String>>, Work, Mode)> = if s4 {
            vec![(
                users.clone(),
                Work::Login,
                Mode::Repeat {
                    sessions: 16,
                    time: sizes.s2_time,
                },
            )]
        } else {
            std::iter::once(users.clone())
                .chain(bigs.iter().filter(|_| args.wants("S3")).cloned())
                .map(|u| {
                    (
                        u,
                        Work::Download,
                        Mode::EachOnce {
                            time: sizes.s2_time,
                        },
                    )
                })
                .collect()
        };
        for (who, work, mode) in runs {
            let r = rt.block_on(load::run(
                target(ep, Transport::Plain),
                who,
                work,
                4,
                mode,
                Some(expected.clone()),
            ))?;
            if r.errors > 0 {
                bail!(
                    "{}: warm-up failed: {}",
                    ep.name,
                    r.first_error.unwrap_or_default()
                );
            }
        }
        if !s4 && i != ours_cached && Some(i) != theirs_cached && args.wants("S5") {
            time_listing(&rt, &target(ep, Transport::Plain), sizes)
                .with_context(|| format!("{}: warm-up listing of {MANY_USER}", ep.name))?;
        }
    }

    let s1 = Mode::Repeat {
        sessions: sizes.s1_sessions,
        time: sizes.s1_time,
    };
    let s2 = Mode::EachOnce {
        time: sizes.s2_time,
    };
    let plain_pair = pair(ours, theirs);
    let mut scenarios = Vec::new();
    let scenario = |id, title: String, work, transport, concurrency, who: &Arc<Vec<String>>| {
        let login = work == Work::Login;
        Scenario {
            id,
            title,
            work,
            transport,
            concurrency,
            users: who.clone(),
            mode: if login { s1 } else { s2 },
            unit: if login { Unit::Sessions } else { Unit::Mib },
            rss: false,
            reps: sizes.reps,
            servers: plain_pair.clone(),
        }
    };
    for c in [1, 16, 64] {
        scenarios.push(scenario(
            "S1",
            "login+STAT+QUIT".into(),
            Work::Login,
            Transport::Plain,
            c,
            &users,
        ));
    }
    scenarios.push(Scenario {
        servers: pair(ours_cached, theirs_cached),
        ..scenario(
            "S1c",
            "login+STAT+QUIT, credential caches on (pop3d's skips argon2id; Dovecot's auth \
             cache still verifies)"
                .into(),
            Work::Login,
            Transport::Plain,
            16,
            &users,
        )
    });
    for c in [1, 16, 64] {
        scenarios.push(scenario(
            "S2",
            format!(
                "download {} users x {} msgs (UIDL, LIST, RETR all, QUIT)",
                sizes.users, sizes.messages
            ),
            Work::Download,
            Transport::Plain,
            c,
            &users,
        ));
    }
    // Pollers log in with the same password every few minutes: the download with both
    // servers' credential caches on (warm since the warm-up) shows the transfer's own cost.
    scenarios.push(Scenario {
        servers: pair(ours_cached, theirs_cached),
        ..scenario(
            "S2c",
            format!(
                "download {} users x {} msgs, credential caches on",
                sizes.users, sizes.messages
            ),
            Work::Download,
            Transport::Plain,
            16,
            &users,
        )
    });
    for ((_, size), who) in BIG.iter().zip(&bigs) {
        scenarios.push(Scenario {
            rss: true,
            reps: sizes.s3_reps,
            ..scenario(
                "S3",
                format!("one {} MiB RETR", size >> 20),
                Work::Download,
                Transport::Plain,
                1,
                who,
            )
        });
    }
    for transport in [Transport::Implicit, Transport::Stls] {
        let (s1_id, s2_id) = if transport == Transport::Implicit {
            ("S1-TLS", "S2-TLS")
        } else {
            ("S1-STLS", "S2-STLS")
        };
        let how = match transport {
            Transport::Implicit => "over implicit TLS",
            _ => "over STLS",
        };
        scenarios.push(scenario(
            s1_id,
            format!("login+STAT+QUIT {how}"),
            Work::Login,
            transport,
            16,
            &users,
        ));
        scenarios.push(scenario(
            s2_id,
            format!("download {how}"),
            Work::Download,
            transport,
            16,
            &users,
        ));
    }

    let ticks = procs::clock_ticks();
    let mut rows = Vec::new();
    for sc in scenarios.iter().filter(|sc| args.wants(sc.id)) {
        rows.push(measure(&rt, sc, &endpoints, &target, expected, ticks)?);
    }

    // S4: idle connections on fresh servers, one run each (a second run would reuse the memory
    // the first one freed and look free); new login+STAT+QUIT sessions while they are held.
    let phases = [
        (
            format!(
                "{} idle connections before login; new login+STAT+QUIT sessions meanwhile",
                sizes.idle_conns
            ),
            Idle::PreLogin(sizes.idle_conns),
            256,
        ),
        (
            format!(
                "{} idle logged-in sessions; new login+STAT+QUIT sessions meanwhile",
                sizes.idle_sessions
            ),
            Idle::LoggedIn(Arc::new(idle.clone())),
            16,
        ),
    ];
    let phases = phases.into_iter().enumerate().filter(|_| args.wants("S4"));
    for (phase, (title, what, parallel)) in phases {
        let mut cells = Vec::new();
        for si in pair(ours_idle[phase], theirs_idle[phase]) {
            let ep = &endpoints[si];
            let rep = hold_idle(
                &rt,
                ep,
                target(ep, Transport::Plain),
                &what,
                parallel,
                users.clone(),
                expected,
                ticks,
            );
            cells.push(cell(&ep.name, vec![rep], Unit::KibPerConn, false));
        }
        rows.push(Row {
            id: "S4",
            title,
            transport: Transport::Plain.label(),
            concurrency: 4,
            unit: Unit::KibPerConn,
            rss: false,
            cells,
        });
    }

    // S5: the large maildrop, PASS to +OK, STAT, UIDL and LIST.
    let mut s5: Vec<Vec<(client::ListingTimes, RunResult, f64)>> =
        plain_pair.iter().map(|_| Vec::new()).collect();
    let s5_reps = if args.wants("S5") { sizes.reps } else { 0 };
    for rep in 0..s5_reps {
        for (k, &si) in plain_pair.iter().enumerate() {
            let ep = &endpoints[si];
            let cpu0 = ep.cpu_seconds(ticks);
            let t = time_listing(&rt, &target(ep, Transport::Plain), sizes);
            let cpu = ep.cpu_seconds(ticks) - cpu0;
            let (times, error) = match t {
                Ok(t) => (t, None),
                Err(e) => (client::ListingTimes::default(), Some(format!("{e:#}"))),
            };
            eprintln!(
                "pop3-bench: S5 {} rep {}: PASS {:.1} ms, STAT {:.1} ms, UIDL {:.1} ms, LIST \
                 {:.1} ms, server CPU {cpu:.2}s{}",
                ep.name,
                rep + 1,
                times.pass_ms,
                times.stat_ms,
                times.uidl_ms,
                times.list_ms,
                error
                    .as_deref()
                    .map(|e| format!(", ERROR: {e}"))
                    .unwrap_or_default()
            );
            let run = RunResult {
                sessions: u64::from(error.is_none()),
                errors: u64::from(error.is_some()),
                first_error: error,
                messages: 0,
                octets: 0,
                seconds: (times.pass_ms + times.stat_ms + times.uidl_ms + times.list_ms) / 1000.0,
                retr_seconds: 0.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                truncated: false,
            };
            s5[k].push((times, run, cpu));
        }
    }
    type Step = fn(&client::ListingTimes) -> f64;
    let steps: [(&str, Step); 4] = [
        ("PASS sent to +OK (lock and list the maildrop)", |t| {
            t.pass_ms
        }),
        ("STAT", |t| t.stat_ms),
        ("UIDL, the whole listing", |t| t.uidl_ms),
        ("LIST, the whole listing", |t| t.list_ms),
    ];
    for (what, step) in steps.into_iter().filter(|_| args.wants("S5")) {
        rows.push(Row {
            id: "S5",
            title: format!("{} messages: {what}", sizes.many),
            transport: Transport::Plain.label(),
            concurrency: 1,
            unit: Unit::Ms,
            rss: false,
            cells: plain_pair
                .iter()
                .zip(&s5)
                .map(|(&si, runs)| {
                    let reps = runs
                        .iter()
                        .map(|(t, run, cpu)| Rep {
                            figure: Some(step(t)),
                            ..Rep::new(run.clone(), *cpu, 0.0)
                        })
                        .collect();
                    cell(&endpoints[si].name, reps, Unit::Ms, false)
                })
                .collect(),
        });
    }

    let peak_hwm = procs::hwm_kib(endpoints[0].pid());
    for ep in &mut endpoints {
        ep.stop();
    }

    notes.push(format!(
        "pop3d's lifetime peak RSS (VmHWM) over the whole run: {:.1} MiB.",
        peak_hwm as f64 / 1024.0
    ));
    if theirs.is_some() {
        notes.push(
            "Dovecot: passwd-file with the same {ARGON2ID} PHC strings pop3d stores; \
             service pop3 { service_count = 1000, client_limit = 1 }, service pop3-login { \
             service_count = 0, process_min_avail = 2, client_limit = 6000 } (the \
             high-performance login mode), default_client_limit = 13000, default_vsz_limit = \
             1G; CPU is summed over the master and all its children \
             (reaped children included through cutime/cstime)."
                .to_string(),
        );
    }
    notes.push(format!(
        "S4 holds {} connections before login and {} logged-in sessions (users idle0.., empty \
         maildrops), each phase on its own fresh server, and runs 60 new login+STAT+QUIT \
         sessions (c=4) while they are held; every held connection must still be open and \
         silent afterwards. S5's maildrop has {} messages of 300-900 octets{}.",
        sizes.idle_conns,
        sizes.idle_sessions,
        sizes.many,
        if args.quick {
            " (--quick; a full run uses 100,000 messages and 2,000 logged-in sessions)"
        } else {
            ""
        }
    ));
    Ok(rows)
}

/// pop3d on `data`, listening on loopback port `plain`, tuned for the benchmark: limits out of
/// the way, no failed-auth delay, its credential cache for `cache_ttl` seconds (0: off).
pub(crate) fn pop3d_command(bin: &Path, data: &Path, plain: u16, cache_ttl: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{plain}")])
        .args(["--log", "warn", "--max-connections", "20000"])
        .args([
            "--max-connections-per-ip",
            "20000",
            "--auth-failure-delay",
            "0",
            "--credential-cache-ttl",
            cache_ttl,
        ]);
    cmd
}

/// S6: the S1 and S2 sessions at c=16 on each cluster shape ([`shapes`]), interleaved.
fn s6_rows(
    sizes: &Sizes,
    setup: &shapes::Setup,
    expected: &Arc<Expected>,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    let Some(mut shapes) = shapes::start(setup)? else {
        let why = "S6 left out: PostgreSQL is not installed (cargo xtask deps installs it)";
        eprintln!("pop3-bench: {why}");
        notes.push(why.into());
        return Ok(Vec::new());
    };
    let measured = s6_measure(sizes, setup.users, &shapes.endpoints, expected);
    // How the work fell on the processes of the shapes with several (the nodes' share shows
    // that the endpoint spread the users).
    let ticks = procs::clock_ticks();
    for ep in shapes.endpoints.iter().filter(|ep| ep.processes.len() > 1) {
        let each: Vec<String> = ep
            .processes
            .iter()
            .map(|p| format!("{} {:.1} s", p.name, procs::cpu_seconds(p.pid(), ticks)))
            .collect();
        notes.push(format!(
            "S6 {}: CPU time of each process over the whole run (warm-up included): {}.",
            ep.name,
            each.join(", ")
        ));
    }
    shapes.stop();
    notes.append(&mut shapes.notes);
    measured
}

fn s6_measure(
    sizes: &Sizes,
    users: &[String],
    endpoints: &[Endpoint],
    expected: &Arc<Expected>,
) -> Result<Vec<Row>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let target = |ep: &Endpoint, _: Transport| {
        Arc::new(Target {
            host: "127.0.0.1".into(),
            port: ep.plain,
            tls: None,
            stls: false,
            password: PASSWORD.into(),
        })
    };
    let users = Arc::new(users.to_vec());
    // Warm-up (not measured): every maildrop downloaded once through every shape.
    for ep in endpoints {
        eprintln!("pop3-bench: warm-up of {}", ep.name);
        let mode = Mode::EachOnce {
            time: sizes.s2_time,
        };
        let r = rt.block_on(load::run(
            target(ep, Transport::Plain),
            users.clone(),
            Work::Download,
            4,
            mode,
            Some(expected.clone()),
        ))?;
        if r.errors > 0 || r.truncated {
            bail!(
                "{}: warm-up failed: {}",
                ep.name,
                r.first_error.unwrap_or_else(|| "cut short".into())
            );
        }
    }
    let servers: Vec<usize> = (0..endpoints.len()).collect();
    let login = Scenario {
        id: "S6",
        title: "login+STAT+QUIT".into(),
        work: Work::Login,
        transport: Transport::Plain,
        concurrency: 16,
        users: users.clone(),
        mode: Mode::Repeat {
            sessions: sizes.s1_sessions,
            time: sizes.s1_time,
        },
        unit: Unit::Sessions,
        rss: false,
        reps: sizes.reps,
        servers,
    };
    let download = Scenario {
        title: format!(
            "download {} users x {} msgs (UIDL, LIST, RETR all, QUIT)",
            sizes.users, sizes.messages
        ),
        work: Work::Download,
        mode: Mode::EachOnce {
            time: sizes.s2_time,
        },
        unit: Unit::Mib,
        ..login.clone()
    };
    let ticks = procs::clock_ticks();
    [login, download]
        .iter()
        .map(|sc| measure(&rt, sc, endpoints, &target, expected, ticks))
        .collect()
}

/// Runs scenario `sc` on each of its servers, interleaved repetition by repetition, and
/// makes its row.
fn measure(
    rt: &tokio::runtime::Runtime,
    sc: &Scenario,
    endpoints: &[Endpoint],
    target: &dyn Fn(&Endpoint, Transport) -> Arc<Target>,
    expected: &Arc<Expected>,
    ticks: f64,
) -> Result<Row> {
    let mut reps: Vec<Vec<Rep>> = sc.servers.iter().map(|_| Vec::new()).collect();
    for rep in 0..sc.reps {
        for (k, &si) in sc.servers.iter().enumerate() {
            let ep = &endpoints[si];
            let pid = ep.pid();
            let base = if sc.rss { procs::rss_kib(pid) } else { 0 };
            let sampler = sc.rss.then(|| RssSampler::start(pid));
            let (cpu0, me0) = (ep.cpu_seconds(ticks), own_cpu_seconds(ticks));
            let run = rt.block_on(load::run(
                target(ep, sc.transport),
                sc.users.clone(),
                sc.work,
                sc.concurrency,
                sc.mode,
                Some(expected.clone()),
            ))?;
            let (cpu1, me1) = (ep.cpu_seconds(ticks), own_cpu_seconds(ticks));
            let peak = sampler.map(RssSampler::finish).unwrap_or(0);
            log_rep(sc.id, sc.concurrency, &ep.name, rep, &run, cpu1 - cpu0);
            reps[k].push(Rep {
                rss_base_kib: base,
                rss_peak_kib: peak,
                ..Rep::new(run, cpu1 - cpu0, me1 - me0)
            });
        }
    }
    Ok(Row {
        id: sc.id,
        title: sc.title.clone(),
        transport: sc.transport.label(),
        concurrency: sc.concurrency,
        unit: sc.unit,
        rss: sc.rss,
        cells: sc
            .servers
            .iter()
            .zip(reps)
            .map(|(&si, r)| cell(&endpoints[si].name, r, sc.unit, sc.rss))
            .collect(),
    })
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// One S5 session on the large maildrop (bounded by the S2 time cap).
fn time_listing(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    sizes: &Sizes,
) -> Result<client::ListingTimes> {
    let listing = client::listing_times(target, MANY_USER, u64::from(sizes.many));
    rt.block_on(async { tokio::time::timeout(sizes.s2_time, listing).await })
        .map_err(|_| anyhow::anyhow!("timed out"))?
}

/// The first three fields of /proc/loadavg (the machine is shared; say how busy it was).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn log_rep(id: &str, c: usize, server: &str, rep: usize, run: &RunResult, cpu: f64) {
    eprintln!(
        "pop3-bench: {id} c={c} {server} rep {}: {} sessions in {:.2}s, {:.1} MiB, p50 {:.1} ms, \
         p99 {:.1} ms, server CPU {cpu:.2}s{}",
        rep + 1,
        run.sessions,
        run.seconds,
        run.octets as f64 / MIB,
        run.p50_ms,
        run.p99_ms,
        match &run.first_error {
            Some(e) => format!(", {} ERRORS, first: {e}", run.errors),
            None => String::new(),
        }
    );
}

/// Scenario 4 on one server: its tree's memory before, `what` opened and held, its memory
/// again (after a short settling time), then new login+STAT+QUIT sessions from `users` while
/// they are held. Every held connection must still be open, and silent, at the end.
#[allow(clippy::too_many_arguments)]
fn hold_idle(
    rt: &tokio::runtime::Runtime,
    ep: &Endpoint,
    target: Arc<Target>,
    what: &Idle,
    parallel: usize,
    users: Arc<Vec<String>>,
    expected: &Arc<Expected>,
    ticks: f64,
) -> Rep {
    let pid = ep.pid();
    let n = what.count();
    let failed = |e: String| RunResult {
        sessions: 0,
        errors: 1,
        first_error: Some(e),
        messages: 0,
        octets: 0,
        seconds: 0.0,
        retr_seconds: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        truncated: false,
    };
    let (pss0, rss0) = (procs::pss_kib(pid), procs::rss_kib(pid));
    let t0 = std::time::Instant::now();
    let opened = rt.block_on(idle::open_all(
        target.clone(),
        what.clone(),
        parallel,
        Duration::from_secs(300),
    ));
    let open_s = t0.elapsed().as_secs_f64();
    let conns = match opened {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pop3-bench: S4 {}: {e:#}", ep.name);
            return Rep::new(failed(format!("{e:#}")), 0.0, 0.0);
        }
    };
    // Let the server finish what opening started (Dovecot forks a pop3 process per session).
    std::thread::sleep(Duration::from_secs(2));
    let (pss1, rss1) = (procs::pss_kib(pid), procs::rss_kib(pid));
    let cpu0 = procs::cpu_seconds(pid, ticks);
    let probe = rt.block_on(load::run(
        target,
        users,
        Work::Login,
        4,
        Mode::Repeat {
            sessions: 60,
            time: Duration::from_secs(10),
        },
        Some(expected.clone()),
    ));
    let cpu = procs::cpu_seconds(pid, ticks) - cpu0;
    // Still open and silent: a read would block (0 = closed by the server, data = a reply
    // nobody asked for).
    let broken = rt.block_on(async move {
        let mut b = [0u8; 64];
        conns
            .iter()
            .filter(|c| !matches!(c.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
            .count()
        // The connections close here, inside the runtime.
    });
    let mut run = match probe {
        Ok(r) => r,
        Err(e) => failed(format!("{e:#}")),
    };
    if broken > 0 {
        run.errors += broken as u64;
        run.first_error
            .get_or_insert_with(|| format!("{broken} of {n} held connections closed or answered"));
    }
    let per_conn = pss1.saturating_sub(pss0) as f64 / n.max(1) as f64;
    eprintln!(
        "pop3-bench: S4 {}: {n} held (opened in {open_s:.1}s): PSS {:.1} -> {:.1} MiB ({per_conn:.1} \
         KiB each), RSS {:.1} -> {:.1} MiB",
        ep.name,
        pss0 as f64 / 1024.0,
        pss1 as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
    );
    log_rep("S4", 4, &ep.name, 0, &run, cpu);
    // The servers close their side before the next phase.
    std::thread::sleep(Duration::from_secs(1));
    Rep {
        rss_base_kib: rss0,
        rss_peak_kib: rss1,
        figure: Some(per_conn),
        held: n,
        pss_base_kib: pss0,
        pss_held_kib: pss1,
        ..Rep::new(run, cpu, 0.0)
    }
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    // S6 compares pop3d with itself in other shapes: a table of its own.
    let classic: Vec<&Row> = r.rows.iter().filter(|row| row.id != "S6").collect();
    let side = classic.iter().any(|row| row.cells.len() > 1);
    let _ = writeln!(
        s,
        "# pop3d benchmark{}\n",
        if side {
            ", side by side with Dovecot"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "{}; {} ({} CPUs), {}; pop3d {}{}; {} users x {} messages ({:.1} MiB), seed {}, median of {} repetitions{}.\n",
        r.date,
        r.machine,
        r.cpus,
        r.kernel,
        r.pop3d_commit,
        r.dovecot.as_ref().map(|v| format!(", Dovecot {v}")).unwrap_or_default(),
        r.users,
        r.messages_per_user,
        r.corpus_mib,
        r.seed,
        r.reps,
        if r.quick { " (--quick)" } else { "" },
    );
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    if classic.is_empty() {
        // Only S6 ran.
    } else if side {
        let _ = writeln!(
            s,
            "ratio is pop3d's advantage: pop3d / Dovecot for rates (sessions/s, MiB/s), Dovecot \
             / pop3d for costs (ms, KiB/conn), so above 1 always means pop3d is better. CPU \
             ratio is pop3d / Dovecot: below 1 means pop3d uses less CPU.\n"
        );
        let _ = writeln!(
            s,
            "| scenario | c | unit | pop3d | Dovecot | ratio | p50 ms pop3d / Dovecot | p99 ms pop3d / Dovecot | server CPU pop3d / Dovecot | CPU ratio |"
        );
        let _ = writeln!(
            s,
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
    } else {
        let _ = writeln!(
            s,
            "| scenario | c | unit | pop3d | p50 ms | p99 ms | server CPU |"
        );
        let _ = writeln!(s, "| --- | ---: | --- | ---: | ---: | ---: | ---: |");
    }
    for row in &classic {
        let per_mib = row.unit == Unit::Mib;
        let cpu_unit = if per_mib { "ms/MiB" } else { "ms/session" };
        let cpu = |c: &Cell| {
            if per_mib {
                c.server_cpu_ms_per_mib
            } else {
                c.server_cpu_ms_per_session
            }
        };
        let lat = |x: f64| if x > 0.0 { fmt_num(x) } else { "-".into() };
        let thr = |c: &Cell| {
            if c.valid {
                fmt_num(c.throughput)
            } else {
                format!("{} (INVALID: {} errors)", fmt_num(c.throughput), c.errors)
            }
        };
        let unit = row.unit.label();
        let name = format!("{} {} ({})", row.id, row.title, row.transport);
        let ours = &row.cells[0];
        match row.cells.get(1) {
            Some(theirs) => {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {unit} | {} | {} | **{}** | {} / {} | {} / {} | {} / {} {cpu_unit} | {} |",
                    row.concurrency,
                    thr(ours),
                    thr(theirs),
                    match (ours.valid && theirs.valid, row.unit.higher_is_better()) {
                        (false, _) => "-".into(),
                        (true, true) => ratio(ours.throughput, theirs.throughput),
                        (true, false) => ratio(theirs.throughput, ours.throughput),
                    },
                    lat(ours.p50_ms),
                    lat(theirs.p50_ms),
                    lat(ours.p99_ms),
                    lat(theirs.p99_ms),
                    fmt_num(cpu(ours)),
                    fmt_num(cpu(theirs)),
                    ratio(cpu(ours), cpu(theirs)),
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {unit} | {} | {} | {} | {} {cpu_unit} |",
                    row.concurrency,
                    thr(ours),
                    lat(ours.p50_ms),
                    lat(ours.p99_ms),
                    fmt_num(cpu(ours)),
                );
            }
        }
    }
    for row in r.rows.iter().filter(|row| row.rss) {
        let _ = writeln!(
            s,
            "\n{} server memory during \"{}\" (RSS of the whole process tree, sampled every 5 \
             ms; median of the repetitions):\n",
            row.id, row.title
        );
        for c in &row.cells {
            let _ = writeln!(
                s,
                "- {}: grew by {:.1} MiB during the transfer (peak {:.1} MiB)",
                c.server, c.rss_growth_mib, c.rss_peak_mib
            );
        }
    }
    let s4: Vec<&Row> = r.rows.iter().filter(|row| row.id == "S4").collect();
    if !s4.is_empty() {
        let _ = writeln!(
            s,
            "\nS4 server memory per held connection (growth of the server's whole process tree \
             while they are held, divided by their number; PSS counts a page shared by k \
             processes 1/k, RSS counts it k times; one run on a fresh server):\n"
        );
        for row in s4 {
            for c in &row.cells {
                let _ = writeln!(
                    s,
                    "- {}, {} held: {:.1} KiB each by PSS, {:.1} KiB by RSS",
                    c.server, c.held, c.pss_kib_per_conn, c.rss_kib_per_conn
                );
            }
        }
    }
    if let Some(row) = r
        .rows
        .iter()
        .find(|row| row.id == "S2" && row.concurrency == 16)
    {
        let _ = writeln!(s, "\nS2 at c=16, messages/s:");
        for c in &row.cells {
            let _ = writeln!(s, "- {}: {:.0} messages/s", c.server, c.messages_per_s);
        }
    }
    shapes_table(&mut s, r);
    let _ = writeln!(s, "\nNotes:\n");
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// S6's rows: each shape's sessions/s, MiB/s, latencies and CPU, and its ratio to the first
/// shape (one node on SQLite) measured in the same run.
fn shapes_table(s: &mut String, r: &Report) {
    let rows: Vec<&Row> = r.rows.iter().filter(|row| row.id == "S6").collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nS6 cluster shapes (plain, c=16, interleaved repetition by repetition; ratio is the \
         shape's sessions/s over one node on SQLite's, so below 1 means slower; server CPU \
         covers every pop3d node, nginx and PostgreSQL):\n"
    );
    let _ = writeln!(
        s,
        "| scenario | shape | sessions/s | ratio | MiB/s | p50 ms | p99 ms | server CPU ms/session |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let base = &row.cells[0];
        for c in &row.cells {
            let ratio = if c.valid && base.valid && base.sessions_per_s > 0.0 {
                format!("**{:.2}x**", c.sessions_per_s / base.sessions_per_s)
            } else {
                "-".into()
            };
            let rate = if c.valid {
                fmt_num(c.sessions_per_s)
            } else {
                format!(
                    "{} (INVALID: {} errors)",
                    fmt_num(c.sessions_per_s),
                    c.errors
                )
            };
            let _ = writeln!(
                s,
                "| S6 {} | {} | {rate} | {ratio} | {} | {} | {} | {} |",
                row.title,
                c.server,
                if row.unit == Unit::Mib {
                    fmt_num(c.mib_per_s)
                } else {
                    "-".into()
                },
                fmt_num(c.p50_ms),
                fmt_num(c.p99_ms),
                fmt_num(c.server_cpu_ms_per_session),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
