//! `pop3d`: the POP3 server binary. It turns flags into a [`server::Config`], opens the
//! maildrop store, binds the listeners, sets up logging and signal handling, and hands over
//! to [`server::run`]. Everything else lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tracing::{error, info};

/// POP3 server (RFC 1939) with a SQLite maildrop store.
#[derive(Debug, Parser)]
#[command(name = "pop3d", version, about)]
struct Args {
    /// Directory of the maildrop database; created on first start.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./pop3d-data",
        env = "POP3D_DATA_DIR"
    )]
    data_dir: PathBuf,

    /// Address to listen on; repeat for several. Default 127.0.0.1:1110.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Inactivity autologout in seconds (RFC 1939: at least 600).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    idle_timeout: u64,

    /// Connections served at once; more are refused with -ERR [SYS/TEMP].
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,

    /// Lease of a maildrop lock in seconds; renewed while the session lives.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    lock_lease: u64,

    /// Seconds shutdown waits for sessions to finish the command in hand.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_grace: u64,

    /// Host name for the greeting; default: the machine's.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,

    /// Log filter (tracing env-filter syntax), e.g. `info` or `server=debug`.
    #[arg(long, value_name = "FILTER", default_value = "info", env = "POP3D_LOG")]
    log: String,

    /// Testing only: allow an idle timeout below RFC 1939's 10 minutes.
    #[arg(long, hide = true)]
    allow_short_idle_timeout: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_logging(&args.log) {
        eprintln!("pop3d: {e:#}");
        return ExitCode::from(64);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("pop3d: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn config(args: &Args) -> Result<server::Config> {
    let idle = Duration::from_secs(args.idle_timeout);
    if idle < server::RFC_MIN_IDLE_TIMEOUT && !args.allow_short_idle_timeout {
        bail!(
            "--idle-timeout {} is below RFC 1939's minimum of 600 seconds",
            args.idle_timeout
        );
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if args.lock_lease == 0 {
        bail!("--lock-lease must be at least 1 second");
    }
    let defaults = server::Config::default();
    Ok(server::Config {
        hostname: args.hostname.clone().unwrap_or(defaults.hostname),
        idle_timeout: idle,
        max_connections: args.max_connections,
        lock_lease: Duration::from_secs(args.lock_lease),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    })
}

fn run(args: Args) -> Result<()> {
    let config = config(&args)?;
    let store = store::SqliteStore::open(&args.data_dir)
        .with_context(|| format!("opening the maildrop store in {}", args.data_dir.display()))?;
    info!(data_dir = %args.data_dir.display(), "maildrop store open");
    let addrs = if args.listen.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 1110))]
    } else {
        args.listen.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for addr in addrs {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            listeners.push(l);
        }
        server::run(listeners, Arc::new(store), config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }

    #[test]
    fn idle_timeout_below_rfc_minimum_is_refused() {
        let args = Args::parse_from(["pop3d", "--idle-timeout", "30"]);
        assert!(config(&args).is_err());
        let args = Args::parse_from([
            "pop3d",
            "--idle-timeout",
            "30",
            "--allow-short-idle-timeout",
        ]);
        assert_eq!(
            config(&args).map(|c| c.idle_timeout.as_secs()).ok(),
            Some(30)
        );
    }
}
