//! The session driven over `tokio::io::duplex` with a SQLite store in a temporary directory:
//! every command in every state (AUTHORIZATION before and after USER, inside an AUTH
//! exchange, TRANSACTION) and the way through UPDATE. Each test names the RFC section it
//! checks. Expected replies are rendered with the same `proto` writers and language table the
//! session uses, so a test states which reply, not how it is spelled.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

use super::{serve, MAX_BAD_COMMANDS};
use crate::conn::Conn;
use crate::lang::{self, Text};
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
        auth_failure_delay: Duration::ZERO,
        max_auth_failures: 100,
        ..Config::default()
    }
}

/// A store with alice (password and legacy secret [`PASSWORD`], [`MESSAGES`]) and carol
/// ([`UTF8_MESSAGE`]), and the [`Shared`] state the server would build over it.
struct Fixture {
    _dir: tempfile::TempDir,
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

    fn build(config: Config, with_tls: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
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
        let dyn_store: Arc<dyn Store> = store.clone();
        let shared = Arc::new(Shared {
            store: dyn_store.clone(),
            next_session: AtomicU64::new(1),
            shutdown: stopped,
            tls,
            per_client: limits::PerClient::new(config.max_connections_per_ip),
            penalties: penalty::Penalties::new(config.auth_failure_delay, MAX_AUTH_FAILURE_DELAY),
            hashing: hashpool::HashPool::new(1).expect("hash thread"),
            credentials: credcache::CredentialCache::new(config.credential_cache_ttl),
            locks: lock::Locks::new(dyn_store, config.lock_lease),
            draining: AtomicBool::new(false),
            tickets: auth::ticket::Replay::new(),
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
        let (near, far) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = peer.parse().expect("address");
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let session = tokio::spawn(serve(Conn::Plain(far), peer, peer, id, listener, shared));
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
            serve(conn, peer, peer, 1, listener, shared).await;
        });
        let mut c = Client {
            io: BufReader::new(Box::new(tokio::io::duplex(1).0)),
            session,
            greeting: String::new(),
        };
        c.io = BufReader::new(self.client_tls(Box::new(near)).await);
        c.greeting = c.line().await;
        c
    }

    /// The client side of a TLS handshake over `io`, trusting the fixture's certificate.
    async fn client_tls(&self, io: Box<dyn Io>) -> Box<dyn Io> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.clone().expect("TLS configured"))
            .expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("localhost").expect("name");
        let stream = tokio::time::timeout(PATIENCE, connector.connect(name, io))
            .await
            .expect("handshake in time")
            .expect("client handshake");
        Box::new(stream)
    }

    /// The number of messages in a maildrop, as the store has it.
    fn stored(&self, account: AccountId) -> usize {
        self.store.list_messages(account).expect("list").len()
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
    session: JoinHandle<()>,
    greeting: String,
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
    async fn closed(mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, self.io.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        tokio::time::timeout(PATIENCE, &mut self.session)
            .await
            .expect("session ended")
            .expect("session task");
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

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// The commands of the TRANSACTION state (RFC 1939 section 5), as sent.
const TRANSACTION_COMMANDS: [&str; 10] = [
    "STAT", "LIST", "LIST 1", "UIDL", "UIDL 1", "RETR 1", "TOP 1 0", "DELE 1", "RSET", "NOOP",
];

// --- AUTHORIZATION, before USER ---------------------------------------------------------

/// RFC 1939 section 4: the greeting, then QUIT in AUTHORIZATION: `+OK`, the connection
/// closed, and no UPDATE (nothing in the maildrop changes).
#[tokio::test]
async fn rfc1939_s4_quit_in_authorization_closes_without_update() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.greeting, ok_bare(&f.shared.config.greeting));
    assert_eq!(c.cmd("QUIT").await, ok(Text::Bye));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3);
}

/// RFC 1939 section 4: the TRANSACTION commands are refused before login, and the session
/// goes on (a wrong-state command counts as a bad one, nothing more).
#[tokio::test]
async fn rfc1939_s4_transaction_commands_before_user_are_refused() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    for line in TRANSACTION_COMMANDS {
        assert_eq!(c.cmd(line).await, refused(Text::BeforeLogin), "{line}");
    }
    c.login().await;
}

/// RFC 1939 section 7: PASS needs a USER first; USER then PASS logs in and the reply names
/// the maildrop's size.
#[tokio::test]
async fn rfc1939_s7_pass_before_user_is_refused_then_user_pass_logs_in() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    c.login().await;
    assert_eq!(
        c.cmd("STAT").await,
        ok_bare(&format!("3 {}", octets(&MESSAGES)))
    );
}

/// RFC 1939 section 7, RFC 3206: a wrong password is `-ERR [AUTH]` and forgets the USER;
/// an unknown user is answered the same way.
#[tokio::test]
async fn rfc1939_s7_rfc3206_wrong_password_is_auth_error_and_forgets_user() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(c.cmd("USER nobody").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS right").await, err(reply::BAD_CREDENTIALS));
    c.login().await;
}

/// RFC 1939 section 7 (and RFC 5034 section 4 for AUTH): after `max_auth_failures` failed
/// logins the connection is closed with `-ERR [AUTH]`.
#[tokio::test]
async fn rfc1939_s7_too_many_failed_logins_close_the_connection() {
    let f = Fixture::build(
        Config {
            max_auth_failures: 2,
            ..config()
        },
        false,
    );
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    let plain = b64("\0alice\0wrong");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {plain}")).await,
        err(reply::TOO_MANY_AUTH_FAILURES)
    );
    c.closed().await;
}

/// RFC 1939 section 7: APOP is refused when the greeting carried no timestamp (legacy
/// authentication off).
#[tokio::test]
async fn rfc1939_s7_apop_without_timestamp_is_refused() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert!(!c.greeting.contains('<'), "{}", c.greeting);
    let digest = "0".repeat(32);
    assert_eq!(
        c.cmd(&format!("APOP alice {digest}")).await,
        refused(Text::ApopUnavailable)
    );
    c.login().await;
}

/// RFC 1939 section 7: APOP with the MD5 of the greeting's timestamp and the secret logs in;
/// a wrong digest is `-ERR [AUTH]`. APOP after USER forgets the USER.
#[tokio::test]
async fn rfc1939_s7_apop_digest_of_the_greeting_timestamp_logs_in() {
    let f = Fixture::build(
        Config {
            legacy_auth: true,
            ..config()
        },
        false,
    );
    let mut c = f.connect().await;
    let start = c.greeting.find('<').expect("timestamp");
    let timestamp = c.greeting[start..].to_string();
    assert!(timestamp.ends_with("@pop.test>"), "{timestamp}");
    let digest: String = Md5::digest(format!("{timestamp}{PASSWORD}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    let wrong = "0".repeat(32);
    assert_eq!(
        c.cmd(&format!("APOP alice {wrong}")).await,
        err(reply::BAD_CREDENTIALS)
    );
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(
        c.cmd(&format!("APOP alice {digest}")).await,
        logged_in(3, octets(&MESSAGES))
    );
}

/// RFC 2449 section 5: CAPA in AUTHORIZATION lists USER (cleartext allowed from loopback),
/// the SASL mechanisms, PIPELINING and the rest; from a remote peer without TLS there is no
/// USER and no cleartext mechanism.
#[tokio::test]
async fn rfc2449_s5_capa_before_login_depends_on_the_link() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    for cap in [
        "USER",
        "PIPELINING",
        "UIDL",
        "TOP",
        "RESP-CODES",
        "AUTH-RESP-CODE",
    ] {
        assert!(caps.iter().any(|c| c == cap), "{cap} in {caps:?}");
    }
    assert!(caps
        .iter()
        .any(|c| c.starts_with("SASL ") && c.contains("PLAIN")));
    assert!(!caps.iter().any(|c| c == "STLS"), "{caps:?}");
    let mut remote = f.connect_as(plain(), REMOTE).await;
    let caps = remote.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(|c| c == "USER"), "{caps:?}");
    assert!(!caps.iter().any(|c| c.contains("PLAIN")), "{caps:?}");
}

/// RFC 2595 section 2.2, RFC 8314 section 3: without TLS, a remote peer's USER, PASS and
/// cleartext SASL mechanisms are refused with `-ERR [AUTH]`.
#[tokio::test]
async fn rfc2595_s2_2_cleartext_credentials_refused_before_tls() {
    let f = Fixture::new();
    let mut c = f.connect_as(plain(), REMOTE).await;
    assert_eq!(c.cmd("USER alice").await, err(reply::CLEARTEXT_REFUSED));
    assert_eq!(c.cmd("PASS right").await, err(reply::CLEARTEXT_REFUSED));
    assert_eq!(
        c.cmd("AUTH PLAIN").await,
        err(reply::CLEARTEXT_REFUSED),
        "PLAIN is not offered here"
    );
    let mut never = f
        .connect_as(
            ListenerInfo {
                cleartext: Cleartext::Never,
                ..plain()
            },
            LOOPBACK,
        )
        .await;
    assert_eq!(never.cmd("USER alice").await, err(reply::CLEARTEXT_REFUSED));
}

/// RFC 1939 section 13 (KPOP): a Kerberos-only listener refuses USER, PASS and APOP.
#[tokio::test]
async fn rfc1939_kpop_listener_refuses_user_pass_apop() {
    let f = Fixture::new();
    let kpop = ListenerInfo {
        kind: ListenerKind::Kpop,
        ..plain()
    };
    let mut c = f.connect_as(kpop, LOOPBACK).await;
    assert_eq!(c.cmd("USER alice").await, err(reply::KERBEROS_ONLY));
    assert_eq!(c.cmd("PASS right").await, err(reply::KERBEROS_ONLY));
    let digest = "0".repeat(32);
    assert_eq!(
        c.cmd(&format!("APOP alice {digest}")).await,
        err(reply::KERBEROS_ONLY)
    );
    // No GSSAPI configured: no mechanism at all.
    assert!(c
        .multi("AUTH", &ok(Text::MechanismsFollow))
        .await
        .is_empty());
}

/// RFC 2449 section 4 and RFC 1939 section 3: unknown commands and syntax errors are
/// `-ERR`, the session goes on, and after [`MAX_BAD_COMMANDS`] it is closed.
#[tokio::test]
async fn rfc2449_s4_bad_commands_are_refused_until_the_limit() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    assert_eq!(c.cmd("RETR x").await, refused(Text::InvalidNumber));
    assert_eq!(c.cmd("USER").await, refused(Text::MissingArgument));
    assert_eq!(c.cmd("").await, refused(Text::EmptyCommand));
    let long = "X".repeat(300);
    assert_eq!(c.cmd(&long).await, refused(Text::LineTooLong));
    c.login().await;
    for _ in 5..MAX_BAD_COMMANDS - 1 {
        assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    }
    assert_eq!(c.cmd("XYZZY").await, err(reply::TOO_MANY_BAD_COMMANDS));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3);
}

/// RFC 6856 section 3: UTF8 in AUTHORIZATION turns UTF8 mode on; a non-ASCII USER needs it
/// (`-ERR [UTF8]` before).
#[tokio::test]
async fn rfc6856_s3_utf8_before_login_and_non_ascii_user() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    let utf8_refused = err(ErrReply {
        code: Some(ResponseCode::Utf8),
        text: Text::NotAscii,
    });
    assert_eq!(c.cmd("USER j\u{f6}rg").await, utf8_refused);
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    assert_eq!(c.cmd("USER j\u{f6}rg").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS right").await, err(reply::BAD_CREDENTIALS));
}

/// RFC 6856 section 4: LANG lists the languages, switches (`*`: the default), refuses an
/// unknown tag, in AUTHORIZATION before and after USER and in TRANSACTION.
#[tokio::test]
async fn rfc6856_s4_lang_in_every_state() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    let langs = c.multi("LANG", &ok(Text::LangFollows)).await;
    assert!(langs.iter().any(|l| l.starts_with("en ")), "{langs:?}");
    assert_eq!(c.cmd("LANG xx-unknown").await, refused(Text::LangUnknown));
    assert_eq!(c.cmd("LANG *").await, ok(Text::LangSet));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("LANG en").await, ok(Text::LangSet));
    assert_eq!(c.multi("LANG", &ok(Text::LangFollows)).await, langs);
    // The pending USER survived LANG.
    assert_eq!(c.cmd("PASS right").await, logged_in(3, octets(&MESSAGES)));
    assert_eq!(c.cmd("LANG *").await, ok(Text::LangSet));
    assert_eq!(c.multi("LANG", &ok(Text::LangFollows)).await, langs);
}

// --- AUTHORIZATION, after USER ----------------------------------------------------------

/// RFC 1939 section 7: after USER, the TRANSACTION commands, a second USER, UTF8, CAPA and
/// LANG leave the pending USER in place; PASS then logs in.
#[tokio::test]
async fn rfc1939_s7_commands_after_user_keep_the_pending_user() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    for line in TRANSACTION_COMMANDS {
        assert_eq!(c.cmd(line).await, refused(Text::BeforeLogin), "{line}");
    }
    assert_eq!(c.cmd("USER bob").await, refused(Text::UserGiven));
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsUnconfigured));
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    assert_eq!(c.cmd("PASS right").await, logged_in(3, octets(&MESSAGES)));
}

/// RFC 1939 section 7, RFC 5034 section 4: AUTH after USER starts afresh: the pending USER
/// is forgotten, whether AUTH lists the mechanisms, names an unknown one or runs.
#[tokio::test]
async fn rfc5034_s4_auth_after_user_forgets_the_user() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    c.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("AUTH FOO").await, refused(Text::UnknownMechanism));
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, refused(Text::AuthCancelled));
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
}

/// RFC 1939 section 4: QUIT after USER ends the session without UPDATE.
#[tokio::test]
async fn rfc1939_s4_quit_after_user_closes() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("QUIT").await, ok(Text::Bye));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3);
}

// --- AUTH (SASL) ---------------------------------------------------------------------------

/// RFC 5034 section 4: bare AUTH lists the mechanisms; AUTH PLAIN with an initial response
/// logs in at once (RFC 4616).
#[tokio::test]
async fn rfc5034_s4_auth_plain_with_initial_response() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    let mechs = c.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert!(mechs.iter().any(|m| m == "PLAIN"), "{mechs:?}");
    assert!(
        !mechs.iter().any(|m| m == "CRAM-MD5"),
        "legacy off: {mechs:?}"
    );
    let plain = b64("\0alice\0right");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {plain}")).await,
        logged_in(3, octets(&MESSAGES))
    );
}

/// RFC 5034 section 4: AUTH LOGIN over two challenges; each response is one base64 line.
#[tokio::test]
async fn rfc5034_s4_auth_login_challenges_and_responses() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert!(c.cmd("AUTH LOGIN").await.starts_with("+ "));
    assert!(c.cmd(&b64("alice")).await.starts_with("+ "));
    assert_eq!(c.cmd(&b64("right")).await, logged_in(3, octets(&MESSAGES)));
}

/// RFC 5034 section 4: `*` cancels the exchange with `-ERR`, and the session is back in
/// AUTHORIZATION.
#[tokio::test]
async fn rfc5034_s4_star_cancels_the_exchange() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, refused(Text::AuthCancelled));
    c.login().await;
}

/// RFC 5034 section 4: a response that is not base64 ends the exchange with `-ERR`; so does
/// an initial response that is not.
#[tokio::test]
async fn rfc5034_s4_bad_base64_ends_the_exchange() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("not base64!").await, refused(Text::BadBase64));
    assert_eq!(
        c.cmd("AUTH PLAIN not-base64!").await,
        refused(Text::BadBase64)
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(
        c.cmd(&b64("\0alice\0right")).await,
        logged_in(3, octets(&MESSAGES))
    );
}

/// RFC 5034 section 4: an unknown mechanism is refused and the session goes on; a failed
/// exchange is `-ERR [AUTH]` (RFC 3206).
#[tokio::test]
async fn rfc5034_s4_unknown_mechanism_and_failed_exchange() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("AUTH FOO").await, refused(Text::UnknownMechanism));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(
        c.cmd(&b64("\0alice\0wrong")).await,
        err(reply::BAD_CREDENTIALS)
    );
    assert_eq!(c.cmd("AUTH LOGIN").await.get(..2), Some("+ "));
    c.cmd(&b64("nobody")).await;
    assert_eq!(c.cmd(&b64("right")).await, err(reply::BAD_CREDENTIALS));
    c.login().await;
}

/// RFC 5034 section 4: inside the exchange every line is a SASL response, whatever it looks
/// like: a command line there ends the exchange with `-ERR` (not base64, or a malformed
/// response) and is never run as a command.
#[tokio::test]
async fn rfc5034_s4_commands_inside_the_exchange_are_responses() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    let mut lines: Vec<&str> = TRANSACTION_COMMANDS.to_vec();
    lines.extend([
        "USER alice",
        "PASS right",
        "APOP alice 0",
        "AUTH PLAIN",
        "STLS",
        "UTF8",
        "LANG",
        "CAPA",
        "QUIT",
    ]);
    for line in lines {
        assert_eq!(c.cmd("AUTH PLAIN").await, "+ ", "{line}");
        let reply = c.cmd(line).await;
        assert!(
            reply == refused(Text::BadBase64) || reply == err(reply::BAD_CREDENTIALS),
            "{line}: {reply}"
        );
    }
    c.login().await;
}

/// RFC 5034 section 4: a response line longer than the SASL line limit ends the exchange as
/// a bad command; the session reads commands again.
#[tokio::test]
async fn rfc5034_s4_overlong_response_ends_the_exchange() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    let long = "A".repeat(super::SASL_MAX_LINE + 10);
    assert_eq!(c.cmd(&long).await, refused(Text::LineTooLong));
    c.login().await;
}

// --- STLS --------------------------------------------------------------------------------

/// RFC 2595 section 4: STLS without a certificate is refused, and the session goes on.
#[tokio::test]
async fn rfc2595_s4_stls_without_tls_configured_is_refused() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsUnconfigured));
    c.login().await;
}

/// RFC 2595 section 4: STLS, the handshake, then a fresh AUTHORIZATION: what the client
/// pipelined after STLS is discarded (CVE-2011-0411), STLS is no longer offered and is
/// refused, and cleartext logins from a remote peer are allowed under TLS.
#[tokio::test]
async fn rfc2595_s4_stls_discards_pipelined_input_then_refuses_a_second_stls() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect_as(plain(), REMOTE).await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(caps.iter().any(|c| c == "STLS"), "{caps:?}");
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    c.send("STLS\r\nUSER alice\r\n").await;
    assert_eq!(c.line().await, ok(Text::StlsGo));
    c.starttls(&f).await;
    // The USER sent before the handshake was dropped, not run.
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(|c| c == "STLS"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "USER"), "{caps:?}");
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsActive));
    // UTF8 mode was reset by the handshake: a non-ASCII USER needs it again.
    assert_eq!(
        c.cmd("USER j\u{f6}rg").await,
        err(ErrReply {
            code: Some(ResponseCode::Utf8),
            text: Text::NotAscii
        })
    );
    c.login().await;
    assert_eq!(c.cmd("STLS").await, refused(Text::AfterLogin));
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&0, &3]));
}

/// RFC 2595 section 4: STLS is an AUTHORIZATION command, so it is accepted after USER; the
/// handshake starts a fresh AUTHORIZATION in which the USER is forgotten.
#[tokio::test]
async fn rfc2595_s4_stls_after_user_forgets_the_user() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("STLS").await, ok(Text::StlsGo));
    c.starttls(&f).await;
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    c.login().await;
}

/// RFC 8314 section 3, RFC 2595 section 4: on an implicit-TLS connection STLS is refused
/// (TLS is already active) and cleartext logins are allowed.
#[tokio::test]
async fn rfc8314_stls_on_implicit_tls_is_refused() {
    let f = Fixture::build(config(), true);
    let mut c = f.connect_tls().await;
    assert!(c.greeting.starts_with("+OK "), "{}", c.greeting);
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsActive));
    c.login().await;
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&0, &3]));
    c.closed().await;
}

// --- TRANSACTION -------------------------------------------------------------------------

/// RFC 1939 section 5: STAT, LIST, UIDL (with and without an argument), RETR (dot-stuffed,
/// RFC 1939 section 3), TOP (RFC 1939 section 7) and NOOP on a fresh maildrop.
#[tokio::test]
async fn rfc1939_s5_stat_list_uidl_retr_top_noop() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.login().await;
    let sizes: Vec<u64> = MESSAGES.iter().map(|m| m.len() as u64).collect();
    let total = octets(&MESSAGES);
    assert_eq!(c.cmd("STAT").await, ok_bare(&format!("3 {total}")));
    let list = c
        .multi("LIST", &ok_with(Text::ListFollows, &[&3, &total]))
        .await;
    let want: Vec<String> = (1..=3).map(|n| format!("{n} {}", sizes[n - 1])).collect();
    assert_eq!(list, want);
    assert_eq!(c.cmd("LIST 2").await, ok_bare(&format!("2 {}", sizes[1])));
    assert_eq!(c.cmd("LIST 4").await, refused(Text::NoSuchMessage));
    assert_eq!(c.cmd("LIST 0").await, refused(Text::NoSuchMessage));
    let uidl = c.multi("UIDL", &ok(Text::UidlFollows)).await;
    assert_eq!(uidl.len(), 3);
    let uid2 = uidl[1].split_once(' ').expect("uid").1.to_string();
    assert_eq!(c.cmd("UIDL 2").await, ok_bare(&format!("2 {uid2}")));
    assert_eq!(c.cmd("UIDL 9").await, refused(Text::NoSuchMessage));
    let body = c
        .multi("RETR 2", &ok_with(Text::Octets, &[&sizes[1]]))
        .await;
    assert_eq!(
        body,
        ["Subject: two", "", "..starts with a dot", "line 2"],
        "dot-stuffed"
    );
    assert_eq!(c.cmd("RETR 4").await, refused(Text::NoSuchMessage));
    let top = c.multi("TOP 3 0", &ok(Text::TopFollows)).await;
    assert_eq!(top, ["Subject: three", "X-Test: y", ""]);
    let top = c.multi("TOP 3 2", &ok(Text::TopFollows)).await;
    assert_eq!(top, ["Subject: three", "X-Test: y", "", "b1", "b2"]);
    assert_eq!(c.cmd("TOP 4 1").await, refused(Text::NoSuchMessage));
    assert!(c.cmd("NOOP").await.starts_with("+OK"));
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&0, &3]));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3, "RETR alone deletes nothing");
}

/// RFC 1939 section 5: DELE marks; a deleted message is gone from STAT, LIST and UIDL and
/// refused by LIST n, UIDL n, RETR, TOP and a second DELE; RSET unmarks them all.
#[tokio::test]
async fn rfc1939_s5_deleted_message_rules_and_rset() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.login().await;
    let sizes: Vec<u64> = MESSAGES.iter().map(|m| m.len() as u64).collect();
    assert_eq!(c.cmd("DELE 2").await, ok_with(Text::Deleted, &[&2]));
    for line in ["DELE 2", "LIST 2", "UIDL 2", "RETR 2", "TOP 2 0"] {
        assert_eq!(c.cmd(line).await, refused(Text::AlreadyDeleted), "{line}");
    }
    assert_eq!(c.cmd("DELE 7").await, refused(Text::NoSuchMessage));
    let left = sizes[0] + sizes[2];
    assert_eq!(c.cmd("STAT").await, ok_bare(&format!("2 {left}")));
    let list = c
        .multi("LIST", &ok_with(Text::ListFollows, &[&2, &left]))
        .await;
    assert_eq!(
        list,
        [format!("1 {}", sizes[0]), format!("3 {}", sizes[2])],
        "numbers stay"
    );
    let uidl = c.multi("UIDL", &ok(Text::UidlFollows)).await;
    assert_eq!(uidl.len(), 2);
    assert!(uidl[1].starts_with("3 "), "{uidl:?}");
    assert_eq!(c.cmd("RSET").await, logged_in(3, octets(&MESSAGES)));
    assert_eq!(c.cmd("LIST 2").await, ok_bare(&format!("2 {}", sizes[1])));
}

/// RFC 1939 section 5: in TRANSACTION the AUTHORIZATION commands are refused and the
/// session goes on; UTF8 is refused after login (RFC 6856 section 3.1); CAPA still answers
/// (RFC 2449 section 5).
#[tokio::test]
async fn rfc1939_s5_authorization_commands_after_login_are_refused() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.login().await;
    let plain = b64("\0alice\0right");
    let digest = "0".repeat(32);
    for line in [
        "USER alice".to_string(),
        "PASS right".into(),
        format!("APOP alice {digest}"),
        "AUTH".into(),
        format!("AUTH PLAIN {plain}"),
        "STLS".into(),
    ] {
        assert_eq!(c.cmd(&line).await, refused(Text::AfterLogin), "{line}");
    }
    assert_eq!(c.cmd("UTF8").await, refused(Text::Utf8Refused));
    assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(caps.iter().any(|c| c == "PIPELINING"), "{caps:?}");
    assert!(caps.iter().any(|c| c.starts_with("EXPIRE")), "{caps:?}");
    assert!(
        caps.iter().any(|c| c.starts_with("LOGIN-DELAY")),
        "{caps:?}"
    );
    assert_eq!(
        c.cmd("STAT").await,
        ok_bare(&format!("3 {}", octets(&MESSAGES)))
    );
}

/// RFC 6856 section 3.3: a message with UTF-8 headers is refused `-ERR [UTF8]` by RETR and
/// TOP unless UTF8 was given before login.
#[tokio::test]
async fn rfc6856_s3_utf8_headers_need_utf8_mode() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.cmd("USER carol").await;
    c.cmd("PASS right").await;
    assert_eq!(c.cmd("RETR 1").await, err(reply::UTF8_NEEDED));
    assert_eq!(c.cmd("TOP 1 0").await, err(reply::UTF8_NEEDED));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.closed().await;
    let mut c = f.connect().await;
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    c.cmd("USER carol").await;
    c.cmd("PASS right").await;
    let size = UTF8_MESSAGE.len();
    let body = c.multi("RETR 1", &ok_with(Text::Octets, &[&size])).await;
    assert_eq!(body, ["Subject: h\u{e9}llo", "", "body"]);
}

/// RFC 2449 section 6.6 (PIPELINING): many commands in one write are all answered, in order.
#[tokio::test]
async fn rfc2449_s6_6_pipelined_commands_are_answered_in_order() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.send("CAPA\r\nUSER alice\r\nPASS right\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nDELE 1\r\nSTAT\r\nNOOP\r\nQUIT\r\n")
        .await;
    let sizes: Vec<u64> = MESSAGES.iter().map(|m| m.len() as u64).collect();
    let total = octets(&MESSAGES);
    assert_eq!(c.line().await, ok(Text::CapaFollows));
    c.body().await;
    assert_eq!(c.line().await, ok(Text::SendPass));
    assert_eq!(c.line().await, logged_in(3, total));
    assert_eq!(c.line().await, ok_bare(&format!("3 {total}")));
    assert_eq!(c.line().await, ok_bare(&format!("1 {}", sizes[0])));
    assert_eq!(c.line().await, ok_with(Text::Octets, &[&sizes[0]]));
    assert_eq!(c.body().await, ["Subject: one", "", "first body"]);
    assert_eq!(c.line().await, ok_with(Text::Deleted, &[&1]));
    assert_eq!(c.line().await, ok_bare(&format!("2 {}", total - sizes[0])));
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, ok_with(Text::SigningOff, &[&1, &2]));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 2);
}

/// RFC 2449 section 8.1.1, RFC 3206: a second session for a locked maildrop is refused
/// `-ERR [IN-USE]` after the credentials were checked, and can log in once the first quits.
#[tokio::test]
async fn rfc2449_s8_1_1_locked_maildrop_is_in_use() {
    let f = Fixture::new();
    let mut first = f.connect().await;
    first.login().await;
    let mut second = f.connect().await;
    second.cmd("USER alice").await;
    let in_use = err(ErrReply {
        code: Some(ResponseCode::InUse),
        text: Text::InUse,
    });
    assert_eq!(second.cmd("PASS right").await, in_use);
    assert!(first.cmd("QUIT").await.starts_with("+OK"));
    first.closed().await;
    second.login().await;
}

/// RFC 2449 section 8.1.2: a login too soon after the last one is refused
/// `-ERR [LOGIN-DELAY]` naming the seconds to wait.
#[tokio::test]
async fn rfc2449_s8_1_2_login_delay_refuses_a_second_login() {
    let f = Fixture::new();
    f.store
        .set_policy(
            &name("alice"),
            AccountPolicy {
                login_delay: Some(600),
                expire: None,
            },
        )
        .expect("policy");
    let mut c = f.connect().await;
    c.login().await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.closed().await;
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    let reply = c.cmd("PASS right").await;
    // The wait is rounded down to whole seconds: 600, or 599 if a second began meanwhile.
    let delayed = |secs: u64| {
        let wait = fill(Text::LoginDelay, &[&secs]);
        render(|o| write_err(o, Some(ResponseCode::LoginDelay), &wait))
    };
    assert!(reply == delayed(600) || reply == delayed(599), "{reply}");
    // The refused login released the lock: CAPA still works and the session goes on.
    c.multi("CAPA", &ok(Text::CapaFollows)).await;
}

/// RFC 2449 section 6.7: with EXPIRE 0 a retrieved message is removed at UPDATE.
#[tokio::test]
async fn rfc2449_s6_7_expire_0_removes_retrieved_messages_at_update() {
    let f = Fixture::build(
        Config {
            expire: store::Expire::Days(0),
            ..config()
        },
        false,
    );
    let mut c = f.connect().await;
    c.login().await;
    c.multi("RETR 1", &ok_with(Text::Octets, &[&MESSAGES[0].len()]))
        .await;
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&1, &2]));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 2);
}

/// A node being drained (`popadm node drain`) checks the credentials, then refuses the
/// login `-ERR [SYS/TEMP]` (RFC 3206) and keeps the session in AUTHORIZATION.
#[tokio::test]
async fn rfc3206_draining_node_refuses_logins_with_sys_temp() {
    let f = Fixture::new();
    f.shared.draining.store(true, Ordering::Relaxed);
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS right").await, err(reply::DRAINING));
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
}

// --- UPDATE and the ways out -----------------------------------------------------------

/// RFC 1939 section 6: QUIT in TRANSACTION enters UPDATE: the marked messages are removed,
/// the reply counts them and what is left, the connection closes.
#[tokio::test]
async fn rfc1939_s6_quit_in_transaction_updates() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.login().await;
    c.cmd("DELE 1").await;
    c.cmd("DELE 3").await;
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&2, &1]));
    c.closed().await;
    let left = f.store.list_messages(f.alice).expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].size, MESSAGES[1].len() as u64);
    // The lock was released: a new session logs in.
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(
        c.cmd("PASS right").await,
        logged_in(1, MESSAGES[1].len() as u64)
    );
}

/// RFC 1939 section 6, RFC 3206: when the lock was lost before QUIT (its lease over and
/// taken by another holder: the fencing token changed), UPDATE fails `-ERR [SYS/TEMP]` and
/// deletes nothing.
#[tokio::test]
async fn rfc1939_s6_update_fails_sys_temp_when_the_lock_was_taken_over() {
    let f = Fixture::build(
        Config {
            lock_lease: Duration::ZERO,
            ..config()
        },
        false,
    );
    let mut c = f.connect().await;
    c.login().await;
    c.cmd("DELE 1").await;
    let intruder = f
        .store
        .lock_maildrop(f.alice, "intruder", Duration::from_secs(60))
        .expect("the expired lock is taken over");
    let failed = fill(Text::UpdateFailed, &[&text(Text::LockLost)]);
    assert_eq!(
        c.cmd("QUIT").await,
        render(|o| write_err(o, Some(ResponseCode::SysTemp), &failed))
    );
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3, "nothing deleted");
    f.store.release_lock(&intruder).expect("release");
}

/// RFC 3206, the lock module: a lock the renewer finds lost ends the session at its next
/// command with `-ERR [SYS/TEMP]`, without UPDATE.
#[tokio::test]
async fn rfc3206_lost_lock_ends_the_session_at_the_next_command() {
    let f = Fixture::build(
        Config {
            lock_lease: Duration::ZERO,
            ..config()
        },
        false,
    );
    let mut c = f.connect().await;
    c.login().await;
    c.cmd("DELE 1").await;
    f.store
        .lock_maildrop(f.alice, "intruder", Duration::from_secs(60))
        .expect("the expired lock is taken over");
    f.shared.locks.renew_once().await;
    let lost = err(ErrReply {
        code: Some(ResponseCode::SysTemp),
        text: Text::LockLost,
    });
    assert_eq!(c.cmd("NOOP").await, lost);
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3);
}

/// RFC 1939 section 3: the inactivity autologout closes a TRANSACTION session without a
/// reply and without UPDATE, and lets the lock go.
#[tokio::test]
async fn rfc1939_s3_idle_timeout_closes_without_update() {
    let f = Fixture::build(
        Config {
            idle_timeout: Duration::from_millis(200),
            ..config()
        },
        false,
    );
    let mut c = f.connect().await;
    c.login().await;
    c.cmd("DELE 1").await;
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3);
    assert_eq!(f.shared.locks.count(), 0);
}

/// RFC 1939 section 3: a login must complete within `login_timeout`; then `-ERR` and close.
#[tokio::test]
async fn rfc1939_s3_login_timeout_closes_authorization() {
    let f = Fixture::build(
        Config {
            login_timeout: Duration::from_millis(200),
            ..config()
        },
        false,
    );
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(c.line().await, refused(Text::LoginTimeout));
    c.closed().await;
}

/// RFC 3206: at shutdown a session is told `-ERR [SYS/TEMP]` and closed without UPDATE.
#[tokio::test]
async fn rfc3206_shutdown_closes_sessions_with_sys_temp() {
    let f = Fixture::new();
    let mut c = f.connect().await;
    c.login().await;
    c.cmd("DELE 1").await;
    f.stop.send(true).expect("shutdown");
    assert_eq!(c.line().await, err(reply::SHUTTING_DOWN));
    c.closed().await;
    assert_eq!(f.stored(f.alice), 3);
}
