//! The GSSAPI hook (RFC 4752): a trait for the acceptor side of a GSS-API security context, so
//! the SASL GSSAPI mechanism in [`crate::sasl`] needs no Kerberos library; the MIT Kerberos
//! implementation behind the `gssapi` cargo feature is [`krb5`].

use std::fmt;

/// The server side of one GSS-API security context. `Sync` so that a session holding one can
/// live in a multi-threaded runtime; every method takes `&mut self`.
pub trait GssAcceptor: Send + Sync {
    /// Feeds a token from the client; returns the token to send back (possibly empty) and
    /// whether the context is now established.
    fn step(&mut self, token: &[u8]) -> Result<(Vec<u8>, bool), String>;
    /// Integrity-protects a message (no confidentiality), for the security-layer offer.
    fn wrap(&mut self, message: &[u8]) -> Result<Vec<u8>, String>;
    /// Checks and unwraps a message from the client.
    fn unwrap(&mut self, message: &[u8]) -> Result<Vec<u8>, String>;
    /// The authenticated client's principal, e.g. `alice@EXAMPLE.ORG`.
    fn client_name(&mut self) -> Result<String, String>;
    /// The realm of the service principal the client authenticated to (`EXAMPLE.ORG` of
    /// `pop/mail.example.org@EXAMPLE.ORG`), once the context is established.
    fn service_realm(&mut self) -> Result<String, String>;
}

/// Makes a fresh acceptor per AUTH GSSAPI exchange.
pub trait GssAcceptorFactory: Send + Sync + fmt::Debug {
    fn acceptor(&self) -> Result<Box<dyn GssAcceptor>, String>;
}

/// MIT Kerberos through libgssapi: service principal `SERVICE@HOST` (host-based, RFC 4752
/// section 3.1 uses `pop` for POP3), keys from the keytab in `KRB5_KTNAME`.
#[cfg(feature = "gssapi")]
pub mod krb5 {
    use std::sync::Mutex;

    use libgssapi::context::{SecurityContext, ServerCtx};
    use libgssapi::credential::{Cred, CredUsage};
    use libgssapi::name::Name;
    use libgssapi::oid::{OidSet, GSS_MECH_KRB5, GSS_NT_HOSTBASED_SERVICE};

    use super::{GssAcceptor, GssAcceptorFactory};

    /// Acceptor credentials for one service principal, acquired once.
    pub struct Krb5Acceptors {
        cred: Cred,
        service: String,
    }

    impl std::fmt::Debug for Krb5Acceptors {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Krb5Acceptors({})", self.service)
        }
    }

    impl Krb5Acceptors {
        /// `service` as `pop@mail.example.org`.
        pub fn new(service: &str) -> Result<Krb5Acceptors, String> {
            let name = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
                .and_then(|n| n.canonicalize(Some(GSS_MECH_KRB5)))
                .map_err(|e| format!("service name {service}: {e}"))?;
            let mechs = OidSet::singleton(GSS_MECH_KRB5).map_err(|e| e.to_string())?;
            let cred = Cred::acquire(Some(&name), None, CredUsage::Accept, Some(&mechs))
                .map_err(|e| format!("acceptor credentials for {service} (keytab?): {e}"))?;
            Ok(Krb5Acceptors {
                cred,
                service: service.to_string(),
            })
        }
    }

    impl GssAcceptorFactory for Krb5Acceptors {
        fn acceptor(&self) -> Result<Box<dyn GssAcceptor>, String> {
            Ok(Box::new(Krb5Acceptor {
                ctx: Mutex::new(ServerCtx::new(Some(self.cred.clone()))),
            }))
        }
    }

    /// `ServerCtx` is `Send` but not `Sync`; `&mut self` methods reach it through
    /// `Mutex::get_mut`, which never blocks.
    struct Krb5Acceptor {
        ctx: Mutex<ServerCtx>,
    }

    impl Krb5Acceptor {
        fn ctx(&mut self) -> &mut ServerCtx {
            self.ctx.get_mut().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl GssAcceptor for Krb5Acceptor {
        fn step(&mut self, token: &[u8]) -> Result<(Vec<u8>, bool), String> {
            let ctx = self.ctx();
            let out = ctx.step(token, None).map_err(|e| e.to_string())?;
            let out = out.map(|b| b.to_vec()).unwrap_or_default();
            Ok((out, ctx.is_complete()))
        }

        fn wrap(&mut self, message: &[u8]) -> Result<Vec<u8>, String> {
            self.ctx()
                .wrap(false, message)
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string())
        }

        fn unwrap(&mut self, message: &[u8]) -> Result<Vec<u8>, String> {
            self.ctx()
                .unwrap(message)
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string())
        }

        fn client_name(&mut self) -> Result<String, String> {
            self.ctx()
                .source_name()
                .map(|n| n.to_string())
                .map_err(|e| e.to_string())
        }

        fn service_realm(&mut self) -> Result<String, String> {
            let target = self
                .ctx()
                .target_name()
                .map(|n| n.to_string())
                .map_err(|e| e.to_string())?;
            target
                .rsplit_once('@')
                .map(|(_, realm)| realm.to_string())
                .ok_or_else(|| format!("service principal {target} names no realm"))
        }
    }
}
