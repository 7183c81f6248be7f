//! Socket helpers shared by the vectors: sockets, timeouts, connect/send by
//! fd, socket options and control messages, interface lookups.

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::selftest::sockaddr;

use super::attempt::{cvt, errno_of};

pub const PAYLOAD: &[u8] = b"nono-probe payload";
pub const IPPROTO_MPTCP: libc::c_int = 262;
pub const ETHERTYPE_TAG: u16 = 0x88B5;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// Socket helpers

pub fn map_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

pub fn family(ip: &IpAddr) -> libc::c_int {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

pub fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the descriptor.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_timeouts(fd: RawFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    };
    for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        // SAFETY: valid pointer/length for a timeval option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &tv as *const _ as *const libc::c_void,
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

pub fn connect_fd(fd: RawFd, sa: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr::storage(sa);
    // SAFETY: ss/len describe a valid sockaddr.
    cvt(unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) }).map(|_| ())
}

pub fn sendto_fd(fd: RawFd, buf: &[u8], flags: libc::c_int, sa: &SocketAddr) -> io::Result<usize> {
    let (ss, len) = sockaddr::storage(sa);
    // SAFETY: valid buffer and sockaddr.
    let n = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            flags,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    errno_of(n as libc::c_long).map(|n| n as usize)
}

pub fn send_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: valid buffer.
    let n = unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), 0) };
    errno_of(n as libc::c_long).map(|n| n as usize)
}

pub fn setsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &[u8],
) -> io::Result<()> {
    // SAFETY: valid pointer/length.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v.as_ptr() as *const libc::c_void,
            v.len() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

pub fn setsockopt_i32(fd: RawFd, level: libc::c_int, name: libc::c_int, v: i32) -> io::Result<()> {
    setsockopt_bytes(fd, level, name, &v.to_ne_bytes())
}

/// A control buffer holding one message (u64 words for alignment) and its
/// length in bytes.
pub fn cmsg_buf(level: libc::c_int, ty: libc::c_int, data: &[u8]) -> (Vec<u64>, usize) {
    // SAFETY: CMSG_SPACE / CMSG_LEN are arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(data.len() as u32) as usize,
            libc::CMSG_LEN(data.len() as u32) as usize,
        )
    };
    let mut buf = vec![0u64; space.div_ceil(8)];
    let hdr = buf.as_mut_ptr() as *mut libc::cmsghdr;
    // SAFETY: buf holds CMSG_SPACE(len) bytes, aligned for cmsghdr.
    unsafe {
        (*hdr).cmsg_len = len as _;
        (*hdr).cmsg_level = level;
        (*hdr).cmsg_type = ty;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(hdr), data.len());
    }
    (buf, space)
}

/// sendmsg() of PAYLOAD with one control message; `dest` None leaves
/// msg_name NULL (connected socket).
pub fn sendmsg_cmsg(
    fd: RawFd,
    dest: Option<&SocketAddr>,
    level: libc::c_int,
    ty: libc::c_int,
    data: &[u8],
) -> io::Result<usize> {
    sendmsg_payload_cmsg(fd, dest, PAYLOAD, level, ty, data)
}

/// sendmsg() of `payload` with one control message; `dest` None leaves
/// msg_name NULL (connected socket, or one that passes a descriptor).
pub fn sendmsg_payload_cmsg(
    fd: RawFd,
    dest: Option<&SocketAddr>,
    payload: &[u8],
    level: libc::c_int,
    ty: libc::c_int,
    data: &[u8],
) -> io::Result<usize> {
    let (mut cbuf, clen) = cmsg_buf(level, ty, data);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    let mut ss = dest.map(sockaddr::storage);
    if let Some((ss, len)) = ss.as_mut() {
        msg.msg_name = ss as *mut _ as *mut libc::c_void;
        msg.msg_namelen = *len;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = clen as _;
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    errno_of(n as libc::c_long).map(|n| n as usize)
}

pub fn iface_index(iface: &str) -> io::Result<u32> {
    let cname = CString::new(iface).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(cname.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The first IPv4 address of interface `iface`.
pub fn iface_addr4(iface: &str) -> Option<Ipv4Addr> {
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out pointer; freed below.
    if unsafe { libc::getifaddrs(&mut ifa) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifa;
    while !cur.is_null() {
        // SAFETY: walking the list getifaddrs returned.
        unsafe {
            let a = (*cur).ifa_addr;
            let name = std::ffi::CStr::from_ptr((*cur).ifa_name);
            if !a.is_null()
                && (*a).sa_family as libc::c_int == libc::AF_INET
                && name.to_bytes() == iface.as_bytes()
            {
                let sin = &*(a as *const libc::sockaddr_in);
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                break;
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: list from getifaddrs.
    unsafe { libc::freeifaddrs(ifa) };
    found
}

pub fn udp_socket(ip: &IpAddr) -> io::Result<OwnedFd> {
    socket(family(ip), libc::SOCK_DGRAM, 0)
}

/// Abort a TCP connection with RST on close (no TIME_WAIT), so that tens
/// of thousands of short connections do not exhaust the ephemeral ports.
pub fn linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid pointer/length for SO_LINGER.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
