//! The TRANSACTION state (RFC 1939 section 5): STAT, LIST, UIDL, RETR, TOP, DELE, RSET and
//! NOOP over the maildrop listing taken at login. Deletions are only marked here; QUIT
//! applies them (`update`).

use std::time::Duration;

use proto::response::{write_end, write_listing_line, write_ok};
use proto::Command;
use store::{Account, Expire, MessageMeta};

use super::{EndReason, Next, Session, State};
use crate::lang::Text;
use crate::lock::HeldLock;
use crate::maildrop::Maildrop;
use crate::reply;

/// A logged-in session's state.
pub(super) struct Transaction {
    pub account: Account,
    pub maildrop: Maildrop,
    pub lock: HeldLock,
    /// The LOGIN-DELAY and EXPIRE in force for this account (announced by CAPA).
    pub login_delay: Duration,
    pub expire: Expire,
}

impl Session {
    pub(super) async fn transaction(&mut self, cmd: Command) -> Next {
        let State::Transaction(t) = &mut self.state else {
            return Next::Continue;
        };
        let md = &mut t.maildrop;
        match cmd {
            Command::Stat => {
                let (count, octets) = md.stat();
                write_ok(&mut self.out, &format!("{count} {octets}"));
            }
            Command::List(None) => {
                let (count, octets) = md.stat();
                let status = self.lang.fill(Text::ListFollows, &[&count, &octets]);
                write_listing(&mut self.out, &status, md, |m| m.size.to_string());
            }
            Command::List(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.size)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Uidl(None) => {
                let status = self.lang.text(Text::UidlFollows);
                write_listing(&mut self.out, status, md, |m| m.uid.clone());
            }
            Command::Uidl(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.uid)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Retr(n) => match md.get(n) {
                Ok(m) if m.utf8_headers && !self.utf8 => self.send_err(reply::UTF8_NEEDED),
                Ok(m) => {
                    let meta = m.clone();
                    md.mark_retrieved(n);
                    self.tally.retrieved += 1;
                    self.shared.metrics.retrieved();
                    self.tally.retrieved_octets += meta.size;
                    self.ok_with(Text::Octets, &[&meta.size]);
                    return Next::Send { meta, lines: None };
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Top { msg, lines } => match md.get(msg) {
                Ok(m) if m.utf8_headers && !self.utf8 => self.send_err(reply::UTF8_NEEDED),
                Ok(m) => {
                    let meta = m.clone();
                    self.tally.top += 1;
                    self.ok(Text::TopFollows);
                    return Next::Send {
                        meta,
                        lines: Some(lines),
                    };
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Dele(n) => match md.delete(n) {
                Ok(()) => self.ok_with(Text::Deleted, &[&n]),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Rset => {
                md.reset();
                let (count, octets) = md.stat();
                self.ok_with(Text::LoggedIn, &[&count, &octets]);
            }
            Command::Noop => write_ok(&mut self.out, ""),
            Command::Quit => {
                self.update().await;
                return Next::Close(EndReason::Quit);
            }
            Command::Utf8 => return self.wrong_state(Text::Utf8Refused),
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::Auth { .. }
            | Command::Stls => return self.wrong_state(Text::AfterLogin),
            Command::Capa | Command::Lang(_) => {}
        }
        Next::Continue
    }
}

/// A LIST or UIDL listing (RFC 1939 sections 5 and 7): the status line, then `n value` for
/// every message not marked deleted.
fn write_listing(
    out: &mut Vec<u8>,
    status: &str,
    md: &Maildrop,
    value: impl Fn(&MessageMeta) -> String,
) {
    write_ok(out, status);
    for (n, m) in md.live() {
        write_listing_line(out, format!("{n} {}", value(m)).as_bytes());
    }
    write_end(out);
}
