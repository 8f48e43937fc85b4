//! SCRAM-SHA-256 (RFC 5802, RFC 7677) from stored salted keys: the server keeps
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5803), never the password.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::legacy::constant_time_eq;
use crate::SaslError;

/// PBKDF2 iterations for new records unless configured otherwise: the stored keys sit beside
/// argon2id hashes, so they should not be the cheaper target (the client pays the count once
/// per login; the server never does).
pub const DEFAULT_ITERATIONS: u32 = 100_000;

/// The least count accepted for new records (RFC 7677 section 4: at least 4096).
pub const MIN_ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; the error case cannot happen.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The stored form of one password.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl Record {
    /// Derives the record for a (prepared) password and salt.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Record {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Record {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// `SCRAM-SHA-256$i:salt$StoredKey:ServerKey` (RFC 5803 section 3).
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    pub fn parse(s: &str) -> Option<Record> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Record {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Record(<redacted>)")
    }
}

/// The client-first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    pub gs2_header: String,
    pub bare: String,
    /// The user name, `=2C` and `=3D` decoded (RFC 5802 section 5.1).
    pub user: String,
    pub nonce: String,
}

fn attr(part: &str, name: char) -> Option<&str> {
    part.strip_prefix(name)?.strip_prefix('=')
}

/// The value of the next attribute of `fields`, which must be `name` (RFC 5802 fixes their
/// order).
fn next_attr<'a>(
    fields: &mut impl Iterator<Item = &'a str>,
    name: char,
) -> Result<&'a str, SaslError> {
    fields
        .next()
        .and_then(|p| attr(p, name))
        .ok_or(SaslError::Malformed)
}

pub fn parse_client_first(data: &[u8]) -> Result<ClientFirst, SaslError> {
    let s = std::str::from_utf8(data).map_err(|_| SaslError::Malformed)?;
    // gs2-header: cbind-flag "," [authzid] ","
    let mut parts = s.splitn(3, ',');
    let flag = parts.next().ok_or(SaslError::Malformed)?;
    let authzid = parts.next().ok_or(SaslError::Malformed)?;
    let bare = parts.next().ok_or(SaslError::Malformed)?;
    match flag {
        "n" | "y" => {}
        // Channel binding is not offered (no SCRAM-SHA-256-PLUS).
        f if f.starts_with("p=") => return Err(SaslError::Unsupported),
        _ => return Err(SaslError::Malformed),
    }
    if !authzid.is_empty() {
        // A different authorisation identity is refused unless it names the user itself;
        // the caller compares after decoding.
        attr(authzid, 'a').ok_or(SaslError::Malformed)?;
    }
    let mut fields = bare.split(',');
    let user = next_attr(&mut fields, 'n')?;
    let nonce = Some(next_attr(&mut fields, 'r')?)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or(SaslError::Malformed)?;
    let user = decode_name(user).ok_or(SaslError::Malformed)?;
    // RFC 5802 section 7: a saslname has no NUL; CR and LF are refused too, before the name
    // is used for anything (as for PLAIN and LOGIN).
    if user.contains(['\0', '\r', '\n']) {
        return Err(SaslError::ControlInField);
    }
    if !authzid.is_empty() {
        let az = decode_name(attr(authzid, 'a').unwrap_or_default()).ok_or(SaslError::Malformed)?;
        if az != user {
            return Err(SaslError::AuthzidMismatch);
        }
    }
    Ok(ClientFirst {
        gs2_header: format!("{flag},{authzid},"),
        bare: bare.to_string(),
        user,
        nonce: nonce.to_string(),
    })
}

fn decode_name(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

/// `r=<client+server nonce>,s=<salt>,i=<iterations>`.
pub fn server_first(nonce: &str, record: &Record) -> String {
    format!(
        "r={nonce},s={},i={}",
        B64.encode(&record.salt),
        record.iterations
    )
}

/// Checks the client-final message; returns the server-final message (`v=...`) on success.
pub fn verify_client_final(
    data: &[u8],
    first: &ClientFirst,
    server_first: &str,
    nonce: &str,
    record: &Record,
) -> Result<String, SaslError> {
    let s = std::str::from_utf8(data).map_err(|_| SaslError::Malformed)?;
    let (without_proof, proof) = s.rsplit_once(",p=").ok_or(SaslError::Malformed)?;
    let mut fields = without_proof.split(',');
    let cbind = next_attr(&mut fields, 'c')?;
    let r = next_attr(&mut fields, 'r')?;
    if B64.decode(cbind).ok().as_deref() != Some(first.gs2_header.as_bytes()) || r != nonce {
        return Err(SaslError::Malformed);
    }
    // The proof and the client key are password equivalents: overwritten once used.
    let proof: Zeroizing<Vec<u8>> = Zeroizing::new(B64.decode(proof).unwrap_or_default());
    if proof.len() != 32 {
        return Err(SaslError::Malformed);
    }
    let auth_message = format!("{},{},{}", first.bare, server_first, without_proof);
    let client_signature = hmac(&record.stored_key, auth_message.as_bytes());
    let mut client_key = Zeroizing::new([0u8; 32]);
    for i in 0..32 {
        client_key[i] = proof[i] ^ client_signature[i];
    }
    let computed: [u8; 32] = Sha256::digest(&client_key[..]).into();
    if !constant_time_eq(&computed, &record.stored_key) {
        return Err(SaslError::BadCredentials);
    }
    let server_signature = hmac(&record.server_key, auth_message.as_bytes());
    Ok(format!("v={}", B64.encode(server_signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_example() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let record = Record::derive(b"pencil", &salt, 4096);
        assert_eq!(Record::parse(&record.encode()), Some(record.clone()));
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").expect("first");
        assert_eq!(first.user, "user");
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sf = server_first(nonce, &record);
        assert_eq!(sf, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let v = verify_client_final(client_final.as_bytes(), &first, &sf, nonce, &record)
            .expect("proof accepted");
        assert_eq!(v, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        // A wrong password's record rejects the same proof.
        let other = Record::derive(b"pencil2", &salt, 4096);
        assert_eq!(
            verify_client_final(client_final.as_bytes(), &first, &sf, nonce, &other),
            Err(SaslError::BadCredentials)
        );
    }

    #[test]
    fn client_first_edge_cases() {
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=u,r=abc"),
            Err(SaslError::Unsupported)
        );
        assert_eq!(
            parse_client_first(b"n,a=other,n=u,r=abc"),
            Err(SaslError::AuthzidMismatch)
        );
        assert!(parse_client_first(b"n,a=u,n=u,r=abc").is_ok());
        assert_eq!(
            parse_client_first(b"n,,n=a=2Cb=3Dc,r=x").map(|f| f.user),
            Ok("a,b=c".to_string())
        );
        assert_eq!(
            parse_client_first(b"n,,n=a=zz,r=x"),
            Err(SaslError::Malformed)
        );
        assert_eq!(parse_client_first(b"garbage"), Err(SaslError::Malformed));
        assert_eq!(parse_client_first(b"n,,n=u,r="), Err(SaslError::Malformed));
    }
}
