//! Direct TCP/UDP/io_uring attempts at the target, and the loopback/proxy
//! traffic that must keep working.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::selftest::sockaddr;

use super::attempt::{errno_of, Attempt};
use super::sock::{
    connect_fd, family, send_fd, sendmsg_cmsg, sendto_fd, set_timeouts, socket, udp_socket,
    CONNECT_TIMEOUT, PAYLOAD,
};

/// Blocking TCP (or MPTCP) connect with a timeout, then send a small payload.
pub fn tcp_connect(sa: SocketAddr, proto: libc::c_int) -> Attempt {
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM, proto) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    if let Err(e) = connect_fd(fd.as_raw_fd(), &sa) {
        return Attempt::fail(&format!("connect {sa}"), &e);
    }
    let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
    Attempt::success(format!("connected to {sa}"))
}

pub fn tcp_nonblock(sa: SocketAddr) -> Attempt {
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    match connect_fd(fd.as_raw_fd(), &sa) {
        Ok(()) => return Attempt::success(format!("connected immediately to {sa}")),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Attempt::fail(&format!("connect {sa}"), &e),
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, CONNECT_TIMEOUT.as_millis() as libc::c_int) };
    if n < 0 {
        return Attempt::last_os("poll");
    }
    if n == 0 {
        return Attempt {
            ok: false,
            errno: Some(libc::ETIMEDOUT),
            detail: "EINPROGRESS, then poll timed out (SYN left?)".into(),
        };
    }
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if err != 0 {
        return Attempt::fail(
            "EINPROGRESS then SO_ERROR",
            &io::Error::from_raw_os_error(err),
        );
    }
    let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
    Attempt::success(format!("non-blocking connect to {sa} completed"))
}

pub fn tcp_fastopen(sa: SocketAddr) -> Attempt {
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, libc::MSG_FASTOPEN, &sa) {
        Ok(n) => Attempt::success(format!("sendto(MSG_FASTOPEN) {sa} sent {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto(MSG_FASTOPEN) {sa}"), &e),
    }
}

pub fn udp_sendto(sa: SocketAddr) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &sa) {
        Ok(n) => Attempt::success(format!("sendto {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto {sa}"), &e),
    }
}

pub fn udp_sendmsg(sa: SocketAddr) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (mut ss, len) = sockaddr::storage(&sa);
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = &mut ss as *mut _ as *mut libc::c_void;
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points to valid memory for the call's duration.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!("sendmsg {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendmsg {sa}"), &e),
    }
}

pub fn udp_sendmmsg(sa: SocketAddr, count: usize) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (mut ss, len) = sockaddr::storage(&sa);
    let mut iovs: Vec<libc::iovec> = (0..count)
        .map(|_| libc::iovec {
            iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
            iov_len: PAYLOAD.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: all-zero mmsghdr is valid.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_name = &mut ss as *mut _ as *mut libc::c_void;
            m.msg_hdr.msg_namelen = len;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs/iovs/ss outlive the call.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), count as libc::c_uint, 0) };
    match errno_of(n as libc::c_long) {
        Ok(n) if n > 0 => Attempt::success(format!("sendmmsg {sa}: {n}/{count} datagrams")),
        Ok(n) => Attempt {
            ok: false,
            errno: None,
            detail: format!("sendmmsg {sa}: {n}/{count} datagrams"),
        },
        Err(e) => Attempt::fail(&format!("sendmmsg {sa}"), &e),
    }
}

pub fn udp_connect_send(sa: SocketAddr) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(e) = connect_fd(fd.as_raw_fd(), &sa) {
        return Attempt::fail(&format!("connect {sa}"), &e);
    }
    match send_fd(fd.as_raw_fd(), PAYLOAD) {
        Ok(n) => Attempt::success(format!("connect+send {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("send {sa}"), &e),
    }
}

/// Connect a UDP socket to an allowed address (the proxy endpoint if given,
/// else loopback), then override the destination with sendto(): the sendmsg
/// hook must still see the real target.
pub fn udp_connected_sendto(sa: SocketAddr, allowed: Option<SocketAddr>) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let allowed = allowed.unwrap_or_else(|| match sa {
        SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9),
        SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 9),
    });
    if let Err(e) = connect_fd(fd.as_raw_fd(), &allowed) {
        return Attempt::fail(&format!("connect {allowed} (should be allowed)"), &e);
    }
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &sa) {
        Ok(n) => Attempt::success(format!("connected to {allowed}, sendto {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto {sa} on socket connected to {allowed}"), &e),
    }
}

pub fn io_uring_connect(sa: SocketAddr) -> Attempt {
    use io_uring::{opcode, types, IoUring};
    let mut ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => return Attempt::fail("io_uring_setup", &e),
    };
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (ss, len) = sockaddr::storage(&sa);
    let ts = types::Timespec::new().sec(CONNECT_TIMEOUT.as_secs());
    let connect = opcode::Connect::new(
        types::Fd(fd.as_raw_fd()),
        &ss as *const _ as *const libc::sockaddr,
        len,
    )
    .build()
    .flags(io_uring::squeue::Flags::IO_LINK)
    .user_data(1);
    let timeout = opcode::LinkTimeout::new(&ts).build().user_data(2);
    // SAFETY: ss and ts outlive the submission (we wait for both completions).
    unsafe {
        let mut sq = ring.submission();
        if sq.push(&connect).is_err() || sq.push(&timeout).is_err() {
            return Attempt {
                ok: false,
                errno: None,
                detail: "submission queue full".into(),
            };
        }
    }
    if let Err(e) = ring.submit_and_wait(2) {
        return Attempt::fail("io_uring_enter", &e);
    }
    let mut res = None;
    for cqe in ring.completion() {
        if cqe.user_data() == 1 {
            res = Some(cqe.result());
        }
    }
    match res {
        Some(0) => {
            let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
            Attempt::success(format!("IORING_OP_CONNECT {sa} succeeded"))
        }
        Some(r) => Attempt::fail(
            &format!("IORING_OP_CONNECT {sa}"),
            &io::Error::from_raw_os_error(-r),
        ),
        None => Attempt {
            ok: false,
            errno: None,
            detail: "no completion for IORING_OP_CONNECT".into(),
        },
    }
}

pub fn io_uring_sendmsg(sa: SocketAddr) -> Attempt {
    use io_uring::{opcode, types, IoUring};
    let mut ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => return Attempt::fail("io_uring_setup", &e),
    };
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (mut ss, len) = sockaddr::storage(&sa);
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = &mut ss as *mut _ as *mut libc::c_void;
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let op = opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), &msg)
        .build()
        .user_data(1);
    // SAFETY: msg/iov/ss outlive the wait below.
    if unsafe { ring.submission().push(&op) }.is_err() {
        return Attempt {
            ok: false,
            errno: None,
            detail: "submission queue full".into(),
        };
    }
    if let Err(e) = ring.submit_and_wait(1) {
        return Attempt::fail("io_uring_enter", &e);
    }
    let res = ring.completion().next().map(|c| c.result());
    match res {
        Some(r) if r >= 0 => Attempt::success(format!("IORING_OP_SENDMSG {sa}: {r} bytes")),
        Some(r) => Attempt::fail(
            &format!("IORING_OP_SENDMSG {sa}"),
            &io::Error::from_raw_os_error(-r),
        ),
        None => Attempt {
            ok: false,
            errno: None,
            detail: "no completion".into(),
        },
    }
}

// ---------------------------------------------------------------------------
// What must keep working

/// A UDP socket connected to `sa` sends with a TOS (IPv4) or traffic class
/// (IPv6) control message and no destination (msg_name NULL).
pub fn udp_connected_cmsg(sa: SocketAddr, count: usize) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(e) = connect_fd(fd.as_raw_fd(), &sa) {
        return Attempt::fail(&format!("connect {sa}"), &e);
    }
    let (level, ty, what) = match sa {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS"),
    };
    for i in 0..count {
        if let Err(e) = sendmsg_cmsg(fd.as_raw_fd(), None, level, ty, &0x28i32.to_ne_bytes()) {
            return Attempt::fail(
                &format!("sendmsg #{i} (connected to {sa}, {what} cmsg, no name)"),
                &e,
            );
        }
    }
    Attempt::success(format!(
        "{count} datagrams via sendmsg (connected to {sa}, {what}=0x28 cmsg, no name)"
    ))
}

/// Sends `bytes` over TCP to an echo server and checks the same bytes come
/// back (both directions at once).
pub fn tcp_bulk(sa: SocketAddr, bytes: usize) -> Attempt {
    use std::net::{Shutdown, TcpStream};
    let mut s = match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return Attempt::fail(&format!("connect {sa}"), &e),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(e) => return Attempt::fail("dup", &e),
    };
    let out = data.clone();
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&out);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut got = Vec::with_capacity(bytes);
    let read = s.read_to_end(&mut got);
    let wrote = writer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
    if let Err(e) = wrote {
        return Attempt::fail(&format!("write {bytes} bytes to {sa}"), &e);
    }
    if let Err(e) = read {
        return Attempt::fail(
            &format!("read echo from {sa} ({} of {bytes} bytes)", got.len()),
            &e,
        );
    }
    if got != data {
        return Attempt {
            ok: false,
            errno: None,
            detail: format!(
                "sent {bytes} bytes to {sa}, got {} back, contents {}",
                got.len(),
                if got.len() == bytes {
                    "differ"
                } else {
                    "truncated"
                }
            ),
        };
    }
    Attempt::success(format!("sent {bytes} bytes to {sa} and received them back"))
}

/// Unconnected UDP sendmsg to `sa` carrying an IP_TOS / IPV6_TCLASS cmsg.
pub fn udp_sendmsg_cmsg(sa: SocketAddr, count: usize) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (level, ty, what) = match sa {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS"),
    };
    for i in 0..count {
        if let Err(e) = sendmsg_cmsg(fd.as_raw_fd(), Some(&sa), level, ty, &0x28i32.to_ne_bytes()) {
            return Attempt::fail(&format!("sendmsg #{i} to {sa} with {what} cmsg"), &e);
        }
    }
    Attempt::success(format!(
        "{count} datagrams via sendmsg to {sa} with {what}=0x28 cmsg"
    ))
}
