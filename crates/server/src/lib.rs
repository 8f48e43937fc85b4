//! The POP3 server: tokio listeners, one task per session, the RFC 1939 state machine.
//!
//! This is the only crate that knows tokio and sockets. It wires the sans-IO codec (`proto`),
//! the credential checks (`auth`) and the maildrop store (`store`): blocking work (SQLite,
//! argon2) runs on tokio's blocking threads so a slow disk or a costly hash never stalls other
//! sessions. [`run`] serves listeners its caller bound until a shutdown future completes, so
//! tests can pass `127.0.0.1:0` and stop the server when they like; [`serve`] is the whole
//! daemon around it (binding or systemd's sockets, privileges, the runtime, signals).

mod activation;
mod authhttp;
mod capa;
mod conn;
mod credcache;
mod daemon;
mod hashpool;
pub mod lang;
mod limits;
mod listen;
mod lock;
mod maildrop;
mod node;
mod penalty;
mod process;
mod proxy;
mod reply;
mod session;
mod signals;
pub mod tls;
mod topcut;
mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use store::{Expire, Store};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn, Instrument};

pub use activation::{ActivationError, UnknownName};
pub use daemon::{serve, Daemon, DaemonError, Gssapi};
pub use listen::{default_advertised, ListenSpec, ListenerError, Offers};
pub use process::PrivilegeError;
pub use proxy::{TrustedProxies, TrustedProxyError};
pub use session::MAX_BAD_COMMANDS;
pub use tls::{CertFiles, Tls, TlsError, TlsVersion};

use crate::conn::Conn;

/// Longest wait for the PROXY header on a proxied listener (shorter when `login_timeout` is);
/// haproxy's spec, section 2, wants "at least 3 seconds to cover a TCP retransmit".
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// RFC 1939 section 3: an inactivity autologout timer, if any, is at least 10 minutes.
pub const RFC_MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Connections over a cap that are answered `-ERR [SYS/TEMP]` at once, each by a short task
/// of its own; while this many are being answered, more are closed unanswered, so a flood
/// of refusals costs a bounded number of tasks.
pub const MAX_REFUSALS: usize = 64;

/// Longest a refusal waits for the peer to take its `-ERR`.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Server settings. Every default is documented on [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Host name in the APOP greeting timestamp, CRAM-MD5 challenges, the GSSAPI principal and
    /// the self-signed certificate. (Lock holder names always carry the machine's own name:
    /// whether a holder process is alive can only be judged on the machine it runs on.)
    pub hostname: String,
    /// Inactivity autologout: the session is closed without UPDATE and without a reply.
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered `-ERR [SYS/TEMP]` and closed.
    pub max_connections: usize,
    /// Connections per client address (IPv6 counted by /64) that have not logged in yet; a
    /// session leaves this count at its login (logged-in sessions, one per account by the
    /// maildrop lock, count against `max_connections` only: users behind one NAT).
    pub max_connections_per_ip: usize,
    /// Time a client has from connecting to completing a login; then `-ERR` and close.
    /// This is a login deadline, not RFC 1939's inactivity autologout (which is
    /// `idle_timeout` and resets with every command).
    pub login_timeout: Duration,
    /// Lease of the maildrop lock; one renewer per process renews every held lease every
    /// third of the lease (one store call for all), so a crashed server's locks free
    /// themselves after at most this long.
    pub lock_lease: Duration,
    /// How long shutdown waits for sessions to finish the command in hand.
    pub shutdown_grace: Duration,
    /// How long a TLS handshake (implicit TLS or after STLS) may take.
    pub tls_handshake_timeout: Duration,
    /// Text of the greeting after `+OK `.
    pub greeting: String,
    /// The CAPA `IMPLEMENTATION` value; `None` leaves the capability out.
    pub implementation: Option<String>,
    /// RFC 2449 LOGIN-DELAY: least time between two logins of a user (0: no delay);
    /// accounts may override it.
    pub login_delay: Duration,
    /// Logins allowed beyond the first within one `login_delay` (a token bucket).
    pub login_delay_burst: u32,
    /// RFC 2449 EXPIRE: how long retrieved messages are kept; accounts may override it.
    pub expire: Expire,
    /// Offer APOP (RFC 1939 section 7; the greeting then carries a timestamp) and CRAM-MD5
    /// (RFC 2195). Off by default: only accounts with a legacy secret can use them, and
    /// clients such as curl pick them whenever offered and do not fall back.
    pub legacy_auth: bool,
    /// Domain for bare user names that name no account by themselves.
    pub default_domain: Option<String>,
    /// First delay of a failed-login reply; doubles per failure up to 15 s (0: none).
    pub auth_failure_delay: Duration,
    /// Failed logins after which a connection is closed.
    pub max_auth_failures: u32,
    /// Clients never delayed after a failed login and not counted in the penalties
    /// (Dovecot's `login_trusted_networks`: webmail, a proxy that logs in for its users).
    pub trusted_networks: TrustedProxies,
    /// argon2id cost of stored hashes; a login with a hash of other parameters re-hashes.
    /// Unknown users are verified against a decoy of the same cost.
    pub argon2: auth::Argon2Params,
    /// PBKDF2 iterations of the SCRAM-SHA-256 keys (RFC 7677 section 4: at least 4096); a
    /// password login re-derives keys of another count.
    pub scram_iterations: u32,
    /// Offer SCRAM-SHA-256-PLUS on TLS connections (channel binding, RFC 5802 section 6).
    /// Off by default: clients on GNU SASL that pick -PLUS whenever it is offered but give
    /// the library no channel binding (NeoMutt 2022) then cannot log in at all.
    pub scram_plus: bool,
    /// How long a verified password is remembered, so a repeat login skips argon2 (0: off).
    pub credential_cache_ttl: Duration,
    /// Kerberos: SASL GSSAPI (RFC 4752) is offered when set, and KPOP listeners need it.
    pub gssapi: Option<Arc<dyn auth::GssAcceptorFactory>>,
    /// Kerberos realms whose principals may log in besides the service principal's own.
    pub gssapi_realms: Vec<String>,
    /// OAuth 2.0: OAUTHBEARER (RFC 7628) and XOAUTH2 are offered when set.
    pub oauth2: Option<Arc<dyn auth::BearerValidator>>,
    /// This server as a node of a cluster: heartbeats in the store's node table, and the
    /// drain an operator sets there (`popadm node drain`). `None`: no node table entry.
    pub node: Option<NodeConfig>,
    /// Several nodes behind nginx: the keys of the cluster secret. Needed by the `auth_http`
    /// endpoint, and by proxied listeners to accept its login tickets.
    pub cluster: Option<Cluster>,
}

/// This server's entry in the store's node table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node id (also the owner of its PostgreSQL leases).
    pub id: String,
    /// `HOST:PORT` where the node takes connections, as the node table shows it.
    pub advertise: String,
    /// Time between heartbeats; the node's state (up or draining) is read back with each.
    pub heartbeat: Duration,
}

/// What the nodes of a cluster and its `auth_http` endpoint share.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Derived from the cluster secret: the endpoint key and the ticket key.
    pub keys: auth::ticket::ClusterKeys,
    /// How long a login ticket is good for (nginx uses it at once).
    pub ticket_ttl: Duration,
    /// A node whose last heartbeat is older than this gets no logins from the endpoint.
    pub node_liveness: Duration,
    /// Peers that may connect to the `auth_http` endpoint (nginx's addresses); others are
    /// closed at accept, unanswered.
    pub auth_http_allow: TrustedProxies,
    /// The endpoint's cleartext policy, judged on the client's link to nginx: a password
    /// login (`Auth-Method: plain`) without `Auth-SSL: on` is refused unless it allows it
    /// (`Loopback`: a client whose `Client-IP` is loopback).
    pub auth_http_cleartext: Cleartext,
}

impl Cluster {
    /// Tickets good for 30 seconds; a node is live while its heartbeat is under 15 seconds
    /// old (three of the default 5-second heartbeats); the endpoint serves loopback peers
    /// only, and takes passwords without TLS from loopback clients only.
    pub fn new(keys: auth::ticket::ClusterKeys) -> Cluster {
        Cluster {
            keys,
            ticket_ttl: Duration::from_secs(30),
            node_liveness: Duration::from_secs(15),
            auth_http_allow: TrustedProxies::loopback(),
            auth_http_cleartext: Cleartext::default(),
        }
    }
}

pub use authhttp::KEY_HEADER as AUTH_HTTP_KEY_HEADER;
pub use capa::nginx_capabilities;

/// The longest failed-login delay.
pub const MAX_AUTH_FAILURE_DELAY: Duration = Duration::from_secs(15);

impl Default for Config {
    /// Host name from the kernel, 10 minutes idle timeout, 1,024 connections (20 per client
    /// address), 60 seconds to log in, a 2 minute lock
    /// lease, 30 seconds of shutdown grace, 30 seconds for a TLS handshake, greeting
    /// "POP3 server ready", IMPLEMENTATION "pop3d", no login delay, EXPIRE NEVER, no APOP or CRAM-MD5,
    /// no default domain, failed logins delayed from 2 s and closed after 3, no trusted
    /// networks, SCRAM keys of 100,000 iterations, only the service realm's Kerberos
    /// principals, no node entry.
    fn default() -> Self {
        Config {
            hostname: local_hostname(),
            idle_timeout: RFC_MIN_IDLE_TIMEOUT,
            max_connections: 1024,
            max_connections_per_ip: 20,
            login_timeout: Duration::from_secs(60),
            lock_lease: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(30),
            greeting: lang::default_language().text(lang::Text::Ready).to_string(),
            implementation: Some("pop3d".to_string()),
            login_delay: Duration::ZERO,
            login_delay_burst: 0,
            expire: Expire::Never,
            legacy_auth: false,
            default_domain: None,
            auth_failure_delay: Duration::from_secs(2),
            max_auth_failures: 3,
            trusted_networks: TrustedProxies::default(),
            argon2: auth::Argon2Params::default(),
            scram_iterations: auth::scram::DEFAULT_ITERATIONS,
            scram_plus: false,
            credential_cache_ttl: Duration::from_secs(300),
            gssapi: None,
            gssapi_realms: Vec::new(),
            oauth2: None,
            node: None,
            cluster: None,
        }
    }
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Whether USER/PASS (and cleartext SASL mechanisms) are allowed before TLS on a listener
/// (RFC 2595 section 2.2, RFC 8314 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleartext {
    /// Never before TLS.
    Never,
    /// Only from loopback peers (the default).
    #[default]
    Loopback,
    /// Always (an explicit operator choice, e.g. behind a TLS-terminating proxy).
    Always,
}

/// How a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Cleartext POP3, with STLS when certificates are configured.
    Plain,
    /// TLS from the first byte (RFC 8314, port 995).
    ImplicitTls,
    /// KPOP (port 1109): only Kerberos authentication (AUTH GSSAPI) is accepted.
    Kpop,
    /// Not POP3: the nginx mail proxy's `auth_http` endpoint (HTTP/1.0, see `authhttp`).
    AuthHttp,
}

impl ListenerKind {
    /// How logs and the readiness status name it: `pop3` (`pop3+stls` when STLS is
    /// offered), `pop3s`, `kpop`, `auth_http`.
    pub fn name(self, stls: bool) -> &'static str {
        match self {
            ListenerKind::AuthHttp => "auth_http",
            ListenerKind::Plain if stls => "pop3+stls",
            ListenerKind::Plain => "pop3",
            ListenerKind::ImplicitTls => "pop3s",
            ListenerKind::Kpop => "kpop",
        }
    }
}

/// A bound socket and how to serve it.
#[derive(Debug)]
pub struct Listener {
    pub socket: TcpListener,
    pub kind: ListenerKind,
    pub min_tls: TlsVersion,
    /// Judged on the TCP link: on a proxied listener that is the proxy's address, so
    /// `Loopback` means "the proxy runs on this host", whatever the client's address.
    pub cleartext: Cleartext,
    /// A backend listener behind a load balancer: only these peers may connect, and each
    /// connection starts with a PROXY protocol header (v1 or v2) naming the real client,
    /// which the session then uses as the client address (logs, per-client limit,
    /// failed-login penalty). Other peers are closed without a reply.
    pub proxy: Option<Arc<TrustedProxies>>,
}

impl Listener {
    /// A cleartext listener with the default policy.
    pub fn plain(socket: TcpListener) -> Listener {
        Listener {
            socket,
            kind: ListenerKind::Plain,
            min_tls: TlsVersion::default(),
            cleartext: Cleartext::default(),
            proxy: None,
        }
    }
}

/// What a session knows of the listener it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerInfo {
    pub kind: ListenerKind,
    pub min_tls: TlsVersion,
    pub cleartext: Cleartext,
    /// Connections come through a trusted proxy with a PROXY header; the session's client
    /// address is the header's (Part D accepts tickets in PASS only here).
    pub proxied: bool,
}

/// Errors that stop the server as a whole (a failed session never does).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no listener to serve")]
    NoListener,
    #[error("reading a listener's address")]
    Address(#[source] std::io::Error),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("starting the password hashing threads")]
    Threads(#[source] std::io::Error),
}

/// What every session shares.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub next_session: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    pub tls: Option<Arc<Tls>>,
    pub per_client: Arc<limits::PerClient>,
    pub penalties: penalty::Penalties,
    /// Where password hashes are computed: one thread per CPU (see `hashpool`).
    pub hashing: hashpool::HashPool,
    pub credentials: credcache::CredentialCache,
    /// The maildrop locks held by this process's sessions, renewed together.
    pub locks: Arc<lock::Locks>,
    /// The node is draining (set by the operator, read at each heartbeat): logins refused.
    pub draining: std::sync::atomic::AtomicBool,
    /// Nonces of the login tickets this node accepted (each logs in once).
    pub tickets: auth::ticket::Replay,
}

/// Serves POP3 on `listeners` until `shutdown` completes, then stops accepting, lets every
/// session finish the command in hand (up to `shutdown_grace`) and returns. `tls` serves STLS
/// on plain listeners and is required by implicit-TLS ones.
pub async fn run(
    listeners: Vec<Listener>,
    store: Arc<dyn Store>,
    config: Config,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    if listeners.is_empty() {
        return Err(ServerError::NoListener);
    }
    let mut listening = String::from("listening");
    for l in &listeners {
        let addr = l.check(&config, tls.is_some())?;
        let kind = l.kind.name(tls.is_some());
        listening.push_str(&format!(" {kind}={addr}"));
        match (&l.proxy, &config.cluster) {
            // The endpoint's own policy, not the listener's (which it does not use).
            (_, Some(c)) if l.kind == ListenerKind::AuthHttp => {
                info!(%addr, kind, allow = %c.auth_http_allow, cleartext = ?c.auth_http_cleartext, "listening");
            }
            (Some(trusted), _) => {
                info!(%addr, kind, cleartext = ?l.cleartext, min_tls = ?l.min_tls, trusted = %trusted, "listening for proxied connections");
            }
            (None, _) => {
                info!(%addr, kind, cleartext = ?l.cleartext, min_tls = ?l.min_tls, "listening")
            }
        }
    }
    let listener_count = listeners.len();
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = config.shutdown_grace;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let max = config.max_connections;
    let max_per_ip = config.max_connections_per_ip;
    let failure_delay = config.auth_failure_delay;
    let trusted_networks = config.trusted_networks.clone();
    let cache_ttl = config.credential_cache_ttl;
    let lock_lease = config.lock_lease;
    let shared = Arc::new(Shared {
        store: store.clone(),
        config,
        next_session: AtomicU64::new(1),
        shutdown: stop_rx,
        tls,
        per_client: limits::PerClient::new(max_per_ip),
        penalties: penalty::Penalties::new(failure_delay, MAX_AUTH_FAILURE_DELAY, trusted_networks),
        hashing: hashpool::HashPool::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
        .map_err(ServerError::Threads)?,
        credentials: credcache::CredentialCache::new(cache_ttl),
        locks: lock::Locks::new(store.clone(), lock_lease),
        draining: std::sync::atomic::AtomicBool::new(false),
        tickets: auth::ticket::Replay::new(),
    });
    // The unknown-user decoy of the configured argon2 cost, made before the first login needs
    // it (on a blocking thread, not holding up the start).
    let argon2 = shared.config.argon2;
    drop(tokio::task::spawn_blocking(move || {
        auth::prepare_decoy(argon2)
    }));
    // Aborted when `run` returns, however it does.
    let _renewer = AbortOnDrop(tokio::spawn(shared.locks.clone().renew_forever()));
    let _heartbeat = match shared.config.node.clone() {
        Some(node) => {
            // The first heartbeat before the first connection: a node restarted while
            // drained takes no login at all.
            node::heartbeat(&shared, &node, &slots, max).await;
            Some(AbortOnDrop(tokio::spawn(node::heartbeat_forever(
                shared.clone(),
                node,
                slots.clone(),
                max,
            ))))
        }
        None => None,
    };
    // Ready: accepting from now on (after a node's first heartbeat).
    info!(listeners = listener_count, "ready");
    // Type=notify units (and the test bed) wait for this; without NOTIFY_SOCKET it does nothing.
    signals::notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&listening),
    ]);
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|l| match l.kind {
            ListenerKind::AuthHttp => tokio::spawn(authhttp::accept_loop(l.socket, shared.clone())),
            _ => tokio::spawn(accept_loop(
                l,
                shared.clone(),
                slots.clone(),
                refusals.clone(),
            )),
        })
        .collect();

    shutdown.await;
    info!("shutting down: no new connections; sessions finish the command in hand");
    let _ = stop_tx.send(true);
    for a in acceptors {
        a.abort();
    }
    // Every session holds a slot; all slots back means all sessions ended.
    let drained = tokio::time::timeout(grace, slots.acquire_many(max as u32)).await;
    match drained {
        Ok(_) => info!("all sessions ended"),
        Err(_) => warn!(
            remaining = max - slots.available_permits(),
            "shutdown grace over; closing remaining sessions"
        ),
    }
    Ok(())
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
) {
    let info = ListenerInfo {
        kind: listener.kind,
        min_tls: listener.min_tls,
        cleartext: listener.cleartext,
        proxied: listener.proxy.is_some(),
    };
    loop {
        let (stream, peer) = match listener.socket.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(trusted) = &listener.proxy {
            if !trusted.contains(peer.ip()) {
                // haproxy's spec, section 5: the header is believed only from known sources;
                // anyone else gets nothing, not even a greeting.
                warn!(%peer, "not a trusted proxy; connection closed");
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(stream, peer, info.kind, &refusals);
            continue;
        };
        let tls = info.kind == ListenerKind::ImplicitTls;
        let shared = shared.clone();
        if info.proxied {
            // The client is known only after the header, so is its per-client slot.
            let span = tracing::info_span!(
                "session",
                id,
                proxy = %peer,
                peer = tracing::field::Empty,
                tls = tracing::field::Empty,
                user = tracing::field::Empty
            );
            record_tls(&span, tls);
            tokio::spawn(
                async move {
                    serve_proxied(stream, peer, id, info, shared).await;
                    drop(permit);
                }
                .instrument(span),
            );
            continue;
        }
        let Some(client_slot) = shared.per_client.try_acquire(peer.ip()) else {
            refuse(stream, peer, info.kind, &refusals);
            continue;
        };
        let span = tracing::info_span!(
            "session",
            id,
            peer = %peer,
            tls = tracing::field::Empty,
            user = tracing::field::Empty
        );
        record_tls(&span, tls);
        tokio::spawn(
            async move {
                if let Some(conn) = open(stream, info, &shared).await {
                    // The session gives the per-client slot back once it logs in.
                    session::serve(conn, peer, peer, id, info, shared, Some(client_slot)).await;
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// A connection on a proxied listener: the PROXY header first (within
/// [`PROXY_HEADER_TIMEOUT`] or the login timeout, whichever is shorter), then the session
/// with the header's source as the client (the TCP peer for LOCAL and UNKNOWN headers).
/// `tls=true` on a session's span once TLS is up: from the start on an implicit-TLS
/// listener, after the handshake on STLS. A cleartext session has no `tls` field: recording
/// `false` first would make the log show both values (`tls=false tls=true`) after STLS.
fn record_tls(span: &tracing::Span, tls: bool) {
    if tls {
        span.record("tls", true);
    }
}

async fn serve_proxied(
    mut stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    info: ListenerInfo,
    shared: Arc<Shared>,
) {
    let wait = PROXY_HEADER_TIMEOUT.min(shared.config.login_timeout);
    let header = match tokio::time::timeout(wait, proxy::read_header(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            warn!(error = %e, "bad PROXY header; connection closed");
            return;
        }
        Err(_) => {
            warn!("no PROXY header in time; connection closed");
            return;
        }
    };
    let client = header.source.unwrap_or(peer);
    tracing::Span::current().record("peer", tracing::field::display(client));
    debug!(
        version = header.version,
        local = header.source.is_none(),
        "PROXY header"
    );
    let Some(client_slot) = shared.per_client.try_acquire(client.ip()) else {
        // Already inside this connection's own task, which holds a global slot.
        refuse_busy(stream, client, info.kind).await;
        return;
    };
    if let Some(conn) = open(stream, info, &shared).await {
        session::serve(conn, peer, client, id, info, shared, Some(client_slot)).await;
    }
}

/// The connection as the session starts it: as it is, or after the TLS handshake of an
/// implicit-TLS listener (`None` if that fails).
async fn open(stream: TcpStream, info: ListenerInfo, shared: &Shared) -> Option<Conn<TcpStream>> {
    match (info.kind, &shared.tls) {
        (ListenerKind::Plain | ListenerKind::Kpop, _) => Some(Conn::Plain(stream)),
        (ListenerKind::ImplicitTls, Some(tls)) => {
            let handshake = tls.acceptor(info.min_tls).accept(stream);
            match tokio::time::timeout(shared.config.tls_handshake_timeout, handshake).await {
                Ok(Ok(s)) => Some(Conn::Tls(Box::new(s))),
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    None
                }
            }
        }
        (ListenerKind::ImplicitTls, None) | (ListenerKind::AuthHttp, _) => None,
    }
}

/// What becomes of a connection over a cap, decided at accept: answered `-ERR [SYS/TEMP]`
/// by a short task while fewer than [`MAX_REFUSALS`] are being answered (the permit),
/// else closed at once unanswered. On an implicit-TLS listener always closed at once: a
/// handshake costs the server a signature, and a TLS client could not read a cleartext
/// `-ERR` anyway.
fn refusal(kind: ListenerKind, refusals: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    if kind == ListenerKind::ImplicitTls {
        return None;
    }
    refusals.clone().try_acquire_owned().ok()
}

/// Refuses a connection over a cap at accept, as [`refusal`] decides.
fn refuse(stream: TcpStream, peer: SocketAddr, kind: ListenerKind, refusals: &Arc<Semaphore>) {
    match refusal(kind, refusals) {
        Some(permit) => {
            tokio::spawn(async move {
                refuse_busy(stream, peer, kind).await;
                drop(permit);
            });
        }
        None => {
            UNANSWERED.note(peer, "connection limit reached; closed unanswered");
            drop(stream);
        }
    }
}

/// Refusals are logged at most once a second per kind, with how many were not logged since:
/// a flood over the caps must not become a flood of log lines.
struct RefusalLog {
    /// The second (since the epoch) of the last logged line.
    second: AtomicU64,
    /// Refusals since then that were not logged.
    quiet: AtomicU64,
}

static UNANSWERED: RefusalLog = RefusalLog::new();
static ANSWERED: RefusalLog = RefusalLog::new();

impl RefusalLog {
    const fn new() -> RefusalLog {
        RefusalLog {
            second: AtomicU64::new(0),
            quiet: AtomicU64::new(0),
        }
    }

    /// Logs this refusal unless one was logged this second; true when it logged.
    fn note(&self, peer: SocketAddr, what: &'static str) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::Relaxed) == now {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            let not_logged = self.quiet.swap(0, Ordering::Relaxed);
            warn!(%peer, not_logged, "{what}");
            true
        }
    }
}

/// Answers a connection over a cap `-ERR [SYS/TEMP]` and closes it (bounded by
/// [`REFUSAL_TIMEOUT`]); on an implicit-TLS listener it is closed at once, with no handshake.
async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr, kind: ListenerKind) {
    if kind == ListenerKind::ImplicitTls {
        UNANSWERED.note(peer, "connection limit reached; closed unanswered");
        return;
    }
    ANSWERED.note(peer, "connection limit reached; refusing");
    let mut out = Vec::new();
    proto::response::write_err(
        &mut out,
        Some(proto::ResponseCode::SysTemp),
        lang::default_language().text(lang::Text::TooManyConnections),
    );
    let refuse = async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of refusals logs one line a second, which counts the ones it did not log.
    #[test]
    fn refusals_are_logged_once_a_second() {
        let log = RefusalLog::new();
        let peer: SocketAddr = "192.0.2.1:1".parse().expect("address");
        assert!(log.note(peer, "refused"));
        let logged = (0..100).filter(|_| log.note(peer, "refused")).count();
        // The calls straddle at most one second boundary.
        assert!(logged <= 1, "{logged}");
        if logged == 0 {
            assert_eq!(log.quiet.load(Ordering::Relaxed), 100);
        }
    }

    /// Refusals are bounded: at most [`MAX_REFUSALS`] are answered at once, and none on an
    /// implicit-TLS listener, where a refusal is a close without a handshake.
    #[test]
    fn refusals_are_bounded_and_tls_ones_get_no_handshake() {
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
        assert!(refusal(ListenerKind::ImplicitTls, &refusals).is_none());
        let answered: Vec<_> = (0..MAX_REFUSALS)
            .map(|_| refusal(ListenerKind::Plain, &refusals).expect("within the budget"))
            .collect();
        assert!(refusal(ListenerKind::Plain, &refusals).is_none());
        assert!(refusal(ListenerKind::Kpop, &refusals).is_none());
        drop(answered);
        assert!(refusal(ListenerKind::Kpop, &refusals).is_some());
        assert!(refusal(ListenerKind::ImplicitTls, &refusals).is_none());
    }
}
