//! Quotas: `user set NAME --quota-octets ... --quota-messages ...`, `domain set DOMAIN ...` and
//! `quota default ...`, their values on the command line, and how `user list` and `stat` show
//! use against them.
//!
//! The global default lives in the store, not in pop3d's configuration: popadm reads no pop3d
//! configuration, and every way in (pop3d's LMTP on any node, `popadm deliver`, `popadm
//! import`) must apply the same limit, which only a value in the one shared store guarantees.

use anyhow::Context as _;
use store::{Limit, QuotaScope, QuotaSetting, Store};

use crate::output::print;
use crate::{open_existing, Location};

/// Parses `--quota-octets`: a size in octets with an optional `K`, `M` or `G` suffix (powers of
/// 1024, `KiB` and `KB` spelled out too), `none` (no limit) or `default` (the next level's).
pub fn parse_octets(s: &str) -> Result<Limit, String> {
    match keyword(s) {
        Some(limit) => Ok(limit),
        None => parse_size(s)
            .map(Limit::At)
            .map_err(|e| format!("{e}; or `none` or `default`")),
    }
}

/// Parses `--quota-messages`: a count, `none` or `default`.
pub fn parse_messages(s: &str) -> Result<Limit, String> {
    if let Some(limit) = keyword(s) {
        return Ok(limit);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "expected a number of messages, `none` or `default`, not {s:?}"
        ));
    }
    s.parse()
        .map(Limit::At)
        .map_err(|_| format!("{s} messages is too many"))
}

fn keyword(s: &str) -> Option<Limit> {
    if s.eq_ignore_ascii_case("none") {
        Some(Limit::Unlimited)
    } else if s.eq_ignore_ascii_case("default") {
        Some(Limit::Default)
    } else {
        None
    }
}

/// Parses `deliver --max-size`: a size as [`parse_size`] takes it, at least 1.
pub fn parse_max_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("0 is not a size limit: at least 1 octet".into()),
        n => Ok(n),
    }
}

/// A size: decimal digits and an optional suffix `K`, `M`, `G` (or `KiB`, `KB`, ...: powers of
/// 1024), case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, suffix) = s.split_at(digits);
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "expected a size (octets, or with a K, M or G suffix), not {s:?}"
            ))
        }
    };
    if number.is_empty() {
        return Err(format!("expected a size before {suffix:?}, as in 10M"));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s} is too large a size"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s} is too large a size"))
}

/// A limit as set, as shown: the number, `none` or `default`.
pub fn setting_text(limit: Limit) -> String {
    match limit {
        Limit::Default => "default".into(),
        Limit::Unlimited => "none".into(),
        Limit::At(n) => n.to_string(),
    }
}

/// What a change of `scope` prints: the new setting.
pub fn changed_text(what: &str, setting: QuotaSetting) -> String {
    format!(
        "{what}: quota-messages {}, quota-octets {}\n",
        setting_text(setting.messages),
        setting_text(setting.octets)
    )
}

/// Sets the limits given at `scope`; what to print.
pub fn set(
    store: &dyn Store,
    scope: QuotaScope<'_>,
    what: &str,
    messages: Option<Limit>,
    octets: Option<Limit>,
) -> anyhow::Result<String> {
    let setting = store
        .set_quota(scope, messages, octets)
        .with_context(|| format!("setting the quota of {what}"))?;
    Ok(changed_text(what, setting))
}

/// `quota default [--quota-messages ...] [--quota-octets ...]`: with neither, shows it.
pub fn default(
    location: &Location,
    messages: Option<Limit>,
    octets: Option<Limit>,
) -> anyhow::Result<()> {
    let store = open_existing(location)?;
    let text = if messages.is_none() && octets.is_none() {
        let setting = store
            .quota_setting(QuotaScope::Global)
            .context("reading the global quota")?;
        changed_text("global default", setting)
    } else {
        set(
            &*store,
            QuotaScope::Global,
            "global default",
            messages,
            octets,
        )?
    };
    print(&text)
}

/// Use against one limit, as `user list` and `stat` show it: `USED/LIMIT`, or `USED/-` when
/// unlimited.
pub fn use_text(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => format!("{used}/{limit}"),
        None => format!("{used}/-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_suffixes() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("1000", 1000),
            ("10K", 10 << 10),
            ("10k", 10 << 10),
            ("10KiB", 10 << 10),
            ("5M", 5 << 20),
            ("5mb", 5 << 20),
            ("2G", 2 << 30),
            ("12b", 12),
        ];
        for (input, want) in ok {
            assert_eq!(parse_size(input), Ok(*want), "{input}");
        }
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "10T",
            " 10",
            "10 M",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_max_size("64M"), Ok(64 << 20));
        assert!(parse_max_size("0").is_err());
        assert_eq!(parse_octets("none"), Ok(Limit::Unlimited));
        assert_eq!(parse_octets("DEFAULT"), Ok(Limit::Default));
        assert_eq!(parse_octets("1G"), Ok(Limit::At(1 << 30)));
        assert_eq!(parse_messages("500"), Ok(Limit::At(500)));
        assert_eq!(parse_messages("none"), Ok(Limit::Unlimited));
        assert!(parse_messages("5K").is_err());
        assert!(parse_messages("-5").is_err());
    }

    #[test]
    fn texts() {
        assert_eq!(use_text(3, Some(10)), "3/10");
        assert_eq!(use_text(3, None), "3/-");
        assert_eq!(
            changed_text(
                "bob",
                QuotaSetting {
                    messages: Limit::Default,
                    octets: Limit::At(7)
                }
            ),
            "bob: quota-messages default, quota-octets 7\n"
        );
    }
}
