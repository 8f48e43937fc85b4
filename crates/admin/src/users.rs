//! `user add|del|list|passwd` and `stat`: accounts and their passwords (`user set` is in
//! [`crate::policy`]).
//!
//! Passwords come from the terminal (asked twice) or, with `--password-stdin`, as one line of
//! stdin; never from argv. They are hashed here (argon2id) before they reach the store.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal as _, Write as _};

use anyhow::{bail, Context as _};
use store::{AccountName, AccountSummary, LockInfo, StoreError};

use crate::output::{print, rfc3339};
use crate::policy::{self, expire_text, last_login_text, login_delay_text};
use crate::quota::use_text;
use crate::{
    account_name, existing_store, open_existing, open_or_create, require_account, Location,
    UserCommand,
};

pub fn run(location: &Location, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            legacy_auth,
            new_domain,
        } => add(location, &name, password_stdin, legacy_auth, new_domain),
        UserCommand::Del { name, yes } => del(location, &name, yes),
        UserCommand::List { json } => list(location, json),
        UserCommand::Set {
            name,
            login_delay,
            expire,
            quota,
        } => policy::run(location, &name, login_delay, expire, quota),
        UserCommand::Passwd {
            name,
            password_stdin,
            legacy_auth,
        } => passwd(location, &name, password_stdin, legacy_auth),
    }
}

fn add(
    location: &Location,
    name: &str,
    password_stdin: bool,
    legacy: bool,
    new_domain: bool,
) -> anyhow::Result<()> {
    let name = account_name(name)?;
    name.check_new()?;
    // Refuse a taken name (or a domain that looks like a typo) before asking for a password;
    // the database is created only once the password is in hand, so a mistyped password
    // leaves nothing behind.
    let creates_domain = match existing_store(location)? {
        Some(store) => {
            if store
                .account(&name)
                .context("looking the account up")?
                .is_some()
            {
                return Err(StoreError::AccountExists(name.to_string()).into());
            }
            check_domain(&*store, &name, new_domain)?
        }
        None => name.domain().is_some(),
    };
    let (hash, secrets) = read_and_derive(&name, password_stdin, legacy)?;
    let store = open_or_create(location)?;
    store
        .create_account_with(&name, &hash, &secrets)
        .with_context(|| format!("creating account {name}"))?;
    if let Some(warning) = shadowing(&*store, &name)? {
        eprintln!("popadm: warning: {warning}");
    }
    match name.domain().filter(|_| creates_domain) {
        Some(domain) => print(&format!("created {name} (and the new domain {domain})\n")),
        None => print(&format!("created {name}\n")),
    }
}

/// Whether adding `name` creates its domain; an error when the store has domains but not this
/// one and `--new-domain` was not given (a typo such as `exmaple.org` must not make a domain).
fn check_domain(
    store: &dyn store::Store,
    name: &AccountName,
    new_domain: bool,
) -> anyhow::Result<bool> {
    let Some(domain) = name.domain() else {
        return Ok(false);
    };
    let domains = store.list_domains().context("listing domains")?;
    if domains.iter().any(|(d, _)| d == domain) {
        return Ok(false);
    }
    if !domains.is_empty() && !new_domain {
        let known: Vec<&str> = domains.iter().map(|(d, _)| d.as_str()).collect();
        bail!(
            "domain {domain} does not exist (the store has: {}); add it first with \
             `popadm domain add {domain}`, or pass --new-domain",
            known.join(", ")
        );
    }
    Ok(true)
}

/// A warning when `name` and another account differ only by the domain part in a way a
/// `default_domain` makes ambiguous: `alice` beside `alice@example.org`.
fn shadowing(store: &dyn store::Store, name: &AccountName) -> anyhow::Result<Option<String>> {
    let accounts = store.list_accounts().context("listing accounts")?;
    let twins: Vec<String> = accounts
        .iter()
        .map(|a| &a.name)
        .filter(|other| *other != name && other.local() == name.local())
        .filter(|other| other.domain().is_none() || name.domain().is_none())
        .map(AccountName::to_string)
        .collect();
    if twins.is_empty() {
        return Ok(None);
    }
    let bare = name.local();
    Ok(Some(format!(
        "{name} and {} both exist: where pop3d's default_domain is the domain of one of \
         them, a login as `{bare}` reaches the account `{bare}`, and the other is reached \
         only by its full name",
        twins.join(", ")
    )))
}

fn passwd(
    location: &Location,
    name: &str,
    password_stdin: bool,
    legacy: bool,
) -> anyhow::Result<()> {
    let name = account_name(name)?;
    let store = open_existing(location)?;
    require_account(&*store, &name)?;
    let (hash, secrets) = read_and_derive(&name, password_stdin, legacy)?;
    store
        .set_secrets(&name, &hash, &secrets)
        .with_context(|| format!("setting the password of {name}"))?;
    print(&format!("password changed for {name}\n"))
}

fn del(location: &Location, name: &str, yes: bool) -> anyhow::Result<()> {
    let name = account_name(name)?;
    let store = open_existing(location)?;
    let summary = store
        .account_summary(&name)
        .with_context(|| format!("looking up {name}"))?;
    if !yes
        && !confirm(&format!(
            "delete {name} and its {} messages? [y/N] ",
            summary.messages
        ))?
    {
        bail!("not deleted: {name}");
    }
    store
        .delete_account(&name)
        .with_context(|| format!("deleting account {name}"))?;
    print(&format!("deleted {name}\n"))
}

fn list(location: &Location, json: bool) -> anyhow::Result<()> {
    let store = open_existing(location)?;
    let accounts = store.list_accounts().context("listing accounts")?;
    if json {
        let all: Vec<String> = accounts.iter().map(summary_json).collect();
        return print(&format!("[{}]\n", all.join(",\n")));
    }
    print(&list_text(&accounts))
}

pub fn stat(location: &Location, name: &str, json: bool) -> anyhow::Result<()> {
    let name = account_name(name)?;
    let store = open_existing(location)?;
    let summary = store
        .account_summary(&name)
        .with_context(|| format!("looking up {name}"))?;
    if json {
        return print(&format!("{}\n", summary_json(&summary)));
    }
    print(&stat_text(&summary))
}

/// One account as a JSON object (`user list --json`, `stat --json`): what the text shows, as
/// numbers where it is one, `null` where there is none (no lock, no override, no limit, no
/// login yet). Fields in this order.
fn summary_json(a: &AccountSummary) -> String {
    #[derive(serde::Serialize)]
    struct Lock {
        holder: String,
        acquired_at: String,
        expires_at: String,
    }
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Expire {
        Never(&'static str),
        Days(u32),
    }
    #[derive(serde::Serialize)]
    struct Quota {
        messages: Option<u64>,
        octets: Option<u64>,
    }
    #[derive(serde::Serialize)]
    struct Summary<'a> {
        name: String,
        messages: u64,
        octets: u64,
        lock: Option<Lock>,
        login_delay: Option<u32>,
        expire: Option<Expire>,
        last_login: Option<String>,
        last_login_from: Option<&'a str>,
        last_login_mechanism: Option<&'a str>,
        legacy_auth: &'static str,
        quota: Quota,
    }
    let from = a.last_login_from.as_ref();
    let summary = Summary {
        name: a.name.to_string(),
        messages: a.messages,
        octets: a.octets,
        lock: a.lock.as_ref().map(|l| Lock {
            holder: l.holder.clone(),
            acquired_at: rfc3339(l.acquired_at),
            expires_at: rfc3339(l.expires_at),
        }),
        login_delay: a.policy.login_delay,
        expire: a.policy.expire.map(|e| match e {
            store::Expire::Never => Expire::Never("never"),
            store::Expire::Days(days) => Expire::Days(days),
        }),
        last_login: a.last_login.map(rfc3339),
        last_login_from: from.map(|f| f.peer.as_str()),
        last_login_mechanism: from.map(|f| f.mechanism.as_str()),
        legacy_auth: legacy_auth_text(a),
        quota: Quota {
            messages: a.quota.messages,
            octets: a.quota.octets,
        },
    };
    // Strings, numbers and options only: serialising cannot fail.
    serde_json::to_string(&summary).unwrap_or_default()
}

/// `user list`: a header line, then one tab-separated line per account. The lock column is `-`
/// when the maildrop is not locked. The policy columns come last, so the older columns keep
/// their places: LOGIN-DELAY (seconds or `default`), EXPIRE (days, `never` or `default`) and
/// LAST-LOGIN (RFC 3339 or `never`), then LEGACY-AUTH, then use against the quota
/// (QUOTA-MESSAGES and QUOTA-OCTETS: `USED/LIMIT`, `USED/-` for no limit) and where and how the
/// last login came (LAST-LOGIN-FROM, LAST-LOGIN-MECHANISM: `-` when not recorded).
/// The LEGACY-AUTH column: `yes` (APOP and CRAM-MD5), `cram-md5` (imported CRAM-MD5 states
/// only) or `no`.
fn legacy_auth_text(a: &AccountSummary) -> &'static str {
    match (a.legacy, a.cram_md5) {
        (true, _) => "yes",
        (false, true) => "cram-md5",
        (false, false) => "no",
    }
}

fn list_text(accounts: &[AccountSummary]) -> String {
    let mut out = String::from(
        "NAME\tMESSAGES\tOCTETS\tLOCK\tLOGIN-DELAY\tEXPIRE\tLAST-LOGIN\tLEGACY-AUTH\t\
         QUOTA-MESSAGES\tQUOTA-OCTETS\tLAST-LOGIN-FROM\tLAST-LOGIN-MECHANISM\n",
    );
    for a in accounts {
        let lock = match &a.lock {
            Some(l) => format!(
                "locked by {} until {}",
                one_line(&l.holder),
                rfc3339(l.expires_at)
            ),
            None => "-".to_owned(),
        };
        let (from, mechanism) = match &a.last_login_from {
            Some(s) => (one_line(&s.peer), one_line(&s.mechanism)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{lock}\t{}\t{}\t{}\t{}\t{}\t{}\t{from}\t{mechanism}",
            a.name,
            a.messages,
            a.octets,
            login_delay_text(a.policy.login_delay),
            expire_text(a.policy.expire),
            last_login_text(a.last_login),
            legacy_auth_text(a),
            use_text(a.messages, a.quota.messages),
            use_text(a.octets, a.quota.octets),
        );
    }
    out
}

/// `stat NAME`.
fn stat_text(s: &AccountSummary) -> String {
    let lock = match &s.lock {
        Some(LockInfo {
            holder, expires_at, ..
        }) => format!("{} (until {})", one_line(holder), rfc3339(*expires_at)),
        None => "none".to_owned(),
    };
    let from = match &s.last_login_from {
        Some(from) => format!(
            " from {} ({})",
            one_line(&from.peer),
            one_line(&from.mechanism)
        ),
        None => String::new(),
    };
    format!(
        "messages: {}\noctets: {}\nlock: {lock}\nlogin-delay: {}\nexpire: {}\n\
         last login: {}{from}\nquota messages: {}\nquota octets: {}\n",
        s.messages,
        s.octets,
        login_delay_text(s.policy.login_delay),
        expire_text(s.policy.expire),
        last_login_text(s.last_login),
        use_text(s.messages, s.quota.messages),
        use_text(s.octets, s.quota.octets),
    )
}

/// A holder name made safe for one tab-separated line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Asks a yes/no question on the terminal; refuses to guess when stdin is not one.
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("refusing to delete without confirmation: stdin is not a terminal (pass --yes)");
    }
    let mut err = std::io::stderr().lock();
    err.write_all(question.as_bytes())
        .and_then(|()| err.flush())
        .context("writing the question")?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Reads the new password (terminal or stdin) and derives what is stored for it: the argon2id
/// hash, SCRAM-SHA-256 keys and, with `legacy`, the APOP/CRAM-MD5 secret.
fn read_and_derive(
    name: &AccountName,
    from_stdin: bool,
    legacy: bool,
) -> anyhow::Result<(String, store::AccountSecrets)> {
    let password = if from_stdin {
        read_password_line(&mut std::io::stdin().lock())
            .context("reading the password from stdin")?
    } else {
        prompt_twice(name)?
    };
    if password.is_empty() {
        bail!("refusing an empty password");
    }
    let derived =
        auth::derive_secrets(&password, legacy).context("deriving the password's secrets")?;
    Ok((
        derived.password_hash,
        store::AccountSecrets {
            scram_sha256: Some(derived.scram_sha256),
            legacy_secret: derived.legacy_secret,
            cram_md5_states: None,
        },
    ))
}

fn prompt_twice(name: &AccountName) -> anyhow::Result<Vec<u8>> {
    const HINT: &str = "reading the password from the terminal (without one, use --password-stdin)";
    let first = rpassword::prompt_password(format!("password for {name}: ")).context(HINT)?;
    let second = rpassword::prompt_password("retype the password: ").context(HINT)?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first.into_bytes())
}

/// One line of `input` without its line end (LF or CRLF). Spaces and other bytes are kept:
/// they are part of the password (RFC 1939 section 7 lets PASS carry spaces).
pub(crate) fn read_password_line(input: &mut dyn BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    input.read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::{AccountPolicy, Expire, LoginSource, Quota};

    #[test]
    fn password_line_keeps_spaces_and_drops_the_line_end() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"secret\n", b"secret"),
            (b"secret\r\n", b"secret"),
            (b" pass word \n", b" pass word "),
            (b"no newline", b"no newline"),
            (b"first\nsecond\n", b"first"),
            (b"\n", b""),
            (b"", b""),
            (b"tab\t\r\r\n", b"tab\t\r"),
            (b"\xe9t\xe9\n", b"\xe9t\xe9"),
        ];
        for (input, want) in cases {
            let mut r: &[u8] = input;
            assert_eq!(
                read_password_line(&mut r).expect("read"),
                *want,
                "{input:?}"
            );
        }
    }

    fn summary(name: &str, lock: Option<LockInfo>) -> AccountSummary {
        AccountSummary {
            name: AccountName::parse(name).expect("valid name"),
            messages: 3,
            octets: 1234,
            lock,
            policy: AccountPolicy::default(),
            last_login: None,
            last_login_from: None,
            legacy: false,
            cram_md5: false,
            quota: Quota::default(),
        }
    }

    #[test]
    fn list_and_stat_formats() {
        let lock = LockInfo {
            holder: "pop3d[42]@host".into(),
            acquired_at: 0,
            expires_at: 60,
        };
        let mut carol = summary("carol", None);
        carol.policy = AccountPolicy {
            login_delay: Some(300),
            expire: Some(Expire::Never),
        };
        carol.last_login = Some(1_709_251_199);
        carol.last_login_from = Some(LoginSource {
            peer: "192.0.2.7".into(),
            mechanism: "SCRAM-SHA-256".into(),
        });
        carol.legacy = true;
        carol.quota = Quota {
            messages: Some(10),
            octets: Some(1 << 20),
        };
        let mut dave = summary("dave", None);
        dave.policy.expire = Some(Expire::Days(0));
        dave.cram_md5 = true;
        let accounts = [
            summary("alice", None),
            summary("bob@example.org", Some(lock)),
            carol,
            dave,
        ];
        let want = "NAME\tMESSAGES\tOCTETS\tLOCK\tLOGIN-DELAY\tEXPIRE\tLAST-LOGIN\tLEGACY-AUTH\t\
                    QUOTA-MESSAGES\tQUOTA-OCTETS\tLAST-LOGIN-FROM\tLAST-LOGIN-MECHANISM\n\
                    alice\t3\t1234\t-\tdefault\tdefault\tnever\tno\t3/-\t1234/-\t-\t-\n\
                    bob@example.org\t3\t1234\tlocked by pop3d[42]@host until 1970-01-01T00:01:00Z\t\
                    default\tdefault\tnever\tno\t3/-\t1234/-\t-\t-\n\
                    carol\t3\t1234\t-\t300\tnever\t2024-02-29T23:59:59Z\tyes\t3/10\t1234/1048576\t\
                    192.0.2.7\tSCRAM-SHA-256\n\
                    dave\t3\t1234\t-\tdefault\t0\tnever\tcram-md5\t3/-\t1234/-\t-\t-\n";
        assert_eq!(list_text(&accounts), want);
        assert_eq!(
            summary_json(&accounts[1]),
            "{\"name\":\"bob@example.org\",\"messages\":3,\"octets\":1234,\
             \"lock\":{\"holder\":\"pop3d[42]@host\",\"acquired_at\":\"1970-01-01T00:00:00Z\",\
             \"expires_at\":\"1970-01-01T00:01:00Z\"},\"login_delay\":null,\"expire\":null,\
             \"last_login\":null,\"last_login_from\":null,\"last_login_mechanism\":null,\
             \"legacy_auth\":\"no\",\"quota\":{\"messages\":null,\"octets\":null}}"
        );
        assert_eq!(
            summary_json(&accounts[2]),
            "{\"name\":\"carol\",\"messages\":3,\"octets\":1234,\"lock\":null,\
             \"login_delay\":300,\"expire\":\"never\",\"last_login\":\"2024-02-29T23:59:59Z\",\
             \"last_login_from\":\"192.0.2.7\",\"last_login_mechanism\":\"SCRAM-SHA-256\",\
             \"legacy_auth\":\"yes\",\"quota\":{\"messages\":10,\"octets\":1048576}}"
        );
        // RFC 8259 section 7: what a lock holder may carry is escaped.
        let mut odd = accounts[1].clone();
        if let Some(lock) = odd.lock.as_mut() {
            lock.holder = "a\"b\\c\nd\u{1}é".into();
        }
        assert!(summary_json(&odd).contains(r#""holder":"a\"b\\c\nd\u0001é""#));
        assert_eq!(
            stat_text(&accounts[0]),
            "messages: 3\noctets: 1234\nlock: none\n\
             login-delay: default\nexpire: default\nlast login: never\n\
             quota messages: 3/-\nquota octets: 1234/-\n"
        );
        assert_eq!(
            stat_text(&accounts[1]),
            "messages: 3\noctets: 1234\nlock: pop3d[42]@host (until 1970-01-01T00:01:00Z)\n\
             login-delay: default\nexpire: default\nlast login: never\n\
             quota messages: 3/-\nquota octets: 1234/-\n"
        );
        assert_eq!(
            stat_text(&accounts[2]),
            "messages: 3\noctets: 1234\nlock: none\n\
             login-delay: 300\nexpire: never\n\
             last login: 2024-02-29T23:59:59Z from 192.0.2.7 (SCRAM-SHA-256)\n\
             quota messages: 3/10\nquota octets: 1234/1048576\n"
        );
        assert_eq!(
            stat_text(&accounts[3]),
            "messages: 3\noctets: 1234\nlock: none\n\
             login-delay: default\nexpire: 0\nlast login: never\n\
             quota messages: 3/-\nquota octets: 1234/-\n"
        );
    }
}
