//! TLS for STLS (RFC 2595) and implicit-TLS listeners (RFC 8314): certificates from PEM files,
//! chosen by SNI, reloadable without dropping sessions, and a self-signed fallback for the
//! embedded defaults.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsAcceptor;
use tracing::info;

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Lowest protocol version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// Errors loading certificates or keys. They name the file, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate configured")]
    NoCertificate,
    #[error("reading certificates from {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("reading the private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key in {path} does not fit its certificate or is unsupported: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded certificate with the chain's end-entity DER kept for SNI matching.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
}

impl Loaded {
    fn matches(&self, name: &ServerName<'_>) -> bool {
        self.key
            .end_entity_cert()
            .ok()
            .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
            .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
    }
}

fn load_pair(files: &CertFiles) -> Result<Loaded, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: files.cert.clone(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let signing = any_supported_type(&key).map_err(|e| TlsError::Mismatch {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
    })
}

/// Picks the certificate whose names cover the client's SNI name; the first one otherwise
/// (and for clients that send no SNI).
#[derive(Debug)]
struct SniResolver {
    loaded: RwLock<Arc<Vec<Loaded>>>,
}

impl SniResolver {
    /// The certificate for a client that sent `sni` (or none).
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let by_name = sni
            .and_then(|n| ServerName::try_from(n).ok())
            .and_then(|name| loaded.iter().find(|l| l.matches(&name)));
        by_name.or_else(|| loaded.first()).map(|l| l.key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The server's certificates and the acceptors built on them.
pub struct Tls {
    files: Vec<CertFiles>,
    resolver: Arc<SniResolver>,
    tls12: TlsAcceptor,
    tls13: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads every certificate; the first one is the default for clients without SNI.
    ///
    /// Both acceptors share one ticketer (RFC 8446 section 4.6.1; RFC 5077 for TLS 1.2): a
    /// client resumes with a ticket, sealed under a key of this process that rotates every six
    /// hours, on any listener, at the cost of a ticket's decryption instead of a key exchange
    /// and a signature, and the server keeps nothing per client.
    pub fn load(files: Vec<CertFiles>) -> Result<Tls, TlsError> {
        let resolver = Arc::new(SniResolver {
            loaded: RwLock::new(Arc::new(load_all(&files)?)),
        });
        let ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Generate(e.to_string()))?;
        let acceptor = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .map(|b| {
                    let mut config = b
                        .with_no_client_auth()
                        .with_cert_resolver(resolver.clone() as Arc<dyn ResolvesServerCert>);
                    config.ignore_client_order = true;
                    config.ticketer = ticketer.clone();
                    TlsAcceptor::from(Arc::new(config))
                })
                .map_err(|e| TlsError::Generate(e.to_string()))
        };
        Ok(Tls {
            tls12: acceptor(&[&rustls::version::TLS13, &rustls::version::TLS12])?,
            tls13: acceptor(&[&rustls::version::TLS13])?,
            files,
            resolver,
        })
    }

    /// Reads the certificate files again; on any error the old certificates stay in use.
    /// Sessions in progress keep the certificate they were started with.
    pub fn reload(&self) -> Result<usize, TlsError> {
        let fresh = load_all(&self.files)?;
        let n = fresh.len();
        *self
            .resolver
            .loaded
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(n)
    }

    /// The channel binding of a server connection for SCRAM-SHA-256-PLUS: `tls-exporter`
    /// (RFC 9266: 32 octets exported with the label `EXPORTER-Channel-Binding` and no context)
    /// on TLS 1.3; `tls-server-end-point` (RFC 5929 section 4.1: the hash of the server's
    /// certificate) on TLS 1.2, where the exporter is unsafe without the extended master
    /// secret. The certificate is the one the resolver picks for the connection's SNI name
    /// (a reload between handshake and AUTH would make a -PLUS login fail, nothing worse).
    pub(crate) fn channel_binding(
        &self,
        conn: &rustls::ServerConnection,
    ) -> Option<auth::ChannelBinding> {
        match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => {
                let data = conn
                    .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok()?;
                Some(auth::ChannelBinding {
                    name: auth::ChannelBinding::TLS_EXPORTER,
                    data,
                })
            }
            rustls::ProtocolVersion::TLSv1_2 => {
                let key = self.resolver.pick(conn.server_name())?;
                let cert = key.end_entity_cert().ok()?;
                Some(auth::ChannelBinding {
                    name: auth::ChannelBinding::TLS_SERVER_END_POINT,
                    data: server_end_point(cert),
                })
            }
            _ => None,
        }
    }

    /// The acceptor for listeners whose minimum version is `min`.
    pub fn acceptor(&self, min: TlsVersion) -> &TlsAcceptor {
        match min {
            TlsVersion::Tls12 => &self.tls12,
            TlsVersion::Tls13 => &self.tls13,
        }
    }
}

/// RFC 5929 section 4.1: the certificate's hash with its signature's hash function, SHA-256
/// where that is MD5 or SHA-1 or there is none (Ed25519, which the RFC predates: SHA-256 is
/// what other implementations use).
fn server_end_point(cert: &[u8]) -> Vec<u8> {
    // DER of sha384/sha512WithRSAEncryption and ecdsa-with-SHA384/SHA512.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let algorithm = match signature_algorithm(cert) {
        Some(oid) if SHA384.contains(&oid) => &ring::digest::SHA384,
        Some(oid) if SHA512.contains(&oid) => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    };
    ring::digest::digest(algorithm, cert).as_ref().to_vec()
}

/// The OID of a certificate's `signatureAlgorithm` (RFC 5280 section 4.1.1.2), from its DER.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, certificate, _) = der(cert)? else {
        return None;
    };
    let (_, _tbs, rest) = der(certificate)?;
    let (0x30, algorithm, _) = der(rest)? else {
        return None;
    };
    match der(algorithm)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (octets, rest) = rest.split_at_checked(n)?;
        let len = octets
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

fn load_all(files: &[CertFiles]) -> Result<Vec<Loaded>, TlsError> {
    if files.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    files.iter().map(load_pair).collect()
}

/// The self-signed certificate of the embedded defaults: `dir/cert.pem` and `dir/key.pem`,
/// generated on first use for `hostname`, `localhost`, 127.0.0.1 and ::1, then reused.
/// Returns the files and the certificate's SHA-256 fingerprint (hex, colon-separated).
pub fn self_signed(dir: &Path, hostname: &str) -> Result<(CertFiles, String), TlsError> {
    let files = CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if !(files.cert.exists() && files.key.exists()) {
        let names = vec![
            hostname.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let generated = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let write = |path: &Path, data: &[u8], mode: u32| -> Result<(), TlsError> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let err = |source| TlsError::Write {
                path: path.to_path_buf(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(err)?;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(data).map_err(err)?;
            f.sync_all().map_err(err)?;
            std::fs::rename(&tmp, path).map_err(err)
        };
        write(
            &files.key,
            generated.signing_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write(&files.cert, generated.cert.pem().as_bytes(), 0o644)?;
        info!(cert = %files.cert.display(), "generated a self-signed certificate");
    }
    let der = CertificateDer::from_pem_file(&files.cert).map_err(|e| TlsError::Cert {
        path: files.cert.clone(),
        reason: e.to_string(),
    })?;
    Ok((files, fingerprint(&der)))
}

/// SHA-256 fingerprint of a DER certificate as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pop3-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn self_signed_is_generated_once_and_loads() {
        let dir = temp_dir("selfsigned");
        let (files, fp1) = self_signed(&dir, "mail.example.org").expect("generate");
        let (_, fp2) = self_signed(&dir, "mail.example.org").expect("reuse");
        assert_eq!(fp1, fp2, "the certificate must be reused, not regenerated");
        assert_eq!(fp1.len(), 32 * 3 - 1);
        let tls = Tls::load(vec![files]).expect("load");
        assert_eq!(tls.reload().expect("reload"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_named_in_errors() {
        let dir = temp_dir("bad");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cert = dir.join("c.pem");
        std::fs::write(&cert, "not a pem").expect("write");
        let err = Tls::load(vec![CertFiles {
            cert: cert.clone(),
            key: dir.join("missing.pem"),
        }])
        .expect_err("must fail");
        assert!(err.to_string().contains("c.pem"), "{err}");
        assert!(matches!(Tls::load(vec![]), Err(TlsError::NoCertificate)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sni_picks_the_matching_certificate() {
        let a = temp_dir("sni-a");
        let b = temp_dir("sni-b");
        let (fa, _) = self_signed(&a, "a.example.org").expect("a");
        let (fb, fpb) = self_signed(&b, "b.example.org").expect("b");
        let tls = Tls::load(vec![fa, fb]).expect("load");
        let loaded = tls.resolver.loaded.read().expect("lock").clone();
        let name = ServerName::try_from("b.example.org").expect("name");
        let hit = loaded.iter().find(|l| l.matches(&name)).expect("match");
        let der = hit.key.end_entity_cert().expect("ee");
        assert_eq!(fingerprint(der), fpb);
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }

    /// RFC 5929 section 4.1: tls-server-end-point hashes the certificate with its signature's
    /// hash: SHA-384 for ecdsa-with-SHA384, SHA-256 for ecdsa-with-SHA256.
    #[test]
    fn rfc5929_server_end_point_uses_the_signature_hash() {
        for (alg, digest) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, &ring::digest::SHA256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, &ring::digest::SHA384),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            let params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
            let cert = params.self_signed(&key).expect("certificate");
            let der = cert.der().to_vec();
            assert_eq!(
                server_end_point(&der),
                ring::digest::digest(digest, &der).as_ref(),
                "{alg:?}"
            );
        }
        assert!(signature_algorithm(b"\x30\x80").is_none());
    }

    /// One handshake through `acceptor`; the server then sends a line (which carries the TLS
    /// 1.3 tickets to the client, RFC 8446 section 4.6.1) and the client reads it.
    async fn handshake(
        acceptor: &TlsAcceptor,
        client: &tokio_rustls::TlsConnector,
    ) -> rustls::HandshakeKind {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = async {
            let mut tls = acceptor.accept(a).await.expect("server handshake");
            tls.write_all(b"+OK\r\n").await.expect("write");
            tls.flush().await.expect("flush");
            tls
        };
        let name = ServerName::try_from("localhost").expect("name");
        let client = async {
            let mut tls = client.connect(name, b).await.expect("client handshake");
            let mut line = [0u8; 5];
            tls.read_exact(&mut line).await.expect("read");
            tls
        };
        let (_server, client) = tokio::join!(server, client);
        client.get_ref().1.handshake_kind().expect("handshake done")
    }

    /// RFC 8446 section 2.2: a client that kept a ticket resumes, on the listener it got it
    /// from and on the other one (STLS and implicit TLS listeners may have different minimum
    /// versions, so different acceptors).
    #[tokio::test]
    async fn rfc8446_s2_2_a_ticket_resumes_on_any_listener() {
        let dir = temp_dir("resume");
        let (files, _) = self_signed(&dir, "localhost").expect("generate");
        let tls = Tls::load(vec![files]).expect("load");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(dir.join("cert.pem")).unwrap_or_default();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("certificate")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (tls12, tls13) = (
            tls.acceptor(TlsVersion::Tls12),
            tls.acceptor(TlsVersion::Tls13),
        );
        assert_eq!(handshake(tls12, &client).await, rustls::HandshakeKind::Full);
        assert_eq!(
            handshake(tls12, &client).await,
            rustls::HandshakeKind::Resumed
        );
        assert_eq!(
            handshake(tls13, &client).await,
            rustls::HandshakeKind::Resumed
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
