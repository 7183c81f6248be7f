//! Emptying the agent's process tree at exit: as a child subreaper the agent
//! inherits every orphan of the sandbox (daemons, double forks), including
//! those of a sandbox without a cgroup (the unprivileged seccomp enforcer).

/// Makes the agent the reaper of its descendants' orphans, so that they can
/// be found and killed at exit even without a cgroup.
pub fn become_subreaper() {
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Kills every remaining descendant: repeatedly killing our children and
/// reaping them empties the tree, even of processes that double-forked and
/// called setsid.
pub fn kill_descendants() {
    for _ in 0..200 {
        let kids = children_of_self();
        if kids.is_empty() {
            return;
        }
        for pid in &kids {
            // SAFETY: signalling our own (unreaped) children.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        for pid in &kids {
            let mut st = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(*pid, &mut st, 0) };
        }
    }
}

/// The agent's direct children, from every thread's `children` list.
fn children_of_self() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}
