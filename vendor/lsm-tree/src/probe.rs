// raftkv patch: this file is raftkv's (see PATCH.md).

//! Slow file work, seen by tests. `file_work` marks each place a flush, compaction or
//! version GC waits on the disk (a table's fsync or write back, a version record's
//! fsync, a deleted table's unlink); a test installs a probe on its own thread to see
//! which locks are held there (`patch_test.rs`). Outside test builds it is nothing.

#[cfg(test)]
use std::cell::RefCell;

#[cfg(test)]
type Probe = Box<dyn Fn(&'static str)>;

#[cfg(test)]
thread_local! {
    static PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
}

/// This thread is about to wait on the disk for `what`.
#[inline]
pub(crate) fn file_work(what: &'static str) {
    #[cfg(test)]
    PROBE.with(|probe| {
        if let Some(probe) = &*probe.borrow() {
            probe(what);
        }
    });
    #[cfg(not(test))]
    let _ = what;
}

/// Calls `probe` at every `file_work` on this thread until the returned guard drops.
#[cfg(test)]
pub(crate) fn install(probe: impl Fn(&'static str) + 'static) -> Installed {
    PROBE.with(|p| *p.borrow_mut() = Some(Box::new(probe)));
    Installed
}

#[cfg(test)]
pub(crate) struct Installed;

#[cfg(test)]
impl Drop for Installed {
    fn drop(&mut self) {
        PROBE.with(|p| *p.borrow_mut() = None);
    }
}
