//! The TOML configuration file (`--config FILE`) as written, and the parsing of the values
//! the file and the flags share. Every key is documented in docs/configuration.md; unknown
//! keys are an error. How flags override the file is `settings.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use server::{Cleartext, ListenSpec, ListenerKind, TlsVersion, TrustedProxies};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL for the maildrops instead of SQLite in `data_dir`.
    pub store: Option<String>,
    /// The SQLite database's memory map, in octets (0: none).
    pub sqlite_mmap_size: Option<u64>,
    /// This node's id in a shared PostgreSQL store; given, the node table entry is kept too.
    pub node_id: Option<String>,
    /// `HOST:PORT` this node advertises in the node table.
    pub advertise: Option<String>,
    /// Seconds between node heartbeats.
    pub heartbeat: Option<u64>,
    /// nginx `auth_http` endpoint address.
    pub auth_http: Option<SocketAddr>,
    /// Peers allowed to connect to the endpoint (addresses or CIDR networks).
    pub auth_http_allow: Option<Vec<String>>,
    /// The endpoint's cleartext policy: `"never"`, `"loopback"` or `"always"`.
    pub auth_http_cleartext: Option<String>,
    /// Prometheus `/metrics` endpoint address.
    pub metrics: Option<SocketAddr>,
    /// Allow a `metrics` address other than loopback.
    pub metrics_allow_remote: Option<bool>,
    /// The cluster secret shared by the nodes and the endpoint.
    pub cluster_key_file: Option<PathBuf>,
    /// LMTP listeners on TCP (RFC 2033).
    #[serde(default)]
    pub listen_lmtp: Vec<SocketAddr>,
    /// An LMTP listener on a Unix socket, its mode (octal, as a string) and group.
    pub listen_lmtp_unix: Option<PathBuf>,
    pub lmtp_unix_mode: Option<String>,
    pub lmtp_unix_group: Option<String>,
    /// Peers the TCP LMTP listeners serve (addresses or CIDR networks).
    pub lmtp_trusted_networks: Option<Vec<String>>,
    /// Largest message taken over LMTP, in octets.
    pub lmtp_max_message_size: Option<u64>,
    /// A full mailbox is a temporary failure (452 4.2.2) instead of a bounce (552 5.2.2).
    pub quota_full_temporary: Option<bool>,
    pub gssapi_keytab: Option<PathBuf>,
    pub gssapi_service: Option<String>,
    /// Kerberos realms accepted besides the service principal's own.
    #[serde(default)]
    pub gssapi_realms: Vec<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub log: Option<String>,
    pub log_format: Option<String>,
    pub greeting: Option<String>,
    /// `""` leaves IMPLEMENTATION out of CAPA.
    pub implementation: Option<String>,
    pub idle_timeout: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub login_timeout: Option<u64>,
    pub lock_lease: Option<u64>,
    pub shutdown_grace: Option<u64>,
    pub tls_handshake_timeout: Option<u64>,
    pub login_delay: Option<u64>,
    pub login_delay_burst: Option<u32>,
    pub expire: Option<ExpireSetting>,
    pub legacy_auth: Option<bool>,
    pub default_domain: Option<String>,
    pub auth_failure_delay: Option<u64>,
    pub max_auth_failures: Option<u32>,
    /// Clients exempt from the failed-login penalty (addresses or CIDR networks).
    #[serde(default)]
    pub trusted_networks: Vec<String>,
    /// PBKDF2 iterations of SCRAM-SHA-256 keys.
    pub scram_iterations: Option<u32>,
    /// Offer SCRAM-SHA-256-PLUS on TLS connections.
    pub scram_plus: Option<bool>,
    pub credential_cache_ttl: Option<u64>,
    /// Generate a self-signed certificate when none is configured (default true).
    pub self_signed: Option<bool>,
    /// Peers allowed on `proxy = true` listeners (addresses or CIDR networks).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub listen: Vec<ListenFile>,
    #[serde(default)]
    pub certificate: Vec<CertFile>,
    pub argon2: Option<Argon2File>,
    /// `[oauth2]`: OAuth 2.0 token validation for OAUTHBEARER and XOAUTH2.
    pub oauth2: Option<oauth2::Settings>,
}

/// `[argon2]`: cost of stored password hashes (OWASP's defaults when absent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2File {
    pub memory_kib: Option<u32>,
    pub iterations: Option<u32>,
    pub parallelism: Option<u32>,
}

/// `expire = 30` (days) or `expire = "never"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ExpireSetting {
    Days(u32),
    Word(String),
}

impl ExpireSetting {
    pub fn resolve(&self) -> Result<store::Expire> {
        match self {
            ExpireSetting::Days(d) => Ok(store::Expire::Days(*d)),
            ExpireSetting::Word(w) if w.eq_ignore_ascii_case("never") => Ok(store::Expire::Never),
            ExpireSetting::Word(w) => {
                w.parse::<u32>().map(store::Expire::Days).with_context(|| {
                    format!("expire must be a number of days or \"never\", not {w:?}")
                })
            }
        }
    }
}

/// One `[[listen]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    pub address: SocketAddr,
    /// `"pop3"` (cleartext, STLS when a certificate exists) or `"pop3s"` (implicit TLS).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// `"never"`, `"loopback"` (default) or `"always"`.
    #[serde(default)]
    pub cleartext: Option<String>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_tls: Option<String>,
    /// A backend listener: connections come from `trusted_proxies` with a PROXY header.
    #[serde(default)]
    pub proxy: bool,
}

fn default_kind() -> String {
    "pop3".into()
}

/// One `[[certificate]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl File {
    /// Reads and checks a configuration file; errors name the file and the offending key.
    pub fn read(path: &Path) -> Result<File> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        File::parse(&text).with_context(|| format!("in the configuration file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<File> {
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        for l in &file.listen {
            l.resolve()?;
        }
        if let Some(e) = &file.expire {
            e.resolve()?;
        }
        TrustedProxies::parse(&file.trusted_proxies).context("trusted_proxies")?;
        TrustedProxies::parse(&file.trusted_networks).context("trusted_networks")?;
        if let Some(allow) = &file.auth_http_allow {
            TrustedProxies::parse(allow).context("auth_http_allow")?;
        }
        if let Some(policy) = &file.auth_http_cleartext {
            parse_cleartext(policy).context("auth_http_cleartext")?;
        }
        Ok(file)
    }
}

pub fn parse_cleartext(s: &str) -> Result<Cleartext> {
    match s {
        "never" => Ok(Cleartext::Never),
        "loopback" => Ok(Cleartext::Loopback),
        "always" => Ok(Cleartext::Always),
        other => bail!("cleartext must be \"never\", \"loopback\" or \"always\", not {other:?}"),
    }
}

pub fn parse_min_tls(s: &str) -> Result<TlsVersion> {
    match s {
        "1.2" => Ok(TlsVersion::Tls12),
        "1.3" => Ok(TlsVersion::Tls13),
        other => bail!("min_tls must be \"1.2\" or \"1.3\", not {other:?}"),
    }
}

impl ListenFile {
    pub fn resolve(&self) -> Result<ListenSpec> {
        let kind = match self.kind.as_str() {
            "pop3" => ListenerKind::Plain,
            "pop3s" => ListenerKind::ImplicitTls,
            "kpop" => ListenerKind::Kpop,
            other => bail!(
                "listener {}: kind must be \"pop3\", \"pop3s\" or \"kpop\", not {other:?}",
                self.address
            ),
        };
        let cleartext = self
            .cleartext
            .as_deref()
            .map(parse_cleartext)
            .transpose()
            .with_context(|| format!("listener {}", self.address))?
            .unwrap_or_default();
        let min_tls = self
            .min_tls
            .as_deref()
            .map(parse_min_tls)
            .transpose()
            .with_context(|| format!("listener {}", self.address))?
            .unwrap_or_default();
        Ok(ListenSpec {
            address: self.address,
            kind,
            cleartext,
            min_tls,
            proxy: self.proxy,
        })
    }
}

/// Seconds to a `Duration`.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let f = File::parse(include_str!("../../../docs/pop3d.example.toml")).expect("example");
        assert_eq!(f.listen.len(), 3);
        assert_eq!(f.certificate.len(), 2);
        assert_eq!(
            f.listen[1].resolve().expect("listener").kind,
            ListenerKind::ImplicitTls
        );
    }

    /// The Kerberos lines of the example, uncommented, give the KPOP listener on 1109.
    #[test]
    fn example_with_kerberos_parses() {
        let text = include_str!("../../../docs/pop3d.example.toml")
            .replace("# gssapi_keytab =", "gssapi_keytab =")
            .replace(
                "# [[listen]]\n# address = \"0.0.0.0:1109\"\n# kind = \"kpop\"",
                "[[listen]]\naddress = \"0.0.0.0:1109\"\nkind = \"kpop\"",
            );
        let f = File::parse(&text).expect("example with Kerberos");
        assert!(f.gssapi_keytab.is_some());
        let kinds: Vec<(u16, ListenerKind)> = f
            .listen
            .iter()
            .map(|l| {
                l.resolve()
                    .map(|s| (s.address.port(), s.kind))
                    .expect("listener")
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (110, ListenerKind::Plain),
                (995, ListenerKind::ImplicitTls),
                (1110, ListenerKind::Plain),
                (1109, ListenerKind::Kpop)
            ]
        );
    }

    /// The LMTP lines of the example, uncommented, parse.
    #[test]
    fn example_with_lmtp_parses() {
        let text = include_str!("../../../docs/pop3d.example.toml")
            .replace("# listen_lmtp", "listen_lmtp")
            .replace("# lmtp_", "lmtp_")
            .replace("# quota_full_temporary", "quota_full_temporary");
        let f = File::parse(&text).expect("example with LMTP");
        assert_eq!(f.listen_lmtp.len(), 1);
        assert_eq!(f.lmtp_unix_group.as_deref(), Some("postfix"));
        assert_eq!(f.lmtp_max_message_size, Some(64 << 20));
        assert_eq!(f.quota_full_temporary, Some(false));
    }

    /// The proxied listener of the example, uncommented with its trusted proxies.
    #[test]
    fn example_with_proxy_parses() {
        let text = include_str!("../../../docs/pop3d.example.toml")
            .replace("# trusted_proxies =", "trusted_proxies =")
            .replace(
                "# [[listen]]\n# address = \"10.0.0.5:1100\"\n# kind = \"pop3\"\n# proxy = true\n# cleartext = \"always\"",
                "[[listen]]\naddress = \"10.0.0.5:1100\"\nkind = \"pop3\"\nproxy = true\ncleartext = \"always\"",
            );
        let f = File::parse(&text).expect("example with a proxied listener");
        assert_eq!(f.trusted_proxies, ["10.0.0.0/24", "fd00:1::/64"]);
        let proxied: Vec<ListenSpec> = f
            .listen
            .iter()
            .map(|l| l.resolve().expect("listener"))
            .filter(|l| l.proxy)
            .collect();
        assert_eq!(proxied.len(), 1);
        assert_eq!(proxied[0].cleartext, Cleartext::Always);
    }

    /// The `[oauth2]` lines of the example, uncommented, give its settings.
    #[test]
    fn example_with_oauth2_parses() {
        let text = include_str!("../../../docs/pop3d.example.toml")
            .replace("# [oauth2]", "[oauth2]")
            .replace("# issuer =", "issuer =")
            .replace("# audience =", "audience =")
            .replace("# username_claim =", "username_claim =")
            .replace("# ca_file =", "ca_file =");
        let f = File::parse(&text).expect("example with [oauth2]");
        let o = f.oauth2.expect("[oauth2]");
        assert_eq!(o.audience, ["pop3"]);
        assert_eq!(o.username_claim(), "email");
        o.check().expect("valid settings");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = File::parse("idle_timeot = 5\n").expect_err("unknown key");
        assert!(format!("{err:#}").contains("idle_timeot"), "{err:#}");
        let err = File::parse("[[listen]]\naddress = \"127.0.0.1:1\"\nport = 1\n")
            .expect_err("unknown key");
        assert!(format!("{err:#}").contains("port"), "{err:#}");
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            (
                "[[listen]]\naddress = \"127.0.0.1:1\"\nkind = \"imap\"\n",
                "pop3s",
            ),
            (
                "[[listen]]\naddress = \"127.0.0.1:1\"\ncleartext = \"yes\"\n",
                "loopback",
            ),
            (
                "[[listen]]\naddress = \"127.0.0.1:1\"\nmin_tls = \"1.1\"\n",
                "1.3",
            ),
            ("expire = \"sometimes\"\n", "never"),
            ("trusted_proxies = [\"10.0.0.0/33\"]\n", "10.0.0.0/33"),
            ("trusted_proxies = [\"nginx\"]\n", "nginx"),
            (
                "[[listen]]\naddress = \"127.0.0.1:1\"\nproxy = \"yes\"\n",
                "proxy",
            ),
            ("idle_timeout = \"ten\"\n", "idle_timeout"),
        ] {
            let err = File::parse(text).expect_err(text);
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
        assert!(matches!(
            File::parse("expire = 7\n")
                .ok()
                .and_then(|f| f.expire)
                .map(|e| e.resolve().ok()),
            Some(Some(store::Expire::Days(7)))
        ));
    }
}
