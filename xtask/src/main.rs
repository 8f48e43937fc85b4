//! `cargo xtask`: the project's own commands, in Rust so they run wherever cargo does.
//!
//! - `cargo xtask test`: builds the binaries, runs `cargo test` for every crate, then the
//!   end-to-end suite in `tests/` against the built `pop3d` and `popadm`.
//! - `cargo xtask deps`: installs what the end-to-end suite drives (the POP3 clients, Postfix,
//!   Dovecot's pop3d, the Kerberos tools) from Debian packages when they are missing.
//! - `cargo xtask faults [--rounds N] [--seed S]`: kill -9 pop3d and popadm at random moments
//!   and check the maildrops against a ledger ([`faults`]).
//! - `cargo xtask fuzz [--seconds N] [--target T]`: the cargo-fuzz targets of `fuzz/` under
//!   libFuzzer when nightly and cargo-fuzz are there, else the same bodies as proptest
//!   properties ([`fuzz`]).
//! - `cargo xtask soak [--minutes N] [--clients C] [--seed S]`: random sessions and deliveries
//!   for N minutes, then the ledger, descriptor and memory checks ([`soak`]).
//!
//! Few dependencies: the standard library, plus `proto` (to read multi-line replies) and
//! `rusqlite` (the integrity check), both built for the workspace anyway.

mod bench;
mod faults;
mod fuzz;
mod harness;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test    build, run every crate's tests, then the end-to-end suite
  deps    install what the end-to-end suite drives with apt-get: the POP3 clients, Postfix
          and Dovecot's pop3d (run privately on loopback), the Kerberos tools
          (--bench: only Dovecot's pop3d, for bench --against dovecot)
  bench [--quick] [--against dovecot] [--reps N]
          benchmark the release pop3d (and a private Dovecot) with crates/bench; results in
          target/bench/latest.{json,md}
  faults [--rounds N] [--seed S]
          kill -9 pop3d (also inside UPDATE) and delivering popadm processes at random
          moments, then check every maildrop against a ledger (default 200 rounds)
  fuzz [--seconds N] [--target T]
          run the fuzz targets N seconds each (default 60): libFuzzer with nightly and
          cargo-fuzz, else the same bodies as proptest properties on stable
  soak [--minutes N] [--clients C] [--seed S]
          C clients (default 8) run random sessions while mail is delivered, for N minutes
          (default 1); then the ledger, open descriptors and RSS are checked";

/// Programs the end-to-end suite drives, and the Debian packages that bring them.
const CLIENTS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("python3", "python3"),
    ("fetchmail", "fetchmail"),
    ("mpop", "mpop"),
    ("getmail", "getmail6"),
    ("perl", "perl"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("deps") if args.iter().any(|a| a == "--bench") => bench::deps(),
        Some("bench") => bench::command(&args[1..]),
        Some("deps") => deps(),
        Some("faults") => faults::command(&args[1..]),
        Some("fuzz") => fuzz::command(&args[1..]),
        Some("soak") => soak::command(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Runs a command, failing with its description when it fails.
fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what}: {status}"))
    }
}

/// `cargo xtask test [-- <test filter and libtest args>]`
fn test(extra: &[String]) -> Result<(), String> {
    let passthrough: Vec<&String> = extra.iter().skip_while(|a| *a != "--").skip(1).collect();
    // With Kerberos' development files the binaries carry GSSAPI and the KDC test runs.
    let features: &[&str] = if kerberos_buildable() {
        &["--features", "pop3d/gssapi"]
    } else {
        eprintln!(
            "xtask: libkrb5-dev or libclang missing: building without GSSAPI (cargo xtask deps)"
        );
        &[]
    };

    let mut build = cargo();
    build
        .args(["build", "--workspace", "--bins"])
        .args(features);
    run(build, "building pop3d and popadm")?;

    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "e2e"])
        .args(features)
        .arg("--")
        .args(&passthrough);
    run(unit, "unit and integration tests of every crate")?;

    let bins = target_dir().join("debug");
    let mut e2e = cargo();
    e2e.args(["test", "--package", "e2e", "--"]);
    e2e.args(&passthrough);
    e2e.env("POP3D_BIN", bins.join("pop3d"));
    e2e.env("POPADM_BIN", bins.join("popadm"));
    if std::env::var_os("CI").is_some() {
        // In CI the clients were installed by `cargo xtask deps`: a missing one is a failure,
        // not a skip.
        e2e.env("E2E_REQUIRE_CLIENTS", "1");
    }
    run(e2e, "end-to-end suite (real pop3d, popadm and clients)")?;

    // A short round of fault injection (the full one is `cargo xtask faults`).
    eprintln!("xtask: fault injection, 10 rounds");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let bins = harness::Bins::debug()?;
    faults::run(&bins, 10, seed)?;
    // And a short soak (the long one is `cargo xtask soak`).
    eprintln!("xtask: soak, 20 seconds");
    soak::run(&bins, std::time::Duration::from_secs(20), 4, seed)?;
    // The closing line CI reads: the suites above each printed their own.
    eprintln!("xtask: all tests passed");
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Kerberos for the GSSAPI build and its end-to-end test: a program (or file) that shows the
/// package is there, and the Debian package.
const KERBEROS: &[(&str, &str)] = &[
    ("krb5-config", "libkrb5-dev"),
    ("krb5kdc", "krb5-kdc"),
    ("kadmin.local", "krb5-admin-server"),
    ("kinit", "krb5-user"),
];

/// True when `program` is an executable in PATH, /usr/sbin or /sbin.
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(program).is_file())
}

/// The mail daemons the end-to-end suite runs privately (their own configuration, loopback
/// ports, temporary directories): Postfix delivering through `popadm deliver`, Dovecot's POP3
/// server as the source of a migration. Installing them may start the system's own instances;
/// the suite never uses or touches those.
const MAIL_DAEMONS: &[(&str, &str)] = &[("postfix", "postfix"), ("dovecot", "dovecot-pop3d")];

/// libclang, which libgssapi's bindings are generated with.
fn have_libclang() -> bool {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .any(|e| {
            std::fs::read_dir(e.path().join("lib"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| f.file_name().to_string_lossy().starts_with("libclang"))
        })
}

/// The Kerberos build (`pop3d/gssapi`) is possible here.
fn kerberos_buildable() -> bool {
    on_path("krb5-config") && have_libclang()
}

/// `cargo xtask deps`: apt-get install what is missing.
fn deps() -> Result<(), String> {
    // Perl modules the suite uses beyond the core (Net::POP3 is core): module, package.
    const PERL_MODULES: &[(&str, &str)] = &[("IO::Socket::SSL", "libio-socket-ssl-perl")];
    let mut missing: Vec<&str> = CLIENTS
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    missing.extend(
        KERBEROS
            .iter()
            .chain(MAIL_DAEMONS)
            .filter(|(program, _)| !on_path(program))
            .map(|(_, package)| *package),
    );
    if !have_libclang() {
        missing.push("libclang-dev");
    }
    missing.extend(
        PERL_MODULES
            .iter()
            .filter(|(module, _)| {
                !Command::new("perl")
                    .args([&format!("-M{module}"), "-e", "1"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .map(|(_, package)| *package),
    );
    if missing.is_empty() {
        eprintln!("xtask: every client the suite uses is installed");
        return Ok(());
    }
    if !have("apt-get") {
        return Err(format!(
            "missing {}; install them with your package manager",
            missing.join(" ")
        ));
    }
    if missing.contains(&"postfix") {
        // Without this answer the package would ask, or write a system main.cf; the suite
        // runs its own private instance and needs none.
        let mut preseed = Command::new("sh");
        preseed.args([
            "-c",
            "echo 'postfix postfix/main_mailer_type select No configuration' \
             | debconf-set-selections",
        ]);
        run(preseed, "debconf: Postfix without a system configuration")?;
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run(update, "apt-get update")?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(install, &format!("apt-get install {}", missing.join(" ")))
}
