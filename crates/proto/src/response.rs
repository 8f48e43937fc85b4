//! Replies: status lines with optional response codes, listing lines, SASL continuations,
//! and the client-side parse of a status line.

use std::fmt;

use crate::MAX_RESPONSE_LINE;

/// `+OK` or `-ERR` (RFC 1939 section 3; never anything else, never lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Err,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "+OK",
            Status::Err => "-ERR",
        }
    }
}

/// Extended response codes (RFC 2449 section 8, RFC 3206, RFC 6856 section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// Credentials were fine but the maildrop is locked by another session.
    InUse,
    /// The user logged in too recently.
    LoginDelay,
    /// Transient trouble on the server's side: try again later.
    SysTemp,
    /// Trouble on the server's side that needs an operator.
    SysPerm,
    /// A problem with the credentials themselves.
    Auth,
    /// The message needs UTF8 mode (RFC 6856).
    Utf8,
}

impl ResponseCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseCode::InUse => "IN-USE",
            ResponseCode::LoginDelay => "LOGIN-DELAY",
            ResponseCode::SysTemp => "SYS/TEMP",
            ResponseCode::SysPerm => "SYS/PERM",
            ResponseCode::Auth => "AUTH",
            ResponseCode::Utf8 => "UTF8",
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes a status line: `+OK text` or `-ERR [CODE] text`, then CRLF.
///
/// Control characters in `text` become spaces (a reply can never be split into two lines),
/// and the line is cut at a character boundary to stay within [`MAX_RESPONSE_LINE`] octets
/// including CRLF (RFC 2449 section 4).
pub fn write_status(out: &mut Vec<u8>, status: Status, code: Option<ResponseCode>, text: &str) {
    let begin = out.len();
    out.extend_from_slice(status.as_str().as_bytes());
    if let Some(code) = code {
        out.extend_from_slice(b" [");
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b']');
    }
    if !text.is_empty() {
        out.push(b' ');
        let room = MAX_RESPONSE_LINE - 2 - (out.len() - begin);
        let mut used = 0;
        for ch in text.chars() {
            let len = ch.len_utf8();
            if used + len > room {
                break;
            }
            used += len;
            if ch.is_control() {
                out.push(b' ');
                used += 1 - len;
            } else {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Shorthand for `+OK text`.
pub fn write_ok(out: &mut Vec<u8>, text: &str) {
    write_status(out, Status::Ok, None, text);
}

/// Shorthand for `-ERR [CODE] text`.
pub fn write_err(out: &mut Vec<u8>, code: Option<ResponseCode>, text: &str) {
    write_status(out, Status::Err, code, text);
}

/// Writes one line of a multi-line listing (CAPA, LIST, UIDL), stuffing a leading `.`.
pub fn write_listing_line(out: &mut Vec<u8>, line: &[u8]) {
    if line.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// Ends a multi-line reply.
pub fn write_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b".\r\n");
}

/// A SASL server challenge line: `+ base64` (RFC 5034 section 4); `+ ` for an empty one.
pub fn write_continuation(out: &mut Vec<u8>, base64: &str) {
    out.extend_from_slice(b"+ ");
    out.extend_from_slice(base64.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A status line as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub status: Status,
    /// The bracketed code as sent, e.g. `IN-USE` or `SYS/TEMP`, if any.
    pub code: Option<String>,
    pub text: String,
}

/// Parses a status line without its line end (the client side).
pub fn parse_status(line: &[u8]) -> Option<StatusLine> {
    let line = String::from_utf8_lossy(line);
    let (status, rest) = if let Some(rest) = line.strip_prefix("+OK") {
        (Status::Ok, rest)
    } else if let Some(rest) = line.strip_prefix("-ERR") {
        (Status::Err, rest)
    } else {
        return None;
    };
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    let rest = rest.trim_start_matches(' ');
    let (code, text) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((code, text)) => (Some(code.to_string()), text.trim_start_matches(' ')),
        None => (None, rest),
    };
    Some(StatusLine {
        status,
        code,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: Status, code: Option<ResponseCode>, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_status(&mut out, status, code, text);
        out
    }

    #[test]
    fn status_lines() {
        let table: &[(Status, Option<ResponseCode>, &str, &[u8])] = &[
            (Status::Ok, None, "ready", b"+OK ready\r\n"),
            (Status::Ok, None, "", b"+OK\r\n"),
            (
                Status::Err,
                Some(ResponseCode::InUse),
                "maildrop locked",
                b"-ERR [IN-USE] maildrop locked\r\n",
            ),
            (
                Status::Err,
                Some(ResponseCode::SysTemp),
                "try later",
                b"-ERR [SYS/TEMP] try later\r\n",
            ),
            // Control characters cannot split a reply into two lines.
            (Status::Err, None, "a\r\nb\0c", b"-ERR a  b c\r\n"),
        ];
        for (s, code, text, expected) in table {
            assert_eq!(status(*s, *code, text), *expected);
        }
    }

    #[test]
    fn first_line_stays_within_512_octets() {
        // RFC 2449 section 4: the first line of a reply is at most 512 octets with CRLF.
        let long = "é".repeat(600);
        let line = status(Status::Err, Some(ResponseCode::SysPerm), &long);
        assert!(line.len() <= MAX_RESPONSE_LINE);
        assert!(line.ends_with(b"\r\n"));
        assert!(std::str::from_utf8(&line).is_ok(), "cut inside a character");
        let ascii = status(Status::Ok, None, &"x".repeat(1000));
        assert_eq!(ascii.len(), MAX_RESPONSE_LINE);
    }

    #[test]
    fn listing_lines_are_stuffed() {
        let mut out = Vec::new();
        write_listing_line(&mut out, b".hidden");
        write_listing_line(&mut out, b"1 120");
        write_end(&mut out);
        assert_eq!(out, b"..hidden\r\n1 120\r\n.\r\n");
    }

    #[test]
    fn parse_status_lines() {
        let p = parse_status(b"-ERR [IN-USE] locked").expect("parses");
        assert_eq!(p.status, Status::Err);
        assert_eq!(p.code.as_deref(), Some("IN-USE"));
        assert_eq!(p.text, "locked");
        let p = parse_status(b"+OK 2 320").expect("parses");
        assert_eq!(
            (p.status, p.code, p.text.as_str()),
            (Status::Ok, None, "2 320")
        );
        assert_eq!(parse_status(b"+OK").map(|p| p.status), Some(Status::Ok));
        assert_eq!(parse_status(b"+OKAY"), None);
        assert_eq!(parse_status(b"* BYE"), None);
    }
}
