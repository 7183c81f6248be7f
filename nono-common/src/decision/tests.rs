extern crate std;

use super::*;
use crate::consts::*;
use crate::types::{Endpoint, MAX_PROXY_ENDPOINTS};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn dest(ip: IpAddr, port: u16) -> Dest {
    match ip {
        IpAddr::V4(v4) => Dest::v4(v4.octets(), port),
        IpAddr::V6(v6) => Dest::v6(v6.octets(), port),
    }
}

fn policy_with(proxies: &[(IpAddr, u16)]) -> Policy {
    let mut p = Policy::DENY_ALL;
    p.loopback_any = LOOPBACK_ANY;
    for (i, (ip, port)) in proxies.iter().enumerate() {
        p.proxies[i] = Endpoint::from_dest(dest(*ip, *port));
    }
    p.n_proxies = proxies.len() as u32;
    p
}

fn d(p: &Policy, ip: &str, port: u16) -> Decision {
    decide_connect(p, &dest(ip.parse().unwrap(), port))
}

#[test]
fn loopback_exact_addresses_any_port() {
    let p = policy_with(&[]);
    for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        for port in [0, 1, 80, 5432, 65535] {
            assert_eq!(
                d(&p, ip, port),
                Decision::allow(Reason::Loopback),
                "{ip}:{port}"
            );
        }
    }
}

#[test]
fn other_loopback_and_unspecified_denied() {
    let p = policy_with(&[]);
    assert_eq!(d(&p, "127.0.0.53", 53).reason, Reason::OtherLoopback);
    assert_eq!(d(&p, "::ffff:127.0.0.2", 53).reason, Reason::OtherLoopback);
    assert_eq!(d(&p, "127.255.255.255", 1).reason, Reason::OtherLoopback);
    assert_eq!(d(&p, "0.0.0.0", 80).reason, Reason::Unspecified);
    assert_eq!(d(&p, "::", 80).reason, Reason::Unspecified);
    assert_eq!(d(&p, "::ffff:0.0.0.0", 80).reason, Reason::Unspecified);
    // IPv4-compatible ::127.0.0.1 is not loopback on Linux.
    assert!(!d(&p, "::127.0.0.1", 80).allow);
}

#[test]
fn metadata_and_public_denied() {
    let p = policy_with(&[]);
    for ip in [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "fd00:ec2::254",
        "198.51.100.7",
        "2001:db8::1",
    ] {
        assert_eq!(d(&p, ip, 80), Decision::deny(Reason::NotAllowed), "{ip}");
    }
}

#[test]
fn proxy_endpoint_matches_address_and_port_in_both_spellings() {
    let p = policy_with(&[
        ("198.51.100.2".parse().unwrap(), 3128),
        ("2001:db8::5".parse().unwrap(), 8080),
    ]);
    assert_eq!(d(&p, "198.51.100.2", 3128), Decision::allow(Reason::Proxy));
    assert_eq!(
        d(&p, "::ffff:198.51.100.2", 3128),
        Decision::allow(Reason::Proxy)
    );
    assert_eq!(d(&p, "2001:db8::5", 8080), Decision::allow(Reason::Proxy));
    assert!(!d(&p, "198.51.100.2", 3129).allow);
    assert!(!d(&p, "198.51.100.3", 3128).allow);
    assert!(!d(&p, "2001:db8::5", 3128).allow);
}

#[test]
fn entries_beyond_count_are_ignored() {
    let mut p = policy_with(&[]);
    p.proxies[3] = Endpoint::from_dest(Dest::v4([198, 51, 100, 9], 1));
    p.n_proxies = 3;
    assert!(!decide_connect(&p, &Dest::v4([198, 51, 100, 9], 1)).allow);
    p.n_proxies = 4;
    assert!(decide_connect(&p, &Dest::v4([198, 51, 100, 9], 1)).allow);
}

#[test]
fn deny_all_policy_denies_loopback() {
    let p = Policy::DENY_ALL;
    assert_eq!(d(&p, "127.0.0.1", 80).reason, Reason::LoopbackPort);
}

#[test]
fn narrowed_loopback_ports() {
    let mut p = policy_with(&[("127.0.0.1".parse().unwrap(), 4000)]);
    p.loopback_any = 0;
    p.loopback_ports[0] = 5432;
    p.n_loopback_ports = 1;
    assert!(d(&p, "127.0.0.1", 5432).allow);
    assert!(d(&p, "::1", 5432).allow);
    assert_eq!(d(&p, "127.0.0.1", 4000), Decision::allow(Reason::Proxy));
    assert_eq!(d(&p, "::1", 4000).reason, Reason::LoopbackPort);
    assert_eq!(d(&p, "127.0.0.1", 22).reason, Reason::LoopbackPort);
}

#[test]
fn sockets() {
    assert!(decide_socket(AF_INET, SOCK_STREAM, 0).allow);
    assert!(decide_socket(AF_INET6, SOCK_STREAM | 0o4000 | 0o2000000, IPPROTO_TCP).allow);
    assert!(decide_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).allow);
    assert!(decide_socket(AF_UNIX, SOCK_RAW, 0).allow);
    assert!(!decide_socket(AF_INET, SOCK_RAW, IPPROTO_ICMP).allow);
    assert!(!decide_socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP).allow);
    assert!(!decide_socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6).allow);
    assert!(!decide_socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP).allow);
    assert!(!decide_socket(AF_INET, SOCK_STREAM, 132).allow); // SCTP
    assert!(!decide_socket(AF_INET, 5, 132).allow); // SOCK_SEQPACKET
    assert!(!decide_socket(AF_INET, SOCK_DGRAM, 136).allow); // UDP-Lite
    assert!(!decide_socket(AF_INET, SOCK_STREAM, IPPROTO_UDP).allow);
    assert_eq!(
        decide_socket(AF_INET, SOCK_RAW, IPPROTO_ICMP).reason,
        Reason::SocketType
    );
    // Families other than unix, netlink-route and inet.
    for family in [0, 3, 4, 5, 17, 40, 44, 46, 0xffff_ffff] {
        assert_eq!(
            decide_socket(family, SOCK_STREAM, 0),
            Decision::deny(Reason::SocketFamily),
            "{family}"
        );
    }
    assert!(decide_socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE).allow);
    assert!(decide_socket(AF_NETLINK, SOCK_DGRAM | 0o2000000, NETLINK_ROUTE).allow);
    for proto in [9, 15, 12] {
        // NETLINK_AUDIT, NETLINK_KOBJECT_UEVENT, NETLINK_NETFILTER
        assert_eq!(
            decide_socket(AF_NETLINK, SOCK_RAW, proto),
            Decision::deny(Reason::SocketFamily)
        );
    }
}

#[test]
fn socketpairs_are_unix_only() {
    assert!(decide_socketpair(AF_UNIX, SOCK_STREAM, 0).allow);
    assert!(decide_socketpair(AF_UNIX, SOCK_DGRAM | 0o4000, 0).allow);
    for (f, t, p, reason) in [
        (AF_INET, SOCK_STREAM, 0, Reason::SocketFamily),
        (AF_INET6, SOCK_DGRAM, IPPROTO_UDP, Reason::SocketFamily),
        (AF_NETLINK, SOCK_RAW, NETLINK_ROUTE, Reason::SocketFamily),
        (AF_INET, SOCK_RAW, IPPROTO_ICMP, Reason::SocketType),
        (40, SOCK_STREAM, 0, Reason::SocketFamily),
    ] {
        assert_eq!(
            decide_socketpair(f, t, p),
            Decision::deny(reason),
            "{f} {t} {p}"
        );
    }
}

#[test]
fn socket_table_is_well_formed() {
    for r in ALLOWED_SOCKETS {
        // One refusal reason per family.
        for o in ALLOWED_SOCKETS.iter().filter(|o| o.family == r.family) {
            assert_eq!(o.refused, r.refused, "{r:?}");
        }
        assert!(!r.refused.name().is_empty());
        assert!(r.ty == ANY || r.ty & !SOCK_TYPE_MASK == 0, "{r:?}");
        // socketpair is judged on families the cgroup hook never sees.
        assert!(!(r.socketpair && cgroup_hook_sees(r.family)), "{r:?}");
    }
}

const NOT_SENDER: ControlContext = ControlContext {
    names_sender: false,
};

#[test]
fn rerouting_control_messages_are_refused() {
    use crate::decision::sockopt::*;
    for (l, t, reason) in [
        (SOL_IP, IP_OPTIONS, Reason::SocketOption),
        (SOL_IP, IP_RETOPTS, Reason::SocketOption),
        (SOL_IPV6, IPV6_RTHDR, Reason::SocketOption),
        (SOL_IPV6, IPV6_2292RTHDR, Reason::SocketOption),
        (SOL_IPV6, IPV6_2292PKTOPTIONS, Reason::SocketOption),
    ] {
        assert_eq!(
            decide_control(l, t, &[], NOT_SENDER),
            Decision::deny(reason),
            "{l} {t}"
        );
    }
    // Ordinary control messages.
    for (l, t) in [(SOL_IP, 1), (SOL_IPV6, 67), (SOL_SOCKET, 1), (6, 4)] {
        assert!(decide_control(l, t, &[1; 32], NOT_SENDER).allow, "{l} {t}");
    }
}

#[test]
fn pktinfo_control_messages_may_not_choose_an_interface() {
    use crate::decision::sockopt::*;
    let mut v4 = [0u8; 12];
    assert!(decide_control(SOL_IP, IP_PKTINFO, &v4, NOT_SENDER).allow);
    v4[0] = 2;
    assert_eq!(
        decide_control(SOL_IP, IP_PKTINFO, &v4, NOT_SENDER),
        Decision::deny(Reason::LoopbackOffDevice)
    );
    let mut v6 = [0u8; 20];
    v6[0] = 0xff; // the address alone chooses no interface
    assert!(decide_control(SOL_IPV6, IPV6_PKTINFO, &v6, NOT_SENDER).allow);
    v6[16] = 1;
    assert_eq!(
        decide_control(SOL_IPV6, IPV6_PKTINFO, &v6, NOT_SENDER),
        Decision::deny(Reason::LoopbackOffDevice)
    );
    // Too short to hold an index: none chosen (the kernel refuses it).
    assert!(decide_control(SOL_IPV6, IPV6_PKTINFO, &v6[..19], NOT_SENDER).allow);
}

#[test]
fn credentials_must_name_the_sender() {
    use crate::decision::sockopt::*;
    assert_eq!(
        decide_control(SOL_SOCKET, SCM_CREDENTIALS, &[0; 12], NOT_SENDER),
        Decision::deny(Reason::ForeignCredentials)
    );
    let me = ControlContext { names_sender: true };
    assert!(decide_control(SOL_SOCKET, SCM_CREDENTIALS, &[0; 12], me).allow);
}

#[test]
fn reasons_round_trip() {
    for v in 0..64 {
        if let Some(r) = Reason::from_u32(v) {
            assert_eq!(r as u32, v);
            assert!(!r.name().is_empty());
        }
    }
    assert_eq!(Reason::SocketFamily.name(), "socket-family-not-allowed");
    assert_eq!(Reason::InboundFilter.name(), "inbound-filter-not-applied");
    assert_eq!(
        Reason::WildcardListener.name(),
        "wildcard-listener-without-inbound-filter"
    );
    assert_eq!(Reason::DaemonSocket.name(), "daemon-socket-not-allowed");
    assert_eq!(Reason::ForeignCredentials.name(), "foreign-credentials");
}

#[test]
fn sendmsg_without_destination_is_the_connected_peer() {
    let p = policy_with(&[]);
    assert_eq!(
        decide_sendmsg(&p, &Dest::v6([0; 16], 0)),
        Decision::allow(Reason::ConnectedPeer)
    );
    assert_eq!(
        decide_sendmsg(&p, &Dest::v4([0; 4], 0)),
        Decision::allow(Reason::ConnectedPeer)
    );
    // An explicit unspecified destination with a port is still refused.
    assert_eq!(
        decide_sendmsg(&p, &Dest::v6([0; 16], 53)).reason,
        Reason::Unspecified
    );
    assert_eq!(
        decide_sendmsg(&p, &Dest::v4([0; 4], 53)).reason,
        Reason::Unspecified
    );
    assert!(!decide_sendmsg(&p, &Dest::v4([198, 51, 100, 2], 53)).allow);
    assert!(decide_sendmsg(&p, &Dest::v4([127, 0, 0, 1], 53)).allow);
}

#[test]
fn egress_allows_loopback_any_port_even_when_narrowed() {
    let mut p = policy_with(&[("198.51.100.2".parse().unwrap(), 3128)]);
    p.loopback_any = 0;
    assert!(decide_egress(&p, &Dest::v4([127, 0, 0, 1], 40000), true).allow);
    assert!(decide_egress(&p, &Dest::v6(Ipv6Addr::LOCALHOST.octets(), 40000), true).allow);
    assert!(decide_egress(&p, &Dest::v4([198, 51, 100, 2], 3128), false).allow);
    assert!(!decide_egress(&p, &Dest::v4([198, 51, 100, 2], 0), true).allow);
    assert!(
        !decide_egress(
            &p,
            &Dest::v6("2001:db8:100::2".parse::<Ipv6Addr>().unwrap().octets(), 9),
            true
        )
        .allow
    );
    assert!(!decide_egress(&p, &Dest::v4([127, 0, 0, 53], 53), true).allow);
}

#[test]
fn loopback_packets_must_stay_on_the_loopback_device() {
    let p = policy_with(&[]);
    assert_eq!(
        decide_egress(&p, &Dest::v4([127, 0, 0, 1], 53), false),
        Decision::deny(Reason::LoopbackOffDevice)
    );
    assert!(!decide_egress(&p, &Dest::v6(Ipv6Addr::LOCALHOST.octets(), 53), false).allow);
}

const NO_CTX: OptionContext = OptionContext {
    binds_loopback_device: false,
    packet_filter: false,
};

#[test]
fn rerouting_socket_options_are_refused() {
    use crate::decision::sockopt::*;
    for (l, o) in [
        (SOL_IP, IP_OPTIONS),
        (SOL_IPV6, IPV6_RTHDR),
        (SOL_IPV6, IPV6_2292RTHDR),
        (SOL_IPV6, IPV6_2292PKTOPTIONS),
    ] {
        assert_eq!(
            decide_setsockopt(l, o, NO_CTX),
            Decision::deny(Reason::SocketOption)
        );
    }
    assert!(decide_setsockopt(SOL_IP, 1, NO_CTX).allow); // IP_TOS
    assert!(decide_setsockopt(1, 2, NO_CTX).allow); // SOL_SOCKET, SO_REUSEADDR
    assert!(decide_setsockopt(SOL_IPV6, 67, NO_CTX).allow); // IPV6_TCLASS
    assert!(decide_setsockopt(6, IP_OPTIONS, NO_CTX).allow); // SOL_TCP, TCP_NODELAY-range
    assert!(decide_setsockopt(SOL_IP, 8, NO_CTX).allow); // IP_PKTINFO (receive flag)
    assert!(decide_setsockopt(SOL_IP, 49, NO_CTX).allow); // IP_MULTICAST_ALL
    assert!(decide_setsockopt(SOL_IP, 32, NO_CTX).allow); // IP_MULTICAST_IF
}

#[test]
fn every_membership_option_is_refused() {
    // The kernel's numbers, spelled out independently of the table.
    let v4 = [35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48];
    let v6 = [20, 21, 27, 28, 42, 43, 44, 45, 46, 47, 48];
    for o in v4 {
        let d = decide_setsockopt(
            0,
            o,
            OptionContext {
                binds_loopback_device: true,
                packet_filter: true,
            },
        );
        assert_eq!(d, Decision::deny(Reason::Multicast), "SOL_IP {o}");
    }
    for o in v6 {
        let d = decide_setsockopt(
            41,
            o,
            OptionContext {
                binds_loopback_device: true,
                packet_filter: true,
            },
        );
        assert_eq!(d, Decision::deny(Reason::Multicast), "SOL_IPV6 {o}");
    }
    // Their neighbours are ordinary options.
    assert!(decide_setsockopt(0, 34, NO_CTX).allow); // IP_MULTICAST_LOOP
    assert!(decide_setsockopt(41, 19, NO_CTX).allow); // IPV6_MULTICAST_LOOP
    assert!(decide_setsockopt(41, 26, NO_CTX).allow); // IPV6_V6ONLY
}

#[test]
fn device_binding_only_to_loopback() {
    let lo = OptionContext {
        binds_loopback_device: true,
        packet_filter: false,
    };
    for o in [25, 62] {
        assert_eq!(
            decide_setsockopt(1, o, NO_CTX),
            Decision::deny(Reason::DeviceBinding)
        );
        assert!(decide_setsockopt(1, o, lo).allow);
    }
    assert!(device_name_is_loopback(b""));
    assert!(device_name_is_loopback(b"\0eth0"));
    assert!(device_name_is_loopback(b"lo"));
    assert!(device_name_is_loopback(b"lo\0garbage"));
    assert!(!device_name_is_loopback(b"lo0"));
    assert!(!device_name_is_loopback(b"l"));
    assert!(!device_name_is_loopback(b"eth0"));
    assert!(!device_name_is_loopback(b"veth-nono"));
}

#[test]
fn off_device_options_need_a_packet_filter() {
    let filtered = OptionContext {
        binds_loopback_device: false,
        packet_filter: true,
    };
    for (l, o) in [(0, 50), (41, 76), (41, 50)] {
        assert_eq!(
            decide_setsockopt(l, o, NO_CTX),
            Decision::deny(Reason::LoopbackOffDevice)
        );
        assert!(decide_setsockopt(l, o, filtered).allow);
    }
}

#[test]
fn table_ranges_are_well_formed() {
    for e in REFUSED_OPTIONS {
        assert!(e.first <= e.last, "{e:?}");
        assert!(!e.reason.name().is_empty());
        assert!(Reason::from_u32(e.reason as u32) == Some(e.reason));
    }
}

#[test]
fn binds() {
    for (ip, allow, reason) in [
        ("127.0.0.1", true, Reason::Loopback),
        ("127.8.9.10", true, Reason::Loopback),
        ("::1", true, Reason::Loopback),
        ("::ffff:127.0.0.1", true, Reason::Loopback),
        ("0.0.0.0", true, Reason::Wildcard),
        ("::", true, Reason::Wildcard),
        ("::ffff:0.0.0.0", true, Reason::Wildcard),
        ("198.51.100.1", false, Reason::BindAddress),
        ("2001:db8::1", false, Reason::BindAddress),
        ("::ffff:198.51.100.1", false, Reason::BindAddress),
        ("169.254.1.1", false, Reason::BindAddress),
        ("fe80::1", false, Reason::BindAddress),
    ] {
        let d = decide_bind(&dest(ip.parse().unwrap(), 8080));
        assert_eq!((d.allow, d.reason), (allow, reason), "{ip}");
    }
}

#[test]
fn inbound_only_from_loopback_device_or_proxies() {
    let p = policy_with(&[("203.0.113.2".parse().unwrap(), 3128)]);
    assert!(decide_ingress(&p, &Dest::v4([198, 51, 100, 2], 40000), true).allow);
    assert_eq!(
        decide_ingress(&p, &Dest::v4([198, 51, 100, 2], 40000), false),
        Decision::deny(Reason::Inbound)
    );
    assert_eq!(
        decide_ingress(&p, &Dest::v4([127, 0, 0, 1], 40000), false).reason,
        Reason::Inbound
    );
    assert_eq!(
        decide_ingress(&p, &Dest::v4([203, 0, 113, 2], 3128), false),
        Decision::allow(Reason::Proxy)
    );
    let mapped = Ipv4Addr::new(203, 0, 113, 2).to_ipv6_mapped().octets();
    assert!(decide_ingress(&p, &Dest::v6(mapped, 3128), false).allow);
    assert!(!decide_ingress(&p, &Dest::v4([203, 0, 113, 2], 3129), false).allow);
    assert!(!decide_ingress(&p, &Dest::v4([203, 0, 113, 2], 0), false).allow);
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        // Bias towards the interesting neighbourhoods.
        any::<[u8; 3]>().prop_map(|o| IpAddr::V4(Ipv4Addr::new(127, o[0], o[1], o[2]))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
    ]
}

/// A reference model written with std's address types, independent of the
/// byte-level implementation.
fn model(proxies: &[(IpAddr, u16)], ip: IpAddr, port: u16) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let ip = canon(ip);
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
        || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
        || proxies
            .iter()
            .any(|(pip, pport)| canon(*pip) == ip && *pport == port)
}

proptest! {
    #[test]
    fn agrees_with_model(
        proxies in proptest::collection::vec((any_ip(), any::<u16>()), 0..=MAX_PROXY_ENDPOINTS),
        ip in any_ip(),
        port in any::<u16>(),
    ) {
        let p = policy_with(&proxies);
        let got = decide_connect(&p, &dest(ip, port));
        prop_assert_eq!(got.allow, model(&proxies, ip, port));
    }

    #[test]
    fn v4_and_v4_mapped_always_agree(o in any::<[u8; 4]>(), port in any::<u16>(),
        proxies in proptest::collection::vec((any_ip(), any::<u16>()), 0..=MAX_PROXY_ENDPOINTS)) {
        let p = policy_with(&proxies);
        let a = decide_connect(&p, &Dest::v4(o, port));
        let b = decide_connect(&p, &Dest::v6(Ipv4Addr::from(o).to_ipv6_mapped().octets(), port));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn proxies_are_always_reachable(
        proxies in proptest::collection::vec((any_ip(), any::<u16>()), 1..=MAX_PROXY_ENDPOINTS),
        idx in any::<prop::sample::Index>(),
    ) {
        let p = policy_with(&proxies);
        let (ip, port) = proxies[idx.index(proxies.len())];
        prop_assert!(decide_connect(&p, &dest(ip, port)).allow);
    }
}
