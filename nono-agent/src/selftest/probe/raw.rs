//! Raw IP, ping and AF_PACKET attempts (ICMP echo, tagged Ethernet frames).

use std::ffi::CString;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use crate::selftest::sockaddr;

use super::attempt::{errno_of, Attempt};
use super::sock::{sendto_fd, socket, ETHERTYPE_TAG};

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP (type 8) or ICMPv6 (type 128) echo request with the given identifier.
fn echo_request(v6: bool, id: u16) -> Vec<u8> {
    let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"nono-probe echo");
    if !v6 {
        let c = inet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    // ICMPv6 checksums are computed by the kernel for raw and ping sockets.
    pkt
}

pub fn icmp_echo(target: IpAddr, id: u16, raw: bool) -> Attempt {
    let v6 = target.is_ipv6();
    let (dom, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    let ty = if raw {
        libc::SOCK_RAW
    } else {
        libc::SOCK_DGRAM
    };
    let fd = match socket(dom, ty, proto) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail(&format!("socket(type={ty}, proto={proto})"), &e),
    };
    if !raw {
        // A ping socket's echo identifier is its bound "port".
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let (ss, len) = sockaddr::storage(&SocketAddr::new(any, id));
        // SAFETY: valid sockaddr.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &ss as *const _ as *const libc::sockaddr,
                len,
            )
        } < 0
        {
            return Attempt::last_os("bind(ping ident)");
        }
    }
    match sendto_fd(
        fd.as_raw_fd(),
        &echo_request(v6, id),
        0,
        &SocketAddr::new(target, 0),
    ) {
        Ok(n) => Attempt::success(format!("echo request id {id} to {target}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto echo {target}"), &e),
    }
}

pub fn af_packet(iface: &str, tag: &str) -> Attempt {
    let fd = match socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        (ETHERTYPE_TAG.to_be()) as libc::c_int,
    ) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket(AF_PACKET, SOCK_RAW)", &e),
    };
    let Ok(cname) = CString::new(iface) else {
        return Attempt {
            ok: false,
            errno: None,
            detail: "bad iface".into(),
        };
    };
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Attempt::last_os(&format!("if_nametoindex({iface})"));
    }
    let dst = [0xffu8; 6];
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&[0x02, 0x6e, 0x6f, 0x6e, 0x6f, 0x01]);
    frame.extend_from_slice(&ETHERTYPE_TAG.to_be_bytes());
    frame.extend_from_slice(tag.as_bytes());
    while frame.len() < 60 {
        frame.push(0);
    }
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETHERTYPE_TAG.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst);
    // SAFETY: valid buffers.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &sll as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!(
            "sent {n}-byte ethertype 0x88b5 frame tag {tag:?} on {iface}"
        )),
        Err(e) => Attempt::fail("sendto(AF_PACKET)", &e),
    }
}
