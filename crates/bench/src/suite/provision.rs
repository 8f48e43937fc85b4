//! The suite's data: the corpus written as mbox files (and Maildirs for Dovecot), and the
//! accounts and mail provisioned into a pop3d store through `popadm`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{check, Sizes};
use crate::corpus::{self, Expected};
use crate::suite::report::MIB;

/// The one password every benchmark account has.
pub const PASSWORD: &str = "bench password 1";
/// Scenario 3: users with one large message each (20 MiB and 100 MiB).
pub const BIG: [(&str, usize); 2] = [("big0", 20 * 1024 * 1024), ("big1", 100 * 1024 * 1024)];
/// Scenario 5: the user with a very large maildrop of small messages.
pub const MANY_USER: &str = "many0";

/// How popadm reaches a store: pop3d's data directory and, for PostgreSQL, its URL.
pub struct Popadm<'a> {
    pub bin: &'a Path,
    pub data: &'a Path,
    pub store: Option<&'a str>,
}

impl Popadm<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--data-dir").arg(self.data);
        if let Some(url) = self.store {
            c.args(["--store", url]);
        }
        c.args(args);
        c
    }
}

/// Size of message `index` of the scenario-5 maildrop: small, 300 to 900 octets of body.
pub fn many_size(index: u32) -> usize {
    300 + (index % 7) as usize * 100
}

/// The users of scenario 4's idle logged-in sessions (empty maildrops).
pub fn idle_users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("idle{i}")).collect()
}

/// Users `user0..` and, with `extras`, `big*` and `many0`: their mbox files (and Maildirs for
/// Dovecot), and the expected corpus; the MiB figure is that of `user0..` (scenarios 1, 2 and
/// 6). Idle users get empty Maildirs.
pub fn write_corpus(
    tmp: &Path,
    users: &[String],
    sizes: &Sizes,
    seed: u64,
    maildirs: bool,
    extras: bool,
) -> Result<(Expected, f64)> {
    let mut expected = Expected::new(seed);
    let mut octets = 0u64;
    std::fs::create_dir_all(tmp.join("mbox"))?;
    let mut all: Vec<(String, Vec<(u32, usize)>)> = users
        .iter()
        .map(|u| {
            let msgs = (0..sizes.messages)
                .map(|i| (i, corpus::mixed_size(seed, u, i)))
                .collect();
            (u.clone(), msgs)
        })
        .collect();
    if extras {
        for (user, size) in BIG {
            all.push((user.to_string(), vec![(0, size)]));
        }
        all.push((
            MANY_USER.to_string(),
            (0..sizes.many).map(|i| (i, many_size(i))).collect(),
        ));
    }
    if maildirs && extras {
        for user in idle_users(sizes.idle_sessions) {
            for d in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(tmp.join("mail").join(&user).join("Maildir").join(d))?;
            }
        }
    }
    for (ui, (user, msgs)) in all.iter().enumerate() {
        let mut mbox = std::io::BufWriter::new(std::fs::File::create(
            tmp.join("mbox").join(format!("{user}.mbox")),
        )?);
        let maildir = tmp.join("mail").join(user).join("Maildir");
        if maildirs {
            for d in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(maildir.join(d))?;
            }
        }
        let big = BIG.iter().any(|(u, _)| u == user);
        for &(i, size) in msgs {
            let lf = corpus::message(seed, user, i, size);
            if big {
                // Over popadm import's message size cap: delivered alone (`popadm deliver`).
                std::fs::write(tmp.join("mbox").join(format!("{user}.eml")), &lf)?;
            } else {
                mbox.write_all(b"From bench@example.org Mon Jan  1 00:00:00 2024\n")?;
                mbox.write_all(&lf)?;
                mbox.write_all(b"\n")?;
            }
            let crlf_len = lf.len() + lf.iter().filter(|&&b| b == b'\n').count();
            if maildirs {
                let name = format!(
                    "{}.M{i}P{ui}.bench,S={},W={crlf_len}:2,",
                    1_700_000_000 + u64::from(i),
                    lf.len()
                );
                std::fs::write(maildir.join("cur").join(name), &lf)?;
            }
            expected.add(user, i, &lf);
            if ui < users.len() {
                octets += crlf_len as u64;
            }
        }
        mbox.flush()?;
    }
    Ok((expected, octets as f64 / MIB))
}

/// Creates the accounts and imports their mail (none for `idle`), two popadm processes at a
/// time; with `extras` also the S3 and S5 users.
pub fn provision(
    store: &Popadm,
    tmp: &Path,
    users: &[String],
    idle: &[String],
    extras: bool,
) -> Result<()> {
    let mut all: Vec<&str> = users.iter().map(String::as_str).collect();
    if extras {
        all.push(MANY_USER);
    }
    let with_mail = all.len();
    all.extend(idle.iter().map(String::as_str));
    if extras {
        all.extend(BIG.iter().map(|(u, _)| *u));
    }
    // The first account alone: it creates the store and its schema, which two popadm
    // processes must not race to do (the loser finds the database busy).
    let (first, rest) = all.split_at(all.len().min(1));
    for pair in std::iter::once(first).chain(rest.chunks(2)) {
        let mut children = Vec::new();
        for user in pair {
            let mut c = store.cmd(&["user", "add", user, "--password-stdin"]);
            let mut child = c.stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                writeln!(stdin, "{PASSWORD}")?;
            }
            children.push((*user, child));
        }
        for (user, mut child) in children {
            let status = child.wait()?;
            if !status.success() {
                bail!("popadm user add {user}: {status}");
            }
        }
    }
    for pair in all[..with_mail].chunks(2) {
        let mut children = Vec::new();
        for user in pair {
            let file = tmp.join("mbox").join(format!("{user}.mbox"));
            let file = file.to_string_lossy().into_owned();
            let mut c = store.cmd(&["import", "mbox", &file, user]);
            children.push((*user, c.stdout(Stdio::null()).spawn()?));
        }
        for (user, mut child) in children {
            let status = child.wait()?;
            if !status.success() {
                bail!("popadm import mbox for {user}: {status}");
            }
        }
    }
    for (user, size) in BIG.into_iter().filter(|_| extras) {
        let eml = std::fs::File::open(tmp.join("mbox").join(format!("{user}.eml")))?;
        let max = (2 * size).to_string();
        let mut c = store.cmd(&["deliver", "--no-lda-headers", "--max-size", &max, user]);
        c.stdin(eml).stdout(Stdio::null());
        check(c, &format!("popadm deliver to {user}"))?;
    }
    Ok(())
}

/// The argon2id PHC strings pop3d's store holds, by account name.
pub fn stored_hashes(data: &Path) -> Result<Vec<(String, String)>> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("maildrops.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .context("opening pop3d's store")?;
    let mut stmt =
        db.prepare("SELECT local, password_hash FROM accounts WHERE domain_id IS NULL")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    Ok(rows)
}
