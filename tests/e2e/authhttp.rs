//! The nginx `auth_http` endpoint (`pop3d --auth-http`), spoken to as nginx's
//! ngx_mail_auth_http_module does, and the login tickets it hands out, used on the node's
//! proxied listener the way nginx uses them (PROXY protocol header, then USER and PASS).
//! The real nginx in front of three nodes is `cargo xtask cluster-test`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use e2e::{free_port, popadm_ok, Client, Server, TempDir, TIMEOUT};

struct Node {
    dir: TempDir,
    server: Server,
    auth_http: SocketAddr,
    proxy: SocketAddr,
    key: String,
    /// What `--print-nginx-config` prints for this node's flags.
    printed: String,
}

fn write_secret(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("cluster.key");
    std::fs::write(&path, "an example cluster secret of at least 32 octets\n").expect("secret");
    path
}

/// One node on SQLite: a plain listener, a proxied listener trusting loopback, the endpoint.
fn node(tag: &str, extra: &[&str]) -> Node {
    let dir = TempDir::new(tag);
    let secret = write_secret(dir.path());
    let secret = secret.to_str().expect("utf-8 path");
    let auth_http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (auth_s, proxy_s) = (auth_http.to_string(), proxy.to_string());
    popadm_ok(
        dir.path(),
        &[
            "user",
            "add",
            "ann@example.org",
            "--password-stdin",
            "--legacy-auth",
        ],
        b"tanstaaf\n",
    );
    popadm_ok(
        dir.path(),
        &["deliver", "--no-lda-headers", "ann@example.org"],
        b"Subject: one\r\n\r\nbody\r\n",
    );
    let mut flags = vec![
        "--listen",
        "127.0.0.1:0",
        "--listen-proxy",
        &proxy_s,
        "--trusted-proxy",
        "127.0.0.1/32",
        "--auth-http",
        &auth_s,
        "--cluster-key-file",
        secret,
        "--node-id",
        "n1",
        "--advertise",
        &proxy_s,
        "--heartbeat",
        "1",
    ];
    flags.extend_from_slice(extra);
    // The key nginx must send, as the generator prints it for the same configuration.
    let printed = std::process::Command::new(e2e::bin("pop3d"))
        .args(["--data-dir"])
        .arg(dir.path())
        .args(&flags)
        .args(["--print-nginx-config", "127.0.0.1:110"])
        .output()
        .expect("pop3d --print-nginx-config");
    assert!(printed.status.success(), "{printed:?}");
    let text = String::from_utf8(printed.stdout).expect("utf-8");
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("auth_http_header X-Pop3d-Key \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .unwrap_or_else(|| panic!("no key header in:\n{text}"))
        .to_owned();
    assert!(
        text.contains(&format!("auth_http {auth_http}/auth;")),
        "{text}"
    );
    let server = Server::start(dir.path(), &flags);
    Node {
        dir,
        server,
        auth_http,
        proxy,
        key,
        printed: text,
    }
}

/// One auth_http exchange: the response's headers, lower-cased names.
fn ask(addr: SocketAddr, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut req = String::from("GET /auth HTTP/1.0\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(addr).expect("connect auth_http");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let mut lines = out.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let mut headers = vec![(":status".to_owned(), status)];
    for l in lines.take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    headers
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A password login as nginx asks about it, the client's link under TLS (`Auth-SSL: on`).
fn plain<'a>(
    key: &'a str,
    user: &'a str,
    pass: &'a str,
    client: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Auth-Method", "plain"),
        ("Auth-User", user),
        ("Auth-Pass", pass),
        ("Auth-Protocol", "pop3"),
        ("Auth-Login-Attempt", "1"),
        ("Client-IP", client),
        ("X-Pop3d-Key", key),
        ("Auth-SSL", "on"),
    ]
}

/// Asks until the node's heartbeat is in the table (the endpoint answers "no mail server"
/// before), at most 20 seconds.
fn ask_until_routed(n: &Node, req: &[(&str, &str)]) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = ask(n.auth_http, req);
        if header(&h, "auth-status") == Some("OK") || Instant::now() > deadline {
            return h;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Connects to the proxied listener as nginx does: PROXY protocol v1 header naming `client`.
fn via_proxy(n: &Node, client: &str) -> Client {
    let mut stream = TcpStream::connect(n.proxy).expect("connect");
    stream
        .write_all(format!("PROXY TCP4 {client} 127.0.0.1 40000 110\r\n").as_bytes())
        .expect("PROXY header");
    let c = Client::from_stream(stream);
    assert!(c.greeting.starts_with("+OK"), "{}", c.greeting);
    c
}

#[test]
fn a_plain_login_gets_a_ticket_that_logs_in_once_on_the_named_node() {
    let n = node("authhttp-plain", &[]);
    let h = ask_until_routed(
        &n,
        &plain(&n.key, "ann%40example.org", "tanstaaf", "192.0.2.42"),
    );
    assert_eq!(header(&h, ":status"), Some("HTTP/1.0 200 OK"), "{h:?}");
    assert_eq!(header(&h, "auth-status"), Some("OK"), "{h:?}");
    assert_eq!(header(&h, "auth-server"), Some("127.0.0.1"));
    assert_eq!(
        header(&h, "auth-port"),
        Some(n.proxy.port().to_string().as_str())
    );
    assert_eq!(header(&h, "auth-user"), Some("ann@example.org"));
    let ticket = header(&h, "auth-pass").expect("ticket").to_owned();
    assert!(ticket.starts_with("pop3d-ticket.v1."), "{ticket}");
    assert!(!ticket.contains("tanstaaf"));

    let refused = |mut c: Client| {
        let reply = c.login_refused("ann@example.org", &ticket);
        assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
        c.ok("QUIT");
    };
    // The ticket is no password on the public listener.
    refused(n.server.connect());
    // From another client address than the one it was issued for: refused.
    refused(via_proxy(&n, "192.0.2.99"));

    // As nginx uses it: logged in, no argon2 run, the maildrop there.
    let mut c = via_proxy(&n, "192.0.2.42");
    c.login("ann@example.org", &ticket);
    c.stat_and_quit(1);

    // Once only.
    refused(via_proxy(&n, "192.0.2.42"));
    n.server.await_log("login ticket refused");
    let log = n.server.log();
    assert!(!log.contains("tanstaaf"), "a password reached the log");
}

#[test]
fn failures_get_the_penalty_as_auth_wait_and_requests_need_the_key() {
    let n = node("authhttp-fail", &["--auth-failure-delay", "1"]);
    // Without the key, or with another: 403 and nothing else.
    let h = ask(
        n.auth_http,
        &plain("", "ann@example.org", "tanstaaf", "192.0.2.1"),
    );
    assert_eq!(
        header(&h, ":status"),
        Some("HTTP/1.0 403 Forbidden"),
        "{h:?}"
    );
    assert_eq!(header(&h, "auth-status"), None);
    let h = ask(
        n.auth_http,
        &plain(&"0".repeat(64), "ann@example.org", "tanstaaf", "192.0.2.1"),
    );
    assert_eq!(header(&h, ":status"), Some("HTTP/1.0 403 Forbidden"));

    // Wrong password: -ERR [AUTH] (RFC 3206 section 4) after a growing Auth-Wait.
    let mut waits = Vec::new();
    // (Other wrong passwords each time: a repeated one is a retry, not a guess, and does not
    // grow the penalty.)
    for (attempt, wrong) in [("1", "wrong one"), ("2", "wrong two")] {
        let mut req = plain(&n.key, "ann@example.org", wrong, "192.0.2.7");
        req[4] = ("Auth-Login-Attempt", attempt);
        let h = ask(n.auth_http, &req);
        assert_eq!(
            header(&h, "auth-status"),
            Some("[AUTH] Authentication failed"),
            "{h:?}"
        );
        waits.push(
            header(&h, "auth-wait")
                .expect("Auth-Wait")
                .parse::<u64>()
                .expect("seconds"),
        );
    }
    assert!(waits[0] >= 1 && waits[1] > waits[0], "{waits:?}");
    // An unknown user gets the same answer.
    let h = ask(
        n.auth_http,
        &plain(&n.key, "nobody@example.org", "x", "192.0.2.8"),
    );
    assert_eq!(
        header(&h, "auth-status"),
        Some("[AUTH] Authentication failed")
    );
    // The last attempt nginx may make: no Auth-Wait, so nginx closes the connection.
    let mut req = plain(&n.key, "ann@example.org", "wrong", "192.0.2.7");
    req[4] = ("Auth-Login-Attempt", "3");
    let h = ask(n.auth_http, &req);
    assert_eq!(header(&h, "auth-wait"), None, "{h:?}");
    assert!(header(&h, "auth-status").is_some_and(|s| s.starts_with("[AUTH]")));
    // Not POP3, an unknown method, no Client-IP: refused without a retry.
    let mut req = plain(&n.key, "ann@example.org", "tanstaaf", "192.0.2.9");
    req[3] = ("Auth-Protocol", "imap");
    assert_eq!(header(&ask(n.auth_http, &req), "auth-wait"), None);
    let mut req = plain(&n.key, "ann@example.org", "tanstaaf", "192.0.2.9");
    req[0] = ("Auth-Method", "external");
    let h = ask(n.auth_http, &req);
    assert!(header(&h, "auth-status").is_some_and(|s| s.starts_with("[AUTH]")));
    let mut req = plain(&n.key, "ann@example.org", "tanstaaf", "192.0.2.9");
    req[5] = ("Client-IP", "not an address");
    assert!(header(&ask(n.auth_http, &req), "auth-status").is_some_and(|s| s != "OK"));
    // A malformed request: 400.
    let mut s = TcpStream::connect(n.auth_http).expect("connect");
    s.write_all(b"POST /auth HTTP/1.0\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.0 400"), "{out}");
    drop(n.dir);
}

#[test]
fn cram_md5_through_auth_salt() {
    let n = node("authhttp-cram", &["--legacy-auth"]);
    // nginx sends its own challenge as Auth-Salt and the client's hex digest as Auth-Pass
    // (RFC 2195 section 2). The RFC's own example: tim, tanstaaftanstaaf.
    popadm_ok(
        n.dir.path(),
        &[
            "user",
            "add",
            "tim@example.org",
            "--password-stdin",
            "--legacy-auth",
        ],
        b"tanstaaftanstaaf\n",
    );
    let challenge = "<1896.697170952@postoffice.reston.mci.net>";
    let req = vec![
        ("Auth-Method", "cram-md5"),
        ("Auth-User", "tim@example.org"),
        ("Auth-Pass", "b913a602c7eda7a495b4e6e7334d3890"),
        ("Auth-Salt", challenge),
        ("Auth-Protocol", "pop3"),
        ("Auth-Login-Attempt", "1"),
        ("Client-IP", "192.0.2.42"),
        ("X-Pop3d-Key", n.key.as_str()),
    ];
    let h = ask_until_routed(&n, &req);
    assert_eq!(header(&h, "auth-status"), Some("OK"), "{h:?}");
    let mut bad = req.clone();
    bad[2] = ("Auth-Pass", "00000000000000000000000000000000");
    let h = ask(n.auth_http, &bad);
    assert_eq!(
        header(&h, "auth-status"),
        Some("[AUTH] Authentication failed")
    );
}

/// What the endpoint sends on a connection that sends `request` (nothing if empty) before
/// the endpoint closes it, and how long that took.
fn until_closed(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect auth_http");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    // A connection closed at accept may refuse the write: what counts is what comes back.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (out, start.elapsed())
}

/// Whether a non-comment line of the printed nginx block says `directive`.
fn says(printed: &str, directive: &str) -> bool {
    printed
        .lines()
        .map(str::trim)
        .any(|l| !l.starts_with('#') && l.starts_with(directive))
}

/// RFC 8314 section 3 and RFC 2595 section 2.2 through nginx: by default a password crosses
/// only a TLS link (nginx's `Auth-SSL: on`) or a loopback client's, the printed nginx block
/// says `starttls only`, and APOP and CRAM-MD5 need `--legacy-auth`; the operator's explicit
/// `--auth-http-cleartext always` lifts the TLS rule on both sides.
#[test]
fn rfc8314_passwords_through_nginx_need_tls_and_legacy_methods_need_legacy_auth() {
    let n = node("authhttp-policy", &[]);
    assert!(says(&n.printed, "starttls only;"), "{}", n.printed);
    assert!(says(&n.printed, "ssl_certificate "), "{}", n.printed);
    let tls = plain(&n.key, "ann@example.org", "tanstaaf", "192.0.2.42");
    assert_eq!(
        header(&ask_until_routed(&n, &tls), "auth-status"),
        Some("OK")
    );
    // The same login from a client whose link to nginx is cleartext: refused for good.
    let cleartext: Vec<_> = tls
        .iter()
        .filter(|(k, _)| *k != "Auth-SSL")
        .copied()
        .collect();
    let h = ask(n.auth_http, &cleartext);
    let status = header(&h, "auth-status").unwrap_or_default();
    assert!(status.starts_with("[AUTH] Cleartext"), "{h:?}");
    assert_eq!(header(&h, "auth-wait"), None, "{h:?}");
    // A loopback client (the default policy, as on the POP3 listeners).
    let mut local = cleartext.clone();
    local[5] = ("Client-IP", "127.0.0.1");
    assert_eq!(header(&ask(n.auth_http, &local), "auth-status"), Some("OK"));
    // APOP and CRAM-MD5 are not offered without --legacy-auth, and not taken either.
    for method in ["apop", "cram-md5"] {
        let mut req = tls.clone();
        req[0] = ("Auth-Method", method);
        req.push(("Auth-Salt", "<1896.697170952@postoffice.reston.mci.net>"));
        let h = ask(n.auth_http, &req);
        assert_eq!(
            header(&h, "auth-status"),
            Some("[AUTH] Unsupported authentication method"),
            "{method}: {h:?}"
        );
    }
    assert!(!n.printed.contains("apop"), "{}", n.printed);

    let open = node("authhttp-cleartext", &["--auth-http-cleartext", "always"]);
    assert!(!says(&open.printed, "starttls only;"), "{}", open.printed);
    let mut cleartext = plain(&open.key, "ann@example.org", "tanstaaf", "192.0.2.42");
    cleartext.pop();
    assert_eq!(
        header(&ask_until_routed(&open, &cleartext), "auth-status"),
        Some("OK")
    );
}

/// The endpoint cannot be starved: a peer outside `--auth-http-allow` is closed at accept,
/// unanswered; a connection that sends no request is closed after 2 seconds; and beyond
/// the 256 requests in hand a connection is closed at once instead of waiting in accept.
#[test]
fn the_endpoint_serves_allowed_peers_only_and_sheds_load_at_once() {
    let request = |key: &str| {
        let mut r = String::from("GET /auth HTTP/1.0\r\nHost: localhost\r\n");
        for (k, v) in plain(key, "ann@example.org", "tanstaaf", "192.0.2.42") {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    // Loopback is not in this node's allow-list.
    let other = node("authhttp-allow", &["--auth-http-allow", "192.0.2.1/32"]);
    let (out, took) = until_closed(other.auth_http, &request(&other.key));
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    other.server.await_log("not in auth_http_allow");

    let n = node("authhttp-shed", &[]);
    // Silence: closed after the request timeout, not 10 seconds.
    let (out, took) = until_closed(n.auth_http, b"");
    assert!(out.is_empty());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // 256 silent connections hold every slot: the next is closed at once, unanswered.
    let held: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(n.auth_http).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (out, took) = until_closed(n.auth_http, &request(&n.key));
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    drop(held);
    // Once they are gone, requests are answered again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, _) = until_closed(n.auth_http, &request(&n.key));
        if out.starts_with(b"HTTP/1.0 200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
