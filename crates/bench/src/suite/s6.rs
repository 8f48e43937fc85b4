//! S6: the S1 and S2 sessions at c=16 on each cluster shape ([`shapes`]), interleaved.

use std::sync::Arc;

use anyhow::{bail, Result};

use super::report::{Row, Unit};
use super::scenarios::{Bench, Scenario, Transport};
use super::servers::Endpoint;
use super::Sizes;
use crate::client::Work;
use crate::corpus::Expected;
use crate::load::Mode;
use crate::procs;
use crate::shapes;

/// S6's rows; `None` rows (and a note why) without PostgreSQL.
pub fn rows(
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
    let bench = Bench::new(expected.clone(), None)?;
    let measured = measure(&bench, sizes, setup.users, &shapes.endpoints);
    // How the work fell on the processes of the shapes with several (the nodes' share shows
    // that the endpoint spread the users).
    for ep in shapes.endpoints.iter().filter(|ep| ep.processes.len() > 1) {
        let each: Vec<String> = ep
            .processes
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1} s",
                    p.name,
                    procs::cpu_seconds(p.pid(), bench.ticks)
                )
            })
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

fn measure(
    bench: &Bench,
    sizes: &Sizes,
    users: &[String],
    endpoints: &[Endpoint],
) -> Result<Vec<Row>> {
    let users = Arc::new(users.to_vec());
    // Warm-up (not measured): every maildrop downloaded once through every shape.
    for ep in endpoints {
        eprintln!("pop3-bench: warm-up of {}", ep.name);
        let mode = Mode::EachOnce {
            time: sizes.s2_time,
        };
        let r = bench.run(ep, users.clone(), Work::Download, 4, mode)?;
        if r.errors > 0 || r.truncated {
            bail!(
                "{}: warm-up failed: {}",
                ep.name,
                r.first_error.unwrap_or_else(|| "cut short".into())
            );
        }
    }
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
    let servers: Vec<&Endpoint> = endpoints.iter().collect();
    [login, download]
        .iter()
        .map(|sc| bench.measure(sc, &servers))
        .collect()
}
