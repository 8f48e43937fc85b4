//! APOP (RFC 1939 section 7) and CRAM-MD5 (RFC 2195): digests over a challenge keyed with a
//! password-equivalent secret. Accounts opt in (`popadm user add --legacy-auth`), because the
//! server must keep that secret in a usable form.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

use crate::Verdict;

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret used when an account has none, so a refusal costs what a check costs.
const NO_SECRET: &str = "\u{0}no legacy secret\u{0}";

/// APOP: `digest` must be the lower-case hex MD5 of `timestamp` followed by the secret.
pub fn verify_apop(timestamp: &str, secret: Option<&str>, digest: &str) -> Verdict {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret.unwrap_or(NO_SECRET).as_bytes());
    let expected = hex(&md5.finalize());
    // RFC 1939 section 7 asks for lower-case hex; accept upper case from sloppy clients.
    let given = digest.to_ascii_lowercase();
    if constant_time_eq(expected.as_bytes(), given.as_bytes()) && secret.is_some() {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    }
}

/// CRAM-MD5: `hexdigest` must be the lower-case hex HMAC-MD5 of `challenge` keyed with the
/// secret.
pub fn verify_cram_md5(challenge: &str, secret: Option<&str>, hexdigest: &str) -> Verdict {
    let key = secret.unwrap_or(NO_SECRET);
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(key.as_bytes()) else {
        return Verdict::Rejected;
    };
    mac.update(challenge.as_bytes());
    let expected = hex(&mac.finalize().into_bytes());
    let given = hexdigest.to_ascii_lowercase();
    if constant_time_eq(expected.as_bytes(), given.as_bytes()) && secret.is_some() {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1939_apop_example() {
        // RFC 1939 section 7, the APOP example.
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        let digest = "c4c9334bac560ecc979e58001b3e22fb";
        assert_eq!(verify_apop(ts, Some("tanstaaf"), digest), Verdict::Accepted);
        assert_eq!(
            verify_apop(ts, Some("tanstaaf"), &digest.to_uppercase()),
            Verdict::Accepted
        );
        assert_eq!(verify_apop(ts, Some("tanstaag"), digest), Verdict::Rejected);
        assert_eq!(verify_apop(ts, None, digest), Verdict::Rejected);
        assert_eq!(
            verify_apop("<other@x>", Some("tanstaaf"), digest),
            Verdict::Rejected
        );
    }

    #[test]
    fn rfc2195_cram_md5_example() {
        // RFC 2195 section 2.
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        let digest = "b913a602c7eda7a495b4e6e7334d3890";
        assert_eq!(
            verify_cram_md5(challenge, Some("tanstaaftanstaaf"), digest),
            Verdict::Accepted
        );
        assert_eq!(
            verify_cram_md5(challenge, Some("tanstaaf"), digest),
            Verdict::Rejected
        );
        assert_eq!(verify_cram_md5(challenge, None, digest), Verdict::Rejected);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
