//! The host paths every privileged sandbox sees read-only, whatever its
//! profile: system configuration and software, the kernel's tunables and
//! the enforcer's own files.
//!
//! Why: a sandbox usually runs as uid 0 under the BPF enforcer. It has no
//! capabilities, but uid 0 owns `/etc`, `/usr` and the files of `/proc/sys`
//! and `/sys`, and an owner needs no capability to write its own files: a
//! `|program` core pattern, a file in `/etc/cron.d`, an `/etc/hosts` entry
//! (which the agent's proxy resolves through) or a profile in
//! `/etc/nono-agent` would make an unconfined process do what the sandbox
//! may not. In the sandbox's private mount namespace each path is bound onto
//! itself and made read-only recursively (`mount_setattr`): no file is
//! created on the host and nothing outlives the namespace.

use std::path::{Path, PathBuf};

/// System paths, in the order they are bound. `/proc` entries refer to the
/// sandbox's own `/proc`, mounted before these.
const SYSTEM: &[&str] = &[
    "/etc",
    "/usr",
    "/boot",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/opt",
    "/var/spool",
    "/var/lib",
    "/sys",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Paths to bind read-only: the system paths that exist, the agent's own
/// binary, and its user configuration directory (`$XDG_CONFIG_HOME/nono-agent`
/// or `~/.config/nono-agent`) when it exists. Symlinks are resolved (on a
/// merged-/usr system `/lib` is `/usr/lib`) and a path already inside
/// another one is dropped.
pub fn readonly_targets() -> Vec<PathBuf> {
    let mut want: Vec<PathBuf> = SYSTEM.iter().map(PathBuf::from).collect();
    if let Ok(exe) = std::env::current_exe() {
        want.push(exe);
    }
    if let Some(dir) = user_config_dir() {
        want.push(dir.join("nono-agent"));
    }
    plan(want.into_iter().filter_map(|p| resolve(&p)).collect())
}

fn user_config_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")),
    }
}

/// The real path, for paths that exist. `/proc` paths are kept as they are
/// (the agent's `/proc` is not the one the sandbox mounts, but it is the same
/// kernel, so the same entries exist: `/proc/sysrq-trigger` only with
/// CONFIG_MAGIC_SYSRQ).
fn resolve(p: &Path) -> Option<PathBuf> {
    if p.starts_with("/proc") {
        return p.exists().then(|| p.to_path_buf());
    }
    std::fs::canonicalize(p).ok()
}

/// Sorted, without duplicates and without paths inside another path of the
/// list (a recursive bind already covers them). Order is kept for the
/// rest: a parent always comes before a child, so nothing is hidden by a
/// later bind.
fn plan(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.iter().any(|q| p.starts_with(q)) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_duplicate_paths_are_dropped() {
        let got = plan(
            [
                "/usr",
                "/usr/lib",
                "/etc",
                "/usr",
                "/proc/sys",
                "/proc/sysrq-trigger",
                "/etcx",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
        );
        let want: Vec<PathBuf> = ["/etc", "/etcx", "/proc/sys", "/proc/sysrq-trigger", "/usr"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn system_paths_are_covered() {
        let t = readonly_targets();
        for p in ["/etc", "/usr", "/sys", "/proc/sys"] {
            assert!(
                t.iter().any(|q| Path::new(p).starts_with(q)),
                "{p} in {t:?}"
            );
        }
        assert!(t.iter().all(|p| p.is_absolute()));
    }
}
