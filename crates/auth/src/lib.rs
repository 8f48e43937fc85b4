//! Credential checks for the POP3 suite.
//!
//! This crate hashes and verifies passwords (argon2id, stored as PHC strings). It knows no
//! storage and no wire framing: the caller looks the account up and hands over the stored hash
//! (or `None` for an unknown user), so the mechanisms that come later (APOP, SASL) can be step
//! machines that *ask* the caller for the secret they need instead of reading it themselves.
//!
//! Verification is deliberately slow (that is the point of argon2); callers on an async runtime
//! run it on a blocking thread.

pub mod bearer;
pub mod gss;
mod legacy;
mod provider;
pub mod sasl;
pub mod scram;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod ticket;

use std::borrow::Cow;
use std::sync::Mutex;

pub use bearer::{BearerValidator, TokenError};
pub use gss::{GssAcceptor, GssAcceptorFactory};
pub use legacy::{verify_apop, verify_cram_md5, CramKey, CramMd5States};
pub use sasl::{ChannelBinding, Credentials, Exchange, Mechanism, Step, TokenVerdict};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Why a SASL exchange failed. Never carries a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("malformed SASL response")]
    Malformed,
    #[error("unsupported SASL option")]
    Unsupported,
    #[error("the authorization identity differs from the authentication identity")]
    AuthzidMismatch,
    #[error("a field contains CR, LF or NUL")]
    ControlInField,
    #[error("invalid credentials")]
    BadCredentials,
    #[error("the Kerberos principal's realm is not accepted here")]
    ForeignRealm,
}

/// Everything stored for a password: the argon2id hash, the SCRAM-SHA-256 keys, and for
/// accounts that opted in to APOP/CRAM-MD5 the password-equivalent legacy secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecrets {
    pub password_hash: String,
    pub scram_sha256: String,
    pub legacy_secret: Option<String>,
}

impl std::fmt::Debug for StoredSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecrets")
            .field("legacy", &self.legacy_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Derives what is stored for `password` (SCRAM keys with
/// [`scram::DEFAULT_ITERATIONS`]). `legacy` keeps the password itself for APOP and CRAM-MD5,
/// which need it (they then require the password to be UTF-8).
pub fn derive_secrets(password: &[u8], legacy: bool) -> Result<StoredSecrets, AuthError> {
    let password_hash = hash_password(password)?;
    let scram_sha256 = derive_scram(password, scram::DEFAULT_ITERATIONS);
    let legacy_secret = if legacy {
        Some(
            String::from_utf8(prepare(password).into_owned())
                .map_err(|_| AuthError::LegacyNotUtf8)?,
        )
    } else {
        None
    };
    Ok(StoredSecrets {
        password_hash,
        scram_sha256,
        legacy_secret,
    })
}

/// The RFC 5803 SCRAM-SHA-256 record of `password` (fresh random salt, `iterations` rounds
/// of PBKDF2, never fewer than [`scram::MIN_ITERATIONS`]), as [`derive_secrets`] stores it.
pub fn derive_scram(password: &[u8], iterations: u32) -> String {
    let mut salt = [0u8; 16];
    argon2::password_hash::rand_core::RngCore::fill_bytes(&mut OsRng, &mut salt);
    let iterations = iterations.max(scram::MIN_ITERATIONS);
    scram::Record::derive(&prepare(password), &salt, iterations).encode()
}

/// True when a stored SCRAM-SHA-256 record is missing, unreadable or derived with another
/// iteration count than `iterations`, so a successful password login should derive it anew.
pub fn scram_needs_rederive(record: Option<&str>, iterations: u32) -> bool {
    record
        .and_then(scram::Record::parse)
        .is_none_or(|r| r.iterations != iterations.max(scram::MIN_ITERATIONS))
}

/// Errors of this crate. They never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("hashing the password failed: {0}")]
    Hash(String),
    #[error("argon2 refuses these costs: {0}")]
    Argon2Costs(argon2::Error),
    #[error("the stored password hash is not a valid PHC string: {0}")]
    BadStoredHash(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("APOP and CRAM-MD5 need a password in UTF-8")]
    LegacyNotUtf8,
}

/// Cost parameters of new argon2id hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// OWASP's recommendation for argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Argon2Params {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Argon2Params {
    /// Whether the argon2 crate accepts these costs (at least 1 iteration, 1 to 2^24 - 1
    /// lanes, at least 8 KiB of memory per lane), checked without hashing anything.
    pub fn check(self) -> Result<(), AuthError> {
        self.params().map(drop)
    }

    fn params(self) -> Result<Params, AuthError> {
        // Before `Params::new`, which multiplies the lanes by 8 first.
        if self.parallelism > Params::MAX_P_COST {
            return Err(AuthError::Argon2Costs(argon2::Error::ThreadsTooMany));
        }
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(AuthError::Argon2Costs)
    }

    fn hasher(self) -> Result<Argon2<'static>, AuthError> {
        Ok(Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            self.params()?,
        ))
    }
}

/// True when `phc` is not an argon2id hash with exactly these parameters, so a successful
/// login should store a fresh hash of the password.
pub fn needs_rehash(phc: &str, params: Argon2Params) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(current) = Params::try_from(&parsed) else {
        return false;
    };
    parsed.algorithm.as_str() != "argon2id"
        || parsed.version != Some(0x13)
        || current.m_cost() != params.memory_kib
        || current.t_cost() != params.iterations
        || current.p_cost() != params.parallelism
}

/// SASLprep (RFC 4013) of a user name or password, as RFC 6856 section 3.2 asks for UTF-8
/// credentials; `None` when the string holds characters SASLprep prohibits.
pub fn saslprep(s: &str) -> Option<String> {
    stringprep::saslprep(s).ok().map(Cow::into_owned)
}

/// The octets a password is hashed and verified as: a password that is valid UTF-8 is
/// SASLprep-ed (so the same password typed as composed or decomposed Unicode matches; ASCII
/// passwords are unchanged), anything else (legacy 8-bit charsets) is taken as it is.
fn prepare(password: &[u8]) -> Cow<'_, [u8]> {
    match std::str::from_utf8(password) {
        Ok(s) if !s.is_ascii() => match stringprep::saslprep(s) {
            Ok(Cow::Owned(p)) => Cow::Owned(p.into_bytes()),
            Ok(Cow::Borrowed(_)) | Err(_) => Cow::Borrowed(password),
        },
        _ => Cow::Borrowed(password),
    }
}

/// Hashes a password into an argon2id PHC string with a fresh random salt and the default
/// parameters.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    hash_password_with(password, Argon2Params::default())
}

/// Hashes a password into an argon2id PHC string with a fresh random salt.
pub fn hash_password_with(password: &[u8], params: Argon2Params) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    params
        .hasher()?
        .hash_password(&prepare(password), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// A stored password hash that matches no password (like `!` in `/etc/shadow`): accounts
/// imported with CRAM-MD5 states only have it until a password is set. Verifying against it
/// costs a full argon2 run, as an unknown user does.
pub const NO_PASSWORD_HASH: &str = "!";

/// Checks that a stored hash is an argon2 PHC string this crate can verify, so tools can
/// refuse to store anything else.
pub fn validate_phc(phc: &str) -> Result<(), AuthError> {
    let parsed = PasswordHash::new(phc).map_err(|e| AuthError::BadStoredHash(e.to_string()))?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        other => Err(AuthError::BadStoredHash(format!(
            "unsupported algorithm {other:?}"
        ))),
    }
}

/// A hash of a random password with `params`, the parameters real hashes are made with:
/// verifying against it costs what a real verification costs, so an unknown user cannot be
/// told from a wrong password by timing. Made once per parameter set and kept.
fn decoy_hash(params: Argon2Params) -> String {
    static DECOYS: Mutex<Vec<(Argon2Params, String)>> = Mutex::new(Vec::new());
    let cached = |decoys: &Vec<(Argon2Params, String)>| {
        decoys
            .iter()
            .find(|(p, _)| *p == params)
            .map(|(_, h)| h.clone())
    };
    if let Some(h) = cached(&DECOYS.lock().unwrap_or_else(|e| e.into_inner())) {
        return h;
    }
    // A fresh random salt string doubles as a random password nobody knows. Hashed outside
    // the lock; a rare second hash for the same parameters is harmless.
    let random = SaltString::generate(&mut OsRng);
    let hash = hash_password_with(random.as_str().as_bytes(), params)
        .or_else(|_| hash_password(random.as_str().as_bytes()))
        .unwrap_or_default();
    let mut decoys = DECOYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = cached(&decoys) {
        return h;
    }
    decoys.push((params, hash.clone()));
    hash
}

/// Makes the decoy hash for `params` now (one argon2 run), so that the first unknown user's
/// login costs what later ones cost instead of also paying for the decoy.
pub fn prepare_decoy(params: Argon2Params) {
    decoy_hash(params);
}

/// Outcome of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches the stored hash.
    Accepted,
    /// Wrong password, unknown user or unusable stored hash: callers answer all the same.
    Rejected,
}

/// Verifies `password` against `stored` (a PHC string), or against a decoy hash of the
/// default parameters when the user is unknown (`stored` is `None`); see
/// [`verify_password_with`].
pub fn verify_password(stored: Option<&str>, password: &[u8]) -> Verdict {
    verify_password_with(stored, password, Argon2Params::default())
}

/// Verifies `password` against `stored` (a PHC string), or against a decoy hash made with
/// `decoy` (the parameters accounts are hashed with) when the user is unknown (`stored` is
/// `None`), so both cases take the same time.
pub fn verify_password_with(stored: Option<&str>, password: &[u8], decoy: Argon2Params) -> Verdict {
    let known = stored.is_some();
    let decoy = decoy_hash(decoy);
    let parsed = stored
        .and_then(|phc| PasswordHash::new(phc).ok())
        // An unknown user, or an unusable stored hash: the same work, then a refusal.
        .or_else(|| PasswordHash::new(&decoy).ok());
    let Some(parsed) = parsed else {
        return Verdict::Rejected;
    };
    let matches = verify_reusing_memory(&prepare(password), &parsed);
    let usable = stored.is_some_and(|phc| PasswordHash::new(phc).is_ok());
    if matches && known && usable {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    }
}

std::thread_local! {
    /// The argon2 working memory of this thread, kept between verifications: allocating and
    /// freeing 19 MiB per login leaves the C allocator holding hundreds of MiB.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Recomputes the hash with the parameters recorded in the PHC string, into this thread's
/// reused memory, and compares in constant time.
fn verify_reusing_memory(password: &[u8], parsed: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(recorded) = Params::try_from(parsed) else {
        return false;
    };
    let expected = expected.as_bytes();
    let Ok(params) = Params::new(
        recorded.m_cost(),
        recorded.t_cost(),
        recorded.p_cost(),
        Some(expected.len()),
    ) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let need = argon.params().block_count();
        if blocks.len() != need {
            blocks.clear();
            blocks.resize(need, argon2::Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..])
            .is_ok()
    });
    computed && legacy::constant_time_eq(&out, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: the SCRAM record carries the configured PBKDF2 count (RFC 5803's
    /// `iterations`), never under RFC 7677's 4096, and a record of another count is derived
    /// anew at the next password login.
    #[test]
    fn scram_record_carries_the_count_and_is_rederived_when_it_changes() {
        let record = derive_scram(b"pencil", 20_000);
        let parsed = scram::Record::parse(&record).expect("record");
        assert_eq!(parsed.iterations, 20_000);
        assert!(!scram_needs_rederive(Some(&record), 20_000));
        assert!(scram_needs_rederive(Some(&record), 100_000));
        assert!(scram_needs_rederive(None, 20_000));
        assert!(scram_needs_rederive(Some("garbage"), 20_000));
        // RFC 7677 section 4: never fewer than 4096.
        let low = derive_scram(b"pencil", 10);
        assert_eq!(scram::Record::parse(&low).expect("record").iterations, 4096);
        assert!(!scram_needs_rederive(Some(&low), 10));
        // popadm's secrets get the default count.
        let s = derive_secrets(b"pencil", false).expect("derive");
        assert_eq!(
            scram::Record::parse(&s.scram_sha256)
                .expect("record")
                .iterations,
            scram::DEFAULT_ITERATIONS
        );
        assert_eq!(scram::DEFAULT_ITERATIONS, 100_000);
    }

    /// Issue 15: an unknown user's decoy costs what a configured account costs: its PHC
    /// string carries the configured parameters (not the defaults), and it is made once.
    #[test]
    fn decoy_carries_the_configured_parameters() {
        let configured = Argon2Params {
            memory_kib: 64,
            iterations: 3,
            parallelism: 2,
        };
        let decoy = decoy_hash(configured);
        let parsed = PasswordHash::new(&decoy).expect("phc");
        let params = Params::try_from(&parsed).expect("params");
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (64, 3, 2)
        );
        assert!(!needs_rehash(&decoy, configured));
        assert_eq!(decoy_hash(configured), decoy, "cached, not made per login");
        assert_ne!(decoy_hash(Argon2Params::default()), decoy);
        assert_eq!(
            verify_password_with(None, b"anything", configured),
            Verdict::Rejected
        );
    }

    #[test]
    fn hash_then_verify() {
        let phc = hash_password(b"correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$"));
        assert_eq!(
            verify_password(Some(&phc), b"correct horse"),
            Verdict::Accepted
        );
        assert_eq!(
            verify_password(Some(&phc), b"correct horsf"),
            Verdict::Rejected
        );
        assert_eq!(verify_password(Some(&phc), b""), Verdict::Rejected);
    }

    #[test]
    fn unknown_user_and_garbage_hash_are_rejected() {
        assert_eq!(verify_password(None, b"anything"), Verdict::Rejected);
        assert_eq!(
            verify_password(Some("not a phc"), b"anything"),
            Verdict::Rejected
        );
    }

    #[test]
    fn dovecot_argon2_hashes_verify() {
        // `doveadm pw -s ARGON2ID|ARGON2I -p 'dovecot secret'` (Dovecot 2.3.19, libsodium).
        for phc in [
            "$argon2id$v=19$m=65536,t=3,p=1$yGJLnXGCzr82xREyeXyQBg$eigLtF86yU0Qw1dNpTZY2P71I35eJq6jJDnaLtoGgAI",
            "$argon2i$v=19$m=32768,t=4,p=1$s2tPAUJVrgChIFtaol2gDA$qU/AZaJ3Ral2HCEQXOdzK/bQWVNKUe4WZnD+SNdJkK4",
        ] {
            assert!(validate_phc(phc).is_ok());
            assert_eq!(verify_password(Some(phc), b"dovecot secret"), Verdict::Accepted);
            assert_eq!(verify_password(Some(phc), b"dovecot secreT"), Verdict::Rejected);
        }
        assert!(validate_phc(NO_PASSWORD_HASH).is_err());
        assert_eq!(
            verify_password(Some(NO_PASSWORD_HASH), b"!"),
            Verdict::Rejected
        );
    }

    #[test]
    fn salts_differ() {
        let a = hash_password(b"pw").expect("hash");
        let b = hash_password(b"pw").expect("hash");
        assert_ne!(a, b);
        assert!(validate_phc(&a).is_ok());
        assert!(validate_phc("$md5$nope").is_err());
        assert!(matches!(hash_password(b""), Err(AuthError::EmptyPassword)));
    }

    #[test]
    fn rehash_is_needed_only_when_parameters_change() {
        let defaults = Argon2Params::default();
        let phc = hash_password(b"pw").expect("hash");
        assert!(!needs_rehash(&phc, defaults));
        let cheaper = Argon2Params {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        assert!(needs_rehash(&phc, cheaper));
        let rehashed = hash_password_with(b"pw", cheaper).expect("hash");
        assert!(!needs_rehash(&rehashed, cheaper));
        assert_eq!(verify_password(Some(&rehashed), b"pw"), Verdict::Accepted);
        assert!(hash_password_with(
            b"pw",
            Argon2Params {
                memory_kib: 1,
                iterations: 0,
                parallelism: 0
            }
        )
        .is_err());
    }

    /// The argon2 crate's bounds: memory at least 8 KiB per lane, at least one iteration,
    /// 1 to 2^24 - 1 lanes.
    #[test]
    fn argon2_costs_are_checked_without_hashing() {
        let costs = |memory_kib, iterations, parallelism| Argon2Params {
            memory_kib,
            iterations,
            parallelism,
        };
        assert!(Argon2Params::default().check().is_ok());
        assert!(costs(8, 1, 1).check().is_ok());
        assert!(costs(16, 1, 2).check().is_ok());
        for bad in [
            costs(7, 1, 1),
            costs(8, 0, 1),
            costs(8, 1, 0),
            costs(15, 1, 2),
            costs(u32::MAX, 1, 1 << 24),
            costs(u32::MAX, 1, u32::MAX),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_secrets_verify() {
        let s = derive_secrets(b"pencil", true).expect("derive");
        assert_eq!(
            verify_password(Some(&s.password_hash), b"pencil"),
            Verdict::Accepted
        );
        assert!(scram::Record::parse(&s.scram_sha256).is_some());
        assert_eq!(s.legacy_secret.as_deref(), Some("pencil"));
        assert!(!format!("{s:?}").contains("pencil"));
        assert_eq!(
            derive_secrets(b"x", false).expect("derive").legacy_secret,
            None
        );
        assert!(matches!(
            derive_secrets(b"\xff", true),
            Err(AuthError::LegacyNotUtf8)
        ));
    }

    #[test]
    fn utf8_passwords_are_saslprepped() {
        // RFC 4013: NFKC, so a decomposed "é" matches a composed one; U+00A0 maps to space.
        let phc = hash_password("caf\u{e9} x".as_bytes()).expect("hash");
        assert_eq!(
            verify_password(Some(&phc), "cafe\u{301} x".as_bytes()),
            Verdict::Accepted
        );
        assert_eq!(
            verify_password(Some(&phc), "caf\u{e9}\u{a0}x".as_bytes()),
            Verdict::Accepted
        );
        assert_eq!(saslprep("User\u{2168}").as_deref(), Some("UserIX"));
        assert_eq!(saslprep("a\u{7}b"), None);
    }

    #[test]
    fn spaces_and_eight_bit_bytes_are_part_of_the_password() {
        let pw = b"pass word \xe9\xff";
        let phc = hash_password(pw).expect("hash");
        assert_eq!(verify_password(Some(&phc), pw), Verdict::Accepted);
        assert_eq!(verify_password(Some(&phc), b"pass word"), Verdict::Rejected);
    }
}
