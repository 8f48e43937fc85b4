//! Helpers for driving real mail clients: a scratch directory whose MDA script stores each
//! message a client hands over, fetchmail with a run control file and an idfile there, and the
//! comparisons of what a client stored with what was delivered.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::{crlf, TempDir};

/// A message as a client hands it to an MDA with LF line ends.
pub fn lf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let m = crlf(message);
    let mut i = 0;
    while i < m.len() {
        if m[i] == b'\r' && m.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(m[i]);
        i += 1;
    }
    out
}

/// `message` without its first header field if that field is `name` (continuation lines too).
pub fn strip_first_header(message: &[u8], name: &str) -> Vec<u8> {
    let prefix = format!("{name}:");
    if !message
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
    {
        return message.to_vec();
    }
    let mut rest = message;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| p + 1);
        rest = &rest[end..];
        if !rest.starts_with(b" ") && !rest.starts_with(b"\t") {
            return rest.to_vec();
        }
    }
}

/// A scratch directory with an MDA script that stores each message it is given as the next
/// numbered file in `out/`.
pub struct Scratch {
    dir: TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.path().join("out")).expect("mkdir");
        let script = dir.path().join("mda.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nn=$(ls '{out}' | wc -l)\ncat > '{out}/'$n\n",
                out = dir.path().join("out").display()
            ),
        )
        .expect("write mda");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn mda(&self) -> String {
        self.path("mda.sh").display().to_string()
    }

    /// Every message the MDA stored, in delivery order.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let out = self.path("out");
        let n = std::fs::read_dir(&out).expect("read out").count();
        (0..n)
            .map(|i| std::fs::read(out.join(i.to_string())).expect("read message"))
            .collect()
    }

    /// A client command with HOME in the scratch directory, so no user configuration is read.
    pub fn command(&self, program: &str) -> Command {
        self.isolate(Command::new(program))
    }

    /// `cmd` with HOME and its working directory in the scratch directory.
    pub fn isolate(&self, mut cmd: Command) -> Command {
        cmd.env("HOME", self.dir.path())
            .current_dir(self.dir.path());
        cmd
    }
}

pub fn output_text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_same(got: &[Vec<u8>], want: &[Vec<u8>], client: &str) {
    let show = |v: &[Vec<u8>]| -> Vec<String> {
        v.iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect()
    };
    assert_eq!(show(got), show(want), "{client}");
    assert_eq!(got, want, "{client}: bytes differ");
}

/// Runs fetchmail once with `rc_line` as its run control file, its idfile (UIDL state) kept in
/// the scratch directory across runs.
pub fn fetchmail(s: &Scratch, rc_line: &str) -> Output {
    fetchmail_with(s, rc_line, &[])
}

/// [`fetchmail`] with extra command-line options (such as `--check`).
pub fn fetchmail_with(s: &Scratch, rc_line: &str, options: &[&str]) -> Output {
    let rc = s.path("fetchmailrc");
    std::fs::write(&rc, format!("{rc_line}\n")).expect("write rc");
    // fetchmail refuses a run control file others can read.
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    s.command("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("--idfile")
        .arg(s.path("fetchids"))
        .arg("--pidfile")
        .arg(s.path("fetchmail.pid"))
        .arg("--nodetach")
        .args(options)
        .output()
        .expect("run fetchmail")
}

pub fn fetchmail_messages(s: &Scratch) -> Vec<Vec<u8>> {
    s.delivered()
        .iter()
        .map(|m| strip_first_header(m, "Received"))
        .collect()
}
