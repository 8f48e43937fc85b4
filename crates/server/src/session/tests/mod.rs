//! The session driven over `tokio::io::duplex` with a SQLite store in a temporary directory:
//! every command in every state (AUTHORIZATION before and after USER, inside an AUTH
//! exchange, TRANSACTION) and the way through UPDATE. Each test names the RFC section it
//! checks. Expected replies are rendered with the same `proto` writers and language table the
//! session uses, so a test states which reply, not how it is spelled.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use auth::Argon2Params;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};
use proto::response::{write_err, write_ok};
use proto::ResponseCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use store::{AccountId, AccountName, AccountPolicy, AccountSecrets, SqliteStore, Store};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod authorization;
mod deadlines;
mod lmtp;
mod readahead;
mod sasl;
mod stls;
mod summary;
mod transaction;
mod update;

use super::{serve, EndReason, MAX_BAD_COMMANDS, SASL_MAX_LINE};
use crate::conn::Conn;
use crate::lang::{self, Text};
use crate::metrics::{Metrics, TimedStore};
use crate::reply::{self, ErrReply};
use crate::tls::{self, Tls, TlsVersion};
use crate::{credcache, hashpool, limits, lock, penalty};
use crate::{Cleartext, Config, ListenerInfo, ListenerKind, Shared, MAX_AUTH_FAILURE_DELAY};

/// The cheapest argon2id the crate accepts, so a login takes microseconds.
const CHEAP: Argon2Params = Argon2Params {
    memory_kib: 8,
    iterations: 1,
    parallelism: 1,
};
const PASSWORD: &str = "right";
/// The peer of most tests: loopback, where cleartext logins are allowed by default.
const LOOPBACK: &str = "127.0.0.1:40000";
/// A peer elsewhere: cleartext logins need TLS (RFC 2595 section 2.2, RFC 8314).
const REMOTE: &str = "192.0.2.7:40000";
/// How long a test waits for any reply.
const PATIENCE: Duration = Duration::from_secs(10);

/// alice's maildrop: message 2 has a body line starting with a dot (dot-stuffing), message 3
/// two header lines and three body lines (TOP).
const MESSAGES: [&str; 3] = [
    "Subject: one\r\n\r\nfirst body\r\n",
    "Subject: two\r\n\r\n.starts with a dot\r\nline 2\r\n",
    "Subject: three\r\nX-Test: y\r\n\r\nb1\r\nb2\r\nb3\r\n",
];
/// carol has one message with UTF-8 headers (RFC 6856).
const UTF8_MESSAGE: &str = "Subject: h\u{e9}llo\r\n\r\nbody\r\n";

/// Test settings: cheap hashes, no failed-login delay, many failures allowed.
fn config() -> Config {
    Config {
        hostname: "pop.test".into(),
        argon2: CHEAP,
        scram_iterations: auth::scram::MIN_ITERATIONS,
        auth_failure_delay: Duration::ZERO,
        max_auth_failures: 100,
        ..Config::default()
    }
}

/// A store with alice (password and legacy secret [`PASSWORD`], [`MESSAGES`]) and carol
/// ([`UTF8_MESSAGE`]), and the [`Shared`] state the server would build over it.
struct Fixture {
    _dir: testbed::TempDir,
    store: Arc<SqliteStore>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    alice: AccountId,
    /// The self-signed certificate, when TLS is configured.
    cert: Option<CertificateDer<'static>>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::build(config(), false)
    }

    /// Without TLS, with the test [`config`] changed by `tune`.
    fn tuned(tune: impl FnOnce(&mut Config)) -> Fixture {
        let mut config = config();
        tune(&mut config);
        Fixture::build(config, false)
    }

    fn build(config: Config, with_tls: bool) -> Fixture {
        let dir = testbed::TempDir::new("session");
        let store = Arc::new(SqliteStore::open(dir.path()).expect("store"));
        let hash = auth::hash_password_with(PASSWORD.as_bytes(), CHEAP).expect("hash");
        let secrets = AccountSecrets {
            legacy_secret: Some(PASSWORD.into()),
            ..AccountSecrets::default()
        };
        let alice = store
            .create_account_with(&name("alice"), &hash, &secrets)
            .expect("alice");
        for m in MESSAGES {
            store
                .deliver(&name("alice"), &mut m.as_bytes(), 1 << 20)
                .expect("deliver");
        }
        store.create_account(&name("carol"), &hash).expect("carol");
        store
            .deliver(&name("carol"), &mut UTF8_MESSAGE.as_bytes(), 1 << 20)
            .expect("deliver");
        let (tls, cert) = if with_tls {
            let (files, _) = tls::self_signed(dir.path(), "localhost").expect("certificate");
            let cert = CertificateDer::from_pem_file(&files.cert).expect("read certificate");
            let tls = Tls::load(vec![files]).expect("load certificate");
            (Some(Arc::new(tls)), Some(cert))
        } else {
            (None, None)
        };
        let (stop, stopped) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        // Timed as the server times it, so a test can count the session's store calls.
        let dyn_store: Arc<dyn Store> = Arc::new(TimedStore::new(store.clone(), &metrics));
        let shared = Arc::new(Shared {
            store: dyn_store.clone(),
            next_session: AtomicU64::new(1),
            shutdown: stopped,
            tls,
            per_client: limits::PerClient::new(config.max_connections_per_ip),
            penalties: penalty::Penalties::new(
                config.auth_failure_delay,
                MAX_AUTH_FAILURE_DELAY,
                config.trusted_networks.clone(),
            ),
            hashing: hashpool::HashPool::new(1, metrics.hash_timings()).expect("hash thread"),
            credentials: credcache::CredentialCache::new(config.credential_cache_ttl),
            locks: lock::Locks::new(dyn_store, config.lock_lease),
            draining: AtomicBool::new(false),
            tickets: auth::ticket::Replay::new(),
            metrics,
            logins: crate::logins::Logins::new(store.clone()),
            config,
        });
        Fixture {
            _dir: dir,
            store,
            shared,
            stop,
            alice,
            cert,
        }
    }

    /// A session on a cleartext listener from a loopback peer, greeting read.
    async fn connect(&self) -> Client {
        self.connect_as(plain(), LOOPBACK).await
    }

    /// A session on `listener` from `peer`, greeting read.
    async fn connect_as(&self, listener: ListenerInfo, peer: &str) -> Client {
        self.connect_buffered(listener, peer, 64 * 1024).await
    }

    /// [`Fixture::connect_as`] over a pipe that holds at most `buffer` octets in flight, so a
    /// client that does not read blocks the session's writes.
    async fn connect_buffered(&self, listener: ListenerInfo, peer: &str, buffer: usize) -> Client {
        let (near, far) = tokio::io::duplex(buffer);
        self.connect_over(listener, peer, near, far).await
    }

    /// A cleartext session whose stream takes vectored writes, as TCP does ([`Vectored`]).
    async fn connect_vectored(&self) -> Client {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let far = Vectored {
            io: far,
            cap: 777,
            writes: Arc::default(),
        };
        self.connect_over(plain(), LOOPBACK, near, far).await
    }

    /// A cleartext session on a roomy pipe whose every write or vectored write is taken
    /// whole and counted in the returned counter (a write of TCP within its send buffer).
    async fn connect_counted(&self) -> (Client, Arc<AtomicUsize>) {
        let (near, far) = tokio::io::duplex(4 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let far = Vectored {
            io: far,
            cap: usize::MAX,
            writes: writes.clone(),
        };
        (
            self.connect_over(plain(), LOOPBACK, near, far).await,
            writes,
        )
    }

    /// A session serving `far`, the client on `near`, greeting read.
    async fn connect_over<S: crate::conn::Stream + 'static>(
        &self,
        listener: ListenerInfo,
        peer: &str,
        near: tokio::io::DuplexStream,
        far: S,
    ) -> Client {
        let peer: SocketAddr = peer.parse().expect("address");
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let slot = self.shared.per_client.try_acquire(peer.ip());
        let session = tokio::spawn(serve(
            Conn::Plain(far),
            peer,
            peer,
            id,
            listener,
            shared,
            slot,
        ));
        let mut c = Client {
            io: BufReader::new(Box::new(near)),
            session,
            greeting: String::new(),
        };
        c.greeting = c.line().await;
        assert!(c.greeting.starts_with("+OK "), "{}", c.greeting);
        c
    }

    /// A session on an implicit-TLS listener (RFC 8314), handshake done, greeting read.
    async fn connect_tls(&self) -> Client {
        self.connect_tls_with(rustls::DEFAULT_VERSIONS).await.0
    }

    /// [`Fixture::connect_tls`] with a client that speaks `versions`, and the connection's
    /// channel binding as the client computes it: RFC 9266's exporter on TLS 1.3, RFC 5929's
    /// hash of the server certificate (ECDSA with SHA-256 here) on TLS 1.2.
    async fn connect_tls_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Client, auth::ChannelBinding) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = REMOTE.parse().expect("address");
        let shared = self.shared.clone();
        let tls = shared.tls.clone().expect("TLS configured");
        let listener = ListenerInfo {
            kind: ListenerKind::ImplicitTls,
            ..plain()
        };
        let session = tokio::spawn(async move {
            let stream = tls.acceptor(TlsVersion::Tls12).accept(far).await;
            let conn = Conn::Tls(Box::new(stream.expect("server handshake")));
            serve(conn, peer, peer, 1, listener, shared, None).await
        });
        let stream = self.client_tls_with(near, versions).await;
        let binding = client_binding(stream.get_ref().1);
        let mut c = Client {
            io: BufReader::new(Box::new(stream)),
            session,
            greeting: String::new(),
        };
        c.greeting = c.line().await;
        (c, binding)
    }

    /// The client side of a TLS handshake over `io`, trusting the fixture's certificate.
    async fn client_tls(&self, io: Box<dyn Io>) -> Box<dyn Io> {
        Box::new(self.client_tls_with(io, rustls::DEFAULT_VERSIONS).await)
    }

    async fn client_tls_with<I: Io>(
        &self,
        io: I,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::client::TlsStream<I> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.clone().expect("TLS configured"))
            .expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("localhost").expect("name");
        tokio::time::timeout(PATIENCE, connector.connect(name, io))
            .await
            .expect("handshake in time")
            .expect("client handshake")
    }

    /// alice's maildrop still holds every message: nothing was deleted.
    fn untouched(&self) {
        assert_eq!(self.stored(self.alice), MESSAGES.len(), "nothing deleted");
    }

    /// How many times the sessions called the store's `operation` (its metrics' count).
    fn store_calls(&self, operation: &str) -> u64 {
        let series =
            format!(r#"pop3d_store_call_duration_seconds_count{{operation="{operation}"}} "#);
        self.shared
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    }

    /// The number of messages in a maildrop, as the store has it.
    fn stored(&self, account: AccountId) -> usize {
        self.store.list_messages(account).expect("list").len()
    }
}

/// The channel binding of a client's TLS connection (see [`Fixture::connect_tls_with`]).
fn client_binding(conn: &rustls::ClientConnection) -> auth::ChannelBinding {
    if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        let data = conn
            .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .expect("exporter");
        auth::ChannelBinding {
            name: auth::ChannelBinding::TLS_EXPORTER,
            data,
        }
    } else {
        let cert = &conn.peer_certificates().expect("certificate")[0];
        let data = ring::digest::digest(&ring::digest::SHA256, cert);
        auth::ChannelBinding {
            name: auth::ChannelBinding::TLS_SERVER_END_POINT,
            data: data.as_ref().to_vec(),
        }
    }
}

fn name(s: &str) -> AccountName {
    AccountName::parse(s).expect("name")
}

/// A cleartext listener with the default policy.
fn plain() -> ListenerInfo {
    ListenerInfo {
        kind: ListenerKind::Plain,
        min_tls: TlsVersion::Tls12,
        cleartext: Cleartext::Loopback,
        proxied: false,
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The test's end of the connection: writes lines, reads replies.
struct Client {
    io: BufReader<Box<dyn Io>>,
    session: JoinHandle<EndReason>,
    greeting: String,
}

/// A pipe that takes vectored writes as TCP's `writev` does, but at most `cap` octets at a
/// time, cut anywhere across the slices, so a RETR's vectored path and its partial writes run
/// in the unit tests (a plain `DuplexStream` writes one slice per call). Every write call
/// that takes octets is counted in `writes`.
pub(super) struct Vectored {
    io: tokio::io::DuplexStream,
    cap: usize,
    writes: Arc<AtomicUsize>,
}

impl crate::conn::Stream for Vectored {}

impl Vectored {
    fn count(&self, written: &std::task::Poll<std::io::Result<usize>>) {
        if matches!(written, std::task::Poll::Ready(Ok(n)) if *n > 0) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Vectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Vectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&written);
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let gathered: Vec<u8> = bufs
            .iter()
            .flat_map(|b| b.iter().copied())
            .take(self.cap)
            .collect();
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, &gathered);
        self.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Client {
    /// Writes `data` as it is (several commands in one write pipeline them).
    async fn send(&mut self, data: &str) {
        self.io.write_all(data.as_bytes()).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// One reply line, without its CRLF.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, self.io.read_line(&mut line))
            .await
            .expect("a reply in time")
            .expect("read");
        assert!(n > 0, "the session closed the connection");
        assert!(line.ends_with("\r\n"), "{line:?}");
        line.truncate(line.len() - 2);
        line
    }

    /// Sends one command line and returns the reply's first line.
    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.line().await
    }

    /// The lines of a multi-line reply after its status line, up to the `.`.
    async fn body(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            if line == "." {
                return lines;
            }
            lines.push(line);
        }
    }

    /// A command with a multi-line reply: its `+OK` line is checked, its body returned.
    async fn multi(&mut self, line: &str, status: &str) -> Vec<String> {
        assert_eq!(self.cmd(line).await, status, "{line}");
        self.body().await
    }

    /// The session closes the connection (nothing more is sent) and its task ends.
    async fn closed(self) {
        let rest = self.last_bytes().await;
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }

    /// What the session sends until it closes the connection; its task ends.
    async fn last_bytes(self) -> Vec<u8> {
        self.ended().await.0
    }

    /// What the session sends until it closes the connection, and why it ended.
    async fn ended(mut self) -> (Vec<u8>, EndReason) {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, self.io.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        let reason = tokio::time::timeout(PATIENCE, &mut self.session)
            .await
            .expect("session ended")
            .expect("session task");
        (rest, reason)
    }

    /// USER and PASS for alice.
    async fn login(&mut self) {
        assert_eq!(self.cmd("USER alice").await, ok(Text::SendPass));
        assert_eq!(
            self.cmd("PASS right").await,
            logged_in(3, octets(&MESSAGES))
        );
    }

    /// The client side of STLS after its `+OK` (RFC 2595 section 4).
    async fn starttls(&mut self, f: &Fixture) {
        assert!(
            self.io.buffer().is_empty(),
            "nothing may follow the STLS +OK"
        );
        let placeholder = BufReader::new(Box::new(tokio::io::duplex(1).0) as Box<dyn Io>);
        let io = std::mem::replace(&mut self.io, placeholder).into_inner();
        self.io = BufReader::new(f.client_tls(io).await);
    }
}

fn render(write: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    write(&mut out);
    let line = String::from_utf8(out).expect("UTF-8");
    line.trim_end_matches("\r\n").to_string()
}

fn text(t: Text) -> &'static str {
    lang::default_language().text(t)
}

fn fill(t: Text, args: &[&dyn std::fmt::Display]) -> String {
    lang::default_language().fill(t, args)
}

fn ok(t: Text) -> String {
    render(|o| write_ok(o, text(t)))
}

fn ok_with(t: Text, args: &[&dyn std::fmt::Display]) -> String {
    render(|o| write_ok(o, &fill(t, args)))
}

fn ok_bare(line: &str) -> String {
    render(|o| write_ok(o, line))
}

fn err(e: ErrReply) -> String {
    render(|o| write_err(o, e.code, text(e.text)))
}

/// `-ERR` without a response code.
fn refused(t: Text) -> String {
    err(ErrReply {
        code: None,
        text: t,
    })
}

fn logged_in(count: usize, octets: u64) -> String {
    ok_with(Text::LoggedIn, &[&count, &octets])
}

fn octets(messages: &[&str]) -> u64 {
    messages.iter().map(|m| m.len() as u64).sum()
}

/// A fixture and a session on it, greeting read.
async fn started() -> (Fixture, Client) {
    let f = Fixture::new();
    let c = f.connect().await;
    (f, c)
}

/// The reply to alice's login: her whole maildrop.
fn full_login() -> String {
    logged_in(MESSAGES.len(), octets(&MESSAGES))
}

/// STAT on alice's whole maildrop.
fn full_stat() -> String {
    ok_bare(&format!("{} {}", MESSAGES.len(), octets(&MESSAGES)))
}

/// AUTH PLAIN for alice with an initial response (RFC 4616).
fn auth_plain(password: &str) -> String {
    format!("AUTH PLAIN {}", b64(&format!("\0alice\0{password}")))
}

/// APOP for alice (RFC 1939 section 7).
fn apop(digest: &str) -> String {
    format!("APOP alice {digest}")
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// The commands of the TRANSACTION state (RFC 1939 section 5), as sent.
const TRANSACTION_COMMANDS: [&str; 10] = [
    "STAT", "LIST", "LIST 1", "UIDL", "UIDL 1", "RETR 1", "TOP 1 0", "DELE 1", "RSET", "NOOP",
];
