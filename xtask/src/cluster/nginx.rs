//! nginx for the cluster test and the bench: the Debian packages `cargo xtask deps` fetches
//! (never installed), unpacked and started with [`testbed::nginx`].

use std::path::{Path, PathBuf};
use std::process::Command;

use testbed::nginx::{Config, Dist, Nginx};

/// The Debian packages that bring nginx and its mail and stream modules. (In bookworm the
/// binary is in `nginx`; `nginx-core` is an empty transitional package.)
pub const NGINX_PACKAGES: &[&str] = &[
    "nginx",
    "nginx-common",
    "libnginx-mod-mail",
    "libnginx-mod-stream",
];
/// The shared libraries the nginx binary and modules link, as Debian packages.
pub const NGINX_LIBRARIES: &[&str] = &["libpcre2-8-0", "libssl3", "zlib1g", "libcrypt1"];

/// Where `cargo xtask deps` keeps the nginx packages.
pub fn nginx_cache() -> PathBuf {
    crate::target_dir().join("nginx-debs")
}

/// nginx and its modules unpacked into `dir` from [`nginx_cache`]; `None` when a package is
/// missing there.
pub fn unpack_nginx(dir: &Path) -> Result<Option<Dist>, String> {
    Dist::unpack(&nginx_cache(), NGINX_PACKAGES, dir)
}

/// nginx in `prefix` with the mail and stream modules loaded, one worker, and `blocks`.
pub fn start(dist: &Dist, prefix: &Path, blocks: &str) -> Result<Nginx, String> {
    let config = Config {
        modules: vec![
            dist.module("ngx_mail_module.so"),
            dist.module("ngx_stream_module.so"),
        ],
        log_level: "info",
        workers: "1",
        connections: 256,
        blocks,
    };
    Nginx::start(dist.binary(), prefix, &config)
}

/// `cargo xtask deps`: the nginx packages into [`nginx_cache`] (downloaded, not installed);
/// `apt-get update` first when the download fails without it.
pub fn fetch_nginx() -> Result<(), String> {
    let cache = nginx_cache();
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let have: Vec<String> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let missing: Vec<&str> = NGINX_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.iter().any(|f| f.starts_with(&format!("{p}_"))))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: nginx packages are in {}", cache.display());
        return Ok(());
    }
    let download = || {
        let mut c = Command::new("apt-get");
        c.arg("download").args(&missing).current_dir(&cache);
        c
    };
    let what = format!(
        "apt-get download {} (into {})",
        missing.join(" "),
        cache.display()
    );
    if crate::run(download(), &what).is_ok() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    crate::run(update, "apt-get update")?;
    crate::run(download(), &what)
}

/// Which of [`NGINX_LIBRARIES`] dpkg does not have installed.
pub fn missing_nginx_libraries() -> Vec<&'static str> {
    NGINX_LIBRARIES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
        })
        .collect()
}
