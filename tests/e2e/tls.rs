//! TLS end to end: POP3S (RFC 8314), STLS (RFC 2595) with the injection test, the cleartext
//! policy, CAPA per listener kind and state, SNI, SIGHUP reload, and the config file.
//! Clients: curl (`pop3s://` with `--cacert`) and Python's poplib/ssl (tests/e2e/pop3_client.py).

use std::path::Path;
use std::process::Command;

use e2e::{crlf, Fixture, Server, TempDir};

const PW: &str = "tls pass";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/pop3_client.py");

fn python() -> bool {
    e2e::client_available("python3", "--version")
}

/// Replies of one scripted session: (status line, body lines if multi-line).
struct Run {
    cert_sha256: Option<String>,
    replies: Vec<(String, Option<Vec<String>>)>,
}

/// Runs pop3_client.py; `mode` is plain, tls, stls or inject.
fn client(port: u16, mode: &str, cafile: &Path, sni: Option<&str>, cmds: &[&str]) -> Run {
    try_client(port, mode, cafile, sni, cmds).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`client`], but a failing script (a certificate that does not verify) is an `Err`.
fn try_client(
    port: u16,
    mode: &str,
    cafile: &Path,
    sni: Option<&str>,
    cmds: &[&str],
) -> Result<Run, String> {
    let mut c = Command::new("python3");
    c.arg(SCRIPT)
        .arg("localhost")
        .arg(port.to_string())
        .arg(mode)
        .arg(cafile);
    if let Some(s) = sni {
        c.arg(s);
    }
    let out = c.arg("--").args(cmds).output().expect("run python3");
    if !out.status.success() {
        return Err(format!(
            "pop3_client.py {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let json = String::from_utf8(out.stdout).expect("utf8");
    Ok(parse_run(&json))
}

/// A tiny reader for the script's JSON (strings, nulls and arrays of strings only).
fn parse_run(json: &str) -> Run {
    fn string(s: &str, i: &mut usize) -> String {
        let b = s.as_bytes();
        assert_eq!(b[*i], b'"');
        *i += 1;
        let mut out = String::new();
        while b[*i] != b'"' {
            if b[*i] == b'\\' {
                *i += 1;
                match b[*i] {
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let code = u32::from_str_radix(&s[*i + 1..*i + 5], 16).expect("hex");
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        *i += 4;
                    }
                    c => out.push(c as char),
                }
                *i += 1;
            } else {
                let ch = s[*i..].chars().next().expect("char");
                out.push(ch);
                *i += ch.len_utf8();
            }
        }
        *i += 1;
        out
    }
    let sha = json
        .find("\"cert_sha256\": ")
        .map(|p| p + 15)
        .and_then(|mut i| (json.as_bytes()[i] == b'"').then(|| string(json, &mut i)));
    let mut i = json.find("\"replies\": [").expect("replies") + 12;
    let b = json.as_bytes();
    let mut replies = Vec::new();
    loop {
        while b[i] == b' ' || b[i] == b',' {
            i += 1;
        }
        if b[i] == b']' {
            break;
        }
        assert_eq!(b[i], b'[');
        i += 1;
        let status = string(json, &mut i);
        while b[i] == b' ' || b[i] == b',' {
            i += 1;
        }
        let body = if json[i..].starts_with("null") {
            i += 4;
            None
        } else {
            i += 1;
            let mut lines = Vec::new();
            loop {
                while b[i] == b' ' || b[i] == b',' {
                    i += 1;
                }
                if b[i] == b']' {
                    i += 1;
                    break;
                }
                lines.push(string(json, &mut i));
            }
            Some(lines)
        };
        while b[i] != b']' {
            i += 1;
        }
        i += 1;
        replies.push((status, body));
    }
    Run {
        cert_sha256: sha,
        replies,
    }
}

fn caps(run: &Run, index: usize) -> Vec<String> {
    run.replies[index].1.clone().expect("CAPA body")
}

fn fixture(tag: &str, flags: &[&str]) -> Fixture {
    let f = Fixture::with_flags(tag, flags);
    f.add_user("alice", PW);
    f.deliver("alice", b"Subject: over tls\r\n\r\n.dotted\r\nbody\r\n");
    f
}

#[test]
fn curl_fetches_over_pop3s_with_the_self_signed_certificate() {
    let f = fixture("curl-pop3s", &[]);
    let port = f.server.tls_addr.expect("pop3s listener").port();
    let cert = f.server.self_signed_cert();
    let Some(out) = e2e::curl_pop3s(port, &cert, &format!("alice:{PW}"), "1") else {
        return;
    };
    e2e::assert_success(&out);
    assert_eq!(
        out.stdout,
        crlf(b"Subject: over tls\r\n\r\n.dotted\r\nbody\r\n")
    );
}

#[test]
fn poplib_stls_then_login_and_capa_changes() {
    e2e::require!(python());
    let f = fixture("stls", &[]);
    let cert = f.server.self_signed_cert();
    let port = f.server.addr.port();
    let before = client(port, "plain", &cert, None, &["CAPA"]);
    let plain_caps = caps(&before, 0);
    // RFC 2595 section 4: STLS is offered before TLS.
    assert!(plain_caps.contains(&"STLS".to_string()), "{plain_caps:?}");
    let run = client(
        port,
        "stls",
        &cert,
        Some("localhost"),
        &[
            "CAPA",
            "USER alice",
            &format!("PASS {PW}"),
            "CAPA",
            "STLS",
            "RETR 1",
            "QUIT",
        ],
    );
    assert!(run.cert_sha256.is_some());
    let tls_caps = caps(&run, 0);
    // After TLS STLS is no longer offered; USER is.
    assert!(!tls_caps.contains(&"STLS".to_string()), "{tls_caps:?}");
    assert!(tls_caps.contains(&"USER".to_string()), "{tls_caps:?}");
    assert!(run.replies[2].0.starts_with("+OK"), "{:?}", run.replies[2]);
    // RFC 2449 section 5: after login the user's own values, without the USER tag.
    let tx_caps = caps(&run, 3);
    assert!(
        tx_caps.contains(&"LOGIN-DELAY 0".to_string()),
        "{tx_caps:?}"
    );
    assert!(tx_caps.contains(&"EXPIRE NEVER".to_string()), "{tx_caps:?}");
    // STLS after login is refused.
    assert!(run.replies[4].0.starts_with("-ERR"), "{:?}", run.replies[4]);
    assert_eq!(
        run.replies[5].1.clone().expect("body"),
        ["Subject: over tls", "", ".dotted", "body"]
    );
    // The default minimum is TLS 1.2: a 1.2-only client gets in.
    e2e::run_ok(
        Command::new("python3")
            .arg(SCRIPT)
            .args(["localhost", &port.to_string(), "stls"])
            .arg(&cert)
            .args(["localhost", "--", "CAPA"])
            .env("POP3_MAX_TLS", "1.2"),
    );
}

#[test]
fn plaintext_sent_after_stls_is_discarded() {
    // RFC 2595 section 4 / CVE-2011-0411: "STLS\r\nUSER alice\r\n" in one packet must not
    // leave "USER alice" to be executed inside the TLS session.
    e2e::require!(python());
    let f = fixture("inject", &[]);
    let cert = f.server.self_signed_cert();
    let run = client(
        f.server.addr.port(),
        "inject",
        &cert,
        Some("localhost"),
        &[
            "USER alice",
            &format!("PASS {PW}"),
            "USER alice",
            &format!("PASS {PW}"),
            "QUIT",
        ],
    );
    assert!(
        run.replies[0].0.starts_with("+OK"),
        "STLS: {:?}",
        run.replies[0]
    );
    // The injected USER was dropped: PASS has no user to go with.
    assert!(run.replies[1].0.starts_with("-ERR"), "{:?}", run.replies[1]);
    assert!(run.replies[2].0.starts_with("+OK"));
    assert!(run.replies[3].0.starts_with("+OK"), "{:?}", run.replies[3]);
    // The discard is logged.
    f.server.await_log("discarded");
}

#[test]
fn cleartext_policy_capa_per_listener_and_pop3s() {
    e2e::require!(python());
    let dir = TempDir::new("policy");
    let config = dir.path().join("pop3d.toml");
    std::fs::write(
        &config,
        "[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3\"\ncleartext = \"never\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3s\"\nmin_tls = \"1.3\"\n",
    )
    .expect("write config");
    let server = Server::start(dir.path(), &["--config", config.to_str().expect("utf8")]);
    e2e::add_user(dir.path(), "alice", "tls pass");
    let cert = server.self_signed_cert();
    let plain = server.addr.port();
    // RFC 2595 section 2.2 / RFC 8314 section 3: no cleartext credentials before TLS.
    let run = client(
        plain,
        "plain",
        &cert,
        None,
        &["CAPA", "USER alice", "PASS x"],
    );
    let c = caps(&run, 0);
    assert!(!c.contains(&"USER".to_string()), "{c:?}");
    assert!(c.contains(&"STLS".to_string()), "{c:?}");
    for cap in [
        "TOP",
        "UIDL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "UTF8 USER",
        "LANG",
    ] {
        assert!(c.contains(&cap.to_string()), "{cap} missing from {c:?}");
    }
    assert!(c.contains(&"LOGIN-DELAY 0 USER".to_string()), "{c:?}");
    assert!(c.contains(&"EXPIRE NEVER USER".to_string()), "{c:?}");
    assert!(
        run.replies[1].0.starts_with("-ERR [AUTH] "),
        "{:?}",
        run.replies[1]
    );
    assert!(run.replies[2].0.starts_with("-ERR"), "{:?}", run.replies[2]);
    // The same listener after STLS accepts the login.
    let run = client(
        plain,
        "stls",
        &cert,
        Some("localhost"),
        &["CAPA", "USER alice", &format!("PASS {PW}"), "QUIT"],
    );
    assert!(caps(&run, 0).contains(&"USER".to_string()));
    assert!(run.replies[2].0.starts_with("+OK"), "{:?}", run.replies[2]);
    // POP3S: USER offered, no STLS.
    let tls = server.tls_addr.expect("pop3s").port();
    let run = client(
        tls,
        "tls",
        &cert,
        Some("localhost"),
        &["CAPA", "STLS", "USER alice", &format!("PASS {PW}"), "QUIT"],
    );
    let c = caps(&run, 0);
    assert!(
        c.contains(&"USER".to_string()) && !c.contains(&"STLS".to_string()),
        "{c:?}"
    );
    assert!(run.replies[1].0.starts_with("-ERR"));
    assert!(run.replies[3].0.starts_with("+OK"), "{:?}", run.replies[3]);
}

#[test]
fn tls_garbage_on_the_pop3s_port_harms_nothing() {
    let f = fixture("garbage", &[]);
    let tls = f.server.tls_addr.expect("pop3s");
    let mut s = std::net::TcpStream::connect(tls).expect("connect");
    s.set_read_timeout(Some(e2e::TIMEOUT)).expect("timeout");
    use std::io::{Read, Write};
    let _ = s.write_all(b"USER alice\r\nPASS x\r\n\x16\x03\x01\x00\x05hello");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"+OK"), "no POP3 over a failed handshake");
    // The server still serves.
    let mut c = f.server.login("alice", PW);
    c.ok("QUIT");
}

/// Generates a self-signed certificate for `host` by letting pop3d create one in `dir`.
fn generate_cert(dir: &Path, host: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let server = Server::start(dir, &["--hostname", host]);
    drop(server);
    (dir.join("tls/cert.pem"), dir.join("tls/key.pem"))
}

fn sha256_of_pem(path: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import ssl,hashlib,sys;print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())).hexdigest())")
        .arg(path)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sni_picks_the_certificate_and_sighup_reloads_it() {
    e2e::require!(python());
    let a = TempDir::new("cert-a");
    let b = TempDir::new("cert-b");
    let c = TempDir::new("cert-c");
    let (a_cert, a_key) = generate_cert(a.path(), "a.example.test");
    let (b_cert, b_key) = generate_cert(b.path(), "b.example.test");
    let (c_cert, c_key) = generate_cert(c.path(), "b.example.test");
    let live = TempDir::new("live");
    let b_live_cert = live.path().join("b.pem");
    let b_live_key = live.path().join("b.key");
    std::fs::copy(&b_cert, &b_live_cert).expect("copy");
    std::fs::copy(&b_key, &b_live_key).expect("copy");
    let config = live.path().join("pop3d.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3s\"\n\
             [[certificate]]\ncert = {:?}\nkey = {:?}\n[[certificate]]\ncert = {:?}\nkey = {:?}\n",
            a_cert, a_key, b_live_cert, b_live_key
        ),
    )
    .expect("config");
    let server = Server::start(live.path(), &["--config", config.to_str().expect("utf8")]);
    e2e::add_user(live.path(), "alice", "tls pass");
    let port = server.tls_addr.expect("pop3s").port();
    // SNI chooses; the hostname check of the client proves the right one was sent.
    let run = client(port, "tls", &a_cert, Some("a.example.test"), &["NOOP"]);
    assert_eq!(run.cert_sha256, Some(sha256_of_pem(&a_cert)));
    let run = client(port, "tls", &b_cert, Some("b.example.test"), &["NOOP"]);
    assert_eq!(run.cert_sha256, Some(sha256_of_pem(&b_cert)));

    // Replace b's files and send SIGHUP: new connections get the new certificate.
    std::fs::copy(&c_cert, &b_live_cert).expect("copy");
    std::fs::copy(&c_key, &b_live_key).expect("copy");
    server.signal("HUP");
    let deadline = std::time::Instant::now() + e2e::TIMEOUT;
    loop {
        // Until the reload, the old certificate fails verification against the new one.
        let run = try_client(port, "tls", &c_cert, Some("b.example.test"), &["NOOP"]);
        if run.is_ok_and(|r| r.cert_sha256 == Some(sha256_of_pem(&c_cert))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "certificate not reloaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.await_log("certificates reloaded");
    // A reload that fails keeps the old certificates.
    std::fs::write(&b_live_key, "garbage").expect("write");
    server.signal("HUP");
    let run = client(port, "tls", &c_cert, Some("b.example.test"), &["CAPA"]);
    assert!(run.replies[0].0.starts_with("+OK"));
    assert_eq!(run.cert_sha256, Some(sha256_of_pem(&c_cert)));
    let logged = || server.log().contains("reload failed").then_some(());
    let every = std::time::Duration::from_millis(50);
    e2e::eventually("failed reload not logged", e2e::TIMEOUT, every, logged);
}

#[test]
fn config_file_errors_name_the_key() {
    let dir = TempDir::new("badconfig");
    let config = dir.path().join("pop3d.toml");
    std::fs::write(&config, "idle_timout = 900\n").expect("write");
    let out = Command::new(e2e::bin("pop3d"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("idle_timout") && err.contains("pop3d.toml"),
        "{err}"
    );
}
