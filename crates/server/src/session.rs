//! One POP3 session: AUTHORIZATION, TRANSACTION and UPDATE (RFC 1939 sections 3 to 6).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::response::{write_end, write_err, write_listing_line, write_ok};
use proto::{Command, CommandError, Decoder, DotStuffer, Secret};
use store::{Account, AccountName, MaildropLock, MessageMeta, Store, StoreError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::maildrop::Maildrop;
use crate::reply::{self, ErrReply, SessionError};
use crate::Shared;

/// Invalid command lines a session may send before it is closed (unknown commands, syntax
/// errors, over-long lines, commands in the wrong state).
pub const MAX_BAD_COMMANDS: u32 = 20;

/// Size of one socket read.
const READ_BUF: usize = 8 * 1024;
/// Replies are batched and written once this much is pending (or no command is left).
const FLUSH_AT: usize = 64 * 1024;
/// Message chunks read ahead of the socket during RETR/TOP; bounds memory per transfer.
const READ_AHEAD_CHUNKS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// The maildrop lock of a logged-in session, renewed in the background while held.
struct HeldLock {
    store: Arc<dyn Store>,
    lock: MaildropLock,
    renewer: JoinHandle<()>,
    lost: Arc<AtomicBool>,
    released: bool,
}

impl HeldLock {
    fn new(store: Arc<dyn Store>, lock: MaildropLock, lease: Duration) -> HeldLock {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew_lock(store.clone(), lock.clone(), lease, lost.clone()));
        HeldLock {
            store,
            lock,
            renewer,
            lost,
            released: false,
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Releases the lock and waits until the store has done it.
    async fn release(mut self) {
        self.released = true;
        self.renewer.abort();
        let (store, lock) = (self.store.clone(), self.lock.clone());
        match tokio::task::spawn_blocking(move || store.release_lock(&lock)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "releasing the maildrop lock failed; it will expire"),
            Err(e) => warn!(error = %e, "releasing the maildrop lock failed; it will expire"),
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if !self.released {
            // A session that ended without `release` (a panic, a cancelled task): release in
            // the background; the lease covers the case where even that fails.
            self.renewer.abort();
            let (store, lock) = (self.store.clone(), self.lock.clone());
            tokio::task::spawn_blocking(move || store.release_lock(&lock));
        }
    }
}

async fn renew_lock(
    store: Arc<dyn Store>,
    lock: MaildropLock,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let mut every = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    every.tick().await;
    loop {
        every.tick().await;
        let (store, lock) = (store.clone(), lock.clone());
        match tokio::task::spawn_blocking(move || store.renew_lock(&lock, lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(StoreError::LockLost)) => {
                warn!("maildrop lock was taken over");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // Busy database and the like: try again at the next tick, within the lease.
            Ok(Err(e)) => warn!(error = %e, "renewing the maildrop lock failed"),
            Err(e) => warn!(error = %e, "renewing the maildrop lock failed"),
        }
    }
}

/// A logged-in session's state.
struct Transaction {
    account: Account,
    maildrop: Maildrop,
    lock: HeldLock,
}

enum State {
    /// `user` is the name of an accepted USER command waiting for PASS.
    Authorization {
        user: Option<String>,
    },
    Transaction(Box<Transaction>),
}

struct Session<S> {
    io: S,
    shared: Arc<Shared>,
    id: u64,
    decoder: Decoder,
    out: Vec<u8>,
    state: State,
    bad_commands: u32,
}

/// Serves one connection until QUIT, a drop, the idle timeout or shutdown.
pub(crate) async fn serve<S>(io: S, peer: SocketAddr, id: u64, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    debug!(%peer, "connected");
    let mut session = Session {
        io,
        shared,
        id,
        decoder: Decoder::new(),
        out: Vec::with_capacity(4096),
        state: State::Authorization { user: None },
        bad_commands: 0,
    };
    if let Err(e) = session.run().await {
        debug!(error = %e, "connection ended");
    }
    // Any way out but QUIT removes nothing (RFC 1939 section 6); just let the lock go.
    if let State::Transaction(t) =
        std::mem::replace(&mut session.state, State::Authorization { user: None })
    {
        t.lock.release().await;
    }
    let _ = session.io.shutdown().await;
    debug!("closed");
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(&mut self) -> io::Result<()> {
        // No APOP timestamp (RFC 1939 section 7) while APOP is not offered: clients such as
        // curl treat a timestamp as an APOP offer and do not fall back to USER/PASS.
        write_ok(&mut self.out, "POP3 server ready");
        let mut shutdown = self.shared.shutdown.clone();
        let mut buf = vec![0u8; READ_BUF];
        loop {
            // Answer every complete command already received, in order (RFC 2449 PIPELINING).
            loop {
                if *shutdown.borrow() {
                    self.send_err(reply::SHUTTING_DOWN);
                    return self.flush().await;
                }
                let flow = match self.decoder.next_command() {
                    Ok(Some(cmd)) => self.handle(cmd).await?,
                    Ok(None) => break,
                    Err(e) => self.bad_command(&e),
                };
                if flow == Flow::Close {
                    return self.flush().await;
                }
                if self.out.len() >= FLUSH_AT {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            let idle = self.shared.config.idle_timeout;
            let n = tokio::select! {
                read = tokio::time::timeout(idle, self.io.read(&mut buf)) => match read {
                    // RFC 1939 section 3: autologout closes without a reply and without UPDATE.
                    Err(_) => {
                        info!("idle timeout; closing without UPDATE");
                        return Ok(());
                    }
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(e),
                },
                _ = shutdown.changed() => continue,
            };
            self.decoder.feed(&buf[..n]);
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let idle = self.shared.config.idle_timeout;
        match tokio::time::timeout(idle, self.io.write_all(&self.out)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading",
                ))
            }
        }
        self.out.clear();
        self.io.flush().await
    }

    fn send_err(&mut self, e: ErrReply) {
        write_err(&mut self.out, e.code, e.text);
    }

    fn bad_command(&mut self, e: &CommandError) -> Flow {
        self.bad_commands += 1;
        debug!(error = %e, count = self.bad_commands, "bad command");
        if self.bad_commands >= MAX_BAD_COMMANDS {
            self.send_err(reply::TOO_MANY_BAD_COMMANDS);
            return Flow::Close;
        }
        self.send_err(reply::command_error(e));
        Flow::Continue
    }

    fn wrong_state(&mut self, text: &'static str) -> Flow {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            self.send_err(reply::TOO_MANY_BAD_COMMANDS);
            return Flow::Close;
        }
        write_err(&mut self.out, None, text);
        Flow::Continue
    }

    async fn handle(&mut self, cmd: Command) -> io::Result<Flow> {
        debug!(command = %cmd.keyword(), "command");
        match &self.state {
            State::Authorization { .. } => self.authorization(cmd).await,
            State::Transaction(t) => {
                if t.lock.is_lost() {
                    self.send_err(reply::session_error(&SessionError::Store(
                        StoreError::LockLost,
                    )));
                    return Ok(Flow::Close);
                }
                self.transaction(cmd).await
            }
        }
    }

    async fn authorization(&mut self, cmd: Command) -> io::Result<Flow> {
        let pending = match &mut self.state {
            State::Authorization { user } => user,
            State::Transaction(_) => return Ok(Flow::Continue),
        };
        match cmd {
            Command::User(name) => {
                // RFC 1939 section 7: USER only after the greeting or a failed USER/PASS.
                if pending.is_some() {
                    return Ok(self.wrong_state("USER already given; send PASS"));
                }
                *pending = Some(name);
                write_ok(&mut self.out, "send PASS");
            }
            Command::Pass(password) => match pending.take() {
                None => return Ok(self.wrong_state("send USER first")),
                Some(name) => self.login(name, password).await,
            },
            Command::Quit => {
                write_ok(&mut self.out, "bye");
                return Ok(Flow::Close);
            }
            Command::Capa => self.capa(),
            Command::Apop { .. } => {
                *pending = None;
                write_err(&mut self.out, None, "APOP is not available on this server");
            }
            Command::Auth { .. } => {
                write_err(&mut self.out, None, "no SASL mechanism is available");
            }
            Command::Stls => write_err(&mut self.out, None, "TLS is not configured"),
            Command::Utf8 | Command::Lang(_) => write_err(&mut self.out, None, "not supported"),
            Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Dele(_)
            | Command::Noop
            | Command::Rset
            | Command::Top { .. }
            | Command::Uidl(_) => return Ok(self.wrong_state("not valid before login")),
        }
        Ok(Flow::Continue)
    }

    /// PASS: check the credentials, take the maildrop lock and list the messages.
    async fn login(&mut self, name: String, password: Secret<Vec<u8>>) {
        match self.open_maildrop(name, password).await {
            Ok(Some(t)) => {
                let (count, octets) = t.maildrop.stat();
                tracing::Span::current().record("user", tracing::field::display(&t.account.name));
                info!(messages = count, octets, "logged in");
                write_ok(
                    &mut self.out,
                    &format!("maildrop has {count} messages ({octets} octets)"),
                );
                self.state = State::Transaction(t);
            }
            Ok(None) => {
                info!("login failed");
                self.send_err(reply::BAD_CREDENTIALS);
            }
            Err(e) => {
                warn!(error = %e, "login could not be completed");
                self.send_err(reply::session_error(&e));
            }
        }
    }

    async fn open_maildrop(
        &self,
        name: String,
        password: Secret<Vec<u8>>,
    ) -> Result<Option<Box<Transaction>>, SessionError> {
        let store = self.shared.store.clone();
        let account = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            // An invalid or unknown name costs a full verification too, and gets the same
            // reply as a wrong password.
            let account = match AccountName::parse(&name) {
                Ok(n) => store.account(&n)?,
                Err(_) => None,
            };
            let stored = account.as_ref().map(|a| a.password_hash.as_str());
            let verdict = auth::verify_password(stored, password.expose());
            Ok(account.filter(|_| verdict == auth::Verdict::Accepted))
        })
        .await??;
        let Some(account) = account else {
            return Ok(None);
        };

        let store = self.shared.store.clone();
        let lease = self.shared.config.lock_lease;
        let holder = store::holder_string(self.id);
        let account_id = account.id;
        let lock =
            tokio::task::spawn_blocking(move || store.lock_maildrop(account_id, &holder, lease))
                .await??;
        // From here the lock is held: every way out below releases it.
        let lock = HeldLock::new(self.shared.store.clone(), lock, lease);
        let store = self.shared.store.clone();
        match tokio::task::spawn_blocking(move || store.list_messages(account_id)).await {
            Ok(Ok(messages)) => Ok(Some(Box::new(Transaction {
                account,
                maildrop: Maildrop::new(messages),
                lock,
            }))),
            Ok(Err(e)) => {
                lock.release().await;
                Err(e.into())
            }
            Err(e) => {
                lock.release().await;
                Err(e.into())
            }
        }
    }

    fn capa(&mut self) {
        write_ok(&mut self.out, "capability list follows");
        for cap in [
            "TOP",
            "UIDL",
            "USER",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            concat!("IMPLEMENTATION pop3d-", env!("CARGO_PKG_VERSION")),
        ] {
            write_listing_line(&mut self.out, cap.as_bytes());
        }
        write_end(&mut self.out);
    }

    async fn transaction(&mut self, cmd: Command) -> io::Result<Flow> {
        let State::Transaction(t) = &mut self.state else {
            return Ok(Flow::Continue);
        };
        let md = &mut t.maildrop;
        match cmd {
            Command::Stat => {
                let (count, octets) = md.stat();
                write_ok(&mut self.out, &format!("{count} {octets}"));
            }
            Command::List(None) => {
                let (count, octets) = md.stat();
                write_ok(
                    &mut self.out,
                    &format!("{count} messages ({octets} octets)"),
                );
                for (n, m) in md.live() {
                    write_listing_line(&mut self.out, format!("{n} {}", m.size).as_bytes());
                }
                write_end(&mut self.out);
            }
            Command::List(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.size)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Uidl(None) => {
                write_ok(&mut self.out, "unique-id listing follows");
                for (n, m) in md.live() {
                    write_listing_line(&mut self.out, format!("{n} {}", m.uid).as_bytes());
                }
                write_end(&mut self.out);
            }
            Command::Uidl(Some(n)) => match md.get(n) {
                Ok(m) => write_ok(&mut self.out, &format!("{n} {}", m.uid)),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Retr(n) => match md.get(n) {
                Ok(m) => {
                    let m = m.clone();
                    write_ok(&mut self.out, &format!("{} octets", m.size));
                    self.send_message(m, None).await?;
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Top { msg, lines } => match md.get(msg) {
                Ok(m) => {
                    let m = m.clone();
                    write_ok(&mut self.out, "top of message follows");
                    self.send_message(m, Some(lines)).await?;
                }
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Dele(n) => match md.delete(n) {
                Ok(()) => write_ok(&mut self.out, &format!("message {n} deleted")),
                Err(e) => self.send_err(reply::number_error(e)),
            },
            Command::Rset => {
                md.reset();
                let (count, octets) = md.stat();
                write_ok(
                    &mut self.out,
                    &format!("maildrop has {count} messages ({octets} octets)"),
                );
            }
            Command::Noop => write_ok(&mut self.out, ""),
            Command::Capa => self.capa(),
            Command::Quit => {
                self.update().await;
                return Ok(Flow::Close);
            }
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::Auth { .. }
            | Command::Stls
            | Command::Utf8 => return Ok(self.wrong_state("already logged in")),
            Command::Lang(_) => write_err(&mut self.out, None, "not supported"),
        }
        Ok(Flow::Continue)
    }

    /// The UPDATE state (RFC 1939 section 6): remove the marked messages in one
    /// transaction, release the lock, say goodbye.
    async fn update(&mut self) {
        let State::Transaction(t) =
            std::mem::replace(&mut self.state, State::Authorization { user: None })
        else {
            return;
        };
        let marked = t.maildrop.marked();
        let result = if marked.is_empty() {
            Ok(())
        } else {
            let store = self.shared.store.clone();
            let lock = t.lock.lock.clone();
            match tokio::task::spawn_blocking(move || store.commit_deletions(&lock, &marked)).await
            {
                Ok(r) => r.map_err(SessionError::from),
                Err(e) => Err(e.into()),
            }
        };
        let deleted = t.maildrop.stat();
        t.lock.release().await;
        match result {
            Ok(()) => {
                let n = t.maildrop.marked().len();
                info!(deleted = n, remaining = deleted.0, "update done");
                write_ok(
                    &mut self.out,
                    &format!("signing off ({n} messages deleted, {} left)", deleted.0),
                );
            }
            Err(e) => {
                warn!(error = %e, "update failed; nothing was deleted");
                let r = reply::session_error(&e);
                write_err(
                    &mut self.out,
                    r.code,
                    &format!("some deleted messages not removed: {}", r.text),
                );
            }
        }
    }

    /// Streams a message (RETR) or its headers and first `lines` body lines (TOP),
    /// dot-stuffed, reading ahead at most a few chunks: a client that stops reading stops
    /// the reading too.
    async fn send_message(&mut self, meta: MessageMeta, lines: Option<u32>) -> io::Result<()> {
        let (tx, mut rx) = mpsc::channel(READ_AHEAD_CHUNKS);
        let store = self.shared.store.clone();
        let id = meta.id;
        tokio::task::spawn_blocking(move || {
            for index in 0.. {
                let item = store.read_chunk(id, index);
                let end = !matches!(item, Ok(Some(_)));
                if tx.blocking_send(item).is_err() || end {
                    return;
                }
            }
        });
        let mut stuffer = DotStuffer::new();
        let mut cut = lines.map(|n| TopCut::new(meta.header_octets, n));
        let mut sent = 0u64;
        while let Some(item) = rx.recv().await {
            let chunk = match item {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    // The +OK is out; the only honest thing left is to drop the connection
                    // so the client does not take a truncated message for a whole one.
                    warn!(error = %e, message = id, "reading a message failed mid-transfer");
                    return Err(io::Error::other("message read failed"));
                }
            };
            let (part, done) = match &mut cut {
                Some(cut) => cut.take(&chunk),
                None => (&chunk[..], false),
            };
            sent += part.len() as u64;
            stuffer.push(part, &mut self.out);
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
            if done {
                break;
            }
        }
        if lines.is_none() && sent != meta.size {
            warn!(
                message = id,
                sent,
                size = meta.size,
                "stored size differs from content"
            );
        }
        stuffer.finish(&mut self.out);
        Ok(())
    }
}

/// Where TOP stops: after the header section and `lines` more line ends.
struct TopCut {
    header_left: u64,
    lines_left: u32,
}

impl TopCut {
    fn new(header_octets: u64, lines: u32) -> TopCut {
        TopCut {
            header_left: header_octets,
            lines_left: lines,
        }
    }

    /// The part of `chunk` that TOP sends, and whether TOP is complete after it.
    fn take<'a>(&mut self, chunk: &'a [u8]) -> (&'a [u8], bool) {
        let header = (self.header_left.min(chunk.len() as u64)) as usize;
        self.header_left -= header as u64;
        if self.header_left > 0 {
            return (chunk, false);
        }
        if self.lines_left == 0 {
            return (&chunk[..header], true);
        }
        for (i, &b) in chunk[header..].iter().enumerate() {
            if b == b'\n' {
                self.lines_left -= 1;
                if self.lines_left == 0 {
                    return (&chunk[..header + i + 1], true);
                }
            }
        }
        (chunk, false)
    }
}

#[cfg(test)]
mod tests {
    use super::TopCut;

    fn top(message: &[u8], header: u64, lines: u32, chunk: usize) -> Vec<u8> {
        let mut cut = TopCut::new(header, lines);
        let mut out = Vec::new();
        for piece in message.chunks(chunk) {
            let (part, done) = cut.take(piece);
            out.extend_from_slice(part);
            if done {
                break;
            }
        }
        out
    }

    #[test]
    fn top_sends_headers_blank_line_and_n_lines() {
        // RFC 1939 section 7 (TOP): the headers, the blank line, then n body lines, or the
        // whole body if it has fewer.
        let msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        let header = 14;
        for chunk in 1..=msg.len() {
            assert_eq!(top(msg, header, 0, chunk), b"A: 1\r\nB: 2\r\n\r\n");
            assert_eq!(
                top(msg, header, 2, chunk),
                b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
            );
            assert_eq!(top(msg, header, 9, chunk), msg);
        }
    }
}
