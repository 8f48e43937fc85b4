//! pop3d and popadm on a PostgreSQL store (`--store postgres://...`): a throw-away cluster,
//! an account and mail added with popadm, a POP3 session that retrieves byte for byte and
//! deletes at QUIT (RFC 1939 section 6), `[IN-USE]` for a second session (RFC 2449 section 8.1.1),
//! and a session whose lease was taken over ending `-ERR [SYS/TEMP]` without UPDATE (at QUIT,
//! and by the node's batch renewer before any QUIT); the node in `popadm node list`; a
//! download whose small messages are read ahead.
//!
//! Skips with a printed reason where PostgreSQL is not installed or the binaries were built
//! without the `postgres` feature (`cargo xtask test` builds them with it), unless
//! `POP3D_REQUIRE_POSTGRES` is set (CI), which makes either a failure.

use std::time::{Duration, Instant};

use e2e::{popadm, popadm_ok, Server, TempDir};

/// Whether this run must not skip.
fn required() -> bool {
    std::env::var_os("POP3D_REQUIRE_POSTGRES").is_some()
}

/// The cluster and a database URL, or `None` (skipping).
fn cluster() -> Option<(testbed::pg::Cluster, String)> {
    let cluster = match testbed::pg::Cluster::start() {
        Ok(Some(cluster)) => cluster,
        Ok(None) => {
            assert!(
                !required(),
                "POP3D_REQUIRE_POSTGRES is set but PostgreSQL is missing"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed (run `cargo xtask deps`)");
            return None;
        }
        Err(e) => panic!("starting PostgreSQL: {e}"),
    };
    cluster
        .create_database("maildrops")
        .expect("create database");
    let url = cluster.url("maildrops");
    Some((cluster, url))
}

/// A message of several 128 KiB chunks with bare LF line ends, and what RETR must send for it
/// (CRLF line ends, before dot-stuffing).
fn big_message() -> (Vec<u8>, Vec<u8>) {
    // 20,000 lines of 20 to 25 octets: over 400 KiB.
    let body: String = (0..20_000)
        .map(|n| format!("line {n} of the body\n"))
        .collect();
    let input = [
        &b"From: a@example.org\nSubject: big\n\n"[..],
        body.as_bytes(),
        b".a line that needs dot-stuffing\n",
    ]
    .concat();
    assert!(input.len() > 400 * 1024);
    let (stored, _) = store::normalise(&input);
    (input, stored)
}

/// `popadm --store URL user add NAME`, which must succeed; `false` (skipping, with a printed
/// reason) when the binaries were built without the `postgres` feature.
fn add_user_or_skip(data: &std::path::Path, url: &str, name: &str, password: &str) -> bool {
    let add = popadm(
        data,
        &["--store", url, "user", "add", name, "--password-stdin"],
        format!("{password}\n").as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&add.stderr);
    if stderr.contains("without PostgreSQL support") {
        assert!(!required(), "popadm built without PostgreSQL: {stderr}");
        eprintln!("SKIPPED: the binaries were built without the `postgres` feature");
        return false;
    }
    assert!(add.status.success(), "user add: {stderr}");
    true
}

#[test]
fn pop3d_and_popadm_on_postgres_retrieve_and_delete() {
    let Some((cluster, url)) = cluster() else {
        return;
    };
    let dir = TempDir::new("postgres");
    let data = dir.path();
    if !add_user_or_skip(data, &url, "alice", "secret pw") {
        return;
    }
    // The data directory holds no SQLite database: the account went to PostgreSQL.
    assert!(!data.join(store::DB_FILE).exists());

    let (big, big_stored) = big_message();
    let small = b"Subject: small\r\n\r\nhello\r\n".to_vec();
    for message in [&big, &small] {
        popadm_ok(
            data,
            &["--store", &url, "deliver", "--no-lda-headers", "alice"],
            message,
        );
    }
    let stat = popadm_ok(data, &["--store", &url, "stat", "alice"], b"");
    let octets = big_stored.len() + small.len();
    assert!(
        stat.starts_with(&format!("messages: 2\noctets: {octets}\nlock: none\n")),
        "{stat}"
    );

    let server = Server::start(data, &["--store", &url, "--node-id", "e2e-node"]);
    let mut client = server.login("alice", "secret pw");
    let listing = client.listing("LIST");
    assert_eq!(
        listing,
        [
            format!("1 {}", big_stored.len()),
            format!("2 {}", small.len())
        ]
    );
    let uidls = client.listing("UIDL");
    assert_eq!(client.multi("RETR 1").1, big_stored);
    assert_eq!(client.multi("RETR 2").1, small);
    // One session per maildrop, across the shared store.
    let mut second = server.connect();
    second.ok("USER alice");
    let refused = second.err("PASS secret pw");
    assert!(refused.starts_with("-ERR [IN-USE]"), "{refused}");
    client.ok("DELE 1");
    client.ok("QUIT");
    assert!(client.closed());

    // The next session sees the one message left, numbered 1 now, under its old UIDL.
    let mut client = server.login("alice", "secret pw");
    assert_eq!(client.listing("LIST"), [format!("1 {}", small.len())]);
    let uid = uidls[1].split_once(' ').expect("UIDL line").1;
    assert_eq!(client.listing("UIDL"), [format!("1 {uid}")]);
    client.ok("DELE 1");

    // Another node takes the lease over (as after this one froze past its lease): the QUIT
    // must not delete, and says so with [SYS/TEMP].
    cluster
        .psql(
            "maildrops",
            "UPDATE locks SET token = nextval('lock_tokens'), holder = 'pop3d@other:1#1', \
             node = 'other'",
        )
        .expect("take the lease over");
    let quit = client.err("QUIT");
    assert!(quit.starts_with("-ERR [SYS/TEMP]"), "{quit}");
    let left = cluster
        .psql("maildrops", "SELECT count(*) FROM messages")
        .expect("count");
    assert_eq!(left, "1");

    // A restarted node clears its own leases at once, and keeps other nodes'.
    drop(server);
    cluster
        .psql("maildrops", "UPDATE locks SET node = 'e2e-node'")
        .expect("hand the lease to this node");
    let server = Server::start(
        data,
        &[
            "--store",
            &url,
            "--node-id",
            "e2e-node",
            "--lock-lease",
            "3",
        ],
    );
    // The node is in the node table, by its bound address.
    let nodes = popadm_ok(data, &["--store", &url, "node", "list"], b"");
    let row = format!("e2e-node\t{}\tup\t", server.addr);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(&row) && l.ends_with("\tlive")),
        "{nodes}"
    );
    let mut client = server.login("alice", "secret pw");
    // The node's batch renewer (every second with this lease) finds the lease taken over and
    // ends the session at its next command, before any QUIT.
    cluster
        .psql(
            "maildrops",
            "UPDATE locks SET token = nextval('lock_tokens'), holder = 'pop3d@other:1#2', \
             node = 'other', expires_at = clock_timestamp() + interval '1 second'",
        )
        .expect("take the lease over");
    // One deadline for both waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    let every = Duration::from_millis(200);
    let left = || deadline.saturating_duration_since(Instant::now());
    e2e::eventually("the lost lease went unnoticed", left(), every, || {
        let reply = client.cmd("NOOP");
        assert!(
            reply.starts_with("+OK") || reply.starts_with("-ERR [SYS/TEMP]"),
            "{reply}"
        );
        reply.starts_with("-ERR [SYS/TEMP]").then_some(())
    });
    assert!(client.closed());
    // Once the other node's lease is over, the maildrop is this node's again.
    let mut client = e2e::eventually("the lease never lapsed", left(), every, || {
        let mut c = server.connect();
        c.ok("USER alice");
        c.cmd("PASS secret pw").starts_with("+OK").then_some(c)
    });
    client.ok("DELE 1");
    client.ok("QUIT");
    let left = cluster
        .psql("maildrops", "SELECT count(*) FROM messages")
        .expect("count");
    assert_eq!(left, "0");
    drop(server);
    drop(cluster);
}

/// Issue 17 on a shared store: the global default quota set with popadm applies to `popadm
/// deliver` (exit 77 once full), and pop3d's batched record of logins reaches `user list`.
/// A download (RETR of every message in order) on PostgreSQL: each message byte for byte
/// (RFC 1939 section 3), and the small ones read ahead, 16 in one statement: 20 messages take
/// one `read_chunks` (RETR 1) and two `read_first_chunks` (2 to 17, 18 to 20), counted by the
/// node's store metrics.
#[test]
fn a_download_on_postgres_reads_small_messages_ahead() {
    let Some((_cluster, url)) = cluster() else {
        return;
    };
    let dir = TempDir::new("postgres-ahead");
    let data = dir.path();
    if !add_user_or_skip(data, &url, "dora", "pw") {
        return;
    }
    let messages: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "Subject: m{i}\r\n\r\n.dot-led {i}\r\n{}\r\n",
                "q".repeat(i * 61)
            )
        })
        .collect();
    for m in &messages {
        popadm_ok(
            data,
            &["--store", &url, "deliver", "--no-lda-headers", "dora"],
            m.as_bytes(),
        );
    }
    let server = Server::start(data, &["--store", &url, "--metrics", "127.0.0.1:0"]);
    let mut client = server.login("dora", "pw");
    assert_eq!(client.listing("UIDL").len(), 20);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(client.multi(&format!("RETR {}", i + 1)).1, m.as_bytes());
    }
    client.ok("QUIT");
    assert!(client.closed());
    let metrics = server.listener("metrics");
    let out = e2e::run_ok(e2e::curl().arg(format!("http://{metrics}/metrics")));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let calls = |op: &str| {
        let series = format!("pop3d_store_call_duration_seconds_count{{operation=\"{op}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|n| n.trim().to_owned())
    };
    assert_eq!(calls("read_chunks").as_deref(), Some("1"), "{text}");
    assert_eq!(calls("read_first_chunks").as_deref(), Some("2"), "{text}");
}

#[test]
fn quotas_and_last_logins_on_postgres() {
    let Some((cluster, url)) = cluster() else {
        return;
    };
    let dir = TempDir::new("postgres-quota");
    let data = dir.path();
    if !add_user_or_skip(data, &url, "quinn", "pw") {
        return;
    }
    let store = ["--store", url.as_str()];
    let with = |args: &[&'static str]| [&store[..], args].concat();
    popadm_ok(
        data,
        &with(&["quota", "default", "--quota-messages", "1"]),
        b"",
    );
    let deliver = with(&["deliver", "--no-lda-headers", "quinn"]);
    let message = b"Subject: q\r\n\r\nq\r\n";
    assert_eq!(popadm(data, &deliver, message).status.code(), Some(0));
    assert_eq!(popadm(data, &deliver, message).status.code(), Some(77));

    let server = Server::start(data, &["--store", &url]);
    server.login("quinn", "pw").stat_and_quit(1);
    let list = e2e::eventually(
        "the login recorded",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let list = popadm_ok(data, &with(&["user", "list", "--json"]), b"");
            list.contains("\"last_login_mechanism\":\"USER\"")
                .then_some(list)
        },
    );
    assert!(list.contains("\"last_login_from\":\"127.0.0.1\""), "{list}");
    assert!(
        list.contains("\"messages\":1,") && list.contains("\"quota\":{\"messages\":1,"),
        "{list}"
    );
    drop(server);
    drop(cluster);
}
