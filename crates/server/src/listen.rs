//! Listeners as configured, before they are bound ([`ListenSpec`]), and the one place that
//! says what each kind of listener needs from the rest of the configuration
//! ([`ListenSpec::check`]): the binary checks its configured listeners with it before binding
//! anything, and [`crate::run`] checks the listeners it is given with it again, so a library
//! caller that binds for itself meets the same rules and the same words.

use std::net::SocketAddr;

use crate::{Cleartext, Config, Listener, ListenerKind, ServerError, TlsVersion};

/// A listener as resolved from the configuration: where, how it speaks, and its policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub address: SocketAddr,
    pub kind: ListenerKind,
    pub cleartext: Cleartext,
    pub min_tls: TlsVersion,
    /// Expects a PROXY protocol header from a trusted proxy.
    pub proxy: bool,
}

impl ListenSpec {
    /// A listener of `kind` on `address` with the default policies.
    pub fn new(address: SocketAddr, kind: ListenerKind) -> ListenSpec {
        ListenSpec {
            address,
            kind,
            cleartext: Cleartext::default(),
            min_tls: TlsVersion::default(),
            proxy: false,
        }
    }

    /// Whether the rest of the configuration gives this listener what it needs.
    pub fn check(&self, offers: &Offers) -> Result<(), ListenerError> {
        let address = self.address;
        match self.kind {
            ListenerKind::ImplicitTls if offers.certificate == Some(false) => {
                return Err(ListenerError::TlsWithoutCertificate(address));
            }
            ListenerKind::Kpop if !offers.gssapi => {
                return Err(ListenerError::KpopWithoutGssapi(address));
            }
            ListenerKind::AuthHttp if !offers.cluster => {
                return Err(ListenerError::AuthHttpWithoutCluster(address));
            }
            _ => {}
        }
        if self.proxy && !offers.trusted_proxies {
            return Err(ListenerError::ProxyWithoutTrusted(address));
        }
        Ok(())
    }
}

impl Listener {
    /// [`ListenSpec::check`] for a bound listener, as `run` is about to serve it with `config`
    /// (and certificates, if `tls`); its address when it passes.
    pub(crate) fn check(&self, config: &Config, tls: bool) -> Result<SocketAddr, ServerError> {
        let address = self.socket.local_addr().map_err(ServerError::Address)?;
        let spec = ListenSpec {
            address,
            kind: self.kind,
            cleartext: self.cleartext,
            min_tls: self.min_tls,
            proxy: self.proxy.is_some(),
        };
        spec.check(&Offers {
            certificate: Some(tls),
            gssapi: config.gssapi.is_some(),
            trusted_proxies: self.proxy.as_ref().is_some_and(|t| !t.is_empty()),
            cluster: config.cluster.is_some(),
        })?;
        Ok(address)
    }
}

/// What the rest of the configuration offers listeners.
#[derive(Debug, Clone, Copy)]
pub struct Offers {
    /// A certificate (configured, or the self-signed one); `None` while not known yet (the
    /// self-signed certificate is made after privileges are dropped, and sockets systemd
    /// passes replace the configured listeners), so the rule is then left to `run`.
    pub certificate: Option<bool>,
    /// SASL GSSAPI (a keytab).
    pub gssapi: bool,
    /// At least one trusted proxy address.
    pub trusted_proxies: bool,
    /// The cluster secret.
    pub cluster: bool,
}

/// A listener the configuration cannot serve. The words name pop3d's flags and keys: its
/// operators are the ones who read them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    #[error(
        "the implicit-TLS listener {0} needs a certificate (--tls-cert and --tls-key, \
         [[certificate]], or the self-signed one)"
    )]
    TlsWithoutCertificate(SocketAddr),
    #[error("a KPOP listener needs --gssapi-keytab (listener {0})")]
    KpopWithoutGssapi(SocketAddr),
    #[error(
        "the proxied listener {0} needs the addresses of its proxies: \
         --trusted-proxy CIDR or trusted_proxies = [\"CIDR\", ...]"
    )]
    ProxyWithoutTrusted(SocketAddr),
    #[error("--auth-http needs the cluster secret (--cluster-key-file)")]
    AuthHttpWithoutCluster(SocketAddr),
}

/// The listener a node advertises by default: the first proxied one, else the first POP3
/// (cleartext) one.
pub fn default_advertised(listeners: &[ListenSpec]) -> Option<SocketAddr> {
    let pop3 = |l: &&ListenSpec| l.kind == ListenerKind::Plain;
    let proxied = listeners.iter().filter(pop3).find(|l| l.proxy);
    proxied
        .or_else(|| listeners.iter().find(pop3))
        .map(|l| l.address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_needs_its_part_of_the_configuration() {
        let all = Offers {
            certificate: Some(true),
            gssapi: true,
            trusted_proxies: true,
            cluster: true,
        };
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let spec = |kind| ListenSpec::new(addr, kind);
        let proxied = ListenSpec {
            proxy: true,
            ..spec(ListenerKind::Plain)
        };
        // `all` but for the part `take` takes away.
        let without = |take: fn(&mut Offers)| {
            let mut offers = all;
            take(&mut offers);
            offers
        };
        let no_cert = without(|o| o.certificate = Some(false));
        let no_gssapi = without(|o| o.gssapi = false);
        let no_proxies = without(|o| o.trusted_proxies = false);
        let no_cluster = without(|o| o.cluster = false);
        use {ListenerError as E, ListenerKind as K};
        // Each kind, the configuration without the part it needs, and the error that gives.
        type Error = fn(SocketAddr) -> ListenerError;
        let rules: [(ListenSpec, Offers, Error); 4] = [
            (spec(K::ImplicitTls), no_cert, E::TlsWithoutCertificate),
            (spec(K::Kpop), no_gssapi, E::KpopWithoutGssapi),
            (proxied, no_proxies, E::ProxyWithoutTrusted),
            (spec(K::AuthHttp), no_cluster, E::AuthHttpWithoutCluster),
        ];
        for (spec, without, error) in rules {
            assert_eq!(spec.check(&all), Ok(()));
            assert_eq!(spec.check(&without), Err(error(addr)));
        }
        // Not known yet: left to `run`.
        let unknown = without(|o| o.certificate = None);
        assert_eq!(spec(K::ImplicitTls).check(&unknown), Ok(()));
    }
}
