//! The POP3 server: tokio listeners, one task per session, the RFC 1939 state machine.
//!
//! This is the only crate that knows tokio and sockets. It wires the sans-IO codec (`proto`),
//! the credential checks (`auth`) and the maildrop store (`store`): blocking work (SQLite,
//! argon2) runs on tokio's blocking threads so a slow disk or a costly hash never stalls other
//! sessions. The caller binds the listeners and owns the shutdown signal, so tests can pass
//! `127.0.0.1:0` and stop the server when they like.

mod maildrop;
mod reply;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use store::Store;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn, Instrument};

pub use session::MAX_BAD_COMMANDS;

/// RFC 1939 section 3: an inactivity autologout timer, if any, is at least 10 minutes.
pub const RFC_MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Server settings. Every default is documented on [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Host name in the greeting timestamp and in lock holder names.
    pub hostname: String,
    /// Inactivity autologout: the session is closed without UPDATE and without a reply.
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered `-ERR [SYS/TEMP]` and closed.
    pub max_connections: usize,
    /// Lease of the maildrop lock; a session renews it every third of the lease, so a crashed
    /// server's locks free themselves after at most this long.
    pub lock_lease: Duration,
    /// How long shutdown waits for sessions to finish the command in hand.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    /// Host name from the kernel, 10 minutes idle timeout, 1,024 connections, a 2 minute lock
    /// lease and 30 seconds of shutdown grace.
    fn default() -> Self {
        Config {
            hostname: local_hostname(),
            idle_timeout: RFC_MIN_IDLE_TIMEOUT,
            max_connections: 1024,
            lock_lease: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(30),
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

/// Errors that stop the server as a whole (a failed session never does).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no listener to serve")]
    NoListener,
    #[error("reading a listener's address: {0}")]
    Listener(#[source] std::io::Error),
}

/// What every session shares.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub next_session: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
}

/// Serves POP3 on `listeners` until `shutdown` completes, then stops accepting, lets every
/// session finish the command in hand (up to `shutdown_grace`) and returns.
pub async fn run(
    listeners: Vec<TcpListener>,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    if listeners.is_empty() {
        return Err(ServerError::NoListener);
    }
    for l in &listeners {
        let addr = l.local_addr().map_err(ServerError::Listener)?;
        info!(%addr, "listening");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = config.shutdown_grace;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let max = config.max_connections;
    let shared = Arc::new(Shared {
        store,
        config,
        next_session: AtomicU64::new(1),
        shutdown: stop_rx,
    });
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, shared.clone(), slots.clone())))
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let span = tracing::info_span!(
                    "session",
                    id,
                    peer = %peer,
                    user = tracing::field::Empty
                );
                let shared = shared.clone();
                tokio::spawn(
                    async move {
                        session::serve(stream, peer, id, shared).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                tokio::spawn(refuse_busy(stream, peer));
            }
        }
    }
}

/// Answers a connection over the cap and closes it.
async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr) {
    warn!(%peer, "connection limit reached; refusing");
    let mut out = Vec::new();
    proto::response::write_err(
        &mut out,
        Some(proto::ResponseCode::SysTemp),
        "too many connections, try again later",
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}
