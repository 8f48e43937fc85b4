//! Replies: a three-digit code, an enhanced status code (RFC 2034, the classes and subjects of
//! RFC 3463) and text, one or more lines (RFC 5321 section 4.2). Every reply the listener sends
//! is made here, so the codes an MTA acts on are written (and tested) in one place.

/// Longest text of one reply line; the whole line stays well inside RFC 5321 section
/// 4.5.3.1.5's 512 octets.
pub const MAX_REPLY_TEXT: usize = 400;

/// One reply, possibly of several lines (the LHLO reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `class.subject.detail` (RFC 3463), absent where RFC 2034 section 3 leaves it out: the
    /// greeting, the LHLO reply and the 354 intermediate reply.
    pub enhanced: Option<&'static str>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status code.
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: the client should try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Appends the reply in wire form: `code-text` for every line but the last, `code text`
    /// for the last, CR and LF in the text replaced by spaces, each line cut to
    /// [`MAX_REPLY_TEXT`] octets (at a character boundary).
    pub fn write(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.as_bytes());
                out.push(b' ');
            }
            let mut end = line.len().min(MAX_REPLY_TEXT);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            out.extend(
                line[..end]
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The reply as one string (tests and logs).
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    // What a delivery comes to, per recipient after DATA (RFC 2033 section 4.2).

    /// The copy for `recipient` is stored.
    pub fn delivered(recipient: &str) -> Reply {
        Reply::new(250, "2.0.0", format!("<{recipient}> delivered"))
    }

    /// RCPT of an address that names no account (RFC 3463 X.1.1).
    pub fn unknown_user(address: &str) -> Reply {
        Reply::new(550, "5.1.1", format!("<{address}> no such user"))
    }

    /// The mailbox is full (RFC 3463 X.2.2): permanent (`552`, the message bounces) unless
    /// the operator made it temporary (`452`, the MTA keeps it queued).
    pub fn mailbox_full(recipient: &str, temporary: bool) -> Reply {
        let text = format!("<{recipient}> mailbox full");
        match temporary {
            true => Reply::new(452, "4.2.2", text),
            false => Reply::new(552, "5.2.2", text),
        }
    }

    /// The message is larger than the limit (RFC 3463 X.3.4; RFC 1870 uses 552).
    pub fn too_big(limit: u64) -> Reply {
        Reply::new(
            552,
            "5.3.4",
            format!("message exceeds the size limit of {limit} octets"),
        )
    }

    /// The store is busy or unavailable: try again later (RFC 3463 X.3.0).
    pub fn try_later(what: &str) -> Reply {
        Reply::new(451, "4.3.0", format!("{what}: try again later"))
    }

    /// The message cannot be stored as it is (RFC 3463 X.6.0).
    pub fn bad_message(why: &str) -> Reply {
        Reply::new(554, "5.6.0", format!("message refused: {why}"))
    }

    /// The server is going away (RFC 5321 section 3.8: 421 and close).
    pub fn shutting_down(hostname: &str) -> Reply {
        Reply::new(421, "4.3.2", format!("{hostname} shutting down"))
    }

    /// The connection waited too long for the client (RFC 5321 section 4.5.3.2).
    pub fn timeout(hostname: &str) -> Reply {
        Reply::new(421, "4.4.2", format!("{hostname} timeout; closing"))
    }

    /// Over the connection limit.
    pub fn too_many_connections(hostname: &str) -> Reply {
        Reply::new(421, "4.3.2", format!("{hostname} too many connections"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5321 section 4.2.1: continuation lines use `-`, the last a space; RFC 2034
    /// section 3: the enhanced code follows the reply code on every line.
    #[test]
    fn replies_are_written_as_rfc_5321_4_2_1_says() {
        assert_eq!(Reply::new(250, "2.1.0", "ok").to_wire(), "250 2.1.0 ok\r\n");
        let multi = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["host".into(), "PIPELINING".into(), "SIZE 10".into()],
        };
        assert_eq!(
            multi.to_wire(),
            "250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        // No CR or LF can get into a reply from its text.
        assert_eq!(
            Reply::new(550, "5.1.1", "a\r\nb").to_wire(),
            "550 5.1.1 a  b\r\n"
        );
        let long = Reply::new(250, "2.0.0", "é".repeat(MAX_REPLY_TEXT));
        assert!(long.to_wire().len() <= 512);
    }

    /// RFC 2033 section 4.2 with the codes of RFC 3463: what each delivery outcome says.
    #[test]
    fn delivery_outcomes_carry_their_enhanced_codes() {
        let code = |r: Reply| format!("{} {}", r.code, r.enhanced.unwrap_or("-"));
        assert_eq!(code(Reply::delivered("a")), "250 2.0.0");
        assert_eq!(code(Reply::unknown_user("a")), "550 5.1.1");
        assert_eq!(code(Reply::mailbox_full("a", false)), "552 5.2.2");
        assert_eq!(code(Reply::mailbox_full("a", true)), "452 4.2.2");
        assert_eq!(code(Reply::too_big(1)), "552 5.3.4");
        assert_eq!(code(Reply::try_later("x")), "451 4.3.0");
        assert!(Reply::mailbox_full("a", true).is_transient());
        assert!(Reply::delivered("a").is_positive());
    }
}
