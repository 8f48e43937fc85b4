//! Command lines to typed commands and back.

use std::fmt;

use crate::Secret;

/// The command keywords this codec knows, for error replies and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyword {
    User,
    Pass,
    Apop,
    Stat,
    List,
    Retr,
    Dele,
    Noop,
    Rset,
    Quit,
    Top,
    Uidl,
    Capa,
    Stls,
    Auth,
    Utf8,
    Lang,
}

impl Keyword {
    pub const ALL: [Keyword; 17] = [
        Keyword::User,
        Keyword::Pass,
        Keyword::Apop,
        Keyword::Stat,
        Keyword::List,
        Keyword::Retr,
        Keyword::Dele,
        Keyword::Noop,
        Keyword::Rset,
        Keyword::Quit,
        Keyword::Top,
        Keyword::Uidl,
        Keyword::Capa,
        Keyword::Stls,
        Keyword::Auth,
        Keyword::Utf8,
        Keyword::Lang,
    ];

    /// The keyword as sent on the wire (upper case).
    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::User => "USER",
            Keyword::Pass => "PASS",
            Keyword::Apop => "APOP",
            Keyword::Stat => "STAT",
            Keyword::List => "LIST",
            Keyword::Retr => "RETR",
            Keyword::Dele => "DELE",
            Keyword::Noop => "NOOP",
            Keyword::Rset => "RSET",
            Keyword::Quit => "QUIT",
            Keyword::Top => "TOP",
            Keyword::Uidl => "UIDL",
            Keyword::Capa => "CAPA",
            Keyword::Stls => "STLS",
            Keyword::Auth => "AUTH",
            Keyword::Utf8 => "UTF8",
            Keyword::Lang => "LANG",
        }
    }

    /// Case-insensitive lookup (RFC 1939 section 3: keywords are case-insensitive).
    pub fn parse(word: &[u8]) -> Option<Keyword> {
        Keyword::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One client command, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    /// The rest of the line after `PASS `, spaces included (RFC 1939 section 7), as octets.
    Pass(Secret<Vec<u8>>),
    Apop {
        name: String,
        digest: String,
    },
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Noop,
    Rset,
    Quit,
    Top {
        msg: u32,
        lines: u32,
    },
    Uidl(Option<u32>),
    Capa,
    Stls,
    /// `AUTH` alone lists mechanisms; the mechanism name is upper-cased.
    Auth {
        mechanism: Option<String>,
        initial_response: Option<Secret<String>>,
    },
    Utf8,
    Lang(Option<String>),
}

/// Why a command line was refused. The session goes on after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("line too long")]
    LineTooLong,
    #[error("empty command line")]
    Empty,
    #[error("unknown command")]
    Unknown,
    #[error("{0} needs an argument")]
    MissingArgument(Keyword),
    #[error("too many arguments to {0}")]
    TooManyArguments(Keyword),
    #[error("invalid message number or count in {0}")]
    InvalidNumber(Keyword),
    #[error("invalid argument to {0}")]
    InvalidArgument(Keyword),
    #[error("command line contains a NUL or control character")]
    ControlCharacter,
    #[error("command line is not valid UTF-8")]
    NotUtf8,
}

impl CommandError {
    /// The command the error is about, when the keyword itself was understood.
    pub fn keyword(&self) -> Option<Keyword> {
        match self {
            CommandError::MissingArgument(kw)
            | CommandError::TooManyArguments(kw)
            | CommandError::InvalidNumber(kw)
            | CommandError::InvalidArgument(kw) => Some(*kw),
            _ => None,
        }
    }
}

impl Command {
    pub fn keyword(&self) -> Keyword {
        match self {
            Command::User(_) => Keyword::User,
            Command::Pass(_) => Keyword::Pass,
            Command::Apop { .. } => Keyword::Apop,
            Command::Stat => Keyword::Stat,
            Command::List(_) => Keyword::List,
            Command::Retr(_) => Keyword::Retr,
            Command::Dele(_) => Keyword::Dele,
            Command::Noop => Keyword::Noop,
            Command::Rset => Keyword::Rset,
            Command::Quit => Keyword::Quit,
            Command::Top { .. } => Keyword::Top,
            Command::Uidl(_) => Keyword::Uidl,
            Command::Capa => Keyword::Capa,
            Command::Stls => Keyword::Stls,
            Command::Auth { .. } => Keyword::Auth,
            Command::Utf8 => Keyword::Utf8,
            Command::Lang(_) => Keyword::Lang,
        }
    }

    /// Parses one command line without its line end.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let (word, rest) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &line[line.len()..]),
        };
        if word.is_empty() && rest.iter().all(|&b| b == b' ') {
            return Err(CommandError::Empty);
        }
        let kw = Keyword::parse(word).ok_or(CommandError::Unknown)?;
        if kw == Keyword::Pass {
            return pass_argument(rest);
        }
        Command::with_arguments(kw, &split_arguments(rest)?)
    }

    /// Builds a command other than PASS from its space-separated arguments.
    fn with_arguments(kw: Keyword, args: &[&str]) -> Result<Command, CommandError> {
        let arity = |min: usize, max: usize| {
            if args.len() < min {
                Err(CommandError::MissingArgument(kw))
            } else if args.len() > max {
                Err(CommandError::TooManyArguments(kw))
            } else {
                Ok(())
            }
        };
        let number = |s: &str| parse_number(s).ok_or(CommandError::InvalidNumber(kw));
        let optional_number = |args: &[&str]| args.first().map(|s| number(s)).transpose();
        Ok(match kw {
            Keyword::User => {
                arity(1, 1)?;
                Command::User(args[0].to_string())
            }
            Keyword::Pass => pass_argument(args.join(" ").as_bytes())?,
            Keyword::Apop => {
                arity(2, 2)?;
                Command::Apop {
                    name: args[0].to_string(),
                    digest: args[1].to_string(),
                }
            }
            Keyword::Stat => arity(0, 0).map(|_| Command::Stat)?,
            Keyword::Noop => arity(0, 0).map(|_| Command::Noop)?,
            Keyword::Rset => arity(0, 0).map(|_| Command::Rset)?,
            Keyword::Quit => arity(0, 0).map(|_| Command::Quit)?,
            Keyword::Capa => arity(0, 0).map(|_| Command::Capa)?,
            Keyword::Stls => arity(0, 0).map(|_| Command::Stls)?,
            Keyword::Utf8 => arity(0, 0).map(|_| Command::Utf8)?,
            Keyword::List => {
                arity(0, 1)?;
                Command::List(optional_number(args)?)
            }
            Keyword::Uidl => {
                arity(0, 1)?;
                Command::Uidl(optional_number(args)?)
            }
            Keyword::Retr => {
                arity(1, 1)?;
                Command::Retr(number(args[0])?)
            }
            Keyword::Dele => {
                arity(1, 1)?;
                Command::Dele(number(args[0])?)
            }
            Keyword::Top => {
                arity(2, 2)?;
                Command::Top {
                    msg: number(args[0])?,
                    lines: number(args[1])?,
                }
            }
            Keyword::Auth => {
                arity(0, 2)?;
                let mechanism = match args.first() {
                    Some(m) if is_mechanism_name(m) => Some(m.to_ascii_uppercase()),
                    Some(_) => return Err(CommandError::InvalidArgument(kw)),
                    None => None,
                };
                Command::Auth {
                    mechanism,
                    initial_response: args.get(1).map(|s| Secret::new(s.to_string())),
                }
            }
            Keyword::Lang => {
                arity(0, 1)?;
                Command::Lang(args.first().map(|s| s.to_string()))
            }
        })
    }

    /// Writes the command line, CRLF included (the client side, and round-trip tests).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.keyword().as_str().as_bytes());
        let mut arg = |a: &[u8]| {
            out.push(b' ');
            out.extend_from_slice(a);
        };
        match self {
            Command::User(name) => arg(name.as_bytes()),
            Command::Pass(pw) => arg(pw.expose()),
            Command::Apop { name, digest } => {
                arg(name.as_bytes());
                arg(digest.as_bytes());
            }
            Command::List(n) | Command::Uidl(n) => {
                if let Some(n) = n {
                    arg(n.to_string().as_bytes());
                }
            }
            Command::Retr(n) | Command::Dele(n) => arg(n.to_string().as_bytes()),
            Command::Top { msg, lines } => {
                arg(msg.to_string().as_bytes());
                arg(lines.to_string().as_bytes());
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                if let Some(m) = mechanism {
                    arg(m.as_bytes());
                }
                if let Some(ir) = initial_response {
                    arg(ir.expose().as_bytes());
                }
            }
            Command::Lang(tag) => {
                if let Some(t) = tag {
                    arg(t.as_bytes());
                }
            }
            Command::Stat
            | Command::Noop
            | Command::Rset
            | Command::Quit
            | Command::Capa
            | Command::Stls
            | Command::Utf8 => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The PASS argument: everything after the one space, including spaces and 8-bit octets
/// (RFC 1939 section 7); only NUL and line-end octets are refused.
fn pass_argument(rest: &[u8]) -> Result<Command, CommandError> {
    if rest.is_empty() {
        return Err(CommandError::MissingArgument(Keyword::Pass));
    }
    if rest.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(CommandError::ControlCharacter);
    }
    Ok(Command::Pass(Secret::new(rest.to_vec())))
}

/// Splits arguments on runs of spaces (and tabs, which some clients send), refusing control
/// octets and invalid UTF-8 (user names may be UTF-8 once RFC 6856 UTF8 is on; the server
/// decides whether non-ASCII is acceptable now).
fn split_arguments(rest: &[u8]) -> Result<Vec<&str>, CommandError> {
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(CommandError::ControlCharacter);
    }
    let rest = std::str::from_utf8(rest).map_err(|_| CommandError::NotUtf8)?;
    Ok(rest.split([' ', '\t']).filter(|a| !a.is_empty()).collect())
}

/// A decimal number of at most ten digits that fits in `u32`; no sign, no spaces.
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().and_then(|n| u32::try_from(n).ok())
}

/// A SASL mechanism name: 1 to 20 of `A-Z 0-9 - _`, case-insensitive (RFC 4422 section 3.1).
fn is_mechanism_name(s: &str) -> bool {
    (1..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(p: &[u8]) -> Command {
        Command::Pass(Secret::new(p.to_vec()))
    }

    #[test]
    fn parses_rfc1939_commands() {
        use Command as C;
        let table: &[(&[u8], Result<Command, CommandError>)] = &[
            (b"USER alice", Ok(C::User("alice".into()))),
            (b"user alice", Ok(C::User("alice".into()))),
            (
                b"UsEr alice@example.org",
                Ok(C::User("alice@example.org".into())),
            ),
            (b"USER", Err(CommandError::MissingArgument(Keyword::User))),
            (
                b"USER a b",
                Err(CommandError::TooManyArguments(Keyword::User)),
            ),
            // RFC 1939 section 7: PASS takes the rest of the line, spaces included.
            (
                b"PASS secret with  spaces ",
                Ok(pass(b"secret with  spaces ")),
            ),
            (b"PASS  lead", Ok(pass(b" lead"))),
            (b"pass \xe9t\xe9", Ok(pass(b"\xe9t\xe9"))),
            (b"PASS", Err(CommandError::MissingArgument(Keyword::Pass))),
            (b"PASS a\0b", Err(CommandError::ControlCharacter)),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22fb",
                Ok(C::Apop {
                    name: "mrose".into(),
                    digest: "c4c9334bac560ecc979e58001b3e22fb".into(),
                }),
            ),
            (
                b"APOP mrose",
                Err(CommandError::MissingArgument(Keyword::Apop)),
            ),
            (b"STAT", Ok(C::Stat)),
            (b"stat ", Ok(C::Stat)),
            (
                b"STAT 1",
                Err(CommandError::TooManyArguments(Keyword::Stat)),
            ),
            (b"LIST", Ok(C::List(None))),
            (b"LIST 2", Ok(C::List(Some(2)))),
            (b"LIST 0", Ok(C::List(Some(0)))),
            (b"LIST 007", Ok(C::List(Some(7)))),
            (b"LIST -1", Err(CommandError::InvalidNumber(Keyword::List))),
            (b"LIST +1", Err(CommandError::InvalidNumber(Keyword::List))),
            (b"LIST 4294967295", Ok(C::List(Some(u32::MAX)))),
            (
                b"LIST 4294967296",
                Err(CommandError::InvalidNumber(Keyword::List)),
            ),
            (
                b"LIST 99999999999999999999",
                Err(CommandError::InvalidNumber(Keyword::List)),
            ),
            (b"LIST x", Err(CommandError::InvalidNumber(Keyword::List))),
            (
                b"LIST 1 2",
                Err(CommandError::TooManyArguments(Keyword::List)),
            ),
            (b"RETR 1", Ok(C::Retr(1))),
            (b"RETR", Err(CommandError::MissingArgument(Keyword::Retr))),
            (b"DELE 3", Ok(C::Dele(3))),
            (b"NOOP", Ok(C::Noop)),
            (b"RSET", Ok(C::Rset)),
            (b"QUIT", Ok(C::Quit)),
            (b"quit", Ok(C::Quit)),
            (b"TOP 1 10", Ok(C::Top { msg: 1, lines: 10 })),
            (b"TOP 1", Err(CommandError::MissingArgument(Keyword::Top))),
            (b"TOP 1 x", Err(CommandError::InvalidNumber(Keyword::Top))),
            (b"UIDL", Ok(C::Uidl(None))),
            (b"UIDL 5", Ok(C::Uidl(Some(5)))),
            (b"CAPA", Ok(C::Capa)),
            (b"STLS", Ok(C::Stls)),
            (b"UTF8", Ok(C::Utf8)),
            (b"LANG", Ok(C::Lang(None))),
            (b"LANG fr", Ok(C::Lang(Some("fr".into())))),
            (
                b"AUTH",
                Ok(C::Auth {
                    mechanism: None,
                    initial_response: None,
                }),
            ),
            (
                b"auth plain AGFsaWNlAHNlY3JldA==",
                Ok(C::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial_response: Some(Secret::new("AGFsaWNlAHNlY3JldA==".into())),
                }),
            ),
            (
                b"AUTH pl@in",
                Err(CommandError::InvalidArgument(Keyword::Auth)),
            ),
            (b"", Err(CommandError::Empty)),
            (b"   ", Err(CommandError::Empty)),
            (b"XTND", Err(CommandError::Unknown)),
            (b"RETRX 1", Err(CommandError::Unknown)),
            (b" STAT", Err(CommandError::Unknown)),
            (b"USER \xff", Err(CommandError::NotUtf8)),
            (b"USER a\x01", Err(CommandError::ControlCharacter)),
        ];
        for (line, expected) in table {
            assert_eq!(
                &Command::parse(line),
                expected,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn debug_of_pass_hides_the_password() {
        let c = Command::parse(b"PASS hunter2").expect("parses");
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Command::parse(b"AUTH PLAIN AGFsaWNlAGh1bnRlcjI=").expect("parses");
        assert!(!format!("{c:?}").contains("AGFsaWNlAGh1bnRlcjI="));
    }

    #[test]
    fn encode_writes_crlf_lines() {
        let mut out = Vec::new();
        Command::Top { msg: 3, lines: 0 }.encode(&mut out);
        Command::Pass(Secret::new(b"a b".to_vec())).encode(&mut out);
        assert_eq!(out, b"TOP 3 0\r\nPASS a b\r\n");
    }
}
