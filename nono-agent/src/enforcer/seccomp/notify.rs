//! The user-notification ioctls and the target's memory and descriptors.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

/// One notification: which thread, which call, which arguments.
pub type Notif = libc::seccomp_notif;

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Blocks until a notification arrives (EINTR is retried; ENOENT means the
/// target died between notification and receipt and is skipped by callers).
pub fn recv(listener: BorrowedFd<'_>) -> io::Result<Notif> {
    loop {
        // SAFETY: zeroed seccomp_notif is the required input state.
        let mut n: Notif = unsafe { std::mem::zeroed() };
        // SAFETY: valid listener fd and a correctly sized out-struct.
        let r =
            unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
        if r == 0 {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether notification `id` is still pending (its thread has not died or
/// been interrupted). Checked after reading target memory: if it is not,
/// what was read may belong to another process that reused the pid.
pub fn id_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    // SAFETY: valid fd; the ioctl reads a u64.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut id,
        ) == 0
    }
}

/// Answers a notification: `Ok(val)` becomes the syscall's return value,
/// `Err(errno)` its error. ENOENT (target gone) is not an error.
pub fn respond(listener: BorrowedFd<'_>, id: u64, result: Result<i64, i32>) -> io::Result<()> {
    let (val, error) = match result {
        Ok(v) => (v, 0),
        Err(e) => (0, -e),
    };
    send(
        listener,
        libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags: 0,
        },
    )
}

/// Lets the target's own system call proceed
/// (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). Only for calls whose arguments the
/// supervisor does not need to trust (see the callers).
pub fn respond_continue(listener: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    send(
        listener,
        libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        },
    )
}

/// Sends one response. ENOENT (the target is gone, or was killed while we
/// worked) is not an error: there is nobody left to answer.
fn send(listener: BorrowedFd<'_>, mut resp: libc::seccomp_notif_resp) -> io::Result<()> {
    // SAFETY: valid fd and response struct.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Asks the kernel to hand the CPU straight from the notifying thread to a
/// receiver and back (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6+): the
/// supervisor answers inline, so this removes most of the scheduling
/// latency of each round trip. Harmless if unsupported.
pub fn set_sync_wakeup(listener: BorrowedFd<'_>) -> bool {
    const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
    // SAFETY: valid fd; the ioctl takes the flags by value.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        ) == 0
    }
}

/// A pidfd for the notifying thread (it may not be a thread-group leader).
pub fn pidfd_for_thread(tid: u32) -> io::Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
    // SAFETY: plain syscall; the result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Duplicates descriptor `fd` of the process behind `pidfd` into ours: the
/// same open file description (same socket), so acting on it is acting on
/// the target's socket, immune to the target swapping its fd table later.
pub fn grab_fd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Copies `len` bytes at `addr` in process `pid` (the copy is what is judged
/// and used; the target's memory is never read twice).
pub fn read_mem(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: local iovec points at our buffer of `len` bytes; the remote
    // one is only interpreted by the kernel in the target's address space.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != len {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(buf)
}

/// Installs `prog` as a seccomp filter with a notification listener. Runs in
/// the child between clone and exec: syscalls only. Returns the listener fd.
pub fn install_with_listener(prog: &[libc::sock_filter], notify: bool) -> io::Result<RawFd> {
    const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let flags = if notify {
        // WAIT_KILLABLE_RECV: once the supervisor has received a
        // notification, only a fatal signal interrupts the wait, so an
        // operation the supervisor performs is never repeated by a restart.
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    } else {
        0
    };
    // SAFETY: fprog points at a valid program that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fprog) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = check(0);
    Ok(r as RawFd)
}
