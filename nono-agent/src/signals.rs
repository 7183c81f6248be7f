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
//! The forwarding is a task on the agent's runtime, not a thread of its
//! own: a thread that has run on another CPU makes every copy-on-write
//! fault after the child's fork flush that CPU's TLB too (an
//! inter-processor interrupt, which a VM traps), and its start and join
//! were on every sandbox's start-up path.

use std::sync::{Arc, Mutex, PoisonError};
use tokio::signal::unix::{signal, SignalKind};

/// Where signals go: the child once it exists; until then, the last signal
/// that arrived waits for it.
#[derive(Default)]
struct Target {
    pid: i32,
    pending: Option<libc::c_int>,
}

/// Forwards signals to the child (see [`Forwarder::child_started`]).
pub struct Forwarder {
    target: Arc<Mutex<Target>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Installs the handlers (on return, these signals no longer end the
    /// agent: the child decides) and starts forwarding. Must be called on
    /// the agent's runtime.
    pub fn start() -> std::io::Result<Self> {
        let kind = |sig| signal(SignalKind::from_raw(sig));
        let (mut int, mut term, mut hup, mut quit) = (
            kind(libc::SIGINT)?,
            kind(libc::SIGTERM)?,
            kind(libc::SIGHUP)?,
            kind(libc::SIGQUIT)?,
        );
        let target = Arc::new(Mutex::new(Target::default()));
        let t = target.clone();
        let task = tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    r = int.recv() => r.map(|()| libc::SIGINT),
                    r = term.recv() => r.map(|()| libc::SIGTERM),
                    r = hup.recv() => r.map(|()| libc::SIGHUP),
                    r = quit.recv() => r.map(|()| libc::SIGQUIT),
                };
                let Some(sig) = got else { return };
                let mut g = t.lock().unwrap_or_else(PoisonError::into_inner);
                if g.pid > 0 {
                    // SAFETY: kill(2) with a pid we spawned; at worst it
                    // has exited and is a zombie we have not reaped yet.
                    unsafe { libc::kill(g.pid, sig) };
                } else {
                    g.pending = Some(sig);
                }
            }
        });
        Ok(Self { target, task })
    }

    /// The child exists: signals go to it from now on, and one that
    /// arrived before is sent now.
    pub fn child_started(&self, pid: i32) {
        let mut g = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        g.pid = pid;
        if let Some(sig) = g.pending.take() {
            // SAFETY: kill(2) of the child we just spawned.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// The child was reaped: its pid may be reused, nothing is sent any
    /// more.
    pub fn child_reaped(&self) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pid = 0;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
