//! The LMTP listener (RFC 2033): an MTA (Postfix's `lmtp` transport, say) hands mail over on a
//! TCP socket of trusted peers or on a Unix socket, and each recipient's copy is stored through
//! [`Store::deliver`], as `popadm deliver` stores it, with the same `Return-Path:` and
//! `Delivered-To:` lines ([`lmtp::lda_headers`]).
//!
//! The codec and the state machine are the `lmtp` crate's; this module is the driver: reads with
//! a deadline, answers every complete command in order (PIPELINING), batches replies until no
//! whole command is left, looks recipients up (bare names in the default domain, as a POP3
//! login does), spools the message, then stores one copy per recipient and answers for each
//! (RFC 2033 section 4.2).
//!
//! Nothing is stored before the final `.` of DATA has been read, and each copy is one store
//! transaction: a client that goes away mid-DATA, or a pop3d that is killed, leaves nothing
//! half-stored. The message is spooled in memory up to [`SPOOL_IN_MEMORY`] octets, then in an
//! unlinked temporary file, never more than the size limit (the rest is read and dropped, and
//! every recipient gets `552 5.3.4`). Connections count against the server's connection cap
//! and end with shutdown like POP3 sessions: a session waiting for a command is answered
//! `421` at once, one inside a transaction finishes it first (up to the shutdown grace).

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lmtp::{DataStatus, Decoder, Envelope, Next, Reply, Session};
use store::{AccountName, Store, StoreError, DEFAULT_MAX_MESSAGE_SIZE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn, Instrument};

use crate::metrics::LmtpDelivery;
use crate::{RefusalLog, Shared, TrustedProxies, REFUSAL_TIMEOUT};

/// A message up to this size is spooled in memory, a larger one in a temporary file.
pub const SPOOL_IN_MEMORY: usize = 1 << 20;

/// RFC 5321 section 4.5.3.2.7: a server waits at least 5 minutes for the next command (and,
/// here, for each read inside DATA and each write of replies).
pub const LMTP_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest the last words (a `421`) and the close wait for the client (at most the timeout).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest read from the client at once.
const READ_CHUNK: usize = 64 * 1024;

/// The LMTP settings.
#[derive(Debug, Clone)]
pub struct LmtpConfig {
    /// Peers the TCP listeners serve; others are closed unanswered (LMTP carries no
    /// authentication, RFC 2033 section 1).
    pub trusted_networks: TrustedProxies,
    /// Largest message taken (RFC 1870 `SIZE`), without the lines the delivery adds.
    pub max_message_size: u64,
    /// A full mailbox is a temporary failure (`452 4.2.2`, the MTA retries) rather than a
    /// permanent one (`552 5.2.2`, the message bounces).
    pub quota_full_temporary: bool,
    /// How long a read from or write to the client may wait.
    pub timeout: Duration,
}

impl Default for LmtpConfig {
    /// Loopback peers only, the store's default size limit (64 MiB), a full mailbox bounces,
    /// RFC 5321's 5 minutes per read or write.
    fn default() -> LmtpConfig {
        LmtpConfig {
            trusted_networks: TrustedProxies::loopback(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            quota_full_temporary: false,
            timeout: LMTP_TIMEOUT,
        }
    }
}

/// Untrusted peers closed at accept, logged at most once a second (with how many were not).
static UNTRUSTED: RefusalLog = RefusalLog::new();

/// An LMTP listener on a Unix socket its caller bound (and gave its mode and group).
#[derive(Debug)]
pub struct UnixListener {
    pub socket: tokio::net::UnixListener,
    pub path: PathBuf,
}

/// Serves LMTP on a TCP listener: peers outside `lmtp.trusted_networks` are closed unanswered.
pub(crate) async fn accept_tcp(
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !shared.config.lmtp.trusted_networks.contains(peer.ip()) {
            UNTRUSTED.note(
                peer,
                "LMTP peer not in lmtp_trusted_networks; closed unanswered",
            );
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        start(stream, peer.to_string(), &shared, &slots, &refusals);
    }
}

/// Serves LMTP on a Unix socket (whoever may open it is trusted: its mode and group decide).
pub(crate) async fn accept_unix(
    listener: UnixListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
) {
    let peer = format!("unix:{}", listener.path.display());
    loop {
        match listener.socket.accept().await {
            Ok((stream, _)) => start(stream, peer.clone(), &shared, &slots, &refusals),
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A session in a task of its own, holding one of the server's connection slots; over the
/// cap it is answered `421` (while few refusals are in flight) and closed.
fn start<S>(
    stream: S,
    peer: String,
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    refusals: &Arc<Semaphore>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("lmtp", id, peer = %peer);
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        let Ok(refusal) = refusals.clone().try_acquire_owned() else {
            debug!(parent: &span, "connection limit reached; closed unanswered");
            return;
        };
        let reply = Reply::too_many_connections(&shared.config.hostname);
        tokio::spawn(
            async move {
                warn!("connection limit reached; refusing");
                let mut stream = stream;
                let mut out = Vec::new();
                reply.write(&mut out);
                let _ = tokio::time::timeout(REFUSAL_TIMEOUT, stream.write_all(&out)).await;
                drop(refusal);
            }
            .instrument(span),
        );
        return;
    };
    let shared = shared.clone();
    tokio::spawn(
        async move {
            serve(stream, shared).await;
            drop(permit);
        }
        .instrument(span),
    );
}

/// Why a session ended before QUIT.
#[derive(Debug)]
enum End {
    /// The client closed the connection (mid-DATA or between commands).
    Gone,
    /// A read or write waited too long.
    Timeout,
    Io(std::io::Error),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> End {
        End::Io(e)
    }
}

/// One LMTP session over any stream.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, shared: Arc<Shared>) {
    let mut driver = Driver {
        session: Session::new(lmtp::Limits {
            hostname: shared.config.hostname.clone(),
            max_size: shared.config.lmtp.max_message_size,
        }),
        decoder: Decoder::new(),
        out: Vec::new(),
        stream,
        shutdown: shared.shutdown.clone(),
        shared,
    };
    let close = CLOSE_TIMEOUT.min(driver.shared.config.lmtp.timeout);
    debug!("LMTP session started");
    match driver.run().await {
        Ok(()) => debug!("LMTP session ended"),
        Err(End::Gone) if driver.session.in_transaction() => {
            info!("client went away inside a transaction; nothing stored")
        }
        Err(End::Gone) => debug!("client closed the connection"),
        Err(End::Timeout) => {
            info!("LMTP client timed out; closing");
            // A client that stopped reading gets no second long wait for this one.
            let mut out = Vec::new();
            Reply::timeout(&driver.shared.config.hostname).write(&mut out);
            let _ = tokio::time::timeout(close, driver.stream.write_all(&out)).await;
        }
        Err(End::Io(e)) => debug!(error = %e, "LMTP connection failed"),
    }
    let _ = tokio::time::timeout(close, driver.stream.shutdown()).await;
}

struct Driver<S> {
    session: Session,
    decoder: Decoder,
    /// Replies not yet written.
    out: Vec<u8>,
    stream: S,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    async fn run(&mut self) -> Result<(), End> {
        self.session.greeting().write(&mut self.out);
        loop {
            // Every whole command buffered is answered before the replies go out together
            // (RFC 2920 section 3: a server may batch its replies).
            while let Some(command) = self.decoder.next_command().transpose() {
                match self.session.command(command) {
                    Next::Reply(reply) => reply.write(&mut self.out),
                    Next::CheckRecipient(address) => {
                        let reply = self.recipient(address).await;
                        reply.write(&mut self.out);
                    }
                    Next::ReadData { reply, limit } => {
                        reply.write(&mut self.out);
                        self.flush().await?;
                        self.data(limit).await?;
                    }
                    Next::Close(reply) => {
                        reply.write(&mut self.out);
                        return self.flush().await;
                    }
                }
            }
            self.flush().await?;
            if *self.shutdown.borrow() && !self.session.in_transaction() {
                Reply::shutting_down(&self.shared.config.hostname).write(&mut self.out);
                return self.flush().await;
            }
            self.read().await?;
        }
    }

    /// Reads more from the client (bounded by the timeout). Between transactions a shutdown
    /// ends the wait: the session is answered `421` in `run`.
    async fn read(&mut self) -> Result<(), End> {
        let mut buf = [0u8; READ_CHUNK];
        let timeout = self.shared.config.lmtp.timeout;
        let idle = !self.session.in_transaction();
        let mut shutdown = self.shutdown.clone();
        let read = tokio::select! {
            read = tokio::time::timeout(timeout, self.stream.read(&mut buf)) => read,
            _ = shutdown.wait_for(|s| *s), if idle => return Ok(()),
        };
        match read {
            Err(_) => Err(End::Timeout),
            Ok(Ok(0)) => Err(End::Gone),
            Ok(Ok(n)) => {
                self.decoder.feed(&buf[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(End::Io(e)),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.shared.config.lmtp.timeout;
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }

    /// RCPT: the account the address names (a bare name in the default domain), or `550`.
    async fn recipient(&mut self, address: String) -> Reply {
        match crate::verify::lookup(&self.shared, address.clone(), false).await {
            Ok(Some(account)) => self
                .session
                .recipient_found(address, account.name.to_string()),
            Ok(None) => {
                self.shared
                    .metrics
                    .lmtp_delivery(LmtpDelivery::UnknownRecipient);
                Reply::unknown_user(&address)
            }
            Err(e) => {
                warn!(error = %e, "looking up an LMTP recipient");
                Reply::try_later("recipient lookup failed")
            }
        }
    }

    /// DATA after its 354: reads the message into a spool, then stores it for every recipient
    /// and writes one reply each.
    async fn data(&mut self, limit: u64) -> Result<(), End> {
        self.decoder.start_data(limit);
        let mut spool = Spool::default();
        let mut chunk = Vec::with_capacity(READ_CHUNK);
        let over_limit = loop {
            chunk.clear();
            let status = self.decoder.read_data(&mut chunk);
            spool.push(&chunk).await?;
            match status {
                DataStatus::Done { over_limit, .. } => break over_limit,
                DataStatus::NeedMore => self.read().await?,
            }
        };
        let envelope = match self.session.message_read(over_limit) {
            Ok(envelope) => envelope,
            Err(replies) => {
                info!("message over the size limit refused");
                for reply in replies {
                    self.shared.metrics.lmtp_delivery(LmtpDelivery::TooLarge);
                    reply.write(&mut self.out);
                }
                return Ok(());
            }
        };
        let spooled = spool.finish().await?;
        let store = self.shared.store.clone();
        let config = self.shared.config.lmtp.clone();
        // The deliveries are logged in the session's span, on the blocking thread too.
        let span = tracing::Span::current();
        let replies = tokio::task::spawn_blocking(move || {
            span.in_scope(|| deliver_all(&*store, &envelope, spooled, &config))
        })
        .await
        .map_err(|e| End::Io(std::io::Error::other(e)))?;
        for (reply, outcome) in replies {
            self.shared.metrics.lmtp_delivery(outcome);
            reply.write(&mut self.out);
        }
        Ok(())
    }
}

/// The message as it is read: in memory, and once it passes [`SPOOL_IN_MEMORY`], in an
/// unlinked temporary file written from a blocking thread a megabyte at a time.
#[derive(Default)]
struct Spool {
    memory: Vec<u8>,
    file: Option<std::fs::File>,
}

/// A whole message, ready to be read once per recipient.
enum Spooled {
    Memory(Vec<u8>),
    File(std::fs::File),
}

impl Spool {
    async fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.memory.extend_from_slice(bytes);
        if self.memory.len() >= SPOOL_IN_MEMORY {
            self.spill().await?;
        }
        Ok(())
    }

    /// Appends what is in memory to the file (made now if needed).
    async fn spill(&mut self) -> std::io::Result<()> {
        let memory = std::mem::take(&mut self.memory);
        let file = self.file.take();
        let file = tokio::task::spawn_blocking(move || {
            let mut file = match file {
                Some(f) => f,
                None => store::unlinked_file(&std::env::temp_dir(), "pop3d-lmtp")?,
            };
            file.write_all(&memory)?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.file = Some(file);
        Ok(())
    }

    async fn finish(mut self) -> std::io::Result<Spooled> {
        if self.file.is_none() {
            return Ok(Spooled::Memory(self.memory));
        }
        self.spill().await?;
        self.file
            .map(Spooled::File)
            .ok_or_else(|| std::io::Error::other("spool file gone"))
    }
}

/// Stores one copy per recipient, each in its own transaction, and says how each went
/// (RFC 2033 section 4.2: in RCPT order), with the outcome each counts as in the metrics.
/// Runs on a blocking thread.
fn deliver_all(
    store: &dyn Store,
    envelope: &Envelope,
    mut spooled: Spooled,
    config: &LmtpConfig,
) -> Vec<(Reply, LmtpDelivery)> {
    envelope
        .recipients
        .iter()
        .map(|rcpt| {
            let name = match AccountName::parse(&rcpt.account) {
                Ok(name) => name,
                Err(_) => {
                    return (
                        Reply::unknown_user(&rcpt.address),
                        LmtpDelivery::UnknownRecipient,
                    )
                }
            };
            let headers = lmtp::lda_headers(Some(&envelope.from), &rcpt.account);
            // The limit is the message's: the lines added here do not count against it.
            let limit = config.max_message_size.saturating_add(headers.len() as u64);
            let result = match &mut spooled {
                Spooled::Memory(bytes) => {
                    let mut message = Read::chain(Cursor::new(headers), &bytes[..]);
                    store.deliver(&name, &mut message, limit)
                }
                Spooled::File(file) => match file.seek(SeekFrom::Start(0)) {
                    Ok(_) => {
                        let body = std::io::BufReader::with_capacity(128 * 1024, &*file);
                        let mut message = Read::chain(Cursor::new(headers), body);
                        store.deliver(&name, &mut message, limit)
                    }
                    Err(e) => Err(StoreError::Io(e)),
                },
            };
            match result {
                Ok(d) => {
                    info!(to = %name, from = %envelope.from, size = d.size, uid = %d.uid, "delivered");
                    (Reply::delivered(&rcpt.address), LmtpDelivery::Delivered)
                }
                Err(e) => {
                    warn!(to = %name, error = %e, "LMTP delivery failed");
                    (
                        delivery_reply(&e, &rcpt.address, config),
                        delivery_outcome(&e),
                    )
                }
            }
        })
        .collect()
}

/// The reply for a copy the store refused (RFC 2033 section 4.2, codes of RFC 3463).
fn delivery_reply(e: &StoreError, recipient: &str, config: &LmtpConfig) -> Reply {
    match e {
        StoreError::OverQuota { .. } => Reply::mailbox_full(recipient, config.quota_full_temporary),
        StoreError::TooLarge { .. } => Reply::too_big(config.max_message_size),
        // Deleted between RCPT and the end of DATA.
        StoreError::NoSuchAccount(_) => Reply::unknown_user(recipient),
        StoreError::InvalidMessage(why) => Reply::bad_message(why),
        // Busy, full, I/O, the database: the MTA keeps the message and tries again.
        _ => Reply::try_later("mail store unavailable"),
    }
}

/// What a copy the store refused counts as in `pop3d_lmtp_deliveries_total`.
fn delivery_outcome(e: &StoreError) -> LmtpDelivery {
    match e {
        StoreError::OverQuota { .. } => LmtpDelivery::OverQuota,
        StoreError::TooLarge { .. } => LmtpDelivery::TooLarge,
        StoreError::NoSuchAccount(_) => LmtpDelivery::UnknownRecipient,
        StoreError::InvalidMessage(_) => LmtpDelivery::Invalid,
        _ => LmtpDelivery::TempFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2033 section 4.2 with RFC 3463's codes: each store refusal, per recipient.
    #[test]
    fn store_errors_map_to_lmtp_replies() {
        let config = LmtpConfig::default();
        let temporary = LmtpConfig {
            quota_full_temporary: true,
            ..LmtpConfig::default()
        };
        let over = || StoreError::OverQuota {
            account: "alice".into(),
            detail: "10 of 10 messages".into(),
        };
        let code = |r: Reply| format!("{} {}", r.code, r.enhanced.unwrap_or("-"));
        let io = || StoreError::Io(std::io::Error::other("disk"));
        let cases: Vec<(StoreError, &LmtpConfig, &str)> = vec![
            (over(), &config, "552 5.2.2"),
            (over(), &temporary, "452 4.2.2"),
            (
                StoreError::TooLarge { size: 2, limit: 1 },
                &config,
                "552 5.3.4",
            ),
            (StoreError::NoSuchAccount("a".into()), &config, "550 5.1.1"),
            (StoreError::Busy, &config, "451 4.3.0"),
            (StoreError::Full, &config, "451 4.3.0"),
            (io(), &config, "451 4.3.0"),
            (StoreError::Backend("gone".into()), &config, "451 4.3.0"),
            (StoreError::InvalidMessage("empty"), &config, "554 5.6.0"),
        ];
        for (e, config, want) in cases {
            assert_eq!(code(delivery_reply(&e, "alice", config)), want, "{e}");
        }
    }
}
