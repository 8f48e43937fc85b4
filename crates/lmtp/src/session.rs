//! One LMTP session as a state machine (RFC 2033, over RFC 5321's transaction): it takes one
//! command and says what the caller must do next ([`Next`]), the way `auth::sasl::Step` does.
//! It never looks an account up and never stores anything: RCPT hands the address to the
//! caller ([`Next::CheckRecipient`]), DATA asks it to read the message ([`Next::ReadData`]),
//! and the end of the message hands it the [`Envelope`] to deliver, one reply per recipient.

use crate::address::{clean_sender, is_address};
use crate::command::{Body, Command, CommandError};
use crate::reply::Reply;

/// Bad commands after which the session is closed (`421`).
pub const MAX_BAD_COMMANDS: u32 = 20;

/// RFC 5321 section 4.5.3.1.8: at least 100 recipients must be buffered; more get `452`.
pub const MAX_RECIPIENTS: usize = 100;

/// What the session needs to know of its server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The name in the greeting and the LHLO reply.
    pub hostname: String,
    /// Largest message taken (RFC 1870 `SIZE`), before the header lines a delivery adds.
    pub max_size: u64,
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// As the client wrote it (for the replies).
    pub address: String,
    /// What the caller found it to be (the account name).
    pub account: String,
}

/// A mail transaction: who sends, to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path, cleaned ([`clean_sender`]); empty for the null sender.
    pub from: String,
    /// The size the client declared (RFC 1870).
    pub size: Option<u64>,
    pub body: Body,
    pub recipients: Vec<Recipient>,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send the reply, go on.
    Reply(Reply),
    /// RCPT: look the address up, then answer with [`Session::recipient_found`] or a refusal
    /// of the caller's own ([`Reply::unknown_user`]).
    CheckRecipient(String),
    /// DATA: send `reply` (354), then read the message (at most `limit` octets of it kept)
    /// and hand its end to [`Session::message_read`].
    ReadData { reply: Reply, limit: u64 },
    /// Send the reply and close the connection.
    Close(Reply),
}

#[derive(Debug)]
enum State {
    /// Before LHLO (RFC 2033 section 4.1: nothing else starts a session).
    Start,
    /// After LHLO, no transaction.
    Ready,
    /// After MAIL, taking recipients.
    Mail(Envelope),
    /// Reading the message.
    Data(Envelope),
}

/// One session's state.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    state: State,
    bad_commands: u32,
}

impl Session {
    pub fn new(limits: Limits) -> Session {
        Session {
            limits,
            state: State::Start,
            bad_commands: 0,
        }
    }

    /// The greeting (RFC 5321 section 4.2: no enhanced code on it, RFC 2034 section 3).
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} LMTP ready", self.limits.hostname))
    }

    /// The reply to LHLO: the capabilities (RFC 2033 section 4.1, RFC 2920, 2034, 6152, 1870).
    fn capabilities(&self) -> Reply {
        Reply {
            code: 250,
            enhanced: None,
            lines: vec![
                self.limits.hostname.clone(),
                "PIPELINING".into(),
                "ENHANCEDSTATUSCODES".into(),
                "8BITMIME".into(),
                format!("SIZE {}", self.limits.max_size),
            ],
        }
    }

    /// Takes one decoded line.
    pub fn command(&mut self, command: Result<Command, CommandError>) -> Next {
        let command = match command {
            Ok(c) => c,
            Err(e) => return self.bad(refusal(&e)),
        };
        let ok = |text: &str| Next::Reply(Reply::new(250, "2.0.0", text));
        match command {
            Command::Lhlo(_) => {
                // RFC 5321 section 4.1.4: like EHLO, it clears any transaction.
                self.state = State::Ready;
                Next::Reply(self.capabilities())
            }
            Command::Mail { from, size, body } => self.mail(from, size, body),
            Command::Rcpt(to) => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                if !matches!(self.state, State::Start) {
                    self.state = State::Ready;
                }
                ok("OK")
            }
            Command::Noop => ok("OK"),
            // RFC 5321 section 3.5.3: 252, neither confirmed nor denied.
            Command::Vrfy => Next::Reply(Reply::new(252, "2.0.0", "cannot VRFY; send the mail")),
            Command::Help => Next::Reply(Reply::new(
                214,
                "2.0.0",
                "LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY",
            )),
            Command::Quit => Next::Close(Reply::new(
                221,
                "2.0.0",
                format!("{} closing", self.limits.hostname),
            )),
        }
    }

    fn mail(&mut self, from: String, size: Option<u64>, body: Body) -> Next {
        match self.state {
            State::Start => return self.bad(out_of_order("LHLO first")),
            State::Mail(_) | State::Data(_) => {
                return self.bad(out_of_order("nested MAIL command"))
            }
            State::Ready => {}
        }
        let Ok(from) = clean_sender(&from) else {
            return self.bad(Reply::new(553, "5.1.7", "bad sender address syntax"));
        };
        // RFC 1870 section 6.2: a declared size over the limit is refused at MAIL.
        if size.is_some_and(|s| s > self.limits.max_size) {
            return Next::Reply(Reply::too_big(self.limits.max_size));
        }
        self.state = State::Mail(Envelope {
            from,
            size,
            body,
            recipients: Vec::new(),
        });
        Next::Reply(Reply::new(250, "2.1.0", "sender OK"))
    }

    fn rcpt(&mut self, to: String) -> Next {
        let State::Mail(envelope) = &self.state else {
            return self.bad(out_of_order("MAIL first"));
        };
        if envelope.recipients.len() >= MAX_RECIPIENTS {
            return Next::Reply(Reply::new(452, "4.5.3", "too many recipients"));
        }
        if !is_address(&to) {
            return self.bad(Reply::new(553, "5.1.3", "bad recipient address syntax"));
        }
        Next::CheckRecipient(to)
    }

    /// The caller found the account `account` for `address`, which RCPT named.
    pub fn recipient_found(&mut self, address: String, account: String) -> Reply {
        match &mut self.state {
            State::Mail(envelope) if envelope.recipients.len() < MAX_RECIPIENTS => {
                let reply = Reply::new(250, "2.1.5", format!("<{address}> OK"));
                envelope.recipients.push(Recipient { address, account });
                reply
            }
            State::Mail(_) => Reply::new(452, "4.5.3", "too many recipients"),
            _ => Reply::new(503, "5.5.1", "MAIL first"),
        }
    }

    fn data(&mut self) -> Next {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(envelope) if !envelope.recipients.is_empty() => {
                self.state = State::Data(envelope);
                Next::ReadData {
                    reply: Reply::plain(354, "end data with <CR><LF>.<CR><LF>"),
                    limit: self.limits.max_size,
                }
            }
            // RFC 2033 section 4.2: DATA without a successful RCPT fails with 503.
            State::Mail(envelope) => {
                self.state = State::Mail(envelope);
                self.bad(out_of_order("no valid recipients"))
            }
            other => {
                self.state = other;
                self.bad(out_of_order("MAIL first"))
            }
        }
    }

    /// The message was read to its final `.`: the envelope to deliver, or, for a message over
    /// the limit, the reply for each recipient (RFC 2033 section 4.2: one per recipient,
    /// in RCPT order). The session is back after LHLO either way.
    pub fn message_read(&mut self, over_limit: bool) -> Result<Envelope, Vec<Reply>> {
        let State::Data(envelope) = std::mem::replace(&mut self.state, State::Ready) else {
            return Err(Vec::new());
        };
        if over_limit {
            let reply = Reply::too_big(self.limits.max_size);
            return Err(envelope.recipients.iter().map(|_| reply.clone()).collect());
        }
        Ok(envelope)
    }

    /// Whether a transaction is open (MAIL given).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Mail(_) | State::Data(_))
    }

    /// A refusal that counts toward [`MAX_BAD_COMMANDS`].
    fn bad(&mut self, reply: Reply) -> Next {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            return Next::Close(Reply::new(421, "4.7.0", "too many errors; closing"));
        }
        Next::Reply(reply)
    }
}

fn out_of_order(text: &str) -> Reply {
    Reply::new(503, "5.5.1", text)
}

/// The reply to a line that is no command (RFC 5321 section 4.2.4; codes of RFC 3463
/// section 3.6).
fn refusal(e: &CommandError) -> Reply {
    let text = e.to_string();
    match e {
        CommandError::LineTooLong => Reply::new(500, "5.5.2", text),
        CommandError::Unknown | CommandError::NotLmtp => Reply::new(500, "5.5.1", text),
        CommandError::Syntax => Reply::new(501, "5.5.4", text),
        CommandError::BadPath => Reply::new(501, "5.1.3", text),
        CommandError::UnknownParameter => Reply::new(555, "5.5.4", text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse;

    fn session() -> Session {
        Session::new(Limits {
            hostname: "mx.test".into(),
            max_size: 1000,
        })
    }

    /// The reply (first line, without CRLF) to `line`, with every RCPT found as itself.
    fn say(s: &mut Session, line: &str) -> String {
        let next = s.command(parse(line.as_bytes()));
        let reply = match next {
            Next::Reply(r) | Next::Close(r) | Next::ReadData { reply: r, .. } => r,
            Next::CheckRecipient(a) => s.recipient_found(a.clone(), a),
        };
        reply
            .to_wire()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// RFC 2033 section 4.1 and RFC 5321 section 4.1.4: the order of commands.
    #[test]
    fn commands_out_of_order_get_503_5_5_1() {
        let mut s = session();
        assert_eq!(s.greeting().to_wire(), "220 mx.test LMTP ready\r\n");
        assert_eq!(say(&mut s, "MAIL FROM:<a@b>"), "503 5.5.1 LHLO first");
        assert_eq!(say(&mut s, "RCPT TO:<a@b>"), "503 5.5.1 MAIL first");
        assert_eq!(say(&mut s, "DATA"), "503 5.5.1 MAIL first");
        assert_eq!(say(&mut s, "LHLO c"), "250 SIZE 1000");
        assert_eq!(say(&mut s, "DATA"), "503 5.5.1 MAIL first");
        assert_eq!(say(&mut s, "MAIL FROM:<a@b>"), "250 2.1.0 sender OK");
        assert_eq!(
            say(&mut s, "MAIL FROM:<a@b>"),
            "503 5.5.1 nested MAIL command"
        );
        // RFC 2033 section 4.2: DATA without a successful RCPT is 503.
        assert_eq!(say(&mut s, "DATA"), "503 5.5.1 no valid recipients");
        assert_eq!(say(&mut s, "RCPT TO:<c@d>"), "250 2.1.5 <c@d> OK");
        assert_eq!(say(&mut s, "RSET"), "250 2.0.0 OK");
        assert!(!s.in_transaction());
        assert_eq!(say(&mut s, "RCPT TO:<c@d>"), "503 5.5.1 MAIL first");
        assert_eq!(
            say(&mut s, "EHLO x"),
            "500 5.5.1 HELO and EHLO are SMTP; LMTP says LHLO"
        );
        assert_eq!(
            say(&mut s, "VRFY a"),
            "252 2.0.0 cannot VRFY; send the mail"
        );
        assert_eq!(say(&mut s, "NOOP"), "250 2.0.0 OK");
        assert_eq!(say(&mut s, "QUIT"), "221 2.0.0 mx.test closing");
    }

    /// The LHLO reply lists the capabilities without enhanced codes (RFC 2034 section 3).
    #[test]
    fn lhlo_offers_pipelining_enhancedstatuscodes_8bitmime_and_size() {
        let mut s = session();
        let Next::Reply(r) = s.command(parse(b"LHLO client")) else {
            panic!("a reply")
        };
        assert_eq!(
            r.to_wire(),
            "250-mx.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
             250 SIZE 1000\r\n"
        );
    }

    /// RFC 1870 section 6.2: a declared SIZE over the limit is refused at MAIL (552 5.3.4);
    /// RFC 5321 section 4.1.2: a bad reverse path is refused (553 5.1.7).
    #[test]
    fn mail_checks_size_and_sender() {
        let mut s = session();
        say(&mut s, "LHLO c");
        assert_eq!(
            say(&mut s, "MAIL FROM:<a@b> SIZE=1001"),
            "552 5.3.4 message exceeds the size limit of 1000 octets"
        );
        assert_eq!(
            say(&mut s, "MAIL FROM:<a b@c>"),
            "553 5.1.7 bad sender address syntax"
        );
        assert_eq!(
            say(&mut s, "MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME"),
            "250 2.1.0 sender OK"
        );
        assert_eq!(
            say(&mut s, "RCPT TO:<x y>"),
            "553 5.1.3 bad recipient address syntax"
        );
    }

    /// RFC 2033 section 4.2: after the message, one reply per accepted recipient; a message
    /// over the limit gets 552 5.3.4 for each.
    #[test]
    fn the_end_of_data_hands_over_the_envelope_or_a_refusal_per_recipient() {
        let mut s = session();
        for line in ["LHLO c", "MAIL FROM:<>", "RCPT TO:<a@x>", "RCPT TO:<b@x>"] {
            say(&mut s, line);
        }
        let next = s.command(parse(b"DATA"));
        assert!(
            matches!(next, Next::ReadData { limit: 1000, .. }),
            "{next:?}"
        );
        let envelope = s.message_read(false).expect("to deliver");
        assert_eq!(envelope.from, "");
        let to: Vec<_> = envelope.recipients.iter().map(|r| &r.account[..]).collect();
        assert_eq!(to, ["a@x", "b@x"]);
        assert!(!s.in_transaction());
        for line in ["MAIL FROM:<a@b>", "RCPT TO:<a@x>", "RCPT TO:<b@x>", "DATA"] {
            say(&mut s, line);
        }
        let replies = s.message_read(true).expect_err("too big");
        assert_eq!(replies.len(), 2);
        assert!(replies
            .iter()
            .all(|r| r.code == 552 && r.enhanced == Some("5.3.4")));
    }

    /// RFC 5321 section 4.5.3.1.8: 100 recipients are taken, more get 452 4.5.3.
    #[test]
    fn more_than_100_recipients_get_452() {
        let mut s = session();
        say(&mut s, "LHLO c");
        say(&mut s, "MAIL FROM:<a@b>");
        for i in 0..MAX_RECIPIENTS {
            assert_eq!(
                say(&mut s, &format!("RCPT TO:<u{i}@x>")),
                format!("250 2.1.5 <u{i}@x> OK")
            );
        }
        assert_eq!(
            say(&mut s, "RCPT TO:<z@x>"),
            "452 4.5.3 too many recipients"
        );
    }

    /// A client that only sends garbage is closed after MAX_BAD_COMMANDS refusals.
    #[test]
    fn too_many_bad_commands_close_the_session() {
        let mut s = session();
        for _ in 1..MAX_BAD_COMMANDS {
            assert!(matches!(s.command(parse(b"BOGUS")), Next::Reply(_)));
        }
        let Next::Close(r) = s.command(parse(b"BOGUS")) else {
            panic!("closed")
        };
        assert_eq!(r.code, 421);
    }
}
