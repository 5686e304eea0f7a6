//! The handle a store keeps to its compaction thread: wake it, wait until it is idle,
//! stop it when the store is dropped. It knows nothing of what the thread does
//! (compaction.rs) and imports nothing of the store.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::StoreError;

/// How often a waiter looks again at whether the work caught up.
const WAIT_IDLE_POLL_MS: u64 = 50;

#[derive(Default)]
struct State {
    pending: bool,
    running: bool,
    shutdown: bool,
    /// The last run failed; it is retried at the next wake.
    failed: bool,
}

#[derive(Default)]
pub struct Compactor {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl Drop for Compactor {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        cv.notify_all();
    }
}

impl Compactor {
    pub(crate) fn wake(&self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).pending = true;
        cv.notify_all();
    }

    /// Starts the thread, at lowered priority: `work` runs after each wake, until the
    /// handle is dropped or `work` answers None (its store is gone).
    pub(crate) fn spawn(
        &self,
        work: impl FnMut() -> Option<Result<(), StoreError>> + Send + 'static,
    ) {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("raftkv-compactor".into())
            .spawn(move || {
                crate::background::lower_thread_priority("mvcc compactor");
                run(shared, work)
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "mvcc: could not start the compaction thread; history will not be reclaimed");
        }
    }

    /// Blocks until no run is pending or running and `caught_up` holds, or the last run
    /// failed.
    pub(crate) fn wait_idle(&self, caught_up: impl Fn() -> bool) {
        let (lock, cv) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !state.pending && !state.running && (state.failed || caught_up()) {
                return;
            }
            state = cv
                .wait_timeout(state, Duration::from_millis(WAIT_IDLE_POLL_MS))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn run(
    shared: Arc<(Mutex<State>, Condvar)>,
    mut work: impl FnMut() -> Option<Result<(), StoreError>>,
) {
    let (lock, cv) = &*shared;
    loop {
        {
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !state.pending && !state.shutdown {
                state = cv.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.shutdown {
                return;
            }
            state.pending = false;
            state.running = true;
        }
        let failed = match work() {
            None => return,
            Some(Err(e)) => {
                tracing::error!(error = %e, "mvcc: compaction failed; it will be retried at the next Compact");
                true
            }
            Some(Ok(())) => false,
        };
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        state.running = false;
        state.failed = failed;
        drop(state);
        cv.notify_all();
    }
}
