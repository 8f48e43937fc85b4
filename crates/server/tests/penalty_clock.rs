//! The failed-login penalty on tokio's paused clock: the real server (`server::run`) on a
//! loopback socket inside a single-threaded runtime whose clock only moves when the test moves
//! it, so the delays are checked to the millisecond without waiting for them, and a second
//! client is served while the first one's delay runs (the delay holds no thread).
//!
//! The penalty decays with quiet time (issue 15), checked the same way.
//!
//! The clock is paused with `start_paused`; a task that always yields keeps the runtime from
//! ever being idle, so tokio never auto-advances it: only `tokio::time::advance` does.

use std::sync::Arc;
use std::time::Duration;

use auth::Argon2Params;
use store::{AccountName, AccountSecrets, SqliteStore, Store};
use testbed::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The cheapest argon2id the crate accepts, so verifications take microseconds.
const CHEAP: Argon2Params = Argon2Params {
    memory_kib: 8,
    iterations: 1,
    parallelism: 1,
};

/// A client that never awaits a read (that could let the runtime idle): it polls.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut c = Client {
            stream,
            buf: Vec::new(),
        };
        let greeting = c.line_within(2_000).await.expect("greeting");
        assert!(greeting.starts_with("+OK"), "{greeting}");
        c
    }

    /// The next reply line if one arrives within `ms` of real time (the clock stands still).
    async fn line_within(&mut self, ms: u64) -> Option<String> {
        let until = std::time::Instant::now() + Duration::from_millis(ms);
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            tokio::task::yield_now().await;
        }
    }

    async fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line_within(2_000)
            .await
            .unwrap_or_else(|| panic!("no reply to {line:?}"))
    }
}

/// Sends a wrong password and checks that the `-ERR [AUTH]` comes exactly `delay` after the
/// failure: not a millisecond before, at once after.
async fn failed_login_is_delayed(c: &mut Client, password: &str, delay: Duration) {
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    c.send(&format!("PASS {password}")).await;
    // The check is done and the delay has started; the clock has not moved.
    assert_eq!(
        c.line_within(500).await,
        None,
        "{password}: replied without delay"
    );
    tokio::time::advance(delay - Duration::from_millis(1)).await;
    assert_eq!(c.line_within(100).await, None, "{password}: replied early");
    tokio::time::advance(Duration::from_millis(1)).await;
    let reply = c
        .line_within(2_000)
        .await
        .expect("the reply after the delay");
    assert!(reply.starts_with("-ERR [AUTH] "), "{reply}");
}

#[tokio::test(start_paused = true)]
async fn penalty_curve_on_a_paused_clock() {
    let dir = TempDir::new("server-penalty-clock");
    let store = SqliteStore::open(dir.path()).expect("store");
    let hash = auth::hash_password_with(b"right", CHEAP).expect("hash");
    store
        .create_account_with(
            &AccountName::parse("alice").expect("name"),
            &hash,
            &AccountSecrets::default(),
        )
        .expect("account");
    let config = server::Config {
        argon2: CHEAP,
        // The cheapest SCRAM keys too: they are derived at the first right password.
        scram_iterations: auth::scram::MIN_ITERATIONS,
        max_auth_failures: 100,
        login_timeout: Duration::from_secs(24 * 3600),
        credential_cache_ttl: Duration::ZERO,
        ..server::Config::default()
    };
    assert_eq!(config.auth_failure_delay, Duration::from_secs(2));
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        vec![server::Listener::plain(socket)],
        Arc::new(store),
        config,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    // Keeps the runtime busy so that the paused clock never advances by itself.
    let spinner = tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });

    let mut c = Client::connect(addr).await;
    let secs = Duration::from_secs;
    // Dovecot's curve: 2 s, doubling, capped at 15 s.
    failed_login_is_delayed(&mut c, "one", secs(2)).await;
    failed_login_is_delayed(&mut c, "two", secs(4)).await;
    // The same wrong password again does not raise the penalty (a client retrying a stale
    // password is not guessing).
    failed_login_is_delayed(&mut c, "two", secs(4)).await;
    failed_login_is_delayed(&mut c, "three", secs(8)).await;
    failed_login_is_delayed(&mut c, "four", secs(15)).await;
    failed_login_is_delayed(&mut c, "five", secs(15)).await;

    // While a delay runs, the one runtime thread serves others: it holds no thread.
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    c.send("PASS six").await;
    assert_eq!(c.line_within(500).await, None);
    let mut other = Client::connect(addr).await;
    assert!(other.cmd("CAPA").await.starts_with("+OK"));
    for _ in 0..64 {
        if other.line_within(2_000).await.expect("CAPA line") == "." {
            break;
        }
    }
    assert!(other.cmd("USER alice").await.starts_with("+OK"));
    // A right password is not delayed, even from a penalised client.
    assert!(other.cmd("PASS right").await.starts_with("+OK"), "login");
    assert!(other.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(
        c.line_within(100).await,
        None,
        "the first client is still waiting"
    );
    tokio::time::advance(secs(15)).await;
    assert!(c
        .line_within(2_000)
        .await
        .expect("reply")
        .starts_with("-ERR [AUTH] "));

    // Issue 15: the penalty decays as Dovecot's does. A quiet minute later a mistype waits
    // only the base delay (the good login above cleared the account's count; the client's
    // long-ago failures cost nothing now), not the 15 s of failures long ago ...
    tokio::time::advance(secs(60)).await;
    failed_login_is_delayed(&mut c, "seven", secs(2)).await;
    // ... while a retry the moment the reply comes waits the client's whole curve again.
    failed_login_is_delayed(&mut c, "eight", secs(15)).await;

    spinner.abort();
    let _ = stop.send(());
    tokio::time::advance(secs(60)).await;
    drop(c);
    let _ = server.await;
}
