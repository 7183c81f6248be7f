//! Raw socket helpers of the oracle's servers (and of the channel and proxy
//! fixtures): checked syscalls, receive timeouts, listening sockets.

use std::mem;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

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
    // SAFETY: zeroed sockaddr storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: storage is large enough and aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only as i32);
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: valid sockaddr.
    let rc = unsafe {
        libc::bind(
            fd,
            &ss as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    cvt(rc, &format!("bind {addr}"));
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(fd, 128) }, "listen");
    let l = TcpListener::from(owned);
    l.set_nonblocking(true).expect("nonblocking listener");
    l
}
