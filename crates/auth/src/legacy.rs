//! APOP (RFC 1939 section 7) and CRAM-MD5 (RFC 2195): digests over a challenge keyed with a
//! password-equivalent secret. Accounts opt in (`popadm user add --legacy-auth`), because the
//! server must keep that secret in a usable form.
//!
//! CRAM-MD5 can also be verified from the HMAC-MD5 *states* alone: the MD5 chaining values
//! after compressing the one block `key XOR opad` and the one block `key XOR ipad` (RFC 2104
//! section 2). That is what Dovecot's `{CRAM-MD5}` password scheme stores (64 hex digits: the
//! outer state, then the inner one, each as four little-endian 32-bit words; Dovecot's
//! `hmac_md5_get_cram_context`), so a Dovecot password file imports as it is. The states are
//! not the password, but they are as good as the password for CRAM-MD5 itself, and they are
//! an unsalted fast hash of it: they are stored apart from the argon2id hash and serve only
//! CRAM-MD5.

use md5::block_api::compress;
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

/// MD5's initial chaining value (RFC 1321 section 3.3).
const MD5_IV: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
/// MD5's block size, which is also HMAC-MD5's key block size.
const BLOCK: usize = 64;

/// The precomputed HMAC-MD5 states of a CRAM-MD5 key (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CramMd5States {
    outer: [u32; 4],
    inner: [u32; 4],
}

impl std::fmt::Debug for CramMd5States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CramMd5States(<redacted>)")
    }
}

impl CramMd5States {
    /// The states for `key` (RFC 2104: a key longer than a block is replaced by its MD5).
    pub fn derive(key: &[u8]) -> CramMd5States {
        let mut block_key = [0u8; BLOCK];
        if key.len() > BLOCK {
            block_key[..16].copy_from_slice(&Md5::digest(key));
        } else {
            block_key[..key.len()].copy_from_slice(key);
        }
        let state_after = |pad: u8| {
            let block: [u8; BLOCK] = std::array::from_fn(|i| block_key[i] ^ pad);
            let mut state = MD5_IV;
            compress(&mut state, &[block]);
            state
        };
        CramMd5States {
            outer: state_after(0x5c),
            inner: state_after(0x36),
        }
    }

    /// Parses Dovecot's encoding: 64 hex digits (either case), outer state first.
    pub fn from_hex(s: &str) -> Option<CramMd5States> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut words = [0u32; 8];
        for (word, chunk) in words.iter_mut().zip(s.as_bytes().chunks_exact(8)) {
            let mut bytes = [0u8; 4];
            for (b, pair) in bytes.iter_mut().zip(chunk.chunks_exact(2)) {
                let digit = |c: u8| char::from(c).to_digit(16);
                *b = u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).ok()?;
            }
            *word = u32::from_le_bytes(bytes);
        }
        let [o0, o1, o2, o3, i0, i1, i2, i3] = words;
        Some(CramMd5States {
            outer: [o0, o1, o2, o3],
            inner: [i0, i1, i2, i3],
        })
    }

    /// Dovecot's encoding: 64 lower-case hex digits, outer state first.
    pub fn to_hex(&self) -> String {
        let bytes: Vec<u8> = self
            .outer
            .iter()
            .chain(&self.inner)
            .flat_map(|w| w.to_le_bytes())
            .collect();
        hex(&bytes)
    }

    /// HMAC-MD5 of `message` under the key these states were derived from.
    pub fn hmac(&self, message: &[u8]) -> [u8; 16] {
        let inner = md5_continued(self.inner, message);
        md5_continued(self.outer, &inner)
    }
}

/// MD5 of (one block already compressed into `state`) followed by `data`: the remaining
/// blocks, then MD5's padding with the total length in bits (RFC 1321 sections 3.1, 3.2).
fn md5_continued(mut state: [u32; 4], data: &[u8]) -> [u8; 16] {
    let mut blocks = data.chunks_exact(BLOCK);
    for block in blocks.by_ref() {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(block);
        compress(&mut state, &[b]);
    }
    let rest = blocks.remainder();
    let bits = ((BLOCK + data.len()) as u64).wrapping_mul(8);
    let mut tail = [0u8; 2 * BLOCK];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let tail_len = if rest.len() < BLOCK - 8 {
        BLOCK
    } else {
        2 * BLOCK
    };
    tail[tail_len - 8..tail_len].copy_from_slice(&bits.to_le_bytes());
    for block in tail[..tail_len].chunks_exact(BLOCK) {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(block);
        compress(&mut state, &[b]);
    }
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// The key material an account offers CRAM-MD5: its plain legacy secret, or the HMAC-MD5
/// states imported from Dovecot.
#[derive(Debug, Clone, Copy)]
pub enum CramKey<'a> {
    Secret(&'a str),
    States(&'a str),
}

/// CRAM-MD5: `hexdigest` must be the lower-case hex HMAC-MD5 of `challenge` keyed with the
/// account's secret (or computed from its stored states). `None`, or states that do not
/// parse, cost the same work and are refused.
pub fn verify_cram_md5(challenge: &str, key: Option<CramKey<'_>>, hexdigest: &str) -> Verdict {
    let states = match key {
        Some(CramKey::Secret(s)) => Some(CramMd5States::derive(s.as_bytes())),
        Some(CramKey::States(hex)) => CramMd5States::from_hex(hex),
        None => None,
    };
    let usable = states.is_some();
    let states = states.unwrap_or_else(|| CramMd5States::derive(NO_SECRET.as_bytes()));
    let expected = hex(&states.hmac(challenge.as_bytes()));
    let given = hexdigest.to_ascii_lowercase();
    if constant_time_eq(expected.as_bytes(), given.as_bytes()) && usable {
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

    /// RFC 2195 section 2: the challenge, the shared secret and the digest of the example.
    const RFC2195_CHALLENGE: &str = "<1896.697170952@postoffice.reston.mci.net>";
    const RFC2195_SECRET: &str = "tanstaaftanstaaf";
    const RFC2195_DIGEST: &str = "b913a602c7eda7a495b4e6e7334d3890";

    #[test]
    fn rfc2195_cram_md5_example() {
        let (c, d) = (RFC2195_CHALLENGE, RFC2195_DIGEST);
        let secret = |s| Some(CramKey::Secret(s));
        assert_eq!(
            verify_cram_md5(c, secret(RFC2195_SECRET), d),
            Verdict::Accepted
        );
        assert_eq!(
            verify_cram_md5(c, secret(RFC2195_SECRET), &d.to_uppercase()),
            Verdict::Accepted
        );
        assert_eq!(verify_cram_md5(c, secret("tanstaaf"), d), Verdict::Rejected);
        assert_eq!(verify_cram_md5(c, None, d), Verdict::Rejected);
    }

    #[test]
    fn rfc2195_example_from_precomputed_states() {
        // The states of the RFC 2195 secret, as `doveadm pw -s CRAM-MD5 -p tanstaaftanstaaf`
        // (Dovecot 2.3.19) prints them.
        let dovecot = "d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b";
        let states = CramMd5States::derive(RFC2195_SECRET.as_bytes());
        assert_eq!(states.to_hex(), dovecot);
        assert_eq!(CramMd5States::from_hex(dovecot), Some(states));
        assert_eq!(
            CramMd5States::from_hex(&dovecot.to_uppercase()),
            Some(states)
        );
        let key = Some(CramKey::States(dovecot));
        assert_eq!(
            verify_cram_md5(RFC2195_CHALLENGE, key, RFC2195_DIGEST),
            Verdict::Accepted
        );
        assert_eq!(
            verify_cram_md5("<1897.697170952@x>", key, RFC2195_DIGEST),
            Verdict::Rejected
        );
        assert!(!format!("{states:?}").contains("d06d"));
    }

    #[test]
    fn dovecot_vectors_and_long_keys() {
        // `doveadm pw -s CRAM-MD5 -p ...` (Dovecot 2.3.19): a short key, and a key longer
        // than a block, which HMAC replaces by its MD5 (RFC 2104 section 2).
        let long = "a longer password than sixty-four bytes, so it is hashed first by HMAC!!";
        assert!(long.len() > BLOCK);
        for (key, dovecot) in [
            (
                "secret",
                "cd3ba7deaad6e5ca23448ba42e379747a9e0f7f1fbc00c8a81bbaac395731b56",
            ),
            (
                long,
                "8de55c5fe054dfadb3a357a0ae06e070ddc74e1123f56ea7878d821c737f4b88",
            ),
        ] {
            let states = CramMd5States::derive(key.as_bytes());
            assert_eq!(states.to_hex(), dovecot);
            // Messages of every length around the padding boundaries (55, 56, 64 octets).
            for len in [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 300] {
                let msg: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
                assert_eq!(
                    states.hmac(&msg),
                    hmac_finish(key.as_bytes(), &msg),
                    "{len}"
                );
            }
        }
    }

    #[test]
    fn malformed_states_are_refused_like_a_wrong_digest() {
        let good = CramMd5States::derive(b"x").to_hex();
        for bad in [
            &good[..62],
            &format!("{good}00"),
            &format!("+{}", &good[1..]),
            &format!("g{}", &good[1..]),
            "é123456789012345678901234567890123456789012345678901234567890123",
        ] {
            assert_eq!(CramMd5States::from_hex(bad), None, "{bad}");
            assert_eq!(
                verify_cram_md5("<c>", Some(CramKey::States(bad)), "00"),
                Verdict::Rejected
            );
        }
    }

    /// HMAC-MD5 straight from RFC 2104 section 2 with the `md5` crate's streaming API, to check
    /// the states against.
    fn hmac_finish(key: &[u8], msg: &[u8]) -> [u8; 16] {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            k[..16].copy_from_slice(&Md5::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner = Md5::new();
        inner.update(k.map(|b| b ^ 0x36));
        inner.update(msg);
        let mut outer = Md5::new();
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
