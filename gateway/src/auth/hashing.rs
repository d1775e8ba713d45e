//! The password-hashing pool: at most `threads` argon2 checks at once, each on a blocking thread,
//! and a bounded queue behind them. A login flood waits here (or is told the server is busy)
//! instead of taking every thread of the runtime's blocking pool, which the Kafka client's
//! blocking calls and file reads also need.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Semaphore;

/// Checks waiting per thread before new ones are refused as busy.
const QUEUE_PER_THREAD: usize = 256;

/// Runs password checks on a bounded number of blocking threads.
#[derive(Debug, Clone)]
pub struct HashingPool {
    running: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    threads: usize,
}

/// The pool's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks are waiting")]
pub struct Busy;

impl HashingPool {
    /// A pool of `threads` (0: one per core).
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            threads
        };
        Self {
            running: Arc::new(Semaphore::new(threads)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: threads * QUEUE_PER_THREAD,
            threads,
        }
    }

    /// How many checks run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `check` on a blocking thread once one of the pool's places is free.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        // A guard, not a decrement after the await: a caller that gives up while waiting (a
        // client gone, a deadline) must not leave its place counted for ever.
        let waiting = Waiting::enter(&self.waiting, self.max_waiting).ok_or(Busy)?;
        let permit = self.running.clone().acquire_owned().await;
        drop(waiting);
        let Ok(permit) = permit else {
            return Err(Busy);
        };
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = check();
            drop(permit);
            outcome
        })
        .await;
        outcome.map_err(|_| Busy)
    }
}

/// One place in the queue, given back when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize, most: usize) -> Option<Self> {
        if count.fetch_add(1, Ordering::AcqRel) >= most {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_bound_run_at_once() {
        let pool = HashingPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let checks = (0..16).map(|_| {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            })
        });
        for check in checks.collect::<Vec<_>>() {
            check.await.unwrap().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "{most:?}");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_while_waiting_frees_its_place() {
        let pool = HashingPool::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        // The one thread is busy until released.
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || held.recv().ok()).await }
        });
        tokio::task::yield_now().await;
        for _ in 0..2 * QUEUE_PER_THREAD {
            let waiting = pool.run(|| ());
            // Dropped while waiting for the busy thread.
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(1), waiting)
                    .await
                    .is_err()
            );
        }
        assert_eq!(pool.waiting.load(Ordering::SeqCst), 0);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
