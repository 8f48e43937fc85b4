//! Every rule the resolved settings must keep, checked once, before anything is bound: the
//! limits, the argon2 costs (by the argon2 crate's bounds, without hashing), the SCRAM
//! iteration count, the Kerberos realms, the store URL,
//! what each listener needs ([`server::ListenSpec::check`], whose rules `server::run` applies
//! again to the listeners it serves), and the node. The `[oauth2]` rules are
//! `oauth2::Settings::check`, applied while resolving (`settings.rs`), where the validator is
//! built and its files are read.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use server::NodeConfig;

use crate::settings::Settings;

/// Checks `settings`; `allow_short_idle_timeout` (testing only) lifts RFC 1939's minimum.
pub fn validate(settings: &Settings, allow_short_idle_timeout: bool) -> Result<()> {
    let daemon = &settings.daemon;
    let config = &daemon.config;
    let idle = config.idle_timeout;
    if idle < server::RFC_MIN_IDLE_TIMEOUT && !allow_short_idle_timeout {
        bail!(
            "idle timeout of {} seconds is below RFC 1939's minimum of 600 seconds",
            idle.as_secs()
        );
    }
    if config.max_connections == 0 {
        bail!("max_connections must be at least 1");
    }
    if config.max_connections_per_ip == 0 {
        bail!("max_connections_per_ip must be at least 1");
    }
    if config.login_timeout.is_zero() {
        bail!("login_timeout must be at least 1 second");
    }
    if config.lmtp.max_message_size == 0 {
        bail!("lmtp_max_message_size must be at least 1 octet");
    }
    if config.lock_lease.is_zero() {
        bail!("lock_lease must be at least 1 second");
    }
    if config.scram_iterations < auth::scram::MIN_ITERATIONS {
        bail!(
            "scram_iterations must be at least {} (RFC 7677 section 4)",
            auth::scram::MIN_ITERATIONS
        );
    }
    if let Some(realm) = config.gssapi_realms.iter().find(|r| {
        r.is_empty() || r.contains('@') || r.chars().any(|c| c.is_whitespace() || c.is_control())
    }) {
        bail!("gssapi_realms: {realm:?} is not a Kerberos realm (such as EXAMPLE.ORG)");
    }
    config
        .argon2
        .check()
        .with_context(|| format!("invalid [argon2] parameters: {:?}", config.argon2))?;
    if let Some(url) = &daemon.store {
        if !store::is_postgres_url(url) {
            bail!(
                "the store must be a postgres:// or postgresql:// URL \
                 (the default SQLite store lives in the data directory)"
            );
        }
    }
    // The counters tell who is active and when: not for the world unless the operator says so.
    let remote_metrics = daemon
        .listeners
        .iter()
        .find(|l| l.kind == server::ListenerKind::Metrics && !l.address.ip().is_loopback());
    if let (Some(l), false) = (remote_metrics, settings.metrics_allow_remote) {
        bail!(
            "the metrics endpoint {} is not a loopback address: the metrics reveal account              activity; set metrics_allow_remote = true (--metrics-allow-remote) to serve them              there, behind a firewall or an authenticating proxy",
            l.address
        );
    }
    let offers = daemon.offers();
    for listener in &daemon.listeners {
        listener.check(&offers)?;
    }
    let endpoint = daemon
        .listeners
        .iter()
        .any(|l| l.kind == server::ListenerKind::AuthHttp);
    if let (true, Some(cluster)) = (endpoint, &config.cluster) {
        if cluster.auth_http_allow.is_empty() {
            bail!(
                "auth_http_allow is empty: no peer could use the auth_http endpoint \
                 (give nginx's addresses, e.g. --auth-http-allow 10.0.0.5)"
            );
        }
    }
    if let Some(node) = &config.node {
        check_node(node, daemon.advertise_given, config.cluster.is_some())?;
    }
    Ok(())
}

/// The node table entry: its id, heartbeat and advertised address (given: `HOST:PORT`; else a
/// listener's, which needs a POP3 listener); in a cluster, an IP address nginx can reach.
fn check_node(node: &NodeConfig, advertise_given: bool, cluster: bool) -> Result<()> {
    let id = &node.id;
    if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
        bail!("the node id must be 1 to 255 characters without control characters");
    }
    if node.heartbeat.is_zero() {
        bail!("heartbeat must be at least 1 second");
    }
    let address = &node.advertise;
    if !advertise_given && address.is_empty() {
        bail!("no POP3 listener to advertise: set advertise (--advertise HOST:PORT)");
    }
    let host_port = address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.chars().any(|c| c.is_whitespace() || c.is_control())
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if advertise_given && !host_port {
        bail!("advertise must be HOST:PORT, not {address:?}");
    }
    // nginx connects to the advertised address as it is (its auth_http protocol takes an IP
    // address), so a name or a wildcard would make this node unreachable.
    let ip = address
        .parse::<SocketAddr>()
        .is_ok_and(|a| !a.ip().is_unspecified());
    if cluster && !ip {
        bail!(
            "a cluster node advertises {address:?}: nginx needs this node's IP address and port \
             (--advertise IP:PORT, e.g. its proxied listener's address on nginx's network)"
        );
    }
    Ok(())
}
