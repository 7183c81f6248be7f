//! Routing options: the program names loopback, the option sends the packet
//! elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::selftest::sockaddr;
use serde_json::{json, Value};

use super::attempt::{Attempt, Steps};
use super::sock::{
    cmsg_buf, connect_fd, family, iface_index, send_fd, sendmsg_cmsg, sendto_fd, set_timeouts,
    setsockopt_bytes, setsockopt_i32, socket, udp_socket, CONNECT_TIMEOUT, PAYLOAD,
};

/// `IPV6_2292PKTOPTIONS` (not in the libc crate).
const IPV6_2292PKTOPTIONS: libc::c_int = 6;

/// IPv6 segment routing header (type 4) with segments [::1, `segment`] and
/// segments left 1: the packet goes to `segment` first. The kernel replaces
/// segment 0 by the address passed to connect/sendto.
fn srh(segment: Ipv6Addr) -> Vec<u8> {
    // next header, hdr ext len (8-octet units after the first 8), routing
    // type, segments left, last entry, flags, tag (2).
    let mut h = vec![0, 4, 4, 1, 1, 0, 0, 0];
    h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    h.extend_from_slice(&segment.octets());
    h
}

/// Type 2 routing header (Mobile IPv6 home address) naming `addr`.
pub fn rh2(addr: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0, 2, 2, 1, 0, 0, 0, 0];
    h.extend_from_slice(&addr.octets());
    h
}

/// IPv4 loose (131) or strict (137) source route option with one hop,
/// padded with IPOPT_END to 8 bytes.
fn srr4(kind: u8, hop: Ipv4Addr) -> Vec<u8> {
    let o = hop.octets();
    vec![kind, 7, 4, o[0], o[1], o[2], o[3], 0]
}

/// A routing option: level, name, bytes, and a label for messages.
pub struct RouteOpt {
    pub level: libc::c_int,
    pub name: libc::c_int,
    pub bytes: Vec<u8>,
    pub label: &'static str,
}

pub fn srh_opt(target: IpAddr) -> Result<RouteOpt, Attempt> {
    Ok(RouteOpt {
        level: libc::IPPROTO_IPV6,
        name: libc::IPV6_RTHDR,
        bytes: srh(v6_target(target)?),
        label: "IPV6_RTHDR (segment routing, type 4)",
    })
}

/// The target as IPv6 (the routing-header vectors need one).
pub fn v6_target(t: IpAddr) -> Result<Ipv6Addr, Attempt> {
    match t {
        IpAddr::V6(a) => Ok(a),
        IpAddr::V4(_) => Err(Attempt::invalid("this vector needs an IPv6 --target")),
    }
}

/// The target as IPv4 (the source-route vectors need one).
pub fn v4_target(t: IpAddr) -> Result<Ipv4Addr, Attempt> {
    match t {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(Attempt::invalid("this vector needs an IPv4 --target")),
    }
}

pub fn srr4_opt(kind: u8, target: IpAddr, name: libc::c_int) -> Result<RouteOpt, Attempt> {
    Ok(RouteOpt {
        level: libc::IPPROTO_IP,
        name,
        bytes: srr4(kind, v4_target(target)?),
        label: if kind == 131 { "LSRR" } else { "SSRR" },
    })
}

/// Records which step refused the routing option.
pub fn refused(extra: &mut serde_json::Map<String, Value>, step: &str, a: Attempt) -> Attempt {
    extra.insert("refused_at".into(), json!(step));
    a
}

fn apply_sockopt(fd: RawFd, o: &RouteOpt, steps: &mut Steps) -> Result<(), Attempt> {
    match setsockopt_bytes(fd, o.level, o.name, &o.bytes) {
        Ok(()) => {
            steps.push("setsockopt", &Attempt::success(format!("{} set", o.label)));
            Ok(())
        }
        Err(e) => Err(Attempt::fail(&format!("setsockopt {}", o.label), &e)),
    }
}

/// setsockopt(option) then sendto(dst) on a UDP socket.
pub fn routed_udp_sockopt(
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(a) = apply_sockopt(fd.as_raw_fd(), o, steps) {
        return refused(extra, "setsockopt", a);
    }
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &dst) {
        Ok(n) => Attempt::success(format!("{} + sendto {dst}: {n} bytes", o.label)),
        Err(e) => Attempt::fail(&format!("sendto {dst} with {}", o.label), &e),
    }
}

/// connect(dst) then setsockopt(option) then send() on a UDP socket: the
/// option changes the route of an already connected socket.
pub fn routed_udp_connect_sockopt(
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(e) = connect_fd(fd.as_raw_fd(), &dst) {
        return Attempt::fail(&format!("connect {dst}"), &e);
    }
    steps.push("connect", &Attempt::success(format!("connected to {dst}")));
    if let Err(a) = apply_sockopt(fd.as_raw_fd(), o, steps) {
        return refused(extra, "setsockopt", a);
    }
    match send_fd(fd.as_raw_fd(), PAYLOAD) {
        Ok(n) => Attempt::success(format!("connect {dst} + {} + send: {n} bytes", o.label)),
        Err(e) => Attempt::fail(&format!("send to {dst} with {}", o.label), &e),
    }
}

/// setsockopt(option) then connect(dst) on a TCP socket.
pub fn routed_tcp_sockopt(
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match socket(family(&dst.ip()), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    if let Err(a) = apply_sockopt(fd.as_raw_fd(), o, steps) {
        return refused(extra, "setsockopt", a);
    }
    if let Err(e) = connect_fd(fd.as_raw_fd(), &dst) {
        return Attempt::fail(&format!("connect {dst} with {}", o.label), &e);
    }
    let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
    Attempt::success(format!("{} + connect {dst}: connected", o.label))
}

/// sendmsg(dst or NULL) carrying the option as ancillary data. With
/// `connect_to`, the socket is first bound to `bind_to` (a source address
/// that may leave the host: one bound to 127.0.0.1 by connect could not be
/// source-routed elsewhere) and connected.
pub fn routed_udp_cmsg(
    connect_to: Option<(SocketAddr, Option<IpAddr>)>,
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Some((_, Some(src))) = connect_to {
        let (ss, len) = sockaddr::storage(&SocketAddr::new(src, 0));
        // SAFETY: valid sockaddr.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &ss as *const _ as *const libc::sockaddr,
                len,
            )
        } < 0
        {
            return Attempt::last_os(&format!("bind {src}"));
        }
        steps.push("bind", &Attempt::success(format!("bound to {src}")));
    }
    let connect_to = connect_to.map(|c| c.0);
    if let Some(c) = connect_to {
        if let Err(e) = connect_fd(fd.as_raw_fd(), &c) {
            return Attempt::fail(&format!("connect {c}"), &e);
        }
        steps.push("connect", &Attempt::success(format!("connected to {c}")));
    }
    let name = if connect_to.is_some() {
        None
    } else {
        Some(&dst)
    };
    match sendmsg_cmsg(fd.as_raw_fd(), name, o.level, o.name, &o.bytes) {
        Ok(n) => Attempt::success(format!(
            "sendmsg {} with {} cmsg: {n} bytes",
            name.map_or("(connected, no name)".to_string(), |d| d.to_string()),
            o.label
        )),
        Err(e) => refused(
            extra,
            "sendmsg",
            Attempt::fail(&format!("sendmsg {dst} with {} cmsg", o.label), &e),
        ),
    }
}

/// setsockopt(IPV6_2292PKTOPTIONS) carrying a routing header cmsg, then
/// sendto(dst).
pub fn routed_udp_pktoptions(
    dst: SocketAddr,
    target: IpAddr,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    let segment = match v6_target(target) {
        Ok(a) => a,
        Err(a) => return a,
    };
    let (buf, len) = cmsg_buf(libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &srh(segment));
    // SAFETY: reinterpreting the initialised u64 words as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, len) }.to_vec();
    let o = RouteOpt {
        level: libc::IPPROTO_IPV6,
        name: IPV6_2292PKTOPTIONS,
        bytes,
        label: "IPV6_2292PKTOPTIONS (IPV6_RTHDR type 4 cmsg)",
    };
    routed_udp_sockopt(dst, &o, steps, extra)
}

/// UDP to 127.0.0.1:port with the outgoing interface forced to `iface`
/// (IP_UNICAST_IF, or an IP_PKTINFO cmsg), neither needing CAP_NET_RAW:
/// with no route on that interface Linux assumes the destination is on
/// link, and the datagram leaves once some host answers ARP for 127.0.0.1.
pub fn loopback_on_iface(
    port: u16,
    iface: &str,
    pktinfo: bool,
    count: usize,
    steps: &mut Steps,
) -> Attempt {
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let idx = match iface_index(iface) {
        Ok(i) => i,
        Err(e) => return Attempt::fail(&format!("if_nametoindex({iface})"), &e),
    };
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if !pktinfo {
        // IP_UNICAST_IF takes the index in network byte order.
        if let Err(e) = setsockopt_i32(fd.as_raw_fd(), libc::IPPROTO_IP, 50, (idx as i32).to_be()) {
            return Attempt::fail("setsockopt IP_UNICAST_IF", &e);
        }
        steps.push(
            "setsockopt",
            &Attempt::success(format!("IP_UNICAST_IF {iface} ({idx})")),
        );
    }
    let mut sent = 0;
    let mut last_err = None;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let r = if pktinfo {
            let mut info = Vec::with_capacity(12);
            info.extend_from_slice(&(idx as i32).to_ne_bytes());
            info.extend_from_slice(&[0u8; 8]);
            sendmsg_cmsg(
                fd.as_raw_fd(),
                Some(&dst),
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &info,
            )
        } else {
            sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &dst)
        };
        match r {
            Ok(_) => sent += 1,
            Err(e) => last_err = Some(e),
        }
    }
    let how = if pktinfo {
        "IP_PKTINFO cmsg"
    } else {
        "IP_UNICAST_IF"
    };
    match (sent, last_err) {
        (0, Some(e)) => Attempt::fail(&format!("send {dst} via {iface} ({how})"), &e),
        _ => Attempt::success(format!(
            "{sent}/{count} datagrams to {dst} via {iface} ({how})"
        )),
    }
}
