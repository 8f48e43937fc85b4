//! `cargo xtask fuzz [--seconds N] [--target T]`: runs the fuzz targets of `fuzz/`.
//!
//! With `cargo-fuzz` and a nightly toolchain (`rustup toolchain list`), each target runs N
//! seconds under libFuzzer; a crash input is copied into `fuzz/corpus/regressions/TARGET/`,
//! which `cargo test` replays from then on (`tests/e2e/fuzz.rs`). Without them it says so and
//! runs the same target bodies (`fuzz/targets/bodies.rs`) as proptest properties for about N
//! seconds each, on stable; a failing input found there lands in the same corpus folder.
//! Nothing is installed here: `cargo install cargo-fuzz` and `rustup toolchain install
//! nightly` are the operator's choice.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness;

pub const DEFAULT_SECONDS: u64 = 60;
// `TARGETS`: the targets, as named in `fuzz/Cargo.toml` and `fuzz/targets/bodies.rs`.
include!("../../fuzz/targets/names.rs");

pub fn command(args: &[String]) -> Result<(), String> {
    harness::only_flags(args, &["--seconds", "--target"])?;
    let seconds = harness::flag(args, "--seconds")?.unwrap_or(DEFAULT_SECONDS);
    let target: Option<String> = harness::flag(args, "--target")?;
    let targets: Vec<&str> = match &target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => return Err(format!("no target {t}; targets: {}", TARGETS.join(" "))),
        None => TARGETS.to_vec(),
    };
    run(seconds, &targets)
}

/// Runs `targets` for `seconds` each, with libFuzzer when it can, else as proptest properties.
pub fn run(seconds: u64, targets: &[&str]) -> Result<(), String> {
    match libfuzzer_missing() {
        None => libfuzzer(seconds, targets),
        Some(why) => {
            eprintln!(
                "xtask fuzz: {why}; running the same target bodies as proptest properties on \
                 stable instead (about {seconds} s per target)"
            );
            let mut test = crate::cargo();
            test.args(["test", "--package", "e2e", "--test", "fuzz", "--"]);
            test.args(["--nocapture", "--test-threads", "1"]);
            test.env("FUZZ_SECONDS", seconds.to_string());
            crate::run(test, "fuzz bodies as proptest properties")
        }
    }
}

/// Why libFuzzer cannot run here, or `None` when it can.
fn libfuzzer_missing() -> Option<String> {
    let nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("nightly"))
        .unwrap_or(false);
    if !nightly {
        return Some("no nightly toolchain (`rustup toolchain install nightly`)".into());
    }
    let cargo_fuzz = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !cargo_fuzz {
        return Some("cargo-fuzz is not installed (`cargo install cargo-fuzz`)".into());
    }
    None
}

/// `cargo +nightly`, run from the workspace root, without the stable toolchain cargo run set.
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .current_dir(crate::workspace_root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    c
}

fn libfuzzer(seconds: u64, targets: &[&str]) -> Result<(), String> {
    let fuzz_dir = crate::workspace_root().join("fuzz");
    let mut crashes = Vec::new();
    for target in targets {
        eprintln!("xtask fuzz: {target} for {seconds} s under libFuzzer");
        let out = nightly_cargo()
            .args(["fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .args(["-print_final_stats=1", "-rss_limit_mb=2048", "-timeout=10"])
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cargo fuzz run {target}: {e}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let executions = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(str::trim)
            .unwrap_or("?");
        if out.status.success() {
            println!("xtask fuzz: {target}: {executions} executions, no crash");
            continue;
        }
        if log.contains("failed to build fuzz script") {
            eprintln!("{log}");
            return Err(format!("cargo fuzz could not build {target}"));
        }
        let kept = keep_artifacts(&fuzz_dir, target)?;
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        println!(
            "xtask fuzz: {target}: CRASH after {executions} executions; kept {}",
            kept.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        crashes.push(target.to_string());
    }
    if crashes.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "crashes in {}; the inputs are in fuzz/corpus/regressions and `cargo test -p e2e \
             --test fuzz` replays them",
            crashes.join(", ")
        ))
    }
}

/// Copies libFuzzer's crash, timeout and out-of-memory inputs of `target` into the regression
/// corpus.
fn keep_artifacts(fuzz_dir: &Path, target: &str) -> Result<Vec<PathBuf>, String> {
    let from = fuzz_dir.join("artifacts").join(target);
    let to = fuzz_dir.join("corpus").join("regressions").join(target);
    std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut kept = Vec::new();
    let Ok(entries) = std::fs::read_dir(&from) else {
        return Ok(kept);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let dest = to.join(&name);
        if !dest.exists() {
            std::fs::copy(entry.path(), &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            kept.push(dest);
        }
    }
    Ok(kept)
}
