//! The POP3 clients people fetch mail with, against the real pop3d: fetchmail, mpop, getmail6
//! and Perl's Net::POP3, over cleartext (loopback allows USER/PASS) and over implicit TLS
//! (RFC 8314) trusting the server's self-signed certificate. Each client's downloaded bytes are
//! compared with what was delivered; the clients that leave mail on the server (`keep`) are run
//! twice to prove their UIDL state works (RFC 1939 section 7): the second run fetches nothing,
//! then a new message is fetched alone.
//!
//! A client that is not installed is skipped with a printed reason (`cargo xtask deps` installs
//! them), unless `E2E_REQUIRE_CLIENTS=1`.
//!
//! What the clients add or change, undone before comparing (none of it needs a server quirk):
//! fetchmail prepends a `Received:` header and hands its MDA LF line ends; mpop's MDA gets LF
//! line ends (`--received-header=off`); getmail's MDA_external prepends `Return-Path:`; Net::POP3
//! returns lines with LF or CRLF ends (the script makes them CRLF). fetchmail checks only DNS names of a certificate, never an
//! IP address: the TLS test names `localhost` with `sslcommonname`.

use std::path::Path;
use std::process::{Command, Output};

use e2e::clients::{
    assert_same, fetchmail, fetchmail_messages, lf, output_text, strip_first_header, Scratch,
};
use e2e::{crlf, Fixture};

const USER: &str = "mia@example.org";
const PW: &str = "s3cret pass";

fn messages() -> Vec<Vec<u8>> {
    vec![
        b"From: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n.leading dot\r\n..two dots\r\n"
            .to_vec(),
        b"Subject: two\n\n8-bit \xe9\xe8 and a lone dot:\n.\nend\n".to_vec(),
    ]
}

fn late_message() -> Vec<u8> {
    b"Subject: three\r\n\r\narrived later\r\n".to_vec()
}

fn fixture(tag: &str) -> Fixture {
    let f = Fixture::new(tag);
    f.add_user(USER, PW);
    for m in messages() {
        f.deliver(USER, &m);
    }
    f
}

/// The UIDL round trip of a client that leaves mail on the server (RFC 1939 section 7): the
/// first run fetches both messages, a second fetches nothing (`second_code` is its exit code),
/// then a message delivered since is fetched alone. `fetched` reads back what the client stored,
/// with the client's own additions removed; the expected bytes have LF line ends.
fn keep_round_trip(
    client: &str,
    f: &Fixture,
    run: impl Fn() -> Output,
    fetched: impl Fn() -> Vec<Vec<u8>>,
    second_code: i32,
) {
    let out = run();
    assert!(out.status.success(), "{client}: {}", output_text(&out));
    let want: Vec<Vec<u8>> = messages().iter().map(|m| lf(m)).collect();
    assert_same(&fetched(), &want, &format!("{client} first run"));

    let out = run();
    assert_eq!(
        out.status.code(),
        Some(second_code),
        "{client}: {}",
        output_text(&out)
    );
    assert_eq!(fetched().len(), 2, "{client} fetched again");

    f.deliver(USER, &late_message());
    let out = run();
    assert!(out.status.success(), "{client}: {}", output_text(&out));
    let got = fetched();
    assert_eq!(got.len(), 3, "{client}");
    assert_same(
        &got[2..],
        &[lf(&late_message())],
        &format!("{client} third run"),
    );
}

// ---------------------------------------------------------------------------------------------
// fetchmail

#[test]
fn fetchmail_keeps_mail_and_fetches_only_new_uidls() {
    if !e2e::client_available("fetchmail", "--version") {
        return;
    }
    let f = fixture("fetchmail");
    let s = Scratch::new("fetchmail-run");
    // `uidl` + `keep`: fetchmail's own UIDL bookkeeping (the idfile); `sslproto ''` keeps it
    // from upgrading with STLS, so this run is cleartext.
    let rc = format!(
        "poll 127.0.0.1 service {} protocol pop3 uidl timeout 20 user \"{USER}\" password \
         \"{PW}\" keep sslproto '' mda \"{}\"",
        f.server.addr.port(),
        s.mda()
    );
    // fetchmail exits 1 when there is no new mail.
    keep_round_trip(
        "fetchmail",
        &f,
        || fetchmail(&s, &rc),
        || fetchmail_messages(&s),
        1,
    );
}

#[test]
fn fetchmail_over_implicit_tls() {
    if !e2e::client_available("fetchmail", "--version") {
        return;
    }
    let f = fixture("fetchmail-tls");
    let s = Scratch::new("fetchmail-tls-run");
    let rc = format!(
        "poll 127.0.0.1 service {} protocol pop3 uidl timeout 20 user \"{USER}\" password \
         \"{PW}\" keep ssl sslcertck sslcertfile \"{}\" sslcommonname localhost mda \"{}\"",
        f.server.tls_addr.expect("pop3s").port(),
        f.server.self_signed_cert().display(),
        s.mda()
    );
    let out = fetchmail(&s, &rc);
    assert!(out.status.success(), "{}", output_text(&out));
    let want: Vec<Vec<u8>> = messages().iter().map(|m| lf(m)).collect();
    assert_same(&fetchmail_messages(&s), &want, "fetchmail over TLS");
}

// ---------------------------------------------------------------------------------------------
// mpop

fn mpop(s: &Scratch, port: u16, tls: &[String]) -> Output {
    s.command("mpop")
        .args(["-C", "/dev/null", "--host=127.0.0.1"])
        .arg(format!("--port={port}"))
        .args([
            "--auth=user",
            "--timeout=20",
            "--keep=on",
            "--received-header=off",
        ])
        .arg(format!("--user={USER}"))
        .arg(format!("--passwordeval=echo '{PW}'"))
        .arg(format!("--delivery=mda,{}", s.mda()))
        .arg(format!("--uidls-file={}", s.path("uidls").display()))
        .args(tls)
        .output()
        .expect("run mpop")
}

#[test]
fn mpop_keeps_mail_and_fetches_only_new_uidls() {
    if !e2e::client_available("mpop", "--version") {
        return;
    }
    let f = fixture("mpop");
    let s = Scratch::new("mpop-run");
    let port = f.server.addr.port();
    let plain = ["--tls=off".to_owned()];
    keep_round_trip("mpop", &f, || mpop(&s, port, &plain), || s.delivered(), 0);
}

#[test]
fn mpop_over_implicit_tls_and_stls() {
    if !e2e::client_available("mpop", "--version") {
        return;
    }
    let f = fixture("mpop-tls");
    let cert = format!("--tls-trust-file={}", f.server.self_signed_cert().display());
    let want: Vec<Vec<u8>> = messages().iter().map(|m| lf(m)).collect();
    // Implicit TLS (RFC 8314).
    let s = Scratch::new("mpop-tls-run");
    let tls = [
        "--tls=on".to_owned(),
        "--tls-starttls=off".to_owned(),
        cert.clone(),
    ];
    let out = mpop(&s, f.server.tls_addr.expect("pop3s").port(), &tls);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_same(&s.delivered(), &want, "mpop over TLS");
    // STLS (RFC 2595).
    let s = Scratch::new("mpop-stls-run");
    let stls = ["--tls=on".to_owned(), "--tls-starttls=on".to_owned(), cert];
    let out = mpop(&s, f.server.addr.port(), &stls);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_same(&s.delivered(), &want, "mpop over STLS");
}

// ---------------------------------------------------------------------------------------------
// getmail6

fn getmail(s: &Scratch, retriever: &str) -> Output {
    let rc = s.path("getmailrc");
    let getmaildir = s.path("getmail");
    std::fs::create_dir_all(&getmaildir).expect("mkdir");
    // `delete = false`: mail stays on the server; getmail's oldmail file holds the UIDLs.
    // `allow_root_commands`: getmail refuses to run an MDA as root unless told (CI may be root).
    std::fs::write(
        &rc,
        format!(
            "[retriever]\n{retriever}\nusername = {USER}\npassword = {PW}\ntimeout = 20\n\n\
             [destination]\ntype = MDA_external\npath = {}\nallow_root_commands = true\n\n\
             [options]\nread_all = false\ndelete = false\ndelivered_to = false\n\
             received = false\n",
            s.mda()
        ),
    )
    .expect("write getmailrc");
    s.command("getmail")
        .arg(format!("--getmaildir={}", getmaildir.display()))
        .arg(format!("--rcfile={}", rc.display()))
        .output()
        .expect("run getmail")
}

fn getmail_messages(s: &Scratch) -> Vec<Vec<u8>> {
    s.delivered()
        .iter()
        .map(|m| strip_first_header(m, "Return-Path"))
        .collect()
}

#[test]
fn getmail_keeps_mail_and_fetches_only_new_uidls() {
    if !e2e::client_available("getmail", "--version") {
        return;
    }
    let f = fixture("getmail");
    let s = Scratch::new("getmail-run");
    let retriever = format!(
        "type = SimplePOP3Retriever\nserver = 127.0.0.1\nport = {}",
        f.server.addr.port()
    );
    keep_round_trip(
        "getmail",
        &f,
        || getmail(&s, &retriever),
        || getmail_messages(&s),
        0,
    );
}

#[test]
fn getmail_over_implicit_tls() {
    if !e2e::client_available("getmail", "--version") {
        return;
    }
    let f = fixture("getmail-tls");
    let s = Scratch::new("getmail-tls-run");
    let retriever = format!(
        "type = SimplePOP3SSLRetriever\nserver = 127.0.0.1\nport = {}\nca_certs = {}",
        f.server.tls_addr.expect("pop3s").port(),
        f.server.self_signed_cert().display()
    );
    let out = getmail(&s, &retriever);
    assert!(out.status.success(), "{}", output_text(&out));
    let want: Vec<Vec<u8>> = messages().iter().map(|m| lf(m)).collect();
    assert_same(&getmail_messages(&s), &want, "getmail over TLS");
}

// ---------------------------------------------------------------------------------------------
// Perl Net::POP3 (libnet)

/// Logs in, checks UIDL and LIST, RETRs every message and prints each as hex on one line.
const PERL: &str = r#"
use strict; use warnings; use Net::POP3;
my ($host, $port, $user, $pw, $ca) = @ARGV;
my %tls = $ca ? (SSL => 1, SSL_ca_file => $ca, SSL_verifycn_name => 'localhost') : ();
my $pop = Net::POP3->new($host, Port => $port, Timeout => 20, %tls) or die "connect: $@";
defined $pop->login($user, $pw) or die "login: " . $pop->message;
my $uidl = $pop->uidl or die "uidl";
my $list = $pop->list or die "list";
for my $n (sort { $a <=> $b } keys %$list) {
    my $lines = $pop->get($n) or die "get $n";
    my $msg = join('', @$lines);
    # Net::Cmd hands lines over with LF or CRLF ends (it varies with how reads split);
    # back to CRLF, the size must equal LIST's (RFC 1939 section 11).
    $msg =~ s/\r?\n/\r\n/g;
    die "size of $n: LIST $list->{$n}, got " . length($msg) if length($msg) != $list->{$n};
    die "no uidl for $n" unless defined $uidl->{$n};
    print unpack('H*', $msg), "\n";
}
$pop->quit;
"#;

fn net_pop3(port: u16, ca: Option<&Path>) -> Vec<Vec<u8>> {
    let out = Command::new("perl")
        .arg("-e")
        .arg(PERL)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(USER)
        .arg(PW)
        .arg(ca.map(|p| p.display().to_string()).unwrap_or_default())
        .output()
        .expect("run perl");
    assert!(out.status.success(), "Net::POP3: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|hex| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

fn perl_module(module: &str) -> bool {
    let ok = Command::new("perl")
        .args([&format!("-M{module}"), "-e", "1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: the Perl module {module} is not installed (run `cargo xtask deps`)");
    }
    ok
}

#[test]
fn perl_net_pop3_fetches_byte_exact() {
    if !e2e::client_available("perl", "-v") || !perl_module("Net::POP3") {
        return;
    }
    let f = fixture("netpop3");
    let want: Vec<Vec<u8>> = messages().iter().map(|m| crlf(m)).collect();
    // Net::POP3 returns the lines un-stuffed (RFC 1939 section 3); the script restores CRLF.
    assert_same(&net_pop3(f.server.addr.port(), None), &want, "Net::POP3");
    if perl_module("IO::Socket::SSL") {
        let cert = f.server.self_signed_cert();
        let port = f.server.tls_addr.expect("pop3s").port();
        assert_same(&net_pop3(port, Some(&cert)), &want, "Net::POP3 over TLS");
    }
}

#[test]
fn helpers() {
    assert_eq!(lf(b"a\r\nb\nc"), b"a\nb\nc\n");
    assert_eq!(
        strip_first_header(b"Received: from x\n\tby y\nSubject: s\n\n", "Received"),
        b"Subject: s\n\n"
    );
    assert_eq!(
        strip_first_header(b"Subject: s\n\n", "Received"),
        b"Subject: s\n\n"
    );
}
