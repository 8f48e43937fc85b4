//! `pop3-bench`: a POP3 load generator that verifies what it downloads, and the benchmark suite
//! behind `cargo xtask bench` (pop3d alone, or side by side with a private Dovecot).
//!
//! `pop3-bench load` is server-agnostic: any POP3 server on any host and port, plain or implicit
//! TLS, users named by a pattern, one password. Every session is checked (UIDL and LIST agree,
//! each RETR's unstuffed size equals LIST and ends with CRLF, and with `--seed` the bytes equal
//! the corpus this tool delivers), so a fast but wrong server cannot win.
//!
//! It deliberately knows nothing of pop3d's internals: the suite drives the built `pop3d` and
//! `popadm` binaries and reads only the password hashes out of the store, to give Dovecot the
//! very same ones.

mod client;
mod corpus;
mod idle;
mod load;
mod procs;
mod shapes;
mod suite;
mod unstuff;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "pop3-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive one server with one scenario and print the result as JSON
    Load(LoadArgs),
    /// The whole benchmark: provision, start pop3d (and Dovecot), run every scenario, report
    Suite(suite::SuiteArgs),
    /// Install Dovecot's POP3 server (Debian's dovecot-pop3d) for `--against dovecot`
    Deps,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    /// USER, PASS, STAT, QUIT
    Login,
    /// USER, PASS, UIDL, LIST, RETR every message, QUIT
    Download,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    /// Implicit TLS (POP3S, RFC 8314)
    #[arg(long)]
    tls: bool,
    /// Connect in cleartext and upgrade with STLS (RFC 2595)
    #[arg(long, conflicts_with = "tls")]
    stls: bool,
    /// PEM file of the CA (or self-signed certificate) to trust
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any certificate
    #[arg(long)]
    insecure: bool,
    /// Name to send as SNI and check the certificate against
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// User names; `{n}` is replaced by 0, 1, ... users-1
    #[arg(long, default_value = "user{n}")]
    user_pattern: String,
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// The password of every user
    #[arg(long, env = "POP3_BENCH_PASSWORD", hide_env_values = true)]
    password: String,
    #[arg(long, value_enum, default_value_t = Scenario::Login)]
    scenario: Scenario,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// login: sessions to run at most (download: every user once)
    #[arg(long, default_value_t = 1000)]
    sessions: u64,
    /// Stop starting sessions after this many seconds
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The corpus seed the mail was delivered with (`pop3-bench suite` uses 20240101): check
    /// every message's bytes against it
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: messages each user was given
    #[arg(long, default_value_t = 100)]
    messages: u32,
}

fn load(a: LoadArgs) -> Result<()> {
    if !a.user_pattern.contains("{n}") {
        bail!("--user-pattern must contain {{n}}");
    }
    let users: Vec<String> = (0..a.users)
        .map(|n| a.user_pattern.replace("{n}", &n.to_string()))
        .collect();
    let tls = if a.tls || a.stls {
        let connector = client::tls_connector(if a.insecure { None } else { a.ca.as_deref() })?;
        if !a.insecure && a.ca.is_none() {
            bail!("--tls and --stls need --ca FILE or --insecure");
        }
        let name = rustls_pki_types::ServerName::try_from(a.server_name.clone())
            .context("--server-name")?;
        Some((connector, name))
    } else {
        None
    };
    let expected = a
        .seed
        .map(|seed| Arc::new(corpus::Expected::mixed(seed, &users, a.messages)));
    let target = Arc::new(client::Target {
        host: a.host,
        port: a.port,
        tls,
        stls: a.stls,
        password: a.password,
    });
    let time = Duration::from_secs(a.seconds);
    let (work, mode) = match a.scenario {
        Scenario::Login => (
            client::Work::Login,
            load::Mode::Repeat {
                sessions: a.sessions,
                time,
            },
        ),
        Scenario::Download => (client::Work::Download, load::Mode::EachOnce { time }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(load::run(
        target,
        Arc::new(users),
        work,
        a.concurrency,
        mode,
        expected,
    ))?;
    let mib = r.octets as f64 / (1024.0 * 1024.0);
    println!(
        "{}",
        serde_json::json!({
            "sessions": r.sessions,
            "errors": r.errors,
            "first_error": r.first_error,
            "seconds": r.seconds,
            "sessions_per_s": r.sessions as f64 / r.seconds,
            "messages": r.messages,
            "mib": mib,
            "mib_per_s": mib / r.seconds,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "truncated": r.truncated,
        })
    );
    if r.errors > 0 {
        bail!("{} sessions failed", r.errors);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Load(a) => load(a),
        Cmd::Suite(a) => suite::run(a),
        Cmd::Deps => suite::deps(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop3-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
