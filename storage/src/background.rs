//! Background threads on a two-core machine (the MVCC compactor): they must not take
//! the CPU from the threads that apply writes. (The engine's workers keep normal
//! priority: starved, they would make writers wait for memtables to be written out.)
//! This module only changes scheduling weights; it must never block.

/// Nice 10: a background thread gets a fair share only when the writers idle.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (nice 10); `what` names it in the log if the
/// kernel refuses.
pub(crate) fn lower_thread_priority(what: &str) {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
    // this thread's scheduling weight.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE)
    };
    if rc != 0 {
        tracing::debug!(
            thread = what,
            "could not lower a background thread's priority"
        );
    }
}
