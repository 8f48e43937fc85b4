//! Security checks on a whole run: no secret in any log line at the most verbose level, and
//! the data directory and database readable by their owner only.

use std::os::unix::fs::PermissionsExt as _;

use e2e::{base64, Fixture};

/// Distinctive strings that must never reach a log line.
const GOOD_PW: &str = "Zq9vLogMarkerGood pw";
const BAD_PW: &str = "Zq9vLogMarkerWrong";

#[test]
fn no_password_or_sasl_payload_reaches_a_trace_log() {
    let f = Fixture::with_flags("seclog", &["--log", "trace"]);
    f.add_user("alice", GOOD_PW);
    f.deliver("alice", b"Subject: s\r\n\r\nx\r\n");
    // USER/PASS, right and wrong (RFC 1939 section 7), for a known and an unknown user.
    let mut c = f.server.login("alice", GOOD_PW);
    c.ok("STAT");
    c.ok("QUIT");
    let mut c = f.server.connect();
    c.ok("USER alice");
    c.err(&format!("PASS {BAD_PW}"));
    c.ok("USER nobody");
    c.err(&format!("PASS {BAD_PW}"));
    // SASL PLAIN (RFC 4616), initial response and continuation forms, wrong and right: the
    // base64 payloads carry the passwords. Refused or not, they must not be logged.
    let plain_bad = base64(format!("\0alice\0{BAD_PW}").as_bytes());
    let plain_good = base64(format!("\0alice\0{GOOD_PW}").as_bytes());
    let mut c = f.server.connect();
    let _ = c.cmd(&format!("AUTH PLAIN {plain_bad}"));
    let r = c.cmd("AUTH PLAIN");
    if r.starts_with('+') {
        let _ = c.cmd(&plain_good);
    }
    let _ = c.cmd("QUIT");
    let mut server = f.server;
    server.signal("TERM");
    server.wait();
    // Trace level includes the debug lines; the whole log is read once one is there and the
    // process is gone.
    server.await_log(" DEBUG ");
    let log = server.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "not a verbose log"
    );
    for secret in ["Zq9vLogMarker", &plain_bad, &plain_good] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
}

/// A data directory that pop3d created itself (it did not exist), with an account and a
/// session in it.
fn fresh_data_dir(dir: &e2e::TempDir) -> std::path::PathBuf {
    let data = dir.path().join("data");
    let server = e2e::Server::start(&data, &[]);
    e2e::add_user(&data, "alice", GOOD_PW);
    let mut c = server.login("alice", GOOD_PW);
    c.ok("QUIT");
    data
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_data_directory_is_private() {
    let dir = e2e::TempDir::new("secdir");
    let data = fresh_data_dir(&dir);
    assert_eq!(mode(&data), 0o700, "data directory");
}

#[test]
fn the_database_files_are_private() {
    let dir = e2e::TempDir::new("secdb");
    let data = fresh_data_dir(&dir);
    let mut checked = 0;
    for entry in std::fs::read_dir(&data).expect("data dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("maildrops.sqlite3") {
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{name} is open to others: {:o}",
                mode(&path)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "no database file in {}", data.display());
}
