//! Scenario 4: many idle connections held open at once (greeted and silent, or logged in and
//! silent), to measure what each costs the server while new sessions keep being served.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tokio::net::TcpStream;

use crate::client::{open_greeted, open_logged_in, Target};

/// One connection that takes longer than this to open fails the phase.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What to hold.
#[derive(Debug, Clone)]
pub enum Idle {
    /// Connected and greeted; no command sent.
    PreLogin(usize),
    /// Logged in (USER, PASS) as each of these users, one session each.
    LoggedIn(Arc<Vec<String>>),
}

impl Idle {
    pub fn count(&self) -> usize {
        match self {
            Idle::PreLogin(n) => *n,
            Idle::LoggedIn(users) => users.len(),
        }
    }
}

/// Opens every connection `what` asks for, at most `parallel` at a time, and returns them all
/// open. Fails (closing what it opened) when one cannot be opened or `time` runs out.
pub async fn open_all(
    target: Arc<Target>,
    what: Idle,
    parallel: usize,
    time: Duration,
) -> Result<Vec<TcpStream>> {
    let n = what.count();
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + time;
    let mut tasks = Vec::with_capacity(parallel);
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let (target, what, next) = (target.clone(), what.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(mine);
                }
                if Instant::now() >= deadline {
                    bail!("{i} of {n} connections opened when time ran out");
                }
                let open = async {
                    match &what {
                        Idle::PreLogin(_) => open_greeted(&target).await,
                        Idle::LoggedIn(users) => open_logged_in(&target, &users[i]).await,
                    }
                };
                let conn = tokio::time::timeout(OPEN_TIMEOUT, open)
                    .await
                    .map_err(|_| anyhow!("connection {i}: timed out opening"))?
                    .map_err(|e| e.context(format!("connection {i}")))?;
                mine.push(conn);
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(conns)) => all.extend(conns),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow!("opening task: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(all),
    }
}
