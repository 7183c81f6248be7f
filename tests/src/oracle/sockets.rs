//! Raw socket helpers of the oracle's servers (and of the channel and proxy
//! fixtures): checked syscalls, receive timeouts, listening sockets.

use std::mem;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use crate::sockaddr;

pub(crate) fn cvt(rc: libc::c_int, what: &str) -> libc::c_int {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
    rc
}

pub(crate) fn set_rcvtimeo(fd: libc::c_int, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid pointer and length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

pub(crate) fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) {
    // SAFETY: valid pointer and length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(rc, "setsockopt");
}

/// Creates a listening TCP socket (`v6only` applies to IPv6 binds). Must be
/// called on a thread in the desired namespace.
pub(crate) fn tcp_listen_socket(addr: SocketAddr, v6only: bool) -> TcpListener {
    let dom = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = cvt(
        unsafe { libc::socket(dom, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    );
    // SAFETY: fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, 16);
    if addr.is_ipv6() {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only as i32);
    }
    let (ss, len) = sockaddr::storage(&addr);
    // SAFETY: valid sockaddr.
    let rc = unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) };
    cvt(rc, &format!("bind {addr}"));
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(fd, 128) }, "listen");
    let l = TcpListener::from(owned);
    l.set_nonblocking(true).expect("nonblocking listener");
    l
}
