//! What a refused `exec` must not leave behind: sandbox ids under
//! `<cgroup2>/nono/`, `<bpffs>/nono/` and the state directory.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::sys;

use super::{unique, STATE_DIR};

/// Sandbox ids present: cgroups under `<cgroup2>/nono/`, pin directories
/// under `<bpffs>/nono/`, lock files in the state directory.
pub fn sandbox_ids() -> Vec<String> {
    let cg = sys::cgroup2_mount()
        .expect("no cgroup2 mount in /proc/self/mountinfo")
        .join("nono");
    let mut ids = sys::subdirs(&cg);
    if let Some(b) = sys::bpffs_mount() {
        ids.extend(sys::dir_entries(&b.join("nono")));
    }
    ids.extend(
        sys::dir_entries(Path::new(STATE_DIR))
            .into_iter()
            .filter_map(|n| n.strip_suffix(".lock").map(str::to_string)),
    );
    ids.sort();
    ids.dedup();
    ids
}

/// Whether some process holds the flock on `<state>/<id>.lock` (its agent
/// is alive), read from /proc/locks.
pub fn lock_held(id: &str) -> bool {
    let Ok(meta) = fs::metadata(Path::new(STATE_DIR).join(format!("{id}.lock"))) else {
        return false;
    };
    let ino = meta.ino().to_string();
    fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.contains("FLOCK")
                && l.split_whitespace()
                    .any(|f| f.contains(':') && f.rsplit(':').next() == Some(ino.as_str()))
        })
}

/// Snapshot of sandbox ids, to show that a refused `exec` left nothing.
/// Sandboxes of concurrent tests (live agents hold their lock) are told
/// apart from leftovers.
pub struct Leftovers {
    before: Vec<String>,
    /// Passed as an argument of the refused command; no process may carry it.
    pub marker: String,
}

impl Leftovers {
    pub fn snapshot() -> Leftovers {
        // The directories themselves must be findable, or the check is void.
        assert!(
            sys::cgroup2_mount().is_some(),
            "no cgroup2 mount in /proc/self/mountinfo"
        );
        assert!(
            sys::bpffs_mount().is_some(),
            "no bpffs mount in /proc/self/mountinfo"
        );
        Leftovers {
            before: sandbox_ids(),
            marker: unique("marker"),
        }
    }

    /// New ids that are not (or no longer) owned by a live agent.
    fn stale_new(&self) -> Vec<String> {
        sandbox_ids()
            .into_iter()
            .filter(|id| !self.before.contains(id) && !lock_held(id))
            .collect()
    }

    /// Panics if a new sandbox id without a live agent remains (after a
    /// grace period for concurrent sandboxes being torn down) or a process
    /// with the marker runs.
    pub fn assert_none(&self, what: &str) {
        let mut stale = Vec::new();
        let gone = sys::wait_until(Duration::from_secs(10), || {
            stale = self.stale_new();
            stale.is_empty()
        });
        assert!(
            gone,
            "{what}: left behind sandbox state (cgroup / pins / lock without a live agent): {stale:?}"
        );
        let procs = sys::pids_with_marker(&self.marker);
        for p in &procs {
            sys::kill_pid(*p);
        }
        assert!(
            procs.is_empty(),
            "{what}: processes of the refused command run: {procs:?}"
        );
    }
}
