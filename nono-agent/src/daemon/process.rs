//! Who is asking, and which process they hand over: identities read from
//! the kernel, never from the request.
//!
//! A pid alone can be reused between the check and the act; every read here
//! is anchored on a pidfd: the pid is taken from the pidfd, `/proc/<pid>` is
//! opened, and only if the pidfd's process is still running afterwards can
//! that directory be trusted to be the same process (a running process's
//! pid cannot belong to another).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Errors of identifying a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The descriptor is not a pidfd, or its process is gone.
    #[error("the descriptor is not a pidfd of a running process")]
    NotPidfd,
    /// The process exited while it was examined.
    #[error("the process exited while it was examined")]
    Exited,
    /// A `/proc` file could not be read.
    #[error("reading /proc/{pid}/{file}")]
    Proc {
        /// The pid.
        pid: i32,
        /// The file.
        file: &'static str,
        #[source]
        source: io::Error,
    },
    /// A `/proc` file had an unexpected format.
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format {
        /// The pid.
        pid: i32,
        /// The file.
        file: &'static str,
    },
    /// The socket's peer credentials could not be read.
    #[error("reading the peer's credentials")]
    PeerCred(#[source] io::Error),
}

type Result<T, E = ProcessError> = std::result::Result<T, E>;

/// What the kernel says about a process, read race-free (see module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Its pid (in the daemon's pid namespace).
    pub pid: i32,
    /// Its thread-group id (equal to `pid` for a process, not a thread).
    pub tgid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Its cgroup v2 path, relative to the hierarchy's root.
    pub cgroup: String,
    /// Its start time (clock ticks after boot), which with the pid names a
    /// process across a daemon restart.
    pub start_time: u64,
}

/// The pid behind a pidfd (from its fdinfo), if it is a pidfd of a process
/// that has not been reaped.
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Result<i32> {
    let text = crate::util::read_small_path(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(|_| ProcessError::NotPidfd)?;
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .ok_or(ProcessError::NotPidfd)?;
    // -1: reaped; 0: in a pid namespace the daemon cannot see into.
    if pid <= 0 {
        return Err(ProcessError::NotPidfd);
    }
    Ok(pid)
}

/// Whether the pidfd's process is still running (its pidfd polls readable
/// once it exited).
pub fn running(pidfd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r == 0
}

/// Opens a pidfd for `pid` (the process must be ours to name: the caller
/// checks it afterwards, see [`info`]).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reads the identity of the pidfd's process, race-free.
pub fn info(pidfd: BorrowedFd<'_>) -> Result<ProcInfo> {
    read_info_at(pidfd, pidfd_pid(pidfd)?, true)
}

/// [`info`] without the start time (left 0), which placement does not use,
/// for a pidfd whose pid is known already (from [`pidfd_pid`]: a pidfd
/// names one process, whose pid does not change): two `/proc` files less
/// on every sandbox's start-up path.
pub fn identity_of(pidfd: BorrowedFd<'_>, pid: i32) -> Result<ProcInfo> {
    read_info_at(pidfd, pid, false)
}

/// The pidfd's process's cgroup v2 path, race-free (see [`info`]).
pub fn cgroup(pidfd: BorrowedFd<'_>) -> Result<String> {
    cgroup_of(pidfd, pidfd_pid(pidfd)?)
}

/// [`cgroup`] for a pidfd whose pid is known already (see
/// [`identity_of`]).
pub fn cgroup_of(pidfd: BorrowedFd<'_>, pid: i32) -> Result<String> {
    read_cgroup(&open_dir(pidfd, pid)?, pid)
}

/// The v2 path from `/proc/<pid>/cgroup`, in the directory `dir`.
fn read_cgroup(dir: &File, pid: i32) -> Result<String> {
    parse_cgroup(&read_at(dir, pid, "cgroup")?).ok_or(ProcessError::Format {
        pid,
        file: "cgroup",
    })
}

/// `/proc/<pid>` of the pidfd's process (`pid` is its pid), checked to
/// still be its own after it was opened.
fn open_dir(pidfd: BorrowedFd<'_>, pid: i32) -> Result<File> {
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(format!("/proc/{pid}"))
        .map_err(|_| ProcessError::Exited)?;
    // The directory is this pidfd's process only if it still runs now.
    if !running(pidfd) {
        return Err(ProcessError::Exited);
    }
    Ok(dir)
}

fn read_info_at(pidfd: BorrowedFd<'_>, pid: i32, with_start_time: bool) -> Result<ProcInfo> {
    let dir = open_dir(pidfd, pid)?;
    let status = read_at(&dir, pid, "status")?;
    let mut info = parse_status(&status).ok_or(ProcessError::Format {
        pid,
        file: "status",
    })?;
    info.pid = pid;
    info.cgroup = read_cgroup(&dir, pid)?;
    if with_start_time {
        let stat = read_at(&dir, pid, "stat")?;
        info.start_time =
            parse_start_time(&stat).ok_or(ProcessError::Format { pid, file: "stat" })?;
    }
    Ok(info)
}

fn read_at(dir: &File, pid: i32, file: &'static str) -> Result<String> {
    let c = std::ffi::CString::new(file).map_err(|_| ProcessError::Format { pid, file })?;
    // SAFETY: openat on a directory we hold, with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(ProcessError::Proc {
            pid,
            file,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: a new descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    crate::util::read_small(f).map_err(|source| ProcessError::Proc { pid, file, source })
}

/// tgid, ppid and uids from `/proc/<pid>/status`.
fn parse_status(text: &str) -> Option<ProcInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let tgid = field("Tgid:")?.parse().ok()?;
    let ppid = field("PPid:")?.parse().ok()?;
    let mut uids = [0u32; 4];
    let mut it = field("Uid:")?.split_whitespace();
    for u in &mut uids {
        *u = it.next()?.parse().ok()?;
    }
    Some(ProcInfo {
        pid: 0,
        tgid,
        ppid,
        uids,
        cgroup: String::new(),
        start_time: 0,
    })
}

/// The v2 path from `/proc/<pid>/cgroup` (the `0::` line).
fn parse_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name,
/// which may itself contain spaces and parentheses).
fn parse_start_time(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The peer of a unix stream socket: its pid, uid and gid at `connect`, and
/// a pidfd of it (`SO_PEERPIDFD`), so its pid can be trusted later.
#[derive(Debug)]
pub struct Peer {
    /// The peer's pid (daemon's pid namespace).
    pub pid: i32,
    /// Its uid at connect.
    pub uid: u32,
    /// Its gid at connect.
    pub gid: u32,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
}

/// Identifies the peer of `sock`.
pub fn peer(sock: BorrowedFd<'_>) -> Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(ProcessError::PeerCred(io::Error::last_os_error()));
    }
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above, an int.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || fd < 0 {
        return Err(ProcessError::PeerCred(io::Error::last_os_error()));
    }
    // SAFETY: SO_PEERPIDFD returned a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        pidfd,
    })
}

/// The absolute directory of a cgroup path read from `/proc/<pid>/cgroup`.
pub fn cgroup_dir(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// Borrow helper so callers can pass `&OwnedFd` or `&File`.
pub fn fd<T: AsFd>(t: &T) -> BorrowedFd<'_> {
    t.as_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_is_read_through_a_pidfd() {
        let me = pidfd_open(std::process::id() as i32).unwrap();
        let i = info(me.as_fd()).unwrap();
        assert_eq!(i.pid, std::process::id() as i32);
        assert_eq!(i.tgid, i.pid);
        // SAFETY: getuid has no preconditions.
        assert_eq!(i.uids[0], unsafe { libc::getuid() });
        assert!(i.cgroup.starts_with('/'));
        assert!(i.start_time > 0);
    }

    #[test]
    fn a_reaped_child_is_refused() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_open(c.id() as i32).unwrap();
        c.wait().unwrap();
        assert!(matches!(
            info(fd.as_fd()),
            Err(ProcessError::NotPidfd | ProcessError::Exited)
        ));
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 100 1";
        assert_eq!(parse_start_time(stat), Some(98765));
    }

    #[test]
    fn a_non_pidfd_is_refused() {
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(pidfd_pid(f.as_fd()), Err(ProcessError::NotPidfd)));
    }
}
