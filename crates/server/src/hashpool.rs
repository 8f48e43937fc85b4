//! A small dedicated pool of threads for password hashing.
//!
//! argon2id takes 19 MiB per computation. Run on tokio's blocking pool, each of its many
//! threads ends up with its own allocator arena holding such blocks, and the process keeps
//! gigabytes (the benchmark and the soak showed it). A fixed pool of one thread per CPU bounds
//! both the memory (a few arenas) and the concurrency (more hashes at once than cores only adds
//! latency).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The pool's threads have gone (only after a panic in a job took them all down).
#[derive(Debug, thiserror::Error)]
#[error("the password hashing threads are gone")]
pub struct PoolGone;

/// Where the pool records its jobs' times (`pop3d_hash_queue_wait_seconds` and
/// `pop3d_hash_duration_seconds`).
#[derive(Debug, Clone)]
pub struct Timings {
    /// From submission to a thread taking the job.
    pub wait: Histogram,
    /// The job itself.
    pub run: Histogram,
}

#[derive(Debug)]
pub struct HashPool {
    jobs: mpsc::Sender<Job>,
    timings: Timings,
}

impl HashPool {
    /// Starts `threads` hashing threads (at least one).
    pub fn new(threads: usize, timings: Timings) -> std::io::Result<HashPool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(HashPool { jobs, timings })
    }

    /// Runs `f` on a hashing thread and waits for its result without blocking the runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolGone> {
        let (done, result) = oneshot::channel();
        let Timings { wait, run } = self.timings.clone();
        let queued = Instant::now();
        self.jobs
            .send(Box::new(move || {
                let started = Instant::now();
                wait.observe((started - queued).as_secs_f64());
                let value = f();
                run.observe(started.elapsed().as_secs_f64());
                let _ = done.send(value);
            }))
            .map_err(|_| PoolGone)?;
        result.await.map_err(|_| PoolGone)
    }
}

#[cfg(test)]
mod tests {
    use super::HashPool;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn jobs_run_on_the_pool_threads_and_are_timed() {
        let metrics = Metrics::new();
        let pool = HashPool::new(2, metrics.hash_timings()).expect("pool");
        let names: Vec<String> = futures_join(&pool).await;
        assert!(names.iter().all(|n| n.starts_with("argon2-")), "{names:?}");
        let text = metrics.encode();
        for count in [
            "pop3d_hash_queue_wait_seconds_count 4\n",
            "pop3d_hash_duration_seconds_count 4\n",
        ] {
            assert!(text.contains(count), "{count} in {text}");
        }
    }

    async fn futures_join(pool: &HashPool) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..4 {
            let name = pool
                .run(|| {
                    std::thread::current()
                        .name()
                        .unwrap_or_default()
                        .to_string()
                })
                .await
                .expect("run");
            out.push(name);
        }
        out
    }
}
