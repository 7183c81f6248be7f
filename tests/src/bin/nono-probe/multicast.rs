//! Channels: multicast memberships (IGMP/MLD reports).

use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nono_tests::sockaddr;

use crate::args::{usage, Args};
use crate::attempt::{Attempt, Steps};
use crate::reroute;
use crate::sock::{iface_addr4, iface_index, setsockopt_bytes, udp_socket};

/// `struct group_req` / `struct group_source_req` (MCAST_* options).
#[repr(C)]
struct GroupReq {
    interface: u32,
    group: libc::sockaddr_storage,
    source: libc::sockaddr_storage,
}

const IP_ADD_SOURCE_MEMBERSHIP: libc::c_int = 39;
const MCAST_JOIN_GROUP: libc::c_int = 42;
const MCAST_JOIN_SOURCE_GROUP: libc::c_int = 46;

fn as_bytes<T>(v: &T, len: usize) -> &[u8] {
    assert!(len <= mem::size_of::<T>());
    // SAFETY: a plain-data value viewed as its first `len` bytes.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, len) }
}

/// Joins multicast group `--group` on `--iface` with one option (`--how`):
/// `ip-add-membership` (ip_mreqn), `ip-add-source-membership`
/// (ip_mreq_source, source `--source`), `mcast-join-group` and
/// `mcast-join-source-group` (group_req / group_source_req, at SOL_IP or
/// SOL_IPV6 by the group's family), `ipv6-join-group` (ipv6_mreq,
/// IPV6_ADD_MEMBERSHIP = IPV6_JOIN_GROUP), or `ip-drop-membership`
/// (IP_ADD_MEMBERSHIP, then IP_DROP_MEMBERSHIP: the result is the drop's).
/// A successful join is held `--hold-ms` (300) so the kernel's reports go
/// out, then the socket is closed (which leaves the group: another report).
pub(crate) fn mcast_join(args: &Args, steps: &mut Steps) -> Attempt {
    let iface = args.req("iface");
    let group: IpAddr = args
        .req("group")
        .parse()
        .unwrap_or_else(|_| usage("--group: bad address"));
    let source: Option<IpAddr> = args.get("source").map(|s| {
        s.parse()
            .unwrap_or_else(|_| usage(&format!("--source: bad address {s:?}")))
    });
    let how = args.req("how");
    let idx = match iface_index(iface) {
        Ok(i) => i,
        Err(e) => return Attempt::fail(&format!("if_nametoindex({iface})"), &e),
    };
    let fd = match udp_socket(&group) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let raw = fd.as_raw_fd();
    let level = if group.is_ipv4() {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    };
    let v4 = |ip: IpAddr| libc::in_addr {
        s_addr: u32::from_ne_bytes(v4_target(ip).octets()),
    };
    let mreqn = || libc::ip_mreqn {
        imr_multiaddr: v4(group),
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: idx as i32,
    };
    let set = |name: libc::c_int, bytes: &[u8], label: &str| -> Attempt {
        match setsockopt_bytes(raw, level, name, bytes) {
            Ok(()) => Attempt::success(format!("{label} {group} on {iface} ({idx})")),
            Err(e) => Attempt::fail(&format!("setsockopt {label} {group} on {iface}"), &e),
        }
    };
    let group_req = |with_source: bool| {
        // SAFETY: all-zero is a valid GroupReq.
        let mut g: GroupReq = unsafe { mem::zeroed() };
        g.interface = idx;
        g.group = sockaddr::storage(&SocketAddr::new(group, 0)).0;
        if let Some(s) = source.filter(|_| with_source) {
            g.source = sockaddr::storage(&SocketAddr::new(s, 0)).0;
        }
        g
    };
    // The offset of the sockaddr_storage after the u32 (alignment padding).
    let ss = mem::size_of::<libc::sockaddr_storage>();
    let gr_len = mem::size_of::<GroupReq>() - ss;
    let a = match how {
        "ip-add-membership" => {
            let m = mreqn();
            set(
                libc::IP_ADD_MEMBERSHIP,
                as_bytes(&m, mem::size_of_val(&m)),
                "IP_ADD_MEMBERSHIP",
            )
        }
        "ip-add-source-membership" => {
            let Some(src) = source else {
                usage("--source needed")
            };
            let Some(local) = iface_addr4(iface) else {
                return Attempt {
                    ok: false,
                    errno: None,
                    detail: format!("no IPv4 address on {iface}"),
                };
            };
            let m = libc::ip_mreq_source {
                imr_multiaddr: v4(group),
                imr_interface: v4(local.into()),
                imr_sourceaddr: v4(src),
            };
            set(
                IP_ADD_SOURCE_MEMBERSHIP,
                as_bytes(&m, mem::size_of_val(&m)),
                "IP_ADD_SOURCE_MEMBERSHIP",
            )
        }
        "mcast-join-group" => {
            let g = group_req(false);
            set(MCAST_JOIN_GROUP, as_bytes(&g, gr_len), "MCAST_JOIN_GROUP")
        }
        "mcast-join-source-group" => {
            if source.is_none() {
                usage("--source needed");
            }
            let g = group_req(true);
            set(
                MCAST_JOIN_SOURCE_GROUP,
                as_bytes(&g, mem::size_of::<GroupReq>()),
                "MCAST_JOIN_SOURCE_GROUP",
            )
        }
        "ipv6-join-group" => {
            let m = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr {
                    s6_addr: v6_target(group).octets(),
                },
                ipv6mr_interface: idx,
            };
            set(
                libc::IPV6_ADD_MEMBERSHIP,
                as_bytes(&m, mem::size_of_val(&m)),
                "IPV6_JOIN_GROUP",
            )
        }
        "ip-drop-membership" => {
            let m = mreqn();
            let bytes = as_bytes(&m, mem::size_of_val(&m));
            let join = set(libc::IP_ADD_MEMBERSHIP, bytes, "IP_ADD_MEMBERSHIP");
            steps.push("join", &join);
            if join.ok {
                std::thread::sleep(Duration::from_millis(args.num("hold-ms", Some(300))));
            }
            let drop = set(libc::IP_DROP_MEMBERSHIP, bytes, "IP_DROP_MEMBERSHIP");
            steps.push("drop", &drop);
            return drop;
        }
        other => usage(&format!("--how: unknown {other:?}")),
    };
    steps.push("join", &a);
    if a.ok {
        std::thread::sleep(Duration::from_millis(args.num("hold-ms", Some(300))));
    }
    a
}

/// The group as IPv4 (exits with usage for an IPv6 one).
fn v4_target(ip: IpAddr) -> std::net::Ipv4Addr {
    reroute::v4_target(ip).unwrap_or_else(|a| usage(&a.detail))
}

/// The group as IPv6 (exits with usage for an IPv4 one).
fn v6_target(ip: IpAddr) -> std::net::Ipv6Addr {
    reroute::v6_target(ip).unwrap_or_else(|a| usage(&a.detail))
}
