//! `user set`: per-account LOGIN-DELAY and EXPIRE overrides (RFC 2449 sections 6.5 and 6.7), and
//! how `user list` and `stat` show them.
//!
//! Each option takes a value or `default`, which clears the override so that the server's global
//! setting applies again. Options not given leave their override as it is.

use anyhow::Context as _;
use store::{AccountName, AccountPolicy, Expire, QuotaScope, Store, StoreError};

use crate::output::{print, rfc3339};
use crate::{account_name, open_existing, Location, QuotaArgs};

/// A policy value given on the command line: a value, or `default` to clear the override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override<T> {
    /// Use the server's global setting.
    Default,
    /// Use this value for this account.
    Set(T),
}

impl<T> Override<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Override::Default => None,
            Override::Set(v) => Some(v),
        }
    }
}

/// Parses `--login-delay`: whole seconds (0 to 4294967295) or `default`.
pub fn parse_login_delay(s: &str) -> Result<Override<u32>, String> {
    if s.eq_ignore_ascii_case("default") {
        return Ok(Override::Default);
    }
    number(s, "seconds").map(Override::Set)
}

/// Parses `--expire`: whole days (0 to 4294967295), `never` or `default`.
pub fn parse_expire(s: &str) -> Result<Override<Expire>, String> {
    if s.eq_ignore_ascii_case("default") {
        return Ok(Override::Default);
    }
    if s.eq_ignore_ascii_case("never") {
        return Ok(Override::Set(Expire::Never));
    }
    if s.starts_with('-') {
        return Err(format!(
            "expected a number of days, `never` or `default`, not {s:?} \
             (use `never` to keep retrieved messages)"
        ));
    }
    match number(s, "days") {
        Ok(days) => Ok(Override::Set(Expire::Days(days))),
        Err(e) => Err(format!("{e}; or `never`")),
    }
}

/// A non-negative decimal count of `unit`, without sign or spaces.
fn number(s: &str, unit: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "expected a number of {unit} (0 to {}) or `default`, not {s:?}",
            u32::MAX
        ));
    }
    s.parse()
        .map_err(|_| format!("{s} {unit} is too many: at most {}", u32::MAX))
}

/// `current` with the given overrides replaced; options not given keep their value.
pub fn apply(
    current: AccountPolicy,
    login_delay: Option<Override<u32>>,
    expire: Option<Override<Expire>>,
) -> AccountPolicy {
    AccountPolicy {
        login_delay: login_delay.map_or(current.login_delay, Override::into_option),
        expire: expire.map_or(current.expire, Override::into_option),
    }
}

/// `popadm user set NAME [--login-delay ...] [--expire ...] [--quota-octets ...]
/// [--quota-messages ...]`.
pub fn run(
    location: &Location,
    name: &str,
    login_delay: Option<Override<u32>>,
    expire: Option<Override<Expire>>,
    quota: QuotaArgs,
) -> anyhow::Result<()> {
    let name = account_name(name)?;
    let store = open_existing(location)?;
    let mut out = String::new();
    if login_delay.is_some() || expire.is_some() {
        out.push_str(&set(&*store, &name, login_delay, expire)?);
    }
    if quota.quota_messages.is_some() || quota.quota_octets.is_some() {
        out.push_str(&crate::quota::set(
            &*store,
            QuotaScope::Account(&name),
            &name.to_string(),
            quota.quota_messages,
            quota.quota_octets,
        )?);
    }
    print(&out)
}

/// Reads the account's policy, changes the given fields, stores it; returns what to print.
fn set(
    store: &dyn Store,
    name: &AccountName,
    login_delay: Option<Override<u32>>,
    expire: Option<Override<Expire>>,
) -> anyhow::Result<String> {
    let account = store
        .account(name)
        .context("looking the account up")?
        .ok_or_else(|| StoreError::NoSuchAccount(name.to_string()))?;
    let policy = apply(account.policy, login_delay, expire);
    store
        .set_policy(name, policy)
        .with_context(|| format!("setting the policy of {name}"))?;
    Ok(format!("updated {name}\n"))
}

/// A LOGIN-DELAY override as shown: seconds, or `default`.
pub fn login_delay_text(login_delay: Option<u32>) -> String {
    login_delay.map_or_else(|| "default".to_owned(), |secs| secs.to_string())
}

/// An EXPIRE override as shown: days, `never`, or `default`.
pub fn expire_text(expire: Option<Expire>) -> String {
    match expire {
        None => "default".to_owned(),
        Some(Expire::Never) => "never".to_owned(),
        Some(Expire::Days(days)) => days.to_string(),
    }
}

/// A last login as shown: RFC 3339 UTC, or `never`.
pub fn last_login_text(last_login: Option<i64>) -> String {
    last_login.map_or_else(|| "never".to_owned(), rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Command, UserCommand};
    use store::SqliteStore;
    use testbed::TempDir;

    /// Checks `parse` against values it takes (`ok`: input, value) and values it refuses
    /// (`bad`: input, a part of the error).
    fn check_values<T: PartialEq + std::fmt::Debug + Copy>(
        parse: fn(&str) -> Result<T, String>,
        ok: &[(&str, T)],
        bad: &[(&str, &str)],
    ) {
        for (input, want) in ok {
            assert_eq!(parse(input), Ok(*want), "{input:?}");
        }
        for (input, want) in bad {
            let err = parse(input).expect_err(input);
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn login_delay_values() {
        let ok: &[(&str, Override<u32>)] = &[
            ("0", Override::Set(0)),
            ("300", Override::Set(300)),
            ("007", Override::Set(7)),
            ("4294967295", Override::Set(u32::MAX)),
            ("default", Override::Default),
            ("DEFAULT", Override::Default),
        ];
        let bad: &[(&str, &str)] = &[
            ("", "expected a number of seconds"),
            ("-1", "expected a number of seconds"),
            ("+5", "expected a number of seconds"),
            (" 5", "expected a number of seconds"),
            ("5s", "expected a number of seconds"),
            ("1.5", "expected a number of seconds"),
            ("never", "expected a number of seconds"),
            ("4294967296", "at most 4294967295"),
        ];
        check_values(parse_login_delay, ok, bad);
    }

    #[test]
    fn expire_values() {
        let bad: &[(&str, &str)] = &[
            ("", "expected a number of days"),
            ("-1", "use `never`"),
            ("30d", "expected a number of days"),
            ("forever", "or `never`"),
            ("99999999999", "at most 4294967295"),
        ];
        let ok: &[(&str, Override<Expire>)] = &[
            ("0", Override::Set(Expire::Days(0))),
            ("30", Override::Set(Expire::Days(30))),
            ("4294967295", Override::Set(Expire::Days(u32::MAX))),
            ("never", Override::Set(Expire::Never)),
            ("NEVER", Override::Set(Expire::Never)),
            ("default", Override::Default),
        ];
        check_values(parse_expire, ok, bad);
    }

    #[test]
    fn command_line() {
        let cli = parse([
            "popadm",
            "user",
            "set",
            "bob",
            "--login-delay",
            "60",
            "--expire",
            "never",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::User(UserCommand::Set {
                name,
                login_delay: Some(Override::Set(60)),
                expire: Some(Override::Set(Expire::Never)),
                ..
            }) if name == "bob"
        ));
        let cli = parse(["popadm", "user", "set", "bob", "--expire", "default"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::User(UserCommand::Set {
                login_delay: None,
                expire: Some(Override::Default),
                ..
            })
        ));
        // At least one option; bad values are usage errors.
        for args in [
            &["popadm", "user", "set", "bob"][..],
            &["popadm", "user", "set", "bob", "--login-delay", "soon"],
            &["popadm", "user", "set", "bob", "--expire", "-1"],
            &["popadm", "user", "set", "--expire", "1"],
        ] {
            assert!(parse(args.iter().copied()).is_err(), "{args:?}");
        }
    }

    #[test]
    fn apply_changes_only_given_fields() {
        let current = AccountPolicy {
            login_delay: Some(60),
            expire: Some(Expire::Days(3)),
        };
        assert_eq!(apply(current, None, None), current);
        assert_eq!(
            apply(current, Some(Override::Default), None),
            AccountPolicy {
                login_delay: None,
                expire: Some(Expire::Days(3)),
            }
        );
        assert_eq!(
            apply(current, None, Some(Override::Set(Expire::Never))),
            AccountPolicy {
                login_delay: Some(60),
                expire: Some(Expire::Never),
            }
        );
        assert_eq!(
            apply(current, Some(Override::Set(0)), Some(Override::Default)),
            AccountPolicy {
                login_delay: Some(0),
                expire: None,
            }
        );
    }

    #[test]
    fn set_stores_and_reports() {
        let dir = TempDir::new("policy");
        let store = SqliteStore::open(&dir.path().join("data")).expect("open store");
        let bob = AccountName::parse("Bob@Example.org").expect("name");
        store.create_account(&bob, "$h").expect("create");
        let policy = |store: &SqliteStore| store.account(&bob).expect("read").expect("bob").policy;

        let out = set(&store, &bob, Some(Override::Set(120)), None).expect("set");
        assert_eq!(out, "updated bob@example.org\n");
        assert_eq!(
            policy(&store),
            AccountPolicy {
                login_delay: Some(120),
                expire: None,
            }
        );
        set(&store, &bob, None, Some(Override::Set(Expire::Days(7)))).expect("set");
        assert_eq!(
            policy(&store),
            AccountPolicy {
                login_delay: Some(120),
                expire: Some(Expire::Days(7)),
            }
        );
        set(&store, &bob, Some(Override::Default), None).expect("set");
        assert_eq!(
            policy(&store),
            AccountPolicy {
                login_delay: None,
                expire: Some(Expire::Days(7)),
            }
        );

        let carol = AccountName::parse("carol").expect("name");
        let err = set(&store, &carol, Some(Override::Set(1)), None).expect_err("unknown");
        assert_eq!(crate::exit::admin_code(&err), crate::EX_NOUSER);
    }

    #[test]
    fn texts() {
        assert_eq!(login_delay_text(None), "default");
        assert_eq!(login_delay_text(Some(0)), "0");
        assert_eq!(expire_text(None), "default");
        assert_eq!(expire_text(Some(Expire::Never)), "never");
        assert_eq!(expire_text(Some(Expire::Days(30))), "30");
        assert_eq!(last_login_text(None), "never");
        assert_eq!(last_login_text(Some(60)), "1970-01-01T00:01:00Z");
    }
}
