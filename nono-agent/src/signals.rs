//! Forwarding termination signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT) to
//! the child.
//!
//! The child runs in a session of its own (see `sandbox::child`), outside
//! the caller's process group and terminal: a signal the caller's terminal
//! generates (Ctrl-C, Ctrl-\, hangup) reaches the agent only, so every
//! signal is forwarded, whoever sent it. With a pseudo-terminal the caller's
//! terminal is in raw mode and Ctrl-C reaches the command through its own
//! pty instead (see `sandbox::relay`).
//!
//! The signal handler forwards by itself (`kill(2)` is async-signal-safe):
//! no thread and no task. A thread that has run on another CPU makes every
//! copy-on-write fault after the child's fork flush that CPU's TLB too (an
//! inter-processor interrupt, which a VM traps), and its start and join
//! were on every sandbox's start-up path; a task of the runtime would wait
//! for the runtime, which a blocked write (a stalled terminal the relay
//! writes to, an events FIFO nobody reads) holds: `kill` and `timeout`
//! must reach the command regardless.

use std::sync::atomic::{AtomicI32, Ordering::SeqCst};

/// The child's pid: 0 before it exists, -1 once it was reaped.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before the child existed (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// The forwarded signals.
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Forwards signals to the child (see [`Forwarder::child_started`]). One per
/// process (the state is the signal handler's, hence static).
pub struct Forwarder(());

impl Forwarder {
    /// Installs the handlers: from here on these signals no longer end the
    /// agent; the child decides.
    pub fn start() -> std::io::Result<Self> {
        TARGET.store(0, SeqCst);
        PENDING.store(0, SeqCst);
        for sig in FORWARDED {
            // SAFETY: the action only loads and stores atomics and calls
            // kill(2), all async-signal-safe.
            unsafe { signal_hook::low_level::register(sig, move || forward(sig)) }?;
        }
        Ok(Self(()))
    }

    /// The child exists: signals go to it from now on, and one that
    /// arrived before is sent now.
    pub fn child_started(&self, pid: i32) {
        TARGET.store(pid, SeqCst);
        send_pending(pid);
    }

    /// The child was reaped: its pid may be reused, nothing is sent any
    /// more (the signals stay caught: the agent finishes its teardown).
    pub fn child_reaped(&self) {
        TARGET.store(-1, SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        TARGET.store(-1, SeqCst);
    }
}

/// The handler's action. A signal before the child exists is kept in
/// `PENDING`; whichever side sees both the pid and the pending signal
/// (`child_started` or this) sends it, exactly once (the swap).
fn forward(sig: libc::c_int) {
    match TARGET.load(SeqCst) {
        pid if pid > 0 => {
            // SAFETY: kill(2) of the child we spawned (not yet reaped).
            unsafe { libc::kill(pid, sig) };
        }
        0 => {
            PENDING.store(sig, SeqCst);
            let pid = TARGET.load(SeqCst);
            if pid > 0 {
                send_pending(pid);
            }
        }
        _ => {}
    }
}

fn send_pending(pid: i32) {
    let sig = PENDING.swap(0, SeqCst);
    if sig != 0 {
        // SAFETY: kill(2) of the child we spawned (not yet reaped).
        unsafe { libc::kill(pid, sig) };
    }
}
