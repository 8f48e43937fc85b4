//! The POP3 daemon from start to stop ([`serve`]): what the binary resolved ([`Daemon`]) becomes
//! bound sockets, a store, certificates, a runtime and signal handlers, in the order that
//! matters. Bind first (privileged ports need root), then drop privileges, then touch files
//! (the store, the self-signed certificate, the keytab) as the user that will own them; and the
//! store's last reference is dropped once the runtime is gone.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::sync::Arc;

use sd_notify::NotifyState;
use store::Store;
use tracing::{info, warn};

use crate::listen::{default_advertised, Offers};
use crate::process::{drop_privileges, raise_fd_limit, PrivilegeError};
use crate::{activation, run_with_unix, signals, tls, LmtpUnixListener};
use crate::{
    CertFiles, Config, ListenSpec, Listener, ListenerKind, ServerError, Tls, TlsError,
    TrustedProxies,
};

/// Everything [`serve`] needs beyond [`Config`], as the binary resolved it.
#[derive(Debug)]
pub struct Daemon {
    /// The server's settings; `gssapi` is set by [`serve`] from [`Daemon::gssapi`].
    pub config: Config,
    /// The listeners to bind; sockets passed by systemd replace them and take their policies.
    pub listeners: Vec<ListenSpec>,
    /// Who may connect to the listeners whose spec says `proxy`.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// The SQLite maildrops, and the self-signed certificate in `tls/`.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL, instead of the SQLite database in `data_dir`.
    pub store: Option<String>,
    /// The SQLite database's memory map in octets (`store::SqliteStore::set_mmap_size`;
    /// 0: reads with `pread`).
    pub sqlite_mmap_size: u64,
    /// Owner of this process's leases in a shared store.
    pub node_id: String,
    /// `advertise` was configured; otherwise the node advertises a bound listener's address
    /// (known only once bound: port 0, sockets passed by systemd).
    pub advertise_given: bool,
    /// Run as this user (and its group) once the listeners are bound.
    pub user: Option<String>,
    pub certificates: Vec<CertFiles>,
    /// Generate a self-signed certificate when none is configured.
    pub self_signed: bool,
    /// SASL GSSAPI (and KPOP listeners), when a keytab is configured.
    pub gssapi: Option<Gssapi>,
    /// An LMTP listener on a Unix socket.
    pub lmtp_unix: Option<LmtpUnix>,
}

/// An LMTP listener on a Unix socket, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmtpUnix {
    /// A socket left there by an earlier run is replaced; any other file is not.
    pub path: PathBuf,
    /// Permission bits of the socket (who may connect: writing to it is connecting).
    pub mode: u32,
    /// Group of the socket (the MTA's, e.g. `postfix`), when set.
    pub group: Option<String>,
}

/// Where the Kerberos service key is, and the service name of the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gssapi {
    pub keytab: PathBuf,
    /// The principal is `SERVICE/HOSTNAME`.
    pub service: String,
}

/// Why the daemon could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Activation(#[from] activation::ActivationError),
    #[error("listening on {address}")]
    Bind {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the address of a socket passed by systemd")]
    PassedAddress(#[source] std::io::Error),
    #[error("making the listener non-blocking")]
    NonBlocking(#[source] std::io::Error),
    #[error("reading a listener's address")]
    Address(#[source] std::io::Error),
    #[error("LMTP socket {}", path.display())]
    LmtpSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no such group {0:?} (lmtp_unix_group)")]
    NoSuchGroup(String),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error("this pop3d was built without Kerberos support (cargo feature `gssapi`)")]
    NoKerberos,
    #[error("setting up GSSAPI: {0}")]
    Gssapi(String),
    #[error(
        "the keytab {} is not readable by user {user}, which pop3d runs as after binding \
         (Kerberos reads it at each login): make it readable by that user",
        keytab.display()
    )]
    KeytabUnreadable {
        keytab: PathBuf,
        user: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the PostgreSQL maildrop store")]
    Postgres(#[source] store::StoreError),
    #[error("opening the maildrop store in {}", dir.display())]
    Sqlite {
        dir: PathBuf,
        #[source]
        source: store::StoreError,
    },
    #[error("preparing the self-signed certificate")]
    SelfSigned(#[source] TlsError),
    #[error("loading the TLS certificates")]
    Certificates(#[source] TlsError),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("registering a listener")]
    Register(#[source] std::io::Error),
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl Daemon {
    /// What the configuration offers its listeners, as far as known before anything is bound
    /// or loaded (see [`ListenSpec::check`]).
    pub fn offers(&self) -> Offers {
        Offers {
            certificate: None,
            gssapi: self.gssapi.is_some(),
            trusted_proxies: !self.trusted_proxies.is_empty(),
            cluster: self.config.cluster.is_some(),
        }
    }

    /// Without a configured address, the node advertises the listener it would by default as
    /// bound (an ephemeral port, a socket passed by systemd).
    fn advertise_bound(
        &mut self,
        sockets: &[(StdListener, ListenSpec)],
    ) -> Result<(), DaemonError> {
        let Some(node) = self.config.node.as_mut().filter(|_| !self.advertise_given) else {
            return Ok(());
        };
        let bound = sockets
            .iter()
            .map(|(socket, spec)| {
                let address = socket.local_addr().map_err(DaemonError::Address)?;
                Ok(ListenSpec {
                    address,
                    ..spec.clone()
                })
            })
            .collect::<Result<Vec<_>, DaemonError>>()?;
        if let Some(address) = default_advertised(&bound) {
            if address.ip().is_unspecified() {
                warn!(%address, "advertising a wildcard address in the node table; set advertise");
            }
            node.advertise = address.to_string();
        }
        info!(node = %node.id, advertise = %node.advertise, "node table entry on");
        Ok(())
    }

    fn open_store(&self) -> Result<Arc<dyn Store>, DaemonError> {
        match &self.store {
            Some(url) => {
                let store = store::open_postgres(url, Some(&self.node_id))
                    .map_err(DaemonError::Postgres)?;
                // The URL may hold a password: it is not logged.
                info!(node = %self.node_id, "maildrop store open (PostgreSQL)");
                Ok(Arc::from(store))
            }
            None => {
                let store = store::SqliteStore::open(&self.data_dir).map_err(|source| {
                    DaemonError::Sqlite {
                        dir: self.data_dir.clone(),
                        source,
                    }
                })?;
                store
                    .set_mmap_size(self.sqlite_mmap_size)
                    .map_err(|source| DaemonError::Sqlite {
                        dir: self.data_dir.clone(),
                        source,
                    })?;
                info!(data_dir = %self.data_dir.display(), "maildrop store open");
                Ok(Arc::new(store))
            }
        }
    }

    /// The certificates to serve: the configured ones, or the self-signed one of the defaults.
    /// The configured certificates, read while pop3d may still be root: their keys are often
    /// readable by root alone, and that must not depend on the `user` pop3d becomes.
    fn load_configured_tls(&self) -> Result<Option<Arc<Tls>>, DaemonError> {
        if self.certificates.is_empty() {
            return Ok(None);
        }
        let tls = Tls::load(self.certificates.clone()).map_err(DaemonError::Certificates)?;
        Ok(Some(Arc::new(tls)))
    }

    /// The self-signed certificate when none is configured, made in the data directory as
    /// the user that owns it (after privileges are dropped).
    fn load_self_signed(&self) -> Result<Option<Arc<Tls>>, DaemonError> {
        let files = if self.self_signed && self.certificates.is_empty() {
            let dir = self.data_dir.join("tls");
            let (files, fingerprint) =
                tls::self_signed(&dir, &self.config.hostname).map_err(DaemonError::SelfSigned)?;
            info!(
                cert = %files.cert.display(),
                sha256 = %fingerprint,
                "using a self-signed certificate; configure a real one for production"
            );
            vec![files]
        } else {
            return Ok(None);
        };
        let tls = Tls::load(files).map_err(DaemonError::Certificates)?;
        Ok(Some(Arc::new(tls)))
    }
}

/// Runs the daemon until SIGTERM or SIGINT: binds the listeners (or takes the sockets systemd
/// passes), drops privileges, opens the store, loads the certificates, then serves on a
/// multi-threaded runtime with the signal handlers and systemd's notifications in place.
pub fn serve(daemon: Daemon) -> Result<(), DaemonError> {
    raise_fd_limit();
    let sockets = bind(&daemon.listeners)?;
    let lmtp_socket = daemon.lmtp_unix.as_ref().map(bind_lmtp_unix).transpose()?;
    // Secret files are read before privileges go (bind first, read keys, then drop).
    let configured_tls = daemon.load_configured_tls()?;
    if let Some(user) = &daemon.user {
        drop_privileges(user)?;
        if let Some(gssapi) = &daemon.gssapi {
            // Kerberos reads the keytab when a client logs in, as this user: say so now.
            if let Err(source) = std::fs::File::open(&gssapi.keytab) {
                return Err(DaemonError::KeytabUnreadable {
                    keytab: gssapi.keytab.clone(),
                    user: user.clone(),
                    source,
                });
            }
        }
    }
    let mut daemon = daemon;
    daemon.advertise_bound(&sockets)?;
    if let Some(gssapi) = &daemon.gssapi {
        let principal = format!("{}@{}", gssapi.service, daemon.config.hostname);
        daemon.config.gssapi = Some(gssapi_acceptors(&gssapi.keytab, &principal)?);
        info!(%principal, keytab = %gssapi.keytab.display(), "GSSAPI (Kerberos) enabled");
    }
    let store = daemon.open_store()?;
    let tls = match configured_tls {
        Some(tls) => Some(tls),
        None => daemon.load_self_signed()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    // The store's last reference is dropped at the end, on this thread, once the runtime is
    // gone: a PostgreSQL connection closes by blocking on a runtime of its own, which panics
    // on a tokio worker ("Cannot start a runtime from within a runtime").
    let last_store = store.clone();
    let Daemon {
        config,
        trusted_proxies,
        user,
        ..
    } = daemon;
    let result = runtime.block_on(async move {
        let mut listeners = Vec::with_capacity(sockets.len());
        for (socket, spec) in sockets {
            listeners.push(Listener {
                socket: tokio::net::TcpListener::from_std(socket).map_err(DaemonError::Register)?,
                kind: spec.kind,
                min_tls: spec.min_tls,
                cleartext: spec.cleartext,
                proxy: spec.proxy.then(|| trusted_proxies.clone()),
            });
        }
        let mut lmtp_unix = Vec::new();
        if let Some((socket, path)) = lmtp_socket {
            lmtp_unix.push(LmtpUnixListener {
                socket: tokio::net::UnixListener::from_std(socket)
                    .map_err(DaemonError::Register)?,
                path,
            });
        }
        if let Some(tls) = &tls {
            tokio::spawn(signals::reload_on_sighup(tls.clone(), user));
        }
        // READY=1 is sent by `run` once it accepts (after a node's first heartbeat).
        let shutdown = async {
            signals::shutdown().await;
            signals::notify_systemd(&[NotifyState::Stopping]);
        };
        run_with_unix(listeners, lmtp_unix, store, config, tls, shutdown).await?;
        Ok(())
    });
    // Waits for the blocking tasks, which hold references to the store too.
    drop(runtime);
    drop(last_store);
    result
}

/// The sockets to serve: those systemd passed, each with the policy of the configured listener
/// of its kind and port, plus the metrics endpoint bound here; else the configured listeners,
/// bound here. Non-blocking, for tokio.
fn bind(specs: &[ListenSpec]) -> Result<Vec<(StdListener, ListenSpec)>, DaemonError> {
    let inherited = activation::inherited()?;
    let mut sockets = Vec::with_capacity(specs.len().max(inherited.len()));
    if inherited.is_empty() {
        for spec in specs {
            sockets.push((bind_one(spec)?, spec.clone()));
        }
    } else {
        for passed in inherited {
            let addr = passed
                .socket
                .local_addr()
                .map_err(DaemonError::PassedAddress)?;
            info!(%addr, name = %passed.name, "using a socket passed by systemd");
            let spec = activation::spec_for(addr, passed.kind, specs);
            sockets.push((passed.socket, spec));
        }
        // systemd passes the POP3 sockets; the metrics endpoint is pop3d's own to bind.
        for spec in specs.iter().filter(|s| s.kind == ListenerKind::Metrics) {
            sockets.push((bind_one(spec)?, spec.clone()));
        }
    }
    for (socket, _) in &sockets {
        socket
            .set_nonblocking(true)
            .map_err(DaemonError::NonBlocking)?;
    }
    Ok(sockets)
}

fn bind_one(spec: &ListenSpec) -> Result<StdListener, DaemonError> {
    StdListener::bind(spec.address).map_err(|source| DaemonError::Bind {
        address: spec.address,
        source,
    })
}

/// Binds the LMTP Unix socket (before privileges are dropped, so it may live in a directory
/// only root can write), replacing a socket an earlier run left, with its mode and group.
fn bind_lmtp_unix(
    spec: &LmtpUnix,
) -> Result<(std::os::unix::net::UnixListener, PathBuf), DaemonError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let path = spec.path.clone();
    let failed = |source| DaemonError::LmtpSocket {
        path: path.clone(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(&path).map_err(failed)?;
        }
    }
    let socket = std::os::unix::net::UnixListener::bind(&path).map_err(failed)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(spec.mode)).map_err(failed)?;
    if let Some(group) = &spec.group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| DaemonError::NoSuchGroup(group.clone()))?;
        std::os::unix::fs::chown(&path, None, Some(gid.gid.as_raw())).map_err(failed)?;
    }
    socket.set_nonblocking(true).map_err(failed)?;
    info!(path = %path.display(), mode = format!("{:o}", spec.mode), group = ?spec.group, "LMTP socket bound");
    Ok((socket, path))
}

/// The Kerberos acceptor credentials for `principal` (`service@host`) from `keytab`.
#[cfg(feature = "gssapi")]
fn gssapi_acceptors(
    keytab: &std::path::Path,
    principal: &str,
) -> Result<Arc<dyn auth::GssAcceptorFactory>, DaemonError> {
    // Read by MIT Kerberos when it needs the key; set before any thread that could race.
    std::env::set_var("KRB5_KTNAME", format!("FILE:{}", keytab.display()));
    let acceptors = auth::gss::krb5::Krb5Acceptors::new(principal).map_err(DaemonError::Gssapi)?;
    Ok(Arc::new(acceptors))
}

#[cfg(not(feature = "gssapi"))]
fn gssapi_acceptors(
    _keytab: &std::path::Path,
    _principal: &str,
) -> Result<Arc<dyn auth::GssAcceptorFactory>, DaemonError> {
    Err(DaemonError::NoKerberos)
}
