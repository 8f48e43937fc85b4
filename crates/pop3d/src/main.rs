//! `pop3d`: the POP3 server binary. It reads the configuration file and flags into a
//! [`server::Config`], opens the maildrop store, loads (or generates) certificates, binds the
//! listeners, sets up logging and signal handling, and hands over to [`server::run`].
//! Everything else lives in the library crates.

mod activation;
mod cluster;
mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use server::{CertFiles, Cleartext, ListenerKind, Tls, TlsVersion, TrustedProxies};
use tracing::{error, info, warn};

use crate::config::{parse_cleartext, parse_min_tls, secs, File, ListenSpec};

/// What `pop3d --help` and pop3d(8) show after the flags. Headings ending in `:` become man
/// page sections (see the `clidoc` crate).
const AFTER_HELP: &str = "\
Examples:
  # Try it: the embedded defaults (./pop3d-data, 1110 and 1995 on loopback, self-signed)
  pop3d

  # Production: everything from the configuration file, then drop root after binding
  pop3d --config /etc/pop3d/pop3d.toml

  # Flags override the file, e.g. one more listener and a debug log of the sessions
  pop3d --config /etc/pop3d/pop3d.toml --listen [::1]:1110 --log info,server=debug

Files:
  /etc/pop3d/pop3d.toml        the configuration file (--config or $POP3D_CONFIG); every key
                               is in docs/configuration.md, a production example is
                               docs/pop3d.example.toml
  DATA_DIR/maildrops.sqlite3   the maildrops, managed with popadm(8)
  DATA_DIR/tls/                the self-signed certificate, when no certificate is configured

Signals:
  SIGHUP reloads the certificates; SIGTERM and SIGINT stop accepting and let sessions finish.

systemd:
  dist/pop3d.service runs pop3d hardened; with dist/pop3d.socket systemd binds the ports and
  passes them in (LISTEN_FDS; names pop3, pop3s, kpop); pop3d then binds nothing itself.

See also:
  popadm(8); docs/admin-guide.md. Completion scripts: pop3d --completions bash|zsh|fish";

/// POP3 server (RFC 1939, 2449, 2595, 8314, 6856) with a SQLite or PostgreSQL maildrop store.
///
/// Without any flag it serves the embedded defaults: data in ./pop3d-data, POP3 with STLS on
/// 127.0.0.1:1110 and POP3S on 127.0.0.1:1995, with a self-signed certificate generated into
/// ./pop3d-data/tls. Flags override the configuration file.
#[derive(Debug, Parser)]
#[command(name = "pop3d", version, about, after_help = AFTER_HELP)]
struct Args {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, value_name = "FILE", env = "POP3D_CONFIG")]
    config: Option<PathBuf>,

    /// Directory of the maildrop database [default: ./pop3d-data].
    #[arg(long, value_name = "DIR", env = "POP3D_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Keep the maildrops in PostgreSQL instead of SQLite: postgres://USER@HOST:PORT/DB (a
    /// password is better kept in the environment variable than on the command line). Needs a
    /// pop3d built with the `postgres` feature.
    #[arg(long, value_name = "URL", env = "POP3D_STORE")]
    store: Option<String>,

    /// This node's id in a shared PostgreSQL store; its leases are cleared at start, so every
    /// running pop3d needs its own [default: the hostname]. Given (here or in the file), the
    /// node also keeps its entry in the node table (`popadm node list`) with heartbeats, and
    /// takes no new logins while an operator drains it (`popadm node drain`).
    #[arg(long, value_name = "NAME")]
    node_id: Option<String>,

    /// HOST:PORT this node advertises in the node table [default: the first proxied
    /// listener's address, else the first POP3 listener's].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,

    /// Seconds between node heartbeats (with --node-id) [default: 5].
    #[arg(long, value_name = "SECS")]
    heartbeat: Option<u64>,

    /// Serve nginx's mail proxy `auth_http` protocol on ADDR: logins through nginx are
    /// checked here and sent to a live node with a signed ticket. Needs --cluster-key-file.
    #[arg(long, value_name = "ADDR")]
    auth_http: Option<SocketAddr>,

    /// The cluster secret (at least 32 random octets, shared by every node and the auth_http
    /// endpoint): signs the login tickets and keys the requests of nginx.
    #[arg(long, value_name = "FILE")]
    cluster_key_file: Option<PathBuf>,

    /// Print the nginx `mail` block for a cluster whose nginx listens on ADDR (with this
    /// configuration's auth_http address, key and pre-login capabilities) and exit.
    #[arg(long, value_name = "ADDR")]
    print_nginx_config: Option<SocketAddr>,

    /// Cleartext POP3 listener (STLS offered when a certificate exists); repeatable.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Backend POP3 listener behind a load balancer (nginx mail or stream proxy, haproxy):
    /// only --trusted-proxy peers may connect, each connection starts with a PROXY protocol
    /// header (v1 or v2) and the client it names is the one logged, limited and penalised;
    /// other peers are closed unanswered. The cleartext policy applies to the proxy's link.
    /// Repeatable.
    #[arg(long = "listen-proxy", value_name = "ADDR")]
    listen_proxy: Vec<SocketAddr>,

    /// Address or CIDR network (10.0.0.0/8, fd00::/8) allowed to connect to proxied listeners
    /// and to name the client in a PROXY header; repeatable. Replaces the file's
    /// trusted_proxies.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxy: Vec<String>,

    /// Implicit-TLS POP3S listener (RFC 8314); repeatable.
    #[arg(long = "listen-tls", value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,

    /// KPOP listener: Kerberos only (SASL GSSAPI; port 1109 in production); repeatable.
    /// Needs --gssapi-keytab.
    #[arg(long = "listen-kpop", value_name = "ADDR")]
    listen_kpop: Vec<SocketAddr>,

    /// Keytab holding the service key (`pop/HOST@REALM`); enables SASL GSSAPI (RFC 4752).
    /// Needs a pop3d built with the `gssapi` feature.
    #[arg(long, value_name = "FILE")]
    gssapi_keytab: Option<PathBuf>,

    /// GSSAPI service name; the principal is SERVICE/HOSTNAME [default: pop].
    #[arg(long, value_name = "NAME")]
    gssapi_service: Option<String>,

    /// Cleartext login policy of the listeners given by flags: never, loopback or always.
    #[arg(long, value_name = "POLICY")]
    cleartext: Option<String>,

    /// Lowest TLS version of the listeners given by flags: 1.2 or 1.3.
    #[arg(long, value_name = "VERSION")]
    min_tls: Option<String>,

    /// Certificate chain (PEM); with --tls-key. Replaces the file's certificates.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Do not generate a self-signed certificate when none is configured (no STLS, no POP3S).
    #[arg(long)]
    no_self_signed: bool,

    /// Inactivity autologout in seconds (RFC 1939: at least 600) [default: 600].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,

    /// Connections served at once; more get -ERR [SYS/TEMP] [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Connections served at once per client address, IPv6 by /64 [default: 20].
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<usize>,

    /// Seconds a client has from connecting to completing its login [default: 60].
    #[arg(long, value_name = "SECS")]
    login_timeout: Option<u64>,

    /// Lease of a maildrop lock in seconds, renewed while the session lives [default: 120].
    #[arg(long, value_name = "SECS")]
    lock_lease: Option<u64>,

    /// Seconds shutdown waits for sessions to finish the command in hand [default: 30].
    #[arg(long, value_name = "SECS")]
    shutdown_grace: Option<u64>,

    /// RFC 2449 LOGIN-DELAY in seconds between logins of a user [default: 0].
    #[arg(long, value_name = "SECS")]
    login_delay: Option<u64>,

    /// Extra logins allowed within one LOGIN-DELAY period [default: 0].
    #[arg(long, value_name = "N")]
    login_delay_burst: Option<u32>,

    /// RFC 2449 EXPIRE: days retrieved messages are kept, or "never" [default: never].
    #[arg(long, value_name = "DAYS|never")]
    expire: Option<String>,

    /// Offer APOP and CRAM-MD5 to accounts with a legacy secret (popadm --legacy-auth).
    #[arg(long)]
    legacy_auth: bool,

    /// Domain for bare user names (`john` logs in as `john@DOMAIN` if `john` is no account).
    #[arg(long, value_name = "DOMAIN")]
    default_domain: Option<String>,

    /// Seconds the first failed-login reply is delayed; doubles up to 15 (0: none) [default: 2].
    #[arg(long, value_name = "SECS")]
    auth_failure_delay: Option<u64>,

    /// Seconds a verified password is remembered (keyed MAC, never the password) so a repeat
    /// login skips argon2; 0 turns the cache off [default: 300].
    #[arg(long, value_name = "SECS")]
    credential_cache_ttl: Option<u64>,

    /// Failed logins after which a connection is closed [default: 3].
    #[arg(long, value_name = "N")]
    max_auth_failures: Option<u32>,

    /// Host name in the APOP timestamp, CRAM-MD5 challenges, the GSSAPI principal and the
    /// self-signed certificate [default: the machine's].
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,

    /// Log filter (tracing env-filter syntax), e.g. `info` or `server=debug` [default: info].
    #[arg(long, value_name = "FILTER", env = "POP3D_LOG")]
    log: Option<String>,

    /// Log format on stderr: `text`, or `json` (one JSON object per line, for journald or a
    /// log shipper) [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,

    /// After binding the listeners, run as this user (and its group); the data directory must
    /// be theirs.
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// Print a shell completion script (bash, zsh, fish, ...) to stdout and exit.
    #[arg(long, value_name = "SHELL", value_enum, exclusive = true)]
    completions: Option<clidoc::Shell>,

    /// Write pop3d's manual page (section 8) into DIR and exit (`cargo xtask man` runs it).
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    generate_man: Option<PathBuf>,

    /// Testing only: allow an idle timeout below RFC 1939's 10 minutes.
    #[arg(long, hide = true)]
    allow_short_idle_timeout: bool,
}

/// Manual section of the page: system administration (daemons).
const MAN_SECTION: &str = "8";

/// `--completions` and `--generate-man`: documentation of the command line itself, generated
/// from the same definition it is parsed with.
fn self_document(args: &Args) -> Option<Result<()>> {
    use clap::CommandFactory;
    if let Some(shell) = args.completions {
        return Some(
            clidoc::completions(Args::command(), shell, &mut std::io::stdout().lock())
                .context("writing the completion script"),
        );
    }
    let dir = args.generate_man.as_ref()?;
    Some(
        clidoc::write_man_pages(Args::command(), MAN_SECTION, dir)
            .with_context(|| format!("writing the manual page into {}", dir.display()))
            .map(|written| {
                for p in written {
                    println!("{}", p.display());
                }
            }),
    )
}

/// Everything `run` needs, resolved from the file, the flags and the defaults.
#[derive(Debug)]
struct Settings {
    /// Keytab and service name, when GSSAPI is on.
    gssapi: Option<(PathBuf, String)>,
    data_dir: PathBuf,
    /// A PostgreSQL URL, instead of the SQLite database in `data_dir`.
    store: Option<String>,
    node_id: String,
    /// `advertise` was configured; otherwise the node advertises a bound listener's address
    /// (known only once bound: port 0, sockets passed by systemd).
    advertise_given: bool,
    user: Option<String>,
    log: String,
    json_logs: bool,
    server: server::Config,
    listeners: Vec<ListenSpec>,
    /// Who may connect to the listeners whose spec says `proxy`.
    trusted_proxies: Arc<TrustedProxies>,
    certificates: Vec<CertFiles>,
    self_signed: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match self_document(&args) {
        Some(Ok(())) => return ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("pop3d: {e:#}");
            return ExitCode::FAILURE;
        }
        None => {}
    }
    let settings = match resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pop3d: {e:#}");
            return ExitCode::from(64);
        }
    };
    if let Some(listen) = args.print_nginx_config {
        return match print_nginx_config(&settings, listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pop3d: {e:#}");
                ExitCode::from(64)
            }
        };
    }
    if let Err(e) = init_logging(&settings.log, settings.json_logs) {
        eprintln!("pop3d: {e:#}");
        return ExitCode::from(64);
    }
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("pop3d: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--print-nginx-config LISTEN`: the nginx `mail` block for this configuration.
fn print_nginx_config(settings: &Settings, listen: SocketAddr) -> Result<()> {
    let Some(cluster) = &settings.server.cluster else {
        bail!("--print-nginx-config needs the cluster secret (--cluster-key-file)");
    };
    let Some(auth_http) = settings
        .listeners
        .iter()
        .find(|l| l.kind == ListenerKind::AuthHttp)
    else {
        bail!("--print-nginx-config needs the auth_http address (--auth-http)");
    };
    print!(
        "{}",
        cluster::nginx_config(&settings.server, listen, auth_http.address, &cluster.keys)
    );
    Ok(())
}

fn init_logging(filter: &str, json: bool) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
    Ok(())
}

fn resolve(args: &Args) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => File::read(path)?,
        None => File::default(),
    };
    let defaults = server::Config::default();
    let idle = args
        .idle_timeout
        .or(file.idle_timeout)
        .map(secs)
        .unwrap_or(defaults.idle_timeout);
    if idle < server::RFC_MIN_IDLE_TIMEOUT && !args.allow_short_idle_timeout {
        bail!(
            "idle timeout of {} seconds is below RFC 1939's minimum of 600 seconds",
            idle.as_secs()
        );
    }
    let max_connections = args
        .max_connections
        .or(file.max_connections)
        .unwrap_or(defaults.max_connections);
    if max_connections == 0 {
        bail!("max_connections must be at least 1");
    }
    let max_connections_per_ip = args
        .max_connections_per_ip
        .or(file.max_connections_per_ip)
        .unwrap_or(defaults.max_connections_per_ip);
    if max_connections_per_ip == 0 {
        bail!("max_connections_per_ip must be at least 1");
    }
    let login_timeout = args
        .login_timeout
        .or(file.login_timeout)
        .map(secs)
        .unwrap_or(defaults.login_timeout);
    if login_timeout.is_zero() {
        bail!("login_timeout must be at least 1 second");
    }
    let lock_lease = args
        .lock_lease
        .or(file.lock_lease)
        .map(secs)
        .unwrap_or(defaults.lock_lease);
    if lock_lease.is_zero() {
        bail!("lock_lease must be at least 1 second");
    }
    let expire = match (&args.expire, &file.expire) {
        (Some(flag), _) => config::ExpireSetting::Word(flag.clone()).resolve()?,
        (None, Some(setting)) => setting.resolve()?,
        (None, None) => defaults.expire,
    };
    let implementation = match file.implementation {
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s),
        None => defaults.implementation,
    };
    let server = server::Config {
        hostname: args
            .hostname
            .clone()
            .or(file.hostname)
            .unwrap_or(defaults.hostname),
        idle_timeout: idle,
        max_connections,
        max_connections_per_ip,
        login_timeout,
        lock_lease,
        shutdown_grace: args
            .shutdown_grace
            .or(file.shutdown_grace)
            .map(secs)
            .unwrap_or(defaults.shutdown_grace),
        tls_handshake_timeout: file
            .tls_handshake_timeout
            .map(secs)
            .unwrap_or(defaults.tls_handshake_timeout),
        greeting: file.greeting.unwrap_or(defaults.greeting),
        implementation,
        login_delay: args
            .login_delay
            .or(file.login_delay)
            .map(secs)
            .unwrap_or(defaults.login_delay),
        login_delay_burst: args
            .login_delay_burst
            .or(file.login_delay_burst)
            .unwrap_or(defaults.login_delay_burst),
        expire,
        legacy_auth: args.legacy_auth || file.legacy_auth.unwrap_or(defaults.legacy_auth),
        default_domain: args
            .default_domain
            .clone()
            .or(file.default_domain)
            .map(|d| d.to_lowercase()),
        auth_failure_delay: args
            .auth_failure_delay
            .or(file.auth_failure_delay)
            .map(secs)
            .unwrap_or(defaults.auth_failure_delay),
        max_auth_failures: args
            .max_auth_failures
            .or(file.max_auth_failures)
            .unwrap_or(defaults.max_auth_failures)
            .max(1),
        argon2: match &file.argon2 {
            Some(a) => auth::Argon2Params {
                memory_kib: a.memory_kib.unwrap_or(defaults.argon2.memory_kib),
                iterations: a.iterations.unwrap_or(defaults.argon2.iterations),
                parallelism: a.parallelism.unwrap_or(defaults.argon2.parallelism),
            },
            None => defaults.argon2,
        },
        credential_cache_ttl: args
            .credential_cache_ttl
            .or(file.credential_cache_ttl)
            .map(secs)
            .unwrap_or(defaults.credential_cache_ttl),
        // Set in `run`, after privileges are dropped.
        gssapi: None,
        // Set below, once the listeners are known.
        node: None,
        cluster: match args.cluster_key_file.clone().or(file.cluster_key_file) {
            Some(path) => Some(server::Cluster::new(cluster::read_keys(&path)?)),
            None => None,
        },
    };
    let auth_http = args.auth_http.or(file.auth_http);
    if auth_http.is_some() && server.cluster.is_none() {
        bail!("--auth-http needs the cluster secret (--cluster-key-file)");
    }
    if auth::hash_password_with(b"check", server.argon2).is_err() {
        bail!("invalid [argon2] parameters: {:?}", server.argon2);
    }

    // Listeners: flags replace the file's; neither means the embedded defaults.
    let mut listeners = Vec::new();
    if args.listen.is_empty()
        && args.listen_tls.is_empty()
        && args.listen_kpop.is_empty()
        && args.listen_proxy.is_empty()
    {
        for l in &file.listen {
            listeners.push(l.resolve()?);
        }
    } else {
        let cleartext = args
            .cleartext
            .as_deref()
            .map(parse_cleartext)
            .transpose()?
            .unwrap_or_default();
        let min_tls = args
            .min_tls
            .as_deref()
            .map(parse_min_tls)
            .transpose()?
            .unwrap_or_default();
        let spec = |address, kind| ListenSpec {
            address,
            kind,
            cleartext,
            min_tls,
            proxy: false,
        };
        listeners.extend(args.listen.iter().map(|&a| spec(a, ListenerKind::Plain)));
        listeners.extend(args.listen_proxy.iter().map(|&a| ListenSpec {
            proxy: true,
            ..spec(a, ListenerKind::Plain)
        }));
        listeners.extend(
            args.listen_tls
                .iter()
                .map(|&a| spec(a, ListenerKind::ImplicitTls)),
        );
        listeners.extend(
            args.listen_kpop
                .iter()
                .map(|&a| spec(a, ListenerKind::Kpop)),
        );
    }
    if listeners.is_empty() {
        listeners = vec![
            ListenSpec {
                address: SocketAddr::from(([127, 0, 0, 1], 1110)),
                kind: ListenerKind::Plain,
                cleartext: Cleartext::default(),
                min_tls: TlsVersion::default(),
                proxy: false,
            },
            ListenSpec {
                address: SocketAddr::from(([127, 0, 0, 1], 1995)),
                kind: ListenerKind::ImplicitTls,
                cleartext: Cleartext::default(),
                min_tls: TlsVersion::default(),
                proxy: false,
            },
        ];
    }

    let trusted_proxies = if args.trusted_proxy.is_empty() {
        TrustedProxies::parse(&file.trusted_proxies)?
    } else {
        TrustedProxies::parse(&args.trusted_proxy)?
    };
    if trusted_proxies.is_empty() {
        if let Some(l) = listeners.iter().find(|l| l.proxy) {
            bail!(
                "the proxied listener {} needs the addresses of its proxies: \
                 --trusted-proxy CIDR or trusted_proxies = [\"CIDR\", ...]",
                l.address
            );
        }
    }
    if let Some(address) = auth_http {
        listeners.push(ListenSpec {
            address,
            kind: ListenerKind::AuthHttp,
            cleartext: Cleartext::default(),
            min_tls: TlsVersion::default(),
            proxy: false,
        });
    }

    let certificates = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => vec![CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }],
        _ => file
            .certificate
            .iter()
            .map(|c| CertFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
            .collect(),
    };
    let self_signed = !args.no_self_signed && file.self_signed.unwrap_or(true);
    let json_logs = match args.log_format.clone().or(file.log_format).as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("log format must be \"text\" or \"json\", not {other:?}"),
    };
    let gssapi = args.gssapi_keytab.clone().or(file.gssapi_keytab).map(|k| {
        let service = args
            .gssapi_service
            .clone()
            .or(file.gssapi_service)
            .unwrap_or_else(|| "pop".into());
        (k, service)
    });
    if gssapi.is_none() && listeners.iter().any(|l| l.kind == ListenerKind::Kpop) {
        bail!("a KPOP listener needs --gssapi-keytab");
    }
    let store = args.store.clone().or(file.store);
    if let Some(url) = &store {
        if !store::is_postgres_url(url) {
            bail!(
                "the store must be a postgres:// or postgresql:// URL \
                 (the default SQLite store lives in the data directory)"
            );
        }
    }
    let explicit_node_id = args.node_id.clone().or(file.node_id);
    let node_id = explicit_node_id
        .clone()
        .or_else(|| store::hostname().map(str::to_owned))
        .unwrap_or_else(|| "pop3d".into());
    let mut server = server;
    let advertise = args.advertise.clone().or(file.advertise);
    let advertise_given = advertise.is_some();
    server.node = match explicit_node_id {
        Some(id) => Some(node_config(
            id,
            advertise,
            args.heartbeat.or(file.heartbeat),
            &listeners,
        )?),
        None => None,
    };
    if let (Some(cluster), Some(node)) = (&mut server.cluster, &server.node) {
        // The endpoint judges a node dead after three missed heartbeats of this configuration.
        cluster.node_liveness = node.heartbeat * 3;
        // nginx connects to the advertised address as it is (its auth_http protocol takes an
        // IP address), so a name or a wildcard would make this node unreachable.
        if !node
            .advertise
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_unspecified())
        {
            bail!(
                "a cluster node advertises {:?}: nginx needs this node's IP address and port \
                 (--advertise IP:PORT, e.g. its proxied listener's address on nginx's network)",
                node.advertise
            );
        }
    }
    Ok(Settings {
        gssapi,
        store,
        node_id,
        advertise_given,
        user: args.user.clone().or(file.user),
        json_logs,
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./pop3d-data")),
        log: args
            .log
            .clone()
            .or(file.log)
            .unwrap_or_else(|| "info".into()),
        server,
        listeners,
        trusted_proxies: Arc::new(trusted_proxies),
        certificates,
        self_signed,
    })
}

/// Seconds between node heartbeats when none is configured.
const DEFAULT_HEARTBEAT: u64 = 5;

/// The node table entry of node `id`: the address it advertises (given, or the first proxied
/// listener's, else the first POP3 listener's) and its heartbeat interval.
fn node_config(
    id: String,
    advertise: Option<String>,
    heartbeat: Option<u64>,
    listeners: &[ListenSpec],
) -> Result<server::NodeConfig> {
    if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
        bail!("the node id must be 1 to 255 characters without control characters");
    }
    let heartbeat = heartbeat.unwrap_or(DEFAULT_HEARTBEAT);
    if heartbeat == 0 {
        bail!("heartbeat must be at least 1 second");
    }
    let advertise = match advertise {
        Some(address) => {
            let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.chars().any(|c| c.is_whitespace() || c.is_control())
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                bail!("advertise must be HOST:PORT, not {address:?}");
            }
            address
        }
        None => {
            let Some(first) = default_advertised(listeners) else {
                bail!("no POP3 listener to advertise: set advertise (--advertise HOST:PORT)");
            };
            if first.ip().is_unspecified() {
                warn!(
                    address = %first,
                    "advertising a wildcard address in the node table; set advertise"
                );
            }
            first.to_string()
        }
    };
    Ok(server::NodeConfig {
        id,
        advertise,
        heartbeat: secs(heartbeat),
    })
}

/// The listener a node advertises by default: the first proxied one, else the first POP3
/// (cleartext) one.
fn default_advertised(listeners: &[ListenSpec]) -> Option<SocketAddr> {
    let pop3 = |l: &&ListenSpec| l.kind == ListenerKind::Plain;
    let proxied = listeners.iter().filter(pop3).find(|l| l.proxy);
    proxied
        .or_else(|| listeners.iter().find(pop3))
        .map(|l| l.address)
}

/// The certificates to serve: the configured ones, or the self-signed one of the defaults.
fn load_tls(settings: &Settings) -> Result<Option<Arc<Tls>>> {
    let files = if !settings.certificates.is_empty() {
        settings.certificates.clone()
    } else if settings.self_signed {
        let dir = settings.data_dir.join("tls");
        let (files, fingerprint) = server::tls::self_signed(&dir, &settings.server.hostname)
            .context("preparing the self-signed certificate")?;
        info!(
            cert = %files.cert.display(),
            sha256 = %fingerprint,
            "using a self-signed certificate; configure a real one for production"
        );
        vec![files]
    } else {
        return Ok(None);
    };
    let tls = Tls::load(files).context("loading the TLS certificates")?;
    Ok(Some(Arc::new(tls)))
}

fn run(settings: Settings) -> Result<()> {
    raise_fd_limit();
    // Bind first (privileged ports need root), then drop privileges, then touch files. Sockets
    // passed by systemd replace the configured listeners, whose policies they take (matched by
    // kind and port).
    let mut sockets = Vec::new();
    let inherited = activation::inherited()?;
    if inherited.is_empty() {
        for spec in &settings.listeners {
            let socket = std::net::TcpListener::bind(spec.address)
                .with_context(|| format!("listening on {}", spec.address))?;
            sockets.push((socket, spec.clone()));
        }
    } else {
        for passed in inherited {
            let addr = passed
                .socket
                .local_addr()
                .context("reading the address of a socket passed by systemd")?;
            info!(%addr, name = %passed.name, "using a socket passed by systemd");
            let spec = activation::spec_for(addr, passed.kind, &settings.listeners);
            sockets.push((passed.socket, spec));
        }
    }
    for (socket, _) in &sockets {
        socket
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
    }
    if let Some(user) = &settings.user {
        drop_privileges(user)?;
    }
    let mut settings = settings;
    if let Some(node) = settings
        .server
        .node
        .as_mut()
        .filter(|_| !settings.advertise_given)
    {
        // The address as bound (an ephemeral port, a socket passed by systemd).
        let bound = sockets
            .iter()
            .map(|(socket, spec)| {
                let address = socket
                    .local_addr()
                    .context("reading a listener's address")?;
                Ok(ListenSpec {
                    address,
                    ..spec.clone()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(address) = default_advertised(&bound) {
            node.advertise = address.to_string();
        }
        info!(node = %node.id, advertise = %node.advertise, "node table entry on");
    }
    if let Some((keytab, service)) = &settings.gssapi {
        let principal = format!("{service}@{}", settings.server.hostname);
        settings.server.gssapi = Some(gssapi_acceptors(keytab, &principal)?);
        info!(%principal, keytab = %keytab.display(), "GSSAPI (Kerberos) enabled");
    }
    let store: Arc<dyn store::Store> = match &settings.store {
        Some(url) => {
            let store = store::open_postgres(url, Some(&settings.node_id))
                .context("opening the PostgreSQL maildrop store")?;
            // The URL may hold a password: it is not logged.
            info!(node = %settings.node_id, "maildrop store open (PostgreSQL)");
            Arc::from(store)
        }
        None => {
            let store = store::SqliteStore::open(&settings.data_dir).with_context(|| {
                format!(
                    "opening the maildrop store in {}",
                    settings.data_dir.display()
                )
            })?;
            info!(data_dir = %settings.data_dir.display(), "maildrop store open");
            Arc::new(store)
        }
    };
    let tls = load_tls(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The store's last reference is dropped at the end, on this thread, once the runtime is
    // gone: a PostgreSQL connection closes by blocking on a runtime of its own, which panics
    // on a tokio worker ("Cannot start a runtime from within a runtime").
    let last_store = store.clone();
    let result = runtime.block_on(async move {
        let mut listeners = Vec::new();
        for (socket, spec) in sockets {
            listeners.push(server::Listener {
                socket: tokio::net::TcpListener::from_std(socket)
                    .context("registering a listener")?,
                kind: spec.kind,
                min_tls: spec.min_tls,
                cleartext: spec.cleartext,
                proxy: spec.proxy.then(|| settings.trusted_proxies.clone()),
            });
        }
        if let Some(tls) = &tls {
            tokio::spawn(reload_on_sighup(tls.clone()));
        }
        let shutdown = async {
            shutdown_signal().await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        };
        server::run(listeners, store, settings.server, tls, shutdown).await?;
        Ok(())
    });
    // Waits for the blocking tasks, which hold references to the store too.
    drop(runtime);
    drop(last_store);
    result
}

/// The Kerberos acceptor credentials for `principal` (`service@host`) from `keytab`.
#[cfg(feature = "gssapi")]
fn gssapi_acceptors(
    keytab: &std::path::Path,
    principal: &str,
) -> Result<Arc<dyn auth::GssAcceptorFactory>> {
    // Read by MIT Kerberos when it needs the key; set before any thread that could race.
    std::env::set_var("KRB5_KTNAME", format!("FILE:{}", keytab.display()));
    let acceptors = auth::gss::krb5::Krb5Acceptors::new(principal)
        .map_err(anyhow::Error::msg)
        .context("setting up GSSAPI")?;
    Ok(Arc::new(acceptors))
}

#[cfg(not(feature = "gssapi"))]
fn gssapi_acceptors(
    _keytab: &std::path::Path,
    _principal: &str,
) -> Result<Arc<dyn auth::GssAcceptorFactory>> {
    bail!("this pop3d was built without Kerberos support (cargo feature `gssapi`)")
}

/// A server holds a descriptor per connection: lift the soft limit to the hard one (often
/// 1,024 against 1,048,576), so `max_connections` and not the default limit decides.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => warn!(error = %e, soft, "could not raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not read the open-file limit"),
    }
}

/// Switches to `name`'s user and group (and only its group), for good.
fn drop_privileges(name: &str) -> Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, User};
    let user = User::from_name(name)
        .with_context(|| format!("looking up user {name}"))?
        .with_context(|| format!("no such user: {name}"))?;
    setgroups(&[user.gid]).context("dropping supplementary groups")?;
    setgid(user.gid).context("switching group")?;
    setuid(user.uid).context("switching user")?;
    if nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok() && !user.uid.is_root() {
        bail!("privileges could be regained after dropping them");
    }
    info!(user = name, uid = user.uid.as_raw(), "dropped privileges");
    Ok(())
}

/// Reloads the certificates on SIGHUP; sessions in progress are not touched.
async fn reload_on_sighup(tls: Arc<Tls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot watch SIGHUP; certificates will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(n) => info!(certificates = n, "SIGHUP: certificates reloaded"),
            Err(e) => error!(error = %e, "SIGHUP: reload failed; keeping the old certificates"),
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }

    #[test]
    fn man_page_names_every_flag() {
        let pages = clidoc::pages(Args::command(), MAN_SECTION);
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].file_name, "pop3d.8");
        assert_eq!(
            clidoc::undocumented(Args::command(), &pages, MAN_SECTION),
            Vec::<String>::new()
        );
        for section in [".SH EXAMPLES", ".SH FILES", ".SH SIGNALS", "pop3d.toml"] {
            assert!(pages[0].roff.contains(section), "{section}");
        }
        assert!(
            !pages[0].roff.contains("generate\\-man"),
            "hidden flag documented"
        );
    }

    #[test]
    fn idle_timeout_below_rfc_minimum_is_refused() {
        let args = Args::parse_from(["pop3d", "--idle-timeout", "30"]);
        assert!(resolve(&args).is_err());
        let args = Args::parse_from([
            "pop3d",
            "--idle-timeout",
            "30",
            "--allow-short-idle-timeout",
        ]);
        assert_eq!(
            resolve(&args).map(|s| s.server.idle_timeout.as_secs()).ok(),
            Some(30)
        );
    }

    /// docs/pop3d.example.toml resolves to a production setup: 110 with STLS and no cleartext
    /// passwords, 995, loopback 1110, two certificates and no self-signed one.
    #[test]
    fn production_example_resolves() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/pop3d.example.toml");
        let s = resolve(&Args::parse_from(["pop3d", "--config", path])).expect("example");
        let listeners: Vec<(u16, ListenerKind, Cleartext)> = s
            .listeners
            .iter()
            .map(|l| (l.address.port(), l.kind, l.cleartext))
            .collect();
        assert_eq!(
            listeners,
            [
                (110, ListenerKind::Plain, Cleartext::Never),
                (995, ListenerKind::ImplicitTls, Cleartext::Loopback),
                (1110, ListenerKind::Plain, Cleartext::Always)
            ]
        );
        assert_eq!(s.certificates.len(), 2);
        assert!(!s.self_signed);
        assert_eq!(s.server.max_connections_per_ip, 20);
        assert_eq!(s.server.default_domain.as_deref(), Some("example.org"));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/pop3d"));
    }

    #[test]
    fn store_url_and_node_id() {
        let s = resolve(&Args::parse_from(["pop3d"])).expect("defaults");
        assert_eq!(s.store, None);
        assert_eq!(s.node_id, store::hostname().unwrap_or("pop3d"));
        let s = resolve(&Args::parse_from([
            "pop3d",
            "--store",
            "postgres://u@h/db",
            "--node-id",
            "n1",
        ]))
        .expect("a PostgreSQL store");
        assert_eq!(
            (s.store.as_deref(), s.node_id.as_str()),
            (Some("postgres://u@h/db"), "n1")
        );
        // Only PostgreSQL URLs: the SQLite store is named by --data-dir.
        assert!(resolve(&Args::parse_from(["pop3d", "--store", "/var/lib/pop3d"])).is_err());
    }

    #[test]
    fn proxied_listeners_need_trusted_proxies() {
        let err = resolve(&Args::parse_from([
            "pop3d",
            "--listen-proxy",
            "127.0.0.1:2110",
        ]))
        .expect_err("no trusted proxy");
        assert!(format!("{err:#}").contains("--trusted-proxy"), "{err:#}");
        let s = resolve(&Args::parse_from([
            "pop3d",
            "--listen",
            "127.0.0.1:1110",
            "--listen-proxy",
            "127.0.0.1:2110",
            "--trusted-proxy",
            "127.0.0.1",
            "--trusted-proxy",
            "10.0.0.0/8",
        ]))
        .expect("trusted proxies given");
        let proxied: Vec<(String, bool)> = s
            .listeners
            .iter()
            .map(|l| (l.address.to_string(), l.proxy))
            .collect();
        assert_eq!(
            proxied,
            [
                ("127.0.0.1:1110".to_string(), false),
                ("127.0.0.1:2110".to_string(), true)
            ]
        );
        assert_eq!(s.trusted_proxies.to_string(), "127.0.0.1/32 10.0.0.0/8");
        assert!(resolve(&Args::parse_from([
            "pop3d",
            "--trusted-proxy",
            "10.0.0.0/40"
        ]))
        .is_err());
        // Trusted proxies alone are harmless: no listener uses them.
        assert!(resolve(&Args::parse_from(["pop3d", "--trusted-proxy", "10.0.0.1"])).is_ok());
    }

    #[test]
    fn a_cluster_node_must_advertise_an_ip_address_and_gets_three_heartbeats() {
        let dir = std::env::temp_dir().join(format!("pop3d-cluster-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = dir.join("cluster.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("key");
        let key = key.to_str().expect("utf-8");
        let args = |advertise: &str| {
            Args::parse_from([
                "pop3d",
                "--node-id",
                "n1",
                "--cluster-key-file",
                key,
                "--heartbeat",
                "2",
                "--advertise",
                advertise,
            ])
        };
        let s = resolve(&args("10.0.0.11:1100")).expect("an IP address");
        let cluster = s.server.cluster.expect("cluster");
        assert_eq!(cluster.node_liveness, std::time::Duration::from_secs(6));
        for bad in ["pop1.example.org:1100", "0.0.0.0:1100"] {
            let err = resolve(&args(bad)).expect_err(bad).to_string();
            assert!(err.contains("nginx needs this node's IP address"), "{err}");
        }
        // A short secret is refused with its length.
        std::fs::write(dir.join("short.key"), "short").expect("key");
        let err = resolve(&Args::parse_from([
            "pop3d",
            "--cluster-key-file",
            dir.join("short.key").to_str().expect("utf-8"),
        ]))
        .expect_err("short secret");
        assert!(format!("{err:#}").contains("5 octets"), "{err:#}");
        // The endpoint needs the secret.
        let err = resolve(&Args::parse_from([
            "pop3d",
            "--auth-http",
            "127.0.0.1:8025",
        ]))
        .expect_err("no secret");
        assert!(err.to_string().contains("--cluster-key-file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn node_config_only_with_a_node_id() {
        let s = resolve(&Args::parse_from(["pop3d"])).expect("defaults");
        assert_eq!(s.server.node, None);
        let s = resolve(&Args::parse_from([
            "pop3d",
            "--node-id",
            "n1",
            "--listen-tls",
            "127.0.0.1:995",
            "--listen",
            "127.0.0.1:110",
        ]))
        .expect("a node");
        assert_eq!(
            s.server.node,
            Some(server::NodeConfig {
                id: "n1".into(),
                advertise: "127.0.0.1:110".into(),
                heartbeat: std::time::Duration::from_secs(5),
            })
        );
        let s = resolve(&Args::parse_from([
            "pop3d",
            "--node-id",
            "n1",
            "--advertise",
            "pop1.example.org:1100",
            "--heartbeat",
            "2",
        ]))
        .expect("a node");
        let node = s.server.node.expect("node");
        assert_eq!(node.advertise, "pop1.example.org:1100");
        // Behind a proxy, the proxied listener is where the proxy should send clients.
        let s = resolve(&Args::parse_from([
            "pop3d",
            "--node-id",
            "n1",
            "--listen",
            "127.0.0.1:110",
            "--listen-proxy",
            "127.0.0.1:1100",
            "--trusted-proxy",
            "127.0.0.1",
        ]))
        .expect("a proxied node");
        assert_eq!(s.server.node.expect("node").advertise, "127.0.0.1:1100");
        assert_eq!(node.heartbeat, std::time::Duration::from_secs(2));
        for bad in [
            &["--advertise", "no-port"][..],
            &["--advertise", "host:0"],
            &["--advertise", ":110"],
            &["--heartbeat", "0"],
            &["--listen-tls", "127.0.0.1:995"],
        ] {
            let args = ["pop3d", "--node-id", "n1"].iter().chain(bad);
            assert!(resolve(&Args::parse_from(args)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn embedded_defaults() {
        let s = resolve(&Args::parse_from(["pop3d"])).expect("defaults");
        assert_eq!(s.data_dir, PathBuf::from("./pop3d-data"));
        let addrs: Vec<String> = s.listeners.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:1110", "127.0.0.1:1995"]);
        assert_eq!(s.listeners[1].kind, ListenerKind::ImplicitTls);
        assert!(s.self_signed && s.certificates.is_empty());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("pop3d-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("pop3d.toml");
        std::fs::write(
            &path,
            "idle_timeout = 900\nlogin_delay = 60\nexpire = 30\n[[listen]]\naddress = \"127.0.0.1:2110\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf8");
        let s = resolve(&Args::parse_from(["pop3d", "--config", p])).expect("file");
        assert_eq!(s.server.idle_timeout.as_secs(), 900);
        assert_eq!(s.server.login_delay.as_secs(), 60);
        assert_eq!(s.server.expire, store::Expire::Days(30));
        assert_eq!(s.listeners.len(), 1);
        let s = resolve(&Args::parse_from([
            "pop3d",
            "--config",
            p,
            "--login-delay",
            "5",
            "--expire",
            "never",
            "--listen",
            "127.0.0.1:3110",
        ]))
        .expect("flags");
        assert_eq!(s.server.login_delay.as_secs(), 5);
        assert_eq!(s.server.expire, store::Expire::Never);
        assert_eq!(s.listeners[0].address.to_string(), "127.0.0.1:3110");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
