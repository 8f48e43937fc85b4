//! Reply texts and the languages they come in (RFC 6856 section 4, LANG).
//!
//! Each language is one `key = text` file in this folder, registered in [`CATALOGS`]; a key a
//! translation lacks falls back to English. Machine-read parts of replies (STAT, LIST and UIDL
//! values, response codes) are never translated.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::OnceLock;

/// Every human-readable reply text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Text {
    Ready,
    SendPass,
    Bye,
    CapaFollows,
    UserGiven,
    UserFirst,
    ApopUnavailable,
    NoSasl,
    StlsUnconfigured,
    StlsActive,
    StlsGo,
    CleartextRefused,
    BeforeLogin,
    AfterLogin,
    LoggedIn,
    BadCredentials,
    InUse,
    LockLost,
    TempFailure,
    PermFailure,
    Operator,
    Internal,
    ShuttingDown,
    TooManyBad,
    TooManyConnections,
    NoSuchMessage,
    AlreadyDeleted,
    Deleted,
    Octets,
    TopFollows,
    UidlFollows,
    ListFollows,
    SigningOff,
    UpdateFailed,
    LoginDelay,
    LoginTimeout,
    Utf8Needed,
    Utf8On,
    Utf8Refused,
    NotAscii,
    LangFollows,
    LangSet,
    LangUnknown,
    LineTooLong,
    EmptyCommand,
    UnknownCommand,
    MissingArgument,
    TooManyArguments,
    InvalidNumber,
    InvalidArgument,
    ControlCharacter,
    NotUtf8,
    MechanismsFollow,
    AuthCancelled,
    BadBase64,
    UnknownMechanism,
    TooManyAuthFailures,
    KerberosOnly,
    Draining,
}

impl Text {
    pub const ALL: &'static [Text] = &[
        Text::Ready,
        Text::SendPass,
        Text::Bye,
        Text::CapaFollows,
        Text::UserGiven,
        Text::UserFirst,
        Text::ApopUnavailable,
        Text::NoSasl,
        Text::StlsUnconfigured,
        Text::StlsActive,
        Text::StlsGo,
        Text::CleartextRefused,
        Text::BeforeLogin,
        Text::AfterLogin,
        Text::LoggedIn,
        Text::BadCredentials,
        Text::InUse,
        Text::LockLost,
        Text::TempFailure,
        Text::PermFailure,
        Text::Operator,
        Text::Internal,
        Text::ShuttingDown,
        Text::TooManyBad,
        Text::TooManyConnections,
        Text::NoSuchMessage,
        Text::AlreadyDeleted,
        Text::Deleted,
        Text::Octets,
        Text::TopFollows,
        Text::UidlFollows,
        Text::ListFollows,
        Text::SigningOff,
        Text::UpdateFailed,
        Text::LoginDelay,
        Text::LoginTimeout,
        Text::Utf8Needed,
        Text::Utf8On,
        Text::Utf8Refused,
        Text::NotAscii,
        Text::LangFollows,
        Text::LangSet,
        Text::LangUnknown,
        Text::LineTooLong,
        Text::EmptyCommand,
        Text::UnknownCommand,
        Text::MissingArgument,
        Text::TooManyArguments,
        Text::InvalidNumber,
        Text::InvalidArgument,
        Text::ControlCharacter,
        Text::NotUtf8,
        Text::MechanismsFollow,
        Text::AuthCancelled,
        Text::BadBase64,
        Text::UnknownMechanism,
        Text::TooManyAuthFailures,
        Text::KerberosOnly,
        Text::Draining,
    ];

    /// The key of this text in the catalog files.
    pub fn key(self) -> &'static str {
        match self {
            Text::Ready => "ready",
            Text::SendPass => "send-pass",
            Text::Bye => "bye",
            Text::CapaFollows => "capa-follows",
            Text::UserGiven => "user-given",
            Text::UserFirst => "user-first",
            Text::ApopUnavailable => "apop-unavailable",
            Text::NoSasl => "no-sasl",
            Text::StlsUnconfigured => "stls-unconfigured",
            Text::StlsActive => "stls-active",
            Text::StlsGo => "stls-go",
            Text::CleartextRefused => "cleartext-refused",
            Text::BeforeLogin => "before-login",
            Text::AfterLogin => "after-login",
            Text::LoggedIn => "logged-in",
            Text::BadCredentials => "bad-credentials",
            Text::InUse => "in-use",
            Text::LockLost => "lock-lost",
            Text::TempFailure => "temp-failure",
            Text::PermFailure => "perm-failure",
            Text::Operator => "operator",
            Text::Internal => "internal",
            Text::ShuttingDown => "shutting-down",
            Text::TooManyBad => "too-many-bad",
            Text::TooManyConnections => "too-many-connections",
            Text::NoSuchMessage => "no-such-message",
            Text::AlreadyDeleted => "already-deleted",
            Text::Deleted => "deleted",
            Text::Octets => "octets",
            Text::TopFollows => "top-follows",
            Text::UidlFollows => "uidl-follows",
            Text::ListFollows => "list-follows",
            Text::SigningOff => "signing-off",
            Text::UpdateFailed => "update-failed",
            Text::LoginDelay => "login-delay",
            Text::LoginTimeout => "login-timeout",
            Text::Utf8Needed => "utf8-needed",
            Text::Utf8On => "utf8-on",
            Text::Utf8Refused => "utf8-refused",
            Text::NotAscii => "not-ascii",
            Text::LangFollows => "lang-follows",
            Text::LangSet => "lang-set",
            Text::LangUnknown => "lang-unknown",
            Text::LineTooLong => "line-too-long",
            Text::EmptyCommand => "empty-command",
            Text::UnknownCommand => "unknown-command",
            Text::MissingArgument => "missing-argument",
            Text::TooManyArguments => "too-many-arguments",
            Text::InvalidNumber => "invalid-number",
            Text::InvalidArgument => "invalid-argument",
            Text::ControlCharacter => "control-character",
            Text::NotUtf8 => "not-utf8",
            Text::TooManyAuthFailures => "too-many-auth-failures",
            Text::KerberosOnly => "kerberos-only",
            Text::UnknownMechanism => "unknown-mechanism",
            Text::BadBase64 => "bad-base64",
            Text::AuthCancelled => "auth-cancelled",
            Text::MechanismsFollow => "mechanisms-follow",
            Text::Draining => "draining",
        }
    }
}

/// The registered catalogs: tag (RFC 5646), description, file. The first is the default.
const CATALOGS: &[(&str, &str, &str)] = &[
    ("en", "English", include_str!("en.txt")),
    ("i-default", "Default language", include_str!("en.txt")),
];

/// One language's texts.
#[derive(Debug)]
pub struct Language {
    pub tag: &'static str,
    pub description: &'static str,
    texts: HashMap<&'static str, &'static str>,
}

fn parse_catalog(file: &'static str) -> HashMap<&'static str, &'static str> {
    file.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// Every language, the default first.
pub fn languages() -> &'static [Language] {
    static ALL: OnceLock<Vec<Language>> = OnceLock::new();
    ALL.get_or_init(|| {
        CATALOGS
            .iter()
            .map(|&(tag, description, file)| Language {
                tag,
                description,
                texts: parse_catalog(file),
            })
            .collect()
    })
}

/// The default language (English).
pub fn default_language() -> &'static Language {
    &languages()[0]
}

/// A language by tag, case-insensitively (RFC 5646 tags are case-insensitive).
pub fn find(tag: &str) -> Option<&'static Language> {
    languages().iter().find(|l| l.tag.eq_ignore_ascii_case(tag))
}

impl Language {
    /// The text, or English where this language lacks it.
    pub fn text(&self, t: Text) -> &'static str {
        self.texts
            .get(t.key())
            .or_else(|| default_language().texts.get(t.key()))
            .copied()
            .unwrap_or("")
    }

    /// The text with its `{}` placeholders filled in order.
    pub fn fill(&self, t: Text, args: &[&dyn Display]) -> String {
        let mut out = String::new();
        let mut args = args.iter();
        let mut parts = self.text(t).split("{}").peekable();
        while let Some(part) = parts.next() {
            out.push_str(part);
            if parts.peek().is_some() {
                if let Some(a) = args.next() {
                    out.push_str(&a.to_string());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_has_every_text_and_no_stray_keys() {
        let en = default_language();
        for t in Text::ALL {
            assert!(en.texts.contains_key(t.key()), "en.txt lacks {}", t.key());
        }
        for lang in languages() {
            for key in lang.texts.keys() {
                assert!(
                    Text::ALL.iter().any(|t| t.key() == *key),
                    "{} has unknown key {key}",
                    lang.tag
                );
            }
        }
        assert_eq!(Text::ALL.len(), en.texts.len());
    }

    #[test]
    fn placeholders_fill_in_order() {
        let en = default_language();
        assert_eq!(
            en.fill(Text::LoggedIn, &[&3, &120]),
            "maildrop has 3 messages (120 octets)"
        );
        assert_eq!(find("I-DEFAULT").map(|l| l.tag), Some("i-default"));
        assert!(find("xx").is_none());
    }
}
