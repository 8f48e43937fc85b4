//! Envelope addresses (RFC 5321 section 4.1.2) and the header lines a final delivery puts on
//! top of a message (section 4.4): shared by the LMTP listener and `popadm deliver`, so both
//! judge a sender the same way and write the same `Return-Path:` and `Delivered-To:`.

/// An envelope sender that is not an address (RFC 5321 section 4.1.2's `Mailbox`, or a bare
/// local part as `sendmail -f root` gives, or empty), so it cannot go into a `Return-Path:`
/// header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid envelope sender {0:?}: not an address (local@domain, a bare local part, \
     or empty for a bounce; one pair of enclosing angle brackets is allowed)"
)]
pub struct BadSender(pub String);

/// The sender without one pair of enclosing angle brackets, if it is an address: empty (the
/// null sender), or a local part (RFC 5321 section 4.1.2: a dot-string or a quoted string)
/// with an optional `@domain` (a domain name or an address literal in brackets). Anything else
/// (spaces outside quotes, control characters, brackets inside) is refused.
pub fn clean_sender(sender: &str) -> Result<String, BadSender> {
    let inner = sender
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(sender);
    if inner.is_empty() || is_address(inner) {
        Ok(inner.to_owned())
    } else {
        Err(BadSender(sender.to_owned()))
    }
}

/// The lines a final delivery adds on top of a message for `recipient`: `Return-Path:
/// <sender>` when the sender is known (already cleaned by [`clean_sender`]; empty for a
/// bounce gives `<>`), then `Delivered-To:`, each ending in CRLF.
pub fn lda_headers(sender: Option<&str>, recipient: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + recipient.len());
    if let Some(sender) = sender {
        bytes.extend_from_slice(format!("Return-Path: <{sender}>\r\n").as_bytes());
    }
    bytes.extend_from_slice(format!("Delivered-To: {recipient}\r\n").as_bytes());
    bytes
}

/// `local` or `local@domain` as RFC 5321 section 4.1.2 writes them (a bare local part is what
/// `sendmail -f root` and unqualified `From ` lines give).
pub fn is_address(address: &str) -> bool {
    // The domain cannot hold `@`; a quoted local part can.
    let (local, domain) = match address.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (address, None),
    };
    is_local_part(local) && domain.is_none_or(is_domain)
}

fn is_local_part(local: &str) -> bool {
    // atext of RFC 5322 section 3.2.3, which RFC 5321's Atom uses.
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if let Some(quoted) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        // qtextSMTP (printable ASCII but `"` and `\`) or a quoted-pairSMTP.
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if !matches!(chars.next(), Some(' '..='~')) {
                        return false;
                    }
                }
                '"' => return false,
                ' '..='~' => {}
                _ => return false,
            }
        }
        return true;
    }
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

fn is_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        // An address literal: dtext only (printable ASCII but `[`, `]` and `\`).
        return !literal.is_empty() && literal.chars().all(|c| matches!(c, '!'..='Z' | '^'..='~'));
    }
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_cleaned_or_refused() {
        let cases: &[(&str, Option<&str>)] = &[
            ("bob@example.net", Some("bob@example.net")),
            ("<bob@example.net>", Some("bob@example.net")),
            ("<>", Some("")),
            ("", Some("")),
            (
                "\"odd local\"@example.net",
                Some("\"odd local\"@example.net"),
            ),
            ("bob@example.net\r\nBcc: x", None),
            ("a\0b", None),
            ("<a<b>", None),
            ("a>b", None),
            // Issue 19: a space outside quotes is no address; one pair of brackets is fine.
            ("bad sender", None),
            ("<a@b>", Some("a@b")),
            ("<<a@b>>", None),
            ("root", Some("root")),
            ("a@[192.0.2.1]", Some("a@[192.0.2.1]")),
            ("a@", None),
            ("@b", None),
            ("a..b@c", None),
            ("a@-b.c", None),
            (r#""a\"b"@c"#, Some(r#""a\"b"@c"#)),
            (r#""a"b"@c"#, None),
            ("b\u{e9}b@example.net", None),
        ];
        for (input, want) in cases {
            assert_eq!(clean_sender(input).ok().as_deref(), *want, "{input:?}");
        }
    }

    /// RFC 5321 section 4.4: the return path goes on top, `<>` for the null sender.
    #[test]
    fn lda_headers_name_sender_and_recipient() {
        assert_eq!(
            lda_headers(Some("b@x"), "alice@example.org"),
            b"Return-Path: <b@x>\r\nDelivered-To: alice@example.org\r\n"
        );
        assert_eq!(
            lda_headers(Some(""), "a"),
            b"Return-Path: <>\r\nDelivered-To: a\r\n"
        );
        assert_eq!(lda_headers(None, "a"), b"Delivered-To: a\r\n");
    }
}
