//! Real POP3 clients against the real pop3d: curl and Python's poplib. A client that is not
//! installed is skipped with a printed reason (`cargo xtask deps` installs them; CI runs it),
//! unless `E2E_REQUIRE_CLIENTS=1`, which turns a missing client into a failure.

use std::process::Command;

use e2e::{crlf, Fixture};

const PW: &str = "s3cret pass";

fn messages() -> Vec<Vec<u8>> {
    vec![
        b"From: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n.leading dot\r\n".to_vec(),
        b"Subject: two\n\n8-bit \xe9\xe8 and a lone dot:\n.\nend".to_vec(),
    ]
}

fn fixture(tag: &str) -> Fixture {
    Fixture::with_mailbox(tag, &[], "carol@example.org", PW, &messages())
}

fn curl(f: &Fixture, path: &str, extra: &[&str]) -> Vec<u8> {
    let url = format!("pop3://{}{path}", f.server.addr);
    let user = format!("carol@example.org:{PW}");
    e2e::run_ok(e2e::curl().args(["--user", &user]).args(extra).arg(&url)).stdout
}

#[test]
fn curl_lists_retrieves_and_lists_uids() {
    e2e::require!("curl");
    let f = fixture("curl");
    let expected: Vec<Vec<u8>> = messages().iter().map(|m| crlf(m)).collect();
    // LIST: curl prints the listing body.
    let list = String::from_utf8(curl(&f, "/", &[])).expect("utf8");
    assert_eq!(
        list,
        format!("1 {}\r\n2 {}\r\n", expected[0].len(), expected[1].len())
    );
    // RETR: curl un-stuffs and writes the message; byte-exact.
    for (i, m) in expected.iter().enumerate() {
        assert_eq!(
            &curl(&f, &format!("/{}", i + 1), &[]),
            m,
            "message {}",
            i + 1
        );
    }
    // UIDL through a custom request.
    let uidl = String::from_utf8(curl(&f, "/", &["-X", "UIDL"])).expect("utf8");
    let lines: Vec<&str> = uidl.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("1 ") && lines[1].starts_with("2 "));
    // Nothing was deleted by curl's sessions.
    f.server.login("carol@example.org", PW).stat_and_quit(2);
}

#[test]
fn python_poplib_fetches_byte_exact() {
    e2e::require!("python3");
    let f = fixture("poplib");
    let script = r#"
import poplib, sys, json
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
p = poplib.POP3(host, port, timeout=20)
p.user(user)
p.pass_(pw)
count, size = p.stat()
out = {"count": count, "size": size, "uidl": [u.decode() for u in p.uidl()[1]], "capa": sorted(p.capa().keys()), "msgs": []}
for i in range(1, count + 1):
    resp, lines, octets = p.retr(i)
    out["msgs"].append({"hex": b"\r\n".join(lines).hex(), "octets": octets})
top = p.top(1, 0)[1]
out["top"] = b"\r\n".join(top).hex()
p.dele(1)
p.quit()
print(json.dumps(out))
"#;
    let out = e2e::run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(f.server.addr.ip().to_string())
            .arg(f.server.addr.port().to_string())
            .arg("carol@example.org")
            .arg(PW),
    );
    let json = String::from_utf8(out.stdout).expect("utf8");
    let expected: Vec<Vec<u8>> = messages().iter().map(|m| crlf(m)).collect();
    let total: usize = expected.iter().map(Vec::len).sum();
    assert!(
        json.contains(&format!("\"count\": 2, \"size\": {total}")),
        "{json}"
    );
    for m in &expected {
        // poplib returns lines without their CRLF, un-stuffed.
        let joined = &m[..m.len() - 2];
        let hex: String = joined.iter().map(|b| format!("{b:02x}")).collect();
        assert!(json.contains(&hex), "message missing from {json}");
    }
    assert!(json.contains("\"PIPELINING\""), "{json}");
    let top: String = b"From: a@example.org\r\nSubject: one\r\n"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(json.contains(&format!("\"top\": \"{top}")), "{json}");
    // poplib's DELE 1 + QUIT removed exactly one message.
    f.server.login("carol@example.org", PW).stat_and_quit(1);
}
