//! Observability of the real pop3d: the Prometheus endpoint (`--metrics`), scraped with curl
//! before and after known sessions, and the one summary line each session ends with, in both
//! log formats.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use e2e::{Fixture, Server};

const MESSAGE: &[u8] = b"Subject: metrics\r\n\r\nline one\r\nline two\r\n";

/// The metrics endpoint's address, as pop3d's readiness status names it.
fn metrics_addr(server: &Server) -> SocketAddr {
    server.listener("metrics")
}

/// `GET /metrics` with curl: every sample, by its series (name and labels as exported).
fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let out = e2e::run_ok(
        e2e::curl()
            .arg("--fail")
            .arg(format!("http://{addr}/metrics")),
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect();
    (text, samples)
}

/// A whole session over a raw socket: `script` sent at once (RFC 2449 PIPELINING), every
/// octet the server writes until it closes.
fn session(addr: SocketAddr, script: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(e2e::TIMEOUT)).expect("timeout");
    s.write_all(script.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read to the close");
    out
}

/// Waits until the log holds `n` lines containing `needle`.
fn await_lines(server: &Server, needle: &str, n: usize) {
    e2e::eventually(
        &format!("{n} lines with {needle:?}"),
        e2e::TIMEOUT,
        Duration::from_millis(10),
        || (server.log().matches(needle).count() >= n).then_some(()),
    );
}

/// Four sessions (a login, a failed login, a RETR, a DELE with QUIT) move the counters by
/// exactly what they did; the octets counted are the octets the clients read. `promtool
/// check metrics` accepts the output where Prometheus' tools are installed.
#[test]
fn counters_move_by_exactly_what_the_sessions_did() {
    let f = Fixture::with_mailbox(
        "metrics",
        &["--metrics", "127.0.0.1:0"],
        "alice",
        "pw",
        &[MESSAGE.to_vec(), MESSAGE.to_vec()],
    );
    let addr = metrics_addr(&f.server);
    let (_, before) = scrape(addr);
    let pop3 = f.server.addr;
    let mut octets = 0;
    let mut run = |script: &str| {
        let got = session(pop3, script);
        octets += got.len();
        String::from_utf8(got).expect("utf-8")
    };
    let login = run("USER alice\r\nPASS pw\r\nSTAT\r\nQUIT\r\n");
    assert!(login.contains("+OK 2 "), "{login}");
    let failed = run("USER alice\r\nPASS wrong\r\nQUIT\r\n");
    assert!(failed.contains("-ERR [AUTH]"), "{failed}");
    let retr = run("USER alice\r\nPASS pw\r\nRETR 1\r\nQUIT\r\n");
    assert!(retr.contains("line two\r\n.\r\n"), "{retr}");
    let dele = run("USER alice\r\nPASS pw\r\nDELE 1\r\nXYZZY\r\nQUIT\r\n");
    assert!(dele.contains("(1 messages deleted, 1 left)"), "{dele}");
    // Counted before each session's close; the gauge drops just after its summary line.
    await_lines(&f.server, "session end", 4);
    let (text, after) = scrape(addr);
    let delta = |series: &str| {
        let now = after.get(series).copied().unwrap_or(0.0);
        now - before.get(series).copied().unwrap_or(0.0)
    };
    let command = |c: &str| format!(r#"pop3d_commands_total{{command="{c}"}}"#);
    let login = |r: &str| format!(r#"pop3d_logins_total{{mechanism="USER",result="{r}"}}"#);
    let store =
        |op: &str| format!(r#"pop3d_store_call_duration_seconds_count{{operation="{op}"}}"#);
    let want = [
        (
            r#"pop3d_connections_accepted_total{listener="pop3+stls"}"#.to_owned(),
            4.0,
        ),
        (login("success"), 3.0),
        (login("failure"), 1.0),
        (command("USER"), 4.0),
        (command("PASS"), 4.0),
        (command("STAT"), 1.0),
        (command("RETR"), 1.0),
        (command("DELE"), 1.0),
        (command("QUIT"), 4.0),
        (command("unknown"), 1.0),
        (command("TOP"), 0.0),
        ("pop3d_messages_retrieved_total".to_owned(), 1.0),
        ("pop3d_messages_deleted_total".to_owned(), 1.0),
        (r#"pop3d_updates_total{result="committed"}"#.to_owned(), 3.0),
        (r#"pop3d_updates_total{result="failed"}"#.to_owned(), 0.0),
        ("pop3d_in_use_refusals_total".to_owned(), 0.0),
        // The first login and the wrong password run argon2; the later logins hit the cache.
        ("pop3d_credential_cache_misses_total".to_owned(), 2.0),
        ("pop3d_credential_cache_hits_total".to_owned(), 2.0),
        ("pop3d_hash_duration_seconds_count".to_owned(), 2.0),
        ("pop3d_hash_queue_wait_seconds_count".to_owned(), 2.0),
        ("pop3d_auth_penalties_total".to_owned(), 0.0),
        (store("account"), 4.0),
        (store("lock_maildrop"), 3.0),
        (store("commit_update"), 2.0),
        ("pop3d_sent_octets_total".to_owned(), octets as f64),
        (
            r#"pop3d_tls_handshake_failures_total{listener="pop3s"}"#.to_owned(),
            0.0,
        ),
    ];
    for (series, value) in want {
        assert_eq!(delta(&series), value, "{series}:\n{text}");
    }
    assert_eq!(after.get("pop3d_sessions_active"), Some(&0.0), "{text}");
    let version = r#"pop3d_build_info{version=""#;
    assert!(text.contains(version), "{text}");
    for result in [
        "delivered",
        "unknown_recipient",
        "over_quota",
        "too_large",
        "temp_failure",
    ] {
        let series = format!(r#"pop3d_lmtp_deliveries_total{{result="{result}"}}"#);
        assert_eq!(
            after.get(&series),
            Some(&0.0),
            "{series} registered:\n{text}"
        );
    }
    if e2e::client_available("promtool", "--version") {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        e2e::assert_success(&out);
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    }
}

/// Nothing but GET (or HEAD) /metrics is served; the endpoint is not a web server.
#[test]
fn only_get_metrics_is_served() {
    let dir = e2e::TempDir::new("metricsroutes");
    let server = Server::start(dir.path(), &["--metrics", "127.0.0.1:0"]);
    let url = format!("http://{}", metrics_addr(&server));
    let status = |args: &[&str], path: &str| {
        let out = e2e::run_ok(
            e2e::curl()
                .args(["-o", "/dev/null", "-w", "%{http_code}"])
                .args(args)
                .arg(format!("{url}{path}")),
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    assert_eq!(status(&[], "/metrics"), "200");
    assert_eq!(status(&["--head"], "/metrics"), "200");
    assert_eq!(status(&[], "/"), "404");
    assert_eq!(status(&[], "/metrics/../etc/passwd"), "404");
    assert_eq!(status(&["-X", "POST", "-d", "x"], "/metrics"), "405");
}

/// A non-loopback address needs the operator's word: the counters reveal account activity.
#[test]
fn a_remote_metrics_address_is_refused_unless_allowed() {
    let dir = e2e::TempDir::new("metricsremote");
    let out = e2e::run(&mut Server::command(
        dir.path(),
        &["--metrics", "0.0.0.0:0"],
    ));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-allow-remote"), "{err}");
    let server = Server::start(
        dir.path(),
        &["--metrics", "0.0.0.0:0", "--metrics-allow-remote"],
    );
    let port = metrics_addr(&server).port();
    scrape(SocketAddr::from(([127, 0, 0, 1], port)));
}

/// The summary line of a session whose log line contains `reason`, from `server`'s log.
fn summary(server: &Server, reason: &str) -> String {
    server.await_log(reason);
    server
        .log()
        .lines()
        .find(|l| l.contains("session end") && l.contains(reason))
        .map(str::to_owned)
        .expect("the summary line")
}

/// Runs the same three sessions against a pop3d logging in `format`: a full one ending in
/// QUIT (RFC 1939 section 6), one whose client vanishes and one left idle past the idle
/// timeout (RFC 1939 section 3's autologout); returns their summary lines.
fn three_summaries(format: &str, reason: impl Fn(&str) -> String) -> [String; 3] {
    let f = Fixture::with_mailbox(
        &format!("summary{format}"),
        &[
            "--log-format",
            format,
            "--idle-timeout",
            "1",
            "--allow-short-idle-timeout",
        ],
        "alice",
        "pw",
        &[MESSAGE.to_vec(), MESSAGE.to_vec()],
    );
    let quit = session(
        f.server.addr,
        "USER alice\r\nPASS pw\r\nRETR 1\r\nTOP 2 0\r\nDELE 2\r\nNOOP\r\nQUIT\r\n",
    );
    assert!(String::from_utf8_lossy(&quit).contains("(1 messages deleted"));
    let quit = summary(&f.server, &reason("quit"));
    let mut c = f.server.login_when_free("alice", "pw");
    c.ok("RETR 1");
    c.body();
    c.drop_connection();
    let vanished = summary(&f.server, &reason("client_vanished"));
    let _idle = f.server.login_when_free("alice", "pw");
    let idle = summary(&f.server, &reason("idle_timeout"));
    [quit, vanished, idle]
}

#[test]
fn every_session_ends_with_one_summary_line_of_fields() {
    let size = MESSAGE.len();
    let [quit, vanished, idle] = three_summaries("text", |r| format!("reason={r}"));
    for field in [
        "user=\"alice\"".to_owned(),
        "peer=127.0.0.1:".to_owned(),
        "mechanism=USER".to_owned(),
        "tls=false".to_owned(),
        "duration_ms=".to_owned(),
        "commands=7".to_owned(),
        "retrieved=1".to_owned(),
        format!("retrieved_octets={size}"),
        "top=1".to_owned(),
        "deleted=1".to_owned(),
        "update=committed".to_owned(),
    ] {
        assert!(quit.contains(&format!(" {field}")), "{field} in {quit}");
    }
    for field in ["retrieved=1", "deleted=0", "update=none", "commands=3"] {
        assert!(vanished.contains(field), "{field} in {vanished}");
    }
    for field in ["retrieved=0", "update=none", "commands=2", "user=\"alice\""] {
        assert!(idle.contains(field), "{field} in {idle}");
    }
}

#[test]
fn json_summary_lines_are_fields_not_a_sentence() {
    let size = MESSAGE.len();
    let [quit, vanished, idle] = three_summaries("json", |r| format!("\"reason\":\"{r}\""));
    assert!(quit.starts_with('{') && quit.ends_with('}'), "{quit}");
    assert!(quit.contains("\"message\":\"session end\""), "{quit}");
    for field in [
        "\"user\":\"alice\"".to_owned(),
        "\"peer\":\"127.0.0.1:".to_owned(),
        "\"mechanism\":\"USER\"".to_owned(),
        "\"tls\":false".to_owned(),
        "\"duration_ms\":".to_owned(),
        "\"commands\":7".to_owned(),
        "\"retrieved\":1".to_owned(),
        format!("\"retrieved_octets\":{size}"),
        "\"top\":1".to_owned(),
        "\"deleted\":1".to_owned(),
        "\"update\":\"committed\"".to_owned(),
    ] {
        assert!(quit.contains(&field), "{field} in {quit}");
    }
    for field in ["\"deleted\":0", "\"update\":\"none\""] {
        assert!(vanished.contains(field), "{field} in {vanished}");
        assert!(idle.contains(field), "{field} in {idle}");
    }
}
