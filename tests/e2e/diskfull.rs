//! A full disk (a small tmpfs, so root only): delivery exits 75 with nothing partial stored, a
//! session gets `-ERR [SYS/TEMP]` rather than a wrong answer, and once there is room again
//! every message delivered before is there, byte for byte, in an intact database.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{crlf, popadm, Server, TempDir};

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
        .unwrap_or(false)
}

#[test]
fn a_full_disk_loses_nothing_and_answers_sys_temp() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let dir = TempDir::new("diskfull");
    let Some(fs) = Tmpfs::mount(dir.path(), "3m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    };
    let data = dir.path().join("data");
    e2e::add_user(&data, "alice", "pw");
    let server = Server::start(&data, &["--no-self-signed", "--listen", "127.0.0.1:0"]);

    // Deliver 200 KiB messages until the disk is full.
    let mut delivered = Vec::new();
    let mut temp_failures = 0;
    for i in 0..40 {
        let body: String = (0..2_000)
            .map(|l| format!("message {i} line {l} {}\n", "x".repeat(80)))
            .collect();
        let msg = format!("Subject: fill {i}\n\n{body}");
        let out = popadm(
            &data,
            &["deliver", "--no-lda-headers", "alice"],
            msg.as_bytes(),
        );
        match out.status.code() {
            Some(0) => delivered.push(crlf(msg.as_bytes())),
            // EX_TEMPFAIL: the MTA keeps the message and tries again.
            Some(75) => temp_failures += 1,
            other => panic!(
                "deliver exited {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        if temp_failures >= 3 {
            break;
        }
    }
    assert!(temp_failures > 0, "the disk never filled up");
    assert!(!delivered.is_empty());

    // A login on the full disk: the maildrop or a transient error, never a wrong answer.
    let mut c = server.connect();
    c.ok("USER alice");
    let r = c.cmd("PASS pw");
    assert!(
        r.starts_with("+OK") || r.starts_with("-ERR [SYS/TEMP] "),
        "{r}"
    );
    if r.starts_with("+OK") {
        assert_eq!(
            c.ok("STAT").split(' ').nth(1),
            Some(delivered.len().to_string().as_str())
        );
        c.ok("QUIT");
    }

    // Room again: everything delivered is there, whole; the database is intact.
    fs.resize("64m");
    let mut c = server.login("alice", "pw");
    assert!(c
        .ok("STAT")
        .starts_with(&format!("+OK {} ", delivered.len())));
    for (i, m) in delivered.iter().enumerate() {
        let (_, body) = c.multi(&format!("RETR {}", i + 1));
        assert!(body == *m, "message {} differs", i + 1);
    }
    c.ok("QUIT");
    drop(server);
    if e2e::client_available("python3", "--version") {
        let out = Command::new("python3")
            .args(["-c", "import sqlite3,sys;print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])"])
            .arg(data.join("maildrops.sqlite3"))
            .output()
            .expect("python3");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
}
