//! One POP3 client session over plain TCP or implicit TLS, checking everything it reads.
//!
//! Commands are sent one at a time, the way most mail clients send them. Replies are parsed
//! with `proto::response::parse_status` and multi-line bodies read back with `proto::Unstuffer`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use proto::response::parse_status;
use proto::Status;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::corpus::{Expected, Streamed};
use crate::unstuff::{LineUnstuffer, Sink};

/// Longest reply line accepted (a listing line or a status line).
const MAX_LINE: usize = 4096;
/// Largest message accepted.
const MAX_MESSAGE: u64 = 512 * 1024 * 1024;

/// Where to connect and how to log in.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// With `tls`: connect in cleartext and upgrade with STLS (RFC 2595) instead of implicit TLS.
    pub stls: bool,
    pub password: String,
}

/// What a session does after logging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// STAT, QUIT.
    Login,
    /// UIDL, LIST, RETR every message, QUIT.
    Download,
}

/// What one session moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub messages: u64,
    /// Message octets after unstuffing (what LIST counts).
    pub octets: u64,
    /// Time from sending each RETR to the end of its reply, summed.
    pub retr: std::time::Duration,
}

/// TLS handshakes that resumed a session, over this process's life (the suite reads it before
/// and after a run).
pub static TLS_RESUMED: AtomicU64 = AtomicU64::new(0);

/// A TLS client (ring provider; no session resumption, so every session pays a full
/// handshake, the same against every server).
pub fn tls_connector(ca: Option<&std::path::Path>) -> Result<TlsConnector> {
    Ok(TlsConnector::from(Arc::new(tls_config(ca)?)))
}

/// A client of its own, `config` with session resumption on (TLS 1.3 tickets, TLS 1.2 ids
/// and tickets, kept in memory for each server name): one per server, so that no server is
/// offered another's tickets.
pub fn resuming(config: &rustls::ClientConfig) -> TlsConnector {
    let mut config = config.clone();
    config.resumption = rustls::client::Resumption::in_memory_sessions(256);
    TlsConnector::from(Arc::new(config))
}

/// [`tls_connector`]'s configuration: trusting `ca` (any certificate without one, handshake
/// signatures still checked), resumption off.
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("parsing {}", path.display()))?)
                    .context("adding the CA certificate")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAny(provider)))
            .with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    /// `--insecure`: any certificate, but handshake signatures are still checked.
    #[derive(Debug)]
    pub struct AcceptAny(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// Runs one session for `user`. With `expected`, every message must be one the corpus holds for
/// this user, each exactly once, and all of them.
pub async fn session(
    target: &Target,
    user: &str,
    work: Work,
    expected: Option<&Expected>,
    buf: &mut Vec<u8>,
) -> Result<Outcome> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .context("connect")?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    match &target.tls {
        None => run(tcp, target, user, work, expected, buf, true).await,
        Some((connector, name)) => {
            let mut tcp = tcp;
            if target.stls {
                stls(&mut tcp).await?;
            }
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .context("TLS handshake")?;
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                TLS_RESUMED.fetch_add(1, Ordering::Relaxed);
            }
            run(tls, target, user, work, expected, buf, !target.stls).await
        }
    }
}

/// The cleartext part of an STLS session: the greeting, `STLS`, its `+OK`, and nothing more
/// (RFC 2595 section 4: the handshake starts right after the CRLF of the `+OK`).
async fn stls(tcp: &mut TcpStream) -> Result<()> {
    let mut w = Wire {
        io: BufReader::with_capacity(1024, &mut *tcp),
        line: Vec::with_capacity(256),
        unstuffer: LineUnstuffer::new(),
    };
    w.expect_ok("greeting").await?;
    w.command("STLS").await?;
    if !w.io.buffer().is_empty() {
        bail!("STLS: the server sent more after its +OK");
    }
    Ok(())
}

/// A connection opened and greeted (no command sent), for holding idle connections.
pub async fn open_greeted(target: &Target) -> Result<TcpStream> {
    let mut tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .context("connect")?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    let mut w = Wire {
        io: BufReader::with_capacity(512, &mut tcp),
        line: Vec::with_capacity(128),
        unstuffer: LineUnstuffer::new(),
    };
    w.expect_ok("greeting").await?;
    Ok(tcp)
}

/// A plain connection logged in as `user` (USER, PASS; nothing after), for holding idle
/// logged-in sessions. Dropping it closes the connection without QUIT.
pub async fn open_logged_in(target: &Target, user: &str) -> Result<TcpStream> {
    let mut tcp = open_greeted(target).await?;
    let mut w = Wire {
        io: BufReader::with_capacity(512, &mut tcp),
        line: Vec::with_capacity(128),
        unstuffer: LineUnstuffer::new(),
    };
    w.command(&format!("USER {user}")).await?;
    w.command(&format!("PASS {}", target.password)).await?;
    Ok(tcp)
}

struct Wire<S> {
    io: BufReader<S>,
    line: Vec<u8>,
    /// Reused for every multi-line body (its scratch buffer too).
    unstuffer: LineUnstuffer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    async fn read_line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        loop {
            let chunk = self.io.fill_buf().await.context("read")?;
            if chunk.is_empty() {
                bail!("connection closed by the server");
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.line.extend_from_slice(&chunk[..=i]);
                    self.io.consume(i + 1);
                    break;
                }
                None => {
                    let n = chunk.len();
                    self.line.extend_from_slice(chunk);
                    self.io.consume(n);
                }
            }
            if self.line.len() > MAX_LINE {
                bail!("reply line longer than {MAX_LINE} octets");
            }
        }
        if !self.line.ends_with(b"\r\n") {
            bail!("reply line not ended by CRLF");
        }
        Ok(&self.line[..self.line.len() - 2])
    }

    /// Sends `command` and expects `+OK`; returns the text after it.
    async fn command(&mut self, command: &str) -> Result<String> {
        // One write per command line, as mail clients send them: a line in two segments
        // waits in a relay without TCP_NODELAY (nginx's mail proxy) for the server's delayed
        // ACK of the first (40-200 ms), which the benchmark would then measure.
        let line = format!("{command}\r\n");
        let inner = self.io.get_mut();
        inner.write_all(line.as_bytes()).await.context("write")?;
        inner.flush().await.context("flush")?;
        let verb = command.split(' ').next().unwrap_or_default().to_string();
        self.expect_ok(&verb).await
    }

    async fn expect_ok(&mut self, what: &str) -> Result<String> {
        let line = self.read_line().await?;
        let status = parse_status(line).ok_or_else(|| {
            anyhow!(
                "{what}: not a status line: {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        if status.status != Status::Ok {
            bail!("{what}: -ERR {}", String::from_utf8_lossy(line));
        }
        Ok(status.text)
    }

    /// Reads a multi-line body (after its `+OK` line) into `out`, unstuffed; true when a line
    /// ended with a bare LF.
    async fn body(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        self.body_into(out).await
    }

    /// Hands a multi-line body (after its `+OK` line) to `out`, unstuffed, straight from the
    /// read buffer; true when a line ended with a bare LF.
    async fn body_into(&mut self, out: &mut impl Sink) -> Result<bool> {
        self.unstuffer.reset();
        loop {
            let chunk = self.io.fill_buf().await.context("read")?;
            if chunk.is_empty() {
                bail!("connection closed inside a multi-line reply");
            }
            match self.unstuffer.push(chunk, out) {
                Some(n) => {
                    self.io.consume(n);
                    return Ok(self.unstuffer.bare_lf);
                }
                None => {
                    let n = chunk.len();
                    self.io.consume(n);
                }
            }
            if out.len() > MAX_MESSAGE {
                bail!("multi-line reply larger than {MAX_MESSAGE} octets");
            }
        }
    }
}

/// `n token` lines of a UIDL or LIST listing, numbers 1..=count in order.
fn listing(body: &[u8], what: &str) -> Result<Vec<String>> {
    let text = std::str::from_utf8(body).with_context(|| format!("{what}: not UTF-8"))?;
    let mut out = Vec::new();
    for (i, line) in text.split_terminator("\r\n").enumerate() {
        let (n, token) = line
            .split_once(' ')
            .ok_or_else(|| anyhow!("{what}: bad line {line:?}"))?;
        if n.parse::<usize>().ok() != Some(i + 1) {
            bail!("{what}: line {line:?} out of order");
        }
        out.push(token.to_string());
    }
    Ok(out)
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    target: &Target,
    user: &str,
    work: Work,
    expected: Option<&Expected>,
    buf: &mut Vec<u8>,
    greeting: bool,
) -> Result<Outcome> {
    let mut w = Wire {
        io: BufReader::with_capacity(256 * 1024, io),
        line: Vec::with_capacity(256),
        unstuffer: LineUnstuffer::new(),
    };
    if greeting {
        w.expect_ok("greeting").await?;
    }
    w.command(&format!("USER {user}")).await?;
    w.command(&format!("PASS {}", target.password)).await?;
    let mut outcome = Outcome::default();
    match work {
        Work::Login => {
            let stat = w.command("STAT").await?;
            let mut parts = stat.split(' ');
            let count: u64 = parts
                .next()
                .unwrap_or_default()
                .parse()
                .context("STAT count")?;
            let _: u64 = parts
                .next()
                .unwrap_or_default()
                .parse()
                .context("STAT octets")?;
            if let Some(want) = expected.and_then(|e| e.messages_of(user)) {
                if count != u64::from(want) {
                    bail!("STAT says {count} messages, {want} were delivered");
                }
            }
        }
        Work::Download => {
            w.command("UIDL").await?;
            w.body(buf).await?;
            let uids = listing(buf, "UIDL")?;
            let unique: HashSet<&String> = uids.iter().collect();
            if unique.len() != uids.len() {
                bail!("UIDL listing repeats a UID");
            }
            w.command("LIST").await?;
            w.body(buf).await?;
            let sizes = listing(buf, "LIST")?
                .iter()
                .map(|s| s.parse::<u64>().context("LIST size"))
                .collect::<Result<Vec<u64>>>()?;
            if sizes.len() != uids.len() {
                bail!("UIDL lists {} messages, LIST {}", uids.len(), sizes.len());
            }
            if let Some(want) = expected.and_then(|e| e.messages_of(user)) {
                if sizes.len() as u64 != u64::from(want) {
                    bail!("LIST shows {} messages, {want} were delivered", sizes.len());
                }
            }
            let mut seen = HashSet::new();
            for (i, size) in sizes.iter().enumerate() {
                let t0 = std::time::Instant::now();
                w.command(&format!("RETR {}", i + 1)).await?;
                // Checked as it arrives: no copy of the message, no buffer of its size.
                let mut body = Streamed::new(*size);
                let bare_lf = w.body_into(&mut body).await?;
                outcome.retr += t0.elapsed();
                let n = i + 1;
                if body.len() != *size {
                    bail!("RETR {n}: {} octets, LIST said {size}", body.len());
                }
                if body.len() > 0 && !body.ends_with_crlf() {
                    bail!("RETR {n}: message does not end with CRLF");
                }
                if bare_lf {
                    bail!("RETR {n}: bare LF in the message");
                }
                if let Some(e) = expected {
                    let id = e
                        .verify(user, &body)
                        .map_err(|m| anyhow!("RETR {n}: {m}"))?;
                    if !seen.insert(id.clone()) {
                        bail!("RETR {n}: message {id} appears twice");
                    }
                }
                outcome.messages += 1;
                outcome.octets += size;
            }
        }
    }
    w.command("QUIT").await?;
    Ok(outcome)
}

/// Milliseconds each step of a session on a large maildrop took (scenario 5).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ListingTimes {
    /// From sending PASS to reading its `+OK` (the server locks and lists the maildrop).
    pub pass_ms: f64,
    pub stat_ms: f64,
    /// From sending UIDL to the end of the whole listing.
    pub uidl_ms: f64,
    pub list_ms: f64,
}

/// Logs in as `user` and times PASS, STAT, UIDL and LIST, checking that each shows `count`
/// messages (UIDs unique, LIST sizes adding up to STAT's octets).
pub async fn listing_times(target: &Target, user: &str, count: u64) -> Result<ListingTimes> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .context("connect")?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    let mut w = Wire {
        io: BufReader::with_capacity(64 * 1024, tcp),
        line: Vec::with_capacity(256),
        unstuffer: LineUnstuffer::new(),
    };
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    let mut buf = Vec::new();
    let mut t = ListingTimes::default();
    w.expect_ok("greeting").await?;
    w.command(&format!("USER {user}")).await?;
    let t0 = std::time::Instant::now();
    w.command(&format!("PASS {}", target.password)).await?;
    t.pass_ms = ms(t0);
    let t0 = std::time::Instant::now();
    let stat = w.command("STAT").await?;
    t.stat_ms = ms(t0);
    let mut parts = stat.split(' ');
    let n: u64 = parts.next().unwrap_or_default().parse().context("STAT")?;
    let octets: u64 = parts.next().unwrap_or_default().parse().context("STAT")?;
    if n != count {
        bail!("STAT says {n} messages, {count} were delivered");
    }
    let t0 = std::time::Instant::now();
    w.command("UIDL").await?;
    w.body(&mut buf).await?;
    let uids = listing(&buf, "UIDL")?;
    t.uidl_ms = ms(t0);
    if uids.len() as u64 != count || uids.iter().collect::<HashSet<_>>().len() != uids.len() {
        bail!(
            "UIDL lists {} messages (unique UIDs needed), {count} were delivered",
            uids.len()
        );
    }
    let t0 = std::time::Instant::now();
    w.command("LIST").await?;
    w.body(&mut buf).await?;
    let sizes = listing(&buf, "LIST")?;
    t.list_ms = ms(t0);
    let total = sizes
        .iter()
        .map(|s| s.parse::<u64>().context("LIST size"))
        .sum::<Result<u64>>()?;
    if sizes.len() as u64 != count || total != octets {
        bail!(
            "LIST shows {} messages of {total} octets, STAT {count} of {octets}",
            sizes.len()
        );
    }
    w.command("QUIT").await?;
    Ok(t)
}
