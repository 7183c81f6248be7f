//! Which directories the sandboxed command must not see.
//!
//! Without `nsdelegate` on the cgroup2 mount (the common case), a cgroup
//! namespace does not stop a uid-0 process from writing its pid into any
//! `cgroup.procs` it can open, and those files are owned by uid 0: a root
//! command without capabilities could move itself to the root cgroup and out
//! of reach of the BPF programs. So every cgroup mount (v2 and v1) is
//! covered, along with every bpffs (pinned links could be opened and
//! detached) and the agent's state directory (owner locks).

use std::path::{Path, PathBuf};

use crate::mountinfo;

/// Errors of finding what to hide.
#[derive(Debug, thiserror::Error)]
pub enum HideError {
    /// The mount table could not be read.
    #[error("reading /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
}

/// Mount points to cover, outermost first, none beneath another.
pub fn mask_targets(state_dir: &Path) -> Result<Vec<PathBuf>, HideError> {
    let text = mountinfo::read().map_err(HideError::Mountinfo)?;
    Ok(plan(&text, state_dir))
}

fn plan(mountinfo_text: &str, state_dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = ["cgroup2", "cgroup", "bpf"]
        .iter()
        .flat_map(|t| mountinfo::find(mountinfo_text, t))
        .map(|m| m.mount_point)
        .collect();
    // Hybrid layouts mount the cgroup hierarchies on a root-owned tmpfs at
    // /sys/fs/cgroup, where a uid-0 sandbox could still create files: cover
    // such a tmpfs whole (which also hides the hierarchies beneath it).
    let tmpfs: Vec<PathBuf> = mountinfo::find(mountinfo_text, "tmpfs")
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    let holders: Vec<PathBuf> = all
        .iter()
        .filter_map(|p| p.parent())
        .filter(|parent| tmpfs.iter().any(|t| t == parent))
        .map(Path::to_path_buf)
        .collect();
    all.extend(holders);
    all.push(state_dir.to_path_buf());
    all.sort_by_key(|p| p.components().count());
    let mut out: Vec<PathBuf> = Vec::new();
    for p in all {
        // A path beneath one already covered is hidden with it (and could
        // not be mounted on any more).
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_every_cgroup_and_bpf_mount_once() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
            50 23 0:40 / /sys/fs/bpf rw - bpf bpf rw\n\
            51 50 0:41 / /sys/fs/bpf/inner rw - bpf bpf rw\n";
        let mut p = plan(text, Path::new("/run/nono-agent"));
        p.sort();
        assert_eq!(
            p,
            vec![
                PathBuf::from("/run/nono-agent"),
                PathBuf::from("/sys/fs/bpf"),
                PathBuf::from("/sys/fs/cgroup"),
            ]
        );
    }
}
