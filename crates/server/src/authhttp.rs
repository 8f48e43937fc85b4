//! The nginx mail proxy's `auth_http` endpoint (ngx_mail_auth_http_module's protocol).
//!
//! nginx asks once per login attempt, over HTTP/1.0, one request per connection:
//!
//! ```text
//! GET /auth HTTP/1.0            Auth-Method: plain | apop | cram-md5
//! X-Pop3d-Key: <endpoint key>   Auth-User / Auth-Pass (URL-escaped by nginx)
//! Auth-Protocol: pop3           Auth-Salt: the APOP timestamp or CRAM-MD5 challenge
//! Client-IP: 192.0.2.42         Auth-Login-Attempt: 1
//! ```
//!
//! The answer is in headers only. The credentials are checked by the very code a direct POP3
//! login uses ([`crate::verify`]). On success a live node is picked by rendezvous hashing of
//! the account name over the node table ([`pick_node`]): a user always lands on the same node
//! while it lives, and only a removed or drained node's users move. nginx gets the node's
//! address and, in `Auth-Pass`, a short-lived signed ticket ([`auth::ticket`]) that it sends
//! to the node in `PASS`: the node runs no argon2 and the password never crosses that link.
//! A failure gets the penalty delay of the client address (`Auth-Wait`, which nginx sleeps
//! before it answers the client), and none after `max_auth_failures` attempts, so nginx
//! closes the connection.
//!
//! The server's own login policy holds here too: a password login (`Auth-Method: plain`) is
//! refused unless nginx says the client's link is TLS (`Auth-SSL: on`) or the endpoint's
//! cleartext policy (`Cluster::auth_http_cleartext`, judged on `Client-IP`) allows it, and
//! `apop` and `cram-md5` are refused unless `legacy_auth` is on ([`policy`]).
//!
//! Only peers in `Cluster::auth_http_allow` (default loopback) are served: others are closed
//! at accept, unread. Requests without the endpoint key (derived from the cluster secret) are
//! refused with 403. At most [`MAX_CONCURRENT`] requests are served at once, and a connection
//! beyond them is closed at once (accept never waits); each has [`REQUEST_TIMEOUT`] to send
//! its request.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::Secret;
use store::{NodeInfo, NodeState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn, Instrument};

use crate::verify;
use crate::{Cleartext, Shared};

/// The header nginx must send the endpoint key in (`auth_http_header X-Pop3d-Key ...`).
pub const KEY_HEADER: &str = "X-Pop3d-Key";
/// Longest request accepted (nginx's are a few hundred octets).
const MAX_REQUEST: usize = 8 * 1024;
/// Time nginx has to send its request (a few hundred octets, written at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests served at once; a connection beyond them is closed at once.
const MAX_CONCURRENT: usize = 256;
/// How long a read of the node table is reused.
const NODE_TABLE_TTL: Duration = Duration::from_secs(1);
/// What nginx waits before retrying after a temporary failure.
const TEMP_FAILURE_WAIT: u64 = 3;

/// One request from nginx.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum BadRequest {
    #[error("request too long")]
    TooLong,
    #[error("not an HTTP GET request")]
    NotGet,
    #[error("malformed header line")]
    Header,
    #[error("the connection ended before the request did")]
    Truncated,
}

impl Request {
    /// Parses a complete request head (up to and including the empty line). Values are kept
    /// as octets: nginx escapes `%`, white space and control characters in the credentials,
    /// but a password may hold any other octet, UTF-8 or not.
    fn parse(head: &[u8]) -> Result<Request, BadRequest> {
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let request_line = lines.next().unwrap_or_default();
        let mut words = request_line.split(|&b| b == b' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(b"GET"), Some(_path), Some(v), None) if v.starts_with(b"HTTP/1.") => {}
            _ => return Err(BadRequest::NotGet),
        }
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                break;
            }
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(BadRequest::Header)?;
            let name = std::str::from_utf8(&line[..colon]).map_err(|_| BadRequest::Header)?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(BadRequest::Header);
            }
            headers.push((name.to_owned(), line[colon + 1..].trim_ascii().to_vec()));
        }
        Ok(Request { headers })
    }

    /// A header's value as octets.
    fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// A header's value as text (`None` if absent or not UTF-8).
    fn header(&self, name: &str) -> Option<&str> {
        self.bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Undoes nginx's URL escaping of `Auth-User` and `Auth-Pass` (`%XX`; nothing else).
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// What the endpoint answers.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Log in at `server` with `pass` (a ticket) as `user`.
    Ok {
        server: SocketAddr,
        user: String,
        pass: String,
    },
    /// Refused: nginx sends `-ERR <status>` to the client after `wait` seconds and lets it
    /// try again; without `wait` it closes the connection.
    Refused { status: String, wait: Option<u64> },
    /// The request did not come from our nginx.
    Forbidden,
}

impl Answer {
    fn render(&self) -> String {
        match self {
            Answer::Ok { server, user, pass } => format!(
                "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n\
                 Auth-User: {user}\r\nAuth-Pass: {pass}\r\nContent-Length: 0\r\n\r\n",
                server.ip(),
                server.port()
            ),
            Answer::Refused { status, wait } => {
                let wait = wait
                    .map(|w| format!("Auth-Wait: {w}\r\n"))
                    .unwrap_or_default();
                format!(
                    "HTTP/1.0 200 OK\r\nAuth-Status: {status}\r\n{wait}Content-Length: 0\r\n\r\n"
                )
            }
            Answer::Forbidden => "HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into(),
        }
    }
}

/// The node table as the endpoint last read it.
pub(crate) struct NodeTable {
    cached: Mutex<Option<(Instant, Arc<Vec<NodeInfo>>)>>,
}

impl NodeTable {
    pub fn new() -> NodeTable {
        NodeTable {
            cached: Mutex::new(None),
        }
    }

    async fn read(
        &self,
        shared: &Shared,
    ) -> Result<Arc<Vec<NodeInfo>>, crate::reply::SessionError> {
        let now = Instant::now();
        if let Some((at, nodes)) = &*self.cached.lock().unwrap_or_else(|p| p.into_inner()) {
            if now.duration_since(*at) < NODE_TABLE_TTL {
                return Ok(nodes.clone());
            }
        }
        let store = shared.store.clone();
        let nodes = Arc::new(crate::reply::blocking(move || store.list_nodes()).await?);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, nodes.clone()));
        Ok(nodes)
    }
}

/// A 64-bit hash that is the same on every node and every build (FNV-1a, then the
/// SplitMix64 finaliser to spread FNV's weak low bits).
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Rendezvous (highest random weight) hashing: of the nodes that are up, whose heartbeat is
/// younger than `live_within` and whose address nginx can use, the one with the highest
/// weight for `key`. Removing a node moves only the keys it had.
pub(crate) fn pick_node<'a>(
    key: &str,
    nodes: &'a [NodeInfo],
    live_within: Duration,
) -> Option<(&'a NodeInfo, SocketAddr)> {
    nodes
        .iter()
        .filter(|n| n.state == NodeState::Up && n.heartbeat_age < live_within)
        .filter_map(|n| {
            let addr: SocketAddr = n.address.parse().ok()?;
            (!addr.ip().is_unspecified()).then_some((n, addr))
        })
        .max_by_key(|(n, _)| {
            (
                stable_hash(&[key.as_bytes(), n.id.as_bytes()]),
                n.id.clone(),
            )
        })
}

/// Serves the endpoint on `listener` until the task is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let nodes = Arc::new(NodeTable::new());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "auth_http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !allowed(&shared, peer.ip()) {
            warn!(%peer, "auth_http: peer not in auth_http_allow; connection closed");
            drop(stream);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "auth_http: {MAX_CONCURRENT} requests in hand; connection closed");
            drop(stream);
            continue;
        };
        let (shared, nodes) = (shared.clone(), nodes.clone());
        let span = tracing::info_span!("auth_http", peer = %peer, client = tracing::field::Empty);
        tokio::spawn(
            async move {
                serve(stream, &shared, &nodes).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Whether `peer` may use the endpoint (`Cluster::auth_http_allow`).
fn allowed(shared: &Shared, peer: IpAddr) -> bool {
    shared
        .config
        .cluster
        .as_ref()
        .is_some_and(|c| c.auth_http_allow.contains(peer))
}

async fn serve(mut stream: TcpStream, shared: &Arc<Shared>, nodes: &NodeTable) {
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(error = %e, "bad auth_http request");
            let _ = stream
                .write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        }
        Err(_) => {
            debug!("auth_http request timed out");
            return;
        }
    };
    let answer = answer(&request, shared, nodes).await;
    let _ = stream.write_all(answer.render().as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, BadRequest> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| BadRequest::Truncated)?;
        if n == 0 {
            return Err(BadRequest::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Request::parse(&buf[..end + 4]);
        }
        if buf.len() > MAX_REQUEST {
            return Err(BadRequest::TooLong);
        }
    }
}

/// The methods nginx may ask about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Plain,
    Apop,
    CramMd5,
}

/// The server's own policy for a login through nginx, as for a direct one: a password
/// (`plain`) crosses a cleartext link only where `auth_http_cleartext` allows it (RFC 2595
/// section 2.2, RFC 8314; `tls` is nginx's `Auth-SSL: on`, and `Loopback` is judged on the
/// client's address), and APOP and CRAM-MD5 need `legacy_auth`. A refusal ends the login
/// (no `Auth-Wait`: trying again cannot help).
fn policy(
    method: Method,
    tls: bool,
    client: IpAddr,
    config: &crate::Config,
    cluster: &crate::Cluster,
) -> Result<(), Answer> {
    let refused = |status: &str| {
        Err(Answer::Refused {
            status: status.to_owned(),
            wait: None,
        })
    };
    match method {
        Method::Apop | Method::CramMd5 if !config.legacy_auth => {
            refused("[AUTH] Unsupported authentication method")
        }
        Method::Plain if !tls => match cluster.auth_http_cleartext {
            Cleartext::Always => Ok(()),
            Cleartext::Loopback if client.to_canonical().is_loopback() => Ok(()),
            Cleartext::Loopback | Cleartext::Never => {
                refused("[AUTH] Cleartext login refused; use TLS (STLS or POP3S)")
            }
        },
        _ => Ok(()),
    }
}

async fn answer(request: &Request, shared: &Arc<Shared>, nodes: &NodeTable) -> Answer {
    let Some(cluster) = shared.config.cluster.as_ref() else {
        return Answer::Forbidden;
    };
    if !request
        .header(KEY_HEADER)
        .is_some_and(|k| cluster.keys.endpoint_key_matches(k))
    {
        warn!("auth_http request without the endpoint key refused");
        return Answer::Forbidden;
    }
    let refused = |status: &str, wait: Option<u64>| Answer::Refused {
        status: status.to_owned(),
        wait,
    };
    let Some(client) = request
        .header("Client-IP")
        .and_then(|c| c.parse::<IpAddr>().ok())
    else {
        warn!("auth_http request without a valid Client-IP");
        return refused("[SYS/PERM] Bad request from the proxy", None);
    };
    tracing::Span::current().record("client", tracing::field::display(client));
    if !request
        .header("Auth-Protocol")
        .is_some_and(|p| p.eq_ignore_ascii_case("pop3"))
    {
        return refused("[SYS/PERM] Only POP3 is served here", None);
    }
    let method = match request.header("Auth-Method").map(str::to_ascii_lowercase) {
        Some(m) if m == "plain" => Method::Plain,
        Some(m) if m == "apop" => Method::Apop,
        Some(m) if m == "cram-md5" => Method::CramMd5,
        other => {
            info!(method = ?other, "auth_http: unsupported method");
            return refused("[AUTH] Unsupported authentication method", None);
        }
    };
    let tls = request
        .header("Auth-SSL")
        .is_some_and(|v| v.eq_ignore_ascii_case("on"));
    if let Err(refusal) = policy(method, tls, client, &shared.config, cluster) {
        info!(?method, tls, "auth_http: login refused by policy");
        return refusal;
    }
    let attempt: u32 = request
        .header("Auth-Login-Attempt")
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let user_raw = unescape(request.bytes("Auth-User").unwrap_or_default());
    let Ok(user) = String::from_utf8(user_raw) else {
        return refused("[AUTH] Authentication failed", Some(1));
    };
    let pass = Secret::new(unescape(request.bytes("Auth-Pass").unwrap_or_default()));
    let salt = request.header("Auth-Salt").unwrap_or_default().to_owned();
    let fingerprint = shared.penalties.fingerprint(pass.expose());
    let verified = match method {
        Method::Plain => verify::password(shared, user.clone(), pass, false).await,
        Method::Apop | Method::CramMd5 if salt.is_empty() => Ok(None),
        Method::Apop => {
            let digest = String::from_utf8_lossy(pass.expose()).into_owned();
            verify::apop(shared, user.clone(), salt, digest, false).await
        }
        Method::CramMd5 => {
            let digest = String::from_utf8_lossy(pass.expose()).into_owned();
            verify::cram_md5(shared, user.clone(), salt, digest).await
        }
    };
    let account = match verified {
        Ok(Some(account)) => account,
        Ok(None) => {
            let delay = shared.penalties.failure(
                client,
                Some(&verify::penalty_key(
                    &user,
                    shared.config.default_domain.as_deref(),
                )),
                Some(fingerprint),
                Instant::now(),
            );
            info!(attempt, "login failed");
            // nginx keeps each attempt's memory until the session ends: stop it after the
            // configured number of failures, as a direct session would be closed.
            let wait = (attempt < shared.config.max_auth_failures)
                .then(|| delay.as_secs_f64().ceil() as u64)
                .map(|w| w.max(1));
            let status = if wait.is_some() {
                "[AUTH] Authentication failed"
            } else {
                "[AUTH] Too many failed logins"
            };
            return refused(status, wait);
        }
        Err(e) => {
            warn!(error = %e, "auth_http: credentials could not be checked");
            return refused(
                "[SYS/TEMP] Temporary server problem, try again later",
                Some(TEMP_FAILURE_WAIT),
            );
        }
    };
    let name = account.name.to_string();
    let domain = shared.config.default_domain.as_deref();
    shared
        .penalties
        .success(&verify::penalty_key(&name, domain));
    let table = match nodes.read(shared).await {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "auth_http: reading the node table failed");
            return refused(
                "[SYS/TEMP] Temporary server problem, try again later",
                Some(TEMP_FAILURE_WAIT),
            );
        }
    };
    let Some((node, server)) = pick_node(&name, &table, cluster.node_liveness) else {
        warn!(
            nodes = table.len(),
            "auth_http: no live node to send a login to"
        );
        return refused(
            "[SYS/TEMP] No mail server available, try again later",
            Some(TEMP_FAILURE_WAIT),
        );
    };
    let pass = cluster
        .keys
        .issue(&name, &node.id, client, cluster.ticket_ttl);
    info!(user = %name, node = %node.id, "login accepted; sent to node");
    Answer::Ok {
        server,
        user: name,
        pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, address: &str, state: NodeState, age_secs: u64) -> NodeInfo {
        NodeInfo {
            id: id.to_owned(),
            address: address.to_owned(),
            state,
            sessions: 0,
            heartbeat_age: Duration::from_secs(age_secs),
        }
    }

    const LIVE: Duration = Duration::from_secs(15);

    fn three() -> Vec<NodeInfo> {
        vec![
            node("n1", "127.0.0.1:2001", NodeState::Up, 1),
            node("n2", "127.0.0.1:2002", NodeState::Up, 1),
            node("n3", "127.0.0.1:2003", NodeState::Up, 1),
        ]
    }

    #[test]
    fn nginx_request_heads_parse() {
        let head = b"GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\n\
            Auth-User: ann%40example.org\r\nAuth-Pass: p%25ss%20word\r\nAuth-Protocol: pop3\r\n\
            Auth-Login-Attempt: 1\r\nClient-IP: 192.0.2.42\r\nX-Pop3d-Key: abc\r\n\r\n";
        let r = Request::parse(head).expect("test value");
        assert_eq!(r.header("auth-method"), Some("plain"));
        assert_eq!(r.header("CLIENT-IP"), Some("192.0.2.42"));
        assert_eq!(
            unescape(r.bytes("Auth-User").expect("test value")),
            b"ann@example.org"
        );
        assert_eq!(
            unescape(r.bytes("Auth-Pass").expect("test value")),
            b"p%ss word"
        );
        assert_eq!(r.header("Auth-Salt"), None);
        // A password that is not UTF-8 does not spoil the request.
        let latin1 = b"GET /auth HTTP/1.0\r\nAuth-Pass: caf\xe9\r\nClient-IP: ::1\r\n\r\n";
        let r = Request::parse(latin1).expect("octets");
        assert_eq!(r.bytes("Auth-Pass"), Some(&b"caf\xe9"[..]));
        assert_eq!(r.header("Client-IP"), Some("::1"));
        assert_eq!(
            Request::parse(b"POST / HTTP/1.0\r\n\r\n"),
            Err(BadRequest::NotGet)
        );
        assert_eq!(
            Request::parse(b"GET / HTTP/1.0\r\nno colon\r\n\r\n"),
            Err(BadRequest::Header)
        );
    }

    /// The endpoint keeps the server's policy: a password only under TLS (nginx's
    /// `Auth-SSL: on`) unless `auth_http_cleartext` allows it for this client (RFC 2595
    /// section 2.2, RFC 8314 section 3), APOP and CRAM-MD5 only with `legacy_auth`.
    #[test]
    fn the_endpoint_applies_the_cleartext_policy_and_legacy_auth() {
        let keys = auth::ticket::ClusterKeys::from_secret(&[7u8; 32]).expect("keys");
        let mut cluster = crate::Cluster::new(keys);
        let mut config = crate::Config::default();
        let remote: IpAddr = "192.0.2.42".parse().expect("ip");
        let local: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let ok = |m, tls, ip, config: &crate::Config, cluster: &crate::Cluster| {
            policy(m, tls, ip, config, cluster).is_ok()
        };
        // The default: loopback clients only, without legacy methods.
        assert_eq!(cluster.auth_http_cleartext, Cleartext::Loopback);
        assert!(ok(Method::Plain, true, remote, &config, &cluster));
        assert!(!ok(Method::Plain, false, remote, &config, &cluster));
        assert!(ok(Method::Plain, false, local, &config, &cluster));
        for m in [Method::Apop, Method::CramMd5] {
            assert!(!ok(m, true, remote, &config, &cluster));
            assert!(!ok(m, false, local, &config, &cluster));
        }
        let Err(Answer::Refused { status, wait }) =
            policy(Method::Plain, false, remote, &config, &cluster)
        else {
            panic!("a cleartext password from afar is refused");
        };
        assert!(status.starts_with("[AUTH] "), "{status}");
        assert_eq!(wait, None, "nginx ends the login: a retry cannot help");
        // never: not even loopback; always: anyone.
        cluster.auth_http_cleartext = Cleartext::Never;
        assert!(!ok(Method::Plain, false, local, &config, &cluster));
        assert!(ok(Method::Plain, true, local, &config, &cluster));
        cluster.auth_http_cleartext = Cleartext::Always;
        assert!(ok(Method::Plain, false, remote, &config, &cluster));
        // legacy_auth on: APOP and CRAM-MD5 (their digests are no cleartext password).
        config.legacy_auth = true;
        cluster.auth_http_cleartext = Cleartext::Never;
        for m in [Method::Apop, Method::CramMd5] {
            assert!(ok(m, false, remote, &config, &cluster));
        }
    }

    /// The default allow-list of the endpoint is loopback, as `auth_http_allow` would parse it.
    #[test]
    fn the_endpoint_serves_loopback_by_default() {
        let keys = auth::ticket::ClusterKeys::from_secret(&[7u8; 32]).expect("keys");
        let allow = crate::Cluster::new(keys).auth_http_allow;
        assert_eq!(
            allow,
            crate::TrustedProxies::parse(&["127.0.0.0/8", "::1"]).expect("parse")
        );
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(allow.contains(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["192.0.2.1", "::2", "10.0.0.1"] {
            assert!(!allow.contains(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn unescape_leaves_stray_percent_signs() {
        assert_eq!(unescape(b"100%"), b"100%");
        assert_eq!(unescape(b"%4"), b"%4");
        assert_eq!(unescape(b"%zz%41"), b"%zzA");
        assert_eq!(unescape(b""), b"");
        // Octets nginx does not escape pass as they are, UTF-8 or not.
        assert_eq!(unescape(b"caf\xc3\xa9\xff"), b"caf\xc3\xa9\xff");
    }

    #[test]
    fn answers_render_as_nginx_reads_them() {
        let ok = Answer::Ok {
            server: "127.0.0.1:2001".parse().expect("test value"),
            user: "ann@example.org".into(),
            pass: "pop3d-ticket.v1.1.2.3".into(),
        }
        .render();
        assert!(
            ok.starts_with("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n"),
            "{ok}"
        );
        assert!(ok.contains("\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 2001\r\n"));
        assert!(ok.ends_with("\r\n\r\n"));
        let no = Answer::Refused {
            status: "[AUTH] Authentication failed".into(),
            wait: Some(2),
        }
        .render();
        assert!(no.contains("Auth-Status: [AUTH] Authentication failed\r\nAuth-Wait: 2\r\n"));
        let last = Answer::Refused {
            status: "x".into(),
            wait: None,
        }
        .render();
        assert!(!last.contains("Auth-Wait"));
    }

    #[test]
    fn a_user_lands_on_the_same_node_and_only_a_removed_nodes_users_move() {
        let all = three();
        let users: Vec<String> = (0..600).map(|i| format!("user{i}@example.org")).collect();
        let before: Vec<String> = users
            .iter()
            .map(|u| pick_node(u, &all, LIVE).expect("test value").0.id.clone())
            .collect();
        // Stable: the same answer every time.
        for (u, n) in users.iter().zip(&before) {
            assert_eq!(&pick_node(u, &all, LIVE).expect("test value").0.id, n);
        }
        // Spread: every node gets a fair share (600 users, about 200 each).
        for id in ["n1", "n2", "n3"] {
            let share = before.iter().filter(|n| *n == id).count();
            assert!((140..=260).contains(&share), "{id}: {share}");
        }
        // n2 goes away (removed, drained, or its heartbeat stops): only its users move.
        let variants = [
            vec![all[0].clone(), all[2].clone()],
            vec![
                all[0].clone(),
                node("n2", "127.0.0.1:2002", NodeState::Draining, 1),
                all[2].clone(),
            ],
            vec![
                all[0].clone(),
                node("n2", "127.0.0.1:2002", NodeState::Up, 60),
                all[2].clone(),
            ],
        ];
        for without in &variants {
            for (u, was) in users.iter().zip(&before) {
                let now = &pick_node(u, without, LIVE).expect("test value").0.id;
                if was == "n2" {
                    assert_ne!(now, "n2");
                } else {
                    assert_eq!(now, was, "{u} moved off a live node");
                }
            }
        }
    }

    #[test]
    fn unusable_nodes_are_never_picked() {
        let nodes = vec![
            node("dead", "127.0.0.1:1", NodeState::Up, 100),
            node("any", "0.0.0.0:2", NodeState::Up, 1),
            node("name", "pop.example.org:3", NodeState::Up, 1),
            node("drained", "127.0.0.1:4", NodeState::Draining, 1),
        ];
        for i in 0..50 {
            assert!(pick_node(&format!("u{i}"), &nodes, LIVE).is_none());
        }
        assert!(pick_node("u", &[], LIVE).is_none());
    }
}
