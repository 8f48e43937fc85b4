//! The settings pop3d runs with, resolved in one place: every value is the flag, else the
//! configuration file's key, else the default ([`layer`]). Parsing errors surface here;
//! every rule that spans settings is checked once afterwards, in `validate.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use server::{CertFiles, Daemon, Gssapi, ListenSpec, ListenerKind, TrustedProxies};

use crate::cli::Args;
use crate::cluster;
use crate::config::{parse_cleartext, parse_min_tls, secs, ExpireSetting, File, ListenFile};

/// Everything pop3d runs with: the daemon's settings and how it logs.
#[derive(Debug)]
pub struct Settings {
    /// Log filter (tracing env-filter syntax).
    pub log: String,
    /// One JSON object per log line instead of text.
    pub json_logs: bool,
    /// The metrics endpoint may listen on an address other than loopback.
    pub metrics_allow_remote: bool,
    pub daemon: Daemon,
    /// The OAuth 2.0 validator (also in `daemon.config.oauth2`), for [`crate::prefetch_oauth2_keys`].
    pub oauth2: Option<Arc<oauth2::Validator>>,
}

/// The flag, else the file, else the default: how every setting is resolved.
fn layer<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// The flag, else the file, else the environment, else the default: for the locations
/// (`data_dir`, `store`) that an environment variable may give, so a file's value is never
/// overridden by a variable left in a service's environment.
fn layer_env<T>(flag: Option<T>, file: Option<T>, env: Option<T>, default: T) -> T {
    layer(flag, file.or(env), default)
}

/// A non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// [`layer`] for a setting given in seconds.
fn layer_secs(flag: Option<u64>, file: Option<u64>, default: Duration) -> Duration {
    layer(flag.map(secs), file.map(secs), default)
}

/// Seconds between node heartbeats when none is configured.
const DEFAULT_HEARTBEAT: u64 = 5;

/// The settings of `args`, of the configuration file it names and of the defaults, checked.
pub fn resolve(args: &Args) -> Result<Settings> {
    let settings = layered(args)?;
    crate::validate::validate(&settings, args.allow_short_idle_timeout)?;
    Ok(settings)
}

/// The settings as layered, not checked yet.
fn layered(args: &Args) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => File::read(path)?,
        None => File::default(),
    };
    let d = server::Config::default();
    let listeners = listeners(args, &file)?;
    let lmtp = lmtp_config(args, &file)?;
    let lmtp_unix = match args
        .listen_lmtp_unix
        .clone()
        .or(file.listen_lmtp_unix.clone())
    {
        Some(path) => {
            let mode = args.lmtp_unix_mode.clone().or(file.lmtp_unix_mode.clone());
            Some(server::LmtpUnix {
                path,
                mode: mode
                    .as_deref()
                    .map(parse_mode)
                    .transpose()?
                    .unwrap_or(DEFAULT_LMTP_UNIX_MODE),
                group: args
                    .lmtp_unix_group
                    .clone()
                    .or(file.lmtp_unix_group.clone()),
            })
        }
        None => None,
    };
    let trusted_proxies = TrustedProxies::parse(if args.trusted_proxy.is_empty() {
        &file.trusted_proxies
    } else {
        &args.trusted_proxy
    })
    .context("trusted_proxies")?;
    let trusted_networks = TrustedProxies::parse(if args.trusted_network.is_empty() {
        &file.trusted_networks
    } else {
        &args.trusted_network
    })
    .context("trusted_networks")?;
    let gssapi_realms = if args.gssapi_realm.is_empty() {
        file.gssapi_realms
    } else {
        args.gssapi_realm.clone()
    };
    let node_id = args.node_id.clone().or(file.node_id);
    let advertise = args.advertise.clone().or(file.advertise);
    let advertise_given = advertise.is_some();
    // Without an address, the listener advertised by default (empty if none: an error).
    let advertise = advertise.unwrap_or_else(|| {
        server::default_advertised(&listeners)
            .map(|a| a.to_string())
            .unwrap_or_default()
    });
    let heartbeat = layer(args.heartbeat, file.heartbeat, DEFAULT_HEARTBEAT);
    let node = node_id.clone().map(|id| server::NodeConfig {
        id,
        advertise,
        heartbeat: secs(heartbeat),
    });
    let mut cluster = match args.cluster_key_file.clone().or(file.cluster_key_file) {
        Some(path) => Some(server::Cluster::new(cluster::read_keys(&path)?)),
        None => None,
    };
    let allow = |list: &[String]| {
        TrustedProxies::parse(list).context("auth_http_allow (--auth-http-allow)")
    };
    let allow_flag = (!args.auth_http_allow.is_empty())
        .then(|| allow(&args.auth_http_allow))
        .transpose()?;
    let allow_file = file.auth_http_allow.as_deref().map(allow).transpose()?;
    let policy =
        |p: &String| parse_cleartext(p).context("auth_http_cleartext (--auth-http-cleartext)");
    let cleartext_flag = args.auth_http_cleartext.as_ref().map(policy).transpose()?;
    let cleartext_file = file.auth_http_cleartext.as_ref().map(policy).transpose()?;
    if let Some(cluster) = &mut cluster {
        // The defaults are `Cluster::new`'s (loopback, both).
        let default = cluster.auth_http_allow.clone();
        cluster.auth_http_allow = layer(allow_flag, allow_file, default);
        let default = cluster.auth_http_cleartext;
        cluster.auth_http_cleartext = layer(cleartext_flag, cleartext_file, default);
    }
    if let (Some(cluster), Some(node)) = (&mut cluster, &node) {
        // The endpoint judges a node dead after three missed heartbeats of this configuration.
        cluster.node_liveness = node.heartbeat * 3;
    }
    let expire = match args.expire.clone().map(ExpireSetting::Word).or(file.expire) {
        Some(setting) => setting.resolve()?,
        None => d.expire,
    };
    // The CA file and the client secret are read here, before privileges are dropped, like
    // the cluster key; the settings' rules are `oauth2::Settings::check`, applied by `new`.
    let validator = match args.oauth2.over(file.oauth2) {
        Some(settings) => Some(Arc::new(oauth2::Validator::new(&settings)?)),
        None => None,
    };
    let oauth2 = validator
        .clone()
        .map(|v| v as Arc<dyn auth::BearerValidator>);
    let argon2 = file.argon2.map_or(d.argon2, |a| auth::Argon2Params {
        memory_kib: a.memory_kib.unwrap_or(d.argon2.memory_kib),
        iterations: a.iterations.unwrap_or(d.argon2.iterations),
        parallelism: a.parallelism.unwrap_or(d.argon2.parallelism),
    });
    let config = server::Config {
        hostname: layer(args.hostname.clone(), file.hostname, d.hostname),
        idle_timeout: layer_secs(args.idle_timeout, file.idle_timeout, d.idle_timeout),
        max_connections: layer(
            args.max_connections,
            file.max_connections,
            d.max_connections,
        ),
        max_connections_per_ip: layer(
            args.max_connections_per_ip,
            file.max_connections_per_ip,
            d.max_connections_per_ip,
        ),
        login_timeout: layer_secs(args.login_timeout, file.login_timeout, d.login_timeout),
        lock_lease: layer_secs(args.lock_lease, file.lock_lease, d.lock_lease),
        shutdown_grace: layer_secs(args.shutdown_grace, file.shutdown_grace, d.shutdown_grace),
        tls_handshake_timeout: layer_secs(
            None,
            file.tls_handshake_timeout,
            d.tls_handshake_timeout,
        ),
        greeting: layer(None, file.greeting, d.greeting),
        // `implementation = ""` leaves the capability out.
        implementation: match file.implementation {
            Some(s) => Some(s).filter(|s| !s.is_empty()),
            None => d.implementation,
        },
        login_delay: layer_secs(args.login_delay, file.login_delay, d.login_delay),
        login_delay_burst: layer(
            args.login_delay_burst,
            file.login_delay_burst,
            d.login_delay_burst,
        ),
        expire,
        legacy_auth: layer(
            args.legacy_auth.then_some(true),
            file.legacy_auth,
            d.legacy_auth,
        ),
        default_domain: args
            .default_domain
            .clone()
            .or(file.default_domain)
            .map(|domain| domain.to_lowercase()),
        auth_failure_delay: layer_secs(
            args.auth_failure_delay,
            file.auth_failure_delay,
            d.auth_failure_delay,
        ),
        max_auth_failures: layer(
            args.max_auth_failures,
            file.max_auth_failures,
            d.max_auth_failures,
        )
        .max(1),
        trusted_networks,
        argon2,
        scram_iterations: layer(
            args.scram_iterations,
            file.scram_iterations,
            d.scram_iterations,
        ),
        scram_plus: layer(
            args.scram_plus.then_some(true),
            file.scram_plus,
            d.scram_plus,
        ),
        credential_cache_ttl: layer_secs(
            args.credential_cache_ttl,
            file.credential_cache_ttl,
            d.credential_cache_ttl,
        ),
        // Set by `server::serve`, after privileges are dropped.
        gssapi: None,
        gssapi_realms,
        oauth2,
        node,
        cluster,
        lmtp,
    };
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
    let json_logs = match args.log_format.clone().or(file.log_format).as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("log format must be \"text\" or \"json\", not {other:?}"),
    };
    let gssapi = args
        .gssapi_keytab
        .clone()
        .or(file.gssapi_keytab)
        .map(|keytab| Gssapi {
            keytab,
            service: layer(
                args.gssapi_service.clone(),
                file.gssapi_service,
                "pop".into(),
            ),
        });
    let daemon = Daemon {
        config,
        listeners,
        trusted_proxies: Arc::new(trusted_proxies),
        data_dir: layer_env(
            args.data_dir.clone(),
            file.data_dir,
            env_var("POP3D_DATA_DIR").map(Into::into),
            "./pop3d-data".into(),
        ),
        store: layer_env(
            args.store.clone().map(Some),
            file.store.map(Some),
            env_var("POP3D_STORE").map(Some),
            None,
        ),
        sqlite_mmap_size: layer(args.sqlite_mmap_size, file.sqlite_mmap_size, 0),
        node_id: node_id
            .or_else(|| store::hostname().map(str::to_owned))
            .unwrap_or_else(|| "pop3d".into()),
        advertise_given,
        user: args.user.clone().or(file.user),
        certificates,
        self_signed: !args.no_self_signed && file.self_signed.unwrap_or(true),
        gssapi,
        lmtp_unix,
    };
    Ok(Settings {
        log: layer(args.log.clone(), file.log, "info".into()),
        json_logs,
        metrics_allow_remote: layer(
            args.metrics_allow_remote.then_some(true),
            file.metrics_allow_remote,
            false,
        ),
        daemon,
        oauth2: validator,
    })
}

/// Permission bits of the LMTP Unix socket unless configured: the owner and the group.
const DEFAULT_LMTP_UNIX_MODE: u32 = 0o660;

/// The LMTP settings, each the flag, else the file, else `server::LmtpConfig`'s default.
fn lmtp_config(args: &Args, file: &File) -> Result<server::LmtpConfig> {
    let d = server::LmtpConfig::default();
    let parse = |list: &[String]| {
        TrustedProxies::parse(list).context("lmtp_trusted_networks (--lmtp-trusted-network)")
    };
    let trusted_flag = (!args.lmtp_trusted_network.is_empty())
        .then(|| parse(&args.lmtp_trusted_network))
        .transpose()?;
    let trusted_file = file
        .lmtp_trusted_networks
        .as_deref()
        .map(parse)
        .transpose()?;
    Ok(server::LmtpConfig {
        trusted_networks: layer(trusted_flag, trusted_file, d.trusted_networks),
        max_message_size: layer(
            args.lmtp_max_message_size,
            file.lmtp_max_message_size,
            d.max_message_size,
        ),
        quota_full_temporary: layer(
            args.quota_full_temporary.then_some(true),
            file.quota_full_temporary,
            d.quota_full_temporary,
        ),
        timeout: d.timeout,
    })
}

/// An octal mode such as `0660` or `660`, at most `0777`.
fn parse_mode(mode: &str) -> Result<u32> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => bail!("lmtp_unix_mode must be octal permission bits such as \"0660\", not {mode:?}"),
    }
}

/// The listeners: the flags' replace the file's, and neither means the embedded defaults
/// (POP3 on 127.0.0.1:1110, POP3S on 127.0.0.1:1995); the `auth_http` and metrics endpoints
/// come last.
fn listeners(args: &Args, file: &File) -> Result<Vec<ListenSpec>> {
    let flags = [
        &args.listen,
        &args.listen_proxy,
        &args.listen_tls,
        &args.listen_kpop,
    ];
    let cleartext = args.cleartext.as_deref().map(parse_cleartext).transpose()?;
    let min_tls = args.min_tls.as_deref().map(parse_min_tls).transpose()?;
    let mut listeners = if flags.iter().all(|l| l.is_empty()) {
        if !file.listen.is_empty() && (cleartext.is_some() || min_tls.is_some()) {
            // They would silently do nothing: the file's listeners carry their own policy.
            bail!(
                "--cleartext and --min-tls apply to listeners given by flags (--listen, \
                 --listen-tls, ...) and to the embedded defaults; the configuration file's \
                 listeners set `cleartext` and `min_tls` in each [[listen]] table"
            );
        }
        file.listen
            .iter()
            .map(ListenFile::resolve)
            .collect::<Result<Vec<_>>>()?
    } else {
        let spec = |kind, proxy| {
            move |&address: &SocketAddr| ListenSpec {
                address,
                kind,
                cleartext: cleartext.unwrap_or_default(),
                min_tls: min_tls.unwrap_or_default(),
                proxy,
            }
        };
        let plain = args.listen.iter().map(spec(ListenerKind::Plain, false));
        plain
            .chain(
                args.listen_proxy
                    .iter()
                    .map(spec(ListenerKind::Plain, true)),
            )
            .chain(
                args.listen_tls
                    .iter()
                    .map(spec(ListenerKind::ImplicitTls, false)),
            )
            .chain(args.listen_kpop.iter().map(spec(ListenerKind::Kpop, false)))
            .collect()
    };
    if listeners.is_empty() {
        // The embedded defaults take --cleartext and --min-tls like listeners given by flags.
        listeners = [
            (1110, ListenerKind::Plain),
            (1995, ListenerKind::ImplicitTls),
        ]
        .into_iter()
        .map(|(port, kind)| {
            let mut spec = ListenSpec::new(([127, 0, 0, 1], port).into(), kind);
            spec.cleartext = cleartext.unwrap_or(spec.cleartext);
            spec.min_tls = min_tls.unwrap_or(spec.min_tls);
            spec
        })
        .collect();
    }
    let lmtp = if args.listen_lmtp.is_empty() {
        &file.listen_lmtp
    } else {
        &args.listen_lmtp
    };
    listeners.extend(lmtp.iter().map(|&a| ListenSpec::new(a, ListenerKind::Lmtp)));
    let auth_http = args.auth_http.or(file.auth_http);
    listeners.extend(auth_http.map(|a| ListenSpec::new(a, ListenerKind::AuthHttp)));
    let metrics = args.metrics.or(file.metrics);
    listeners.extend(metrics.map(|a| ListenSpec::new(a, ListenerKind::Metrics)));
    Ok(listeners)
}

#[cfg(test)]
mod tests;
