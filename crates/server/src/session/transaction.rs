//! The TRANSACTION state (RFC 1939 section 5): STAT, LIST, UIDL, RETR, TOP, DELE, RSET and
//! NOOP over the maildrop snapshot taken at login; the first command that needs the messages
//! themselves loads the listing of that snapshot. Deletions are only marked here; QUIT
//! applies them (`update`).

use std::io::Write;
use std::time::Duration;

use proto::response::{write_end, write_ok};
use proto::Command;
use store::{Account, Expire, StoreError};
use tracing::{debug, warn};

use super::readahead::{ReadAhead, Retr};
use super::{EndReason, Next, Outgoing, Session, State, Top};
use crate::lang::Text;
use crate::lock::HeldLock;
use crate::maildrop::{Maildrop, Message};
use crate::reply::{self, SessionError};

/// A logged-in session's state.
pub(super) struct Transaction {
    pub account: Account,
    pub maildrop: Maildrop,
    pub lock: HeldLock,
    /// The LOGIN-DELAY and EXPIRE in force for this account (announced by CAPA).
    pub login_delay: Duration,
    pub expire: Expire,
    /// Small messages read ahead for a sequential run of RETRs.
    pub ahead: ReadAhead,
}

impl Session {
    pub(super) async fn transaction(&mut self, cmd: Command) -> Next {
        let uses_messages = matches!(
            cmd,
            Command::List(_)
                | Command::Uidl(_)
                | Command::Retr(_)
                | Command::Top { .. }
                | Command::Dele(_)
        );
        if uses_messages {
            if let Err(next) = self.load_listing().await {
                return next;
            }
        }
        let State::Transaction(t) = &mut self.state else {
            return Next::Continue;
        };
        let account = t.account.id;
        let md = &mut t.maildrop;
        match cmd {
            Command::Stat => {
                let (count, octets) = md.stat();
                write_ok(&mut self.out, &format!("{count} {octets}"));
            }
            Command::List(None) => {
                let (count, octets) = md.stat();
                let status = self.lang.fill(Text::ListFollows, &[&count, &octets]);
                write_listing(&mut self.out, &status, md, |out, m| {
                    write!(out, "{}", m.size)
                });
            }
            Command::List(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.size)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Uidl(None) => {
                let status = self.lang.text(Text::UidlFollows);
                write_listing(&mut self.out, status, md, |out, m| {
                    out.extend_from_slice(m.uid.as_bytes());
                    Ok(())
                });
            }
            Command::Uidl(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.uid)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Retr(n) => match md.get(n) {
                Ok(m) if m.utf8_headers && !self.utf8 => self.send_err(reply::UTF8_NEEDED),
                Ok(m) => {
                    let (id, size, wire) = (m.id, m.size, m.wire);
                    md.mark_retrieved(n);
                    let held = match t.ahead.retr(md, n) {
                        Retr::Held(bytes) => Some(bytes),
                        Retr::Store => None,
                        Retr::Read(plan) => {
                            let store = self.shared.store.clone();
                            let ids: Vec<_> = plan.iter().map(|p| p.id).collect();
                            let read =
                                reply::blocking(move || store.read_first_chunks(account, &ids));
                            match read.await {
                                Ok(read) => t.ahead.fill(&plan, read),
                                // Only an optimisation: the message is read as usual.
                                Err(e) => debug!(error = %e, "read-ahead failed"),
                            }
                            t.ahead.retr_held(n)
                        }
                    };
                    self.tally.retrieved += 1;
                    self.shared.metrics.retrieved();
                    self.tally.retrieved_octets += size;
                    self.ok_with(Text::Octets, &[&size]);
                    return Next::Send(Outgoing {
                        id,
                        size,
                        wire,
                        top: None,
                        held,
                    });
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Top { msg, lines } => match md.get(msg) {
                Ok(m) if m.utf8_headers && !self.utf8 => self.send_err(reply::UTF8_NEEDED),
                Ok(m) => {
                    let (id, size, wire) = (m.id, m.size, m.wire);
                    // The header octets are read here, before the +OK, so a failure is still
                    // a -ERR (the listing leaves them out to stay small).
                    let store = self.shared.store.clone();
                    let header = reply::blocking(move || store.header_octets(account, id)).await;
                    let header_octets = match header {
                        Ok(Some(octets)) => octets,
                        Ok(None) => return self.snapshot_lost(StoreError::LockLost.into()),
                        Err(e) => {
                            warn!(error = %e, message = id, "TOP: reading the header size failed");
                            self.send_err(reply::session_error(&e));
                            return Next::Continue;
                        }
                    };
                    let held = match &mut self.state {
                        State::Transaction(t) => t.ahead.top(msg),
                        State::Authorization(_) => None,
                    };
                    self.tally.top += 1;
                    self.ok(Text::TopFollows);
                    return Next::Send(Outgoing {
                        id,
                        size,
                        wire,
                        top: Some(Top {
                            header_octets,
                            lines,
                        }),
                        held,
                    });
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Dele(n) => match md.delete(n) {
                Ok(()) => {
                    t.ahead.deleted(n);
                    self.ok_with(Text::Deleted, &[&n]);
                }
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

impl Session {
    /// Loads the listing of the login snapshot unless it is loaded; `Err` holds what the
    /// driver does instead of the command. A listing that is no longer the snapshot (messages
    /// of it gone: the lock was taken over, the account deleted) cannot keep the message
    /// numbers of RFC 1939 section 5: answered like a lost lock, and the session ends without
    /// UPDATE. A failing store (busy, unreachable) refuses this command; the next tries again.
    async fn load_listing(&mut self) -> Result<(), Next> {
        let State::Transaction(t) = &self.state else {
            return Ok(());
        };
        if !t.maildrop.needs_listing() {
            return Ok(());
        }
        let store = self.shared.store.clone();
        let (account, snapshot) = (t.account.id, *t.maildrop.snapshot());
        let loaded = reply::blocking(move || store.list_snapshot(account, &snapshot)).await;
        let State::Transaction(t) = &mut self.state else {
            return Ok(());
        };
        match loaded {
            Ok(listing) => match t.maildrop.load(listing) {
                Ok(()) => {
                    debug!(
                        messages = t.maildrop.len(),
                        bytes = t.maildrop.heap_bytes(),
                        "listing loaded"
                    );
                    Ok(())
                }
                Err(_) => Err(self.snapshot_lost(StoreError::LockLost.into())),
            },
            Err(SessionError::Store(StoreError::NoSuchAccount(_))) => {
                Err(self.snapshot_lost(StoreError::LockLost.into()))
            }
            Err(e) => {
                warn!(error = %e, "loading the maildrop listing failed");
                self.send_err(reply::session_error(&e));
                Err(Next::Continue)
            }
        }
    }

    /// The maildrop is no longer the snapshot of login: say so and end without UPDATE.
    fn snapshot_lost(&mut self, e: SessionError) -> Next {
        warn!("messages of the session's snapshot are gone; closing without UPDATE");
        self.send_err(reply::session_error(&e));
        Next::Close(EndReason::SnapshotLost)
    }
}

/// A LIST or UIDL listing (RFC 1939 sections 5 and 7): the status line, then `n value` for
/// every message not marked deleted, written straight into `out` (100,000 lines allocate
/// nothing of their own). A line starts with its number, so none needs dot-stuffing.
fn write_listing(
    out: &mut Vec<u8>,
    status: &str,
    md: &Maildrop,
    value: impl Fn(&mut Vec<u8>, &Message<'_>) -> std::io::Result<()>,
) {
    write_ok(out, status);
    for (n, m) in md.live() {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{n} ").and_then(|()| value(out, &m));
        out.extend_from_slice(b"\r\n");
    }
    write_end(out);
}
