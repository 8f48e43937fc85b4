//! The verified-credential cache: after a successful argon2id check, remember (account, keyed
//! MAC of the password, the stored hash it was checked against) for a while, so a mail client
//! polling every few minutes does not pay for argon2 every time.
//!
//! It never stores a password: only HMAC-SHA-256 under a key made at start and kept in memory.
//! An entry counts only while the account's stored hash is the one it was made with, so a
//! password change invalidates it at once; entries expire after the TTL; the map is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::hmac;
use store::{Account, AccountId};

/// Most accounts remembered at once.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    stored_hash: String,
    mac: hmac::Tag,
    at: Instant,
}

pub struct CredentialCache {
    key: hmac::Key,
    ttl: Duration,
    entries: Mutex<HashMap<AccountId, Entry>>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialCache(ttl {:?})", self.ttl)
    }
}

impl CredentialCache {
    /// A cache with a fresh random key; `ttl` zero disables it.
    pub fn new(ttl: Duration) -> CredentialCache {
        let rng = ring::rand::SystemRandom::new();
        let (key, ttl) = match hmac::Key::generate(hmac::HMAC_SHA256, &rng) {
            Ok(key) => (key, ttl),
            // Without randomness there is no safe key: the cache stays off.
            Err(_) => (hmac::Key::new(hmac::HMAC_SHA256, &[0; 32]), Duration::ZERO),
        };
        CredentialCache {
            key,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, account: AccountId, password: &[u8]) -> hmac::Tag {
        hmac::sign(&self.key, &mac_input(account, password))
    }

    /// True when this password was verified for this account, against its current stored
    /// hash, less than the TTL ago.
    pub fn check(&self, account: &Account, password: &[u8], now: Instant) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.get(&account.id) else {
            return false;
        };
        let fresh = now.saturating_duration_since(entry.at) < self.ttl;
        fresh
            && entry.stored_hash == account.password_hash
            && hmac::verify(
                &self.key,
                &mac_input(account.id, password),
                entry.mac.as_ref(),
            )
            .is_ok()
    }

    /// Remembers a successful verification.
    pub fn remember(&self, account: &Account, password: &[u8], now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mac = self.mac(account.id, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| now.saturating_duration_since(e.at) < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            account.id,
            Entry {
                stored_hash: account.password_hash.clone(),
                mac,
                at: now,
            },
        );
    }
}

/// What the MAC covers: the account id, then the password.
fn mac_input(account: AccountId, password: &[u8]) -> Vec<u8> {
    let mut v = account.to_be_bytes().to_vec();
    v.extend_from_slice(password);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::{AccountName, AccountPolicy, AccountSecrets};

    fn account(id: i64, hash: &str) -> Account {
        Account {
            id,
            name: AccountName::parse("alice").expect("name"),
            password_hash: hash.into(),
            secrets: AccountSecrets::default(),
            created_at: 0,
            policy: AccountPolicy::default(),
        }
    }

    #[test]
    fn hits_only_for_the_same_password_hash_and_within_the_ttl() {
        let cache = CredentialCache::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let a = account(1, "$argon2id$one");
        assert!(!cache.check(&a, b"pw", t0));
        cache.remember(&a, b"pw", t0);
        assert!(cache.check(&a, b"pw", t0 + Duration::from_secs(10)));
        assert!(!cache.check(&a, b"pW", t0), "another password");
        assert!(
            !cache.check(&account(2, "$argon2id$one"), b"pw", t0),
            "another account"
        );
        // The password was changed: the stored hash differs, the entry no longer counts.
        assert!(!cache.check(&account(1, "$argon2id$two"), b"pw", t0));
        assert!(
            !cache.check(&a, b"pw", t0 + Duration::from_secs(300)),
            "expired"
        );
    }

    #[test]
    fn a_zero_ttl_disables_it() {
        let cache = CredentialCache::new(Duration::ZERO);
        let a = account(1, "$h");
        let t0 = Instant::now();
        cache.remember(&a, b"pw", t0);
        assert!(!cache.check(&a, b"pw", t0));
    }
}
