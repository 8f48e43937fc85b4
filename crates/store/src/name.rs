//! Account names: `user` or `user@domain`, validated and lowercased.

use std::fmt;
use std::str::FromStr;

use crate::StoreError;

/// Longest accepted account name, in octets (UTF-8), before and after lowercasing.
const MAX_NAME_OCTETS: usize = 255;

/// A validated account name: `local` or `local@domain`.
///
/// The whole name is lowercased (Unicode `to_lowercase`) when parsed, so lookups are
/// case-insensitive and a name is stored in exactly one spelling. UTF-8 letters are allowed
/// (RFC 6856); spaces, control characters and invisible formatting characters are not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName {
    local: String,
    domain: Option<String>,
}

impl AccountName {
    /// Parses and lowercases `user` or `user@domain`. Nothing is trimmed: surrounding
    /// whitespace is an error like any other space.
    pub fn parse(s: &str) -> Result<AccountName, StoreError> {
        let invalid = |reason| StoreError::InvalidName {
            name: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.len() > MAX_NAME_OCTETS {
            return Err(invalid("longer than 255 octets"));
        }
        if s.chars().any(is_forbidden) {
            return Err(invalid("contains a space, control or invisible character"));
        }
        let lower = s.to_lowercase();
        if lower.len() > MAX_NAME_OCTETS {
            return Err(invalid("longer than 255 octets"));
        }
        let (local, domain) = match lower.split_once('@') {
            None => (lower, None),
            Some((local, domain)) => {
                if domain.contains('@') {
                    return Err(invalid("more than one '@'"));
                }
                if domain.is_empty() {
                    return Err(invalid("empty domain"));
                }
                (local.to_owned(), Some(domain.to_owned()))
            }
        };
        if local.is_empty() {
            return Err(invalid("empty local part"));
        }
        Ok(AccountName { local, domain })
    }

    /// The stricter syntax for a name that is being created (RFC 5321 section 4.1.2's
    /// dot-string, minus what breaks tools: `/` paths and Maildir, `:` passwd-files, quotes
    /// and `$ & | ;` shells, `@` `%` `!` routing): a local part of letters (any script),
    /// digits, `.`, `_`, `-` and `+`, with no dot first, last or doubled; a domain of labels
    /// of letters, digits and `-` (not first or last). Logins keep the lenient [`parse`]:
    /// a name that cannot exist is simply unknown.
    ///
    /// [`parse`]: AccountName::parse
    pub fn check_new(&self) -> Result<(), StoreError> {
        let invalid = |reason| StoreError::InvalidName {
            name: self.to_string(),
            reason,
        };
        let local_char = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+');
        if !self.local.chars().all(local_char) {
            return Err(invalid(
                "the local part may hold only letters, digits, '.', '_', '-' and '+'",
            ));
        }
        if self.local.split('.').any(str::is_empty) {
            return Err(invalid(
                "the local part may not start or end with '.' or hold '..'",
            ));
        }
        if let Some(domain) = &self.domain {
            if !domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
            {
                return Err(invalid(
                    "the domain may hold only letters, digits, '-' and '.'",
                ));
            }
            let bad_label = |l: &str| l.is_empty() || l.starts_with('-') || l.ends_with('-');
            if domain.split('.').any(bad_label) {
                return Err(invalid(
                    "a domain label may not be empty or start or end with '-'",
                ));
            }
        }
        Ok(())
    }

    /// Builds a name from parts read back from storage, which were validated when stored.
    pub(crate) fn from_stored(local: String, domain: Option<String>) -> AccountName {
        AccountName { local, domain }
    }

    /// The part before the `@` (the whole name when there is no domain).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The part after the `@`, if any.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }
}

/// Characters never allowed in a name: controls, any Unicode white space, and the invisible
/// formatting characters that would let two different names look the same.
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'                  // soft hyphen
            | '\u{200B}'..='\u{200F}'   // zero-width characters, LRM, RLM
            | '\u{202A}'..='\u{202E}'   // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}'   // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'   // bidi isolates
            | '\u{FEFF}'                // zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}'   // interlinear annotations
        )
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.domain {
            None => f.write_str(&self.local),
            Some(domain) => write!(f, "{}@{}", self.local, domain),
        }
    }
}

impl FromStr for AccountName {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input, then `Ok((local, domain))` or `Err(reason)`.
    type Case = (
        &'static str,
        Result<(&'static str, Option<&'static str>), &'static str>,
    );

    const SPACE: &str = "contains a space, control or invisible character";

    #[test]
    fn parse_table() {
        let long_ok = "a".repeat(255);
        let long_bad = "a".repeat(256);
        let cases: &[Case] = &[
            ("user", Ok(("user", None))),
            ("User@Example.ORG", Ok(("user", Some("example.org")))),
            ("a@b", Ok(("a", Some("b")))),
            ("Jörg@Bücher.DE", Ok(("jörg", Some("bücher.de")))),
            ("ΣΟΦΙΑ", Ok(("σοφια", None))),
            ("first.last+tag@x.y", Ok(("first.last+tag", Some("x.y")))),
            ("", Err("empty")),
            ("@example.org", Err("empty local part")),
            ("user@", Err("empty domain")),
            ("@", Err("empty domain")),
            ("a@b@c", Err("more than one '@'")),
            (" user", Err(SPACE)),
            ("user ", Err(SPACE)),
            ("us er", Err(SPACE)),
            ("user\t", Err(SPACE)),
            ("user\r\n", Err(SPACE)),
            ("us\0er", Err(SPACE)),
            ("us\u{7F}er", Err(SPACE)),
            ("us\u{A0}er", Err(SPACE)),
            ("us\u{200B}er", Err(SPACE)),
            ("us\u{202E}er", Err(SPACE)),
        ];
        for (input, expected) in cases {
            let got = AccountName::parse(input);
            match (expected, got) {
                (Ok((local, domain)), Ok(name)) => {
                    assert_eq!(name.local(), *local, "{input:?}");
                    assert_eq!(name.domain(), *domain, "{input:?}");
                }
                (Err(reason), Err(StoreError::InvalidName { name, reason: got })) => {
                    assert_eq!(got, *reason, "{input:?}");
                    assert_eq!(name, *input);
                }
                (expected, got) => panic!("{input:?}: expected {expected:?}, got {got:?}"),
            }
        }
        assert!(AccountName::parse(&long_ok).is_ok());
        assert!(matches!(
            AccountName::parse(&long_bad),
            Err(StoreError::InvalidName {
                reason: "longer than 255 octets",
                ..
            })
        ));
        // 'İ' (2 octets) lowercases to "i̇" (3 octets): the stored form must fit too.
        let grows = "İ".repeat(100);
        assert!(matches!(
            AccountName::parse(&grows),
            Err(StoreError::InvalidName {
                reason: "longer than 255 octets",
                ..
            })
        ));
    }

    /// Issue 19: names being created follow RFC 5321's dot-string minus what breaks tools;
    /// the lenient login syntax stays (a name that cannot exist is simply unknown).
    #[test]
    fn new_names_are_checked() {
        for ok in [
            "alice",
            "first.last+tag@example.org",
            "jörg@bücher.de",
            "a-b_c@x-y.z",
        ] {
            let name = AccountName::parse(ok).expect("parses");
            assert!(name.check_new().is_ok(), "{ok}");
        }
        for bad in [
            "a/b",
            "a:b",
            "o'brien",
            "a\"b",
            "a$b",
            "a;b",
            "a|b",
            "a%b@x",
            "a!b",
            ".alice",
            "alice.",
            "al..ice",
            "a@-x.org",
            "a@x..org",
            "a@x_y.org",
            "a@x/y",
        ] {
            let name = AccountName::parse(bad).expect("parses as a login name");
            assert!(
                matches!(name.check_new(), Err(StoreError::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for input in ["user", "User@Example.Org", "jörg@bücher.de"] {
            let name: AccountName = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(name.to_string(), input.to_lowercase());
            assert_eq!(AccountName::parse(&name.to_string()).ok(), Some(name));
        }
    }

    #[test]
    fn case_insensitive_equality() {
        assert_eq!(
            AccountName::parse("Alice@Example.COM").ok(),
            AccountName::parse("alice@example.com").ok()
        );
    }
}
