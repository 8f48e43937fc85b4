//! An identity provider for tests (feature `test-issuer`): a discovery document, a JWKS and
//! an RFC 7662 introspection endpoint served over HTTPS on 127.0.0.1 by a thread, with a CA
//! and a server certificate made at start (rcgen), and signing keys made at start too: RSA
//! by the `openssl` program (neither ring nor rcgen on ring generates RSA keys), ECDSA P-256
//! and Ed25519 by ring. Tokens are signed here, good ones and bad ones alike.
//!
//! Its paths are Keycloak's (`/realms/test/...`). Test code only: it panics on setup errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
// Re-exported for tests that build claims without a serde_json dependency of their own.
pub use serde_json::{json, Value};

use crate::Settings;

/// The audience the issuer's good tokens carry.
pub const AUDIENCE: &str = "pop3";
/// The introspection client's id and secret.
pub const CLIENT_ID: &str = "pop3d";
pub const CLIENT_SECRET: &str = "introspection secret";

/// A signing key whose public half the JWKS may publish.
pub struct SigningKey {
    pub kid: String,
    pub alg: &'static str,
    pair: Pair,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl SigningKey {
    /// A 2048-bit RSA key (made by `openssl genpkey`), signing RS256.
    pub fn rsa(kid: &str) -> SigningKey {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .args(["-outform", "DER"])
            .output()
            .expect("running openssl genpkey (package openssl)");
        assert!(out.status.success(), "openssl genpkey failed");
        // OpenSSL 3 writes DER keys as PKCS#1 RSAPrivateKey.
        let pair = RsaKeyPair::from_der(&out.stdout).expect("RSA private key");
        SigningKey {
            kid: kid.into(),
            alg: "RS256",
            pair: Pair::Rsa(pair),
        }
    }

    /// A P-256 key, signing ES256.
    pub fn ec(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("pair");
        SigningKey {
            kid: kid.into(),
            alg: "ES256",
            pair: Pair::Ec(pair),
        }
    }

    /// An Ed25519 key, signing EdDSA.
    pub fn ed25519(kid: &str) -> SigningKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate");
        SigningKey {
            kid: kid.into(),
            alg: "EdDSA",
            pair: Pair::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair")),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match &self.pair {
            Pair::Rsa(p) => {
                let c: ring::rsa::PublicKeyComponents<Vec<u8>> = p.public().into();
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": self.alg,
                       "n": b64(&c.n), "e": b64(&c.e)})
            }
            Pair::Ec(p) => {
                let point = p.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "use": "sig", "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Pair::Ed(p) => json!({"kty": "OKP", "kid": self.kid, "use": "sig",
                                  "crv": "Ed25519", "x": b64(p.public_key().as_ref())}),
        }
    }

    /// The RSA public key as PKCS#1 DER and as a SubjectPublicKeyInfo PEM (what an attacker
    /// would use as an HMAC secret).
    pub fn rsa_public_forms(&self) -> Vec<Vec<u8>> {
        let Pair::Rsa(p) = &self.pair else {
            return Vec::new();
        };
        let pkcs1 = p.public().as_ref().to_vec();
        // SubjectPublicKeyInfo { rsaEncryption, NULL } wrapping the PKCS#1 key.
        let mut bitstring = vec![0u8];
        bitstring.extend_from_slice(&pkcs1);
        let alg_id = der(
            0x30,
            &[
                &[
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
                ][..],
                &[0x05, 0x00],
            ]
            .concat(),
        );
        let spki = der(0x30, &[alg_id, der(0x03, &bitstring)].concat());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        vec![pkcs1, pem.into_bytes()]
    }

    /// Signs `header.claims` with this key (the header's `alg` is what it says, not checked).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(p) => {
                let padding: &dyn sig::RsaEncoding = match header["alg"].as_str() {
                    Some("PS256") => &sig::RSA_PSS_SHA256,
                    Some("RS384") => &sig::RSA_PKCS1_SHA384,
                    Some("RS512") => &sig::RSA_PKCS1_SHA512,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; p.public().modulus_len()];
                p.sign(padding, &rng, input.as_bytes(), &mut out)
                    .expect("RSA sign");
                out
            }
            Pair::Ec(p) => p
                .sign(&rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            Pair::Ed(p) => p.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An HS256 token with `secret` as the HMAC key.
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({"alg": "none", "typ": "JWT"}), claims)
    )
}

/// JSON as a [`Value`] (`Null` when it is not JSON), for tests without serde_json.
pub fn parse_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

struct State {
    keys: Vec<Arc<SigningKey>>,
    current: usize,
    jwks_override: Option<String>,
    cache_control: String,
    introspection: HashMap<String, Value>,
    requests: HashMap<String, u32>,
}

/// The running issuer; stops when dropped (or by [`TestIssuer::stop`]).
pub struct TestIssuer {
    issuer: String,
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const REALM: &str = "/realms/test";
pub const JWKS_PATH: &str = "/realms/test/protocol/openid-connect/certs";
pub const INTROSPECT_PATH: &str = "/realms/test/protocol/openid-connect/token/introspect";
pub const DISCOVERY_PATH: &str = "/realms/test/.well-known/openid-configuration";

impl TestIssuer {
    /// Starts an issuer publishing one RSA key (`rsa-1`) and signing with it.
    pub fn start() -> TestIssuer {
        TestIssuer::start_with(SigningKey::rsa("rsa-1"))
    }

    /// Starts an issuer publishing `key` and signing with it.
    pub fn start_with(key: SigningKey) -> TestIssuer {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test issuer CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let ca = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("server key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params")
            .signed_by(&leaf_key, &ca)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server TLS config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let issuer = format!("https://{addr}{REALM}");
        let state = Arc::new(Mutex::new(State {
            keys: vec![Arc::new(key)],
            current: 0,
            jwks_override: None,
            cache_control: "max-age=300".into(),
            introspection: HashMap::new(),
            requests: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, issuer) = (state.clone(), stop.clone(), issuer.clone());
            let tls = Arc::new(tls);
            std::thread::spawn(move || serve(listener, tls, state, stop, issuer))
        };
        TestIssuer {
            issuer,
            addr,
            ca_pem: ca_cert.pem(),
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks_url(&self) -> String {
        format!("https://{}{JWKS_PATH}", self.addr)
    }

    pub fn introspection_url(&self) -> String {
        format!("https://{}{INTROSPECT_PATH}", self.addr)
    }

    /// The test CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/issuer-ca.pem`.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("issuer-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("writing the CA file");
        path
    }

    /// Writes the introspection client secret to `dir/client-secret`.
    pub fn write_client_secret(&self, dir: &Path) -> PathBuf {
        let path = dir.join("client-secret");
        std::fs::write(&path, format!("{CLIENT_SECRET}\n")).expect("writing the secret");
        path
    }

    /// Settings for this issuer with the audience [`AUDIENCE`], trusting `ca_file`.
    pub fn settings(&self, ca_file: &Path) -> Settings {
        Settings {
            issuer: Some(self.issuer.clone()),
            audience: vec![AUDIENCE.into()],
            ca_file: Some(ca_file.to_owned()),
            ..Settings::default()
        }
    }

    /// Good claims for `email`: this issuer, [`AUDIENCE`], valid from a minute ago for five.
    pub fn claims(&self, email: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": format!("sub-{email}"),
            "email": email, "preferred_username": email.split('@').next().unwrap_or(email),
            "iat": now - 60, "nbf": now - 60, "exp": now + 300,
        })
    }

    /// `claims` signed by the current key with its algorithm and kid.
    pub fn token(&self, claims: &Value) -> String {
        let key = self.current();
        key.sign(
            &json!({"alg": key.alg, "kid": key.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// The key tokens are signed with.
    pub fn current(&self) -> Arc<SigningKey> {
        let s = self.state.lock().unwrap();
        s.keys[s.current].clone()
    }

    /// Publishes `key` besides the others and signs with it from now on.
    pub fn rotate_to(&self, key: SigningKey) {
        let mut s = self.state.lock().unwrap();
        s.keys.push(Arc::new(key));
        s.current = s.keys.len() - 1;
    }

    /// Serves `body` as the JWKS instead of the keys (`None`: the keys again).
    pub fn set_jwks(&self, body: Option<String>) {
        self.state.lock().unwrap().jwks_override = body;
    }

    /// The JWKS response's Cache-Control.
    pub fn set_cache_control(&self, value: &str) {
        self.state.lock().unwrap().cache_control = value.into();
    }

    /// What the introspection endpoint answers for `token` (otherwise `{"active":false}`).
    pub fn set_introspection(&self, token: &str, answer: Value) {
        self.state
            .lock()
            .unwrap()
            .introspection
            .insert(token.into(), answer);
    }

    /// How many requests `path` had.
    pub fn requests(&self, path: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Stops serving: connections are refused from now on.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    issuer: String,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = handle(stream, &tls, &state, &issuer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn handle(
    stream: TcpStream,
    tls: &Arc<rustls::ServerConfig>,
    state: &Mutex<State>,
    issuer: &str,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(tls.clone()).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (status, extra, answer) = route(&method, &path, &headers, &body, state, issuer);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n",
        answer.len()
    );
    tls.write_all(response.as_bytes())?;
    tls.write_all(answer.as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

fn route(
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
    state: &Mutex<State>,
    issuer: &str,
) -> (&'static str, String, String) {
    let mut s = state.lock().unwrap();
    *s.requests.entry(path.to_owned()).or_default() += 1;
    let base = issuer.trim_end_matches(REALM);
    match (method, path) {
        ("GET", DISCOVERY_PATH) => {
            let doc = json!({
                "issuer": issuer,
                "jwks_uri": format!("{base}{JWKS_PATH}"),
                "introspection_endpoint": format!("{base}{INTROSPECT_PATH}"),
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            });
            ("200 OK", String::new(), doc.to_string())
        }
        ("GET", JWKS_PATH) => {
            let body = s.jwks_override.clone().unwrap_or_else(|| {
                let keys: Vec<Value> = s.keys.iter().map(|k| k.jwk()).collect();
                json!({ "keys": keys }).to_string()
            });
            let extra = format!("Cache-Control: {}\r\n", s.cache_control);
            ("200 OK", extra, body)
        }
        ("POST", INTROSPECT_PATH) => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{CLIENT_ID}:{}", CLIENT_SECRET.replace(' ', "+")))
            );
            if headers.get("authorization") != Some(&expected) {
                return ("401 Unauthorized", String::new(), "{}".into());
            }
            let form = String::from_utf8_lossy(body);
            let token = form
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(form_decode)
                .unwrap_or_default();
            let answer = s
                .introspection
                .get(&token)
                .cloned()
                .unwrap_or_else(|| json!({"active": false}));
            ("200 OK", String::new(), answer.to_string())
        }
        _ => ("404 Not Found", String::new(), "{}".into()),
    }
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
