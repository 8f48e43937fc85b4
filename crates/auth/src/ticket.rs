//! Login tickets: what the nginx `auth_http` endpoint hands nginx in `Auth-Pass` after it has
//! checked a client's credentials, and what the chosen node accepts in place of the password.
//!
//! A ticket is an HMAC-SHA256 (RFC 2104) over the account name, the node it was issued for,
//! the client's address, an expiry and a random nonce, under a key every node of the cluster
//! derives from the cluster secret. So the node does not run argon2 again, the user's password
//! never crosses the nginx-to-node link, and a ticket is worth nothing for another user,
//! another node, another client address, after its expiry, or a second time (the node keeps
//! the nonces it has seen until they expire, [`Replay`]).
//!
//! Wire form (ASCII, 61 octets at most plus none of the user name, which travels in `USER`):
//! `pop3d-ticket.v1.<expiry unix seconds>.<nonce, 16 hex>.<tag, 43 base64url>`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::legacy::constant_time_eq;
use crate::scram::hmac;

/// What every ticket starts with, so a node can tell a ticket from a password at a glance.
pub const PREFIX: &str = "pop3d-ticket.v1.";

/// The fewest octets a cluster secret may have.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a cluster secret or a ticket is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the cluster secret has {0} octets; at least {MIN_SECRET_LEN} are needed")]
    ShortSecret(usize),
    #[error("not a ticket")]
    Malformed,
    #[error("the ticket's signature does not match")]
    BadSignature,
    #[error("the ticket has expired")]
    Expired,
    #[error("the ticket was already used")]
    Replayed,
}

/// The keys derived from the cluster secret (a file every node and the auth endpoint share).
/// Each use gets its own key, so the value nginx sends in a header cannot sign a ticket.
#[derive(Clone)]
pub struct ClusterKeys {
    ticket: [u8; 32],
    /// The endpoint key in hex, as nginx sends it (compared on every request).
    endpoint_hex: String,
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKeys(..)")
    }
}

impl ClusterKeys {
    /// Derives the keys from the cluster secret (surrounding white space is not part of it).
    pub fn from_secret(secret: &[u8]) -> Result<ClusterKeys, TicketError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(TicketError::ShortSecret(secret.len()));
        }
        let endpoint = hmac(secret, b"pop3d auth_http key v1");
        Ok(ClusterKeys {
            ticket: hmac(secret, b"pop3d login ticket v1"),
            endpoint_hex: endpoint.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// The value nginx must send in the endpoint's key header (hex, 64 digits).
    pub fn endpoint_key(&self) -> String {
        self.endpoint_hex.clone()
    }

    /// Whether `given` is the endpoint key, compared in constant time.
    pub fn endpoint_key_matches(&self, given: &str) -> bool {
        constant_time_eq(self.endpoint_hex.as_bytes(), given.trim().as_bytes())
    }

    fn tag(&self, user: &str, node: &str, client: IpAddr, expiry: u64, nonce: &str) -> String {
        // Length-prefixed fields: no two field lists give the same input.
        let mut input = Vec::with_capacity(128);
        for field in [
            user,
            node,
            &client.to_canonical().to_string(),
            &expiry.to_string(),
            nonce,
        ] {
            input.extend_from_slice(&(field.len() as u64).to_be_bytes());
            input.extend_from_slice(field.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(hmac(&self.ticket, &input))
    }

    /// A ticket for `user` to log in on `node` from `client`, valid for `ttl`.
    pub fn issue(&self, user: &str, node: &str, client: IpAddr, ttl: Duration) -> String {
        let expiry = unix_now().saturating_add(ttl.as_secs().max(1));
        let nonce = format!("{:016x}", OsRng.next_u64());
        let tag = self.tag(user, node, client, expiry, &nonce);
        format!("{PREFIX}{expiry}.{nonce}.{tag}")
    }

    /// Checks `ticket` for `user` on `node` from `client`; on success returns the nonce and its
    /// expiry, for [`Replay::first_use`].
    pub fn verify(
        &self,
        ticket: &str,
        user: &str,
        node: &str,
        client: IpAddr,
    ) -> Result<Verified, TicketError> {
        let rest = ticket.strip_prefix(PREFIX).ok_or(TicketError::Malformed)?;
        let mut parts = rest.split('.');
        let (Some(expiry), Some(nonce), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError::Malformed);
        };
        let expiry_secs: u64 = expiry
            .parse()
            .ok()
            .filter(|_| expiry.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(TicketError::Malformed)?;
        if nonce.len() != 16 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TicketError::Malformed);
        }
        let expected = self.tag(user, node, client, expiry_secs, nonce);
        if !constant_time_eq(expected.as_bytes(), tag.as_bytes()) {
            return Err(TicketError::BadSignature);
        }
        if expiry_secs < unix_now() {
            return Err(TicketError::Expired);
        }
        Ok(Verified {
            nonce: nonce.to_owned(),
            expiry: expiry_secs,
        })
    }
}

/// A ticket whose signature and expiry are good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    nonce: String,
    expiry: u64,
}

/// The nonces of tickets a node has accepted, kept until they expire, so each ticket logs in
/// once.
#[derive(Debug, Default)]
pub struct Replay {
    seen: Mutex<Seen>,
}

/// Nonces with their tickets' expiry, and when expired ones were last dropped.
#[derive(Debug, Default)]
struct Seen {
    nonces: HashMap<String, u64>,
    pruned_at: u64,
}

impl Replay {
    pub fn new() -> Replay {
        Replay::default()
    }

    /// Records the ticket's nonce; `Err(Replayed)` if it was seen before.
    pub fn first_use(&self, verified: &Verified) -> Result<(), TicketError> {
        let now = unix_now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Expiries are whole seconds: dropping the expired nonces once a second is enough, and
        // keeps a login from scanning every ticket of the last half minute.
        if seen.pruned_at != now {
            seen.nonces.retain(|_, expiry| *expiry >= now);
            seen.pruned_at = now;
        }
        if seen.nonces.contains_key(&verified.nonce) {
            return Err(TicketError::Replayed);
        }
        seen.nonces.insert(verified.nonce.clone(), verified.expiry);
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn keys() -> ClusterKeys {
        ClusterKeys::from_secret(SECRET).expect("test value")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test value")
    }

    #[test]
    fn a_ticket_verifies_for_its_user_node_and_client_only() {
        let k = keys();
        let t = k.issue(
            "ann@example.org",
            "n1",
            ip("192.0.2.7"),
            Duration::from_secs(30),
        );
        assert!(t.starts_with(PREFIX));
        assert!(t.len() <= PREFIX.len() + 20 + 1 + 16 + 1 + 43, "{t}");
        assert!(k
            .verify(&t, "ann@example.org", "n1", ip("192.0.2.7"))
            .is_ok());
        for (user, node, client) in [
            ("bob@example.org", "n1", "192.0.2.7"),
            ("ann@example.org", "n2", "192.0.2.7"),
            ("ann@example.org", "n1", "192.0.2.8"),
        ] {
            assert_eq!(
                k.verify(&t, user, node, ip(client)),
                Err(TicketError::BadSignature),
                "{user} {node} {client}"
            );
        }
        // An IPv4 client seen as IPv4-mapped IPv6 by the other side is the same client.
        assert!(k
            .verify(&t, "ann@example.org", "n1", ip("::ffff:192.0.2.7"))
            .is_ok());
    }

    #[test]
    fn another_cluster_secret_or_a_changed_field_fails() {
        let k = keys();
        let t = k.issue("ann", "n1", ip("::1"), Duration::from_secs(30));
        let other =
            ClusterKeys::from_secret(b"another secret of thirty-two octets!").expect("test value");
        assert_eq!(
            other.verify(&t, "ann", "n1", ip("::1")),
            Err(TicketError::BadSignature)
        );
        // A later expiry with the old tag.
        let parts: Vec<&str> = t
            .strip_prefix(PREFIX)
            .expect("test value")
            .split('.')
            .collect();
        let later = format!(
            "{PREFIX}{}.{}.{}",
            parts[0].parse::<u64>().expect("test value") + 3600,
            parts[1],
            parts[2]
        );
        assert_eq!(
            k.verify(&later, "ann", "n1", ip("::1")),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn expired_and_malformed_tickets_are_refused() {
        let k = keys();
        let nonce = "0011223344556677";
        let past = unix_now() - 5;
        let tag = k.tag("ann", "n1", ip("::1"), past, nonce);
        let old = format!("{PREFIX}{past}.{nonce}.{tag}");
        assert_eq!(
            k.verify(&old, "ann", "n1", ip("::1")),
            Err(TicketError::Expired)
        );
        for bad in [
            "secret password",
            "pop3d-ticket.v1.",
            "pop3d-ticket.v1.1.2.3",
            "pop3d-ticket.v1.+5.0011223344556677.x",
            "pop3d-ticket.v1.5.00112233445566zz.x",
            "pop3d-ticket.v1.5.0011223344556677.x.y",
        ] {
            assert_eq!(
                k.verify(bad, "ann", "n1", ip("::1")),
                Err(TicketError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_ticket_logs_in_once() {
        let k = keys();
        let replay = Replay::new();
        let t = k.issue("ann", "n1", ip("::1"), Duration::from_secs(30));
        let v = k.verify(&t, "ann", "n1", ip("::1")).expect("test value");
        assert_eq!(replay.first_use(&v), Ok(()));
        assert_eq!(replay.first_use(&v), Err(TicketError::Replayed));
        let t2 = k.issue("ann", "n1", ip("::1"), Duration::from_secs(30));
        let v2 = k.verify(&t2, "ann", "n1", ip("::1")).expect("test value");
        assert_eq!(replay.first_use(&v2), Ok(()));
    }

    #[test]
    fn short_secrets_are_refused_and_keys_are_separate() {
        assert_eq!(
            ClusterKeys::from_secret(b"  short \n").expect_err("should fail"),
            TicketError::ShortSecret(5)
        );
        let k = keys();
        assert_eq!(k.endpoint_key().len(), 64);
        let ticket_hex: String = k.ticket.iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(k.endpoint_key(), ticket_hex);
        assert!(k.endpoint_key_matches(&k.endpoint_key()));
        assert!(!k.endpoint_key_matches("00"));
        // Trailing newline of a key file does not change the keys.
        let nl =
            ClusterKeys::from_secret(b"0123456789abcdef0123456789abcdef\n").expect("test value");
        assert_eq!(nl.endpoint_key(), k.endpoint_key());
    }
}
