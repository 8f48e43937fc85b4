//! The command line of `pop3d` ([`Args`]), and the documentation generated from it: the man
//! page and the shell completion scripts.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

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
  passes them in (LISTEN_FDS; names pop3, pop3s, kpop, lmtp); pop3d then binds nothing itself.

See also:
  popadm(8); docs/admin-guide.md. Completion scripts: pop3d --completions bash|zsh|fish";

/// POP3 server (RFC 1939, 2449, 2595, 8314, 6856) with a SQLite or PostgreSQL maildrop store.
///
/// Without any flag it serves the embedded defaults: data in ./pop3d-data, POP3 with STLS on
/// 127.0.0.1:1110 and POP3S on 127.0.0.1:1995, with a self-signed certificate generated into
/// ./pop3d-data/tls. Flags override the configuration file.
#[derive(Debug, Parser)]
#[command(name = "pop3d", version, about, after_help = AFTER_HELP)]
pub struct Args {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, value_name = "FILE", env = "POP3D_CONFIG")]
    pub config: Option<PathBuf>,

    /// Directory of the maildrop database [default: the file's `data_dir`, else
    /// $POP3D_DATA_DIR, else ./pop3d-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep the maildrops in PostgreSQL instead of SQLite: postgres://USER@HOST:PORT/DB (a
    /// password is better kept in the environment variable than on the command line). Needs a
    /// pop3d built with the `postgres` feature. [default: the file's `store`, else
    /// $POP3D_STORE, else SQLite in the data directory]
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,

    /// Read the SQLite database through a memory map of up to BYTES (SQLite's mmap_size; 0:
    /// with pread). About a third less CPU for large RETRs, but a disk read error under the
    /// map ends the process (SIGBUS) instead of one session [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub sqlite_mmap_size: Option<u64>,

    /// This node's id in a shared PostgreSQL store; its leases are cleared at start, so every
    /// running pop3d needs its own [default: the hostname]. Given (here or in the file), the
    /// node also keeps its entry in the node table (`popadm node list`) with heartbeats, and
    /// takes no new logins while an operator drains it (`popadm node drain`).
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,

    /// HOST:PORT this node advertises in the node table [default: the first proxied
    /// listener's address, else the first POP3 listener's].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Seconds between node heartbeats (with --node-id) [default: 5].
    #[arg(long, value_name = "SECS")]
    pub heartbeat: Option<u64>,

    /// Serve nginx's mail proxy `auth_http` protocol on ADDR: logins through nginx are
    /// checked here and sent to a live node with a signed ticket. Needs --cluster-key-file.
    #[arg(long, value_name = "ADDR")]
    pub auth_http: Option<SocketAddr>,

    /// Address or CIDR network allowed to connect to the auth_http endpoint (nginx's
    /// addresses); others are closed unanswered. Repeatable; replaces the file's
    /// auth_http_allow [default: 127.0.0.0/8 and ::1].
    #[arg(long = "auth-http-allow", value_name = "CIDR")]
    pub auth_http_allow: Vec<String>,

    /// The auth_http endpoint's cleartext policy, judged on the client's link to nginx:
    /// never, loopback or always. Unless always, a password login through nginx needs TLS
    /// (nginx's Auth-SSL) and the printed nginx configuration has `starttls only`
    /// [default: loopback].
    #[arg(long, value_name = "POLICY")]
    pub auth_http_cleartext: Option<String>,

    /// The cluster secret (at least 32 random octets, shared by every node and the auth_http
    /// endpoint): signs the login tickets and keys the requests of nginx.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (text format). The counters reveal
    /// account activity: ADDR must be loopback unless --metrics-allow-remote is given.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Allow --metrics on an address other than loopback (put a firewall or an
    /// authenticating proxy in front of it).
    #[arg(long)]
    pub metrics_allow_remote: bool,

    /// Print the nginx `mail` block for a cluster whose nginx listens on ADDR (with this
    /// configuration's auth_http address, key and pre-login capabilities) and exit.
    #[arg(long, value_name = "ADDR")]
    pub print_nginx_config: Option<SocketAddr>,

    /// LMTP listener (RFC 2033) on ADDR, for an MTA's deliveries (Postfix's
    /// `lmtp:inet:ADDR`); only --lmtp-trusted-network peers are served, others are closed
    /// unanswered. Repeatable; replaces the file's listen_lmtp.
    #[arg(long = "listen-lmtp", value_name = "ADDR")]
    pub listen_lmtp: Vec<SocketAddr>,

    /// LMTP listener on a Unix socket at PATH (Postfix's `lmtp:unix:PATH`); an old socket
    /// there is replaced.
    #[arg(long = "listen-lmtp-unix", value_name = "PATH")]
    pub listen_lmtp_unix: Option<PathBuf>,

    /// Permission bits of the LMTP Unix socket, in octal [default: 0660].
    #[arg(long, value_name = "MODE")]
    pub lmtp_unix_mode: Option<String>,

    /// Group of the LMTP Unix socket (the MTA's, such as postfix) [default: pop3d's].
    #[arg(long, value_name = "GROUP")]
    pub lmtp_unix_group: Option<String>,

    /// Address or CIDR network allowed to connect to the TCP LMTP listeners; repeatable.
    /// Replaces the file's lmtp_trusted_networks [default: 127.0.0.0/8 and ::1].
    #[arg(long = "lmtp-trusted-network", value_name = "CIDR")]
    pub lmtp_trusted_network: Vec<String>,

    /// Largest message taken over LMTP, in octets (announced as SIZE; larger ones get
    /// 552 5.3.4) [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub lmtp_max_message_size: Option<u64>,

    /// Answer a delivery to a full mailbox 452 4.2.2 (the MTA keeps the message and retries)
    /// instead of 552 5.2.2 (it bounces).
    #[arg(long)]
    pub quota_full_temporary: bool,

    /// Cleartext POP3 listener (STLS offered when a certificate exists); repeatable.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Backend POP3 listener behind a load balancer (nginx mail or stream proxy, haproxy):
    /// only --trusted-proxy peers may connect, each connection starts with a PROXY protocol
    /// header (v1 or v2) and the client it names is the one logged, limited and penalised;
    /// other peers are closed unanswered. The cleartext policy applies to the proxy's link.
    /// Repeatable.
    #[arg(long = "listen-proxy", value_name = "ADDR")]
    pub listen_proxy: Vec<SocketAddr>,

    /// Address or CIDR network (10.0.0.0/8, fd00::/8) allowed to connect to proxied listeners
    /// and to name the client in a PROXY header; repeatable. Replaces the file's
    /// trusted_proxies.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxy: Vec<String>,

    /// Implicit-TLS POP3S listener (RFC 8314); repeatable.
    #[arg(long = "listen-tls", value_name = "ADDR")]
    pub listen_tls: Vec<SocketAddr>,

    /// KPOP listener: Kerberos only (SASL GSSAPI; port 1109 in production); repeatable.
    /// Needs --gssapi-keytab.
    #[arg(long = "listen-kpop", value_name = "ADDR")]
    pub listen_kpop: Vec<SocketAddr>,

    /// Keytab holding the service key (`pop/HOST@REALM`); enables SASL GSSAPI (RFC 4752).
    /// Needs a pop3d built with the `gssapi` feature.
    #[arg(long, value_name = "FILE")]
    pub gssapi_keytab: Option<PathBuf>,

    /// GSSAPI service name; the principal is SERVICE/HOSTNAME [default: pop].
    #[arg(long, value_name = "NAME")]
    pub gssapi_service: Option<String>,

    /// Kerberos realm whose principals may log in besides the service principal's own;
    /// repeatable. Replaces the file's gssapi_realms [default: none].
    #[arg(long = "gssapi-realm", value_name = "REALM")]
    pub gssapi_realm: Vec<String>,

    /// Cleartext login policy of the listeners given by flags: never, loopback or always.
    #[arg(long, value_name = "POLICY")]
    pub cleartext: Option<String>,

    /// Lowest TLS version of the listeners given by flags: 1.2 or 1.3.
    #[arg(long, value_name = "VERSION")]
    pub min_tls: Option<String>,

    /// Certificate chain (PEM); with --tls-key. Replaces the file's certificates.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Do not generate a self-signed certificate when none is configured (no STLS, no POP3S).
    #[arg(long)]
    pub no_self_signed: bool,

    /// Inactivity autologout in seconds (RFC 1939: at least 600) [default: 600].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Connections served at once; more get -ERR [SYS/TEMP] [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Connections per client address (IPv6 by /64) that have not logged in yet; logged-in
    /// sessions count against --max-connections only (users behind a NAT) [default: 20].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Seconds a client has from connecting to completing its login [default: 60].
    #[arg(long, value_name = "SECS")]
    pub login_timeout: Option<u64>,

    /// Lease of a maildrop lock in seconds, renewed while the session lives [default: 120].
    #[arg(long, value_name = "SECS")]
    pub lock_lease: Option<u64>,

    /// Seconds shutdown waits for sessions to finish the command in hand [default: 30].
    #[arg(long, value_name = "SECS")]
    pub shutdown_grace: Option<u64>,

    /// RFC 2449 LOGIN-DELAY in seconds between logins of a user [default: 0].
    #[arg(long, value_name = "SECS")]
    pub login_delay: Option<u64>,

    /// Extra logins allowed within one LOGIN-DELAY period [default: 0].
    #[arg(long, value_name = "N")]
    pub login_delay_burst: Option<u32>,

    /// RFC 2449 EXPIRE: days retrieved messages are kept, or "never" [default: never].
    #[arg(long, value_name = "DAYS|never")]
    pub expire: Option<String>,

    /// Offer APOP and CRAM-MD5 to accounts with a legacy secret (popadm --legacy-auth).
    #[arg(long)]
    pub legacy_auth: bool,

    /// Domain for bare user names (`john` logs in as `john@DOMAIN` if `john` is no account).
    #[arg(long, value_name = "DOMAIN")]
    pub default_domain: Option<String>,

    /// Seconds the first failed-login reply is delayed; doubles up to 15 (0: none) [default: 2].
    #[arg(long, value_name = "SECS")]
    pub auth_failure_delay: Option<u64>,

    /// Seconds a verified password is remembered (keyed MAC, never the password) so a repeat
    /// login skips argon2; 0 turns the cache off [default: 300].
    #[arg(long, value_name = "SECS")]
    pub credential_cache_ttl: Option<u64>,

    /// Failed logins after which a connection is closed [default: 3].
    #[arg(long, value_name = "N")]
    pub max_auth_failures: Option<u32>,

    /// Address or CIDR network whose clients are never delayed after a failed login (webmail,
    /// a proxy logging in for its users); repeatable. Replaces the file's trusted_networks
    /// [default: none].
    #[arg(long = "trusted-network", value_name = "CIDR")]
    pub trusted_network: Vec<String>,

    /// PBKDF2 iterations of the SCRAM-SHA-256 keys, at least 4096 (RFC 7677); keys of another
    /// count are derived anew at the next password login [default: 100000].
    #[arg(long, value_name = "N")]
    pub scram_iterations: Option<u32>,

    /// Offer SCRAM-SHA-256-PLUS (channel binding: tls-exporter on TLS 1.3,
    /// tls-server-end-point on TLS 1.2) on TLS connections [default: off].
    #[arg(long)]
    pub scram_plus: bool,

    /// Host name in the APOP timestamp, CRAM-MD5 challenges, the GSSAPI principal and the
    /// self-signed certificate [default: the machine's].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Log filter (tracing env-filter syntax), e.g. `info` or `server=debug` [default: info].
    #[arg(long, value_name = "FILTER", env = "POP3D_LOG")]
    pub log: Option<String>,

    /// Log format on stderr: `text`, or `json` (one JSON object per line, for journald or a
    /// log shipper) [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    #[command(flatten)]
    pub oauth2: oauth2::Flags,

    /// After binding the listeners, run as this user (and its group); the data directory must
    /// be theirs.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Print a shell completion script (bash, zsh, fish, ...) to stdout and exit.
    #[arg(long, value_name = "SHELL", value_enum, exclusive = true)]
    pub completions: Option<clidoc::Shell>,

    /// Write pop3d's manual page (section 8) into DIR and exit (`cargo xtask man` runs it).
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    pub generate_man: Option<PathBuf>,

    /// Testing only: allow an idle timeout below RFC 1939's 10 minutes.
    #[arg(long, hide = true)]
    pub allow_short_idle_timeout: bool,
}

/// Manual section of the page: system administration (daemons).
pub const MAN_SECTION: &str = "8";

/// `--completions` and `--generate-man`: documentation of the command line itself, generated
/// from the same definition it is parsed with.
pub fn self_document(args: &Args) -> Option<Result<()>> {
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
}
