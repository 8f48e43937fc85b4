//! Failed-authentication penalties: the reply to a failed attempt is delayed, more for each
//! failure from the same client (IPv6 by /64) or against the same account, from `base` up to
//! `max` (Dovecot's curve: 2 s doubling to 15 s). Repeating the same wrong password does not
//! raise the penalty (a misconfigured client retrying is not an attack). Entries are kept in
//! memory, bounded in number, and forgotten after a quiet spell. Time is passed in, so the
//! curve is tested without waiting.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::client_key;

/// Most clients and accounts remembered at once.
const MAX_ENTRIES: usize = 16_384;
/// An entry this long without a failure is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(IpAddr),
    Account(String),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    /// Keyed hash of the last wrong password (never the password itself).
    last_password: Option<u64>,
}

#[derive(Debug)]
pub struct Penalties {
    base: Duration,
    max: Duration,
    hasher: RandomState,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Penalties {
    /// `base` zero disables the delay (failures are still counted per connection).
    pub fn new(base: Duration, max: Duration) -> Penalties {
        Penalties {
            base,
            max: max.max(base),
            hasher: RandomState::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A keyed fingerprint of a password, to notice the same one coming again.
    pub fn fingerprint(&self, password: &[u8]) -> u64 {
        self.hasher.hash_one(password)
    }

    fn delay_for(&self, failures: u32) -> Duration {
        if failures == 0 || self.base.is_zero() {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Records a failure from `ip` against `account` (when known by name) and returns how
    /// long to wait before replying.
    pub fn failure(
        &self,
        ip: IpAddr,
        account: Option<&str>,
        password: Option<u64>,
        now: Instant,
    ) -> Duration {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
            if entries.len() >= MAX_ENTRIES {
                // Still full: drop the oldest half rather than grow.
                let mut ages: Vec<Instant> = entries.values().map(|e| e.last).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                entries.retain(|_, e| e.last > cut);
            }
        }
        let mut keys = vec![Key::Client(client_key(ip))];
        if let Some(a) = account {
            keys.push(Key::Account(a.to_string()));
        }
        let mut worst = 0;
        for key in keys {
            let entry = entries.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
                last_password: None,
            });
            if now.saturating_duration_since(entry.last) >= FORGET_AFTER {
                entry.failures = 0;
                entry.last_password = None;
            }
            let repeated = password.is_some() && password == entry.last_password;
            if !repeated {
                entry.failures = entry.failures.saturating_add(1);
            }
            entry.last = now;
            entry.last_password = password;
            worst = worst.max(entry.failures);
        }
        self.delay_for(worst)
    }

    /// A successful login clears the account's record (not the client's: one good login
    /// does not excuse a scan of other accounts).
    pub fn success(&self, account: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&Key::Account(account.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::tests::ip;

    #[test]
    fn curve_grows_to_the_cap_and_repeats_do_not_count() {
        let p = Penalties::new(Duration::from_secs(2), Duration::from_secs(15));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let fp = |s: &str| Some(p.fingerprint(s.as_bytes()));
        // (client, wrong password, delay in seconds) for the account alice.
        let failures = [
            (a, "one", 2),
            (a, "two", 4),
            // The same wrong password again: no increase.
            (a, "two", 4),
            (a, "three", 8),
            (a, "four", 15),
            (a, "five", 15),
            // Another client trying the same account is penalised through the account.
            (ip("198.51.100.7"), "six", 15),
        ];
        for (client, password, secs) in failures {
            let delay = p.failure(client, Some("alice"), fp(password), t0);
            assert_eq!(delay, Duration::from_secs(secs), "{client} {password}");
        }
        // IPv6 neighbours in one /64 share a record.
        let v6a = ip("2001:db8::1");
        let v6b = ip("2001:db8::2");
        assert_eq!(p.failure(v6a, None, fp("x"), t0), Duration::from_secs(2));
        assert_eq!(p.failure(v6b, None, fp("y"), t0), Duration::from_secs(4));
        // Forgotten after a quiet spell.
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(p.failure(v6a, None, fp("z"), later), Duration::from_secs(2));
        // Success clears the account, not the client.
        p.success("alice");
        assert_eq!(
            p.failure(ip("203.0.113.9"), Some("alice"), fp("seven"), t0),
            Duration::from_secs(2)
        );
        assert_eq!(p.failure(a, None, fp("eight"), t0), Duration::from_secs(15));
    }

    #[test]
    fn zero_base_disables_and_memory_is_bounded() {
        let p = Penalties::new(Duration::ZERO, Duration::from_secs(15));
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            let addr = IpAddr::from(i.to_be_bytes());
            assert_eq!(p.failure(addr, None, None, t0), Duration::ZERO);
        }
        assert!(p.entries.lock().expect("lock").len() <= MAX_ENTRIES);
    }
}
