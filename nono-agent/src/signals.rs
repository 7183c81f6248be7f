//! Forwarding termination signals to the child.
//!
//! The child runs in a session of its own (see `sandbox::child`), outside
//! the caller's process group and terminal: a signal the caller's terminal
//! generates (Ctrl-C, Ctrl-\, hangup) reaches the agent only, so every
//! signal is forwarded, whoever sent it. With a pseudo-terminal the caller's
//! terminal is in raw mode and Ctrl-C reaches the command through its own
//! pty instead (see `sandbox::relay`).

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// Forwards signals to the pid stored in `target` (0 = no child yet; then
/// the signal is remembered and sent as soon as the child exists).
pub struct Forwarder {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Installs the handlers. From here on the agent is not killed by these
    /// signals; the child decides.
    pub fn start(target: Arc<AtomicI32>) -> std::io::Result<Self> {
        let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("nono-signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let pid = target.load(Ordering::SeqCst);
                    if pid > 0 {
                        // SAFETY: kill(2) with a pid we spawned; at worst it
                        // has exited and is a zombie we have not reaped yet.
                        unsafe { libc::kill(pid, origin.signal) };
                    }
                }
            })?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
