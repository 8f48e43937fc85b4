//! OAuth 2.0 end to end: pop3d and popadm with `[oauth2]` settings against the test identity
//! provider (`oauth2::test_issuer`: discovery, JWKS and introspection over HTTPS on loopback,
//! a CA and signing keys made at run time, tokens signed here). `popadm oauth2 check` as an
//! operator runs it; pop3d refusing settings that cannot work (exit 64).

use std::path::PathBuf;
use std::process::Output;

use e2e::{bin, popadm, run, TempDir};
use oauth2::test_issuer::{json, now, TestIssuer, AUDIENCE};

/// The issuer with its CA file written to a directory of its own.
struct Idp {
    issuer: TestIssuer,
    _dir: TempDir,
    ca: PathBuf,
}

fn idp(tag: &str) -> Idp {
    let issuer = TestIssuer::start();
    let dir = TempDir::new(tag);
    let ca = issuer.write_ca(dir.path());
    Idp {
        issuer,
        _dir: dir,
        ca,
    }
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
