//! `cargo xtask`: the project's own commands, in Rust so they run wherever cargo does.
//!
//! - `cargo xtask test`: builds the binaries, runs `cargo test` for every crate, then the
//!   end-to-end suite in `tests/` against the built `pop3d` and `popadm`.
//! - `cargo xtask deps`: installs what the end-to-end suite drives (curl, Python's poplib)
//!   from Debian packages when they are missing.
//!
//! Only the standard library: this crate is built before anything else is.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test    build, run every crate's tests, then the end-to-end suite
  deps    install the real clients the end-to-end suite uses (curl, python3) with apt-get";

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
        Some("deps") => deps(),
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

    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    run(build, "building pop3d and popadm")?;

    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "e2e", "--"]);
    unit.args(&passthrough);
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
    run(e2e, "end-to-end suite (real pop3d, popadm, curl, poplib)")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
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
