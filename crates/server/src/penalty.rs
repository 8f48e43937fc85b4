//! Failed-authentication penalties: the reply to a failed attempt is delayed, more for each
//! failure from the same client (IPv6 by /64) or against the same account (its canonical
//! name, `verify::penalty_key`), from `base` up to `max` (Dovecot's curve: 2 s doubling to
//! 15 s). As in Dovecot, a penalty decays: the delay is reduced by the time since the key's
//! last penalty ended, so a failure after a quiet minute does not wait for failures long ago
//! while a guesser who retries at once waits the whole curve. Repeating the same wrong password does not
//! raise the penalty (a misconfigured client retrying is not an attack). Clients in the
//! trusted networks (Dovecot's `login_trusted_networks`: webmail, a proxy) are exempt.
//! Entries are kept in memory, bounded in number, and forgotten after a quiet spell. Time is
//! passed in, so the curve is tested without waiting.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::client_key;
use crate::proxy::TrustedProxies;

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
    /// When the reply to the last failure was (or will be) sent: the penalty decays from here.
    until: Instant,
    /// Keyed hash of the last wrong password (never the password itself).
    last_password: Option<u64>,
}

#[derive(Debug)]
pub struct Penalties {
    base: Duration,
    max: Duration,
    trusted: TrustedProxies,
    hasher: RandomState,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Penalties {
    /// `base` zero disables the delay (failures are still counted per connection); clients
    /// in `trusted` are never delayed.
    pub fn new(base: Duration, max: Duration, trusted: TrustedProxies) -> Penalties {
        Penalties {
            base,
            max: max.max(base),
            trusted,
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

    /// Records a failure from `ip` against `account` (its canonical name, when known) and
    /// returns how long to wait before replying: the longest of its keys' delays, each the
    /// curve at that key's failures less the time since that key's last penalty ended. A
    /// trusted client is neither recorded nor delayed.
    pub fn failure(
        &self,
        ip: IpAddr,
        account: Option<&str>,
        password: Option<u64>,
        now: Instant,
    ) -> Duration {
        if self.trusted.contains(ip) {
            return Duration::ZERO;
        }
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
        let mut delay = Duration::ZERO;
        for key in &keys {
            let entry = entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                last: now,
                until: now,
                last_password: None,
            });
            if now.saturating_duration_since(entry.last) >= FORGET_AFTER {
                entry.failures = 0;
                entry.until = now;
                entry.last_password = None;
            }
            let repeated = password.is_some() && password == entry.last_password;
            if !repeated {
                entry.failures = entry.failures.saturating_add(1);
            }
            entry.last = now;
            entry.last_password = password;
            let quiet = now.saturating_duration_since(entry.until);
            delay = delay.max(self.delay_for(entry.failures).saturating_sub(quiet));
        }
        for key in &keys {
            if let Some(entry) = entries.get_mut(key) {
                entry.until = now + delay;
            }
        }
        delay
    }

    /// The failures counted against an account's key (for tests).
    #[cfg(test)]
    pub(crate) fn account_failures(&self, account: &str) -> u32 {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&Key::Account(account.to_string()))
            .map_or(0, |e| e.failures)
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

    /// Dovecot's curve: 2 s doubling to 15 s.
    fn dovecot(trusted: TrustedProxies) -> Penalties {
        Penalties::new(Duration::from_secs(2), Duration::from_secs(15), trusted)
    }

    #[test]
    fn curve_grows_to_the_cap_and_repeats_do_not_count() {
        let p = dovecot(TrustedProxies::default());
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

    /// Issue 15: a penalty decays as Dovecot's does. A guesser retrying as soon as the reply
    /// comes waits the whole curve; a user who mistypes after a quiet minute is answered at
    /// once (and a failure right after that waits the full capped delay again).
    #[test]
    fn a_penalty_decays_with_the_time_since_it_ended() {
        let p = dovecot(TrustedProxies::default());
        let secs = Duration::from_secs;
        let a = ip("192.0.2.1");
        let fp = |s: &str| Some(p.fingerprint(s.as_bytes()));
        let mut now = Instant::now();
        // Each retry is sent the moment the previous reply comes: 2, 4, 8, 15, 15.
        for (i, want) in [2, 4, 8, 15, 15].into_iter().enumerate() {
            let got = p.failure(a, Some("alice"), fp(&i.to_string()), now);
            assert_eq!(got, secs(want), "failure {i}");
            now += got;
        }
        // Retried halfway through a 15 s wait's worth of quiet: the rest of it.
        now += secs(5);
        assert_eq!(p.failure(a, Some("alice"), fp("x"), now), secs(10));
        now += secs(10);
        // A quiet minute: failures long ago cost nothing now.
        now += secs(60);
        assert_eq!(p.failure(a, Some("alice"), fp("y"), now), Duration::ZERO);
        // The count still stands: at once again, the capped delay.
        assert_eq!(p.failure(a, Some("alice"), fp("z"), now), secs(15));
    }

    /// Issue 15: clients in `trusted_networks` (Dovecot's `login_trusted_networks`) are
    /// neither delayed nor counted against the account.
    #[test]
    fn trusted_networks_are_exempt() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "2001:db8::/32"]).expect("nets");
        let p = dovecot(trusted);
        let t0 = Instant::now();
        for i in 0..5u64 {
            let pw = Some(i);
            assert_eq!(
                p.failure(ip("10.1.2.3"), Some("bob"), pw, t0),
                Duration::ZERO
            );
            assert_eq!(
                p.failure(ip("::ffff:10.1.2.3"), Some("bob"), pw, t0),
                Duration::ZERO
            );
            assert_eq!(
                p.failure(ip("2001:db8::9"), Some("bob"), pw, t0),
                Duration::ZERO
            );
        }
        // Nothing was counted against the account.
        assert_eq!(
            p.failure(ip("192.0.2.1"), Some("bob"), None, t0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn zero_base_disables_and_memory_is_bounded() {
        let p = Penalties::new(
            Duration::ZERO,
            Duration::from_secs(15),
            TrustedProxies::default(),
        );
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            let addr = IpAddr::from(i.to_be_bytes());
            assert_eq!(p.failure(addr, None, None, t0), Duration::ZERO);
        }
        assert!(p.entries.lock().expect("lock").len() <= MAX_ENTRIES);
    }
}
