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

/// One bind of a path onto itself in the sandbox's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The (resolved) path.
    pub path: PathBuf,
    /// What the bind is for.
    pub kind: Kind,
}

/// What a [`Bind`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A directory above a protected path, made a mount point only so that
    /// it cannot be renamed or removed (`EBUSY`), left as writable as it
    /// was. Without anchors a sandbox could `mv .git .git.old` (or
    /// `~/.config`, or `$HOME` itself) and make a fresh one beside it whose
    /// hooks nothing protects.
    Anchor,
    /// A protected path: read-only with everything below it.
    ReadOnly,
    /// A place inside a read-only path that ordinary work writes
    /// ([`WRITABLE`]): made writable again.
    Writable,
}

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
    // Runtime configuration that root daemons read later: systemd units
    // and generators, udev rules, modprobe.d, tmpfiles.d, sysctl.d.
    "/run",
];

/// Places inside [`SYSTEM`] paths that programs in a sandbox write as part
/// of ordinary work: per-user runtime directories and lock files.
const WRITABLE: &[&str] = &["/run/user", "/run/lock"];

/// Paths to bind read-only: the system paths that exist, the agent's own
/// binary, its user configuration directory (`$XDG_CONFIG_HOME/nono-agent`
/// or `~/.config/nono-agent`), and the auto-run files of the working
/// directory's repository and of `$HOME` ([`autorun_targets`]), when they
/// exist. Symlinks are resolved (on a
/// merged-/usr system `/lib` is `/usr/lib`) and a path already inside
/// another one is dropped.
pub fn readonly_targets(extra: &[PathBuf]) -> Vec<Bind> {
    let mut want: Vec<PathBuf> = SYSTEM.iter().map(PathBuf::from).collect();
    want.extend_from_slice(extra);
    if let Ok(exe) = std::env::current_exe() {
        want.push(exe);
    }
    if let Some(dir) = user_config_dir() {
        want.push(dir.join("nono-agent"));
    }
    if let Ok(cwd) = std::env::current_dir() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        want.extend(autorun_targets(&cwd, home.as_deref()));
    }
    let mut binds = plan(want.into_iter().filter_map(|p| resolve(&p)).collect());
    binds.extend(
        WRITABLE
            .iter()
            .filter_map(|p| resolve(Path::new(p)))
            .map(|path| Bind {
                path,
                kind: Kind::Writable,
            }),
    );
    binds.sort_by(|a, b| a.path.cmp(&b.path));
    binds
}

/// Files in `$HOME` that programs outside the sandbox run or obey later:
/// shell startup files, ssh and git configuration, user services and
/// autostart entries, places on `PATH` or `sys.path`, tool configuration
/// that names programs to run, the coding agents' own hook settings.
const HOME_AUTORUN: &[&str] = &[
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".zlogout",
    ".ssh",
    ".gitconfig",
    ".config/git",
    ".config/systemd/user",
    ".config/autostart",
    ".config/pip",
    ".config/environment.d",
    ".local/bin",
    ".local/lib",
    ".cargo/bin",
    ".cargo/config.toml",
    ".cargo/config",
    ".npmrc",
    ".pam_environment",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".claude/commands",
    ".claude/agents",
    ".codex",
    ".vscode",
];

/// Files in a project whose contents editors, git and coding agents run or
/// obey when the user works in it later.
const PROJECT_AUTORUN: &[&str] = &[
    ".gitmodules",
    ".envrc",
    ".vscode",
    ".idea",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".claude/commands",
    ".claude/agents",
    ".codex",
    ".mcp.json",
];

/// The auto-run files of the git repository containing `cwd` (its hooks and
/// configuration, the common directory of a worktree, submodules' hooks and
/// configuration, the project files in [`PROJECT_AUTORUN`]) and of `home`
/// ([`HOME_AUTORUN`]). Only what exists is returned: a bind needs an
/// existing target, and none is ever created on the host.
pub fn autorun_targets(cwd: &Path, home: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let top = cwd
        .ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf);
    if let Some(top) = &top {
        out.extend(git_autorun(&top.join(".git")));
    }
    let project = top.as_deref().unwrap_or(cwd);
    out.extend(PROJECT_AUTORUN.iter().map(|f| project.join(f)));
    out.retain(|p| p.symlink_metadata().is_ok());
    if let Some(h) = home {
        out.extend(home_autorun_targets(h));
    }
    out
}

/// The auto-run files ([`HOME_AUTORUN`]) that exist in `home`. Besides the
/// caller's `$HOME` (what [`autorun_targets`] covers), a sandbox run as
/// another user (`--user`) needs that user's: they are what that user's
/// next login, shell or git runs.
pub fn home_autorun_targets(home: &Path) -> Vec<PathBuf> {
    HOME_AUTORUN
        .iter()
        .map(|f| home.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// Hooks and configuration of the repository whose `.git` is `dotgit` (a
/// directory, or a file naming the real one for worktrees and submodules).
fn git_autorun(dotgit: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Some(gitdir) = real_gitdir(dotgit) else {
        return out;
    };
    let common = std::fs::read_to_string(gitdir.join("commondir"))
        .ok()
        .map(|c| gitdir.join(c.trim()))
        .unwrap_or_else(|| gitdir.clone());
    for dir in [&gitdir, &common] {
        out.push(dir.join("hooks"));
        out.push(dir.join("config"));
        out.push(dir.join("config.worktree"));
        out.push(dir.join("info/attributes"));
    }
    // Submodules keep their repositories under modules/<name>/.
    if let Ok(entries) = std::fs::read_dir(common.join("modules")) {
        for e in entries.flatten() {
            out.push(e.path().join("hooks"));
            out.push(e.path().join("config"));
        }
    }
    out
}

fn real_gitdir(dotgit: &Path) -> Option<PathBuf> {
    if dotgit.is_dir() {
        return Some(dotgit.to_path_buf());
    }
    let text = std::fs::read_to_string(dotgit).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
    Some(dotgit.parent()?.join(rel))
}

/// What an unprivileged sandbox gets bound read-only: what its user could
/// otherwise change and an unconfined program runs later (the auto-run
/// files, the agent's user configuration, the agent's binary when the user
/// owns it). System paths belong to root and are read-only for it anyway.
pub fn user_targets(extra: &[PathBuf]) -> Vec<Bind> {
    let mut want = extra.to_vec();
    if let Ok(exe) = std::env::current_exe() {
        want.push(exe);
    }
    if let Some(dir) = user_config_dir() {
        want.push(dir.join("nono-agent"));
    }
    if let Ok(cwd) = std::env::current_dir() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        want.extend(autorun_targets(&cwd, home.as_deref()));
    }
    plan(want.into_iter().filter_map(|p| resolve(&p)).collect())
}

/// The bind that decides whether `path` (resolved) is writable in the
/// sandbox: the deepest read-only or writable bind at or above it (the
/// child mounts them in this sorted order, each recursive, so the deepest
/// one is what the path sees). Anchors change no rights and are skipped.
pub fn covering<'a>(binds: &'a [Bind], path: &Path) -> Option<&'a Bind> {
    binds
        .iter()
        .filter(|b| b.kind != Kind::Anchor && path.starts_with(&b.path))
        .max_by_key(|b| b.path.components().count())
}

/// Whether `path` is one of the read-only system paths (rather than an
/// auto-run file or the agent's own files), to say which protection it is.
pub fn is_system_path(path: &Path) -> bool {
    SYSTEM
        .iter()
        .filter_map(|p| resolve(Path::new(p)))
        .any(|p| path.starts_with(p))
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

/// The binds for the read-only `paths`: each path once, none inside
/// another (a recursive bind already covers it), and before them an anchor
/// for every directory above one of them (but `/` and `/proc`) that no
/// read-only path covers. Sorted, so a parent always comes before its
/// children and no bind hides a later one (each bind is recursive and
/// carries what was mounted below it before).
fn plan(mut paths: Vec<PathBuf>) -> Vec<Bind> {
    paths.sort();
    paths.dedup();
    let mut ro: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !ro.iter().any(|q| p.starts_with(q)) {
            ro.push(p);
        }
    }
    let mut anchors: Vec<PathBuf> = ro
        .iter()
        .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
        .filter(|a| a.parent().is_some() && !a.starts_with("/proc"))
        .filter(|a| !ro.iter().any(|q| a.starts_with(q)))
        .collect();
    anchors.sort();
    anchors.dedup();
    let mut out: Vec<Bind> = ro
        .into_iter()
        .map(|path| Bind {
            path,
            kind: Kind::ReadOnly,
        })
        .chain(anchors.into_iter().map(|path| Bind {
            path,
            kind: Kind::Anchor,
        }))
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
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
        assert_eq!(got.iter().map(|b| b.path.clone()).collect::<Vec<_>>(), want);
        assert!(got.iter().all(|b| b.kind == Kind::ReadOnly));
    }

    #[test]
    fn directories_above_protected_paths_are_anchored_outer_first() {
        let got = plan(
            [
                "/home/u/.git/hooks",
                "/home/u/.config/git",
                "/home/u/.bashrc",
                "/var/lib",
                "/usr",
                "/usr/local/bin/x",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
        );
        let got: Vec<(String, bool)> = got
            .iter()
            .map(|b| (b.path.display().to_string(), b.kind == Kind::ReadOnly))
            .collect();
        let want: Vec<(String, bool)> = [
            ("/home", false),
            ("/home/u", false),
            ("/home/u/.bashrc", true),
            ("/home/u/.config", false),
            ("/home/u/.config/git", true),
            ("/home/u/.git", false),
            ("/home/u/.git/hooks", true),
            ("/usr", true),
            ("/var", false),
            ("/var/lib", true),
        ]
        .iter()
        .map(|(p, r)| (p.to_string(), *r))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn repository_and_home_autorun_files() {
        let base = std::env::temp_dir().join(format!("nono-protect-{}", std::process::id()));
        let repo = base.join("repo");
        let home = base.join("home");
        for d in [
            repo.join(".git/hooks"),
            repo.join(".git/modules/sub/hooks"),
            repo.join("src/deep"),
            repo.join(".claude/commands"),
            home.join(".ssh"),
            home.join(".config/git"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in [
            repo.join(".git/config"),
            repo.join(".envrc"),
            home.join(".bashrc"),
            home.join(".gitconfig"),
        ] {
            std::fs::write(f, "x").unwrap();
        }
        let got = autorun_targets(&repo.join("src/deep"), Some(&home));
        for want in [
            repo.join(".git/hooks"),
            repo.join(".git/config"),
            repo.join(".git/modules/sub/hooks"),
            repo.join(".envrc"),
            repo.join(".claude/commands"),
            home.join(".ssh"),
            home.join(".bashrc"),
            home.join(".gitconfig"),
            home.join(".config/git"),
        ] {
            assert!(
                got.contains(&want),
                "{} missing from {got:?}",
                want.display()
            );
        }
        // Nothing that does not exist.
        assert!(got.iter().all(|p| p.exists()), "{got:?}");
        // A worktree: .git is a file naming the real directory.
        let wt = base.join("wt");
        let wtgit = repo.join(".git/worktrees/wt");
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::create_dir_all(&wtgit).unwrap();
        std::fs::write(wt.join(".git"), format!("gitdir: {}\n", wtgit.display())).unwrap();
        std::fs::write(wtgit.join("commondir"), "../..\n").unwrap();
        let got = autorun_targets(&wt, None);
        assert!(
            got.iter()
                .any(|p| p.ends_with(".git/worktrees/wt/../../hooks")),
            "{got:?}"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn system_paths_are_covered() {
        let t = readonly_targets(&[]);
        for p in ["/etc", "/usr", "/sys", "/proc/sys"] {
            assert!(
                t.iter()
                    .any(|q| q.kind == Kind::ReadOnly && Path::new(p).starts_with(&q.path)),
                "{p} in {t:?}"
            );
        }
        assert!(t.iter().all(|b| b.path.is_absolute()));
    }
}
