//! S5: the large maildrop of small messages: PASS to `+OK` (the server checks the password
//! and locks the maildrop; pop3d counts it from kept totals and lists it at the first command
//! that needs the listing), STAT, UIDL and LIST, each timed on its own; S5c: PASS again on
//! the servers with their credential caches on.

use anyhow::Result;

use super::provision::MANY_USER;
use super::report::{cell, Metrics, Rep, Row, Unit};
use super::scenarios::{Bench, Transport};
use super::servers::{Endpoint, Role, Servers};
use super::Sizes;
use crate::client::{self, ListingTimes};
use crate::load::RunResult;

/// One S5 session on the large maildrop (bounded by the S2 time cap).
pub fn time_listing(bench: &Bench, ep: &Endpoint, sizes: &Sizes) -> Result<ListingTimes> {
    let target = bench.target(ep, Transport::Plain);
    let listing = client::listing_times(&target, MANY_USER, u64::from(sizes.many));
    bench
        .rt
        .block_on(async { tokio::time::timeout(sizes.s2_time, listing).await })
        .map_err(|_| anyhow::anyhow!("timed out"))?
}

/// One timed listing: its times (none when it failed), the session as a run, server CPU.
struct Listing {
    times: Option<ListingTimes>,
    run: RunResult,
    server_cpu_s: f64,
}

/// S5's four rows (one per step), `reps` listings on each plain server, interleaved; then
/// S5c: the same sessions on the servers with their credential caches on (warm from the
/// warm-up, so PASS is a repeat login), whose row is PASS alone.
pub fn rows(bench: &Bench, sizes: &Sizes, servers: &Servers) -> Vec<Row> {
    let mut rows = role_rows(bench, sizes, servers, Role::Plain);
    rows.extend(
        role_rows(bench, sizes, servers, Role::Cached)
            .into_iter()
            .take(1),
    );
    rows
}

fn role_rows(bench: &Bench, sizes: &Sizes, servers: &Servers, role: Role) -> Vec<Row> {
    let eps = servers.each(role);
    let (id, note) = match role {
        Role::Cached => ("S5c", ", credential caches on (a repeat login)"),
        _ => ("S5", ""),
    };
    let mut listings: Vec<Vec<Listing>> = eps.iter().map(|_| Vec::new()).collect();
    for rep in 0..sizes.reps {
        for (k, ep) in eps.iter().enumerate() {
            listings[k].push(listing(bench, ep, sizes, rep));
        }
    }
    type Step = fn(&ListingTimes) -> f64;
    let steps: [(&str, Step); 4] = [
        ("PASS sent to +OK", |t| t.pass_ms),
        ("STAT", |t| t.stat_ms),
        ("UIDL, the whole listing", |t| t.uidl_ms),
        ("LIST, the whole listing", |t| t.list_ms),
    ];
    steps
        .into_iter()
        .map(|(what, step)| Row {
            id,
            title: format!("{} messages: {what}{note}", sizes.many),
            transport: Transport::Plain.label(),
            concurrency: 1,
            unit: Unit::Ms,
            rss: false,
            cells: eps
                .iter()
                .zip(&listings)
                .map(|(ep, runs)| {
                    let reps = runs
                        .iter()
                        .map(|l| Rep {
                            run: l.run.clone(),
                            server_cpu_s: l.server_cpu_s,
                            // The load generator's CPU is not measured here.
                            client_cpu_s: None,
                            metrics: Metrics::Listing {
                                figure: l.times.as_ref().map(step),
                            },
                        })
                        .collect();
                    cell(&ep.name, reps, Unit::Ms, false)
                })
                .collect(),
        })
        .collect()
}

fn listing(bench: &Bench, ep: &Endpoint, sizes: &Sizes, rep: usize) -> Listing {
    let cpu0 = ep.cpu_seconds(bench.ticks);
    let t = time_listing(bench, ep, sizes);
    let cpu = ep.cpu_seconds(bench.ticks) - cpu0;
    let (times, error) = match t {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let shown = times.unwrap_or_default();
    eprintln!(
        "pop3-bench: S5 {} rep {}: PASS {:.1} ms, STAT {:.1} ms, UIDL {:.1} ms, LIST \
         {:.1} ms, server CPU {cpu:.2}s{}",
        ep.name,
        rep + 1,
        shown.pass_ms,
        shown.stat_ms,
        shown.uidl_ms,
        shown.list_ms,
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
        seconds: (shown.pass_ms + shown.stat_ms + shown.uidl_ms + shown.list_ms) / 1000.0,
        retr_seconds: 0.0,
        // Not a latency distribution: the cell leaves p50 and p99 out for S5.
        p50_ms: 0.0,
        p99_ms: 0.0,
        truncated: false,
    };
    Listing {
        times,
        run,
        server_cpu_s: cpu,
    }
}
