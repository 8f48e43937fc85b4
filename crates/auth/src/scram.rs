//! SCRAM-SHA-256 (RFC 5802, RFC 7677) from stored salted keys: the server keeps
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5803), never the password.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

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

/// What the server needs of the client-first message before it fetches the record: the
/// user name, `=2C` and `=3D` decoded (RFC 5802 section 5.1). The message itself is stepped
/// through rsasl afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    pub user: String,
}

fn attr(part: &str, name: char) -> Option<&str> {
    part.strip_prefix(name)?.strip_prefix('=')
}

/// Longest user name taken (as PLAIN's fields, RFC 4616 section 2).
const MAX_NAME: usize = 255;

/// Reads the client-first message just far enough for the name, bounded. `binding` is the
/// connection's channel-binding type for SCRAM-SHA-256-PLUS, whose client must bind to it
/// (`p=<type>`; RFC 5802 section 6); `None` for SCRAM-SHA-256, whose client must not.
pub fn parse_client_first(data: &[u8], binding: Option<&str>) -> Result<ClientFirst, SaslError> {
    let s = std::str::from_utf8(data).map_err(|_| SaslError::Malformed)?;
    // gs2-header: cbind-flag "," [authzid] ","
    let mut parts = s.splitn(3, ',');
    let flag = parts.next().ok_or(SaslError::Malformed)?;
    let authzid = parts.next().ok_or(SaslError::Malformed)?;
    let bare = parts.next().ok_or(SaslError::Malformed)?;
    match (flag, binding) {
        ("n" | "y", None) => {}
        (f, Some(cb)) if f.strip_prefix("p=") == Some(cb) => {}
        // A binding of another type, binding without -PLUS, or -PLUS without binding.
        (f, _) if f.starts_with("p=") || binding.is_some() => return Err(SaslError::Unsupported),
        _ => return Err(SaslError::Malformed),
    }
    if !authzid.is_empty() {
        // A different authorisation identity is refused unless it names the user itself;
        // compared below after decoding.
        attr(authzid, 'a').ok_or(SaslError::Malformed)?;
    }
    let mut fields = bare.split(',');
    let user = fields
        .next()
        .and_then(|p| attr(p, 'n'))
        .filter(|u| u.len() <= MAX_NAME)
        .ok_or(SaslError::Malformed)?;
    fields
        .next()
        .and_then(|p| attr(p, 'r'))
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
    Ok(ClientFirst { user })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::constant_time_eq;
    use zeroize::Zeroizing;

    /// RFC 7677 section 3: user "user", password "pencil". The exchange itself runs in rsasl
    /// (see `sasl`'s tests); what must hold here is that the stored record is the one the
    /// RFC's proof and server signature were computed with.
    #[test]
    fn rfc7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let record = Record::derive(b"pencil", &salt, 4096);
        assert_eq!(Record::parse(&record.encode()), Some(record.clone()));
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", None).expect("first");
        assert_eq!(first.user, "user");
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = B64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("proof");
        let accepts = |record: &Record| {
            let signature = hmac(&record.stored_key, auth_message.as_bytes());
            let client_key: Zeroizing<Vec<u8>> =
                Zeroizing::new(proof.iter().zip(signature).map(|(p, s)| p ^ s).collect());
            let stored: [u8; 32] = Sha256::digest(&client_key[..]).into();
            constant_time_eq(&stored, &record.stored_key)
        };
        assert!(accepts(&record));
        let v = hmac(&record.server_key, auth_message.as_bytes());
        assert_eq!(
            format!("v={}", B64.encode(v)),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // A wrong password's record rejects the same proof.
        let other = Record::derive(b"pencil2", &salt, 4096);
        assert!(!accepts(&other));
    }

    #[test]
    fn client_first_edge_cases() {
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=u,r=abc", None),
            Err(SaslError::Unsupported)
        );
        assert_eq!(
            parse_client_first(b"n,a=other,n=u,r=abc", None),
            Err(SaslError::AuthzidMismatch)
        );
        assert!(parse_client_first(b"n,a=u,n=u,r=abc", None).is_ok());
        assert_eq!(
            parse_client_first(b"n,,n=a=2Cb=3Dc,r=x", None).map(|f| f.user),
            Ok("a,b=c".to_string())
        );
        assert_eq!(
            parse_client_first(b"n,,n=a=zz,r=x", None),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            parse_client_first(b"garbage", None),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            parse_client_first(b"n,,n=u,r=", None),
            Err(SaslError::Malformed)
        );
        let long = format!("n,,n={},r=x", "u".repeat(MAX_NAME + 1));
        assert_eq!(
            parse_client_first(long.as_bytes(), None),
            Err(SaslError::Malformed)
        );
    }

    /// RFC 5802 section 6: -PLUS binds to the connection's type, and only -PLUS binds.
    #[test]
    fn rfc5802_s6_plus_needs_the_connections_binding_type() {
        let exporter = Some("tls-exporter");
        assert!(parse_client_first(b"p=tls-exporter,,n=u,r=abc", exporter).is_ok());
        for refused in [
            &b"n,,n=u,r=abc"[..],
            b"y,,n=u,r=abc",
            b"p=tls-unique,,n=u,r=abc",
            b"p=tls-server-end-point,,n=u,r=abc",
        ] {
            assert_eq!(
                parse_client_first(refused, exporter),
                Err(SaslError::Unsupported),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }
}
