//! AUTHORIZATION before and after USER (RFC 1939 sections 4 and 7), with CAPA, LANG and UTF8
//! (RFC 2449, RFC 6856), the cleartext policy (RFC 2595 section 2.2) and bad commands.

use super::*;

/// RFC 1939 section 4: the greeting, then QUIT in AUTHORIZATION: `+OK`, the connection
/// closed, and no UPDATE (nothing in the maildrop changes).
#[tokio::test]
async fn rfc1939_s4_quit_in_authorization_closes_without_update() {
    let (f, mut c) = started().await;
    assert_eq!(c.greeting, ok_bare(&f.shared.config.greeting));
    assert_eq!(c.cmd("QUIT").await, ok(Text::Bye));
    c.closed().await;
    f.untouched();
}

/// RFC 1939 section 4: the TRANSACTION commands are refused before login, and the session
/// goes on (a wrong-state command counts as a bad one, nothing more).
#[tokio::test]
async fn rfc1939_s4_transaction_commands_before_user_are_refused() {
    let (_f, mut c) = started().await;
    for line in TRANSACTION_COMMANDS {
        assert_eq!(c.cmd(line).await, refused(Text::BeforeLogin), "{line}");
    }
    c.login().await;
}

/// RFC 1939 section 7: PASS needs a USER first; USER then PASS logs in and the reply names
/// the maildrop's size.
#[tokio::test]
async fn rfc1939_s7_pass_before_user_is_refused_then_user_pass_logs_in() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    c.login().await;
    assert_eq!(c.cmd("STAT").await, full_stat());
}

/// RFC 1939 section 7, RFC 3206: a wrong password is `-ERR [AUTH]` and forgets the USER;
/// an unknown user is answered the same way.
#[tokio::test]
async fn rfc1939_s7_rfc3206_wrong_password_is_auth_error_and_forgets_user() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(c.cmd("USER nobody").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS right").await, err(reply::BAD_CREDENTIALS));
    c.login().await;
}

/// RFC 1939 section 7: after a failed PASS, a malformed one (no argument) included, the
/// client "may either issue a new authentication command or may issue the QUIT command": a
/// new USER is accepted.
#[tokio::test]
async fn rfc1939_s7_a_failed_pass_of_any_kind_accepts_a_new_user() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS").await, refused(Text::MissingArgument));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS right").await, full_login());
}

/// RFC 1939 section 7 (and RFC 5034 section 4 for AUTH): after `max_auth_failures` failed
/// logins the connection is closed with `-ERR [AUTH]`.
#[tokio::test]
async fn rfc1939_s7_too_many_failed_logins_close_the_connection() {
    let f = Fixture::tuned(|c| c.max_auth_failures = 2);
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    let plain = auth_plain("wrong");
    assert_eq!(c.cmd(&plain).await, err(reply::TOO_MANY_AUTH_FAILURES));
    c.closed().await;
}

/// RFC 1939 section 7: APOP is refused when the greeting carried no timestamp (legacy
/// authentication off).
#[tokio::test]
async fn rfc1939_s7_apop_without_timestamp_is_refused() {
    let (_f, mut c) = started().await;
    assert!(!c.greeting.contains('<'), "{}", c.greeting);
    let digest = "0".repeat(32);
    assert_eq!(c.cmd(&apop(&digest)).await, refused(Text::ApopUnavailable));
    c.login().await;
}

/// RFC 1939 section 7: APOP with the MD5 of the greeting's timestamp and the secret logs in;
/// a wrong digest is `-ERR [AUTH]`. APOP after USER forgets the USER.
#[tokio::test]
async fn rfc1939_s7_apop_digest_of_the_greeting_timestamp_logs_in() {
    let f = Fixture::tuned(|c| c.legacy_auth = true);
    let mut c = f.connect().await;
    let start = c.greeting.find('<').expect("timestamp");
    let timestamp = c.greeting[start..].to_string();
    assert!(timestamp.ends_with("@pop.test>"), "{timestamp}");
    let digest: String = Md5::digest(format!("{timestamp}{PASSWORD}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    let wrong = "0".repeat(32);
    assert_eq!(c.cmd(&apop(&wrong)).await, err(reply::BAD_CREDENTIALS));
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(c.cmd(&apop(&digest)).await, full_login());
}

/// RFC 2449 section 5: CAPA in AUTHORIZATION lists USER (cleartext allowed from loopback),
/// the SASL mechanisms, PIPELINING and the rest; from a remote peer without TLS there is no
/// USER and no cleartext mechanism.
#[tokio::test]
async fn rfc2449_s5_capa_before_login_depends_on_the_link() {
    let (f, mut c) = started().await;
    let caps = c.multi("CAPA", &ok(Text::CapaFollows)).await;
    for cap in [
        "USER",
        "PIPELINING",
        "UIDL",
        "TOP",
        "RESP-CODES",
        "AUTH-RESP-CODE",
    ] {
        assert!(caps.iter().any(|c| c == cap), "{cap} in {caps:?}");
    }
    assert!(caps
        .iter()
        .any(|c| c.starts_with("SASL ") && c.contains("PLAIN")));
    assert!(!caps.iter().any(|c| c == "STLS"), "{caps:?}");
    let mut remote = f.connect_as(plain(), REMOTE).await;
    let caps = remote.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert!(!caps.iter().any(|c| c == "USER"), "{caps:?}");
    assert!(!caps.iter().any(|c| c.contains("PLAIN")), "{caps:?}");
}

/// RFC 2595 section 2.2, RFC 8314 section 3: without TLS, a remote peer's USER, PASS and
/// cleartext SASL mechanisms are refused with `-ERR [AUTH]`.
#[tokio::test]
async fn rfc2595_s2_2_cleartext_credentials_refused_before_tls() {
    let f = Fixture::new();
    let mut c = f.connect_as(plain(), REMOTE).await;
    assert_eq!(c.cmd("USER alice").await, err(reply::CLEARTEXT_REFUSED));
    assert_eq!(c.cmd("PASS right").await, err(reply::CLEARTEXT_REFUSED));
    assert_eq!(
        c.cmd("AUTH PLAIN").await,
        err(reply::CLEARTEXT_REFUSED),
        "PLAIN is not offered here"
    );
    let mut never = f
        .connect_as(
            ListenerInfo {
                cleartext: Cleartext::Never,
                ..plain()
            },
            LOOPBACK,
        )
        .await;
    assert_eq!(never.cmd("USER alice").await, err(reply::CLEARTEXT_REFUSED));
}

/// RFC 1939 section 13 (KPOP): a Kerberos-only listener refuses USER, PASS and APOP.
#[tokio::test]
async fn rfc1939_kpop_listener_refuses_user_pass_apop() {
    let f = Fixture::new();
    let kpop = ListenerInfo {
        kind: ListenerKind::Kpop,
        ..plain()
    };
    let mut c = f.connect_as(kpop, LOOPBACK).await;
    assert_eq!(c.cmd("USER alice").await, err(reply::KERBEROS_ONLY));
    assert_eq!(c.cmd("PASS right").await, err(reply::KERBEROS_ONLY));
    let digest = "0".repeat(32);
    assert_eq!(c.cmd(&apop(&digest)).await, err(reply::KERBEROS_ONLY));
    // No GSSAPI configured: no mechanism at all.
    assert!(c
        .multi("AUTH", &ok(Text::MechanismsFollow))
        .await
        .is_empty());
}

/// RFC 2449 section 4 and RFC 1939 section 3: unknown commands and syntax errors are
/// `-ERR`, the session goes on, and after [`MAX_BAD_COMMANDS`] it is closed.
#[tokio::test]
async fn rfc2449_s4_bad_commands_are_refused_until_the_limit() {
    let (f, mut c) = started().await;
    assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    assert_eq!(c.cmd("RETR x").await, refused(Text::InvalidNumber));
    assert_eq!(c.cmd("USER").await, refused(Text::MissingArgument));
    assert_eq!(c.cmd("").await, refused(Text::EmptyCommand));
    let long = "X".repeat(300);
    assert_eq!(c.cmd(&long).await, refused(Text::LineTooLong));
    c.login().await;
    for _ in 5..MAX_BAD_COMMANDS - 1 {
        assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    }
    assert_eq!(c.cmd("XYZZY").await, err(reply::TOO_MANY_BAD_COMMANDS));
    c.closed().await;
    f.untouched();
}

/// RFC 6856 section 3: UTF8 in AUTHORIZATION turns UTF8 mode on; a non-ASCII USER needs it
/// (`-ERR [UTF8]` before).
#[tokio::test]
async fn rfc6856_s3_utf8_before_login_and_non_ascii_user() {
    let (_f, mut c) = started().await;
    let utf8_refused = err(ErrReply {
        code: Some(ResponseCode::Utf8),
        text: Text::NotAscii,
    });
    assert_eq!(c.cmd("USER j\u{f6}rg").await, utf8_refused);
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    assert_eq!(c.cmd("USER j\u{f6}rg").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS right").await, err(reply::BAD_CREDENTIALS));
}

/// RFC 6856 section 4: LANG lists the languages, switches (`*`: the default), refuses an
/// unknown tag, in AUTHORIZATION before and after USER and in TRANSACTION.
#[tokio::test]
async fn rfc6856_s4_lang_in_every_state() {
    let (_f, mut c) = started().await;
    let langs = c.multi("LANG", &ok(Text::LangFollows)).await;
    assert!(langs.iter().any(|l| l.starts_with("en ")), "{langs:?}");
    assert_eq!(c.cmd("LANG xx-unknown").await, refused(Text::LangUnknown));
    assert_eq!(c.cmd("LANG *").await, ok(Text::LangSet));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("LANG en").await, ok(Text::LangSet));
    assert_eq!(c.multi("LANG", &ok(Text::LangFollows)).await, langs);
    // The pending USER survived LANG.
    assert_eq!(c.cmd("PASS right").await, full_login());
    assert_eq!(c.cmd("LANG *").await, ok(Text::LangSet));
    assert_eq!(c.multi("LANG", &ok(Text::LangFollows)).await, langs);
}

// --- AUTHORIZATION, after USER ----------------------------------------------------------

/// RFC 1939 section 7: after USER, the TRANSACTION commands, a second USER, UTF8, CAPA and
/// LANG leave the pending USER in place; PASS then logs in.
#[tokio::test]
async fn rfc1939_s7_commands_after_user_keep_the_pending_user() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    for line in TRANSACTION_COMMANDS {
        assert_eq!(c.cmd(line).await, refused(Text::BeforeLogin), "{line}");
    }
    assert_eq!(c.cmd("USER bob").await, refused(Text::UserGiven));
    assert_eq!(c.cmd("STLS").await, refused(Text::StlsUnconfigured));
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    c.multi("CAPA", &ok(Text::CapaFollows)).await;
    assert_eq!(c.cmd("XYZZY").await, refused(Text::UnknownCommand));
    assert_eq!(c.cmd("PASS right").await, full_login());
}

/// RFC 1939 section 7, RFC 5034 section 4: AUTH after USER starts afresh: the pending USER
/// is forgotten, whether AUTH lists the mechanisms, names an unknown one or runs.
#[tokio::test]
async fn rfc5034_s4_auth_after_user_forgets_the_user() {
    let (_f, mut c) = started().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    c.multi("AUTH", &ok(Text::MechanismsFollow)).await;
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("AUTH FOO").await, refused(Text::UnknownMechanism));
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, refused(Text::AuthCancelled));
    assert_eq!(c.cmd("PASS right").await, refused(Text::UserFirst));
}

/// RFC 1939 section 4: QUIT after USER ends the session without UPDATE.
#[tokio::test]
async fn rfc1939_s4_quit_after_user_closes() {
    let (f, mut c) = started().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("QUIT").await, ok(Text::Bye));
    c.closed().await;
    f.untouched();
}

/// `max_connections_per_ip` counts only connections that have not logged in: 21 users behind
/// one address (a NAT) stay logged in at once, and a new connection from that address still
/// gets its slot; connections still logging in are capped as before.
#[tokio::test]
async fn logged_in_sessions_leave_the_per_address_cap() {
    let f = Fixture::new();
    let cap = f.shared.config.max_connections_per_ip;
    assert_eq!(cap, 20, "the default");
    let ip = LOOPBACK.parse::<SocketAddr>().expect("address").ip();
    let hash = auth::hash_password_with(PASSWORD.as_bytes(), CHEAP).expect("hash");
    let mut sessions = Vec::new();
    for i in 0..=cap {
        let user = format!("nat{i}");
        f.store
            .create_account(&name(&user), &hash)
            .expect("account");
        let mut c = f.connect().await;
        assert_eq!(c.cmd(&format!("USER {user}")).await, ok(Text::SendPass));
        assert_eq!(c.cmd("PASS right").await, logged_in(0, 0));
        sessions.push(c);
    }
    // Every one of them logged in: the address has its whole allowance free.
    let waiting: Vec<_> = (0..cap)
        .map(|_| f.shared.per_client.try_acquire(ip).expect("a free slot"))
        .collect();
    assert!(
        f.shared.per_client.try_acquire(ip).is_none(),
        "still capped"
    );
    drop(waiting);
    let mut c = f.connect().await;
    c.login().await;
    for mut s in sessions {
        assert!(s.cmd("QUIT").await.starts_with("+OK"));
    }
}

/// Issue 15: every spelling of an account counts against one failed-login penalty: the name
/// as the login resolves it (lowercased, `user+domain`, the default domain, NFKC of a UTF-8
/// name, RFC 6856 section 3.2), not each spelling on its own; a login clears it.
#[tokio::test]
async fn failed_logins_count_under_the_canonical_account_name() {
    let f = Fixture::tuned(|c| c.default_domain = Some("dom".into()));
    let mut c = f.connect().await;
    assert_eq!(c.cmd("UTF8").await, ok(Text::Utf8On));
    let spellings = ["alice", "ALICE", "alice@dom", "Alice+Dom", "\u{FF41}lice"];
    for (i, user) in spellings.iter().enumerate() {
        assert_eq!(c.cmd(&format!("USER {user}")).await, ok(Text::SendPass));
        assert_eq!(
            c.cmd(&format!("PASS wrong{i}")).await,
            err(reply::BAD_CREDENTIALS),
            "{user}"
        );
    }
    let penalties = &f.shared.penalties;
    assert_eq!(penalties.account_failures("alice@dom"), 5);
    c.login().await;
    assert_eq!(
        penalties.account_failures("alice@dom"),
        0,
        "cleared by the login"
    );
}

/// Issue 15: a client in `trusted_networks` (Dovecot's `login_trusted_networks`) is not
/// delayed after a failed login, and its failures are not counted against the account.
#[tokio::test]
async fn trusted_networks_are_exempt_from_the_failed_login_penalty() {
    let f = Fixture::tuned(|c| {
        c.auth_failure_delay = Duration::from_secs(2);
        c.trusted_networks = crate::TrustedProxies::parse(&["192.0.2.0/24"]).expect("nets");
    });
    let open = ListenerInfo {
        cleartext: Cleartext::Always,
        ..plain()
    };
    let mut c = f.connect_as(open, REMOTE).await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
        assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "delayed");
    assert_eq!(f.shared.penalties.account_failures("alice"), 0);
    c.login().await;
}

/// Every successful login is recorded for `popadm user list` (not only with LOGIN-DELAY),
/// with the client's address and the mechanism, but not written at once: it waits for the
/// batch the server writes every few seconds. A failed login records nothing.
#[tokio::test]
async fn logins_are_recorded_in_the_batch_with_address_and_mechanism() {
    let f = Fixture::tuned(|_| {});
    let alice = name("alice");
    let mut c = f.connect().await;
    assert_eq!(c.cmd("USER alice").await, ok(Text::SendPass));
    assert_eq!(c.cmd("PASS wrong").await, err(reply::BAD_CREDENTIALS));
    assert_eq!(f.shared.logins.waiting(), 0);
    c.login().await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(f.shared.logins.waiting(), 1);
    assert_eq!(
        f.store.account_summary(&alice).expect("summary").last_login,
        None
    );
    f.shared.logins.flush().await;
    let summary = f.store.account_summary(&alice).expect("summary");
    assert!(summary.last_login.is_some());
    let from = summary.last_login_from.expect("recorded");
    assert_eq!(
        (from.peer.as_str(), from.mechanism.as_str()),
        ("127.0.0.1", "USER")
    );

    // RFC 5034: a SASL login records its mechanism's name.
    let mut c = f.connect().await;
    assert_eq!(c.cmd("AUTH PLAIN AGFsaWNlAHJpZ2h0").await, full_login());
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    f.shared.logins.flush().await;
    let from = f
        .store
        .account_summary(&alice)
        .expect("summary")
        .last_login_from;
    assert_eq!(from.expect("recorded").mechanism, "PLAIN");
}
