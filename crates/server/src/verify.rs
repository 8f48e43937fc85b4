//! Credential checks shared by the POP3 sessions and the nginx `auth_http` endpoint, so a
//! login through nginx is judged by exactly the code a direct login is: the account lookup,
//! the credential cache, argon2 on the hashing threads, APOP and CRAM-MD5 digests.
//!
//! Each check answers `Ok(Some(account))` (accepted), `Ok(None)` (refused: unknown name or
//! wrong credentials, told apart nowhere) or `Err` (the store failed; a temporary error).

use std::sync::Arc;
use std::time::Instant;

use proto::Secret;
use store::{Account, AccountName, StoreError};
use tracing::{debug, info, warn};

use crate::reply::{self, SessionError};
use crate::Shared;

/// A password check (USER/PASS, SASL PLAIN and LOGIN, nginx's `plain`).
pub(crate) async fn password(
    shared: &Arc<Shared>,
    name: String,
    password: Secret<Vec<u8>>,
    utf8: bool,
) -> Result<Option<Account>, SessionError> {
    let store = shared.store.clone();
    let params = shared.config.argon2;
    let scram_iterations = shared.config.scram_iterations;
    // A password verified recently for this account needs no argon2 run (see `credcache`);
    // the lookup is cheap and runs first.
    let found = lookup(shared, name, utf8).await?;
    if let Some(account) = &found {
        let hit = shared
            .credentials
            .check(account, password.expose(), Instant::now());
        if !shared.config.credential_cache_ttl.is_zero() {
            shared.metrics.credential_cache(hit);
        }
        if hit {
            debug!("password verified from the credential cache");
            return Ok(found);
        }
    }
    // On the hashing threads, one per CPU (see `hashpool`). An unknown name costs a full
    // verification too, and gets the same answer as a wrong password.
    let cache = shared.clone();
    let verified = shared
        .hashing
        .run(move || -> Result<_, StoreError> {
            let account = found;
            let stored = account.as_ref().map(|a| a.password_hash.as_str());
            let verdict = auth::verify_password_with(stored, password.expose(), params);
            let account = account.filter(|_| verdict == auth::Verdict::Accepted);
            if let Some(a) = &account {
                derive_scram_keys_if_needed(&*store, a, password.expose(), scram_iterations);
                rehash_if_needed(&*store, a, password.expose(), params);
                cache
                    .credentials
                    .remember(a, password.expose(), Instant::now());
            }
            Ok(account)
        })
        .await;
    match verified {
        Ok(r) => r.map_err(SessionError::from),
        Err(e) => Err(e.into()),
    }
}

/// APOP (RFC 1939 section 7): the digest of `timestamp` and the account's legacy secret.
pub(crate) async fn apop(
    shared: &Arc<Shared>,
    name: String,
    timestamp: String,
    digest: String,
    utf8: bool,
) -> Result<Option<Account>, SessionError> {
    digest_check(shared, name, utf8, move |account| {
        let secret = account.and_then(|a| a.secrets.legacy_secret.as_deref());
        auth::verify_apop(&timestamp, secret, &digest)
    })
    .await
}

/// CRAM-MD5 (RFC 2195) given the challenge and the client's hex digest, as nginx hands them
/// over (a POP3 session runs the SASL step machine instead, which ends in the same check).
pub(crate) async fn cram_md5(
    shared: &Arc<Shared>,
    name: String,
    challenge: String,
    digest: String,
) -> Result<Option<Account>, SessionError> {
    digest_check(shared, name, false, move |account| {
        let key = account.and_then(|a| {
            auth::Credentials {
                legacy_secret: a.secrets.legacy_secret.as_deref(),
                cram_md5_states: a.secrets.cram_md5_states.as_deref(),
                scram: None,
            }
            .cram_key()
        });
        auth::verify_cram_md5(&challenge, key, &digest)
    })
    .await
}

/// Looks the account up and judges a digest against its secret, on a blocking thread (the
/// check runs with `None` for an unknown name, so that costs what a wrong digest costs).
async fn digest_check(
    shared: &Shared,
    name: String,
    utf8: bool,
    check: impl FnOnce(Option<&Account>) -> auth::Verdict + Send + 'static,
) -> Result<Option<Account>, SessionError> {
    let store = shared.store.clone();
    let domain = shared.config.default_domain.clone();
    reply::blocking(move || {
        let account = resolve_account(&*store, &name, utf8, domain.as_deref())?;
        let verdict = check(account.as_ref());
        Ok(account.filter(|_| verdict == auth::Verdict::Accepted))
    })
    .await
}

/// [`resolve_account`] on a blocking thread.
pub(crate) async fn lookup(
    shared: &Shared,
    name: String,
    utf8: bool,
) -> Result<Option<Account>, SessionError> {
    let store = shared.store.clone();
    let domain = shared.config.default_domain.clone();
    reply::blocking(move || resolve_account(&*store, &name, utf8, domain.as_deref())).await
}

/// Looks up the account a client named: SASLprep in UTF8 mode (RFC 6856 section 3.2), then
/// the name as given, `user+domain` as `user@domain` (the SDPS convention), and a bare name in
/// the default domain.
fn resolve_account(
    store: &dyn store::Store,
    raw: &str,
    utf8: bool,
    default_domain: Option<&str>,
) -> Result<Option<Account>, StoreError> {
    let name = if utf8 { prepared(raw) } else { raw.to_string() };
    for candidate in candidates(&name, default_domain) {
        if let Ok(n) = AccountName::parse(&candidate) {
            if let Some(account) = store.account(&n)? {
                return Ok(Some(account));
            }
        }
    }
    Ok(None)
}

/// SASLprep of a name (NFKC, RFC 4013), or the name as given where SASLprep refuses it.
fn prepared(raw: &str) -> String {
    auth::saslprep(raw).unwrap_or_else(|| raw.to_string())
}

/// The names [`resolve_account`] tries for `name`, in order.
fn candidates(name: &str, default_domain: Option<&str>) -> Vec<String> {
    let mut candidates = vec![name.to_string()];
    if !name.contains('@') {
        if let Some((local, domain)) = name.rsplit_once('+') {
            candidates.push(format!("{local}@{domain}"));
        }
        if let Some(d) = default_domain {
            candidates.push(format!("{name}@{d}"));
        }
    }
    candidates
}

/// The name the failed-login penalty counts a login name under, so that every spelling of an
/// account shares one counter: SASLprep (NFKC, in any mode: merging look-alikes costs nothing),
/// `user+domain` as `user@domain`, a bare name in the default domain, lowercased as
/// [`AccountName::parse`] does. An account's own name gives the key its logins count under.
pub(crate) fn penalty_key(raw: &str, default_domain: Option<&str>) -> String {
    let name = prepared(raw);
    // The first candidate with a domain (`+` or the default domain), else the name itself.
    let full = candidates(&name, default_domain)
        .into_iter()
        .nth(1)
        .unwrap_or(name);
    AccountName::parse(&full).map_or_else(|_| full.to_lowercase(), |n| n.to_string())
}

/// Derives and stores SCRAM-SHA-256 keys for an account that has none (imported with a hash
/// only, or from before schema v3) or has keys of another iteration count than configured:
/// the password is at hand only now. Failure only costs SCRAM (or its upgrade) for this
/// account until the next login.
fn derive_scram_keys_if_needed(
    store: &dyn store::Store,
    account: &Account,
    password: &[u8],
    iterations: u32,
) {
    let stored = account.secrets.scram_sha256.as_deref();
    if !auth::scram_needs_rederive(stored, iterations) {
        return;
    }
    let record = auth::derive_scram(password, iterations);
    let hash = &account.password_hash;
    let written = match stored {
        None => store.add_scram_keys(account.id, hash, &record),
        Some(old) => store.replace_scram_keys(account.id, hash, old, &record),
    };
    match written {
        Ok(true) => info!(iterations, "SCRAM-SHA-256 keys derived at login"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "storing the SCRAM-SHA-256 keys failed"),
    }
}

/// Stores a fresh hash when the stored one has other argon2 parameters than configured
/// (the password is at hand only now). Failure only costs the upgrade.
fn rehash_if_needed(
    store: &dyn store::Store,
    account: &Account,
    password: &[u8],
    params: auth::Argon2Params,
) {
    if !auth::needs_rehash(&account.password_hash, params) {
        return;
    }
    match auth::hash_password_with(password, params) {
        Ok(new) => match store.rehash_password(account.id, &account.password_hash, &new) {
            Ok(true) => info!("password re-hashed with the configured argon2 parameters"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "storing the re-hashed password failed"),
        },
        Err(e) => warn!(error = %e, "re-hashing the password failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::penalty_key;

    /// Issue 15: every spelling that reaches an account counts under one penalty key.
    #[test]
    fn penalty_key_is_the_canonical_account_name() {
        let dom = Some("dom");
        for name in [
            "alice",
            "ALICE",
            "alice@dom",
            "Alice@DOM",
            "alice+dom",
            "\u{FF41}lice",
        ] {
            assert_eq!(penalty_key(name, dom), "alice@dom", "{name}");
        }
        assert_eq!(penalty_key("alice", None), "alice");
        assert_eq!(penalty_key("alice+dom", None), "alice@dom");
        assert_eq!(penalty_key("bob@other", dom), "bob@other");
        // A name no account can have is still keyed, lowercased.
        assert_eq!(penalty_key("A B", None), "a b");
    }
}
