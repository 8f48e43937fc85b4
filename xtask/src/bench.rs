//! `cargo xtask bench` and `cargo xtask deps --bench`: both hand over to `pop3-bench`
//! (crates/bench), built in release so the load generator is never the bottleneck.

use crate::{cargo, run};

fn pop3_bench(subcommand: &str, args: &[String]) -> std::process::Command {
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "bench",
        "--",
        subcommand,
    ])
    .args(args);
    c
}

/// `cargo xtask bench [--quick] [--against dovecot] [--reps N] ...`
pub fn command(args: &[String]) -> Result<(), String> {
    run(
        pop3_bench("suite", args),
        "benchmark (pop3-bench suite; results in target/bench/)",
    )
}

/// `cargo xtask deps --bench`: Dovecot's pop3d, for `bench --against dovecot`.
pub fn deps() -> Result<(), String> {
    run(
        pop3_bench("deps", &[]),
        "installing Dovecot for the benchmark",
    )
}
