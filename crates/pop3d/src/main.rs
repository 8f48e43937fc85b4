//! `pop3d`: the POP3 server binary. It parses the flags, resolves the settings (the library,
//! `pop3d::resolve`), hands them to [`server::serve`] and maps errors to exit codes: 64
//! (EX_USAGE) for flags and configuration, 1 for a failure to start or to serve.

use std::process::ExitCode;

use clap::Parser;
use pop3d::{cli, cluster, Args};

/// sysexits' EX_USAGE: the flags or the configuration file are wrong.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(documented) = cli::self_document(&args) {
        return exit(documented, ExitCode::FAILURE);
    }
    let settings = match pop3d::resolve(&args) {
        Ok(s) => s,
        Err(e) => return exit(Err(e), ExitCode::from(EX_USAGE)),
    };
    if let Some(listen) = args.print_nginx_config {
        return exit(
            cluster::print_nginx_config(&settings, listen),
            ExitCode::from(EX_USAGE),
        );
    }
    if let Err(e) = pop3d::init_logging(&settings.log, settings.json_logs) {
        return exit(Err(e), ExitCode::from(EX_USAGE));
    }
    pop3d::prefetch_oauth2_keys(&settings);
    // Once logging is up, the log is where a failure is said, once (in JSON too with
    // --log-format json); before that, stderr.
    match server::serve(settings.daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

/// Success, or the error printed once on stderr and `failure`.
fn exit(result: anyhow::Result<()>, failure: ExitCode) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop3d: {e:#}");
            failure
        }
    }
}
