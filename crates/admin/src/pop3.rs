//! A small synchronous POP3 client (RFC 1939) for `migrate pop3` and `uidl diff`: USER/PASS,
//! UIDL, LIST, RETR, over plain TCP, STLS (RFC 2595) or implicit TLS (RFC 8314). It never sends
//! DELE. Replies are parsed with `proto` (status lines, dot-unstuffing).
//!
//! TLS trusts the certificates of `--cafile` (a CA or the server's own certificate), else the
//! system bundle; `--insecure` skips verification (only for a known server on a trusted path).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use proto::response::parse_status;
use proto::{Secret, Status, Unstuffer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Connection timeout and the longest wait for any reply.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest status or listing line accepted (RFC 2449 section 4 allows 512 for a first line).
const MAX_LINE: u64 = 8 * 1024;
/// CA bundle used for TLS when `--cafile` is not given (Debian's ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    /// STLS after the greeting (RFC 2595 section 4).
    StartTls,
    /// TLS from the first byte (RFC 8314, port 995).
    Implicit,
}

/// Where and how to connect and log in.
#[derive(Debug)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub cafile: Option<PathBuf>,
    pub insecure: bool,
    pub user: String,
    pub password: Secret<Vec<u8>>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A logged-in POP3 session in the TRANSACTION state.
pub struct Session {
    conn: BufReader<Stream>,
}

impl Session {
    /// Connects, reads the greeting, upgrades to TLS as asked, and logs in with USER/PASS.
    pub fn login(remote: &Remote) -> anyhow::Result<Session> {
        let where_ = format!("{}:{}", remote.host, remote.port);
        let tcp = connect(&remote.host, remote.port)
            .with_context(|| format!("connecting to {where_}"))?;
        let tls = match remote.security {
            Security::Plain => None,
            Security::StartTls | Security::Implicit => {
                Some(tls_config(remote.cafile.as_deref(), remote.insecure)?)
            }
        };
        let stream = match (&tls, remote.security) {
            (Some(config), Security::Implicit) => start_tls(config, &remote.host, tcp)?,
            _ => Stream::Plain(tcp),
        };
        let mut session = Session {
            conn: BufReader::new(stream),
        };
        session.status().context("reading the greeting")?;
        if let (Some(config), Security::StartTls) = (&tls, remote.security) {
            session.command("STLS")?;
            // RFC 2595 section 4: nothing may follow the +OK before the handshake.
            if !session.conn.buffer().is_empty() {
                bail!("the server sent data after its STLS reply");
            }
            let Stream::Plain(tcp) = session.conn.into_inner() else {
                bail!("STLS on a TLS connection");
            };
            session = Session {
                conn: BufReader::new(start_tls(config, &remote.host, tcp)?),
            };
        }
        let user = remote.user.as_bytes();
        let pass = remote.password.expose();
        if [user, pass.as_slice()]
            .iter()
            .any(|v| v.contains(&b'\r') || v.contains(&b'\n'))
        {
            bail!("the user name or password holds a line break");
        }
        session
            .command_bytes(&[b"USER ", user].concat())
            .context("USER")?;
        session
            .command_bytes(&[b"PASS ", pass.as_slice()].concat())
            .map_err(|e| anyhow!("login as {} refused: {e}", remote.user))?;
        Ok(session)
    }

    /// UIDL: `(message number, uidl)` in the server's order (RFC 1939 section 7).
    pub fn uidl(&mut self) -> anyhow::Result<Vec<(u32, String)>> {
        self.listing("UIDL")
            .context("UIDL (the server must support it to keep UIDLs)")
    }

    /// LIST: `(message number, octets)` (RFC 1939 section 5).
    pub fn list(&mut self) -> anyhow::Result<Vec<(u32, u64)>> {
        self.listing("LIST")
            .context("LIST")?
            .into_iter()
            .map(|(n, size)| {
                let size = size
                    .parse()
                    .with_context(|| format!("LIST: size {size:?} of message {n}"))?;
                Ok((n, size))
            })
            .collect()
    }

    /// RETR n: the message, unstuffed, refused beyond `max_size` octets.
    pub fn retr(&mut self, n: u32, max_size: u64) -> anyhow::Result<Vec<u8>> {
        self.command(&format!("RETR {n}"))
            .with_context(|| format!("RETR {n}"))?;
        self.body(max_size).with_context(|| format!("RETR {n}"))
    }

    /// QUIT, then close. Not used after RETR by `migrate`, which ends without UPDATE.
    pub fn quit(mut self) -> anyhow::Result<()> {
        self.command("QUIT").map(|_| ())
    }

    fn listing(&mut self, command: &str) -> anyhow::Result<Vec<(u32, String)>> {
        self.command(command)?;
        let body = self.body(64 * 1024 * 1024)?;
        let text = String::from_utf8_lossy(&body);
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut parts = line.split_ascii_whitespace();
            let (Some(n), Some(value)) = (parts.next(), parts.next()) else {
                bail!("malformed listing line {line:?}");
            };
            let n: u32 = n
                .parse()
                .with_context(|| format!("malformed listing line {line:?}"))?;
            out.push((n, value.to_owned()));
        }
        Ok(out)
    }

    /// Sends a command and returns the text of its `+OK` reply; `-ERR` is an error.
    fn command(&mut self, line: &str) -> anyhow::Result<String> {
        self.command_bytes(line.as_bytes())
    }

    fn command_bytes(&mut self, line: &[u8]) -> anyhow::Result<String> {
        let stream = self.conn.get_mut();
        stream
            .write_all(&[line, b"\r\n"].concat())
            .and_then(|()| stream.flush())
            .context("sending a command")?;
        self.status()
    }

    /// Reads one status line: the text after `+OK`, or an error with the `-ERR` text.
    fn status(&mut self) -> anyhow::Result<String> {
        let mut line = Vec::new();
        (&mut self.conn)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .context("reading a reply")?;
        if line.is_empty() {
            bail!("the server closed the connection");
        }
        if !line.ends_with(b"\n") {
            bail!("a reply line longer than {MAX_LINE} octets");
        }
        let trimmed = line.trim_ascii_end();
        let status = parse_status(trimmed)
            .ok_or_else(|| anyhow!("not a POP3 reply: {:?}", String::from_utf8_lossy(trimmed)))?;
        match status.status {
            Status::Ok => Ok(status.text),
            Status::Err => {
                let code = status.code.map(|c| format!("[{c}] ")).unwrap_or_default();
                bail!("-ERR {code}{}", status.text)
            }
        }
    }

    /// A multi-line body after `+OK`, unstuffed (RFC 1939 section 3).
    fn body(&mut self, max_size: u64) -> anyhow::Result<Vec<u8>> {
        let mut unstuffer = Unstuffer::new();
        let mut out = Vec::new();
        loop {
            let buf = self.conn.fill_buf().context("reading a multi-line reply")?;
            if buf.is_empty() {
                bail!("the connection closed inside a multi-line reply");
            }
            let len = buf.len();
            let done = unstuffer.push(buf, &mut out);
            self.conn.consume(done.unwrap_or(len));
            if done.is_some() {
                return Ok(out);
            }
            if out.len() as u64 > max_size {
                bail!("a reply larger than {max_size} octets");
            }
        }
    }
}

fn connect(host: &str, port: u16) -> anyhow::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port)
        .to_socket_addrs()
        .context("resolving the host")?
    {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow!("no address"), anyhow::Error::new))
}

fn start_tls(
    config: &Arc<rustls::ClientConfig>,
    host: &str,
    mut tcp: TcpStream,
) -> anyhow::Result<Stream> {
    let name = ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
    let mut conn = rustls::ClientConnection::new(config.clone(), name).context("starting TLS")?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).context("TLS handshake")?;
    }
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// The TLS client configuration: certificates from `cafile` (else the system bundle) as trust
/// anchors, or no verification at all with `insecure`.
fn tls_config(cafile: Option<&Path>, insecure: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let path = cafile.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading certificates from {}", path.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("reading {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("a certificate of {}", path.display()))?;
        }
        if roots.is_empty() {
            bail!("no certificate in {}", path.display());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted, signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A scripted POP3 server on a loopback port: answers each expected command with its reply,
    /// in order, and records what it received. Returns the port and the recorder thread.
    pub(crate) fn scripted(
        greeting: &'static str,
        script: Vec<(&'static str, String)>,
    ) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            let mut writer = stream.try_clone().expect("clone");
            let mut reader = BufReader::new(stream);
            writer.write_all(greeting.as_bytes()).expect("greet");
            let mut seen = Vec::new();
            for (expected, reply) in script {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_owned();
                assert_eq!(line, expected, "unexpected command");
                seen.push(line);
                // The client may have hung up on purpose (an oversized reply).
                let _ = writer.write_all(reply.as_bytes());
            }
            seen
        });
        (port, handle)
    }

    pub(crate) fn remote(port: u16) -> Remote {
        Remote {
            host: "127.0.0.1".into(),
            port,
            security: Security::Plain,
            cafile: None,
            insecure: false,
            user: "u".into(),
            password: Secret::new(b"p w".to_vec()),
        }
    }

    /// A [`scripted`] server that greets, takes the login of [`remote`] (`USER u`, `PASS p w`)
    /// and then follows `after_login`; and a session logged in to it.
    pub(crate) fn logged_in(
        after_login: Vec<(&'static str, String)>,
    ) -> (Session, std::thread::JoinHandle<Vec<String>>) {
        let mut script = vec![
            ("USER u", "+OK\r\n".to_owned()),
            ("PASS p w", "+OK in\r\n".to_owned()),
        ];
        script.extend(after_login);
        let (port, server) = scripted("+OK hi\r\n", script);
        (Session::login(&remote(port)).expect("login"), server)
    }

    #[test]
    fn a_plain_session() {
        let (mut s, server) = logged_in(vec![
            ("UIDL", "+OK\r\n1 a\r\n2 b\r\n.\r\n".into()),
            ("LIST", "+OK 2\r\n1 10\r\n2 7\r\n.\r\n".into()),
            // RFC 1939 section 3: a line starting with "." is stuffed.
            ("RETR 1", "+OK\r\nS: 1\r\n\r\n..dot\r\n.\r\n".into()),
            ("RETR 2", "-ERR [SYS/TEMP] no\r\n".into()),
            ("QUIT", "+OK bye\r\n".into()),
        ]);
        assert_eq!(
            s.uidl().expect("uidl"),
            [(1, "a".to_owned()), (2, "b".to_owned())]
        );
        assert_eq!(s.list().expect("list"), [(1, 10), (2, 7)]);
        assert_eq!(s.retr(1, 100).expect("retr"), b"S: 1\r\n\r\n.dot\r\n");
        let err = s.retr(2, 100).expect_err("refused");
        assert!(format!("{err:#}").contains("-ERR [SYS/TEMP] no"), "{err:#}");
        s.quit().expect("quit");
        assert_eq!(server.join().expect("server").len(), 7);
    }

    #[test]
    fn refusals_and_garbage() {
        let (port, server) = scripted(
            "+OK hi\r\n",
            vec![
                ("USER u", "+OK\r\n".into()),
                ("PASS p w", "-ERR [AUTH] bad\r\n".into()),
            ],
        );
        let err = Session::login(&remote(port)).err().expect("refused");
        assert!(format!("{err:#}").contains("[AUTH] bad"), "{err:#}");
        server.join().expect("server");

        let (port, server) = scripted("* OK IMAP\r\n", vec![]);
        let err = Session::login(&remote(port)).err().expect("not pop3");
        assert!(format!("{err:#}").contains("not a POP3 reply"), "{err:#}");
        server.join().expect("server");

        let mut r = remote(1);
        r.password = Secret::new(b"a\r\nDELE 1".to_vec());
        // The line break is refused before any byte of it is sent.
        let (port, server) = scripted("+OK hi\r\n", vec![]);
        r.port = port;
        let err = Session::login(&r).err().expect("refused");
        assert!(format!("{err:#}").contains("line break"), "{err:#}");
        assert!(server.join().expect("server").is_empty());
    }

    #[test]
    fn oversized_bodies_stop() {
        let big = format!("+OK\r\n{}\r\n.\r\n", "x".repeat(200_000));
        let (mut s, server) = logged_in(vec![("RETR 1", big)]);
        let err = s.retr(1, 1000).expect_err("too big");
        assert!(format!("{err:#}").contains("larger than 1000"), "{err:#}");
        drop(s);
        server.join().expect("server");
    }
}
