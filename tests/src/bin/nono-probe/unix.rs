//! Channels: unix sends whose receiver checks the credentials.

use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::args::Args;
use crate::attempt::{errno_of, Attempt, Steps};
use crate::sock::{send_fd, socket};

/// A unix datagram to `--path` (sendto, unconnected) carrying `--secret`.
pub(crate) fn unix_dgram_send(args: &Args) -> Attempt {
    let path = args.req("path");
    let fd = match socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (sun, len) = match sockaddr_un(path) {
        Ok(s) => s,
        Err(e) => return Attempt::fail("sockaddr_un", &e),
    };
    let msg = args.get("secret").unwrap_or("nono-secret");
    // SAFETY: valid buffer and sockaddr_un.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
            &sun as *const _ as *const libc::sockaddr,
            len,
        )
    };
    match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!("sendto {path}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto {path}"), &e),
    }
}

/// `sendmsg` of `data` with a `SCM_CREDENTIALS` naming `(pid, uid, gid)`.
fn send_with_ucred(fd: i32, data: &[u8], (pid, uid, gid): (u32, u32, u32)) -> io::Result<usize> {
    const HDR: usize = mem::size_of::<libc::cmsghdr>();
    let mut control = [0u64; 4];
    let cred = libc::ucred {
        pid: pid as libc::pid_t,
        uid,
        gid,
    };
    // SAFETY: zeroed plain struct.
    let mut h: libc::cmsghdr = unsafe { mem::zeroed() };
    h.cmsg_len = HDR + mem::size_of::<libc::ucred>();
    h.cmsg_level = libc::SOL_SOCKET;
    h.cmsg_type = libc::SCM_CREDENTIALS;
    // SAFETY: `control` has 32 bytes, room for the header (16) and the
    // ucred (12); unaligned writes of plain structs.
    unsafe {
        let base = control.as_mut_ptr().cast::<u8>();
        std::ptr::write_unaligned(base.cast(), h);
        std::ptr::write_unaligned(base.add(HDR).cast(), cred);
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = HDR + mem::size_of::<libc::ucred>();
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sockaddr_un(path: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_bytes();
    if b.len() >= sun.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    let len = mem::size_of::<libc::sa_family_t>() + b.len() + 1;
    Ok((sun, len as libc::socklen_t))
}

/// Connects a unix stream socket to `--path` and sends two messages,
/// "send" with send() and "sendmsg" with sendmsg(); the listener reads the
/// peer's credentials (SO_PEERCRED, SCM_CREDENTIALS).
pub(crate) fn unix_stream_creds(args: &Args, steps: &mut Steps) -> Attempt {
    let path = args.req("path");
    let fd = match socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (sun, len) = match sockaddr_un(path) {
        Ok(s) => s,
        Err(e) => return Attempt::fail("sockaddr_un", &e),
    };
    // SAFETY: valid sockaddr_un.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sun as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Attempt::last_os(&format!("connect {path}"));
    }
    let s = match send_fd(fd.as_raw_fd(), b"send") {
        Ok(n) => Attempt::success(format!("send: {n} bytes")),
        Err(e) => Attempt::fail("send", &e),
    };
    steps.push("send", &s);
    // Let the receiver read the first message on its own.
    std::thread::sleep(Duration::from_millis(100));
    let mut iov = libc::iovec {
        iov_base: b"sendmsg".as_ptr() as *mut libc::c_void,
        iov_len: 7,
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    let m = match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!("sendmsg: {n} bytes")),
        Err(e) => Attempt::fail("sendmsg", &e),
    };
    steps.push("sendmsg", &m);
    std::thread::sleep(Duration::from_millis(100));
    // D-Bus clients name themselves in an explicit SCM_CREDENTIALS: that
    // must work; naming another pid (1) must fail with EPERM, as the kernel
    // refuses it for anyone without CAP_SYS_ADMIN.
    // SAFETY: plain id queries.
    let me = unsafe { (libc::getpid() as u32, libc::getuid(), libc::getgid()) };
    let own = send_with_ucred(fd.as_raw_fd(), b"sendmsg-own-creds", me);
    let own = match own {
        Ok(n) => Attempt::success(format!("sendmsg with its own SCM_CREDENTIALS: {n} bytes")),
        Err(e) => Attempt::fail("sendmsg with its own SCM_CREDENTIALS", &e),
    };
    steps.push("sendmsg-own-creds", &own);
    std::thread::sleep(Duration::from_millis(100));
    let forged = match send_with_ucred(fd.as_raw_fd(), b"forged", (1, me.1, me.2)) {
        Ok(n) => Attempt::fail(
            "sendmsg naming pid 1 in SCM_CREDENTIALS",
            &io::Error::other(format!("accepted ({n} bytes)")),
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Attempt::success("naming pid 1 refused with EPERM".to_string())
        }
        Err(e) => Attempt::fail("sendmsg naming pid 1 in SCM_CREDENTIALS", &e),
    };
    steps.push("sendmsg-forged-creds", &forged);
    if !own.ok {
        return own;
    }
    if !forged.ok {
        return forged;
    }
    if s.ok && m.ok {
        Attempt::success(format!("connected to {path}, sent two messages"))
    } else if !s.ok {
        s
    } else {
        m
    }
}
