//! The benchmark suite behind `cargo xtask bench`: builds the release binaries, provisions a
//! temporary pop3d store (and, with `--against dovecot`, a private Dovecot with the same
//! messages and the same argon2id hashes), runs every scenario against every server in one run,
//! interleaved repetition by repetition, and writes `target/bench/latest.{json,md,svg}`.
//!
//! The parts: `provision` (corpus and accounts), `dovecot`, `servers` (every server held by
//! name and role), `scenarios` (S1 .. S3 and how a scenario is measured), `s4`, `s5`, `s6`,
//! `s7` (deliveries: `popadm deliver` and LMTP), `report` (one metrics type per scenario,
//! medians, JSON and markdown) and `chart` (the ratios as `latest.svg`). This file runs them in
//! order.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::client::tls_config;
use crate::corpus::Expected;
use crate::procs::{self, ServerProcess};
use crate::shapes;
use provision::{idle_users, write_corpus, MANY_USER};
use report::{markdown, Report, Row};
use servers::{Lineup, Role, Server, Servers};

mod chart;
mod dovecot;
mod provision;
mod report;
mod s4;
mod s5;
mod s6;
mod s7;
mod scenarios;
mod servers;

pub use dovecot::deps;
pub use provision::{provision, Popadm};
pub use servers::Endpoint;

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
    /// Run only these scenarios: S1 .. S7 (S1 takes in S1c, S1-TLS, S1-TLS-resume and
    /// S1-STLS, and so on) or single rows (S1c, S2c, S1-TLS, S1-TLS-resume, S2-TLS, S1-STLS,
    /// S2-STLS); repeat or separate by commas. Default: all.
    #[arg(long, value_name = "ID", value_delimiter = ',', value_parser = only_id)]
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

/// What `--only` takes: a family (`S1`) or one of the rows named after it.
const ONLY: [&str; 14] = [
    "S1",
    "S2",
    "S3",
    "S4",
    "S5",
    "S6",
    "S7",
    "S1c",
    "S2c",
    "S1-TLS",
    "S1-TLS-resume",
    "S2-TLS",
    "S1-STLS",
    "S2-STLS",
];

fn only_id(id: &str) -> Result<String, String> {
    match ONLY.iter().find(|o| o.eq_ignore_ascii_case(id)) {
        Some(o) => Ok((*o).to_string()),
        None => Err(format!("one of {}", ONLY.join(", "))),
    }
}

/// A scenario's family: `S1` for `S1`, `S1c` and `S1-TLS`.
fn family(id: &str) -> &str {
    id.split(|c: char| c == '-' || c.is_ascii_lowercase())
        .next()
        .unwrap_or(id)
}

impl SuiteArgs {
    /// Whether scenario `id` is to run: `--only` names it or its family (`S1` for `S1c`).
    pub fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == id || o == family(id))
    }

    /// Whether any of S1 .. S5 (the scenarios on pop3d's own store, and Dovecot's) runs.
    fn classic(&self) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|o| ["S1", "S2", "S3", "S4", "S5"].contains(&family(o)))
    }
}

pub struct Sizes {
    pub users: usize,
    pub messages: u32,
    /// Scenario 4: idle connections before login, and idle logged-in sessions.
    pub idle_conns: usize,
    pub idle_sessions: usize,
    /// Scenario 5: messages in the large maildrop.
    pub many: u32,
    pub s1_sessions: u64,
    pub s1_time: Duration,
    pub s2_time: Duration,
    pub reps: usize,
    pub s3_reps: usize,
}

impl Sizes {
    fn new(args: &SuiteArgs) -> Sizes {
        if args.quick {
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
        }
    }
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

/// What every part of a run shares: its arguments and sizes, where it works, the binaries.
struct Suite<'a> {
    args: &'a SuiteArgs,
    sizes: Sizes,
    tmp: PathBuf,
    pop3d: PathBuf,
    popadm: PathBuf,
    out_dir: PathBuf,
}

/// The corpus every session is checked against, and its users.
struct Corpus {
    users: Arc<Vec<String>>,
    expected: Arc<Expected>,
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

    let sizes = Sizes::new(&args);
    let mut notes = vec![
        "The load generator runs on the same machine and shares its CPUs with the server under \
         test; its CPU time per session is in the JSON (client_cpu_ms_per_session) and the \
         table (client CPU), absent (-) where it is not measured (S4, S5)."
            .to_string(),
        "Every session is checked: UIDL and LIST agree, each RETR's unstuffed size equals LIST, \
         ends with CRLF, and its bytes equal the delivered corpus (by X-Bench-Id and digest)."
            .to_string(),
        "S1 and S2 rates are whole sessions (connect, USER/PASS with an argon2id check, ..., \
         QUIT), so the password hash weighs on both. S3's MiB/s is over the RETR alone (command \
         sent to terminating dot); its CPU per MiB includes the login."
            .to_string(),
        "TLS: the same self-signed ECDSA certificate on both servers; the TLS rows run on the \
         instances with the credential caches on (pop3d's default, --credential-cache-ttl 300; \
         Dovecot's auth cache, which still runs argon2id), so they show what TLS costs. S1-TLS, \
         S2-TLS, S1-STLS and S2-STLS make a full handshake every session (client resumption \
         off); S1-TLS-resume gives each server a client of its own that resumes sessions \
         (tickets), kept across repetitions."
            .to_string(),
    ];
    let dovecot = match args.against.as_deref() {
        Some("dovecot") => match dovecot::dovecot_version() {
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
    let suite = Suite {
        args: &args,
        sizes,
        tmp: tmp.clone(),
        pop3d: pop3d_bin,
        popadm: popadm_bin,
        out_dir,
    };
    let result = run_in(&suite, dovecot, notes);
    if args.keep {
        eprintln!("pop3-bench: kept {}", tmp.display());
    } else if let Err(e) = std::fs::remove_dir_all(&tmp) {
        eprintln!("pop3-bench: removing {}: {e}", tmp.display());
    }
    result
}

/// Writes the corpus, runs the scenarios `args` wants, and writes the report.
fn run_in(suite: &Suite, dovecot: Option<String>, mut notes: Vec<String>) -> Result<()> {
    let (args, sizes, tmp) = (suite.args, &suite.sizes, suite.tmp.as_path());
    let load_start = loadavg();
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
    let corpus = Corpus {
        users: Arc::new(users),
        expected: Arc::new(expected),
    };
    let mut rows = Vec::new();
    if classic {
        rows = classic_rows(suite, &corpus, dovecot.is_some(), &mut notes)?;
    }
    if args.wants("S6") {
        let setup = shapes::Setup {
            pop3d: &suite.pop3d,
            popadm: &suite.popadm,
            tmp,
            users: &corpus.users,
            nginx: args.nginx.as_deref().zip(args.nginx_mail_module.as_deref()),
        };
        rows.extend(s6::rows(sizes, &setup, &corpus.expected, &mut notes)?);
    }
    if args.wants("S7") {
        rows.extend(s7::rows(
            sizes,
            &suite.pop3d,
            &suite.popadm,
            tmp,
            &mut notes,
        )?);
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
    let out_dir = &suite.out_dir;
    std::fs::create_dir_all(out_dir)?;
    let md = markdown(&report);
    std::fs::write(
        out_dir.join("latest.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("latest.md"), &md)?;
    let caption = format!(
        "pop3d's ratios, {}{} (S6: each shape / one node on SQLite)",
        report.date,
        if report.quick { ", --quick" } else { "" }
    );
    let svg = chart::svg(&chart::bars(&report), &caption)
        .map_err(|e| anyhow::anyhow!("drawing latest.svg: {e}"))?;
    std::fs::write(out_dir.join("latest.svg"), svg)?;
    println!("{md}");
    eprintln!(
        "pop3-bench: wrote {}, {} and {}",
        out_dir.join("latest.json").display(),
        out_dir.join("latest.md").display(),
        out_dir.join("latest.svg").display()
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

/// S1 .. S5: pop3d on its own SQLite store (and Dovecot side by side, `against`), the
/// scenarios `args` wants; notes about them go to `notes`.
fn classic_rows(
    suite: &Suite,
    corpus: &Corpus,
    against: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    let (args, sizes, tmp) = (suite.args, &suite.sizes, suite.tmp.as_path());
    let nofile = procs::raise_nofile();
    let needed = sizes.idle_conns as u64 + 1000;
    if nofile < needed {
        bail!(
            "the open-file limit is {nofile} (hard); scenario 4 needs {needed}: raise it \
             (ulimit -Hn) and run again"
        );
    }
    let idle = idle_users(sizes.idle_sessions);
    let data = tmp.join("pop3d-data");
    eprintln!("pop3-bench: provisioning pop3d (argon2id hashes)");
    let t0 = std::time::Instant::now();
    let store = Popadm {
        bin: &suite.popadm,
        data: &data,
        store: None,
    };
    provision(&store, tmp, &corpus.users, &idle, true)?;
    eprintln!(
        "pop3-bench: provisioned in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let cert = data.join("tls").join("cert.pem");
    let key = data.join("tls").join("key.pem");
    // pop3d first: it makes the certificate Dovecot is given too.
    let mut servers = Servers {
        pop3d: pop3d_lineup(suite, &data)?,
        dovecot: None,
    };
    if against {
        servers.dovecot = Some(dovecot::start(&dovecot::Setup {
            tmp,
            data: &data,
            cert: &cert,
            key: &key,
            idle_sessions: sizes.idle_sessions,
        })?);
    }
    let bench = scenarios::Bench::new(corpus.expected.clone(), Some(tls_config(Some(&cert))?))?;
    scenarios::warm_up(&bench, args, sizes, &servers, &corpus.users)?;
    let mut rows = Vec::new();
    for (sc, role) in scenarios::rates(sizes, &corpus.users) {
        if args.wants(sc.id) {
            rows.push(bench.measure(&sc, &servers.each(role))?);
        }
    }
    if args.wants("S4") {
        rows.extend(s4::rows(&bench, sizes, &servers, &corpus.users, &idle));
    }
    if args.wants("S5") {
        rows.extend(s5::rows(&bench, sizes, &servers));
    }
    notes.append(
        &mut bench
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let peak_hwm = procs::hwm_kib(servers.pop3d.plain.pid());
    servers.stop();

    notes.push(match peak_hwm {
        Some(kib) => format!(
            "pop3d's lifetime peak RSS (VmHWM) over the whole run: {:.1} MiB.",
            kib as f64 / 1024.0
        ),
        None => "pop3d's lifetime peak RSS (VmHWM) could not be read.".into(),
    });
    if servers.dovecot.is_some() {
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

/// pop3d's instances, all on the store in `data`: without its credential cache (every login
/// runs argon2id, as Dovecot's do; its auth cache keeps the stored hash, not a verified
/// login), with it (S1c, S2c), and a fresh one for each phase of S4.
fn pop3d_lineup(suite: &Suite, data: &Path) -> Result<Lineup> {
    let start = |role: Role| -> Result<Endpoint> {
        let name = role.name(Server::Pop3d);
        let cache_ttl = if role == Role::Cached { "300" } else { "0" };
        let (plain, tls) = (procs::free_port()?, procs::free_port()?);
        let mut cmd = pop3d_command(&suite.pop3d, data, plain, cache_ttl);
        cmd.args(["--listen-tls", &format!("127.0.0.1:{tls}")]);
        let log = suite.tmp.join(format!("{}.log", name.replace('+', "-")));
        let process = ServerProcess::start(&name, cmd, &log, plain)?;
        Ok(Endpoint::new(&name, plain, tls, process))
    };
    Ok(Lineup {
        plain: start(Role::Plain)?,
        cached: start(Role::Cached)?,
        idle: [start(Role::Idle1)?, start(Role::Idle2)?],
    })
}

/// The first three fields of /proc/loadavg (the machine is shared; say how busy it was).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::SuiteArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        suite: SuiteArgs,
    }

    fn only(arg: &str) -> SuiteArgs {
        Cli::try_parse_from(["suite", "--only", arg])
            .expect("parses")
            .suite
    }

    #[test]
    fn only_takes_families_and_single_rows() {
        let family = only("S1");
        assert!(["S1", "S1c", "S1-TLS", "S1-TLS-resume", "S1-STLS"]
            .iter()
            .all(|id| family.wants(id)));
        assert!(!family.wants("S2-TLS") && family.classic());
        let rows = only("S1-TLS,s2-stls,S1-TLS-resume");
        assert!(rows.wants("S1-TLS") && rows.wants("S2-STLS") && rows.wants("S1-TLS-resume"));
        assert!(!rows.wants("S1") && !rows.wants("S1c") && !rows.wants("S2-TLS"));
        assert!(!rows.wants("S3") && !rows.wants("S5") && rows.classic());
        assert!(!only("S6").classic());
        assert!(Cli::try_parse_from(["suite", "--only", "S1-TLSX"]).is_err());
    }
}
