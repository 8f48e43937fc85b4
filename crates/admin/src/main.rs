//! `popadm`: parse the command line, run, exit. Everything else is in the `admin` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match admin::parse(std::env::args_os()) {
        Ok(cli) => admin::run(cli),
        Err(code) => code,
    }
}
