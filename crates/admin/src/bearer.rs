//! `oauth2 check --token-stdin`: validates an OAuth 2.0 bearer token with the code pop3d uses
//! (`oauth2::Validator`), with pop3d's `[oauth2]` table (`--config FILE`) under the same
//! `--oauth2-*` flags, then looks the account it names up in the store, the way a login would
//! (a bare name falls back to `default_domain@` when the file sets one). Operators debug single
//! sign-on with it: it prints the account, or why pop3d would refuse the token. The token comes
//! from stdin only, never argv, and is never printed.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use auth::TokenError;
use store::{AccountName, StoreError};

use crate::output::rfc3339;
use crate::{open_existing, Location};

/// The token was refused ([`crate::exit`] maps it to EX_NOPERM).
#[derive(Debug, thiserror::Error)]
#[error("pop3d would refuse this token ([AUTH]): {0}")]
pub struct Refused(pub String);

/// The identity provider could not be asked (EX_TEMPFAIL).
#[derive(Debug, thiserror::Error)]
#[error("pop3d could not validate tokens now ([SYS/TEMP]): {0}")]
pub struct Unavailable(pub String);

/// What `oauth2 check` runs with.
pub struct Check {
    pub config: Option<PathBuf>,
    pub flags: oauth2::Flags,
}

/// Checks the token read from `input`; the report to print, or why pop3d would refuse it.
pub fn check(
    location: &Location,
    args: Check,
    input: impl std::io::Read,
) -> anyhow::Result<String> {
    let (file, default_domain) = match &args.config {
        Some(path) => read_config(path)?,
        None => (None, None),
    };
    let Some(settings) = args.flags.over(file) else {
        bail!(
            "no OAuth 2.0 settings: give --config FILE with an [oauth2] table, or \
             --oauth2-issuer and --oauth2-audience"
        );
    };
    let validator = oauth2::Validator::new(&settings)?;
    let token = read_token(input)?;
    let accepted = match validator.inspect(&token) {
        Ok(a) => a,
        Err(TokenError::Rejected(reason)) => return Err(Refused(reason).into()),
        Err(TokenError::Unavailable(reason)) => return Err(Unavailable(reason).into()),
    };
    let expires = accepted
        .expires
        .and_then(|e| i64::try_from(e).ok())
        .map_or_else(|| "no exp".to_owned(), rfc3339);
    let claim = settings.username_claim();
    let mut report = format!(
        "token valid: {} (expires {expires}); {claim} = {}\n",
        accepted.via, accepted.username
    );
    let name = AccountName::parse(&accepted.username)
        .map_err(|e| Refused(format!("the claim {claim} is not an account name: {e}")))?;
    let store = open_existing(location)?;
    let mut candidates = vec![name.clone()];
    if let (None, Some(domain)) = (name.domain(), &default_domain) {
        if let Ok(full) = AccountName::parse(&format!("{}@{domain}", name.local())) {
            candidates.push(full);
        }
    }
    for candidate in &candidates {
        if store
            .account(candidate)
            .context("looking the account up")?
            .is_some()
        {
            report.push_str(&format!(
                "account: {candidate} (pop3d logs this token in)\n"
            ));
            return Ok(report);
        }
    }
    Err(
        anyhow::Error::new(StoreError::NoSuchAccount(name.to_string())).context(format!(
            "pop3d would refuse this token ([AUTH]): it is valid, but its {claim} {} names no \
             account",
            accepted.username
        )),
    )
}

/// pop3d's configuration file: its `[oauth2]` table and `default_domain`. Other keys are
/// pop3d's business (`pop3d --config FILE` checks them).
fn read_config(path: &Path) -> anyhow::Result<(Option<oauth2::Settings>, Option<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("in the configuration file {}", path.display()))?;
    let settings = table
        .remove("oauth2")
        .map(toml::Value::try_into::<oauth2::Settings>)
        .transpose()
        .with_context(|| format!("[oauth2] in {}", path.display()))?;
    let domain = match table.remove("default_domain") {
        Some(toml::Value::String(d)) => Some(d.to_lowercase()),
        _ => None,
    };
    Ok((settings, domain))
}

/// The token: stdin, trimmed, a leading `Bearer ` dropped, at most
/// [`oauth2::MAX_TOKEN_OCTETS`] octets.
fn read_token(input: impl std::io::Read) -> anyhow::Result<String> {
    let mut raw = String::new();
    input
        .take(oauth2::MAX_TOKEN_OCTETS as u64 + 1024)
        .read_to_string(&mut raw)
        .context("reading the token from stdin")?;
    let token = raw.trim();
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .unwrap_or(token)
        .trim();
    if token.is_empty() {
        bail!("no token on stdin");
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_trimmed_and_its_scheme_dropped() {
        for input in [
            "abc.def.ghi\n",
            "  Bearer abc.def.ghi  \r\n",
            "bearer abc.def.ghi",
        ] {
            assert_eq!(
                read_token(input.as_bytes()).expect("token"),
                "abc.def.ghi",
                "{input:?}"
            );
        }
        assert!(read_token(&b" \n"[..]).is_err());
    }
}

/// `oauth2 check` against the test issuer and a store with one account.
#[cfg(test)]
mod check_tests {
    use oauth2::test_issuer::{json, TestIssuer};
    use store::{SqliteStore, Store as _};
    use testbed::TempDir;

    use super::*;
    use crate::exit::{admin_code, EX_NOPERM, EX_NOUSER, EX_TEMPFAIL};
    use crate::Named;

    struct Setup {
        issuer: TestIssuer,
        dir: TempDir,
        location: Location,
        config: PathBuf,
    }

    fn setup() -> Setup {
        let issuer = TestIssuer::start();
        let dir = TempDir::new("oauth2-check");
        let data = dir.path().join("data");
        let store = SqliteStore::open(&data).expect("store");
        for name in ["alice@example.org", "bob@example.org"] {
            let name = AccountName::parse(name).expect("name");
            store.create_account(&name, "$argon2id$x").expect("create");
        }
        let ca = issuer.write_ca(dir.path());
        let config = dir.path().join("pop3d.toml");
        std::fs::write(
            &config,
            format!(
                "default_domain = \"Example.org\"\nidle_timeout = 600\n[oauth2]\n\
                 issuer = {:?}\naudience = [\"pop3\"]\nca_file = {:?}\n",
                issuer.issuer(),
                ca.display().to_string()
            ),
        )
        .expect("config");
        Setup {
            issuer,
            location: Location::Dir(data, Named::Yes),
            dir,
            config,
        }
    }

    fn run(s: &Setup, flags: oauth2::Flags, token: &str) -> anyhow::Result<String> {
        let args = Check {
            config: Some(s.config.clone()),
            flags,
        };
        check(&s.location, args, format!("{token}\n").as_bytes())
    }

    #[test]
    fn a_valid_token_names_its_account() {
        let s = setup();
        let token = s.issuer.token(&s.issuer.claims("Alice@example.org"));
        let out = run(&s, oauth2::Flags::default(), &token).expect("valid");
        assert!(out.contains("email = Alice@example.org"), "{out}");
        assert!(out.contains("account: alice@example.org"), "{out}");
        assert!(!out.contains(&token), "the token is never printed");
        // A bare preferred_username reaches bob@example.org through default_domain.
        let flags = oauth2::Flags {
            username_claim: Some("preferred_username".into()),
            ..oauth2::Flags::default()
        };
        let token = s.issuer.token(&s.issuer.claims("bob@example.org"));
        let out = run(&s, flags, &token).expect("valid");
        assert!(out.contains("account: bob@example.org"), "{out}");
    }

    #[test]
    fn refusals_say_why_with_their_exit_codes() {
        let mut s = setup();
        let claims = s.issuer.claims("carol@example.org");
        let err =
            run(&s, oauth2::Flags::default(), &s.issuer.token(&claims)).expect_err("no account");
        assert_eq!(admin_code(&err), EX_NOUSER);
        assert!(
            format!("{err:#}").contains("carol@example.org names no account"),
            "{err:#}"
        );

        let claims = s.issuer.claims("alice@example.org");
        let mut expired = claims.clone();
        expired["exp"] = json!(oauth2::test_issuer::now() - 3600);
        let err =
            run(&s, oauth2::Flags::default(), &s.issuer.token(&expired)).expect_err("expired");
        assert_eq!(admin_code(&err), EX_NOPERM);
        assert!(format!("{err:#}").contains("expired"), "{err:#}");

        // The flag replaces the file's audience.
        let flags = oauth2::Flags {
            audience: vec!["webmail".into()],
            ..oauth2::Flags::default()
        };
        let err = run(&s, flags, &s.issuer.token(&claims)).expect_err("audience");
        assert_eq!(admin_code(&err), EX_NOPERM);
        assert!(format!("{err:#}").contains("audience"), "{err:#}");

        let token = s.issuer.token(&claims);
        s.issuer.stop();
        let err = run(&s, oauth2::Flags::default(), &token).expect_err("down");
        assert_eq!(admin_code(&err), EX_TEMPFAIL);
        drop(s.dir);
    }

    #[test]
    fn settings_come_from_the_file_or_the_flags() {
        let s = setup();
        let args = Check {
            config: None,
            flags: oauth2::Flags::default(),
        };
        let err = check(&s.location, args, &b"x"[..]).expect_err("no settings");
        assert!(err.to_string().contains("--oauth2-issuer"), "{err}");
        std::fs::write(
            &s.config,
            "[oauth2]\nissuer = \"https://x\"\naudiences = [\"a\"]\n",
        )
        .expect("config");
        let err = run(&s, oauth2::Flags::default(), "x").expect_err("unknown key");
        assert!(format!("{err:#}").contains("audiences"), "{err:#}");
    }
}
