extern crate std;

use super::*;
use crate::types::{Endpoint, Policy, LOOPBACK_ANY};
use proptest::prelude::*;
use std::net::IpAddr;

fn dest(ip: &str, port: u16) -> Dest {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => Dest::v4(v4.octets(), port),
        IpAddr::V6(v6) => Dest::v6(v6.octets(), port),
    }
}

const ON: Redirects = Redirects {
    tcp4: 4001,
    tcp6: 4002,
    dns4: 5301,
    dns6: 5302,
};

fn policy(redirects: Redirects) -> Policy {
    let mut p = Policy::DENY_ALL;
    p.loopback_any = LOOPBACK_ANY;
    p.proxies[0] = Endpoint::from_dest(dest("198.51.100.1", 3128));
    p.n_proxies = 1;
    p.redirects = redirects;
    p
}

fn to(p: &Policy, ip: &str, port: u16, t: Transport, send: bool) -> Option<(Dest, Reason)> {
    decide_redirect(p, &dest(ip, port), t, send).map(|r| (r.to, r.reason))
}

#[test]
fn off_redirects_nothing() {
    let p = policy(Redirects::OFF);
    for (ip, port) in [("203.0.113.9", 443), ("8.8.8.8", 53), ("2001:db8::1", 53)] {
        for t in [Transport::Tcp, Transport::Udp] {
            assert_eq!(to(&p, ip, port, t, false), None, "{ip}:{port}");
            assert_eq!(to(&p, ip, port, t, true), None, "{ip}:{port}");
        }
    }
}

#[test]
fn refused_tcp_goes_to_the_listener_of_its_family() {
    let p = policy(ON);
    assert_eq!(
        to(&p, "203.0.113.9", 443, Transport::Tcp, false),
        Some((dest("127.0.0.1", 4001), Reason::Transparent))
    );
    assert_eq!(
        to(&p, "::ffff:203.0.113.9", 22, Transport::Tcp, false),
        Some((dest("127.0.0.1", 4001), Reason::Transparent))
    );
    assert_eq!(
        to(&p, "2001:db8::9", 443, Transport::Tcp, false),
        Some((dest("::1", 4002), Reason::Transparent))
    );
    // A synthetic address from the resolver's pool is just another refused
    // destination.
    assert_eq!(
        to(&p, "198.18.0.7", 443, Transport::Tcp, false),
        Some((dest("127.0.0.1", 4001), Reason::Transparent))
    );
}

#[test]
fn what_the_policy_allows_is_not_redirected() {
    let p = policy(ON);
    assert_eq!(to(&p, "127.0.0.1", 8080, Transport::Tcp, false), None);
    assert_eq!(to(&p, "::1", 8080, Transport::Tcp, false), None);
    assert_eq!(to(&p, "198.51.100.1", 3128, Transport::Tcp, false), None);
}

#[test]
fn other_refusals_stay_refusals() {
    let mut p = policy(ON);
    // Narrowed loopback, other 127/8, unspecified: refused, not proxied.
    p.loopback_any = 0;
    for (ip, port) in [
        ("127.0.0.1", 8080),
        ("127.0.0.2", 443),
        ("0.0.0.0", 443),
        ("::", 443),
    ] {
        assert_eq!(to(&p, ip, port, Transport::Tcp, false), None, "{ip}:{port}");
    }
    // Metadata and link-local, in every spelling never_allowed knows.
    for ip in [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "fe80::1",
        "fd00:ec2::254",
    ] {
        assert_eq!(to(&p, ip, 80, Transport::Tcp, false), None, "{ip}");
    }
    // UDP other than DNS, and anything not TCP/UDP.
    assert_eq!(to(&p, "203.0.113.9", 443, Transport::Udp, false), None);
    assert_eq!(to(&p, "203.0.113.9", 443, Transport::Udp, true), None);
    assert_eq!(to(&p, "203.0.113.9", 53, Transport::Other, false), None);
}

#[test]
fn dns_to_any_address_goes_to_the_resolver() {
    let p = policy(ON);
    for ip in [
        "8.8.8.8",
        "127.0.0.53",
        "127.0.0.1",
        "169.254.169.254",
        "0.0.0.0",
    ] {
        for t in [Transport::Udp, Transport::Tcp] {
            for send in [false, true] {
                if send && t == Transport::Tcp {
                    continue;
                }
                assert_eq!(
                    to(&p, ip, 53, t, send),
                    Some((dest("127.0.0.1", 5301), Reason::Resolver)),
                    "{ip} {t:?} {send}"
                );
            }
        }
    }
    assert_eq!(
        to(&p, "2001:db8::53", 53, Transport::Udp, true),
        Some((dest("::1", 5302), Reason::Resolver))
    );
}

#[test]
fn a_family_without_a_listener_is_not_redirected() {
    let p = policy(Redirects {
        tcp6: 0,
        dns6: 0,
        ..ON
    });
    assert_eq!(to(&p, "2001:db8::9", 443, Transport::Tcp, false), None);
    assert_eq!(to(&p, "2001:db8::9", 53, Transport::Udp, true), None);
    assert!(to(&p, "203.0.113.9", 443, Transport::Tcp, false).is_some());
}

#[test]
fn listeners_are_recognised_exactly() {
    assert!(is_listener(&ON, &dest("127.0.0.1", 4001)));
    assert!(is_listener(&ON, &dest("127.0.0.1", 5301)));
    assert!(is_listener(&ON, &dest("::1", 5302)));
    assert!(is_listener(&ON, &dest("::1", 4002)));
    assert!(!is_listener(&ON, &dest("::1", 4001)));
    assert!(!is_listener(&ON, &dest("127.0.0.2", 4001)));
    assert!(!is_listener(&ON, &dest("127.0.0.1", 80)));
    assert!(!is_listener(&Redirects::OFF, &dest("127.0.0.1", 0)));
}

#[test]
fn transport_from_type_and_protocol() {
    use crate::consts::*;
    assert_eq!(Transport::of(SOCK_STREAM, IPPROTO_TCP), Transport::Tcp);
    assert_eq!(Transport::of(SOCK_STREAM | 0x80000, 0), Transport::Tcp);
    assert_eq!(Transport::of(SOCK_DGRAM, IPPROTO_UDP), Transport::Udp);
    assert_eq!(Transport::of(SOCK_DGRAM, IPPROTO_ICMP), Transport::Other);
    assert_eq!(Transport::of(SOCK_STREAM, 262), Transport::Other); // MPTCP
    assert_eq!(Transport::of(SOCK_RAW, IPPROTO_UDP), Transport::Other);
}

proptest! {
    /// A redirect only ever lands on one of the policy's own listeners on
    /// loopback, and only replaces a refusal (or a DNS query).
    #[test]
    fn a_redirect_lands_on_a_listener(a in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>(), tcp in any::<bool>(), send in any::<bool>()) {
        let d = if v4 { Dest::v4([a[0], a[1], a[2], a[3]], port) } else { Dest::v6(a, port) };
        let p = policy(ON);
        let t = if tcp { Transport::Tcp } else { Transport::Udp };
        if let Some(r) = decide_redirect(&p, &d, t, send) {
            prop_assert!(is_listener(&ON, &r.to));
            prop_assert_eq!(r.to.is_v4(), d.is_v4());
            if r.reason == Reason::Transparent {
                prop_assert!(!crate::decide_connect(&p, &d).allow);
                prop_assert!(tcp && !send);
            } else {
                prop_assert_eq!(d.port, DNS_PORT);
            }
        }
    }
}
