//! Every call the supervisor judges, and every reason it reports.

use super::*;
use nono_common::{Endpoint, Policy, LOOPBACK_ANY};

const AF_UNIX: u32 = consts::AF_UNIX;
const AF_INET: u32 = consts::AF_INET;
const AF_INET6: u32 = consts::AF_INET6;
const STREAM: u32 = consts::SOCK_STREAM;
const DGRAM: u32 = consts::SOCK_DGRAM;
const RAW: u32 = consts::SOCK_RAW;

fn eperm(reason: Reason) -> Denial {
    Denial {
        errno: libc::EPERM,
        reason,
        dest: None,
    }
}

fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut a = vec![0u8; 16];
    a[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    a[2..4].copy_from_slice(&port.to_be_bytes());
    a[4..8].copy_from_slice(&ip);
    a
}

fn v6(ip: [u8; 16], port: u16) -> Vec<u8> {
    let mut a = vec![0u8; 28];
    a[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
    a[2..4].copy_from_slice(&port.to_be_bytes());
    a[4..8].copy_from_slice(&[9, 9, 9, 9]); // flow info
    a[8..24].copy_from_slice(&ip);
    a[24..28].copy_from_slice(&[7, 0, 0, 0]); // scope id
    a
}

fn unix(path: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(path);
    a
}

const V6_ANY: [u8; 16] = [0; 16];
const V6_LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_MAPPED_ANY: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
const V6_MAPPED_LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];

/// Loopback on port 5432 only, and a proxy at 203.0.113.2:3128.
fn policy() -> Policy {
    let mut p = Policy::DENY_ALL;
    p.loopback_ports[0] = 5432;
    p.n_loopback_ports = 1;
    p.proxies[0] = Endpoint::from_dest(Dest::v4([203, 0, 113, 2], 3128));
    p.n_proxies = 1;
    p
}

#[test]
fn sockets() {
    for (pair, f, t, p, reason) in [
        (false, AF_INET, RAW, 1, Reason::SocketType),
        (false, AF_INET6, DGRAM, 58, Reason::SocketType),
        (false, AF_INET, STREAM, 262, Reason::SocketType),
        (false, 17, RAW, 0x300, Reason::SocketFamily), // AF_PACKET
        (false, 40, STREAM, 0, Reason::SocketFamily),  // AF_VSOCK
        (false, 16, RAW, 9, Reason::SocketFamily),     // NETLINK_AUDIT
        // Allowed by the table: never sent here, refused all the same.
        (false, AF_INET, STREAM, 0, Reason::SocketFamily),
        (true, AF_INET, STREAM, 0, Reason::SocketFamily),
        (true, AF_INET, RAW, 1, Reason::SocketType),
        (true, 16, RAW, 0, Reason::SocketFamily),
        (true, AF_UNIX, STREAM, 0, Reason::SocketFamily),
    ] {
        assert_eq!(socket(pair, f, t, p), eperm(reason), "{pair} {f} {t} {p}");
    }
}

#[test]
fn options() {
    use sockopt::*;
    for (l, o, reason) in [
        (SOL_IP, IP_OPTIONS, Reason::SocketOption),
        (SOL_IPV6, IPV6_RTHDR, Reason::SocketOption),
        (SOL_IP, IP_ADD_MEMBERSHIP, Reason::Multicast),
        (SOL_IPV6, IPV6_JOIN_ANYCAST, Reason::Multicast),
        (SOL_IP, IP_UNICAST_IF, Reason::LoopbackOffDevice),
        (SOL_IPV6, IPV6_PKTINFO, Reason::LoopbackOffDevice),
        // The supervisor cannot read the value: even `lo` is refused.
        (SOL_SOCKET, SO_BINDTODEVICE, Reason::DeviceBinding),
        (SOL_SOCKET, SO_BINDTOIFINDEX, Reason::DeviceBinding),
        // Allowed by the table: never sent here.
        (SOL_SOCKET, 2, Reason::SocketOption),
    ] {
        assert_eq!(setsockopt(l, o), eperm(reason), "{l} {o}");
    }
}

#[test]
fn control_messages() {
    use sockopt::*;
    for (l, t, data, reason) in [
        (SOL_IP, IP_OPTIONS, &[][..], Reason::SocketOption),
        (SOL_IP, IP_RETOPTS, &[][..], Reason::SocketOption),
        (
            SOL_IP,
            IP_PKTINFO,
            &[2, 0, 0, 0, 0, 0, 0, 0][..],
            Reason::LoopbackOffDevice,
        ),
        (SOL_IPV6, IPV6_RTHDR, &[][..], Reason::SocketOption),
        (SOL_IPV6, IPV6_2292RTHDR, &[][..], Reason::SocketOption),
        (SOL_IPV6, IPV6_2292PKTOPTIONS, &[][..], Reason::SocketOption),
        (
            SOL_IPV6,
            IPV6_PKTINFO,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0][..],
            Reason::LoopbackOffDevice,
        ),
        (
            SOL_SOCKET,
            SCM_CREDENTIALS,
            &[0; 12][..],
            Reason::ForeignCredentials,
        ),
    ] {
        assert_eq!(
            control_message(l, t, data, false),
            Err(eperm(reason)),
            "{l} {t}"
        );
    }
    // Source address only, no interface; own credentials; descriptors.
    assert_eq!(control_message(SOL_IP, IP_PKTINFO, &[0; 12], false), Ok(()));
    assert_eq!(
        control_message(SOL_IPV6, IPV6_PKTINFO, &[0; 20], false),
        Ok(())
    );
    assert_eq!(
        control_message(SOL_SOCKET, SCM_CREDENTIALS, &[0; 12], true),
        Ok(())
    );
    assert_eq!(
        control_message(SOL_SOCKET, libc::SCM_RIGHTS, &[0; 4], false),
        Ok(())
    );
    assert!(names_credentials(SOL_SOCKET, SCM_CREDENTIALS));
    assert!(!names_credentials(SOL_SOCKET, libc::SCM_RIGHTS));
    assert!(!names_credentials(SOL_IP, SCM_CREDENTIALS));
    assert!(is_credentials(libc::SOL_SOCKET, libc::SCM_CREDENTIALS));
    assert!(!is_credentials(libc::SOL_SOCKET, libc::SCM_RIGHTS));
}

#[test]
fn binds() {
    let any4 = v4([0; 4], 8080);
    let lo4 = v4([127, 0, 0, 1], 8080);
    // Not inet: the target's own call.
    assert_eq!(bind(AF_UNIX, unix(b"/tmp/s\0"), false), Ok(Bind::Continue));
    // Loopback and (filtered) wildcard as asked.
    assert_eq!(bind(AF_INET, lo4.clone(), false), Ok(Bind::To(lo4.clone())));
    assert_eq!(
        bind(AF_INET, any4.clone(), true),
        Ok(Bind::To(any4.clone()))
    );
    // Wildcard without the inbound filter: loopback instead.
    assert_eq!(bind(AF_INET, any4, false), Ok(Bind::To(lo4)));
    assert_eq!(
        bind(AF_INET6, v6(V6_ANY, 80), false),
        Ok(Bind::To(v6(V6_LO, 80)))
    );
    assert_eq!(
        bind(AF_INET6, v6(V6_MAPPED_ANY, 80), false),
        Ok(Bind::To(v6(V6_MAPPED_LO, 80)))
    );
    // AF_UNSPEC on an AF_INET socket binds the wildcard.
    let mut unspec = v4([0; 4], 80);
    unspec[0..2].copy_from_slice(&(libc::AF_UNSPEC as u16).to_ne_bytes());
    assert_eq!(
        bind(AF_INET, unspec, false),
        Ok(Bind::To(v4([127, 0, 0, 1], 80)))
    );
    // A real interface's address.
    assert_eq!(
        bind(AF_INET, v4([198, 51, 100, 1], 80), true),
        Err(Denial {
            dest: Some(Dest::v4([198, 51, 100, 1], 80)),
            ..eperm(Reason::BindAddress)
        })
    );
    // Unreadable for this socket: the kernel refuses it.
    let short = v4([198, 51, 100, 1], 80)[..8].to_vec();
    assert_eq!(bind(AF_INET, short.clone(), true), Ok(Bind::To(short)));
    assert_eq!(
        bind(AF_INET6, v4([198, 51, 100, 1], 80), true),
        Ok(Bind::To(v4([198, 51, 100, 1], 80)))
    );
}

#[test]
fn listens() {
    let unbound = v4([0; 4], 0);
    assert_eq!(listen(AF_INET, &unbound, true), Ok(None));
    assert_eq!(
        listen(AF_INET, &unbound, false),
        Ok(Some(v4([127, 0, 0, 1], 0)))
    );
    assert_eq!(listen(AF_INET, &v4([0; 4], 80), true), Ok(None));
    assert_eq!(
        listen(AF_INET6, &v6(V6_ANY, 80), false),
        Err(Denial {
            dest: Some(Dest::v6(V6_ANY, 80)),
            ..eperm(Reason::WildcardListener)
        })
    );
    assert_eq!(listen(AF_INET6, &v6(V6_LO, 80), false), Ok(None));
    assert_eq!(
        listen(AF_INET, &v4([198, 51, 100, 1], 80), true),
        Err(Denial {
            dest: Some(Dest::v4([198, 51, 100, 1], 80)),
            ..eperm(Reason::BindAddress)
        })
    );
    assert_eq!(listen(AF_INET, &[1], false), Ok(None));
}

#[test]
fn destinations() {
    let p = policy();
    let denied = |dest, reason| {
        Err(Refusal::Denied(Denial {
            dest: Some(dest),
            ..eperm(reason)
        }))
    };
    for send in [false, true] {
        // Too short for a family.
        assert_eq!(
            destination(&p, AF_INET, &[2], send),
            Err(Refusal::Invalid(libc::EINVAL))
        );
        // Unix: paths are judged by inode, the rest as given.
        assert_eq!(
            destination(&p, AF_UNIX, &unix(b"/run/x\0"), send),
            Ok(Destination::UnixPath)
        );
        assert_eq!(
            destination(&p, AF_UNIX, &unix(b"\0abstract"), send),
            Ok(Destination::AsGiven)
        );
        assert_eq!(
            destination(&p, AF_UNIX, &unix(b""), send),
            Ok(Destination::AsGiven)
        );
        assert_eq!(
            destination(&p, 16, &unix(b"/x"), send),
            Ok(Destination::AsGiven)
        );
        // Inet.
        let lo = Dest::v4([127, 0, 0, 1], 5432);
        assert_eq!(
            destination(&p, AF_INET, &v4([127, 0, 0, 1], 5432), send),
            Ok(Destination::Allowed(lo))
        );
        let proxy = Dest::v4([203, 0, 113, 2], 3128);
        assert_eq!(
            destination(&p, AF_INET6, &v4([203, 0, 113, 2], 3128), send),
            Ok(Destination::Allowed(proxy))
        );
        let lo6 = Dest::v6(V6_LO, 5432);
        assert_eq!(
            destination(&p, AF_INET6, &v6(V6_LO, 5432), send),
            Ok(Destination::Allowed(lo6))
        );
        for (addr, dest, reason) in [
            (
                v4([198, 51, 100, 7], 80),
                Dest::v4([198, 51, 100, 7], 80),
                Reason::NotAllowed,
            ),
            (v4([0; 4], 80), Dest::v4([0; 4], 80), Reason::Unspecified),
            (
                v4([127, 0, 0, 53], 53),
                Dest::v4([127, 0, 0, 53], 53),
                Reason::OtherLoopback,
            ),
            (
                v4([127, 0, 0, 1], 22),
                Dest::v4([127, 0, 0, 1], 22),
                Reason::LoopbackPort,
            ),
            (v6(V6_LO, 22), Dest::v6(V6_LO, 22), Reason::LoopbackPort),
            (v6(V6_ANY, 80), Dest::v6(V6_ANY, 80), Reason::Unspecified),
        ] {
            assert_eq!(
                destination(&p, AF_INET6, &addr, send),
                denied(dest, reason),
                "{dest:?}"
            );
        }
        assert_eq!(
            destination(&p, AF_INET, &v4([1, 2, 3, 4], 80)[..15], send),
            Err(Refusal::Invalid(libc::EINVAL))
        );
        assert_eq!(
            destination(&p, AF_INET6, &v6(V6_LO, 80)[..23], send),
            Err(Refusal::Invalid(libc::EINVAL))
        );
        // A family the kernel refuses on an inet socket.
        assert_eq!(
            destination(&p, AF_INET, &unix(b"/x"), send),
            Ok(Destination::AsGiven)
        );
    }
    // AF_UNSPEC: a connect dissolves the association; a send reads it as
    // IPv4 (when long enough).
    let mut unspec = v4([198, 51, 100, 7], 80);
    unspec[0..2].copy_from_slice(&(libc::AF_UNSPEC as u16).to_ne_bytes());
    assert_eq!(
        destination(&p, AF_INET, &unspec, false),
        Ok(Destination::AsGiven)
    );
    assert_eq!(
        destination(&p, AF_INET, &unspec, true),
        denied(Dest::v4([198, 51, 100, 7], 80), Reason::NotAllowed)
    );
    assert_eq!(
        destination(&p, AF_INET, &unspec[..15], true),
        Ok(Destination::AsGiven)
    );
    // Any loopback port when the policy says so.
    let mut any = policy();
    any.loopback_any = LOOPBACK_ANY;
    assert!(matches!(
        destination(&any, AF_INET, &v4([127, 0, 0, 1], 22), false),
        Ok(Destination::Allowed(_))
    ));
}

#[test]
fn daemon_sockets() {
    let denied = [(1, 2), (3, 4)];
    assert_eq!(unix_socket(&denied, (1, 3)), Ok(()));
    assert_eq!(
        unix_socket(&denied, (3, 4)),
        Err(Denial {
            errno: libc::EACCES,
            reason: Reason::DaemonSocket,
            dest: None,
        })
    );
}

fn transparent() -> Policy {
    let mut p = policy();
    p.redirects = nono_common::Redirects {
        tcp4: 4001,
        tcp6: 4002,
        dns4: 5301,
        dns6: 5302,
    };
    p
}

#[test]
fn transparent_tcp_goes_to_the_listener_in_the_callers_family() {
    let p = transparent();
    let r = redirect(&p, AF_INET, STREAM, &v4([198, 51, 100, 9], 443), false).unwrap();
    assert_eq!(r.addr, v4([127, 0, 0, 1], 4001));
    assert_eq!(r.original, Dest::v4([198, 51, 100, 9], 443));
    assert_eq!(r.reason, Reason::Transparent);
    let mut mapped = V6_MAPPED_ANY;
    mapped[12..].copy_from_slice(&[198, 51, 100, 9]);
    let r = redirect(&p, AF_INET6, STREAM, &v6(mapped, 22), false).unwrap();
    let mut want = v6(V6_MAPPED_LO, 4001);
    want[4..8].copy_from_slice(&[0; 4]);
    want[24..28].copy_from_slice(&[0; 4]);
    assert_eq!(r.addr, want);
    let mut doc = [0u8; 16];
    doc[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    doc[15] = 9;
    let r = redirect(&p, AF_INET6, STREAM, &v6(doc, 443), false).unwrap();
    assert_eq!(&r.addr[8..24], &V6_LO);
    assert_eq!(u16::from_be_bytes([r.addr[2], r.addr[3]]), 4002);
}

#[test]
fn transparent_dns_sends_go_to_the_resolver_and_nothing_else_moves() {
    let p = transparent();
    let r = redirect(&p, AF_INET, DGRAM, &v4([203, 0, 113, 53], 53), true).unwrap();
    assert_eq!(r.addr, v4([127, 0, 0, 1], 5301));
    assert_eq!(r.reason, Reason::Resolver);
    // AF_UNSPEC of IPv4 length on a send counts as IPv4, as the kernel reads it.
    let mut unspec = v4([203, 0, 113, 53], 53);
    unspec[0..2].copy_from_slice(&(libc::AF_UNSPEC as u16).to_ne_bytes());
    assert!(redirect(&p, AF_INET, DGRAM, &unspec, true).is_some());
    // UDP elsewhere, allowed destinations, metadata, unix, raw: untouched.
    assert!(redirect(&p, AF_INET, DGRAM, &v4([203, 0, 113, 53], 443), true).is_none());
    assert!(redirect(&p, AF_INET, STREAM, &v4([127, 0, 0, 1], 5432), false).is_none());
    assert!(redirect(&p, AF_INET, STREAM, &v4([203, 0, 113, 2], 3128), false).is_none());
    assert!(redirect(&p, AF_INET, STREAM, &v4([169, 254, 169, 254], 80), false).is_none());
    assert!(redirect(&p, AF_UNIX, STREAM, &unix(b"/run/x\0"), false).is_none());
    assert!(redirect(&p, AF_INET, RAW, &v4([203, 0, 113, 53], 53), true).is_none());
    // Off: nothing.
    assert!(redirect(
        &policy(),
        AF_INET,
        STREAM,
        &v4([198, 51, 100, 9], 443),
        false
    )
    .is_none());
}
