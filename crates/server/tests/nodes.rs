//! The server as a node (`Config.node`): heartbeats in the node table, the drain an operator
//! sets there, and the one lock renewer per process. The real server (`server::run`) on a
//! loopback socket over a SQLite store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::Argon2Params;
use base64::Engine;
use store::{AccountName, NodeState, SqliteStore, Store};
use testbed::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The cheapest argon2id the crate accepts, so verifications take microseconds.
const CHEAP: Argon2Params = Argon2Params {
    memory_kib: 8,
    iterations: 1,
    parallelism: 1,
};
const HEARTBEAT: Duration = Duration::from_millis(100);

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let (read, writer) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        let mut c = Client {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = c.line().await;
        assert!(greeting.starts_with("+OK"), "{greeting}");
        c
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line));
        read.await.expect("a reply within 10 s").expect("read");
        line.trim_end().to_string()
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.line().await
    }

    /// The lines of a multi-line reply after its status line, up to the `.`.
    async fn body(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for _ in 0..1000 {
            let line = self.line().await;
            if line == "." {
                return lines;
            }
            lines.push(line);
        }
        panic!("no end of the multi-line reply");
    }

    async fn login(&mut self) -> String {
        assert!(self.cmd("USER alice").await.starts_with("+OK"));
        self.cmd("PASS right").await
    }
}

/// Waits (bounded) until `pred` holds of the node table.
async fn until_nodes(store: &dyn Store, what: &str, pred: impl Fn(&[store::NodeInfo]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if pred(&store.list_nodes().expect("list nodes")) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_refuses_logins_and_lets_sessions_finish() {
    let dir = TempDir::new("server-nodes");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("store"));
    let alice = AccountName::parse("alice").expect("name");
    let hash = auth::hash_password_with(b"right", CHEAP).expect("hash");
    let account = store.create_account(&alice, &hash).expect("account");
    for i in 0..2 {
        let msg = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        store
            .deliver(&alice, &mut msg.as_bytes(), 1 << 20)
            .expect("deliver");
    }
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let config = server::Config {
        argon2: CHEAP,
        credential_cache_ttl: Duration::ZERO,
        auth_failure_delay: Duration::ZERO,
        // Renewed every second: the session below outlives several renewals.
        lock_lease: Duration::from_secs(3),
        node: Some(server::NodeConfig {
            id: "node-1".into(),
            advertise: addr.to_string(),
            heartbeat: HEARTBEAT,
        }),
        ..server::Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        vec![server::Listener::plain(socket)],
        store.clone(),
        config,
        None,
        async {
            let _ = stopped.await;
        },
    ));

    // The node registers itself, up, with the connections it serves.
    let mut inside = Client::connect(addr).await;
    assert!(inside.login().await.starts_with("+OK"));
    until_nodes(&*store, "the node with its session", |n| {
        n.len() == 1
            && n[0].id == "node-1"
            && n[0].address == addr.to_string()
            && n[0].state == NodeState::Up
            && n[0].sessions == 1
    })
    .await;

    // Drained: once a heartbeat has read the state, no login path gets in.
    store
        .set_node_state("node-1", NodeState::Draining)
        .expect("drain");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = Client::connect(addr).await;
    loop {
        let reply = refused.login().await;
        if reply.starts_with("-ERR [SYS/TEMP] ") {
            assert!(reply.contains("drain"), "{reply}");
            break;
        }
        // Before the drain is seen: the maildrop is busy with the first session.
        assert!(reply.starts_with("-ERR [IN-USE] "), "{reply}");
        assert!(Instant::now() < deadline, "the drain never took effect");
        refused.cmd("QUIT").await;
        refused = Client::connect(addr).await;
        tokio::time::sleep(HEARTBEAT / 2).await;
    }
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0right");
    let reply = refused.cmd(&format!("AUTH PLAIN {plain}")).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP] "), "AUTH PLAIN: {reply}");
    // A wrong password is still answered as one.
    assert!(refused.cmd("USER alice").await.starts_with("+OK"));
    let reply = refused.cmd("PASS wrong").await;
    assert!(reply.starts_with("-ERR [AUTH] "), "{reply}");

    // The session logged in before the drain goes on, past several lease renewals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(inside.cmd("RETR 1").await.starts_with("+OK"));
    let message = inside.body().await;
    assert_eq!(message, ["Subject: 0", "", "body 0"]);
    assert!(inside.cmd("DELE 1").await.starts_with("+OK"));
    let quit = inside.cmd("QUIT").await;
    assert!(quit.starts_with("+OK"), "{quit}");
    let left = store.list_messages(account).expect("list");
    assert_eq!(left.len(), 1, "the deletion was applied");

    // Up again: logins are taken once a heartbeat has read it.
    store.set_node_state("node-1", NodeState::Up).expect("up");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::connect(addr).await;
        let reply = c.login().await;
        c.cmd("QUIT").await;
        if reply.starts_with("+OK") {
            break;
        }
        assert!(reply.starts_with("-ERR [SYS/TEMP] "), "{reply}");
        assert!(Instant::now() < deadline, "the node never came up");
        tokio::time::sleep(HEARTBEAT / 2).await;
    }
    assert_eq!(
        store.list_nodes().expect("nodes")[0].state,
        NodeState::Up,
        "heartbeats kept the operator's state"
    );

    let _ = stop.send(());
    drop(refused);
    server.await.expect("server task").expect("server");
}
