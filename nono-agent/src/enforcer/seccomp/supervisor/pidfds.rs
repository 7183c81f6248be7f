//! Pidfds of the threads that made notifications, kept between
//! notifications: `pidfd_open` and the `close` after it were 2 of the ~15
//! system calls of every supervised `connect`.
//!
//! Why a kept pidfd can never name the wrong thread: a pidfd names a
//! `struct pid`, and a thread id number belongs to one `struct pid` from the
//! thread's creation until it is reaped (an exec by another thread moves
//! the number to the exec'ing thread together with its `struct pid`). The
//! notification still pending (`ID_VALID`, checked before the pidfd is
//! used) means the thread that made it is alive and holds the number now.
//! So the kept pidfd either names that thread, or names a `struct pid`
//! whose number was freed, which no task holds any more: `pidfd_getfd`
//! then fails with `ESRCH`, the entry is dropped, and a fresh pidfd is
//! opened and checked as before.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use super::super::notify;

/// At most this many kept pidfds (descriptors of the agent): when full, all
/// are dropped (threads come and go; the busy ones return at once).
const CAPACITY: usize = 256;

/// Kept pidfds by thread id (in the agent's pid namespace).
#[derive(Default)]
pub(super) struct Pidfds {
    map: Mutex<HashMap<u32, Arc<OwnedFd>>>,
}

impl Pidfds {
    /// Descriptor `fd` of the thread `tid` whose notification `id` is
    /// pending on `listener`, duplicated into the agent (see the module
    /// docs for why a kept pidfd is safe to use). Errors are errnos for the
    /// reply: `ESRCH` when the notification is gone.
    pub(super) fn grab(
        &self,
        listener: BorrowedFd<'_>,
        id: u64,
        tid: u32,
        fd: RawFd,
    ) -> Result<OwnedFd, i32> {
        if let Some(kept) = self.get(tid) {
            if !notify::id_valid(listener, id) {
                return Err(libc::ESRCH);
            }
            match notify::grab_fd(kept.as_fd(), fd) {
                Ok(ours) => return Ok(ours),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => self.forget(tid, &kept),
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EBADF)),
            }
        }
        let pidfd = Arc::new(notify::pidfd_for_thread(tid).map_err(|_| libc::ESRCH)?);
        // Opened first, checked after: the thread that holds `tid` at the
        // check is the one the pidfd names.
        if !notify::id_valid(listener, id) {
            return Err(libc::ESRCH);
        }
        let ours = notify::grab_fd(pidfd.as_fd(), fd)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EBADF))?;
        self.keep(tid, pidfd);
        Ok(ours)
    }

    fn get(&self, tid: u32) -> Option<Arc<OwnedFd>> {
        self.map.lock().ok()?.get(&tid).cloned()
    }

    fn keep(&self, tid: u32, pidfd: Arc<OwnedFd>) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= CAPACITY {
                m.clear();
            }
            m.insert(tid, pidfd);
        }
    }

    /// Drops `tid`'s entry if it is still `stale` (another receiver may
    /// have put a fresh one there meanwhile).
    fn forget(&self, tid: u32, stale: &Arc<OwnedFd>) {
        if let Ok(mut m) = self.map.lock() {
            if m.get(&tid).is_some_and(|p| Arc::ptr_eq(p, stale)) {
                m.remove(&tid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_pidfd_of_a_reaped_thread_fails_with_esrch() {
        // The property the cache relies on: once the thread is reaped, its
        // pidfd no longer reaches any task, even if the number comes back.
        let child = std::process::Command::new("sleep")
            .arg("0")
            .spawn()
            .expect("spawn sleep");
        let tid = child.id();
        let pidfd = notify::pidfd_for_thread(tid).expect("pidfd");
        let mut child = child;
        child.wait().expect("wait");
        let e = notify::grab_fd(pidfd.as_fd(), 0).expect_err("reaped");
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }
}
