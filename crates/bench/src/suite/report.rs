//! What the suite measured and how it is reported: one repetition ([`Rep`], with the metrics
//! type of its scenario), the medians per server ([`Cell`]), one row per scenario, and the
//! report written as `latest.json` and `latest.md`.
//!
//! A figure that was not measured is absent (`None`: left out of the JSON, `-` in the
//! markdown), never a zero that reads like a measurement.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::RunResult;

pub const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub enum Unit {
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
    /// Deliveries (S7).
    #[serde(rename = "messages/s")]
    Messages,
}

impl Unit {
    fn higher_is_better(self) -> bool {
        matches!(self, Unit::Sessions | Unit::Mib | Unit::Messages)
    }

    fn label(self) -> &'static str {
        match self {
            Unit::Sessions => "sessions/s",
            Unit::Mib => "MiB/s",
            Unit::Ms => "ms",
            Unit::KibPerConn => "KiB/conn",
            Unit::Messages => "messages/s",
        }
    }
}

/// One repetition of a scenario on one server.
#[derive(Debug, Serialize)]
pub struct Rep {
    pub run: RunResult,
    pub server_cpu_s: f64,
    /// The load generator's own CPU time over the run; absent where it was not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_s: Option<f64>,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// What a scenario measures beyond the run's sessions, octets and latencies: one type per
/// scenario.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Metrics {
    /// S1, S2 and S6: the run's rates are the figures.
    Rates {},
    /// S3: the server tree's resident memory before and at its peak during the transfer.
    Transfer {
        rss_base_kib: u64,
        rss_peak_kib: u64,
    },
    /// S4: connections held, and the server tree's memory before and while holding them;
    /// `figure` is PSS growth per connection (KiB).
    Held {
        figure: f64,
        held: usize,
        pss_base_kib: u64,
        pss_held_kib: u64,
        rss_base_kib: u64,
        rss_held_kib: u64,
    },
    /// S5: one step of the listing of the large maildrop; `figure` is its time in ms, absent
    /// when the listing failed.
    Listing {
        #[serde(skip_serializing_if = "Option::is_none")]
        figure: Option<f64>,
    },
}

impl Metrics {
    /// The row's figure where it is not a rate.
    fn figure(&self) -> Option<f64> {
        match self {
            Metrics::Held { figure, .. } => Some(*figure),
            Metrics::Listing { figure } => *figure,
            Metrics::Rates {} | Metrics::Transfer { .. } => None,
        }
    }
}

/// S3's memory figures of a cell (medians, MiB).
#[derive(Debug, Serialize)]
pub struct TransferCell {
    pub rss_growth_mib: f64,
    pub rss_peak_mib: f64,
}

/// S4's memory figures of a cell: median connections held, and PSS and RSS growth per
/// connection (KiB).
#[derive(Debug, Serialize)]
pub struct HeldCell {
    pub held: usize,
    pub pss_kib_per_conn: f64,
    pub rss_kib_per_conn: f64,
}

#[derive(Debug, Serialize)]
pub struct Cell {
    pub server: String,
    pub valid: bool,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Medians over the repetitions.
    pub throughput: f64,
    pub sessions_per_s: f64,
    pub messages_per_s: f64,
    pub mib_per_s: f64,
    /// Session latencies; absent where sessions were not timed as a whole (S5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    pub server_cpu_ms_per_session: f64,
    pub server_cpu_ms_per_mib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_ms_per_session: Option<f64>,
    /// The load generator's CPU per MiB received (its unstuffing and checking, login
    /// included), beside the server's; absent where not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_ms_per_mib: Option<f64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferCell>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub idle: Option<HeldCell>,
    pub reps: Vec<Rep>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub id: &'static str,
    pub title: String,
    pub transport: &'static str,
    pub concurrency: usize,
    pub unit: Unit,
    /// S3: the server's RSS is sampled during the transfer.
    pub rss: bool,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub cpus: usize,
    pub kernel: String,
    pub pop3d_commit: String,
    pub dovecot: Option<String>,
    pub quick: bool,
    pub users: usize,
    pub messages_per_user: u32,
    pub corpus_mib: f64,
    pub reps: usize,
    pub seed: u64,
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
}

pub fn median(mut v: Vec<f64>) -> f64 {
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

/// The median of the values that are there; `None` when none is.
fn median_of_present(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = v.flatten().collect();
    (!present.is_empty()).then(|| median(present))
}

/// The medians of `reps` on `server`. `retr_only`: throughput over the time spent in RETR
/// (scenario 3), not whole sessions.
pub fn cell(server: &str, reps: Vec<Rep>, unit: Unit, retr_only: bool) -> Cell {
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
    let timed = !reps
        .iter()
        .any(|r| matches!(r.metrics, Metrics::Listing { .. }));
    let latency = |f: fn(&RunResult) -> f64| timed.then(|| m(&|r| f(&r.run)));
    let transfer = reps
        .iter()
        .any(|r| matches!(r.metrics, Metrics::Transfer { .. }))
        .then(|| {
            let memory = |r: &Rep| match r.metrics {
                Metrics::Transfer {
                    rss_base_kib,
                    rss_peak_kib,
                } => (rss_base_kib, rss_peak_kib),
                _ => (0, 0),
            };
            TransferCell {
                rss_growth_mib: m(&|r| {
                    let (base, peak) = memory(r);
                    peak.saturating_sub(base) as f64 / 1024.0
                }),
                rss_peak_mib: m(&|r| memory(r).1 as f64 / 1024.0),
            }
        });
    let held: Vec<(usize, f64, f64)> = reps
        .iter()
        .filter_map(|r| match r.metrics {
            Metrics::Held {
                held,
                pss_base_kib,
                pss_held_kib,
                rss_base_kib,
                rss_held_kib,
                ..
            } => {
                let per_conn =
                    |base: u64, now: u64| now.saturating_sub(base) as f64 / held.max(1) as f64;
                Some((
                    held,
                    per_conn(pss_base_kib, pss_held_kib),
                    per_conn(rss_base_kib, rss_held_kib),
                ))
            }
            _ => None,
        })
        .collect();
    let idle = (!held.is_empty()).then(|| HeldCell {
        held: median(held.iter().map(|h| h.0 as f64).collect()) as usize,
        pss_kib_per_conn: median(held.iter().map(|h| h.1).collect()),
        rss_kib_per_conn: median(held.iter().map(|h| h.2).collect()),
    });
    Cell {
        server: server.to_string(),
        valid: errors == 0 && reps.iter().all(|r| !r.run.truncated && r.run.sessions > 0),
        errors,
        first_error: reps.iter().find_map(|r| r.run.first_error.clone()),
        throughput: match unit {
            Unit::Sessions => sessions_per_s,
            Unit::Mib => mib_per_s,
            Unit::Messages => m(&|r| r.run.messages as f64 / r.run.seconds),
            Unit::Ms | Unit::KibPerConn => m(&|r| r.metrics.figure().unwrap_or(f64::NAN)),
        },
        sessions_per_s,
        messages_per_s: m(&|r| r.run.messages as f64 / r.run.seconds),
        mib_per_s,
        p50_ms: latency(|r| r.p50_ms),
        p99_ms: latency(|r| r.p99_ms),
        server_cpu_ms_per_session: m(&|r| 1000.0 * r.server_cpu_s / r.run.sessions.max(1) as f64),
        server_cpu_ms_per_mib: m(&|r| 1000.0 * r.server_cpu_s / mib(r).max(1e-9)),
        client_cpu_ms_per_session: median_of_present(reps.iter().map(|r| {
            r.client_cpu_s
                .map(|cpu| 1000.0 * cpu / r.run.sessions.max(1) as f64)
        })),
        client_cpu_ms_per_mib: median_of_present(reps.iter().map(|r| {
            r.client_cpu_s
                .filter(|_| r.run.octets > 0)
                .map(|cpu| 1000.0 * cpu / mib(r))
        })),
        transfer,
        idle,
        reps,
    }
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

/// A latency, or `-` where there is none.
fn lat(x: Option<f64>) -> String {
    match x {
        Some(x) if x > 0.0 => fmt_num(x),
        _ => "-".into(),
    }
}

impl Row {
    /// pop3d's advantage over the second server of the row (Dovecot): pop3d / Dovecot for
    /// rates, Dovecot / pop3d for costs, so above 1 means pop3d is better. `None` without a
    /// second server, with an invalid cell or a zero to divide by.
    pub fn advantage(&self) -> Option<f64> {
        let (ours, theirs) = (self.cells.first()?, self.cells.get(1)?);
        if !(ours.valid && theirs.valid) {
            return None;
        }
        let (a, b) = if self.unit.higher_is_better() {
            (ours.throughput, theirs.throughput)
        } else {
            (theirs.throughput, ours.throughput)
        };
        (b > 0.0).then(|| a / b)
    }

    /// S6: cell `i`'s sessions/s over the first cell's (one node on SQLite), where both are
    /// valid.
    pub fn shape_ratio(&self, i: usize) -> Option<f64> {
        let (base, c) = (self.cells.first()?, self.cells.get(i)?);
        (c.valid && base.valid && base.sessions_per_s > 0.0)
            .then(|| c.sessions_per_s / base.sessions_per_s)
    }
}

/// A report of `rows` with placeholder facts, for tests.
#[cfg(test)]
pub fn report_of(rows: Vec<Row>) -> Report {
    Report {
        date: String::new(),
        machine: String::new(),
        cpus: 1,
        kernel: String::new(),
        pop3d_commit: String::new(),
        dovecot: None,
        quick: true,
        users: 1,
        messages_per_user: 1,
        corpus_mib: 0.0,
        reps: 1,
        seed: 1,
        notes: Vec::new(),
        rows,
    }
}

/// A figure that may be absent: `-` then.
fn maybe(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), fmt_num)
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    // S6 compares pop3d with itself in other shapes, S7 two ways of delivering: tables of
    // their own.
    let classic: Vec<&Row> = r
        .rows
        .iter()
        .filter(|row| row.id != "S6" && row.id != "S7")
        .collect();
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
             ratio is pop3d / Dovecot: below 1 means pop3d uses less CPU. Client CPU is the \
             load generator's (per MiB in the MiB/s rows, as the server's), - where it was not \
             measured.\n"
        );
        let _ = writeln!(
            s,
            "| scenario | c | unit | pop3d | Dovecot | ratio | p50 ms pop3d / Dovecot | p99 ms pop3d / Dovecot | server CPU pop3d / Dovecot | CPU ratio | client CPU ms/session (ms/MiB in MiB/s rows) |"
        );
        let _ = writeln!(
            s,
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
    } else {
        let _ = writeln!(
            s,
            "| scenario | c | unit | pop3d | p50 ms | p99 ms | server CPU | client CPU ms/session (ms/MiB in MiB/s rows) |"
        );
        let _ = writeln!(s, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
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
        // The load generator's CPU on the same basis as the server's.
        let client = |c: &Cell| {
            if per_mib {
                c.client_cpu_ms_per_mib
                    .map_or_else(|| "-".into(), |x| format!("{} ms/MiB", fmt_num(x)))
            } else {
                maybe(c.client_cpu_ms_per_session)
            }
        };
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
                    "| {name} | {} | {unit} | {} | {} | **{}** | {} / {} | {} / {} | {} / {} {cpu_unit} | {} | {} / {} |",
                    row.concurrency,
                    thr(ours),
                    thr(theirs),
                    row.advantage()
                        .map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
                    lat(ours.p50_ms),
                    lat(theirs.p50_ms),
                    lat(ours.p99_ms),
                    lat(theirs.p99_ms),
                    fmt_num(cpu(ours)),
                    fmt_num(cpu(theirs)),
                    ratio(cpu(ours), cpu(theirs)),
                    client(ours),
                    client(theirs),
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {unit} | {} | {} | {} | {} {cpu_unit} | {} |",
                    row.concurrency,
                    thr(ours),
                    lat(ours.p50_ms),
                    lat(ours.p99_ms),
                    fmt_num(cpu(ours)),
                    client(ours),
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
            if let Some(t) = &c.transfer {
                let _ = writeln!(
                    s,
                    "- {}: grew by {:.1} MiB during the transfer (peak {:.1} MiB)",
                    c.server, t.rss_growth_mib, t.rss_peak_mib
                );
            }
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
                match &c.idle {
                    Some(h) => {
                        let _ = writeln!(
                            s,
                            "- {}, {} held: {:.1} KiB each by PSS, {:.1} KiB by RSS",
                            c.server, h.held, h.pss_kib_per_conn, h.rss_kib_per_conn
                        );
                    }
                    None => {
                        let _ = writeln!(s, "- {}: not measured", c.server);
                    }
                }
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
    deliveries_table(&mut s, r);
    let _ = writeln!(s, "\nNotes:\n");
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// S7's row: each way of delivering, messages/s side by side, and LMTP's ratio to `popadm
/// deliver`'s measured in the same run.
fn deliveries_table(s: &mut String, r: &Report) {
    let Some(row) = r.rows.iter().find(|row| row.id == "S7") else {
        return;
    };
    let _ = writeln!(
        s,
        "\nS7 {} (c={}, interleaved repetition by repetition; ratio over the first method's \
         messages/s):\n",
        row.title, row.concurrency
    );
    let _ = writeln!(
        s,
        "| method | messages/s | ratio | p50 ms | p99 ms | CPU ms/message |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let base = &row.cells[0];
    for c in &row.cells {
        let ratio = if c.valid && base.valid && base.throughput > 0.0 {
            format!("**{:.2}x**", c.throughput / base.throughput)
        } else {
            "-".into()
        };
        let rate = if c.valid {
            fmt_num(c.throughput)
        } else {
            format!("{} (INVALID: {} errors)", fmt_num(c.throughput), c.errors)
        };
        let _ = writeln!(
            s,
            "| {} | {rate} | {ratio} | {} | {} | {} |",
            c.server,
            maybe(c.p50_ms),
            maybe(c.p99_ms),
            fmt_num(c.server_cpu_ms_per_session),
        );
    }
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
        for (i, c) in row.cells.iter().enumerate() {
            let ratio = row
                .shape_ratio(i)
                .map_or_else(|| "-".into(), |x| format!("**{x:.2}x**"));
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
                maybe(c.p50_ms),
                maybe(c.p99_ms),
                fmt_num(c.server_cpu_ms_per_session),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    fn run() -> RunResult {
        RunResult {
            sessions: 1,
            errors: 0,
            first_error: None,
            messages: 0,
            octets: 0,
            seconds: 0.5,
            retr_seconds: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            truncated: false,
        }
    }

    /// A figure that was not measured is absent from the JSON and `-` in the markdown.
    #[test]
    fn unmeasured_figures_are_absent() {
        let rep = Rep {
            run: run(),
            server_cpu_s: 0.1,
            client_cpu_s: None,
            metrics: Metrics::Listing { figure: Some(12.0) },
        };
        let c = cell("pop3d", vec![rep], Unit::Ms, false);
        let json = serde_json::to_value(&c).expect("json");
        for absent in [
            "client_cpu_ms_per_session",
            "p50_ms",
            "p99_ms",
            "rss_growth_mib",
            "held",
        ] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
        assert_eq!(json["throughput"], 12.0);
        let rep = &json["reps"][0];
        assert!(rep.get("client_cpu_s").is_none(), "{rep}");
        assert_eq!(rep["figure"], 12.0);
        assert!(rep.get("rss_base_kib").is_none(), "{rep}");

        let report = report_of(vec![Row {
            id: "S5",
            title: "listing".into(),
            transport: "plain",
            concurrency: 1,
            unit: Unit::Ms,
            rss: false,
            cells: vec![c],
        }]);
        let md = markdown(&report);
        assert!(
            md.contains("| S5 listing (plain) | 1 | ms | 12.0 | - | - | "),
            "{md}"
        );
        assert!(md.contains(" ms/session | - |"), "{md}");
    }

    /// Measured figures are where they were, one metrics type per scenario.
    #[test]
    fn measured_figures_are_there() {
        let reps = vec![
            Rep {
                run: run(),
                server_cpu_s: 0.1,
                client_cpu_s: Some(0.002),
                metrics: Metrics::Transfer {
                    rss_base_kib: 1024,
                    rss_peak_kib: 3072,
                },
            },
            Rep {
                run: run(),
                server_cpu_s: 0.1,
                client_cpu_s: Some(0.004),
                metrics: Metrics::Transfer {
                    rss_base_kib: 1024,
                    rss_peak_kib: 5120,
                },
            },
        ];
        let c = cell("pop3d", reps, Unit::Mib, true);
        let json = serde_json::to_value(&c).expect("json");
        assert_eq!(json["client_cpu_ms_per_session"], 3.0);
        assert_eq!(json["rss_growth_mib"], 3.0);
        assert_eq!(json["p50_ms"], 0.0);
        assert!(json.get("held").is_none(), "{json}");
        assert_eq!(json["reps"][1]["rss_peak_kib"], 5120);

        let held = Rep {
            run: run(),
            server_cpu_s: 0.1,
            client_cpu_s: None,
            metrics: Metrics::Held {
                figure: 2.0,
                held: 100,
                pss_base_kib: 1000,
                pss_held_kib: 1200,
                rss_base_kib: 1000,
                rss_held_kib: 1500,
            },
        };
        let json =
            serde_json::to_value(cell("pop3d", vec![held], Unit::KibPerConn, false)).expect("json");
        assert_eq!(json["held"], 100);
        assert_eq!(json["pss_kib_per_conn"], 2.0);
        assert_eq!(json["rss_kib_per_conn"], 5.0);
        assert_eq!(json["throughput"], 2.0);
    }
}
