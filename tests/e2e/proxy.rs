//! Proxied listeners (`pop3d --listen-proxy`, `--trusted-proxy`): the real pop3d behind a
//! PROXY protocol header (haproxy's `proxy-protocol.txt`), over loopback. The trusted "proxy"
//! is 127.0.0.2 (connections bind it as their source); 127.0.0.1 is an untrusted peer.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e::{crlf, Client, Fixture, Server};
use socket2::{Domain, Socket, Type};

const PROXY_IP: &str = "127.0.0.2";
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of the proxied listener, as pop3d logged it. pop3d is ready (its READY=1)
/// once it logged its listeners, but the log is read by another thread: wait for the line.
fn proxied_addr(server: &Server) -> SocketAddr {
    let line = e2e::eventually(
        "no proxied listener logged",
        READ_TIMEOUT,
        Duration::from_millis(10),
        || {
            server
                .log()
                .lines()
                .find(|l| l.contains("listening for proxied connections"))
                .map(str::to_owned)
        },
    );
    let start = line.find("addr=").expect("addr field") + 5;
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].parse().expect("listener address")
}

/// A fixture with a plain listener and a proxied one trusting only 127.0.0.2.
fn fixture(tag: &str, extra: &[&str]) -> (Fixture, SocketAddr) {
    let mut flags = vec![
        "--listen",
        "127.0.0.1:0",
        "--listen-proxy",
        "127.0.0.1:0",
        "--trusted-proxy",
        "127.0.0.2/32",
    ];
    flags.extend_from_slice(extra);
    let f = Fixture::with_flags(tag, &flags);
    let addr = proxied_addr(&f.server);
    (f, addr)
}

/// A TCP connection to `addr` from `source` (any port).
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{source}:0").parse().expect("source");
    socket.bind(&from.into()).expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    stream
}

/// A POP3 client whose connection starts with `header`, sent through the trusted proxy.
fn through_proxy(addr: SocketAddr, header: &[u8]) -> Client {
    let mut stream = connect_from(PROXY_IP, addr);
    stream.write_all(header).expect("send the header");
    Client::from_stream(stream)
}

/// True when the server closed `stream` without sending a single byte (a FIN, or a reset
/// because it left the bad header unread).
fn closed_without_a_byte(mut stream: TcpStream) -> bool {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => got.is_empty(),
        Err(e) => panic!("reading: {e} (after {got:?})"),
    }
}

fn v1(src: &str, sport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {sport} 110\r\n").into_bytes()
}

/// Section 2.2: signature, version 2 and command, family 0x11 (TCP over IPv4), length 12,
/// then source address, destination address, source port, destination port.
fn v2(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&u16::try_from(12 + tlvs.len()).expect("len").to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&110u16.to_be_bytes());
    h.extend_from_slice(tlvs);
    h
}

/// The log lines of sessions whose span names `peer` as the client (what fail2ban reads).
fn session_lines(log: &str, peer: &str, message: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(message))
        .filter(|l| {
            l.find("session{")
                .and_then(|s| l[s..].find('}').map(|e| &l[s..s + e]))
                .is_some_and(|span| {
                    span.contains(&format!(" peer={peer}:"))
                        && span.contains(&format!(" proxy={PROXY_IP}:"))
                })
        })
        .count()
}

/// Waits (bounded) until pop3d's log satisfies `done`: lines written as a connection ends
/// may trail what the client sees by a moment (stderr is read by another thread).
fn wait_for_log(server: &Server, what: &str, done: impl Fn(&str) -> bool) {
    let (within, every) = (Duration::from_secs(5), Duration::from_millis(20));
    let missing = format!("no {what} in the log");
    e2e::eventually(&missing, within, every, || {
        done(&server.log()).then_some(())
    });
}

/// Waits until the log holds exactly `want` session lines of `peer` with `message`.
fn wait_for_lines(server: &Server, peer: &str, message: &str, want: usize) {
    let what = format!("{want} lines of {peer} with {message:?}");
    wait_for_log(server, &what, |log| {
        let got = session_lines(log, peer, message);
        assert!(got <= want, "{got} lines, not {what}: {log}");
        got == want
    });
}

/// Sections 2.1 and 2.2: the header's source is the client. The per-client connection cap
/// counts it, not the proxy (two clients through one proxy are not limited together, the
/// same client twice is, whichever header version); logs and the failed-login penalty name
/// it; the cleartext policy is judged on the proxy's link (loopback here, so USER/PASS work).
#[test]
fn the_proxied_client_is_the_client() {
    let (f, addr) = fixture(
        "proxy-client",
        &["--max-connections-per-ip", "2", "--auth-failure-delay", "1"],
    );
    f.add_user("alice@example.org", "secret one");
    f.deliver("alice@example.org", b"Subject: hi\r\n\r\nbody\r\n");

    // Two connections of 192.0.2.1 (v1 and v2), one of 192.0.2.2: all through 127.0.0.2,
    // whose own count would be over the cap of two.
    let mut a = through_proxy(addr, &v1("192.0.2.1", 40001));
    assert!(a.greeting.starts_with("+OK"), "{}", a.greeting);
    let mut a2 = through_proxy(addr, &v2([192, 0, 2, 1], 40002, &[]));
    assert!(a2.greeting.starts_with("+OK"), "{}", a2.greeting);
    let mut b = through_proxy(addr, &v2([192, 0, 2, 2], 40003, &[]));
    assert!(b.greeting.starts_with("+OK"), "{}", b.greeting);
    // A third of 192.0.2.1: over its cap.
    let mut c = through_proxy(addr, &v1("192.0.2.1", 40004));
    assert!(c.greeting.starts_with("-ERR [SYS/TEMP]"), "{}", c.greeting);
    assert!(c.closed());
    // Cleartext login allowed: the TCP link is loopback, though the client is not.
    a.login("alice@example.org", "secret one");
    assert_eq!(a.listing("UIDL").len(), 1);
    a.ok("QUIT");
    assert!(a.closed());
    // Its slot comes back once the session has ended (bounded wait).
    let (within, every) = (Duration::from_secs(5), Duration::from_millis(50));
    e2e::eventually("slot of 192.0.2.1 never freed", within, every, || {
        let mut again = through_proxy(addr, &v1("192.0.2.1", 40005));
        let free = again.greeting.starts_with("+OK");
        free.then(|| again.ok("QUIT"))
    });
    a2.ok("QUIT");
    b.ok("QUIT");

    // Failed-login penalty by proxied client (different accounts and passwords, so only the
    // client's count grows): 1 s, then 2 s for 192.0.2.5; a fresh 1 s for 192.0.2.6.
    let fail = |src: &str, user: &str| {
        let mut c = through_proxy(addr, &v1(src, 40010));
        c.ok(&format!("USER {user}"));
        let start = Instant::now();
        c.err(&format!("PASS wrong {user}"));
        let took = start.elapsed();
        c.ok("QUIT");
        took
    };
    let first = fail("192.0.2.5", "u1@example.org");
    let second = fail("192.0.2.5", "u2@example.org");
    let other = fail("192.0.2.6", "u3@example.org");
    assert!(first >= Duration::from_millis(900), "{first:?}");
    assert!(second >= Duration::from_millis(1900), "{second:?}");
    assert!(other < Duration::from_millis(1900), "{other:?}");

    wait_for_lines(&f.server, "192.0.2.5", "login failed", 2);
    wait_for_lines(&f.server, "192.0.2.6", "login failed", 1);
    wait_for_lines(&f.server, "192.0.2.1", "logged in", 1);
}

/// Section 5: the header is believed only from known sources, so any other peer is closed
/// at once, unanswered; section 2.1/2.2: a sequence that does not exactly match the protocol
/// aborts the connection, and so does a header not seen within a few seconds (section 2).
#[test]
fn untrusted_peers_and_bad_headers_are_closed_unanswered() {
    let (f, addr) = fixture("proxy-refusals", &["--login-timeout", "3"]);

    // 127.0.0.1 is no trusted proxy: closed without a greeting, even with a valid header.
    let mut s = connect_from("127.0.0.1", addr);
    let _ = s.write_all(&v1("192.0.2.1", 1));
    assert!(closed_without_a_byte(s));
    // The plain listener still serves 127.0.0.1.
    let mut plain = f.server.connect();
    plain.ok("QUIT");

    let mut bad_version = v2([192, 0, 2, 1], 1, &[]);
    bad_version[12] = 0x11;
    let mut over_cap = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    over_cap.extend_from_slice(&2000u16.to_be_bytes());
    for header in [
        b"USER alice\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 110\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.01 127.0.0.1 1 110\r\n".to_vec(),
        b"PROXY TCP6 192.0.2.1 127.0.0.1 1 110\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 127.0.0.1 1 110\n".to_vec(),
        [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat(),
        bad_version,
        over_cap,
    ] {
        let mut s = connect_from(PROXY_IP, addr);
        s.write_all(&header).expect("send");
        assert!(
            closed_without_a_byte(s),
            "{:?} got a reply",
            String::from_utf8_lossy(&header)
        );
    }

    // A trusted proxy that sends half a header and stops: closed at the login timeout (3 s
    // here, under the 5 s cap), without a byte.
    let mut s = connect_from(PROXY_IP, addr);
    s.write_all(b"PROXY TCP4 192.0.2.1").expect("send");
    let start = Instant::now();
    assert!(closed_without_a_byte(s));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(8),
        "{waited:?}"
    );

    for line in [
        "not a trusted proxy",
        "bad PROXY header",
        "no PROXY header in time",
    ] {
        wait_for_log(&f.server, line, |log| log.contains(line));
    }
}

/// Section 2: TCP may deliver the header in pieces; the receiver must wait for all of it and
/// must take nothing after it: bytes sent with the header (a pipelined CAPA) are the session's.
/// v2 TLVs are skipped (section 2.2); LOCAL (v2) and UNKNOWN (v1) leave the proxy as the
/// client (sections 2.2 and 2.1).
#[test]
fn split_headers_trailing_bytes_and_local_connections() {
    let (f, addr) = fixture("proxy-split", &[]);

    let tlvs = [0x04, 0x00, 0x02, 0xaa, 0xbb]; // PP2_TYPE_NOOP, section 2.2.4
    for (header, client) in [
        (v1("198.51.100.7", 50001), "198.51.100.7"),
        (v2([198, 51, 100, 8], 50002, &tlvs), "198.51.100.8"),
    ] {
        let mut stream = connect_from(PROXY_IP, addr);
        let cuts = [1, 5, 13, 15, header.len() - 1];
        let mut at = 0;
        for cut in cuts {
            stream.write_all(&header[at..cut]).expect("piece");
            stream.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(30));
            at = cut;
        }
        // The last header byte and a command in one segment.
        stream
            .write_all(&[&header[at..], b"CAPA\r\n"].concat())
            .expect("rest");
        let mut c = Client::from_stream(stream);
        assert!(c.greeting.starts_with("+OK"), "{client}: {}", c.greeting);
        let capa = c.line();
        assert!(capa.starts_with("+OK"), "{client}: {capa}");
        let body = c.body();
        assert!(String::from_utf8_lossy(&body).contains("UIDL"), "{client}");
        c.ok("QUIT");
        wait_for_lines(&f.server, client, "session end", 1);
    }

    let local = {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        h
    };
    for header in [local, b"PROXY UNKNOWN\r\n".to_vec()] {
        let mut c = through_proxy(addr, &header);
        assert!(c.greeting.starts_with("+OK"), "{}", c.greeting);
        c.ok("QUIT");
    }
    wait_for_lines(&f.server, PROXY_IP, "session end", 2);
}

/// A one-connection L4 proxy in the manner of nginx `stream` with `proxy_protocol on`: accepts
/// on `listener`, connects to `upstream` from the trusted 127.0.0.2, sends `header`, then
/// relays both ways until each side closes.
fn relay_once(listener: TcpListener, upstream: SocketAddr, header: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("relay accept: {e}"),
            }
        };
        client.set_nonblocking(false).expect("blocking");
        // Both sides time out, so the relay ends even if a peer never closes.
        client
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        let mut server = connect_from(PROXY_IP, upstream);
        server.write_all(&header).expect("header");
        let pipe = |mut from: TcpStream, mut to: TcpStream| {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        };
        let (c2, s2) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        let up = std::thread::spawn(move || pipe(c2, s2));
        pipe(server, client);
        let _ = up.join();
    })
}

/// The PROXY header goes before the TLS handshake on a POP3S listener (an L4 balancer in
/// front of the public listener): the ClientHello after it is left for TLS (section 2: the
/// receiver takes the header and nothing else), curl logs in over TLS through the relay, and
/// the session's client is the one in the v2 header.
#[test]
fn pop3s_behind_an_l4_proxy() {
    e2e::require!("curl");
    let dir = e2e::TempDir::new("proxy-pop3s");
    let config = dir.path().join("pop3d.toml");
    std::fs::write(
        &config,
        "trusted_proxies = [\"127.0.0.2\"]\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3s\"\nproxy = true\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path");
    let server = Server::start(dir.path(), &["--config", config]);
    let upstream = proxied_addr(&server);
    let message = b"Subject: relayed\r\n\r\nbody\r\n";
    e2e::add_user(dir.path(), "carol", "carol pw");
    e2e::popadm_ok(
        dir.path(),
        &["deliver", "--no-lda-headers", "carol"],
        message,
    );

    let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
    let port = listener.local_addr().expect("relay addr").port();
    let relay = relay_once(listener, upstream, v2([203, 0, 113, 9], 4711, &[]));
    let Some(out) = e2e::curl_pop3s(port, &server.self_signed_cert(), "carol:carol pw", "1") else {
        return;
    };
    e2e::assert_success(&out);
    assert_eq!(out.stdout, crlf(message));
    relay.join().expect("relay");
    wait_for_lines(&server, "203.0.113.9", "logged in", 1);
}
