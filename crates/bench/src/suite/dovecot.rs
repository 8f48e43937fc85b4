//! Dovecot side by side (`--against dovecot`): installing its POP3 server, its configuration
//! (tuned: high-performance login processes, pop3 processes reused), and its instances with
//! the same mail as Maildirs and the very same argon2id hashes pop3d stores.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::provision::stored_hashes;
use super::servers::{Endpoint, Lineup, Role, Server};
use super::{check, output};
use crate::procs::{self, ServerProcess};

pub fn dovecot_version() -> Option<String> {
    output("dovecot", &["--version"])
}

/// `pop3-bench deps`: install Dovecot's POP3 server from Debian packages when it is missing.
pub fn deps() -> Result<()> {
    if let Some(v) = dovecot_version() {
        eprintln!("pop3-bench: dovecot {v} is installed");
        return Ok(());
    }
    if output("apt-get", &["--version"]).is_none() {
        bail!("dovecot is missing and there is no apt-get: install Dovecot 2.3's pop3d yourself");
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    check(update, "apt-get update")?;
    let mut install = Command::new("apt-get");
    install
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "dovecot-pop3d",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive");
    check(install, "apt-get install dovecot-pop3d")?;
    // The package starts the system instance; the benchmark never uses it (it runs its own).
    eprintln!(
        "pop3-bench: installed dovecot {}",
        dovecot_version().unwrap_or_default()
    );
    Ok(())
}

struct DovecotIds {
    uid: String,
    gid: String,
    internal_user: String,
    login_user: String,
}

fn dovecot_ids() -> Result<DovecotIds> {
    let root = output("id", &["-u"]).as_deref() == Some("0");
    if root {
        let (Some(uid), Some(gid)) = (
            output("id", &["-u", "nobody"]),
            output("id", &["-g", "nobody"]),
        ) else {
            bail!("no user nobody to own the Dovecot mail");
        };
        let known = |u: &str| output("id", &["-u", u]).is_some();
        Ok(DovecotIds {
            uid,
            gid,
            internal_user: if known("dovecot") {
                "dovecot"
            } else {
                "nobody"
            }
            .into(),
            login_user: if known("dovenull") {
                "dovenull"
            } else {
                "nobody"
            }
            .into(),
        })
    } else {
        let me = output("id", &["-un"]).context("id -un")?;
        Ok(DovecotIds {
            uid: output("id", &["-u"]).context("id -u")?,
            gid: output("id", &["-g"]).context("id -g")?,
            internal_user: me.clone(),
            login_user: me,
        })
    }
}

/// Where Dovecot's instances find their mail, passwords and certificate.
pub struct Setup<'a> {
    /// The suite's temporary directory: `mail/` holds the Maildirs; each instance gets a
    /// directory of its own beside it.
    pub tmp: &'a Path,
    /// pop3d's data directory, whose store has the password hashes.
    pub data: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    /// S4's logged-in sessions, which each need a pop3 process.
    pub idle_sessions: usize,
}

/// Writes the passwd-file from pop3d's stored hashes, hands the Maildirs to the mail user,
/// and starts one instance per [`Role`] (the `Cached` one with its auth cache on).
pub fn start(s: &Setup) -> Result<Lineup> {
    let ids = dovecot_ids()?;
    let passwd = s.tmp.join("passwd");
    let mut text = String::new();
    for (user, phc) in stored_hashes(s.data)? {
        if !phc.starts_with("$argon2id$") {
            bail!("{user}: stored hash is not argon2id");
        }
        writeln!(text, "{user}:{{ARGON2ID}}{phc}::::::")?;
    }
    std::fs::write(&passwd, text)?;
    let mail = s.tmp.join("mail");
    let mut chown = Command::new("chown");
    chown
        .arg("-R")
        .arg(format!("{}:{}", ids.uid, ids.gid))
        .arg(&mail);
    check(chown, "chown the Maildirs")?;
    let mut started = Vec::new();
    for role in Role::ALL {
        let name = role.name(Server::Dovecot);
        let dir = s.tmp.join(name.replace('+', "-"));
        std::fs::create_dir_all(&dir)?;
        let (plain, tls) = (procs::free_port()?, procs::free_port()?);
        let conf = Conf {
            dir: &dir,
            mail: &mail,
            passwd: &passwd,
            ids: &ids,
            plain,
            tls,
            cert: s.cert,
            key: s.key,
            cache: role == Role::Cached,
            idle_sessions: s.idle_sessions,
        };
        let path = dir.join("dovecot.conf");
        std::fs::write(&path, conf.text())?;
        let mut cmd = Command::new("dovecot");
        cmd.arg("-F").arg("-c").arg(&path);
        let process = ServerProcess::start(&name, cmd, &dir.join("stderr.log"), plain)?;
        started.push(Endpoint::new(&name, plain, tls, process));
    }
    let [plain, cached, idle1, idle2] = <[Endpoint; 4]>::try_from(started)
        .map_err(|_| anyhow::anyhow!("four Dovecot instances expected"))?;
    Ok(Lineup {
        plain,
        cached,
        idle: [idle1, idle2],
    })
}

/// One instance's `dovecot.conf`.
struct Conf<'a> {
    /// Its own directory (run, state, log).
    dir: &'a Path,
    mail: &'a Path,
    passwd: &'a Path,
    ids: &'a DovecotIds,
    plain: u16,
    tls: u16,
    cert: &'a Path,
    key: &'a Path,
    /// The auth cache on.
    cache: bool,
    idle_sessions: usize,
}

impl Conf<'_> {
    fn text(&self) -> String {
        let (m, p) = (self.mail.display(), self.passwd.display());
        let (uid, gid) = (&self.ids.uid, &self.ids.gid);
        let plain = self.plain;
        let tls = self.tls;
        let cache = if self.cache {
            "auth_cache_size = 10M\nauth_cache_ttl = 1 hour\nauth_cache_negative_ttl = 0\n"
        } else {
            "auth_cache_size = 0\n"
        };
        format!(
            "# Private Dovecot for pop3-bench; tuned mode: pop3 processes reused, long-lived
# high-performance login processes (each serving many connections), limits raised for the
# idle-connection scenario.
default_client_limit = 13000
default_vsz_limit = 1G
{instance}default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
first_valid_gid = {gid}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain
{cache}mail_location = maildir:{m}/%u/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = {p}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={m}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {plain}
  }}
  inet_listener pop3s {{
    port = {tls}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = 6000
  process_limit = 4
}}
service pop3 {{
  service_count = 1000
  client_limit = 1
  process_limit = {pop3_processes}
}}
",
            instance = testbed::dovecot_instance(self.dir, &format!("pop3-bench-{plain}")),
            pop3_processes = self.idle_sessions + 200,
            internal = self.ids.internal_user,
            login = self.ids.login_user,
            cert = self.cert.display(),
            key = self.key.display(),
        )
    }
}
