//! Starting the child directly inside the sandbox cgroup with `clone3`.
//!
//! `CLONE_INTO_CGROUP` puts the child in the cgroup atomically at creation,
//! so not one instruction of it runs outside, and it avoids writing
//! `cgroup.procs`, whose migration path waits for an RCU grace period
//! (~10 ms measured here on every start). `CLONE_PIDFD` gives a pidfd to wait
//! on and signal without pid-reuse races.
//!
//! Between clone and exec the child is a copy of a possibly multi-threaded
//! process: it only makes raw syscalls on data prepared before the clone
//! (no allocation, no locks).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;

use super::child::ChildSetup;

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (UAPI, version 2: 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Where the child failed before running the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Applying the sandbox (namespaces, mounts, capabilities).
    Setup,
    /// `execve` itself.
    Exec,
}

/// Why the child could not start.
#[derive(Debug)]
pub enum SpawnError {
    /// clone3 failed in the agent.
    Clone(io::Error),
    /// Unprivileged, no user namespace could be made (and degrading is
    /// not allowed).
    UserNamespace(io::Error),
    /// The child reported a failure.
    Child(Stage, io::Error),
    /// Preparing argv/envp or the status pipe failed.
    Prepare(io::Error),
    /// The child could not be placed in its sandbox (the daemon refused).
    Place(io::Error),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Clone(e) => write!(f, "clone3(CLONE_INTO_CGROUP) failed: {e}"),
            Self::UserNamespace(e) => write!(
                f,
                "no user namespace for the sandbox (its mount and pid namespaces; \
                 --allow-degraded runs without): {e}"
            ),
            Self::Child(Stage::Setup, e) => {
                write!(f, "applying the sandbox in the child failed: {e}")
            }
            Self::Child(Stage::Exec, e) => write!(f, "execve failed: {e}"),
            Self::Prepare(e) => write!(f, "preparing the child failed: {e}"),
            Self::Place(e) => write!(f, "placing the child in its sandbox failed: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// A running child.
pub struct Child {
    /// Its pid (valid until reaped by [`Child::reap`]).
    pub pid: i32,
    /// Its pidfd: readable once it has exited.
    pub pidfd: OwnedFd,
    /// The seccomp notification listener it installed, if any.
    pub listener: Option<OwnedFd>,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Normal exit with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Child {
    /// Collects the exit status; call after the pidfd became readable.
    pub fn reap(&self) -> io::Result<Exit> {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: valid pidfd and out-pointer.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // SAFETY: waitid filled a SIGCHLD siginfo, for which si_status is
        // the valid union member.
        let status = unsafe { info.si_status() };
        Ok(match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            _ => Exit::Signal(status),
        })
    }
}

/// The soft RLIMIT_NOFILE the agent started with; restored in the child.
static ORIGINAL_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the agent's soft descriptor limit to the hard limit (the proxy
/// holds two descriptors per tunnel). The child gets the original back.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let _ = ORIGINAL_NOFILE.set(lim);
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
}

/// The command line and environment in exec-ready form.
pub struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// The stack the command runs on between the init's `clone` and its
    /// `execve` (see [`start_command`]), allocated before anything is
    /// forked.
    command_stack: Vec<u8>,
    /// A variable whose value the child learns only after it was started
    /// (see [`Prepared::with_late_var`]).
    late: Option<Late>,
}

/// The room for a late variable: `NAME=`, then up to [`LATE_MAX`] bytes of
/// value and a NUL, in one buffer that `envp` points to. The child fills
/// it in its own copy of memory, with a `read(2)` from the go pipe.
struct Late {
    buf: std::cell::UnsafeCell<Box<[u8]>>,
    /// Where the value starts (after `NAME=`).
    at: usize,
}

/// The longest value a late variable can take (what one pipe write carries
/// atomically, less the go byte and the length).
pub const LATE_MAX: usize = 4093;

/// Enough for the few libc calls before `execve` (posix_spawn's own child
/// runs on 32 KiB).
const COMMAND_STACK: usize = 64 * 1024;

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "argument or environment contains a NUL byte",
        )
    })
}

impl Prepared {
    /// `path` is the resolved program, `argv[0]` is what the user typed.
    pub fn new(path: &OsStr, argv: &[OsString], env: &[(OsString, OsString)]) -> io::Result<Self> {
        let path = cstring(path)?;
        let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|c| c.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Self {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            command_stack: vec![0; COMMAND_STACK],
            late: None,
        })
    }

    /// Adds `name` to the environment with a value that the placement
    /// callback returns (see [`Place`]): the daemon's answer naming the
    /// sandbox cgroup arrives after the child has been started, because
    /// `exec` starts it while the daemon creates the sandbox.
    pub fn with_late_var(mut self, name: &str) -> io::Result<Self> {
        if name.is_empty() || name.as_bytes().iter().any(|&b| b == 0 || b == b'=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a late variable needs a name without NUL or '='",
            ));
        }
        let at = name.len() + 1;
        let mut buf = vec![0u8; at + LATE_MAX + 1].into_boxed_slice();
        buf[..name.len()].copy_from_slice(name.as_bytes());
        buf[name.len()] = b'=';
        let late = Late {
            buf: std::cell::UnsafeCell::new(buf),
            at,
        };
        // SAFETY: no other reference to the buffer exists yet; the pointer
        // stays valid while `self` lives (a boxed slice does not move).
        let ptr = unsafe { (*late.buf.get()).as_ptr() }.cast::<libc::c_char>();
        let end = self.envp_ptrs.len() - 1;
        self.envp_ptrs.insert(end, ptr);
        self.late = Some(late);
        Ok(self)
    }

    fn path(&self) -> &CStr {
        &self.path
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the child (in `cgroup` if given), applies `setup` in it and execs
/// `cmd`. Returns once the exec succeeded (or the child reported why it did
/// not). If the setup installed a seccomp listener, it is taken from the
/// child with `pidfd_getfd` before the child may exec.
/// Placement: called with the child's pidfd while the child waits, before
/// it does anything; the child goes on only if it returns `Ok` (the daemon
/// moved it into its sandbox cgroup), with the value of the command's late
/// variable (see [`Prepared::with_late_var`]; ignored without one).
pub type Place<'a> = &'a mut dyn FnMut(BorrowedFd<'_>) -> io::Result<Vec<u8>>;

pub fn spawn(
    cmd: &Prepared,
    cgroup: Option<BorrowedFd<'_>>,
    place: Option<Place<'_>>,
    setup: &ChildSetup,
) -> Result<Child, SpawnError> {
    let (rd, wr) = pipe().map_err(SpawnError::Prepare)?;
    let (go_rd, go_wr) = pipe().map_err(SpawnError::Prepare)?;
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD
            | if cgroup.is_some() {
                CLONE_INTO_CGROUP
            } else {
                0
            }
            | setup.clone_namespaces(),
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.map(|c| c.as_raw_fd() as u64).unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: a fork-style clone3 (no CLONE_VM, no stack): the child gets a
    // copy of our memory and continues here with return value 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let mut r = r;
    if r < 0 && setup.clone_namespaces() & libc::CLONE_NEWUSER as u64 != 0 {
        // Unprivileged: no user namespace (disabled, or none left).
        let e = io::Error::last_os_error();
        if !setup.may_degrade() {
            return Err(SpawnError::UserNamespace(e));
        }
        eprintln!(
            "nono-agent: WARNING: no user namespace ({e}; --allow-degraded): the sandbox \
             can write this user's auto-run files (~/.bashrc, .git/hooks ...) and, \
             without a pid namespace, sees this user's other processes"
        );
        args.flags &= !setup.clone_namespaces();
        // SAFETY: as above.
        r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
    }
    if r < 0 {
        return Err(SpawnError::Clone(io::Error::last_os_error()));
    }
    if r == 0 {
        // Child: never returns.
        let namespaces = args.flags & setup.clone_namespaces();
        child_main(
            cmd,
            setup,
            namespaces,
            place.is_some(),
            wr.as_raw_fd(),
            go_rd.as_raw_fd(),
            go_wr.as_raw_fd(),
        );
    }
    drop(wr);
    drop(go_rd);
    let mut child = Child {
        pid: r as i32,
        // SAFETY: the kernel stored a new pidfd for us (CLONE_PIDFD).
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        listener: None,
    };
    if let Some(place) = place {
        let placed = place(child.pidfd.as_fd()).and_then(|value| {
            if value.len() > LATE_MAX || value.contains(&0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the value for the command's environment is too long or holds a NUL",
                ));
            }
            Ok(value)
        });
        let value = match placed {
            Ok(v) if cmd.late.is_some() => v,
            Ok(_) => Vec::new(),
            Err(e) => {
                // SAFETY: kill of our own unreaped child.
                unsafe { libc::kill(child.pid, libc::SIGKILL) };
                // A child that failed its own setup (and exited, which is why
                // it could not be placed) says why; that is the better error.
                let mut report = [0u8; 8];
                let n = read_full(rd.as_raw_fd(), &mut report);
                let _ = child.reap();
                if n == 8 && report[0] == 1 {
                    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
                    return Err(SpawnError::Child(
                        Stage::Setup,
                        io::Error::from_raw_os_error(errno),
                    ));
                }
                return Err(SpawnError::Place(e));
            }
        };
        // Go, the value's length and the value, in one write of at most
        // PIPE_BUF bytes (atomic).
        let mut go = Vec::with_capacity(3 + value.len());
        go.push(b'p');
        go.extend_from_slice(&(value.len() as u16).to_ne_bytes());
        go.extend_from_slice(&value);
        // SAFETY: writes our buffer to a pipe we own.
        unsafe { libc::write(go_wr.as_raw_fd(), go.as_ptr().cast(), go.len()) };
    }
    let mut report = [0u8; 8];
    let mut n = read_full(rd.as_raw_fd(), &mut report);
    if n == 8 && report[0] == 3 {
        // The child installed its filter and waits: take the listener, then
        // let it exec (exec would close the listener: it is O_CLOEXEC).
        let fd = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        match crate::enforcer::seccomp::notify::grab_fd(child.pidfd.as_fd(), fd) {
            Ok(l) => child.listener = Some(l),
            Err(e) => {
                // SAFETY: kill of our own unreaped child.
                unsafe { libc::kill(child.pid, libc::SIGKILL) };
                let _ = child.reap();
                return Err(SpawnError::Prepare(e));
            }
        }
        // SAFETY: one byte to a pipe we own.
        unsafe { libc::write(go_wr.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        n = read_full(rd.as_raw_fd(), &mut report);
    }
    drop(go_wr);
    if n == 0 {
        return Ok(child); // the pipe closed on exec: the command is running
    }
    let _ = child.reap();
    if n != 8 {
        return Err(SpawnError::Prepare(io::Error::other(
            "the child died before reporting its start",
        )));
    }
    let stage = if report[0] == 1 {
        Stage::Setup
    } else {
        Stage::Exec
    };
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    Err(SpawnError::Child(
        stage,
        io::Error::from_raw_os_error(errno),
    ))
}

fn read_full(fd: RawFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of buf.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    got
}

/// The child between clone and exec. Syscalls only.
fn child_main(
    cmd: &Prepared,
    setup: &ChildSetup,
    namespaces: u64,
    placed: bool,
    report: RawFd,
    go: RawFd,
    go_wr: RawFd,
) -> ! {
    // SAFETY: plain syscalls on prepared data; see module docs. The one
    // write to prepared data (the late variable's value) goes through its
    // UnsafeCell, in this process's own copy of memory, before `execve`
    // reads it; nothing else refers to that buffer here.
    unsafe {
        // Only the agent may hold the go pipe's write end: if the agent dies
        // before it says go, the read below sees end-of-file and the child
        // exits (and with it our copies of the agent's descriptors, among
        // them the daemon connection, whose closing ends the sandbox).
        libc::close(go_wr);
        // The agent is non-dumpable (see main); the child must be
        // supervisable (pidfd_getfd, process_vm_readv) by the agent's uid.
        // exec resets this anyway; the init sets it back to 0.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        // Rust ignores SIGPIPE in the agent; an ignored disposition would
        // survive exec, so restore the default. Unblock every signal.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if let Some(lim) = ORIGINAL_NOFILE.get() {
            libc::setrlimit(libc::RLIMIT_NOFILE, lim);
        }
        if let Err(e) = setup.session() {
            fail(report, 1, e.raw_os_error().unwrap_or(libc::EINVAL), 125)
        }
        match setup.apply(namespaces) {
            Err(e) => fail(report, 1, e.raw_os_error().unwrap_or(libc::EINVAL), 125),
            Ok(Some(listener)) => {
                // Hand the listener to the agent and wait until it has it.
                let l = listener.to_ne_bytes();
                let msg = [3u8, 0, 0, 0, l[0], l[1], l[2], l[3]];
                libc::write(report, msg.as_ptr().cast(), msg.len());
                let mut b = [0u8; 1];
                if libc::read(go, b.as_mut_ptr().cast(), 1) != 1 {
                    libc::_exit(125);
                }
                libc::close(listener);
            }
            Ok(None) => {}
        }
        if placed {
            // The daemon moves this process into the sandbox cgroup while
            // it sets itself up (the move waits for an RCU grace period,
            // milliseconds: overlapping saves them). Nothing of the command
            // runs, and nothing is forked (the move takes one process, not
            // its children), before the daemon says it is done; if it
            // refuses, the agent kills us here.
            let mut b = [0u8; 3];
            if read_full(go, &mut b) != 3 {
                libc::_exit(125);
            }
            let len = usize::from(u16::from_ne_bytes([b[1], b[2]]));
            if let Some(late) = &cmd.late {
                // The value into our own copy of the buffer `envp` points
                // to; the agent checked its length, and the NUL after it
                // is there from the start.
                let buf = &mut *late.buf.get();
                let room = buf.len() - late.at - 1;
                if len > room || read_full(go, &mut buf[late.at..late.at + len]) != len {
                    libc::_exit(125);
                }
                buf[late.at + len] = 0;
            }
        }
        if namespaces & libc::CLONE_NEWPID as u64 != 0 || setup.stop_report().is_some() {
            init_main(cmd, report, setup.stop_report())
        }
        exec(cmd, report)
    }
}

/// execve, or report why not and exit like `env` does.
fn exec(cmd: &Prepared, report: RawFd) -> ! {
    // SAFETY: prepared NUL-terminated arrays that outlive the call.
    unsafe {
        libc::execve(
            cmd.path().as_ptr(),
            cmd.argv_ptrs.as_ptr(),
            cmd.envp_ptrs.as_ptr(),
        );
        let errno = *libc::__errno_location();
        let code = if errno == libc::ENOENT { 127 } else { 126 };
        fail(report, 2, errno, code)
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Closes every descriptor above stderr except `keep` (ascending, each
/// above 2). Syscalls only.
fn close_all_except(keep: &[RawFd]) {
    let mut from: RawFd = 3;
    for &k in keep {
        if k > from {
            // SAFETY: close_range on a range of our own descriptor table.
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, (k - 1) as u32, 0u32) };
        }
        from = from.max(k + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0u32) };
}

/// Signals the init forwards to the command.
const FORWARDED: [libc::c_int; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// pid 1 of the sandbox's pid namespace (or, unprivileged on a
/// pseudo-terminal, the session leader that keeps the command's process
/// group from being orphaned, as sudo's monitor does): starts the command,
/// forwards signals sent to it by a process (the agent), reaps orphans, and
/// exits with the command's status; the kernel then kills whatever is left
/// in the namespace (without one, the agent does). With `stop_report` (a
/// pseudo-terminal), the command gets its own process group in the pty's
/// foreground, and the signal that stops it is written there (the agent
/// cannot see its grandchild stop). Syscalls only, like the rest of the
/// child.
fn init_main(cmd: &Prepared, report: RawFd, stop_report: Option<RawFd>) -> ! {
    // SAFETY: raw syscalls on prepared data; no allocation.
    unsafe {
        // The init is a copy of the agent that never execs, so it still
        // holds every descriptor the agent had (the cgroup directory, BPF
        // links, the owner lock): close them all, and make it non-dumpable
        // so the command cannot ptrace it or take its descriptors with
        // pidfd_getfd (found by the escape battery).
        match stop_report {
            Some(s) if s > 2 => close_all_except(&[report.min(s), report.max(s)]),
            _ => close_all_except(&[report]),
        }
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // A pid-namespace init receives signals from its ancestors only if
        // it has a handler: install one (it never runs, the signals stay
        // blocked and are taken with sigwaitinfo).
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        for sig in FORWARDED.iter().copied().chain([libc::SIGCHLD]) {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as *const () as usize;
            sa.sa_mask = all;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let pid = start_command(cmd, report, stop_report.is_some());
        if pid < 0 {
            fail(report, 1, *libc::__errno_location(), 125);
        }
        // The command holds the report pipe until its exec; the agent reads
        // EOF (started) or its failure.
        libc::close(report);
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&all, &mut info);
            if sig < 0 {
                continue;
            }
            if sig == libc::SIGCHLD {
                loop {
                    let mut st = 0;
                    let r = libc::waitpid(-1, &mut st, libc::WNOHANG | libc::WUNTRACED);
                    if r <= 0 {
                        break;
                    }
                    if libc::WIFSTOPPED(st) {
                        if let (true, Some(s)) = (r == pid, stop_report) {
                            let b = [libc::WSTOPSIG(st) as u8];
                            libc::write(s, b.as_ptr().cast(), 1);
                        }
                        continue;
                    }
                    if r == pid {
                        let code = if libc::WIFEXITED(st) {
                            libc::WEXITSTATUS(st)
                        } else {
                            128 + libc::WTERMSIG(st)
                        };
                        libc::_exit(code);
                    }
                }
            } else if info.si_code <= 0 {
                // Sent by a process (SI_USER, SI_QUEUE, SI_TKILL), not by
                // the terminal, which signals the command's group itself.
                libc::kill(pid, sig);
            }
        }
    }
}

/// What the command's side of [`start_command`] needs.
struct CommandStart<'a> {
    cmd: &'a Prepared,
    report: RawFd,
    own_group: bool,
}

/// Starts the command from the init as `posix_spawn` does: a `clone` that
/// shares the init's memory (`CLONE_VM`) and suspends the init until the
/// command has called `execve` or exited (`CLONE_VFORK`), on a stack of its
/// own. A `fork` would copy the page tables of the agent's whole address
/// space (the init is a copy of it) only for `execve` to drop them, on
/// every sandbox's start-up path. Returns the command's pid, or -1 with
/// errno set.
///
/// # Safety
/// Called in the init only (single-threaded, between syscalls on prepared
/// data); the command side makes raw syscalls and `execve`s or exits, and
/// writes nothing of the init's memory but its own stack and errno.
unsafe fn start_command(cmd: &Prepared, report: RawFd, own_group: bool) -> libc::pid_t {
    let arg = CommandStart {
        cmd,
        report,
        own_group,
    };
    let base = cmd.command_stack.as_ptr() as usize;
    // The stack grows down from its 16-byte aligned top.
    let top = (base + cmd.command_stack.len()) & !0xf;
    // SAFETY: `command_main` never returns into the init's frames; `top`
    // is the end of a buffer of ours that nothing else uses while the init
    // is suspended; `arg` outlives the call (the init waits for the exec).
    unsafe {
        libc::clone(
            command_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &arg as *const CommandStart<'_> as *mut libc::c_void,
        )
    }
}

/// The command's side of [`start_command`], on its own stack: default
/// signal dispositions and mask, its own process group on a pseudo-terminal,
/// then `execve` (or the failure reported and `_exit`).
extern "C" fn command_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the CommandStart of start_command, alive
    // while the init is suspended; raw syscalls only.
    unsafe {
        let start = &*(arg as *const CommandStart<'_>);
        if start.own_group {
            // On a pseudo-terminal: the command's own process group in
            // the foreground (all signals are still blocked, SIGTTOU
            // too). Its parent (the init) is in the same session, so
            // the group is not orphaned and Ctrl-Z stops it.
            let me = libc::getpid();
            libc::setpgid(0, 0);
            libc::ioctl(0, libc::TIOCSPGRP, &me);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        for sig in FORWARDED.iter().copied().chain([libc::SIGCHLD]) {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        exec(start.cmd, start.report)
    }
}

fn fail(report: RawFd, stage: u8, errno: i32, code: i32) -> ! {
    let e = errno.to_ne_bytes();
    let msg = [stage, 0, 0, 0, e[0], e[1], e[2], e[3]];
    // SAFETY: write of a stack buffer, then _exit (no atexit handlers, no
    // flushing of the parent's stdio buffers).
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(code)
    }
}
