//! `pop3d`, the POP3 server daemon, as a library under a thin binary: the command line
//! ([`cli::Args`]), the TOML configuration file (`config.rs`), the settings resolved from both
//! and the defaults ([`resolve`]: flag, else file, else default), checked once
//! (`validate.rs`), the cluster helpers (`cluster.rs`) and logging. It knows no socket and no
//! runtime: [`server::serve`] binds, drops privileges, handles signals and serves.

pub mod cli;
pub mod cluster;
mod config;
mod settings;
mod validate;

use anyhow::{Context, Result};

pub use cli::Args;
pub use settings::{resolve, Settings};

/// With OAuth 2.0 configured, fetches the issuer's signing keys on a thread of its own and logs
/// the outcome: the first login then does not wait, and a wrong URL, CA file or network shows
/// in the log at start rather than as `[SYS/TEMP]` at the first login. Call it once logging is
/// up.
pub fn prefetch_oauth2_keys(settings: &Settings) {
    let Some(validator) = settings.oauth2.clone() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("oauth2-prefetch".into())
        .spawn(move || match validator.prefetch() {
            Ok(keys) => {
                tracing::info!(
                    issuer = validator.issuer(),
                    keys,
                    "OAuth 2.0: signing keys fetched"
                )
            }
            Err(error) => tracing::warn!(
                issuer = validator.issuer(),
                error,
                "OAuth 2.0: the signing keys could not be fetched; bearer logins get [SYS/TEMP] \
                 until they can"
            ),
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "OAuth 2.0: no thread to fetch the signing keys at start");
    }
}

/// Logs to stderr through `tracing`: `filter` in env-filter syntax, as text or JSON lines.
pub fn init_logging(filter: &str, json: bool) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    // Colour only for a person at a terminal: a log file, the journal or a pipe to fail2ban
    // gets plain text (escape codes break their patterns), and NO_COLOR is honoured.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
    Ok(())
}
