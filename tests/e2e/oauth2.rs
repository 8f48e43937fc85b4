//! OAuth 2.0 end to end: pop3d and popadm with `[oauth2]` settings against the test identity
//! provider (`oauth2::test_issuer`: discovery, JWKS and introspection over HTTPS on loopback,
//! a CA and signing keys made at run time, tokens signed here). SASL OAUTHBEARER (RFC 7628)
//! and XOAUTH2 on the wire, including the RFC 7628 section 3.2.2 failure exchange and
//! `[SYS/TEMP]` for an unreachable issuer; real clients: curl (`--oauth2-bearer`, over STLS
//! and POP3S), mpop (`auth oauthbearer` and `auth xoauth2` with `passwordeval`), fetchmail
//! where its version supports OAuth (6.4 does not); `popadm oauth2 check` as an operator runs
//! it; pop3d refusing settings that cannot work (exit 64).

use std::path::PathBuf;
use std::process::Output;

use base64::Engine as _;
use e2e::clients::{output_text, Scratch};
use e2e::{assert_fetched, bin, curl, popadm, run, Fixture, TempDir};
use oauth2::test_issuer::{json, now, TestIssuer, Value, AUDIENCE};

const MSG: &[u8] = b"Subject: single sign-on\r\n\r\nlogged in with a token\r\n";
const ALICE: &str = "alice@example.org";

/// The issuer with its CA file written to a directory of its own.
struct Idp {
    issuer: TestIssuer,
    dir: TempDir,
    ca: PathBuf,
}

fn idp(tag: &str) -> Idp {
    let issuer = TestIssuer::start();
    let dir = TempDir::new(tag);
    let ca = issuer.write_ca(dir.path());
    Idp { issuer, dir, ca }
}

impl Idp {
    /// pop3d's and popadm's flags for this issuer.
    fn flags(&self) -> Vec<String> {
        vec![
            "--oauth2-issuer".into(),
            self.issuer.issuer().into(),
            "--oauth2-audience".into(),
            AUDIENCE.into(),
            "--oauth2-ca-file".into(),
            self.ca.display().to_string(),
        ]
    }

    fn token(&self, email: &str) -> String {
        self.issuer.token(&self.issuer.claims(email))
    }
}

/// pop3d with this issuer's settings, `alice@example.org` holding [`MSG`].
fn server(tag: &str, idp: &Idp) -> Fixture {
    let flags = idp.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let f = Fixture::with_flags(tag, &flags);
    f.add_user(ALICE, "a password nobody types");
    f.deliver(ALICE, MSG);
    f
}

/// RFC 7628 section 3.1: the client response `n,a=USER,^Aauth=Bearer TOKEN^A^A`.
fn oauthbearer(user: &str, token: &str) -> String {
    e2e::base64(format!("n,a={user},\x01auth=Bearer {token}\x01\x01").as_bytes())
}

fn b64_json(line: &str) -> Value {
    let payload = line.strip_prefix("+ ").expect("a continuation");
    let json = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .expect("base64");
    oauth2::test_issuer::parse_json(&json)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `popadm oauth2 check --token-stdin` with the real binary: the account a token logs in as,
/// or why not, with its exit code; the token never in the output.
#[test]
fn popadm_oauth2_check_names_the_account_or_the_refusal() {
    let idp = idp("oauth2-check-idp");
    let data = TempDir::new("oauth2-check");
    e2e::add_user(data.path(), "alice@example.org", "unused password");
    let check = |flags: &[String], token: &str| -> Output {
        let mut args = vec!["oauth2", "check", "--token-stdin"];
        args.extend(flags.iter().map(String::as_str));
        popadm(data.path(), &args, format!("{token}\n").as_bytes())
    };
    let token = idp.token("alice@example.org");
    let out = check(&idp.flags(), &token);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("account: alice@example.org"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(&token));

    // A valid token for nobody here: 67, as for an unknown user elsewhere.
    let out = check(&idp.flags(), &idp.token("mallory@example.org"));
    assert_eq!(out.status.code(), Some(67), "{}", text(&out));
    assert!(text(&out).contains("names no account"), "{}", text(&out));
    // The claim a token lacks (Microsoft's `upn` on a Keycloak token): refused, 77.
    let mut flags = idp.flags();
    flags.extend(["--oauth2-username-claim".into(), "upn".into()]);
    let out = check(&flags, &token);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("upn"), "{}", text(&out));
    // Expired.
    let mut claims = idp.issuer.claims("alice@example.org");
    claims["exp"] = json!(now() - 3600);
    let out = check(&idp.flags(), &idp.issuer.token(&claims));
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("expired"), "{}", text(&out));
    // Settings from pop3d's configuration file.
    let config = data.path().join("pop3d.toml");
    std::fs::write(
        &config,
        format!(
            "[oauth2]\nissuer = {:?}\naudience = [\"{AUDIENCE}\"]\nca_file = {:?}\n",
            idp.issuer.issuer(),
            idp.ca.display().to_string()
        ),
    )
    .expect("config");
    let out = check(&["--config".into(), config.display().to_string()], &token);
    assert!(out.status.success(), "{}", text(&out));
}

/// Settings that cannot work stop pop3d before it binds anything, with EX_USAGE.
#[test]
fn pop3d_refuses_oauth2_settings_that_cannot_work() {
    let data = TempDir::new("oauth2-bad-settings");
    for (args, needle) in [
        (
            vec![
                "--oauth2-issuer",
                "http://sso.example.org/realms/mail",
                "--oauth2-audience",
                "pop3",
            ],
            "https://",
        ),
        (
            vec!["--oauth2-issuer", "https://sso.example.org"],
            "audience",
        ),
        (
            vec![
                "--oauth2-issuer",
                "https://sso.example.org",
                "--oauth2-audience",
                "pop3",
                "--oauth2-ca-file",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
    ] {
        let out = run(std::process::Command::new(bin("pop3d"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(&args));
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
}

/// RFC 7628 on the wire with the real validator: CAPA lists both mechanisms; a good token logs
/// in with either; a refused one gets the section 3.2.2 error document (issuer's discovery
/// URL), then `-ERR [AUTH]` after the client's `AQ==`; an issuer that cannot be reached is
/// `-ERR [SYS/TEMP]`, not the user's fault.
#[test]
fn rfc7628_oauthbearer_and_xoauth2_with_the_real_validator() {
    let mut idp = idp("oauth2-wire-idp");
    let f = server("oauth2-wire", &idp);
    // pop3d fetched the keys at start, before any login.
    f.server.await_log("OAuth 2.0: signing keys fetched");
    assert_eq!(idp.issuer.requests(oauth2::test_issuer::JWKS_PATH), 1);
    let token = idp.token(ALICE);
    // Cleartext logins are allowed on loopback (the default policy), so CAPA offers them here.
    let mut c = f.server.connect();
    c.send("CAPA");
    let capa = String::from_utf8_lossy(&c.body()).into_owned();
    let sasl = capa
        .lines()
        .find(|l| l.starts_with("SASL"))
        .unwrap_or_default();
    assert!(
        sasl.contains("OAUTHBEARER") && sasl.contains("XOAUTH2"),
        "{capa}"
    );
    c.ok(&format!("AUTH OAUTHBEARER {}", oauthbearer(ALICE, &token)));
    c.ok("STAT");
    c.ok("QUIT");

    let xoauth2 = e2e::base64(format!("user={ALICE}\x01auth=Bearer {token}\x01\x01").as_bytes());
    let mut c = f.server.connect();
    c.ok(&format!("AUTH XOAUTH2 {xoauth2}"));
    c.ok("QUIT");

    // Expired: the error document, then -ERR [AUTH] once the client sends ^A.
    let mut claims = idp.issuer.claims(ALICE);
    claims["exp"] = json!(now() - 3600);
    let expired = idp.issuer.token(&claims);
    let mut c = f.server.connect();
    let challenge = c.cmd(&format!(
        "AUTH OAUTHBEARER {}",
        oauthbearer(ALICE, &expired)
    ));
    let doc = b64_json(&challenge);
    assert_eq!(doc["status"], "invalid_token", "{doc}");
    assert_eq!(
        doc["openid-configuration"],
        format!("{}/.well-known/openid-configuration", idp.issuer.issuer())
    );
    assert!(c.err("AQ==").starts_with("-ERR [AUTH]"));
    // The log says why, and never carries a token.
    f.server.await_log("bearer token refused");
    assert!(!f.server.log().contains(&expired) && !f.server.log().contains(&token));

    // RFC 8725 section 2.1: an unsigned token, and an HS256 one keyed with the issuer's RSA
    // public key (algorithm confusion), are refused like any bad token.
    let key = idp.issuer.current();
    let mut forged = vec![oauth2::test_issuer::unsigned(&idp.issuer.claims(ALICE))];
    for secret in key.rsa_public_forms() {
        let header = json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"});
        forged.push(oauth2::test_issuer::sign_hs256(
            &secret,
            &header,
            &idp.issuer.claims(ALICE),
        ));
    }
    for token in &forged {
        let mut c = f.server.connect();
        let challenge = c.cmd(&format!("AUTH OAUTHBEARER {}", oauthbearer(ALICE, token)));
        assert_eq!(b64_json(&challenge)["status"], "invalid_token");
        assert!(c.err("AQ==").starts_with("-ERR [AUTH]"));
    }

    // The issuer down when a pop3d starts: it says so in its log, and logins get [SYS/TEMP].
    idp.issuer.stop();
    let g = server("oauth2-wire-down", &idp);
    g.server
        .await_log("OAuth 2.0: the signing keys could not be fetched");
    let mut c = g.server.connect();
    let reply = c.cmd(&format!("AUTH OAUTHBEARER {}", oauthbearer(ALICE, &token)));
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    // The first pop3d keeps its cached keys: it still logs the token in.
    let mut c = f.server.connect();
    c.ok(&format!("AUTH OAUTHBEARER {}", oauthbearer(ALICE, &token)));
}

/// curl with `--oauth2-bearer` picks OAUTHBEARER (or XOAUTH2) as CAPA offers it: over STLS
/// (`--ssl-reqd`) and POP3S, with pop3d's self-signed certificate.
#[test]
fn curl_oauth2_bearer_over_stls_and_pop3s() {
    e2e::require!("curl");
    let idp = idp("oauth2-curl-idp");
    let f = server("oauth2-curl", &idp);
    let token = idp.token(ALICE);
    let cert = f.server.self_signed_cert();
    let fetch = |scheme: &str, port: u16, token: &str, extra: &[&str]| {
        run(curl()
            .arg("--verbose")
            .arg("--cacert")
            .arg(&cert)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["--user", ALICE])
            .args(["--oauth2-bearer", token])
            .args(extra)
            .arg(format!("{scheme}://localhost:{port}/1")))
    };
    let (plain, tls) = (
        f.server.addr.port(),
        f.server.tls_addr.expect("pop3s").port(),
    );
    let stls = fetch("pop3", plain, &token, &["--ssl-reqd"]);
    assert_fetched(&stls, MSG);
    let pop3s = fetch("pop3s", tls, &token, &[]);
    assert_fetched(&pop3s, MSG);
    for out in [&stls, &pop3s] {
        let said = String::from_utf8_lossy(&out.stderr);
        // What curl sent, cut short (for the record in docs/authentication.md).
        let sent: Vec<String> = said
            .lines()
            .filter(|l| l.starts_with("> "))
            .map(|l| l.chars().take(24).collect())
            .collect();
        eprintln!("curl sent: {sent:?}");
        assert!(
            said.contains("> AUTH OAUTHBEARER"),
            "curl chose another mechanism: {said}"
        );
        assert!(!said.contains("> USER"), "{said}");
    }
    // A refused token: curl fails, and the message stays.
    let mut claims = idp.issuer.claims(ALICE);
    claims["aud"] = json!("webmail");
    let bad = idp.issuer.token(&claims);
    let out = fetch("pop3s", tls, &bad, &[]);
    assert!(!out.status.success(), "{}", text(&out));
}

/// mpop (GNU SASL's OAUTHBEARER and XOAUTH2, built in) with the token from `passwordeval`,
/// over POP3S and STLS.
#[test]
fn mpop_oauthbearer_and_xoauth2_with_passwordeval() {
    e2e::require!("mpop");
    let idp = idp("oauth2-mpop-idp");
    let f = server("oauth2-mpop", &idp);
    let token_file = f.data().join("token");
    std::fs::write(&token_file, idp.token(ALICE)).expect("token file");
    let cert = format!("--tls-trust-file={}", f.server.self_signed_cert().display());
    for (auth, port, starttls) in [
        (
            "oauthbearer",
            f.server.tls_addr.expect("pop3s").port(),
            "off",
        ),
        ("xoauth2", f.server.addr.port(), "on"),
        ("xoauth2", f.server.tls_addr.expect("pop3s").port(), "off"),
        ("oauthbearer", f.server.addr.port(), "on"),
    ] {
        let s = Scratch::new(&format!("oauth2-mpop-{auth}-{starttls}"));
        let out = s
            .isolate(testbed::mpop("127.0.0.1", port, auth, ALICE))
            .args(["--keep=on", "--received-header=off", "--tls=on"])
            .arg(format!("--tls-starttls={starttls}"))
            .arg(&cert)
            .arg("--tls-host-override=localhost")
            .arg(format!("--passwordeval=cat {}", token_file.display()))
            .arg(format!("--delivery=mda,{}", s.mda()))
            .arg(format!("--uidls-file={}", s.path("uidls").display()))
            .output()
            .expect("run mpop");
        assert!(
            out.status.success(),
            "mpop {auth} (STLS {starttls}): {}",
            output_text(&out)
        );
        assert_eq!(s.delivered().len(), 1, "mpop {auth}: {}", output_text(&out));
    }
}

/// fetchmail: OAUTHBEARER and XOAUTH2 where its version has them. Debian 12's 6.4.37 has
/// neither (`Invalid authentication`), which this test reports and accepts.
#[test]
fn fetchmail_oauth_where_supported() {
    e2e::require!("fetchmail");
    let probe = run(std::process::Command::new("fetchmail")
        .args(["--auth", "oauthbearer", "--version"])
        .env("HOME", std::env::temp_dir()));
    if text(&probe).contains("Invalid authentication") {
        eprintln!("fetchmail_oauth_where_supported: this fetchmail has no OAuth support; skipped");
        return;
    }
    let idp = idp("oauth2-fetchmail-idp");
    let f = server("oauth2-fetchmail", &idp);
    let s = Scratch::new("oauth2-fetchmail-run");
    let out = e2e::clients::fetchmail_with(
        &s,
        &format!(
            "poll 127.0.0.1 protocol pop3 port {} auth oauthbearer user \"{ALICE}\" \
             password \"{}\" ssl sslcertck sslcertfile {} keep mda \"{}\"",
            f.server.tls_addr.expect("pop3s").port(),
            idp.token(ALICE),
            f.server.self_signed_cert().display(),
            s.mda()
        ),
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));
}

/// RFC 7662: an opaque token is introspected with pop3d's client credentials (read from the
/// secret file at start); `active: true` logs in as its claim, `active: false` is `[AUTH]`.
#[test]
fn rfc7662_opaque_tokens_are_introspected() {
    let idp = idp("oauth2-introspect-idp");
    let secret = idp.issuer.write_client_secret(idp.dir.path());
    let mut flags = idp.flags();
    flags.extend([
        "--oauth2-introspection-url".into(),
        idp.issuer.introspection_url(),
        "--oauth2-client-id".into(),
        oauth2::test_issuer::CLIENT_ID.into(),
        "--oauth2-client-secret-file".into(),
        secret.display().to_string(),
    ]);
    // Trace level: not even there may a token or the client secret appear.
    flags.extend(["--log".into(), "trace".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let f = Fixture::with_flags("oauth2-introspect", &flags);
    f.add_user(ALICE, "a password nobody types");
    idp.issuer.set_introspection(
        "opaque-active",
        json!({"active": true, "email": ALICE, "aud": AUDIENCE, "exp": now() + 300}),
    );
    idp.issuer
        .set_introspection("opaque-revoked", json!({"active": false}));
    let xoauth2 = |token: &str| {
        e2e::base64(format!("user={ALICE}\x01auth=Bearer {token}\x01\x01").as_bytes())
    };
    let mut c = f.server.connect();
    c.ok(&format!("AUTH XOAUTH2 {}", xoauth2("opaque-active")));
    c.ok("QUIT");
    let mut c = f.server.connect();
    let challenge = c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2("opaque-revoked")));
    assert_eq!(b64_json(&challenge)["status"], "invalid_token");
    // XOAUTH2's client answers the error with an empty line.
    assert!(c.err("").starts_with("-ERR [AUTH]"));
    assert_eq!(idp.issuer.requests(oauth2::test_issuer::INTROSPECT_PATH), 2);
    let log = f.server.log();
    for secret in [
        "opaque-active",
        "opaque-revoked",
        oauth2::test_issuer::CLIENT_SECRET,
    ] {
        assert!(!log.contains(secret), "{secret:?} logged");
    }
    f.server.await_log("bearer token refused");
}
