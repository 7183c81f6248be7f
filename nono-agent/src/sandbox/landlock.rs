//! Filesystem confinement with Landlock, prepared in the agent and applied
//! in the child with a single syscall.
//!
//! The handled ABI is pinned (V6: filesystem rights up to device ioctls, plus
//! abstract-unix-socket and signal scoping), so a newer kernel never silently
//! changes what a profile means. By default every requested right is a hard
//! requirement: on a kernel that cannot enforce one, the sandbox refuses to
//! start; with `--allow-degraded` it starts and says exactly what is not
//! enforced.

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible as _, PathBeneath, PathFd, PathFdError,
    Ruleset, RulesetAttr as _, RulesetCreatedAttr as _, RulesetError, Scope, ABI,
};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

/// Errors of checking the filesystem rules and preparing the ruleset.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// A write rule would cover a path no sandbox may write.
    #[error(
        "write access to {}{} would include {}, which a sandbox may never write (cgroup filesystem, bpffs or /proc)",
        .path.display(),
        resolves_to(.path, .resolved),
        .forbidden.display()
    )]
    ForbiddenWrite {
        /// The rule as given.
        path: PathBuf,
        /// What it resolves to.
        resolved: PathBuf,
        /// The forbidden path it covers.
        forbidden: PathBuf,
    },
    /// The kernel cannot handle the filesystem rights asked for.
    #[error("Landlock: handling filesystem access")]
    HandleAccess(#[source] RulesetError),
    /// The kernel cannot scope abstract unix sockets and signals.
    #[error("Landlock: scoping abstract unix sockets and signals")]
    Scope(#[source] RulesetError),
    /// The profile's ruleset could not be created.
    #[error("Landlock: creating the ruleset (is Landlock enabled in this kernel?)")]
    Create(#[source] RulesetError),
    /// A rule's path could not be opened.
    #[error("Landlock: opening {}", .path.display())]
    OpenPath {
        /// The rule's path.
        path: PathBuf,
        #[source]
        source: PathFdError,
    },
    /// A rule could not be added to the ruleset.
    #[error("Landlock: adding a rule for {}", .path.display())]
    AddRule {
        /// The rule's path.
        path: PathBuf,
        #[source]
        source: RulesetError,
    },
    /// The kernel's ABI is older than the handled one and degraded mode was
    /// not allowed.
    #[error(
        "Landlock ABI {kernel} is older than the required ABI {required} (filesystem rights and signal/abstract-socket scoping); pass --allow-degraded to run with what this kernel enforces"
    )]
    AbiTooOld {
        /// The kernel's ABI.
        kernel: i64,
        /// The handled ABI.
        required: i64,
    },
    /// No Landlock at all, with --allow-degraded: still refused, as the
    /// profile asks for filesystem rules.
    #[error("Landlock is not available on this kernel; with --allow-degraded the filesystem would be unconfined, which is refused for a profile that asks for it")]
    UnavailableDegraded,
    /// No Landlock at all, for a profile with filesystem rules.
    #[error(
        "Landlock is not available on this kernel (required by the profile's filesystem rules)"
    )]
    Unavailable,
    /// The kernel's ABI cannot scope signals and abstract sockets (the
    /// baseline domain) and degraded mode was not allowed.
    #[error(
        "Landlock ABI {abi} is older than 6: the sandbox could ptrace, signal and reach the abstract unix sockets of the user's other processes; pass --allow-degraded to run without that protection"
    )]
    BaselineAbiTooOld {
        /// The kernel's ABI.
        abi: i64,
    },
    /// The baseline ruleset could not be created.
    #[error("Landlock: creating the baseline ruleset")]
    CreateBaseline(#[source] RulesetError),
    /// The baseline ruleset came back without a file descriptor.
    #[error("Landlock: no ruleset was created")]
    NoRuleset,
}

type Result<T, E = LandlockError> = std::result::Result<T, E>;

/// ` (it resolves to R)` when a rule's path is not what it resolves to.
fn resolves_to(path: &Path, resolved: &Path) -> String {
    if resolved != path {
        format!(" (it resolves to {})", resolved.display())
    } else {
        String::new()
    }
}

/// The ABI whose rights are handled. Pinned on purpose (see module docs).
pub const HANDLED_ABI: ABI = ABI::V6;

/// What the profile grants.
#[derive(Debug, Clone, Default)]
pub struct FsRules {
    /// Readable (files and directory listings) beneath these paths.
    pub read: Vec<PathBuf>,
    /// Writable (and readable) beneath these paths.
    pub write: Vec<PathBuf>,
    /// Executable (and readable) beneath these paths.
    pub exec: Vec<PathBuf>,
}

/// A ruleset ready to be applied in the child.
pub struct Prepared {
    fd: OwnedFd,
    /// Rights granted on /proc, to be granted again on the fresh /proc a
    /// privileged sandbox mounts for its pid namespace (a different inode
    /// from the agent's /proc, which the ruleset's rule names).
    proc_access: u64,
    /// Lines describing what is not enforced (only with --allow-degraded).
    pub degraded: Vec<String>,
    /// `landlock_restrict_self` flags (audit logging, ABI 7).
    restrict_flags: u32,
}

/// `struct landlock_path_beneath_attr` (packed, as in the UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

impl Prepared {
    /// Adds the profile's /proc rights for the /proc now mounted in the
    /// child (call after mounting it, before `restrict_self`). Syscalls only.
    pub fn add_fresh_proc_rule(&self) -> std::io::Result<()> {
        if self.proc_access == 0 {
            return Ok(());
        }
        // SAFETY: NUL-terminated static path; the fd is closed below.
        let fd = unsafe { libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let attr = PathBeneathAttr {
            allowed_access: self.proc_access,
            parent_fd: fd,
        };
        // SAFETY: valid ruleset fd, a packed attr struct as the kernel
        // expects, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                self.fd.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            )
        };
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        if r < 0 {
            return Err(e);
        }
        Ok(())
    }

    /// Has the kernel log this domain's denials after the command is
    /// executed too (`LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON`, ABI 7; by
    /// default only denials before exec are logged), for `sandbox::fsaudit`
    /// to read. Call only on an ABI 7 kernel (older ones refuse the flag).
    pub fn log_after_exec(&mut self) {
        const LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON: u32 = 1 << 1;
        self.restrict_flags |= LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON;
    }

    /// Applies the ruleset to the calling thread's process (in the child,
    /// after no_new_privs). One syscall: async-signal-safe.
    pub fn restrict_self(&self) -> std::io::Result<()> {
        // SAFETY: a valid ruleset fd and flags the kernel checks.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_restrict_self,
                self.fd.as_raw_fd(),
                self.restrict_flags,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Paths no sandbox may ever write, whatever the profile says: the cgroup
/// filesystems and bpffs (where the sandbox's own confinement lives) and
/// /proc/sys (kernel settings, writable by uid 0 without capabilities).
pub fn forbidden_write_targets() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/proc/sys"), PathBuf::from("/proc")];
    if let Ok(text) = crate::mountinfo::read() {
        for t in ["cgroup2", "cgroup", "bpf"] {
            v.extend(
                crate::mountinfo::find(&text, t)
                    .into_iter()
                    .map(|m| m.mount_point),
            );
        }
    }
    v
}

/// Refuses write rules that would cover a forbidden path (Landlock can only
/// add rights beneath a directory, never take some back below it).
///
/// Judged on what the rule really opens, not on its spelling: `..` and
/// symlinks are resolved first (`/tmp/../proc` or a link to `/proc` is
/// `/proc`), and a rule on the same filesystem as a forbidden path (a bind
/// mount of `/proc` or of a cgroup filesystem somewhere else) is refused by
/// its device number. Rules that do not exist are skipped, as `prepare`
/// skips them.
pub fn check_write_rules(write: &[PathBuf], forbidden: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let forbidden: Vec<(PathBuf, Option<u64>)> = forbidden
        .iter()
        .map(|f| {
            let real = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
            let dev = std::fs::metadata(&real).ok().map(|m| m.dev());
            (real, dev)
        })
        .collect();
    for w in write {
        let real = std::fs::canonicalize(w).unwrap_or_else(|_| w.clone());
        let dev = std::fs::metadata(&real).ok().map(|m| m.dev());
        for (f, fdev) in &forbidden {
            let same_fs = dev.is_some() && dev == *fdev;
            if f.starts_with(&real) || same_fs {
                return Err(LandlockError::ForbiddenWrite {
                    path: w.clone(),
                    resolved: real,
                    forbidden: f.clone(),
                });
            }
        }
    }
    Ok(())
}

fn read_rights() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// One rule of the ruleset: a path and the rights granted beneath it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The rule's path, as the profile or flag gave it.
    pub path: &'a Path,
    /// Which list it comes from.
    pub kind: crate::profile::FsAccess,
    /// The rights asked for (before [`effective_access`]).
    pub access: BitFlags<AccessFs>,
}

/// The rules [`prepare`] puts in the ruleset, in its order: read rules,
/// exec rules, write rules. `why` judges paths with the same list.
pub fn grants(rules: &FsRules) -> Vec<Grant<'_>> {
    use crate::profile::FsAccess as K;
    let all = AccessFs::from_all(HANDLED_ABI);
    [
        (&rules.read, K::Read, read_rights()),
        (&rules.exec, K::Exec, read_rights() | AccessFs::Execute),
        (&rules.write, K::Write, all),
    ]
    .into_iter()
    .flat_map(|(list, kind, access)| {
        list.iter().map(move |p| Grant {
            path: p.as_path(),
            kind,
            access,
        })
    })
    .collect()
}

/// The rights a rule on an existing path really carries: a rule on a file
/// can only hold the rights that apply to files (the kernel refuses the
/// others).
pub fn effective_access(access: BitFlags<AccessFs>, is_dir: bool) -> BitFlags<AccessFs> {
    if is_dir {
        access
    } else {
        access & AccessFs::from_file(HANDLED_ABI)
    }
}

/// Builds the ruleset. Paths that do not exist are skipped (a profile may
/// name tool directories that are not installed here).
pub fn prepare(rules: &FsRules, allow_degraded: bool) -> Result<Prepared> {
    check_write_rules(&rules.write, &forbidden_write_targets())?;
    let level = if allow_degraded {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };
    let all = AccessFs::from_all(HANDLED_ABI);
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(all)
        .map_err(LandlockError::HandleAccess)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(LandlockError::Scope)?
        .create()
        .map_err(LandlockError::Create)?;
    let grants: Vec<(&Path, BitFlags<AccessFs>)> = grants(rules)
        .into_iter()
        .map(|g| (g.path, g.access))
        .collect();
    let proc_access: u64 = grants
        .iter()
        .filter(|(p, _)| *p == Path::new("/proc"))
        .fold(BitFlags::<AccessFs>::empty(), |acc, (_, a)| acc | *a)
        .bits();
    for (path, access) in grants {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let access = effective_access(access, meta.is_dir());
        let fd = PathFd::new(path).map_err(|source| LandlockError::OpenPath {
            path: path.to_path_buf(),
            source,
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|source| LandlockError::AddRule {
                path: path.to_path_buf(),
                source,
            })?;
    }
    let mut degraded = Vec::new();
    // The crate reports the compatibility outcome only when restricting; ask
    // the kernel for its ABI to say what best-effort mode leaves out.
    let kernel_abi = kernel_abi();
    if kernel_abi < HANDLED_ABI as i64 {
        if !allow_degraded {
            return Err(LandlockError::AbiTooOld {
                kernel: kernel_abi,
                required: HANDLED_ABI as i64,
            });
        }
        degraded.push(format!(
            "Landlock ABI {kernel_abi} < {}: rights and scopes introduced after ABI {kernel_abi} are NOT enforced",
            HANDLED_ABI as i64
        ));
    }
    let fd: Option<OwnedFd> = ruleset.into();
    match fd {
        Some(fd) => Ok(Prepared {
            fd,
            proc_access,
            degraded,
            restrict_flags: 0,
        }),
        None => {
            if allow_degraded {
                return Err(LandlockError::UnavailableDegraded);
            }
            Err(LandlockError::Unavailable)
        }
    }
}

/// The baseline domain of a sandbox without filesystem rules: no path is
/// restricted, but the sandbox becomes a Landlock domain of its own, so it
/// can no longer ptrace, `pidfd_getfd`, `process_vm_readv` or open
/// `/proc/PID/mem` of any process outside it (Landlock denies ptrace access
/// from a domain to anything not inside it), nor signal them or connect to
/// their abstract unix sockets (scopes, ABI 6).
pub fn prepare_baseline(allow_degraded: bool) -> Result<Option<Prepared>> {
    let abi = kernel_abi();
    if abi < ABI::V6 as i64 {
        if allow_degraded {
            return Ok(None);
        }
        return Err(LandlockError::BaselineAbiTooOld { abi });
    }
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(LandlockError::Scope)?
        .create()
        .map_err(LandlockError::CreateBaseline)?;
    let fd: Option<OwnedFd> = ruleset.into();
    let fd = fd.ok_or(LandlockError::NoRuleset)?;
    Ok(Some(Prepared {
        fd,
        proc_access: 0,
        degraded: Vec::new(),
        restrict_flags: 0,
    }))
}

/// The running kernel's Landlock ABI version (0 if unsupported).
pub fn kernel_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: version query: NULL attr, size 0, no memory touched.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_rules_are_judged_after_resolution() {
        let forbidden = forbidden_write_targets();
        let base = std::env::temp_dir().join(format!("nono-ll-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let link = base.join("to-proc");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        for w in [
            PathBuf::from("/tmp/../proc"),
            link.clone(),
            PathBuf::from("/proc/self/fd/.."),
            PathBuf::from("/proc/sys/kernel"),
        ] {
            let e = check_write_rules(std::slice::from_ref(&w), &forbidden);
            assert!(e.is_err(), "{} must be refused", w.display());
        }
        assert!(check_write_rules(std::slice::from_ref(&base), &forbidden).is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn write_rules_may_not_cover_confinement_paths() {
        let forbidden = vec![
            PathBuf::from("/sys/fs/cgroup/unified"),
            PathBuf::from("/proc/sys"),
        ];
        assert!(check_write_rules(&[PathBuf::from("/tmp")], &forbidden).is_ok());
        assert!(check_write_rules(&[PathBuf::from("/")], &forbidden).is_err());
        assert!(check_write_rules(&[PathBuf::from("/sys")], &forbidden).is_err());
        assert!(check_write_rules(&[PathBuf::from("/proc")], &forbidden).is_err());
        // Beneath a cgroup filesystem is part of it (judged by device: a
        // path that exists on every cgroup2 root, not one a sandbox run may
        // or may not have left behind).
        let cg = forbidden_write_targets()
            .into_iter()
            .find(|p| p.starts_with("/sys/fs/cgroup"))
            .expect("a cgroup mount");
        let beneath = cg.join("cgroup.procs");
        assert!(beneath.exists(), "{} must exist", beneath.display());
        assert!(check_write_rules(&[beneath], &forbidden_write_targets()).is_err());
    }
}
