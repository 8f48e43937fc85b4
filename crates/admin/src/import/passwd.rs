//! `import passwd FILE`: accounts from a Dovecot passwd-file (`user:{SCHEME}hash:uid:gid:...`
//! lines; only the first two fields are read), all or nothing.
//!
//! What each scheme becomes:
//! - `{ARGON2ID}`, `{ARGON2I}`: the PHC string is the login hash as it is (USER/PASS, PLAIN,
//!   LOGIN); SCRAM-SHA-256 keys need the password, so pop3d derives them at the first such
//!   login.
//! - `{CRAM-MD5}`: Dovecot's HMAC-MD5 states, stored for CRAM-MD5 only. They are not the
//!   password, but they are as good as the password for CRAM-MD5, so they are kept apart from
//!   the login hash and serve nothing else: such an account logs in only with CRAM-MD5 until
//!   `popadm user passwd` sets a password (APOP needs the password itself and is refused).
//! - `{PLAIN}`, `{CLEAR}`: hashed with argon2id here, with SCRAM-SHA-256 keys; the password
//!   itself is kept (for APOP and CRAM-MD5) only with `--legacy-auth`.
//! - anything else (`{SHA512-CRYPT}`, `{SSHA}`, no scheme at all, ...): reported line by line;
//!   the import fails unless `--skip-unsupported`, which leaves those users out.
//!
//! Every line is checked before anything is written, and the accounts are then written in one
//! store transaction ([`Store::import_accounts`]): a bad line, an existing account (without
//! `--update`) or a failed write leaves the store as it was.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use store::{AccountImport, AccountName, AccountSecrets, OnExisting};

use crate::output::print;
use crate::progress::Progress;
use crate::{existing_store, open_or_create, Location};

/// What `import passwd` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Domain for names without one.
    pub domain: Option<String>,
    /// Check and report only.
    pub dry_run: bool,
    /// Replace the secrets of accounts that exist (otherwise they fail the import).
    pub update: bool,
    /// Leave users with unsupported schemes out instead of failing.
    pub skip_unsupported: bool,
    /// Keep `{PLAIN}` passwords for APOP and CRAM-MD5.
    pub legacy_auth: bool,
}

/// The credential one line carries.
#[derive(Clone, PartialEq, Eq)]
enum Credential {
    /// An argon2 PHC string.
    Argon2(String),
    /// Dovecot's CRAM-MD5 states, normalised to lower-case hex.
    CramMd5(String),
    /// A cleartext password.
    Plain(Vec<u8>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::Argon2(_) => "Argon2",
            Credential::CramMd5(_) => "CramMd5",
            Credential::Plain(_) => "Plain",
        })
    }
}

/// One parsed line.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Blank or a `#` comment.
    Skip,
    User(AccountName, Credential),
    /// A user whose scheme this server cannot use.
    Unsupported(AccountName, String),
}

/// Parses one line (without its line end). `Err` is a malformed line, which always fails the
/// import; its text never quotes the password field.
fn parse_line(line: &[u8], domain: Option<&str>) -> Result<Line, String> {
    if line.iter().all(u8::is_ascii_whitespace) || line.first() == Some(&b'#') {
        return Ok(Line::Skip);
    }
    let mut fields = line.splitn(3, |&b| b == b':');
    let user = fields.next().unwrap_or_default();
    let Some(password) = fields.next() else {
        return Err("no ':' after the user name".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "the user name is not UTF-8".to_owned())?;
    let full = match (user.contains('@'), domain) {
        (false, Some(d)) => format!("{user}@{d}"),
        _ => user.to_owned(),
    };
    let name = AccountName::parse(&full).map_err(|e| e.to_string())?;
    let Some((scheme, encoding, value)) = split_scheme(password) else {
        let why = if password.is_empty() {
            "an empty password field".to_owned()
        } else {
            "no {SCHEME} prefix (the passdb's default scheme applies)".to_owned()
        };
        return Ok(Line::Unsupported(name, why));
    };
    let credential = match scheme.as_str() {
        "ARGON2ID" | "ARGON2I" if encoding.is_none() => {
            let phc = std::str::from_utf8(value)
                .map_err(|_| format!("{{{scheme}}} hash is not ASCII"))?;
            auth::validate_phc(phc).map_err(|e| format!("{{{scheme}}}: {e}"))?;
            let algorithm = phc.split('$').nth(1).unwrap_or_default();
            if !algorithm.eq_ignore_ascii_case(&scheme) {
                return Err(format!("{{{scheme}}} holds a {algorithm} hash"));
            }
            Credential::Argon2(phc.to_owned())
        }
        "CRAM-MD5" => {
            let raw = decode(value, encoding.unwrap_or(Encoding::Hex))
                .ok_or_else(|| format!("{{{scheme}}} value is not valid {encoding:?}"))?;
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let states = auth::CramMd5States::from_hex(&hex)
                .ok_or_else(|| format!("{{{scheme}}} needs 32 octets (64 hex digits)"))?;
            Credential::CramMd5(states.to_hex())
        }
        "PLAIN" | "CLEAR" => {
            let raw = match encoding {
                None => Some(value.to_vec()),
                Some(e) => decode(value, e),
            }
            .ok_or_else(|| format!("{{{scheme}}} value is not valid {encoding:?}"))?;
            if raw.is_empty() {
                return Ok(Line::Unsupported(name, "an empty password".into()));
            }
            Credential::Plain(raw)
        }
        _ => {
            let why = format!(
                "scheme {{{scheme}}} is not supported \
                 (supported: ARGON2ID, ARGON2I, CRAM-MD5, PLAIN, CLEAR)"
            );
            return Ok(Line::Unsupported(name, why));
        }
    };
    Ok(Line::User(name, credential))
}

/// The encodings Dovecot allows as a scheme suffix (`{PLAIN.b64}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Hex,
    Base64,
}

/// `{SCHEME}value` or `{SCHEME.ENCODING}value` -> (upper-case scheme, encoding, value).
fn split_scheme(field: &[u8]) -> Option<(String, Option<Encoding>, &[u8])> {
    let rest = field.strip_prefix(b"{")?;
    let close = rest.iter().position(|&b| b == b'}')?;
    let label = std::str::from_utf8(&rest[..close])
        .ok()?
        .to_ascii_uppercase();
    let value = &rest[close + 1..];
    let (scheme, encoding) = match label.rsplit_once('.') {
        Some((s, "HEX")) => (s.to_owned(), Some(Encoding::Hex)),
        Some((s, "B64" | "BASE64")) => (s.to_owned(), Some(Encoding::Base64)),
        _ => (label, None),
    };
    Some((scheme, encoding, value))
}

fn decode(value: &[u8], encoding: Encoding) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(value).ok(),
        Encoding::Hex => {
            if !value.len().is_multiple_of(2) {
                return None;
            }
            value
                .chunks_exact(2)
                .map(|pair| {
                    let digit = |c: u8| char::from(c).to_digit(16);
                    u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).ok()
                })
                .collect()
        }
    }
}

/// The whole file parsed: the users to import, the ones left out, and the malformed lines.
#[derive(Debug, Default)]
struct Parsed {
    users: Vec<(usize, AccountName, Credential)>,
    unsupported: Vec<(usize, AccountName, String)>,
    malformed: Vec<(usize, String)>,
}

fn parse_file(bytes: &[u8], domain: Option<&str>) -> Parsed {
    let mut parsed = Parsed::default();
    let mut seen = HashSet::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let name = match parse_line(line, domain) {
            Ok(Line::Skip) => continue,
            Ok(Line::User(name, credential)) => {
                parsed.users.push((number, name.clone(), credential));
                name
            }
            Ok(Line::Unsupported(name, why)) => {
                parsed.unsupported.push((number, name.clone(), why));
                name
            }
            Err(why) => {
                parsed.malformed.push((number, why));
                continue;
            }
        };
        if !seen.insert(name.clone()) {
            parsed
                .malformed
                .push((number, format!("{name} appears more than once")));
        }
    }
    parsed
}

/// What an imported account can log in with, for the report.
fn note(credential: &Credential, legacy: bool) -> &'static str {
    match (credential, legacy) {
        (Credential::Argon2(_), _) => {
            "argon2 hash: USER/PASS, PLAIN, LOGIN (SCRAM-SHA-256 after the first of those logins)"
        }
        (Credential::CramMd5(_), _) => {
            "CRAM-MD5 states: CRAM-MD5 only (a password-equivalent for CRAM-MD5; \
             other mechanisms after `popadm user passwd`)"
        }
        (Credential::Plain(_), false) => "cleartext, hashed: every mechanism but APOP and CRAM-MD5",
        (Credential::Plain(_), true) => "cleartext, hashed and kept: every mechanism",
    }
}

/// What is stored for one imported credential.
fn secrets(credential: &Credential, legacy: bool) -> anyhow::Result<(String, AccountSecrets)> {
    Ok(match credential {
        Credential::Argon2(phc) => (phc.clone(), AccountSecrets::default()),
        Credential::CramMd5(states) => (
            auth::NO_PASSWORD_HASH.to_owned(),
            AccountSecrets {
                cram_md5_states: Some(states.clone()),
                ..AccountSecrets::default()
            },
        ),
        Credential::Plain(password) => {
            let derived = auth::derive_secrets(password, legacy)?;
            (
                derived.password_hash,
                AccountSecrets {
                    scram_sha256: Some(derived.scram_sha256),
                    legacy_secret: derived.legacy_secret,
                    cram_md5_states: None,
                },
            )
        }
    })
}

pub fn run(location: &Location, file: &Path, opts: &Options) -> anyhow::Result<()> {
    let what = file.display().to_string();
    let bytes = std::fs::read(file).with_context(|| format!("reading {what}"))?;
    let parsed = parse_file(&bytes, opts.domain.as_deref());
    for (line, why) in &parsed.malformed {
        eprintln!("popadm: {what}:{line}: {why}");
    }
    for (line, name, why) in &parsed.unsupported {
        let verdict = if opts.skip_unsupported {
            "skipped"
        } else {
            "not importable"
        };
        eprintln!("popadm: {what}:{line}: {name}: {verdict}: {why}; set a new password with `popadm user passwd`");
    }
    if !parsed.malformed.is_empty() {
        bail!(
            "{} malformed lines in {what}: nothing imported",
            parsed.malformed.len()
        );
    }
    if !parsed.unsupported.is_empty() && !opts.skip_unsupported {
        bail!(
            "{} users in {what} have an unsupported password scheme: nothing imported \
             (--skip-unsupported imports the others)",
            parsed.unsupported.len()
        );
    }
    let existing = if opts.update {
        OnExisting::Replace
    } else {
        OnExisting::Refuse
    };
    if opts.dry_run {
        return dry_run(location, &parsed, opts, existing);
    }
    let mut accounts = Vec::with_capacity(parsed.users.len());
    // Hashing {PLAIN} passwords with argon2 is where the time goes.
    let progress = Progress::accounts(&what, parsed.users.len() as u64);
    for (line, name, credential) in &parsed.users {
        let (password_hash, secrets) = secrets(credential, opts.legacy_auth)
            .with_context(|| format!("{what}:{line}: {name}"))?;
        progress.step();
        accounts.push(AccountImport {
            name: name.clone(),
            password_hash,
            secrets,
        });
    }
    let store = open_or_create(location)?;
    let created = store
        .import_accounts(&accounts, existing)
        .with_context(|| format!("importing the accounts of {what} (nothing imported)"))?;
    drop(progress);
    let mut out = String::new();
    for ((_, name, credential), created) in parsed.users.iter().zip(&created) {
        let verb = if *created { "created" } else { "updated" };
        out.push_str(&format!(
            "{name}: {verb} ({})\n",
            note(credential, opts.legacy_auth)
        ));
    }
    out.push_str(&format!(
        "imported {} accounts from {what} ({} skipped)\n",
        accounts.len(),
        parsed.unsupported.len()
    ));
    print(&out)
}

/// `--dry-run`: says what would happen, including the accounts that exist, and writes nothing.
fn dry_run(
    location: &Location,
    parsed: &Parsed,
    opts: &Options,
    existing: OnExisting,
) -> anyhow::Result<()> {
    let store = existing_store(location)?;
    let mut out = String::new();
    let mut refused = 0;
    for (_, name, credential) in &parsed.users {
        let exists = match &store {
            Some(s) => s.account(name).context("looking an account up")?.is_some(),
            None => false,
        };
        let verb = match (exists, existing) {
            (false, _) => "would be created",
            (true, OnExisting::Replace) => "would be updated",
            (true, OnExisting::Refuse) => {
                refused += 1;
                "exists (the import would fail; --update replaces its password)"
            }
        };
        out.push_str(&format!(
            "{name}: {verb} ({})\n",
            note(credential, opts.legacy_auth)
        ));
    }
    out.push_str(&format!(
        "dry run: {} accounts, {} skipped, nothing written\n",
        parsed.users.len(),
        parsed.unsupported.len()
    ));
    print(&out)?;
    if refused > 0 {
        bail!("{refused} accounts already exist (--update replaces their passwords)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> AccountName {
        AccountName::parse(s).expect("valid name")
    }

    const CRAM: &str = "d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b";

    #[test]
    fn schemes_and_fields() {
        // `doveadm pw -s ARGON2ID -p 'dovecot secret'` (Dovecot 2.3.19).
        let argon = "$argon2id$v=19$m=65536,t=3,p=1$yGJLnXGCzr82xREyeXyQBg$eigLtF86yU0Qw1dNpTZY2P71I35eJq6jJDnaLtoGgAI";
        let cases: Vec<(String, Line)> = vec![
            (
                format!("tim:{{CRAM-MD5}}{CRAM}:1000:1000::/home/tim::"),
                Line::User(name("tim@ex.org"), Credential::CramMd5(CRAM.into())),
            ),
            (
                format!("Tim@Other.org:{{cram-md5.HEX}}{}", CRAM.to_uppercase()),
                Line::User(name("tim@other.org"), Credential::CramMd5(CRAM.into())),
            ),
            (
                format!("a:{{ARGON2ID}}{argon}"),
                Line::User(name("a@ex.org"), Credential::Argon2(argon.into())),
            ),
            (
                "b:{PLAIN}pass word:1:1".into(),
                Line::User(name("b@ex.org"), Credential::Plain(b"pass word".to_vec())),
            ),
            (
                "c:{CLEAR.b64}cGFzcw==".into(),
                Line::User(name("c@ex.org"), Credential::Plain(b"pass".to_vec())),
            ),
            ("# comment".into(), Line::Skip),
            ("   ".into(), Line::Skip),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_line(line.as_bytes(), Some("ex.org")),
                Ok(want),
                "{line}"
            );
        }
        let unsupported = [
            "d:{SHA512-CRYPT}$6$salt$hash",
            "d:$6$salt$hash",
            "d:",
            "d:{PLAIN}",
        ];
        for line in unsupported {
            assert!(
                matches!(parse_line(line.as_bytes(), None), Ok(Line::Unsupported(n, _)) if n == name("d")),
                "{line}"
            );
        }
        let malformed = [
            "no-colon",
            ":{PLAIN}x",
            "a b:{PLAIN}x",
            "e:{CRAM-MD5}abcd",
            "e:{CRAM-MD5.b64}!!",
            "e:{ARGON2ID}$argon2i$v=19$m=32768,t=4,p=1$s2tPAUJVrgChIFtaol2gDA$qU/AZaJ3Ral2HCEQXOdzK/bQWVNKUe4WZnD+SNdJkK4",
            "e:{ARGON2ID}not a phc",
        ];
        for line in malformed {
            assert!(parse_line(line.as_bytes(), None).is_err(), "{line}");
        }
        // The error text never quotes a password field.
        let err = parse_line(b"e:{CRAM-MD5}secretish", None).expect_err("malformed");
        assert!(!err.contains("secretish"), "{err}");
    }

    #[test]
    fn duplicates_and_line_numbers() {
        let file = format!("a:{{PLAIN}}x\r\n\n# c\nb:{{SSHA}}abc\nA:{{CRAM-MD5}}{CRAM}\n");
        let parsed = parse_file(file.as_bytes(), None);
        assert_eq!(parsed.users.len(), 2);
        assert_eq!(parsed.users[0].2, Credential::Plain(b"x".to_vec()));
        assert_eq!(parsed.unsupported.len(), 1);
        assert_eq!(parsed.unsupported[0].0, 4);
        assert_eq!(parsed.malformed.len(), 1);
        assert_eq!(parsed.malformed[0].0, 5);
        assert!(parsed.malformed[0].1.contains("more than once"));
    }

    #[test]
    fn debug_hides_credentials() {
        let c = Credential::Plain(b"hunter2".to_vec());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
