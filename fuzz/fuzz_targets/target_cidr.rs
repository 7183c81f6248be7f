//! `Target::parse`, `CidrRule` parsing, `canonical` and the address checks.
//!
//! Input: `TEXT \n` then raw bytes used as an address (4 → IPv4, 16 → IPv6)
//! and a port. Checks:
//! * a parsed target is either an IP literal or a normalised name;
//! * a parsed `--allow-cidr` has a truncated network and no port 0;
//! * `canonical` is idempotent, and v4-mapped / v4-compatible / NAT64 forms
//!   get exactly the verdict of the IPv4 address they carry;
//! * link-local, metadata, multicast addresses are refused even by a policy
//!   that allows every network.
#![no_main]

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use nono_proxy::pattern::normalize_host;
use nono_proxy::policy::{canonical, parse_allow_cidr, CidrRule, ProxyPolicy, Target};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn everything() -> ProxyPolicy {
    ProxyPolicy {
        allow: vec![],
        deny: vec![],
        cidrs: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        deny_cidrs: vec![],
    }
}

fn v6_forms(v4: Ipv4Addr) -> [IpAddr; 3] {
    let [a, b, c, d] = v4.octets();
    let low = [((a as u16) << 8) | b as u16, ((c as u16) << 8) | d as u16];
    [
        IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, low[0], low[1])),
        IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, low[0], low[1])),
    ]
}

fuzz_target!(|data: &[u8]| {
    let (text, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);

    match Target::parse(&text) {
        Ok(Target::Name(n)) => assert_eq!(normalize_host(&n).as_deref(), Ok(n.as_str())),
        Ok(Target::Ip(_)) | Err(_) => {}
    }
    if let Ok(rule) = text.parse::<CidrRule>() {
        assert_ne!(rule.port, Some(0));
        assert_eq!(rule.net, rule.net.trunc());
        assert_eq!(rule.text, text);
    }

    let port = match rest {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 443,
    };
    let addr = rest.get(2..).unwrap_or_default();
    let ip = if addr.len() >= 16 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&addr[..16]).unwrap()))
    } else if addr.len() >= 4 {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&addr[..4]).unwrap()))
    } else {
        return;
    };
    let c = canonical(ip);
    assert_eq!(canonical(c), c, "canonical is not idempotent for {ip}");

    let all = everything();
    let cidr_policy = match text.parse::<CidrRule>() {
        Ok(rule) => ProxyPolicy {
            cidrs: vec![rule],
            ..Default::default()
        },
        Err(_) => ProxyPolicy::default(),
    };
    for p in [&all, &cidr_policy, &ProxyPolicy::default()] {
        let verdict = p.check_resolved(ip, port).is_ok();
        let literal = p.check_target(&Target::Ip(ip), port).is_ok();
        if let IpAddr::V4(v4) = c {
            for form in v6_forms(v4) {
                if canonical(form) == c {
                    assert_eq!(
                        p.check_resolved(form, port).is_ok(),
                        verdict,
                        "{form} and {ip} judged differently (resolved)"
                    );
                    assert_eq!(
                        p.check_target(&Target::Ip(form), port).is_ok(),
                        literal,
                        "{form} and {ip} judged differently (literal)"
                    );
                }
            }
        }
    }
    let never = match c {
        IpAddr::V4(v4) => {
            v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_multicast()
                || v6.is_unspecified()
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    };
    if never {
        assert!(
            all.check_resolved(ip, port).is_err(),
            "{ip} resolved is allowed"
        );
        assert!(
            all.check_target(&Target::Ip(ip), port).is_err(),
            "{ip} literal is allowed"
        );
    }
    // An allow rule that parses never covers a link-local address, in any
    // spelling the proxy judges as one.
    let link_local = match c {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if let Ok(rule) = parse_allow_cidr(&text) {
        assert!(
            !(link_local && rule.net.contains(&ip)),
            "allow rule {text:?} covers link-local {ip}"
        );
    }
    // Any network that contains the canonical address allows it as a literal
    // unless it is in a never-allowed range.
    let net = IpNet::from(c);
    let one = ProxyPolicy {
        cidrs: vec![CidrRule {
            text: net.to_string(),
            net,
            port: None,
            origin: Default::default(),
        }],
        ..Default::default()
    };
    assert_eq!(
        one.check_target(&Target::Ip(ip), port).is_ok(),
        !never,
        "{ip}"
    );
});
