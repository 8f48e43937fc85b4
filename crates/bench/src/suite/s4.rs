//! S4: idle connections on fresh servers, one run each (a second run would reuse the memory
//! the first one freed and look free), and new login+STAT+QUIT sessions while they are held.

use std::sync::Arc;
use std::time::Duration;

use super::report::{cell, Metrics, Rep, Row, Unit};
use super::scenarios::{log_rep, Bench, Transport};
use super::servers::{Endpoint, Role, Servers};
use super::Sizes;
use crate::client::Work;
use crate::idle::{self, Idle};
use crate::load::{Mode, RunResult};
use crate::procs;

/// One phase: what is held, and how many connections are opened at a time.
struct Phase {
    title: String,
    what: Idle,
    parallel: usize,
}

/// S4's two rows: connections held before login, then logged-in sessions (of `idle`, users
/// with empty maildrops); each phase on the servers of its own role.
pub fn rows(
    bench: &Bench,
    sizes: &Sizes,
    servers: &Servers,
    users: &Arc<Vec<String>>,
    idle: &[String],
) -> Vec<Row> {
    let phases = [
        Phase {
            title: format!(
                "{} idle connections before login; new login+STAT+QUIT sessions meanwhile",
                sizes.idle_conns
            ),
            what: Idle::PreLogin(sizes.idle_conns),
            parallel: 256,
        },
        Phase {
            title: format!(
                "{} idle logged-in sessions; new login+STAT+QUIT sessions meanwhile",
                sizes.idle_sessions
            ),
            what: Idle::LoggedIn(Arc::new(idle.to_vec())),
            parallel: 16,
        },
    ];
    phases
        .into_iter()
        .enumerate()
        .map(|(k, phase)| {
            let cells = servers
                .each(Role::idle(k))
                .into_iter()
                .map(|ep| {
                    let rep = hold_idle(bench, ep, &phase, users.clone());
                    cell(&ep.name, vec![rep], Unit::KibPerConn, false)
                })
                .collect();
            Row {
                id: "S4",
                title: phase.title,
                transport: Transport::Plain.label(),
                concurrency: 4,
                unit: Unit::KibPerConn,
                rss: false,
                cells,
            }
        })
        .collect()
}

/// A run that did not happen: `e` is why.
fn failed(e: String) -> RunResult {
    RunResult {
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
    }
}

/// Scenario 4 on one server: its tree's memory before, the phase's connections opened and
/// held, its memory again (after a short settling time), then new login+STAT+QUIT sessions
/// from `users` while they are held. Every held connection must still be open, and silent,
/// at the end.
fn hold_idle(bench: &Bench, ep: &Endpoint, phase: &Phase, users: Arc<Vec<String>>) -> Rep {
    let pid = ep.pid();
    let n = phase.what.count();
    let target = bench.target(ep, Transport::Plain);
    let (pss0, rss0) = (procs::pss_kib(pid), procs::rss_kib(pid));
    let t0 = std::time::Instant::now();
    let opened = bench.rt.block_on(idle::open_all(
        target,
        phase.what.clone(),
        phase.parallel,
        Duration::from_secs(300),
    ));
    let open_s = t0.elapsed().as_secs_f64();
    let conns = match opened {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pop3-bench: S4 {}: {e:#}", ep.name);
            return Rep {
                run: failed(format!("{e:#}")),
                server_cpu_s: 0.0,
                client_cpu_s: None,
                metrics: Metrics::Rates {},
            };
        }
    };
    // Let the server finish what opening started (Dovecot forks a pop3 process per session).
    std::thread::sleep(Duration::from_secs(2));
    let (pss1, rss1) = (procs::pss_kib(pid), procs::rss_kib(pid));
    let cpu0 = procs::cpu_seconds(pid, bench.ticks);
    let probe = bench.run(
        ep,
        users,
        Work::Login,
        4,
        Mode::Repeat {
            sessions: 60,
            time: Duration::from_secs(10),
        },
    );
    let cpu = procs::cpu_seconds(pid, bench.ticks) - cpu0;
    // Still open and silent: a read would block (0 = closed by the server, data = a reply
    // nobody asked for).
    let broken = bench.rt.block_on(async move {
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
        run,
        server_cpu_s: cpu,
        // The load generator's CPU is not measured here.
        client_cpu_s: None,
        metrics: Metrics::Held {
            figure: per_conn,
            held: n,
            pss_base_kib: pss0,
            pss_held_kib: pss1,
            rss_base_kib: rss0,
            rss_held_kib: rss1,
        },
    }
}
