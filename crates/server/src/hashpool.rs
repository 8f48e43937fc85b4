//! A small dedicated pool of threads for password hashing.
//!
//! argon2id takes 19 MiB per computation. Run on tokio's blocking pool, each of its many
//! threads ends up with its own allocator arena holding such blocks, and the process keeps
//! gigabytes (the benchmark and the soak showed it). A fixed pool of one thread per CPU bounds
//! both the memory (a few arenas) and the concurrency (more hashes at once than cores only adds
//! latency).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The pool's threads have gone (only after a panic in a job took them all down).
#[derive(Debug, thiserror::Error)]
#[error("the password hashing threads are gone")]
pub struct PoolGone;

#[derive(Debug)]
pub struct HashPool {
    jobs: mpsc::Sender<Job>,
}

impl HashPool {
    /// Starts `threads` hashing threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<HashPool> {
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
        Ok(HashPool { jobs })
    }

    /// Runs `f` on a hashing thread and waits for its result without blocking the runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolGone> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(f());
            }))
            .map_err(|_| PoolGone)?;
        result.await.map_err(|_| PoolGone)
    }
}

#[cfg(test)]
mod tests {
    use super::HashPool;

    #[tokio::test]
    async fn jobs_run_on_the_pool_threads() {
        let pool = HashPool::new(2).expect("pool");
        let names: Vec<String> = futures_join(&pool).await;
        assert!(names.iter().all(|n| n.starts_with("argon2-")), "{names:?}");
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
