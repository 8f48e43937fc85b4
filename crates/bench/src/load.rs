//! Concurrent load: `concurrency` workers running sessions, bounded by a session count and a
//! deadline, with per-session latencies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::client::{session, Target, Work};
use crate::corpus::Expected;

/// A session that takes longer than this counts as failed (and cannot hang the benchmark).
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// A run stops early after this many failed sessions.
const MAX_ERRORS: u64 = 50;

/// How users are handed to workers.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Worker `w` logs in, over and over, as users `w`, `w + c`, `w + 2c`, ... (so no two
    /// sessions ever share a maildrop), until `sessions` were started or `time` passed.
    Repeat { sessions: u64, time: Duration },
    /// Every user once, taken from a shared queue, unless `time` passes first.
    EachOnce { time: Duration },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub sessions: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub messages: u64,
    pub octets: u64,
    pub seconds: f64,
    /// Time spent in RETR (sending it to the end of the reply), summed over sessions.
    pub retr_seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// True when the deadline cut the run short (EachOnce did not reach every user).
    pub truncated: bool,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

#[derive(Default)]
struct WorkerResult {
    sessions: u64,
    errors: u64,
    first_error: Option<String>,
    messages: u64,
    octets: u64,
    retr: Duration,
    latencies_us: Vec<u64>,
}

pub async fn run(
    target: Arc<Target>,
    users: Arc<Vec<String>>,
    work: Work,
    concurrency: usize,
    mode: Mode,
    expected: Option<Arc<Expected>>,
) -> Result<RunResult> {
    if concurrency == 0 || users.is_empty() {
        bail!(
            "nothing to do: concurrency {concurrency}, {} users",
            users.len()
        );
    }
    if matches!(mode, Mode::Repeat { .. }) && concurrency > users.len() {
        bail!(
            "concurrency {concurrency} needs at least as many users ({} given): two sessions \
             must never share a maildrop",
            users.len()
        );
    }
    let started = Arc::new(AtomicU64::new(0));
    let next_user = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0
        + match mode {
            Mode::Repeat { time, .. } | Mode::EachOnce { time } => time,
        };
    let mut handles = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (target, users, expected) = (target.clone(), users.clone(), expected.clone());
        let (started, next_user, errors) = (started.clone(), next_user.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let mut r = WorkerResult::default();
            let mut buf = Vec::with_capacity(128 * 1024);
            let mine: Vec<&String> = users.iter().skip(w).step_by(concurrency).collect();
            let mut turn = 0usize;
            loop {
                if Instant::now() >= deadline || errors.load(Ordering::Relaxed) >= MAX_ERRORS {
                    break;
                }
                let user = match mode {
                    Mode::Repeat { sessions, .. } => {
                        if started.fetch_add(1, Ordering::Relaxed) >= sessions {
                            break;
                        }
                        turn += 1;
                        mine[(turn - 1) % mine.len()]
                    }
                    Mode::EachOnce { .. } => {
                        match users.get(next_user.fetch_add(1, Ordering::Relaxed)) {
                            Some(u) => u,
                            None => break,
                        }
                    }
                };
                let s0 = Instant::now();
                let outcome = tokio::time::timeout(
                    SESSION_TIMEOUT,
                    session(&target, user, work, expected.as_deref(), &mut buf),
                )
                .await;
                let took = s0.elapsed();
                match outcome {
                    Ok(Ok(o)) => {
                        r.sessions += 1;
                        r.messages += o.messages;
                        r.octets += o.octets;
                        r.retr += o.retr;
                        r.latencies_us.push(took.as_micros() as u64);
                    }
                    Ok(Err(e)) => {
                        r.errors += 1;
                        errors.fetch_add(1, Ordering::Relaxed);
                        r.first_error
                            .get_or_insert_with(|| format!("{user}: {e:#}"));
                    }
                    Err(_) => {
                        r.errors += 1;
                        errors.fetch_add(1, Ordering::Relaxed);
                        r.first_error
                            .get_or_insert_with(|| format!("{user}: session timed out"));
                    }
                }
            }
            r
        }));
    }
    let mut total = WorkerResult::default();
    for h in handles {
        let r = h.await?;
        total.sessions += r.sessions;
        total.errors += r.errors;
        total.messages += r.messages;
        total.octets += r.octets;
        total.retr += r.retr;
        total.latencies_us.extend(r.latencies_us);
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let truncated = match mode {
        Mode::EachOnce { .. } => total.sessions + total.errors < users.len() as u64,
        Mode::Repeat { .. } => false,
    };
    Ok(RunResult {
        sessions: total.sessions,
        errors: total.errors,
        first_error: total.first_error,
        messages: total.messages,
        octets: total.octets,
        seconds,
        retr_seconds: total.retr.as_secs_f64(),
        p50_ms: percentile(&total.latencies_us, 50.0),
        p99_ms: percentile(&total.latencies_us, 99.0),
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[5000], 99.0), 5.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
