//! The applied index and the requests waiting for it: a write answered on the member
//! it came through once that member has applied it, a linearizable read once the
//! member has applied up to its read index.
//!
//! Each waiter is woken once, when the index reaches what it waits for. A watch
//! channel would wake every waiter at every apply; with hundreds of requests waiting on
//! a follower that applies thousands of batches a second, that is most of its work.
//! This module must never let a waiter miss the advance that satisfies it: the index
//! is raised before the waiters are taken, and a waiter checks it under the same lock
//! it registers under.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::mvcc::engine::lock;

/// Waiters held at most before those whose requests gave up (timed out) are dropped.
const MAX_WAITERS_BEFORE_SWEEP: usize = 65_536;

/// Why a wait ended without the index being reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the state machine stopped")]
pub struct Stopped;

#[derive(Default)]
struct Waiters {
    by_index: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    count: usize,
    /// The state machine is gone: nobody will raise the index again.
    closed: bool,
}

/// The index of the last applied log entry, and who waits for it to rise.
#[derive(Default)]
pub struct AppliedIndex {
    index: AtomicU64,
    waiters: Mutex<Waiters>,
}

impl AppliedIndex {
    pub fn get(&self) -> u64 {
        self.index.load(Ordering::Acquire)
    }

    /// Raises the index to `index` (never lowers it) and wakes everyone waiting for it
    /// or less.
    pub fn advance(&self, index: u64) {
        self.index.fetch_max(index, Ordering::AcqRel);
        let ready = {
            let mut waiters = lock(&self.waiters);
            if waiters
                .by_index
                .first_key_value()
                .is_none_or(|(i, _)| *i > index)
            {
                return;
            }
            let later = waiters.by_index.split_off(&(index + 1));
            let ready = std::mem::replace(&mut waiters.by_index, later);
            waiters.count -= ready.values().map(Vec::len).sum::<usize>();
            ready
        };
        for waiter in ready.into_values().flatten() {
            let _ = waiter.send(());
        }
    }

    /// Fails every waiter, now and later, that the index does not satisfy already: the
    /// state machine stopped.
    pub fn close(&self) {
        let mut waiters = lock(&self.waiters);
        waiters.closed = true;
        waiters.by_index.clear();
        waiters.count = 0;
    }

    /// Returns once the index is at least `index`. Err when the state machine stops
    /// first (`close`).
    pub async fn wait_for(&self, index: u64) -> Result<(), Stopped> {
        if self.get() >= index {
            return Ok(());
        }
        let rx = {
            let mut waiters = lock(&self.waiters);
            if self.get() >= index {
                return Ok(());
            }
            if waiters.closed {
                return Err(Stopped);
            }
            if waiters.count >= MAX_WAITERS_BEFORE_SWEEP {
                sweep(&mut waiters);
            }
            let (tx, rx) = oneshot::channel();
            waiters.by_index.entry(index).or_default().push(tx);
            waiters.count += 1;
            rx
        };
        rx.await.map_err(|_| Stopped)
    }
}

/// Drops the waiters whose requests are gone (timed out or cancelled).
fn sweep(waiters: &mut Waiters) {
    waiters.by_index.retain(|_, list| {
        list.retain(|tx| !tx.is_closed());
        !list.is_empty()
    });
    waiters.count = waiters.by_index.values().map(Vec::len).sum();
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_when_its_index_is_reached_not_before() {
        let applied = Arc::new(AppliedIndex::default());
        let waiting = {
            let applied = applied.clone();
            tokio::spawn(async move { applied.wait_for(5).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        applied.advance(4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "woken at 4 while waiting for 5");
        applied.advance(7);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(woken.expect("woken at 7").expect("task"), Ok(()));
        assert_eq!(lock(&applied.waiters).count, 0);
    }

    #[tokio::test]
    async fn an_index_already_reached_returns_at_once_and_the_index_never_goes_back() {
        let applied = AppliedIndex::default();
        applied.advance(9);
        applied.advance(3);
        assert_eq!(applied.get(), 9);
        assert_eq!(applied.wait_for(9).await, Ok(()));
        assert_eq!(lock(&applied.waiters).count, 0);
    }

    #[tokio::test]
    async fn waiters_are_stopped_when_the_state_machine_closes_it() {
        let applied = Arc::new(AppliedIndex::default());
        applied.advance(1);
        let waiting = {
            let applied = applied.clone();
            tokio::spawn(async move { applied.wait_for(2).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        applied.close();
        assert_eq!(waiting.await.expect("task"), Err(Stopped));
        assert_eq!(applied.wait_for(3).await, Err(Stopped));
        assert_eq!(
            applied.wait_for(1).await,
            Ok(()),
            "what was applied stays applied"
        );
    }

    #[tokio::test]
    async fn waiters_that_gave_up_are_swept_and_the_rest_still_wake() {
        let applied = Arc::new(AppliedIndex::default());
        // Requests that register, then give up (their future is dropped unanswered).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..MAX_WAITERS_BEFORE_SWEEP {
            let mut gave_up = std::pin::pin!(applied.wait_for(2));
            assert!(gave_up.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(lock(&applied.waiters).count, MAX_WAITERS_BEFORE_SWEEP);
        let waiting = {
            let applied = applied.clone();
            tokio::spawn(async move { applied.wait_for(2).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            lock(&applied.waiters).count,
            1,
            "the timed-out waiters are gone"
        );
        applied.advance(2);
        assert_eq!(waiting.await.expect("task"), Ok(()));
    }

    /// Many waiters and an applier racing: every waiter wakes, none early.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_waiters_all_wake_at_or_after_their_index() {
        let applied = Arc::new(AppliedIndex::default());
        let waiters: Vec<_> = (1..=2000u64)
            .map(|i| {
                let applied = applied.clone();
                tokio::spawn(async move {
                    applied.wait_for(i).await.expect("not stopped");
                    assert!(applied.get() >= i);
                })
            })
            .collect();
        for i in 1..=2000u64 {
            applied.advance(i);
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("every waiter wakes")
                .expect("task");
        }
    }
}
