//! Lock holder strings (`pop3d@HOST:PID#SESSION`) and the check that a holder on this host
//! is still running.

use std::path::Path;
use std::sync::OnceLock;

/// Builds the holder string of a maildrop lock for `session` of this process:
/// `pop3d@HOST:PID#SESSION`. A lock whose holder names this host and a process that no
/// longer exists is stale even before its lease expires.
pub fn holder_string(session: u64) -> String {
    let host = hostname().unwrap_or("unknown-host");
    format!("pop3d@{host}:{}#{session}", std::process::id())
}

/// True when `holder` certainly belongs to a dead process: it names this host and a pid
/// absent from `/proc`. Holders of other hosts, unparseable holders, and any holder on a
/// system without `/proc` count as alive (until their lease expires).
///
/// This assumes the hosts sharing a database have distinct hostnames and that each host's
/// processes share one pid namespace.
pub(crate) fn holder_is_dead(holder: &str) -> bool {
    let Some((host, pid)) = parse_holder(holder) else {
        return false;
    };
    if hostname() != Some(host) || !Path::new("/proc/self").exists() {
        return false;
    }
    !Path::new("/proc").join(pid.to_string()).exists()
}

/// Extracts `HOST` and `PID` from `NAME@HOST:PID#SESSION`.
fn parse_holder(holder: &str) -> Option<(&str, u32)> {
    let (_, rest) = holder.split_once('@')?;
    let (host, rest) = rest.split_once(':')?;
    let (pid, _) = rest.split_once('#')?;
    let pid = pid.parse().ok().filter(|&pid| pid > 0)?;
    (!host.is_empty()).then_some((host, pid))
}

/// This machine's hostname: `/proc/sys/kernel/hostname`, else `$HOSTNAME`.
pub fn hostname() -> Option<&'static str> {
    static HOSTNAME: OnceLock<Option<String>> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&str, Option<(&str, u32)>)] = &[
            ("pop3d@mx1:1234#7", Some(("mx1", 1234))),
            ("popadm@mx1.example.org:1#0", Some(("mx1.example.org", 1))),
            ("pop3d@mx1:0#7", None),
            ("pop3d@mx1:-1#7", None),
            ("pop3d@mx1:12a#7", None),
            ("pop3d@:12#7", None),
            ("pop3d@mx1:12", None),
            ("pop3d mx1 12", None),
            ("", None),
        ];
        for &(holder, expected) in cases {
            assert_eq!(parse_holder(holder), expected, "{holder:?}");
        }
    }

    #[test]
    fn own_holder_is_alive_and_parses() {
        let holder = holder_string(42);
        assert!(holder.ends_with(&format!(":{}#42", std::process::id())));
        assert!(!holder_is_dead(&holder));
    }

    #[test]
    fn dead_pid_on_this_host_is_dead_elsewhere_alive() {
        let Some(host) = hostname() else {
            eprintln!("skipped: no hostname on this system");
            return;
        };
        if !Path::new("/proc/self").exists() {
            eprintln!("skipped: no /proc on this system");
            return;
        }
        assert!(holder_is_dead(&format!("pop3d@{host}:{}#1", 0x7FFF_FFF0)));
        assert!(!holder_is_dead(&format!(
            "pop3d@not-{host}:{}#1",
            0x7FFF_FFF0
        )));
        assert!(!holder_is_dead("garbage"));
    }
}
