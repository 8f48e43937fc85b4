//! Kerberos for real: an MIT KDC for a throw-away realm on a loopback port, a service keytab
//! for `pop/localhost`, a ticket from `kinit`, and curl (and mpop, where installed) logging in
//! with SASL GSSAPI (RFC 4752), on a normal listener and on a KPOP listener (Kerberos only).
//!
//! Needs the MIT KDC tools (krb5-kdc, krb5-admin-server, krb5-user) and a pop3d built with the
//! `gssapi` feature (`cargo xtask test` builds it so when libkrb5-dev is installed). Skipped
//! with a printed reason otherwise, unless `E2E_REQUIRE_CLIENTS=1`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{crlf, free_port, popadm_ok, Server, TempDir};

const REALM: &str = "EXAMPLE.TEST";

/// A KDC process, killed (by its PID) on drop.
struct Kdc(Child);

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_kerberos_tools() -> bool {
    ["krb5kdc", "kdb5_util", "kadmin.local", "kinit"]
        .iter()
        .all(|tool| e2e::client_available_on_path(tool))
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .env("KRB5_CONFIG", dir.join("krb5.conf"))
        .env("KRB5_KDC_PROFILE", dir.join("kdc.conf"))
        .env("KRB5CCNAME", format!("FILE:{}", dir.join("cc").display()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback port free for both UDP and TCP (the KDC listens on both, or exits at start).
fn kdc_port() -> u16 {
    (0..50)
        .map(|_| free_port())
        .find(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)).is_ok())
        .expect("a loopback port free for both TCP and UDP")
}

/// Writes krb5.conf and kdc.conf for a KDC on `port`.
fn write_config(dir: &Path, port: u16) {
    let d = dir.display();
    std::fs::write(
        dir.join("krb5.conf"),
        format!(
            "[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n \
             rdns = false\n dns_canonicalize_hostname = false\n udp_preference_limit = 1\n\
             [realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
        ),
    )
    .expect("krb5.conf");
    std::fs::write(
        dir.join("kdc.conf"),
        format!(
            "[kdcdefaults]\n kdc_ports = {port}\n kdc_tcp_ports = {port}\n\
             [realms]\n {REALM} = {{\n  database_name = {d}/principal\n  key_stash_file = {d}/stash\n  \
             acl_file = {d}/kadm5.acl\n }}\n[logging]\n kdc = FILE:{d}/kdc.log\n"
        ),
    )
    .expect("kdc.conf");
}

/// Creates the realm, the principals and keytabs, starts the KDC, gets alice a ticket.
///
/// The KDC binds the wildcard address without SO_REUSEADDR, so a port that is free on
/// 127.0.0.1 can still be refused while earlier tests' connections to it linger in TIME_WAIT
/// (seen after the 2,000-connection flood of hostile.rs): a KDC that exits with "Address
/// already in use" is started again on another port, a few times at most.
fn realm(dir: &Path) -> Kdc {
    write_config(dir, kdc_port());
    std::fs::write(dir.join("kadm5.acl"), "").expect("acl");
    run(
        dir,
        "kdb5_util",
        &["-r", REALM, "-P", "master-password", "create", "-s"],
    );
    let kt = |name: &str| dir.join(name).display().to_string();
    for q in [
        "addprinc -randkey alice".to_string(),
        "addprinc -randkey pop/localhost".to_string(),
        format!("ktadd -k {} pop/localhost", kt("pop.keytab")),
        format!("ktadd -k {} alice", kt("alice.keytab")),
    ] {
        run(dir, "kadmin.local", &["-r", REALM, "-q", &q]);
    }
    for attempt in 1..=5 {
        if attempt > 1 {
            eprintln!("kerberos: the KDC's port was taken; attempt {attempt} on another");
            write_config(dir, kdc_port());
            let _ = std::fs::remove_file(dir.join("kdc.log"));
        }
        if let Some(kdc) = start_kdc(dir, attempt == 5) {
            return kdc;
        }
    }
    unreachable!("the last attempt panics instead of returning None")
}

/// Starts the KDC and waits until kinit gets alice a ticket. `None` when the port turned out
/// to be taken (and this is not the `last` attempt); any other failure panics.
fn start_kdc(dir: &Path, last: bool) -> Option<Kdc> {
    let kt = |name: &str| dir.join(name).display().to_string();
    let kdc = Command::new("krb5kdc")
        .args(["-n", "-r", REALM])
        .env("KRB5_CONFIG", dir.join("krb5.conf"))
        .env("KRB5_KDC_PROFILE", dir.join("kdc.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("krb5kdc");
    let mut kdc = Kdc(kdc);
    // kinit succeeds once the KDC answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = Command::new("kinit")
            .args(["-k", "-t", &kt("alice.keytab"), "alice"])
            .env("KRB5_CONFIG", dir.join("krb5.conf"))
            .env("KRB5CCNAME", format!("FILE:{}", dir.join("cc").display()))
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(kdc);
        }
        let exited = kdc.0.try_wait().ok().flatten();
        let log = std::fs::read_to_string(dir.join("kdc.log")).unwrap_or_default();
        if exited.is_some() && !last && log.contains("Address already in use") {
            return None;
        }
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the KDC did not come up (exit status: {exited:?}); krb5.conf:\n{}\nkdc.log:\n{log}",
            std::fs::read_to_string(dir.join("krb5.conf")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn curl_gssapi(dir: &Path, addr: SocketAddr, path: &str) -> std::process::Output {
    e2e::run(
        e2e::curl()
            // curl offers GSSAPI only for a user name with a realm; it is also sent as the authzid.
            .args([
                "--user",
                "alice@EXAMPLE.TEST:",
                "--login-options",
                "AUTH=GSSAPI",
            ])
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
            .arg(format!("pop3://localhost:{}{path}", addr.port()))
            .env("KRB5_CONFIG", dir.join("krb5.conf"))
            .env("KRB5CCNAME", format!("FILE:{}", dir.join("cc").display())),
    )
}

/// `mpop --auth=gssapi --status-only` with the ticket in the test's credential cache.
fn mpop_gssapi(dir: &Path, addr: SocketAddr) -> std::process::Output {
    let s = e2e::clients::Scratch::new("krb5-mpop");
    let mpop = testbed::mpop_status("localhost", addr.port(), "gssapi", "alice", None);
    e2e::run(
        s.isolate(mpop)
            .env("KRB5_CONFIG", dir.join("krb5.conf"))
            .env("KRB5CCNAME", format!("FILE:{}", dir.join("cc").display())),
    )
}

#[test]
fn curl_logs_in_with_kerberos_and_kpop_accepts_nothing_else() {
    e2e::require!(have_kerberos_tools() && e2e::client_available("curl", "--version"));
    let krb = TempDir::new("krb5");
    let data = TempDir::new("krb5-data");
    let _kdc = realm(krb.path());
    e2e::add_user(data.path(), "alice", "unused pw");
    let msg = b"Subject: kerberos\r\n\r\nvia GSSAPI\r\n";
    popadm_ok(data.path(), &["deliver", "--no-lda-headers", "alice"], msg);
    let keytab = krb.path().join("pop.keytab");
    // pop3d must be built with the gssapi feature.
    let probe = Command::new(e2e::bin("pop3d"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-self-signed",
            "--gssapi-keytab",
        ])
        .arg(&keytab)
        .arg("--data-dir")
        .arg(data.path().join("probe"))
        .args([
            "--idle-timeout",
            "1",
            "--allow-short-idle-timeout",
            "--shutdown-grace",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pop3d");
    let probe_out = {
        let mut child = probe;
        std::thread::sleep(Duration::from_millis(500));
        let _ = child.kill();
        child.wait_with_output().expect("probe")
    };
    if String::from_utf8_lossy(&probe_out.stderr).contains("built without Kerberos") {
        let required = std::env::var("E2E_REQUIRE_CLIENTS").is_ok_and(|v| v == "1");
        assert!(!required, "pop3d was built without the gssapi feature");
        eprintln!("SKIPPED: pop3d was built without the gssapi feature");
        return;
    }
    std::env::set_var("KRB5_CONFIG", krb.path().join("krb5.conf"));
    let server = Server::start(
        data.path(),
        &[
            "--hostname",
            "localhost",
            "--gssapi-keytab",
            keytab.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
            "--listen-kpop",
            "127.0.0.1:0",
        ],
    );
    let kpop = server
        .listeners
        .iter()
        .find(|(kind, _)| kind == "kpop")
        .map(|(_, a)| *a)
        .unwrap_or_else(|| {
            std::thread::sleep(Duration::from_secs(1));
            panic!("kpop listener: {:?}\n{}", server.listeners, server.log())
        });

    // RFC 4752 through curl's GSS-API, on the normal listener: GSSAPI is in CAPA's SASL.
    let mut c = server.connect();
    let caps = c.listing("CAPA");
    assert!(
        caps.iter()
            .any(|l| l.starts_with("SASL ") && l.contains("GSSAPI")),
        "{caps:?}"
    );
    let out = curl_gssapi(krb.path(), server.addr, "/1");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert_eq!(out.stdout, crlf(msg));

    // mpop's GSSAPI (GNU SASL with MIT Kerberos), a second real client of the same mechanism.
    if e2e::client_available("mpop", "--version") {
        let out = mpop_gssapi(krb.path(), server.addr);
        let text = e2e::clients::output_text(&out);
        assert!(
            out.status.success(),
            "mpop GSSAPI: {text}\n{}",
            server.log()
        );
        assert!(text.contains("1 message"), "mpop GSSAPI: {text}");
    }

    // KPOP: Kerberos works, USER/PASS and APOP get [AUTH], CAPA offers GSSAPI only.
    let out = curl_gssapi(krb.path(), kpop, "/1");
    e2e::assert_success(&out);
    let mut k = e2e::Client::connect(kpop);
    let caps = k.listing("CAPA");
    assert!(caps.contains(&"SASL GSSAPI".to_string()), "{caps:?}");
    assert!(!caps.contains(&"USER".to_string()), "{caps:?}");
    assert!(k.err("USER alice").starts_with("-ERR [AUTH] "));
    assert!(k
        .err("APOP alice c4c9334bac560ecc979e58001b3e22fb")
        .starts_with("-ERR [AUTH] "));
    assert!(k.err("AUTH PLAIN AGFsaWNlAHB3").starts_with("-ERR"));
}
