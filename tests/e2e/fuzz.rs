//! The fuzz targets' bodies on stable: every input of the crash corpus
//! (`fuzz/corpus/regressions/<target>/`) replayed, and the same bodies run as proptest
//! properties with arbitrary input. The bodies are `fuzz/targets/bodies.rs`, the very file the
//! cargo-fuzz targets include.
//!
//! `FUZZ_SECONDS=N` makes the property run each target for about N seconds instead of a fixed
//! number of cases (`cargo xtask fuzz` does that when cargo-fuzz or nightly is missing). A
//! failing input found here is written to the crash corpus, so it is replayed from then on.

#[path = "../../fuzz/targets/bodies.rs"]
mod bodies;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

fn regressions() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/regressions")
}

#[test]
fn the_crash_corpus_replays_cleanly() {
    let mut replayed = 0;
    let mut failed = Vec::new();
    for target in bodies::TARGETS {
        let dir = regressions().join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("read corpus file");
            if catch_unwind(AssertUnwindSafe(|| bodies::run(target, &data))).is_err() {
                failed.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus in {}", regressions().display());
    assert!(failed.is_empty(), "corpus inputs that fail: {failed:#?}");
}

/// Arbitrary bytes, and bytes drawn from the protocol's own alphabet (keywords, digits, dots,
/// line ends, `From `, `X-UIDL:`, PROXY header parts), which reach deeper than noise.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let words: Vec<&'static [u8]> = vec![
        b"USER ",
        b"PASS ",
        b"RETR ",
        b"TOP ",
        b"AUTH ",
        b"LIST",
        b"QUIT",
        b"CAPA",
        b" ",
        b"1",
        b"4294967296",
        b".",
        b"..",
        b"\r",
        b"\n",
        b"\r\n",
        b"\0",
        b"\xff",
        b"From ",
        b"X-UIDL:",
        b"\t",
        b"a",
        b":",
        b">",
        b"PROXY ",
        b"TCP4 ",
        b"TCP6 ",
        b"UNKNOWN",
        b"192.0.2.1",
        b"::1",
        b"65535",
        b"\r\n\r\n\0\r\nQUIT\n",
        b"\x21\x11",
        b"LHLO x\r\n",
        b"MAIL FROM:<a@b> SIZE=10 ",
        b"RCPT TO:<",
        b"DATA\r\n",
        b"\r\n.\r\n",
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1024),
        proptest::collection::vec(proptest::sample::select(words), 0..200)
            .prop_map(|parts| parts.concat()),
    ]
}

#[test]
fn arbitrary_input_keeps_every_target_invariant() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for target in bodies::TARGETS {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let config = Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        };
        // A runner counts its successes: each batch gets a fresh one, seeded from this one.
        let mut seeds = TestRunner::new(config.clone());
        let cases = std::cell::Cell::new(0u64);
        // One batch of 256 cases without FUZZ_SECONDS; batches until the deadline with it
        // (bounded: a batch takes well over a millisecond).
        for _ in 0..=seconds.saturating_mul(1000) {
            let mut runner = TestRunner::new_with_rng(config.clone(), seeds.new_rng());
            let result = runner.run(&input(), |data| {
                cases.set(cases.get() + 1);
                catch_unwind(AssertUnwindSafe(|| bodies::run(target, &data)))
                    .map_err(|_| TestCaseError::fail(format!("{target} panicked")))
            });
            match result {
                Ok(()) => {}
                Err(TestError::Fail(why, data)) => {
                    let file = save_crash(target, &data);
                    panic!("{target}: {why}; minimal input saved as {}", file.display());
                }
                Err(e) => panic!("{target}: {e}"),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let cases = cases.get();
        eprintln!("fuzz property {target}: {cases} cases, no failure");
    }
}

/// Writes a failing input into the crash corpus under a name derived from its bytes.
fn save_crash(target: &str, data: &[u8]) -> PathBuf {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = regressions().join(target);
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("crash-proptest-{hash:016x}"));
    let _ = std::fs::write(&file, data);
    file
}
