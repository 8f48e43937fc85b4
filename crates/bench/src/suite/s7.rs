//! S7: deliveries, in messages per second, two ways side by side on one fresh store: `popadm
//! deliver` (a process per message, as an MTA's pipe transport runs it) and pop3d's LMTP
//! listener (one connection per worker, one transaction per message, as Postfix's `lmtp`
//! client reuses its connections), interleaved repetition by repetition. Every delivery must be
//! acknowledged (exit 0, `250` after the final dot), and at the end each maildrop must hold
//! exactly the messages acknowledged, counted over POP3.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::provision::PASSWORD;
use super::report::{cell, Metrics, Rep, Row, Unit};
use super::{pop3d_command, Sizes};
use crate::load::RunResult;
use crate::procs::{self, ServerProcess};

/// Deliveries run at once, by each method.
const CONCURRENCY: usize = 4;
/// The maildrops the messages go to, in turn.
const USERS: usize = 4;
/// Octets of each message (headers and body).
const MESSAGE_SIZE: usize = 4096;

/// What the two methods share: the binaries, the store, pop3d's LMTP address.
struct Setup<'a> {
    popadm: &'a Path,
    data: &'a Path,
    lmtp: std::net::SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Popadm,
    Lmtp,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Popadm => "popadm deliver",
            Method::Lmtp => "LMTP",
        }
    }
}

/// S7's row.
pub fn rows(
    sizes: &Sizes,
    pop3d: &Path,
    popadm: &Path,
    tmp: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    let data = tmp.join("s7-data");
    std::fs::create_dir_all(&data)?;
    let users: Vec<String> = (0..USERS).map(|i| format!("deliver{i}")).collect();
    for user in &users {
        let mut add = Command::new(popadm);
        add.arg("--data-dir")
            .arg(&data)
            .args(["user", "add", user, "--password-stdin"]);
        feed_ok(add, format!("{PASSWORD}\n").as_bytes(), "popadm user add")?;
    }
    let (plain, lmtp_port) = (procs::free_port()?, procs::free_port()?);
    let mut cmd = pop3d_command(pop3d, &data, plain, "0");
    cmd.args(["--listen-lmtp", &format!("127.0.0.1:{lmtp_port}")]);
    let mut server = ServerProcess::start("pop3d", cmd, &tmp.join("s7-pop3d.log"), plain)?;
    let setup = Setup {
        popadm,
        data: &data,
        lmtp: ([127, 0, 0, 1], lmtp_port).into(),
    };
    // --quick runs 64 users.
    let count = if sizes.users <= 64 { 200 } else { 1000 };
    let ticks = procs::clock_ticks();
    let mut reps: [Vec<Rep>; 2] = [Vec::new(), Vec::new()];
    let mut acked = vec![0u64; USERS];
    for rep in 0..sizes.reps {
        for (i, method) in [Method::Popadm, Method::Lmtp].into_iter().enumerate() {
            eprintln!(
                "pop3-bench: S7 {} rep {}/{}: {count} messages",
                method.name(),
                rep + 1,
                sizes.reps
            );
            let cpu = || match method {
                Method::Popadm => children_cpu_seconds(ticks),
                Method::Lmtp => procs::cpu_seconds(server.pid(), ticks),
            };
            let before = cpu();
            let (run, per_user) = measure(&setup, method, &users, count)?;
            let server_cpu_s = cpu() - before;
            for (a, n) in acked.iter_mut().zip(per_user) {
                *a += n;
            }
            reps[i].push(Rep {
                run,
                server_cpu_s,
                client_cpu_s: None,
                metrics: Metrics::Rates {},
            });
        }
    }
    let stored = stored_counts(plain, &users);
    server.stop();
    let stored = stored?;
    if stored != acked {
        bail!("S7: the maildrops hold {stored:?} messages, {acked:?} deliveries were acknowledged");
    }
    notes.push(format!(
        "S7 delivers {count} messages of {MESSAGE_SIZE} octets per repetition and method, \
         {CONCURRENCY} at once, to {USERS} accounts of a fresh SQLite store: popadm deliver is a \
         process per message (its server CPU is the popadm processes'), LMTP a transaction per \
         message over {CONCURRENCY} connections (pop3d's CPU); each maildrop then holds exactly \
         the messages acknowledged (checked over POP3)."
    ));
    let [by_popadm, by_lmtp] = reps;
    Ok(vec![Row {
        id: "S7",
        title: format!("deliver {MESSAGE_SIZE}-octet messages"),
        transport: "local",
        concurrency: CONCURRENCY,
        unit: Unit::Messages,
        rss: false,
        cells: vec![
            cell(Method::Popadm.name(), by_popadm, Unit::Messages, false),
            cell(Method::Lmtp.name(), by_lmtp, Unit::Messages, false),
        ],
    }])
}

/// Message `n`: a few headers and a body of lines, some starting with a dot (stuffed over
/// LMTP), [`MESSAGE_SIZE`] octets.
fn message(n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: bench@example.net\r\nTo: deliver@example.org\r\nSubject: delivery {n}\r\n\
         Message-Id: <d{n}@bench.invalid>\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0;
    while m.len() < MESSAGE_SIZE {
        let line = if i % 9 == 0 {
            format!(".line {i} of message {n}\r\n")
        } else {
            format!("line {i} of message {n} {}\r\n", "x".repeat(i % 50))
        };
        m.extend_from_slice(line.as_bytes());
        i += 1;
    }
    m.truncate(MESSAGE_SIZE - 2);
    m.extend_from_slice(b"\r\n");
    m
}

/// `count` deliveries by `method`, [`CONCURRENCY`] at once; the run, and how many went to each
/// user.
fn measure(
    setup: &Setup,
    method: Method,
    users: &[String],
    count: usize,
) -> Result<(RunResult, Vec<u64>)> {
    let started = Instant::now();
    let results: Vec<Result<Vec<(usize, Duration)>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|w| {
                scope.spawn(move || {
                    let mine = (w..count).step_by(CONCURRENCY);
                    match method {
                        Method::Popadm => mine
                            .map(|n| {
                                let t = Instant::now();
                                by_popadm(setup, &users[n % USERS], &message(n))?;
                                Ok((n % USERS, t.elapsed()))
                            })
                            .collect(),
                        Method::Lmtp => by_lmtp(setup, users, mine),
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked")))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(count);
    let mut per_user = vec![0u64; USERS];
    let mut first_error = None;
    let mut errors = 0;
    for r in results {
        match r {
            Ok(done) => {
                for (user, latency) in done {
                    per_user[user] += 1;
                    latencies.push(latency.as_micros() as u64);
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1000.0
    };
    let delivered = latencies.len() as u64;
    let run = RunResult {
        sessions: delivered,
        errors: errors + (count as u64).saturating_sub(delivered).min(1),
        first_error,
        messages: delivered,
        octets: delivered * MESSAGE_SIZE as u64,
        seconds,
        retr_seconds: 0.0,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        truncated: false,
    };
    Ok((run, per_user))
}

/// One `popadm deliver -f SENDER USER`, which must exit 0.
fn by_popadm(setup: &Setup, user: &str, message: &[u8]) -> Result<()> {
    let mut cmd = Command::new(setup.popadm);
    cmd.arg("--data-dir")
        .arg(setup.data)
        .args(["deliver", "-f", "bench@example.net", user]);
    feed_ok(cmd, message, "popadm deliver")
}

/// Runs `cmd` with `input` on stdin; it must succeed.
fn feed_ok(mut cmd: Command, input: &[u8], what: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .with_context(|| format!("{what}: stdin"))?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The messages numbered `mine` over one LMTP connection, a transaction each (MAIL, RCPT and
/// DATA pipelined); the user and latency of each.
fn by_lmtp(
    setup: &Setup,
    users: &[String],
    mine: impl Iterator<Item = usize>,
) -> Result<Vec<(usize, Duration)>> {
    let stream = TcpStream::connect(setup.lmtp).context("connecting to LMTP")?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut expect = |want: u16| -> Result<()> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("LMTP: connection closed");
            }
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            if !line.starts_with(&want.to_string()) {
                bail!("LMTP: expected {want}, got {:?}", line.trim_end());
            }
            return Ok(());
        }
    };
    expect(220)?;
    w.write_all(b"LHLO bench\r\n")?;
    expect(250)?;
    let mut done = Vec::new();
    for n in mine {
        let t = Instant::now();
        let user = n % USERS;
        let envelope = format!(
            "MAIL FROM:<bench@example.net> SIZE={MESSAGE_SIZE}\r\nRCPT TO:<{}>\r\nDATA\r\n",
            users[user]
        );
        w.write_all(envelope.as_bytes())?;
        for want in [250, 250, 354] {
            expect(want)?;
        }
        let m = message(n);
        let mut stuffed = Vec::with_capacity(m.len() + 64);
        for (i, &b) in m.iter().enumerate() {
            if b == b'.' && (i == 0 || m[i - 1] == b'\n') {
                stuffed.push(b'.');
            }
            stuffed.push(b);
        }
        stuffed.extend_from_slice(b".\r\n");
        w.write_all(&stuffed)?;
        expect(250)?;
        done.push((user, t.elapsed()));
    }
    w.write_all(b"QUIT\r\n")?;
    expect(221)?;
    Ok(done)
}

/// Each user's message count, by a POP3 STAT.
fn stored_counts(port: u16, users: &[String]) -> Result<Vec<u64>> {
    users
        .iter()
        .map(|user| {
            let stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut w = stream.try_clone()?;
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            let mut cmd = |c: Option<&str>| -> Result<String> {
                if let Some(c) = c {
                    w.write_all(format!("{c}\r\n").as_bytes())?;
                }
                line.clear();
                r.read_line(&mut line)?;
                if !line.starts_with("+OK") {
                    bail!("POP3 {c:?}: {}", line.trim_end());
                }
                Ok(line.clone())
            };
            cmd(None)?;
            cmd(Some(&format!("USER {user}")))?;
            cmd(Some(&format!("PASS {PASSWORD}")))?;
            let stat = cmd(Some("STAT"))?;
            cmd(Some("QUIT"))?;
            stat.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("STAT: {stat:?}"))
        })
        .collect()
}

/// CPU seconds of this process's children that have been waited for (the popadm processes).
fn children_cpu_seconds(ticks: f64) -> f64 {
    let mut stat = String::new();
    let read = std::fs::File::open("/proc/self/stat").and_then(|mut f| f.read_to_string(&mut stat));
    if read.is_err() {
        return 0.0;
    }
    // After the command name in parentheses: field 3 onwards; cutime and cstime are 16 and 17.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(16) + field(17)) as f64 / ticks
}
