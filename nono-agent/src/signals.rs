//! Forwarding termination signals to the child.
//!
//! The child shares the agent's process group, so a signal the terminal
//! generates (Ctrl-C, Ctrl-\, hangup) already reaches it; forwarding those
//! again would deliver them twice. Only signals sent to the agent itself
//! (`kill`, a supervisor, a CI runner) are forwarded. The origin comes from
//! `siginfo`, which signal-hook's `WithOrigin` exposes.

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
                    // SI_USER / SI_QUEUE / tkill: someone sent it to us; the
                    // kernel (tty) also signalled the child's group.
                    let from_kernel =
                        matches!(origin.cause, signal_hook::low_level::siginfo::Cause::Kernel);
                    if from_kernel {
                        continue;
                    }
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
