//! The rate scenarios and how a scenario is measured: S1 (login), S2 (download), S3 (one
//! large RETR) and their TLS and credential-cache variants, each run on every server of its
//! [`Role`], interleaved repetition by repetition; and the warm-up before them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use tokio_rustls::TlsConnector;

use super::provision::{BIG, MANY_USER, PASSWORD};
use super::report::{cell, Metrics, Rep, Row, Unit, MIB};
use super::servers::{Endpoint, Role, Servers};
use super::{s5, Sizes, SuiteArgs};
use crate::client::{self, Target, Work, TLS_RESUMED};
use crate::corpus::Expected;
use crate::load::{self, Mode, RunResult};
use crate::procs::{self, RssSampler};

/// How a scenario reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    /// POP3S (RFC 8314).
    Implicit,
    /// POP3S with session resumption: each server has a client of its own that keeps the
    /// tickets (or session ids) it was given, kept across repetitions.
    Resumed,
    /// Cleartext port, STLS (RFC 2595), then the session.
    Stls,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Implicit => "implicit TLS",
            Transport::Resumed => "implicit TLS, resumed",
            Transport::Stls => "STLS",
        }
    }
}

#[derive(Clone)]
pub struct Scenario {
    pub id: &'static str,
    pub title: String,
    pub work: Work,
    pub transport: Transport,
    pub concurrency: usize,
    pub users: Arc<Vec<String>>,
    pub mode: Mode,
    pub unit: Unit,
    /// S3: the server's RSS is sampled during the transfer.
    pub rss: bool,
    pub reps: usize,
}

/// What measuring needs: the runtime the load runs on, the corpus every session is checked
/// against, the TLS client, and the clock tick of /proc's CPU times.
pub struct Bench {
    pub rt: tokio::runtime::Runtime,
    pub expected: Arc<Expected>,
    /// For the TLS scenarios (trusting the servers' certificate).
    pub tls: Option<TlsConnector>,
    /// Its configuration, from which each server's resuming client is made.
    tls_config: Option<rustls::ClientConfig>,
    /// The resuming clients, by server name.
    resuming: Mutex<HashMap<String, TlsConnector>>,
    /// What the report should say about the runs (how many handshakes resumed).
    pub notes: Mutex<Vec<String>>,
    pub ticks: f64,
}

impl Bench {
    /// `tls`: the client configuration of the TLS scenarios.
    pub fn new(expected: Arc<Expected>, tls: Option<rustls::ClientConfig>) -> Result<Bench> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        Ok(Bench {
            rt,
            expected,
            tls: tls.clone().map(|c| TlsConnector::from(Arc::new(c))),
            tls_config: tls,
            resuming: Mutex::new(HashMap::new()),
            notes: Mutex::new(Vec::new()),
            ticks: procs::clock_ticks(),
        })
    }

    /// `ep` reached over `transport`, logging in with the suite's password.
    pub fn target(&self, ep: &Endpoint, transport: Transport) -> Arc<Target> {
        let connector = match transport {
            Transport::Plain => None,
            Transport::Implicit | Transport::Stls => self.tls.clone(),
            Transport::Resumed => self.tls_config.as_ref().map(|config| {
                self.resuming
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(ep.name.clone())
                    .or_insert_with(|| client::resuming(config))
                    .clone()
            }),
        };
        Arc::new(Target {
            host: "127.0.0.1".into(),
            port: if matches!(transport, Transport::Implicit | Transport::Resumed) {
                ep.tls
            } else {
                ep.plain
            },
            tls: connector.map(|c| {
                (
                    c,
                    rustls_pki_types::ServerName::try_from("localhost").expect("valid name"),
                )
            }),
            stls: transport == Transport::Stls,
            password: PASSWORD.into(),
        })
    }

    /// A load run against `ep` in plain POP3, checked against the corpus.
    pub fn run(
        &self,
        ep: &Endpoint,
        users: Arc<Vec<String>>,
        work: Work,
        concurrency: usize,
        mode: Mode,
    ) -> Result<RunResult> {
        self.rt.block_on(load::run(
            self.target(ep, Transport::Plain),
            users,
            work,
            concurrency,
            mode,
            Some(self.expected.clone()),
        ))
    }

    /// Runs scenario `sc` on each of `servers`, interleaved repetition by repetition, and
    /// makes its row.
    pub fn measure(&self, sc: &Scenario, servers: &[&Endpoint]) -> Result<Row> {
        let mut reps: Vec<Vec<Rep>> = servers.iter().map(|_| Vec::new()).collect();
        let mut resumed_counts: Vec<Vec<(u64, u64)>> = servers.iter().map(|_| Vec::new()).collect();
        for rep in 0..sc.reps {
            for (k, ep) in servers.iter().enumerate() {
                let pid = ep.pid();
                let base = if sc.rss { procs::rss_kib(pid) } else { 0 };
                let sampler = sc.rss.then(|| RssSampler::start(pid));
                let (cpu0, me0) = (ep.cpu_seconds(self.ticks), own_cpu_seconds());
                let resumed0 = TLS_RESUMED.load(Ordering::Relaxed);
                let run = self.rt.block_on(load::run(
                    self.target(ep, sc.transport),
                    sc.users.clone(),
                    sc.work,
                    sc.concurrency,
                    sc.mode,
                    Some(self.expected.clone()),
                ))?;
                let (cpu1, me1) = (ep.cpu_seconds(self.ticks), own_cpu_seconds());
                let metrics = match sampler {
                    Some(sampler) => Metrics::Transfer {
                        rss_base_kib: base,
                        rss_peak_kib: sampler.finish(),
                    },
                    None => Metrics::Rates {},
                };
                log_rep(sc.id, sc.concurrency, &ep.name, rep, &run, cpu1 - cpu0);
                if sc.transport == Transport::Resumed {
                    let resumed = TLS_RESUMED.load(Ordering::Relaxed) - resumed0;
                    eprintln!(
                        "pop3-bench: {} {} rep {}: {resumed} of {} handshakes resumed",
                        sc.id,
                        ep.name,
                        rep + 1,
                        run.sessions
                    );
                    resumed_counts[k].push((resumed, run.sessions));
                }
                reps[k].push(Rep {
                    run,
                    server_cpu_s: cpu1 - cpu0,
                    client_cpu_s: me0.zip(me1).map(|(a, b)| b - a),
                    metrics,
                });
            }
        }
        if sc.transport == Transport::Resumed {
            let each: Vec<String> = servers
                .iter()
                .zip(&resumed_counts)
                .map(|(ep, counts)| {
                    let (resumed, all) = counts
                        .iter()
                        .fold((0, 0), |(r, a), (r1, a1)| (r + r1, a + a1));
                    format!("{} {resumed} of {all}", ep.name)
                })
                .collect();
            self.notes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!(
                    "{} c={}: TLS handshakes that resumed a session, over all repetitions: {}.",
                    sc.id,
                    sc.concurrency,
                    each.join(", ")
                ));
        }
        Ok(Row {
            id: sc.id,
            title: sc.title.clone(),
            transport: sc.transport.label(),
            concurrency: sc.concurrency,
            unit: sc.unit,
            rss: sc.rss,
            cells: servers
                .iter()
                .zip(reps)
                .map(|(ep, r)| cell(&ep.name, r, sc.unit, sc.rss))
                .collect(),
        })
    }
}

/// This process's CPU seconds (its threads, not the servers it started), to the
/// microsecond (`getrusage`; /proc's clock ticks are 10 ms, a fifth of a 20 MiB RETR's
/// client time); `None` when the kernel does not say.
fn own_cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(usage.user_time()) + secs(usage.system_time()))
}

pub fn log_rep(id: &str, c: usize, server: &str, rep: usize, run: &RunResult, cpu: f64) {
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

/// The users of S3: one per large message.
fn bigs() -> Vec<Arc<Vec<String>>> {
    BIG.iter()
        .map(|(u, _)| Arc::new(vec![u.to_string()]))
        .collect()
}

/// Warm-up (not measured): every maildrop downloaded once from every server, so Dovecot has
/// built its indexes and both have the mail in the page cache; the large maildrop listed
/// once. The S4 servers only log in a few times (both hashing threads warm).
pub fn warm_up(
    bench: &Bench,
    args: &SuiteArgs,
    sizes: &Sizes,
    servers: &Servers,
    users: &Arc<Vec<String>>,
) -> Result<()> {
    let bigs = bigs();
    for role in Role::ALL {
        let s4 = matches!(role, Role::Idle1 | Role::Idle2);
        for ep in servers.each(role) {
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
                let r = bench.run(ep, who, work, 4, mode)?;
                if r.errors > 0 {
                    bail!(
                        "{}: warm-up failed: {}",
                        ep.name,
                        r.first_error.unwrap_or_default()
                    );
                }
            }
            // On the cached instances this also fills the credential caches, so S5c's PASS is
            // a repeat login from its first repetition.
            if matches!(role, Role::Plain | Role::Cached) && args.wants("S5") {
                s5::time_listing(bench, ep, sizes)
                    .with_context(|| format!("{}: warm-up listing of {MANY_USER}", ep.name))?;
            }
        }
    }
    Ok(())
}

/// S1, S1c, S2, S2c, S3 and the TLS variants of S1 and S2, each with the role of the servers
/// it runs on.
pub fn rates(sizes: &Sizes, users: &Arc<Vec<String>>) -> Vec<(Scenario, Role)> {
    let s1 = Mode::Repeat {
        sessions: sizes.s1_sessions,
        time: sizes.s1_time,
    };
    let s2 = Mode::EachOnce {
        time: sizes.s2_time,
    };
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
        }
    };
    // Each family at three concurrencies, then at 16 with the credential caches on: pollers
    // log in with the same password every few minutes, so the download with both servers'
    // caches on (warm since the warm-up) shows the transfer's own cost.
    let families = [
        (
            ("S1", "S1c"),
            Work::Login,
            "login+STAT+QUIT".to_string(),
            "login+STAT+QUIT, credential caches on (pop3d's skips argon2id; Dovecot's auth \
             cache still verifies)"
                .to_string(),
        ),
        (
            ("S2", "S2c"),
            Work::Download,
            format!(
                "download {} users x {} msgs (UIDL, LIST, RETR all, QUIT)",
                sizes.users, sizes.messages
            ),
            format!(
                "download {} users x {} msgs, credential caches on",
                sizes.users, sizes.messages
            ),
        ),
    ];
    let mut scenarios = Vec::new();
    for ((id, cached_id), work, title, cached_title) in families {
        for c in [1, 16, 64] {
            let sc = scenario(id, title.clone(), work, Transport::Plain, c, users);
            scenarios.push((sc, Role::Plain));
        }
        let sc = scenario(cached_id, cached_title, work, Transport::Plain, 16, users);
        scenarios.push((sc, Role::Cached));
    }
    for ((_, size), who) in BIG.iter().zip(&bigs()) {
        let sc = Scenario {
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
        };
        scenarios.push((sc, Role::Plain));
    }
    // The TLS rows run with pop3d's default settings, its credential cache on (against
    // Dovecot with its auth cache on): what TLS itself costs, not argon2id again. S1-TLS-resume
    // is S1-TLS with each server's own resuming client, next to it.
    for (transport, ids, how) in [
        (
            Transport::Implicit,
            ("S1-TLS", "S2-TLS"),
            "over implicit TLS",
        ),
        (Transport::Stls, ("S1-STLS", "S2-STLS"), "over STLS"),
    ] {
        let login = scenario(
            ids.0,
            format!("login+STAT+QUIT {how}, credential caches on"),
            Work::Login,
            transport,
            16,
            users,
        );
        scenarios.push((login, Role::Cached));
        if transport == Transport::Implicit {
            let resumed = scenario(
                "S1-TLS-resume",
                format!("login+STAT+QUIT {how}, sessions resumed, credential caches on"),
                Work::Login,
                Transport::Resumed,
                16,
                users,
            );
            scenarios.push((resumed, Role::Cached));
        }
        let download = scenario(
            ids.1,
            format!("download {how}, credential caches on"),
            Work::Download,
            transport,
            16,
            users,
        );
        scenarios.push((download, Role::Cached));
    }
    scenarios
}
