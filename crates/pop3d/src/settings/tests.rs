use std::path::PathBuf;

use clap::Parser;
use server::{Cleartext, ListenerKind};

use super::*;

/// The error, with its causes, that `resolve` gives for `pop3d ARGS`.
fn refused(args: &[&str]) -> String {
    let args = Args::parse_from(std::iter::once(&"pop3d").chain(args));
    format!("{:#}", resolve(&args).expect_err("refused"))
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
        resolve(&args)
            .map(|s| s.daemon.config.idle_timeout.as_secs())
            .ok(),
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
        .daemon
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
    assert_eq!(s.daemon.certificates.len(), 2);
    assert!(!s.daemon.self_signed);
    assert_eq!(s.daemon.config.max_connections_per_ip, 20);
    assert_eq!(
        s.daemon.config.default_domain.as_deref(),
        Some("example.org")
    );
    assert_eq!(s.daemon.data_dir, PathBuf::from("/var/lib/pop3d"));
    // Issue 19: an example copied as it is switches on neither data removal nor
    // lock-outs: EXPIRE and LOGIN-DELAY stay at the built-in defaults.
    assert_eq!(s.daemon.config.expire, store::Expire::Never);
    assert_eq!(s.daemon.config.login_delay, Duration::ZERO);
}

#[test]
fn store_url_and_node_id() {
    let s = resolve(&Args::parse_from(["pop3d"])).expect("defaults");
    assert_eq!(s.daemon.store, None);
    assert_eq!(s.daemon.node_id, store::hostname().unwrap_or("pop3d"));
    let s = resolve(&Args::parse_from([
        "pop3d",
        "--store",
        "postgres://u@h/db",
        "--node-id",
        "n1",
    ]))
    .expect("a PostgreSQL store");
    assert_eq!(
        (s.daemon.store.as_deref(), s.daemon.node_id.as_str()),
        (Some("postgres://u@h/db"), "n1")
    );
    // Only PostgreSQL URLs: the SQLite store is named by --data-dir.
    assert!(resolve(&Args::parse_from(["pop3d", "--store", "/var/lib/pop3d"])).is_err());
}

/// The SQLite memory map is off unless set; the flag wins over the file.
#[test]
fn sqlite_mmap_size_is_layered() {
    let (dir, _) = cluster_key("sqlite-mmap");
    let config = dir.join("pop3d.toml");
    std::fs::write(&config, "sqlite_mmap_size = 268435456\n").expect("config");
    let config = config.to_str().expect("utf-8");
    let mmap = |args: &[&str]| {
        let mut all = vec!["pop3d"];
        all.extend_from_slice(args);
        resolve(&Args::parse_from(all))
            .expect("settings")
            .daemon
            .sqlite_mmap_size
    };
    assert_eq!(mmap(&[]), 0);
    assert_eq!(mmap(&["--config", config]), 256 << 20);
    assert_eq!(
        mmap(&["--config", config, "--sqlite-mmap-size", "1024"]),
        1024
    );
}

#[test]
fn proxied_listeners_need_trusted_proxies() {
    let err = refused(&["--listen-proxy", "127.0.0.1:2110"]);
    assert!(err.contains("--trusted-proxy"), "{err}");
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
        .daemon
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
    assert_eq!(
        s.daemon.trusted_proxies.to_string(),
        "127.0.0.1/32 10.0.0.0/8"
    );
    assert!(resolve(&Args::parse_from([
        "pop3d",
        "--trusted-proxy",
        "10.0.0.0/40"
    ]))
    .is_err());
    // Trusted proxies alone are harmless: no listener uses them.
    assert!(resolve(&Args::parse_from(["pop3d", "--trusted-proxy", "10.0.0.1"])).is_ok());
}

/// A directory of this test process, `tag`, with a cluster secret in `cluster.key`.
fn cluster_key(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("pop3d-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("cluster.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("key");
    (dir, key)
}

#[test]
fn a_cluster_node_must_advertise_an_ip_address_and_gets_three_heartbeats() {
    let (dir, key) = cluster_key("cluster-key");
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
    let cluster = s.daemon.config.cluster.expect("cluster");
    assert_eq!(cluster.node_liveness, std::time::Duration::from_secs(6));
    for bad in ["pop1.example.org:1100", "0.0.0.0:1100"] {
        let err = resolve(&args(bad)).expect_err(bad).to_string();
        assert!(err.contains("nginx needs this node's IP address"), "{err}");
    }
    // A short secret is refused with its length.
    std::fs::write(dir.join("short.key"), "short").expect("key");
    let err = refused(&[
        "--cluster-key-file",
        dir.join("short.key").to_str().expect("utf-8"),
    ]);
    assert!(err.contains("5 octets"), "{err}");
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

/// `[oauth2]` and the `--oauth2-*` flags: flags replace the file's keys (audiences as a
/// list), the rules (https, an audience, introspection's three keys) refuse with exit 64,
/// the files are read now, and nothing set means OAuth 2.0 off.
#[test]
fn oauth2_settings_are_layered_and_checked() {
    let (dir, _) = cluster_key("oauth2");
    let config = dir.join("pop3d.toml");
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "s3cret\n").expect("secret");
    std::fs::write(
        &config,
        format!(
            "[oauth2]\nissuer = \"https://idp.example.org/realms/mail\"\n\
             audience = [\"pop3\", \"mail\"]\nusername_claim = \"preferred_username\"\n\
             introspection_url = \"https://idp.example.org/introspect\"\n\
             client_id = \"pop3d\"\nclient_secret_file = {:?}\n",
            secret.display().to_string()
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");
    let s = resolve(&Args::parse_from(["pop3d", "--config", config])).expect("file");
    let validator = s.daemon.config.oauth2.expect("oauth2 on");
    let doc = validator.error_json();
    assert!(
        doc.contains("https://idp.example.org/realms/mail/.well-known/openid-configuration"),
        "{doc}"
    );
    assert!(doc.contains("openid profile"), "{doc}");
    // A flag replaces the file's key.
    let s = resolve(&Args::parse_from([
        "pop3d",
        "--config",
        config,
        "--oauth2-issuer",
        "https://login.example.com/tenant/v2.0",
    ]))
    .expect("flag over file");
    let doc = s.daemon.config.oauth2.expect("on").error_json();
    assert!(
        doc.contains("https://login.example.com/tenant/v2.0/.well-known"),
        "{doc}"
    );
    assert!(resolve(&Args::parse_from(["pop3d"]))
        .expect("defaults")
        .daemon
        .config
        .oauth2
        .is_none());
    // Each case: flags after `--oauth2-issuer https://idp.example.org --oauth2-audience a`
    // when it starts with "+", else as they are.
    for (args, needle) in [
        ("--oauth2-issuer https://idp.example.org", "audience"),
        ("--oauth2-issuer http://idp --oauth2-audience a", "https://"),
        ("--oauth2-audience a", "issuer is needed"),
        ("+ --oauth2-introspection-url https://idp/i", "together"),
        (
            "+ --oauth2-ca-file /nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
        (
            "+ --oauth2-introspection-url https://idp/i --oauth2-client-id pop3d \
             --oauth2-client-secret-file /nonexistent/secret",
            "/nonexistent/secret",
        ),
    ] {
        let args = args.replace(
            '+',
            "--oauth2-issuer https://idp.example.org --oauth2-audience a",
        );
        let args: Vec<&str> = args.split_whitespace().collect();
        let err = refused(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let err = format!(
        "{:#}",
        crate::config::File::parse("[oauth2]\nissuer = \"https://x\"\naudiences = []\n")
            .expect_err("unknown key")
    );
    assert!(err.contains("audiences"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The auth_http endpoint's allow-list and cleartext policy: loopback by default, the
/// file's, else the flags'; an empty list or a bad entry is refused.
#[test]
fn lmtp_settings_are_layered_and_checked() {
    let (dir, _) = cluster_key("lmtp-settings");
    let config = dir.join("pop3d.toml");
    std::fs::write(
        &config,
        "listen_lmtp = [\"127.0.0.1:2424\"]\nlisten_lmtp_unix = \"/run/pop3d/lmtp\"\n\
         lmtp_unix_mode = \"0600\"\nlmtp_unix_group = \"postfix\"\n\
         lmtp_trusted_networks = [\"10.0.0.0/8\"]\nlmtp_max_message_size = 1000\n\
         quota_full_temporary = true\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");
    let resolved = |extra: &[&str]| {
        let mut args = vec!["pop3d"];
        args.extend_from_slice(extra);
        resolve(&Args::parse_from(args)).map(|s| s.daemon)
    };
    let d = resolved(&[]).expect("defaults");
    assert_eq!(d.config.lmtp.trusted_networks, TrustedProxies::loopback());
    assert_eq!(
        d.config.lmtp.max_message_size,
        store::DEFAULT_MAX_MESSAGE_SIZE
    );
    assert!(!d.config.lmtp.quota_full_temporary);
    assert!(d.lmtp_unix.is_none());
    assert!(!d.listeners.iter().any(|l| l.kind == ListenerKind::Lmtp));
    let file = resolved(&["--config", config]).expect("file");
    let lmtp: Vec<_> = file
        .listeners
        .iter()
        .filter(|l| l.kind == ListenerKind::Lmtp)
        .collect();
    assert_eq!(lmtp.len(), 1);
    assert_eq!(lmtp[0].address.to_string(), "127.0.0.1:2424");
    assert_eq!(
        file.lmtp_unix,
        Some(server::LmtpUnix {
            path: "/run/pop3d/lmtp".into(),
            mode: 0o600,
            group: Some("postfix".into()),
        })
    );
    assert_eq!(file.config.lmtp.trusted_networks.to_string(), "10.0.0.0/8");
    assert_eq!(file.config.lmtp.max_message_size, 1000);
    assert!(file.config.lmtp.quota_full_temporary);
    let flags = resolved(&[
        "--config",
        config,
        "--listen-lmtp",
        "127.0.0.1:2525",
        "--lmtp-unix-mode",
        "666",
        "--lmtp-trusted-network",
        "192.0.2.1",
        "--lmtp-max-message-size",
        "2000",
    ])
    .expect("flags");
    let lmtp: Vec<_> = flags
        .listeners
        .iter()
        .filter(|l| l.kind == ListenerKind::Lmtp)
        .collect();
    assert_eq!(lmtp[0].address.to_string(), "127.0.0.1:2525");
    assert_eq!(flags.lmtp_unix.expect("unix").mode, 0o666);
    assert_eq!(
        flags.config.lmtp.trusted_networks.to_string(),
        "192.0.2.1/32"
    );
    assert_eq!(flags.config.lmtp.max_message_size, 2000);
    let err = resolved(&["--listen-lmtp-unix", "/x", "--lmtp-unix-mode", "rw-rw----"])
        .expect_err("not octal");
    assert!(format!("{err:#}").contains("lmtp_unix_mode"), "{err:#}");
    let err = resolved(&["--lmtp-trusted-network", "postfix"]).expect_err("no address");
    assert!(
        format!("{err:#}").contains("lmtp_trusted_networks"),
        "{err:#}"
    );
    let err = resolved(&["--lmtp-max-message-size", "0"]).expect_err("zero");
    assert!(
        format!("{err:#}").contains("lmtp_max_message_size"),
        "{err:#}"
    );
}

#[test]
fn auth_http_allow_and_cleartext_are_layered_and_checked() {
    let (dir, key) = cluster_key("authhttp");
    let config = dir.join("pop3d.toml");
    std::fs::write(
        &config,
        format!(
            "cluster_key_file = {:?}\nauth_http = \"127.0.0.1:8025\"\n\
             auth_http_allow = [\"10.0.0.5\"]\nauth_http_cleartext = \"never\"\n",
            key.to_str().expect("utf-8")
        ),
    )
    .expect("config");
    let key = key.to_str().expect("utf-8");
    let cluster = |extra: &[&str]| {
        let mut args = vec![
            "pop3d",
            "--cluster-key-file",
            key,
            "--auth-http",
            "127.0.0.1:8025",
        ];
        args.extend_from_slice(extra);
        resolve(&Args::parse_from(args)).map(|s| s.daemon.config.cluster.expect("cluster"))
    };
    let d = cluster(&[]).expect("defaults");
    assert_eq!(d.auth_http_allow, TrustedProxies::loopback());
    assert_eq!(d.auth_http_cleartext, Cleartext::Loopback);
    let c = cluster(&[
        "--auth-http-allow",
        "10.0.0.0/24",
        "--auth-http-allow",
        "fd00::1",
    ])
    .expect("flags");
    assert_eq!(c.auth_http_allow.to_string(), "10.0.0.0/24 fd00::1/128");
    let c = cluster(&["--auth-http-cleartext", "always"]).expect("flag");
    assert_eq!(c.auth_http_cleartext, Cleartext::Always);
    let file = resolve(&Args::parse_from([
        "pop3d",
        "--config",
        config.to_str().expect("utf-8"),
    ]))
    .expect("file")
    .daemon
    .config
    .cluster
    .expect("cluster");
    assert_eq!(file.auth_http_allow.to_string(), "10.0.0.5/32");
    assert_eq!(file.auth_http_cleartext, Cleartext::Never);
    let err = cluster(&["--auth-http-allow", "nginx"]).expect_err("not an address");
    assert!(format!("{err:#}").contains("auth_http_allow"), "{err:#}");
    let err = cluster(&["--auth-http-cleartext", "sometimes"]).expect_err("no policy");
    assert!(
        format!("{err:#}").contains("auth_http_cleartext"),
        "{err:#}"
    );
    std::fs::write(
        &config,
        format!(
            "cluster_key_file = {key:?}\nauth_http = \"127.0.0.1:8025\"\nauth_http_allow = []\n"
        ),
    )
    .expect("config");
    let err = resolve(&Args::parse_from([
        "pop3d",
        "--config",
        config.to_str().expect("utf-8"),
    ]))
    .expect_err("empty allow-list");
    assert!(
        err.to_string().contains("auth_http_allow is empty"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The metrics endpoint: from the flag or the file, beside the POP3 listeners; anywhere
/// but loopback only when the operator allows it (the counters reveal account activity).
#[test]
fn metrics_endpoint_is_loopback_unless_allowed() {
    let metrics = |s: Settings| {
        s.daemon
            .listeners
            .iter()
            .filter(|l| l.kind == ListenerKind::Metrics)
            .map(|l| l.address.to_string())
            .collect::<Vec<_>>()
    };
    let s = resolve(&Args::parse_from(["pop3d", "--metrics", "127.0.0.1:9110"])).expect("ok");
    assert_eq!(
        s.daemon.listeners.len(),
        3,
        "the embedded POP3 listeners stay"
    );
    assert_eq!(metrics(s), ["127.0.0.1:9110"]);
    let s = resolve(&Args::parse_from(["pop3d", "--metrics", "[::1]:9110"])).expect("ok");
    assert_eq!(metrics(s), ["[::1]:9110"]);
    for addr in ["0.0.0.0:9110", "192.0.2.1:9110", "[::]:9110"] {
        let err = refused(&["--metrics", addr]);
        assert!(err.contains("metrics_allow_remote"), "{err}");
    }
    let s = resolve(&Args::parse_from([
        "pop3d",
        "--metrics",
        "0.0.0.0:9110",
        "--metrics-allow-remote",
    ]))
    .expect("allowed");
    assert_eq!(metrics(s), ["0.0.0.0:9110"]);
    let (dir, _) = cluster_key("metrics");
    let path = dir.join("pop3d.toml");
    let write = |text: &str| std::fs::write(&path, text).expect("config");
    write("metrics = \"10.0.0.1:9110\"\nmetrics_allow_remote = true\n");
    let config = path.to_str().expect("utf-8");
    let s = resolve(&Args::parse_from(["pop3d", "--config", config])).expect("file");
    assert!(s.metrics_allow_remote);
    assert_eq!(metrics(s), ["10.0.0.1:9110"]);
    write("metrics = \"10.0.0.1:9110\"\n");
    let err = format!(
        "{:#}",
        resolve(&Args::parse_from(["pop3d", "--config", config])).expect_err("remote")
    );
    assert!(err.contains("metrics_allow_remote"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_config_only_with_a_node_id() {
    let s = resolve(&Args::parse_from(["pop3d"])).expect("defaults");
    assert_eq!(s.daemon.config.node, None);
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
        s.daemon.config.node,
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
    let node = s.daemon.config.node.expect("node");
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
    assert_eq!(
        s.daemon.config.node.expect("node").advertise,
        "127.0.0.1:1100"
    );
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
    assert_eq!(s.daemon.data_dir, PathBuf::from("./pop3d-data"));
    let addrs: Vec<String> = s
        .daemon
        .listeners
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.1:1110", "127.0.0.1:1995"]);
    assert_eq!(s.daemon.listeners[1].kind, ListenerKind::ImplicitTls);
    assert!(s.daemon.self_signed && s.daemon.certificates.is_empty());
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
    assert_eq!(s.daemon.config.idle_timeout.as_secs(), 900);
    assert_eq!(s.daemon.config.login_delay.as_secs(), 60);
    assert_eq!(s.daemon.config.expire, store::Expire::Days(30));
    assert_eq!(s.daemon.listeners.len(), 1);
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
    assert_eq!(s.daemon.config.login_delay.as_secs(), 5);
    assert_eq!(s.daemon.config.expire, store::Expire::Never);
    assert_eq!(s.daemon.listeners[0].address.to_string(), "127.0.0.1:3110");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19: --cleartext and --min-tls never do nothing. With the file's listeners they
/// are refused (each [[listen]] carries its own policy); with the embedded defaults or
/// listeners given by flags they apply.
#[test]
fn cleartext_and_min_tls_flags_apply_or_are_refused() {
    let dir = std::env::temp_dir().join(format!("pop3d-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("pop3d.toml");
    std::fs::write(&path, "[[listen]]\naddress = \"127.0.0.1:2110\"\n").expect("write");
    let p = path.to_str().expect("utf8");
    for flag in [["--cleartext", "always"], ["--min-tls", "1.3"]] {
        let err = resolve(&Args::parse_from([
            "pop3d", "--config", p, flag[0], flag[1],
        ]))
        .expect_err("ignored flag refused");
        assert!(err.to_string().contains("[[listen]]"), "{err}");
    }
    let s = resolve(&Args::parse_from([
        "pop3d",
        "--cleartext",
        "never",
        "--min-tls",
        "1.3",
    ]))
    .expect("embedded defaults");
    assert_eq!(s.daemon.listeners.len(), 2);
    for l in &s.daemon.listeners {
        assert_eq!(l.cleartext, Cleartext::Never);
        assert_eq!(l.min_tls, server::TlsVersion::Tls13);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19: a location is the flag, else the file, else the environment, else the
/// default, so a variable left in a unit's environment never hides the file's value.
#[test]
fn locations_prefer_the_file_to_the_environment() {
    let (flag, file, env) = (Some("flag"), Some("file"), Some("env"));
    assert_eq!(layer_env(flag, file, env, "default"), "flag");
    assert_eq!(layer_env(None, file, env, "default"), "file");
    assert_eq!(layer_env(None, None, env, "default"), "env");
    assert_eq!(layer_env(None, None, None, "default"), "default");
}

/// `[argon2]` costs the argon2 crate refuses are a configuration error, found without
/// hashing anything.
#[test]
fn argon2_costs_are_checked() {
    let dir = std::env::temp_dir().join(format!("pop3d-argon2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("pop3d.toml");
    let with = |text: &str| {
        std::fs::write(&path, text).expect("write");
        resolve(&Args::parse_from([
            "pop3d",
            "--config",
            path.to_str().expect("utf8"),
        ]))
    };
    let err = with("[argon2]\nmemory_kib = 4\n").expect_err("too little memory");
    assert!(format!("{err:#}").contains("[argon2]"), "{err:#}");
    assert!(with("[argon2]\nparallelism = 4000000000\n").is_err());
    let s = with("[argon2]\nmemory_kib = 8192\niterations = 1\n").expect("cheap costs");
    assert_eq!(s.daemon.config.argon2.memory_kib, 8192);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: `trusted_networks`, `scram_iterations` and `gssapi_realms` from the file,
/// replaced by their flags; the SCRAM count is at least RFC 7677's 4096.
#[test]
fn penalty_scram_and_realm_settings() {
    let d = resolve(&Args::parse_from(["pop3d"])).expect("defaults");
    assert!(d.daemon.config.trusted_networks.is_empty());
    assert_eq!(d.daemon.config.scram_iterations, 100_000);
    assert!(d.daemon.config.gssapi_realms.is_empty());
    assert!(!d.daemon.config.scram_plus, "SCRAM-SHA-256-PLUS is opt-in");
    let plus = resolve(&Args::parse_from(["pop3d", "--scram-plus"])).expect("flag");
    assert!(plus.daemon.config.scram_plus);
    let dir = std::env::temp_dir().join(format!("pop3d-authpol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("pop3d.toml");
    std::fs::write(
        &path,
        "trusted_networks = [\"10.0.0.0/8\"]\nscram_iterations = 20000\n\
         gssapi_realms = [\"PARTNER.TEST\"]\nscram_plus = true\n",
    )
    .expect("write");
    let p = path.to_str().expect("utf8");
    let ip = |s: &str| s.parse().expect("ip");
    let s = resolve(&Args::parse_from(["pop3d", "--config", p])).expect("file");
    let c = &s.daemon.config;
    assert!(c.trusted_networks.contains(ip("10.1.2.3")));
    assert_eq!(c.scram_iterations, 20_000);
    assert_eq!(c.gssapi_realms, ["PARTNER.TEST"]);
    assert!(c.scram_plus);
    let s = resolve(&Args::parse_from([
        "pop3d",
        "--config",
        p,
        "--trusted-network",
        "192.0.2.0/24",
        "--scram-iterations",
        "4096",
        "--gssapi-realm",
        "OTHER.TEST",
    ]))
    .expect("flags");
    let c = &s.daemon.config;
    assert!(!c.trusted_networks.contains(ip("10.1.2.3")));
    assert!(c.trusted_networks.contains(ip("192.0.2.9")));
    assert_eq!(c.scram_iterations, 4096);
    assert_eq!(c.gssapi_realms, ["OTHER.TEST"]);
    let low = resolve(&Args::parse_from(["pop3d", "--scram-iterations", "4095"]));
    assert!(format!("{:#}", low.expect_err("too few")).contains("4096"));
    assert!(resolve(&Args::parse_from([
        "pop3d",
        "--trusted-network",
        "nonsense"
    ]))
    .is_err());
    assert!(resolve(&Args::parse_from(["pop3d", "--gssapi-realm", "a@b"])).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
