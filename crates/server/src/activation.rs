//! systemd socket activation (the `sd_listen_fds` protocol): listening sockets passed in as
//! descriptors 3, 4, ... with `LISTEN_FDS` (how many), `LISTEN_PID` (for whom) and
//! `LISTEN_FDNAMES` (colon-separated names, from each socket unit's `FileDescriptorName=`).
//!
//! The names say how a socket is served: `pop3` cleartext POP3 (STLS when a certificate
//! exists), `pop3s` implicit TLS, `kpop` Kerberos only. An unnamed socket (no `LISTEN_FDNAMES`,
//! an empty name, systemd's `unknown`, or the default name, which is the socket unit's own
//! `*.socket` name) is cleartext POP3. Any other name is an error, so a typo cannot turn a TLS
//! port into a cleartext one.
//!
//! Turning a descriptor number into a `TcpListener` takes `unsafe` (`FromRawFd`), which this
//! workspace forbids; the `listenfd` crate does it after checking that the descriptor is a
//! listening TCP socket, and this module adds the `LISTEN_PID` rule (the variables are for this
//! process only: a child that inherited them ignores them) and the names.

use std::net::{SocketAddr, TcpListener};

use crate::{ListenSpec, ListenerKind};

/// A listening socket systemd passed in, and how to serve it.
#[derive(Debug)]
pub struct Inherited {
    pub socket: TcpListener,
    pub name: String,
    pub kind: ListenerKind,
}

/// A socket systemd passed that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket {fd} passed by systemd")]
    Name {
        fd: usize,
        #[source]
        source: UnknownName,
    },
    #[error("socket {fd} ({name:?}) passed by systemd is not a listening TCP socket")]
    NotListening {
        fd: usize,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {fd} passed by systemd is missing")]
    Missing { fd: usize },
}

/// A `FileDescriptorName=` this server does not know.
#[derive(Debug, thiserror::Error)]
#[error("FileDescriptorName={0:?} is unknown; use \"pop3\", \"pop3s\" or \"kpop\"")]
pub struct UnknownName(String);

/// The sockets passed to this process, in descriptor order; empty when none were (no
/// `LISTEN_FDS`, or a `LISTEN_PID` that is not ours). The variables are removed, so nothing
/// started later inherits them.
///
/// Call it before any thread is started: it changes the environment.
pub fn inherited() -> Result<Vec<Inherited>, ActivationError> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .is_some_and(|pid| pid.trim() == std::process::id().to_string());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // Reads LISTEN_FDS (and LISTEN_PID, which it would accept when unset) and removes both.
    let mut fds = listenfd::ListenFd::from_env();
    std::env::remove_var("LISTEN_FDNAMES");
    if !ours {
        return Ok(Vec::new());
    }
    let names = fd_names(&names, fds.len());
    let mut sockets = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let fd = 3 + i;
        let kind = kind_of(&name).map_err(|source| ActivationError::Name { fd, source })?;
        let socket = match fds.take_tcp_listener(i) {
            Ok(Some(socket)) => socket,
            Ok(None) => return Err(ActivationError::Missing { fd }),
            Err(source) => return Err(ActivationError::NotListening { fd, name, source }),
        };
        sockets.push(Inherited { socket, name, kind });
    }
    Ok(sockets)
}

/// `LISTEN_FDNAMES` split into one name per descriptor (missing names are empty).
fn fd_names(var: &str, count: usize) -> Vec<String> {
    let mut names: Vec<String> = if var.is_empty() {
        Vec::new()
    } else {
        var.split(':').map(str::to_owned).collect()
    };
    names.resize(count, String::new());
    names
}

/// How a socket of that name is served.
fn kind_of(name: &str) -> Result<ListenerKind, UnknownName> {
    match name {
        "pop3" | "" | "unknown" => Ok(ListenerKind::Plain),
        "pop3s" => Ok(ListenerKind::ImplicitTls),
        "kpop" => Ok(ListenerKind::Kpop),
        "lmtp" => Ok(ListenerKind::Lmtp),
        unit if unit.ends_with(".socket") => Ok(ListenerKind::Plain),
        other => Err(UnknownName(other.to_owned())),
    }
}

/// The listener policy (cleartext, minimum TLS version, proxy) for an inherited socket: that of the
/// configured listener of the same kind on the same port (an unspecified address such as
/// `0.0.0.0` or `[::]` on either side matches any), else the defaults.
pub fn spec_for(addr: SocketAddr, kind: ListenerKind, configured: &[ListenSpec]) -> ListenSpec {
    configured
        .iter()
        .find(|c| {
            c.kind == kind
                && c.address.port() == addr.port()
                && (c.address.ip() == addr.ip()
                    || c.address.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        })
        .map(|c| ListenSpec {
            address: addr,
            ..c.clone()
        })
        .unwrap_or_else(|| ListenSpec::new(addr, kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cleartext, TlsVersion};

    #[test]
    fn names_map_to_kinds() {
        for (name, kind) in [
            ("pop3", ListenerKind::Plain),
            ("", ListenerKind::Plain),
            ("unknown", ListenerKind::Plain),
            ("pop3d.socket", ListenerKind::Plain),
            ("pop3s", ListenerKind::ImplicitTls),
            ("kpop", ListenerKind::Kpop),
        ] {
            assert_eq!(kind_of(name).ok(), Some(kind), "{name:?}");
        }
        let err = kind_of("pops").expect_err("typo");
        assert!(format!("{err}").contains("pops"), "{err}");
    }

    /// The socket units in dist/ name their sockets so that each port is served as it should.
    #[test]
    fn dist_socket_units_name_what_they_bind() {
        for (unit, port, kind) in [
            (
                include_str!("../../../dist/pop3d.socket"),
                "110",
                ListenerKind::Plain,
            ),
            (
                include_str!("../../../dist/pop3d-pop3s.socket"),
                "995",
                ListenerKind::ImplicitTls,
            ),
            (
                include_str!("../../../dist/pop3d-kpop.socket"),
                "1109",
                ListenerKind::Kpop,
            ),
        ] {
            let value = |key: &str| {
                unit.lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                    .map(str::trim)
            };
            assert_eq!(value("ListenStream"), Some(port), "{unit}");
            assert_eq!(value("Service"), Some("pop3d.service"), "{unit}");
            let name = value("FileDescriptorName").unwrap_or_default();
            assert_eq!(kind_of(name).ok(), Some(kind), "{unit}");
        }
    }

    #[test]
    fn names_are_padded_to_the_count() {
        assert_eq!(fd_names("", 2), ["", ""]);
        assert_eq!(fd_names("pop3s", 2), ["pop3s", ""]);
        assert_eq!(fd_names("pop3:pop3s:kpop", 3), ["pop3", "pop3s", "kpop"]);
        assert_eq!(fd_names("pop3::kpop", 3), ["pop3", "", "kpop"]);
    }

    #[test]
    fn policy_comes_from_the_configured_listener_on_that_port() {
        let spec = |a: &str, kind, cleartext, min_tls| ListenSpec {
            address: a.parse().expect("addr"),
            kind,
            cleartext,
            min_tls,
            proxy: false,
        };
        let configured = [
            spec(
                "0.0.0.0:110",
                ListenerKind::Plain,
                Cleartext::Never,
                TlsVersion::Tls12,
            ),
            spec(
                "0.0.0.0:995",
                ListenerKind::ImplicitTls,
                Cleartext::Loopback,
                TlsVersion::Tls13,
            ),
            spec(
                "127.0.0.1:1110",
                ListenerKind::Plain,
                Cleartext::Always,
                TlsVersion::Tls12,
            ),
        ];
        let got = spec_for(
            "[::]:110".parse().expect("addr"),
            ListenerKind::Plain,
            &configured,
        );
        assert_eq!(got.cleartext, Cleartext::Never);
        assert_eq!(got.address.to_string(), "[::]:110");
        let got = spec_for(
            "[::]:995".parse().expect("addr"),
            ListenerKind::ImplicitTls,
            &configured,
        );
        assert_eq!(got.min_tls, TlsVersion::Tls13);
        // Another address on a configured port, or another kind: the defaults.
        let got = spec_for(
            "10.0.0.1:1110".parse().expect("addr"),
            ListenerKind::Plain,
            &configured,
        );
        assert_eq!(got.cleartext, Cleartext::default());
        let got = spec_for(
            "[::]:110".parse().expect("addr"),
            ListenerKind::ImplicitTls,
            &configured,
        );
        assert_eq!(got.cleartext, Cleartext::default());
        assert_eq!(got.kind, ListenerKind::ImplicitTls);
    }

    /// A socket passed for a proxied port stays proxied: served without the PROXY header it
    /// would take the balancer for the client.
    #[test]
    fn a_passed_socket_keeps_the_proxy_flag() {
        let configured = [ListenSpec {
            address: "0.0.0.0:1100".parse().expect("addr"),
            kind: ListenerKind::Plain,
            cleartext: Cleartext::Always,
            min_tls: TlsVersion::Tls12,
            proxy: true,
        }];
        let got = spec_for(
            "10.0.0.5:1100".parse().expect("addr"),
            ListenerKind::Plain,
            &configured,
        );
        assert!(got.proxy);
        let other = spec_for(
            "10.0.0.5:110".parse().expect("addr"),
            ListenerKind::Plain,
            &configured,
        );
        assert!(!other.proxy);
    }
}
