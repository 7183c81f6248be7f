//! Gives memory freed by closed connections back to the system.
//!
//! glibc's allocator keeps freed memory for reuse: after a burst of
//! connections (each CONNECT briefly holds hyper's request buffers) the
//! holes between the allocations of tunnels still open, and everything once
//! all closed, stayed resident. `malloc_trim(0)` returns every whole free
//! page of every arena (it also releases pages inside the heap, not only
//! at its top). It runs at most once per [`DEBOUNCE`], and only after a
//! tunnel was set up or ended, so an idle proxy does nothing.

use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Wait after the first notice before trimming; notices meanwhile merge.
const DEBOUNCE: Duration = Duration::from_secs(1);

static FREED: Notify = Notify::const_new();

/// Says that a connection's memory was freed (a tunnel was set up, which
/// frees the HTTP connection's buffers, or ended).
pub(crate) fn freed() {
    FREED.notify_one();
}

/// The task that trims after notices (ended with the proxy).
pub(crate) fn spawn() -> JoinHandle<()> {
    tokio::spawn(async {
        loop {
            FREED.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            release();
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    // SAFETY: malloc_trim only walks the allocator's own state under its
    // locks; any argument is valid (0 = keep no extra padding).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's) return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}
