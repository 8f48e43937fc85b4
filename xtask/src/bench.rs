//! `cargo xtask bench` and `cargo xtask deps --bench`: both hand over to `pop3-bench`
//! (crates/bench), built in release so the load generator is never the bottleneck.

use crate::cluster::{nginx_cache, unpack_nginx};
use crate::harness::TempDir;
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

/// `cargo xtask bench [--quick] [--against dovecot] [--reps N] [--only S6] ...`
///
/// S6's three-node shape needs nginx: the packages `cargo xtask deps` fetched are unpacked
/// into a temporary directory (as for the cluster test) and handed over with `--nginx`.
pub fn command(args: &[String]) -> Result<(), String> {
    let dir = TempDir::new("bench-nginx")?;
    let mut suite = pop3_bench("suite", args);
    match unpack_nginx(dir.path())? {
        Some(dist) => {
            suite
                .arg("--nginx")
                .arg(dist.binary())
                .arg("--nginx-mail-module")
                .arg(dist.module("ngx_mail_module.so"));
        }
        None => eprintln!(
            "xtask: no nginx packages in {} (cargo xtask deps fetches them): S6 runs without \
             its three-node shape",
            nginx_cache().display()
        ),
    }
    run(
        suite,
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
