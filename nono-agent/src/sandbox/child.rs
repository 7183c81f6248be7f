//! Starting the command inside the sandbox.
//!
//! Everything the child needs is prepared before the clone; `apply` then only
//! makes raw syscalls, in this order (the child is already in the sandbox
//! cgroup, see `spawn`):
//! 1. (privileged) new cgroup and mount namespaces: every cgroup mount, every
//!    bpffs and the state directory are covered by empty read-only tmpfs
//!    mounts (see `hide`), so the child can neither move itself to another
//!    cgroup nor open pinned links by path to detach them; the cgroup
//!    namespace (rooted at the sandbox) keeps a cgroup2 it mounts itself in a
//!    user namespace limited to the sandbox's subtree;
//! 2. (privileged) system paths, kernel tunables and the agent's own files
//!    bound read-only (see `protect`);
//! 3. (privileged) drop every capability;
//! 4. no_new_privs.
//!
//! Unprivileged, the child was cloned into a user namespace mapping only its
//! own uid and gid, with a mount and a pid namespace it owns (see `spawn`):
//! it writes its maps, mounts a fresh /proc for its pid namespace, makes the
//! read-only binds (see `protect`) and drops every capability the user
//! namespace gave it, before no_new_privs, Landlock and seccomp.
//!
//! Before all that, `session` puts the child in a session of its own (no
//! controlling terminal: the caller's terminal is out of reach), and with a
//! pseudo-terminal (see `pty`) makes its slave the controlling terminal and
//! the standard descriptors that were terminals.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::privileges;
use super::protect::Kind;

/// Why the child's setup could not be prepared (before any fork).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A path or map line the child needs as a C string holds a NUL byte.
    #[error("{what} with a NUL byte")]
    Nul {
        what: &'static str,
        #[source]
        source: std::ffi::NulError,
    },
    /// `/proc/sys/kernel/cap_last_cap` could not be read.
    #[error("reading cap_last_cap")]
    LastCap(#[source] io::Error),
    /// The seccomp filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] crate::enforcer::seccomp::Error),
}

/// What the child does between fork and exec.
pub struct ChildSetup {
    privileged: Option<Privileged>,
    /// Unprivileged: a user and mount namespace of its own, to bind the
    /// user's auto-run files read-only (see `protect`).
    unprivileged: Option<Unprivileged>,
    seccomp: Option<crate::enforcer::seccomp::filter::Filter>,
    landlock: Option<super::landlock::Prepared>,
    /// Switch to this uid/gid (privileged only), dropping supplementary groups.
    user: Option<(libc::uid_t, libc::gid_t)>,
    /// Socket paths covered with /dev/null (privileged only).
    hidden_sockets: Vec<CString>,
    terminal: Option<Terminal>,
}

/// The command's pseudo-terminal, as the child sets it up.
#[derive(Clone, Copy)]
pub struct Terminal {
    /// The pty slave (close-on-exec; duplicated onto `onto`).
    pub slave: i32,
    /// Which of stdin, stdout, stderr become the slave (those that were
    /// terminals; a redirected descriptor stays as it is).
    pub onto: [bool; 3],
    /// Write end of a pipe on which the init (see `spawn`; with a terminal
    /// there always is one) reports the command's stops (one byte: the
    /// signal), for the agent's job control.
    pub stop_report: i32,
}

struct Unprivileged {
    last_cap: u32,
    /// `"UID UID 1"` and `"GID GID 1"`: the sandbox keeps its identity.
    uid_map: CString,
    gid_map: CString,
    readonly: Vec<(CString, super::protect::Kind)>,
    /// The working directory, entered again after the binds.
    cwd: Option<CString>,
    /// Refuse to start when no user namespace can be made (else run without
    /// these binds, with a warning).
    required: bool,
}

struct Privileged {
    last_cap: u32,
    masks: Vec<CString>,
    /// Bound onto themselves, read-only or as anchors (see `protect`).
    readonly: Vec<(CString, super::protect::Kind)>,
    /// The working directory, entered again after the binds.
    cwd: Option<CString>,
}

const TMPFS: &[u8] = b"tmpfs\0";
const DEV_NULL: &[u8] = b"/dev/null\0";
const PROC: &[u8] = b"proc\0";
const PROC_DIR: &[u8] = b"/proc\0";
const MASK_DATA: &[u8] = b"mode=000,size=4k\0";
const ROOT: &[u8] = b"/\0";

impl ChildSetup {
    /// `masks` are directories hidden from the child (only when
    /// `privileged`, i.e. the agent may create namespaces and drop caps).
    /// `seccomp`: a filter to install last, with a notification listener for
    /// the supervisor when `Mode::Notify`. `self_files`: files the agent
    /// writes during the run (the events file), bound read-only so the
    /// sandbox cannot forge or erase its own record.
    pub fn new(
        privileged: bool,
        masks: &[&Path],
        seccomp: Option<crate::enforcer::seccomp::filter::Mode>,
        allow_degraded: bool,
        self_files: &[PathBuf],
    ) -> Result<Self, SetupError> {
        let binds = |v: Vec<super::protect::Bind>| {
            v.into_iter()
                .map(|b| CString::new(b.path.as_os_str().as_bytes()).map(|c| (c, b.kind)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| SetupError::Nul {
                    what: "path",
                    source,
                })
        };
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|d| CString::new(d.as_os_str().as_bytes()).ok());
        let unprivileged = if privileged {
            None
        } else {
            // SAFETY: getters without preconditions.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            Some(Unprivileged {
                last_cap: privileges::last_cap().map_err(SetupError::LastCap)?,
                uid_map: CString::new(format!("{uid} {uid} 1")).map_err(|source| {
                    SetupError::Nul {
                        what: "uid map",
                        source,
                    }
                })?,
                gid_map: CString::new(format!("{gid} {gid} 1")).map_err(|source| {
                    SetupError::Nul {
                        what: "gid map",
                        source,
                    }
                })?,
                readonly: binds(super::protect::user_targets(self_files))?,
                cwd: cwd.clone(),
                required: !allow_degraded,
            })
        };
        let privileged = if privileged {
            let masks = masks
                .iter()
                .map(|p| CString::new(p.as_os_str().as_bytes()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| SetupError::Nul {
                    what: "path",
                    source,
                })?;
            let readonly = binds(super::protect::readonly_targets(self_files))?;
            Some(Privileged {
                last_cap: privileges::last_cap().map_err(SetupError::LastCap)?,
                masks,
                readonly,
                cwd,
            })
        } else {
            None
        };
        let seccomp = seccomp
            .map(crate::enforcer::seccomp::filter::Filter::new)
            .transpose()?;
        Ok(Self {
            privileged,
            unprivileged,
            seccomp,
            landlock: None,
            user: None,
            hidden_sockets: Vec::new(),
            terminal: None,
        })
    }

    /// Applies this Landlock ruleset after the privileges are dropped.
    pub fn with_landlock(mut self, l: Option<super::landlock::Prepared>) -> Self {
        self.landlock = l;
        self
    }

    /// Runs the command as this user (the agent must be privileged).
    pub fn with_user(mut self, user: Option<(libc::uid_t, libc::gid_t)>) -> Self {
        self.user = user;
        self
    }

    /// Covers these daemon sockets with /dev/null in the child's mount
    /// namespace (privileged only), so connecting to them fails.
    pub fn with_hidden_sockets(mut self, paths: &[PathBuf]) -> Result<Self, SetupError> {
        self.hidden_sockets = paths
            .iter()
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SetupError::Nul {
                what: "socket path",
                source,
            })?;
        Ok(self)
    }

    /// Runs the command on this pseudo-terminal (see [`Terminal`]).
    pub fn with_terminal(mut self, t: Option<Terminal>) -> Self {
        self.terminal = t;
        self
    }

    /// Where the init reports the command's stops, if anywhere.
    pub fn stop_report(&self) -> Option<i32> {
        self.terminal.map(|t| t.stop_report)
    }

    /// A new session, and the pseudo-terminal as its controlling terminal
    /// and as the standard descriptors that were terminals. Runs in the
    /// child first (before any namespace or privilege change). Syscalls
    /// only.
    pub fn session(&self) -> io::Result<()> {
        // SAFETY: integer-only syscall; the fresh child is no group leader.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        let Some(t) = &self.terminal else {
            return Ok(());
        };
        // SAFETY: integer-only ioctl on the slave we inherited.
        if unsafe { libc::ioctl(t.slave, libc::TIOCSCTTY, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for (fd, onto) in t.onto.iter().enumerate() {
            // SAFETY: integer-only syscall; dup2 clears close-on-exec on
            // the copy, so the command keeps it.
            if *onto && unsafe { libc::dup2(t.slave, fd as i32) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The namespaces `clone3` creates for the child: a pid namespace
    /// (the child then runs as its init and starts the command itself);
    /// unprivileged, with a user namespace that owns it and a mount
    /// namespace (see [`ChildSetup::apply`]).
    pub fn clone_namespaces(&self) -> u64 {
        if self.privileged.is_some() {
            libc::CLONE_NEWPID as u64
        } else if self.unprivileged.is_some() {
            (libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID) as u64
        } else {
            0
        }
    }

    /// Whether the sandbox may start without the namespaces of
    /// [`ChildSetup::clone_namespaces`] when they cannot be made
    /// (unprivileged with `--allow-degraded`).
    pub fn may_degrade(&self) -> bool {
        self.unprivileged.as_ref().is_some_and(|u| !u.required)
    }

    /// Runs in the child after fork; `namespaces` are those it was cloned
    /// with. Async-signal-safe: syscalls only. Returns the seccomp listener
    /// fd when a supervisor is to take it.
    pub fn apply(&self, namespaces: u64) -> io::Result<Option<i32>> {
        if let Some(p) = &self.privileged {
            // SAFETY: integer-only syscall.
            if unsafe { libc::unshare(libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // Keep our masking mounts from propagating back to the host.
            // SAFETY: NUL-terminated static strings; null fstype/data allowed
            // for a propagation change.
            if unsafe {
                libc::mount(
                    std::ptr::null(),
                    ROOT.as_ptr().cast(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                )
            } != 0
            {
                return Err(io::Error::last_os_error());
            }
            for target in &p.masks {
                // SAFETY: all strings are NUL-terminated and outlive the call.
                let r = unsafe {
                    libc::mount(
                        TMPFS.as_ptr().cast(),
                        target.as_ptr(),
                        TMPFS.as_ptr().cast(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        MASK_DATA.as_ptr().cast(),
                    )
                };
                unless_vanished(r)?;
            }
            self.mount_fresh_proc()?;
            apply_binds(&p.readonly, p.cwd.as_ref())?;
            for target in &self.hidden_sockets {
                // SAFETY: NUL-terminated strings that outlive the call.
                let r = unsafe {
                    libc::mount(
                        DEV_NULL.as_ptr().cast(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                // A server that exited (its socket file removed) since the
                // agent listed it has nothing left to reach by that name.
                unless_vanished(r)?;
            }
            privileges::drop_bounding_set(p.last_cap)?;
            if let Some((uid, gid)) = self.user {
                // Raw syscalls: glibc's wrappers broadcast credential changes
                // to every thread it believes exists, and in this copy of a
                // multi-threaded process the others do not: they would wait
                // forever.
                // SAFETY: integer-only syscalls; an empty group list.
                unsafe {
                    if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
                        != 0
                        || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                        || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                // The ids must now be the requested ones: a value the
                // kernel reads as "unchanged" ((uid_t)-1, refused when the
                // user is looked up) would otherwise leave the command
                // root without any error.
                let (mut r, mut e, mut s) = (0, 0, 0);
                let (mut rg, mut eg, mut sg) = (0, 0, 0);
                // SAFETY: pointers to local integers.
                let ok = unsafe {
                    libc::getresuid(&mut r, &mut e, &mut s) == 0
                        && libc::getresgid(&mut rg, &mut eg, &mut sg) == 0
                };
                if !ok || [r, e, s] != [uid; 3] || [rg, eg, sg] != [gid; 3] {
                    // (No allocation here: async-signal-safe.)
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            privileges::clear_capability_sets()?;
        }
        if let Some(u) = &self.unprivileged {
            if namespaces & libc::CLONE_NEWUSER as u64 != 0 {
                u.apply(|| self.mount_fresh_proc())?;
            }
        }
        privileges::set_no_new_privs()?;
        if let Some(l) = &self.landlock {
            l.restrict_self()?;
        }
        match &self.seccomp {
            Some(filter) => filter.install(),
            None => Ok(None),
        }
    }
}

impl ChildSetup {
    /// We are pid 1 of a new pid namespace (see spawn): a /proc of that
    /// namespace shows the sandbox only, so no path such as /proc/PID/root
    /// leads into another process's view of the host, and no other process
    /// of the user is listed. Syscalls only.
    fn mount_fresh_proc(&self) -> io::Result<()> {
        // SAFETY: NUL-terminated static strings.
        if unsafe {
            libc::mount(
                PROC.as_ptr().cast(),
                PROC_DIR.as_ptr().cast(),
                PROC.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        if let Some(l) = &self.landlock {
            l.add_fresh_proc_rule()?;
        }
        Ok(())
    }
}

impl Unprivileged {
    /// In the user namespace the child was cloned into (mapping only our
    /// own uid and gid, so files and peers see the same identity) and its
    /// mount namespace: the maps, a fresh /proc (`mount_proc`) for the pid
    /// namespace the child is the init of, the read-only binds, then every
    /// capability the user namespace gave us dropped again. Syscalls only.
    fn apply(&self, mount_proc: impl Fn() -> io::Result<()>) -> io::Result<()> {
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", self.uid_map.as_bytes())?;
        write_file(c"/proc/self/gid_map", self.gid_map.as_bytes())?;
        // SAFETY: NUL-terminated static strings; a propagation change.
        if unsafe {
            libc::mount(
                std::ptr::null(),
                ROOT.as_ptr().cast(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        mount_proc()?;
        apply_binds(&self.readonly, self.cwd.as_ref())?;
        // The namespace gave us every capability inside it: none may stay.
        privileges::drop_bounding_set(self.last_cap)?;
        privileges::clear_capability_sets()
    }
}

/// Writes `data` to `path` (a /proc file). Syscalls only.
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: NUL-terminated path; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is valid for its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let e = io::Error::last_os_error();
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    if n != data.len() as isize {
        return Err(e);
    }
    Ok(())
}

/// `struct mount_attr` (UAPI).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Makes the binds (in order: anchors and read-only paths, outer first),
/// then enters the working directory again: the inherited one still points
/// into the mounts as they were, where a path relative to it would pass
/// below an anchor without meeting the read-only binds made on top of it.
/// Syscalls only.
fn apply_binds(binds: &[(CString, Kind)], cwd: Option<&CString>) -> io::Result<()> {
    for (target, kind) in binds {
        bind_self(target, *kind)?;
    }
    if let Some(cwd) = cwd {
        // SAFETY: NUL-terminated path that outlives the call.
        if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Binds `target` onto itself with everything below it, then makes that
/// whole tree read-only ([`Kind::ReadOnly`]) or writable again
/// ([`Kind::Writable`]); an anchor stays as it was. Syscalls only (runs
/// between fork and exec).
fn bind_self(target: &CString, kind: Kind) -> io::Result<()> {
    // SAFETY: NUL-terminated path that outlives the call; a bind needs no
    // fstype or data.
    let r = unsafe {
        libc::mount(
            target.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if r != 0 {
        // Removed since the agent listed it (a user config directory being
        // deleted): nothing left to protect.
        return unless_vanished(r);
    }
    let (attr_set, attr_clr) = match kind {
        Kind::Anchor => return Ok(()),
        Kind::ReadOnly => (MOUNT_ATTR_RDONLY, 0),
        Kind::Writable => (0, MOUNT_ATTR_RDONLY),
    };
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid path and attr struct of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    // Removed between the bind and now: the kernel detached the bind with
    // it (a file under a mount point can be unlinked from another mount
    // namespace), so nothing is left at that path to protect.
    unless_vanished(r as libc::c_int)
}

/// `Ok` for a successful mount call (`r == 0`) or one whose target no
/// longer exists (`ENOENT`): the agent lists what to cover before the child
/// starts, and another process may remove a listed path (a command server
/// exiting, a test tidying up) before the child mounts over it. Nothing is
/// left at that path to hide or protect, and a file made there later is
/// not one the agent knew of either. Any other error fails the start.
/// Syscalls only (reads errno).
fn unless_vanished(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(())
    } else {
        Err(e)
    }
}
