extern crate std;

use super::*;
use crate::types::{canonical_v4, Dest};
use crate::{decide_connect, Policy, LOOPBACK_ANY};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

fn v4(s: &str) -> [u8; 16] {
    canonical_v4(s.parse::<Ipv4Addr>().unwrap().octets())
}

/// The classification spelled with std's predicates: the reference the
/// hand-unrolled, verifier-friendly version is checked against.
fn reference_v4(ip: Ipv4Addr) -> bool {
    ip.is_link_local()
        || ip == Ipv4Addr::new(100, 100, 100, 200)
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.octets()[0] == 0
}

fn reference_v6(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
        || ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        || ip.is_multicast()
        || ip.is_unspecified()
}

#[test]
fn metadata_and_link_local_are_never_allowed() {
    for a in [
        v4("169.254.169.254"),
        v4("169.254.0.1"),
        v4("100.100.100.200"),
        v4("224.0.0.251"),
        v4("255.255.255.255"),
        v4("0.0.0.0"),
        v6("fe80::1"),
        v6("febf::1"),
        v6("fd00:ec2::254"),
        v6("ff02::1"),
        v6("::"),
        // IPv4 carried in IPv6: judged as the IPv4.
        v6("64:ff9b::a9fe:a9fe"),
        v6("::169.254.169.254"),
        v6("::ffff:169.254.169.254"),
    ] {
        assert!(never_allowed(&a).is_some(), "{a:?}");
    }
    for a in [
        v4("198.51.100.2"),
        v4("203.0.113.9"),
        v4("127.0.0.1"),
        v4("10.0.0.1"),
        v4("169.253.255.255"),
        v4("169.255.0.1"),
        v6("::1"),
        v6("2001:db8::1"),
        v6("fec0::1"),
        v6("fd00:ec2::253"),
        v6("64:ff9b::c633:6402"),
    ] {
        assert_eq!(never_allowed(&a), None, "{a:?}");
    }
}

#[test]
fn only_destination_refusals_are_auditable() {
    let lo_any = {
        let mut p = Policy::DENY_ALL;
        p.loopback_any = LOOPBACK_ANY;
        p
    };
    let public = Dest::v4([198, 51, 100, 2], 80);
    let d = decide_connect(&lo_any, &public);
    assert_eq!(audit_verdict(d, &public.addr, true), Verdict::WouldDeny);
    assert_eq!(audit_verdict(d, &public.addr, false), Verdict::Deny);
    let meta = Dest::v4([169, 254, 169, 254], 80);
    let d = decide_connect(&lo_any, &meta);
    assert_eq!(audit_verdict(d, &meta.addr, true), Verdict::Deny);
    for r in [
        Reason::DaemonSocket,
        Reason::SocketType,
        Reason::SocketFamily,
        Reason::SocketOption,
        Reason::ForeignCredentials,
        Reason::NoPolicy,
        Reason::LoopbackOffDevice,
        Reason::Multicast,
        Reason::DeviceBinding,
        Reason::Unspecified,
    ] {
        let d = Decision {
            allow: false,
            reason: r,
        };
        assert_eq!(audit_verdict(d, &public.addr, true), Verdict::Deny, "{r:?}");
    }
}

proptest! {
    #[test]
    fn v4_classification_matches_std(o in any::<[u8; 4]>()) {
        let ip = Ipv4Addr::from(o);
        let want = reference_v4(ip);
        prop_assert_eq!(never_allowed(&canonical_v4(o)).is_some(), want);
        // The same address in NAT64 and IPv4-compatible form.
        let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0,
            u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]]));
        prop_assert_eq!(never_allowed(&nat64.octets()).is_some(), want);
        let compat = ip.to_ipv6_compatible();
        if !compat.is_unspecified() && !compat.is_loopback() {
            prop_assert_eq!(never_allowed(&compat.octets()).is_some(), want);
        }
    }

    #[test]
    fn v6_classification_matches_std(o in any::<[u8; 16]>()) {
        let ip = Ipv6Addr::from(o);
        let embedded = ip.to_ipv4_mapped().or_else(|| {
            let s = ip.segments();
            let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0);
            let compat = s[..6].iter().all(|&x| x == 0) && !ip.is_loopback() && !ip.is_unspecified();
            (nat64 || compat).then(|| Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        });
        let want = match embedded {
            Some(v4) => reference_v4(v4),
            None => reference_v6(ip),
        };
        prop_assert_eq!(never_allowed(&o).is_some(), want);
    }

    /// Audit only ever turns a refusal into a would-deny: it never refuses
    /// what the policy allows, never lets through a never-allowed address,
    /// and without the flag nothing changes.
    #[test]
    fn audit_only_lifts_lifting_refusals(
        allow in any::<bool>(),
        reason in 1u32..40,
        addr in any::<[u8; 16]>(),
        audit in any::<bool>(),
    ) {
        let Some(reason) = Reason::from_u32(reason) else { return Ok(()); };
        let d = Decision { allow, reason };
        let v = audit_verdict(d, &addr, audit);
        if allow {
            prop_assert_eq!(v, Verdict::Allow);
        } else if v == Verdict::WouldDeny {
            prop_assert!(audit);
            prop_assert!(never_allowed(&addr).is_none());
            prop_assert!(auditable_reason(reason));
        } else {
            prop_assert_eq!(v, Verdict::Deny);
        }
        if !audit {
            prop_assert_eq!(v == Verdict::Allow, allow);
        }
    }
}
