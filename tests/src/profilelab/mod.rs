//! Fixture for the profile / Landlock / privilege tests (`tests/profiles/`).
//!
//! * [`Exec`]: builds one `nono-agent exec` invocation (flags, cwd, env) and
//!   runs a command or the Python probe in it; optionally through `sh -c
//!   'exec ... agentpid=$$'` so the sandboxed probe learns the agent's host pid.
//! * [`PROBE_PY`] / [`Probe`]: one Python process runs a list of operations
//!   (`write=PATH`, `read=PATH`, `tcp=PORT`, `unix=PATH|@abstract`,
//!   `ptrace=PID`, ...) and prints one JSON line per operation with its errno.
//! * Guards that remove everything they create, also on panic: [`Scratch`]
//!   (a directory anywhere, e.g. under `/var/tmp` or `$HOME`), [`RemoveOnDrop`],
//!   [`Acceptor`] (TCP, path or abstract unix listeners that greet with
//!   `hello`), [`DaemonSocket`] (a listener at a well-known daemon socket path
//!   that does not exist on this machine).
//! * [`Leftovers`]: sandbox ids under `<cgroup2>/nono/`, `<bpffs>/nono/` and
//!   the state directory before/after a refused `exec`.
//!
//! One file per job: `probe` (the Python probe and its results), `exec`
//! (running the agent), `guards` (scratch files, bind mounts), `listeners`
//! (`Acceptor`, `DaemonSocket`), `leftovers`; everything is re-exported
//! here, so `crate::profilelab::X` paths are unchanged.

mod exec;
mod guards;
mod leftovers;
mod listeners;
mod probe;

pub use exec::{agent, Exec};
pub use guards::{BindMount, RemoveOnDrop, Scratch};
pub use leftovers::{lock_held, sandbox_ids, Leftovers};
pub use listeners::{Acceptor, DaemonSocket, DAEMON_CANDIDATES};
pub use probe::{probe_argv, OpResult, Probe, PROBE_PY};

use std::sync::atomic::{AtomicU32, Ordering};

/// The system Python (not a pyenv shim in `$HOME`, which a profile may not
/// let the sandbox execute).
pub const PYTHON: &str = "/usr/bin/python3";

/// The agent's state directory (owner locks).
pub const STATE_DIR: &str = "/run/nono-agent";

/// A name unique to this test process: `nono-prof-<pid>-<n>-<tag>`.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nono-prof-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
