use super::*;
use crate::plan::{build, ExecRequest};
use nono_proxy::{CidrRule, DomainRule, ProxyConfig, ProxyPolicy};
use proptest::prelude::*;

fn plan_of(
    endpoints: Vec<SocketAddr>,
    loopback: Vec<u16>,
    allow: Vec<&str>,
    cidrs: Vec<&str>,
    deny: Vec<&str>,
) -> Plan {
    let req = ExecRequest {
        proxy_endpoints: endpoints,
        loopback_ports: loopback,
        proxy: ProxyConfig {
            policy: ProxyPolicy {
                allow: allow
                    .iter()
                    .map(|s| s.parse::<DomainRule>().unwrap())
                    .collect(),
                deny: deny
                    .iter()
                    .map(|s| s.parse::<DomainRule>().unwrap())
                    .collect(),
                cidrs: cidrs
                    .iter()
                    .map(|s| s.parse::<CidrRule>().unwrap())
                    .collect(),
                deny_cidrs: Vec::new(),
            },
            ..ProxyConfig::default()
        },
        command: vec!["true".into()],
        ..ExecRequest::default()
    };
    build(&req).unwrap()
}

fn net(dest: &str, udp: bool) -> Question {
    Question::Net {
        dest: dest.parse().unwrap(),
        udp,
    }
}

#[test]
fn destinations_parse() {
    assert_eq!(
        "api.example.com".parse::<NetDest>(),
        Ok(NetDest::Name("api.example.com".into(), 443))
    );
    assert_eq!(
        "[2001:db8::1]:53".parse::<NetDest>(),
        Ok(NetDest::Addr("[2001:db8::1]:53".parse().unwrap()))
    );
    for bad in [
        "",
        "a:0",
        "a:x",
        "203.0.113.9",
        "[::1]",
        "2001:db8::1",
        ":80",
    ] {
        assert!(bad.parse::<NetDest>().is_err(), "{bad}");
    }
}

#[test]
fn names_the_rule_and_where() {
    let p = plan_of(
        vec!["198.51.100.2:3128".parse().unwrap()],
        vec![5432],
        vec!["*.example.com"],
        vec!["203.0.113.0/24:443"],
        vec!["bad.example.com"],
    );
    let a = explain(&p, &net("api.example.com:443", false), false);
    assert!(a.allowed);
    assert_eq!(a.steps[0].rule, "allow-domain *.example.com");
    assert_eq!(a.steps[0].origin, "command line");
    let a = explain(&p, &net("bad.example.com:443", false), false);
    assert!(!a.allowed);
    assert_eq!(a.steps[0].rule, "deny-domain bad.example.com");
    let a = explain(&p, &net("203.0.113.9:22", false), false);
    assert!(!a.allowed, "{a}");
    let a = explain(&p, &net("203.0.113.9:443", false), false);
    assert!(a.allowed);
    assert!(!a.steps[0].allowed, "not directly");
    assert_eq!(a.steps[1].rule, "allow-cidr 203.0.113.0/24:443");
    let a = explain(&p, &net("198.51.100.2:3128", true), false);
    assert!(a.allowed);
    assert_eq!(a.steps[0].origin, "command line (--proxy-endpoint)");
    let a = explain(&p, &net("127.0.0.1:5432", false), false);
    assert!(a.allowed);
    assert_eq!(a.steps[0].origin, "command line (--loopback-port)");
    let a = explain(&p, &net("127.0.0.1:22", false), false);
    assert!(!a.allowed);
    assert_eq!(a.steps[0].reason, "loopback-port-not-allowed");
    // Metadata is never allowed, whatever allow-cidr says.
    let p = plan_of(vec![], vec![], vec![], vec!["169.254.0.0/16"], vec![]);
    let a = explain(&p, &net("169.254.169.254:80", false), false);
    assert!(!a.allowed);
    assert!(a.steps[1].rule.contains("never allowed"), "{a}");
    // A UDP question asks only the kernel enforcer.
    let a = explain(&p, &net("[2001:db8::1]:53", true), false);
    assert_eq!(a.steps.len(), 1);
    assert!(!a.allowed);
}

#[test]
fn landlock_union_of_rules_above() {
    let dir = std::env::temp_dir().join(format!("nono-why-{}", std::process::id()));
    let ro = dir.join("ro");
    let rw = dir.join("ro/rw");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(rw.join("f"), b"x").unwrap();
    std::fs::write(ro.join("g"), b"x").unwrap();
    let rules = ll::FsRules {
        read: vec![ro.clone()],
        write: vec![rw.clone(), dir.join("missing")],
        exec: vec![],
    };
    let grants = resolved_grants(&rules);
    assert_eq!(
        grants.len(),
        2,
        "missing paths are skipped as prepare skips them"
    );
    let w = needed(FsAccess::Write, false, true);
    let (granting, covering) = landlock_verdict(&grants, &rw.join("f"), w);
    assert_eq!(granting.len(), 1);
    assert_eq!(covering.len(), 2);
    let (granting, covering) = landlock_verdict(&grants, &ro.join("g"), w);
    assert!(granting.is_empty());
    assert_eq!(covering.len(), 1);
    let r = needed(FsAccess::Read, false, true);
    assert_eq!(landlock_verdict(&grants, &ro.join("g"), r).0.len(), 1);
    assert!(landlock_verdict(&grants, &dir.join("other"), r)
        .0
        .is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn dest_of(sa: SocketAddr) -> Dest {
    match sa {
        SocketAddr::V4(v) => Dest::v4(v.ip().octets(), v.port()),
        SocketAddr::V6(v) => Dest::v6(v.ip().octets(), v.port()),
    }
}

fn addr() -> impl Strategy<Value = std::net::IpAddr> {
    prop_oneof![
        Just("127.0.0.1"),
        Just("127.0.0.2"),
        Just("::1"),
        Just("::ffff:127.0.0.1"),
        Just("0.0.0.0"),
        Just("::"),
        Just("198.51.100.2"),
        Just("::ffff:198.51.100.2"),
        Just("203.0.113.9"),
        Just("2001:db8::1"),
        Just("169.254.169.254"),
        Just("10.0.0.1"),
    ]
    .prop_map(|s| s.parse().unwrap())
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(22u16), Just(53), Just(443), Just(3128), Just(5432)]
}

fn sockaddr() -> impl Strategy<Value = SocketAddr> {
    (addr(), port()).prop_map(|(a, p)| SocketAddr::new(a, p))
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    sockaddr().prop_filter("valid endpoint", |s| !s.ip().is_unspecified())
}

proptest! {
    /// For any policy and destination, `why`'s direct verdict and reason
    /// are the kernel decision's (the function the BPF programs and the
    /// supervisor run, on the Dest they build from a sockaddr), its proxy
    /// verdict is the proxy's, and the overall verdict is "either way in".
    #[test]
    fn why_agrees_with_the_decision_functions(
        endpoints in proptest::collection::vec(endpoint(), 0..4),
        loopback in proptest::collection::vec(port(), 0..3),
        cidrs in proptest::collection::vec(prop_oneof![
            Just("203.0.113.0/24"), Just("198.51.100.0/24:443"), Just("10.0.0.0/8"),
            Just("[2001:db8::/32]:53"), Just("169.254.0.0/16"), Just("127.0.0.0/8")], 0..3),
        dest in sockaddr(),
        udp in any::<bool>(),
    ) {
        let p = plan_of(endpoints.clone(), loopback.clone(), vec![], cidrs.clone(), vec![]);
        let a = explain(&p, &Question::Net { dest: NetDest::Addr(dest), udp }, false);
        let policy = p.kernel.policy(&[]);
        let d = dest_of(dest);
        let kernel = if udp { decide_sendmsg(&policy, &d) } else { decide_connect(&policy, &d) };
        prop_assert_eq!(a.steps[0].allowed, kernel.allow);
        prop_assert_eq!(&a.steps[0].reason, kernel.reason.name());
        let proxy_ok = !udp && p.proxy.as_ref().is_some_and(|c| {
            c.policy.check_target(&Target::Ip(dest.ip()), dest.port()).is_ok()
        });
        prop_assert_eq!(a.allowed, kernel.allow || proxy_ok);
        if kernel.allow && kernel.reason == Reason::Proxy {
            prop_assert!(endpoints.iter().any(|e| dest_of(*e) == d));
            prop_assert_eq!(&a.steps[0].origin, "command line (--proxy-endpoint)");
        }
        if kernel.allow && kernel.reason == Reason::Loopback && !loopback.is_empty() {
            prop_assert!(loopback.contains(&dest.port()));
            prop_assert_eq!(&a.steps[0].origin, "command line (--loopback-port)");
        }
        if nono_proxy::never_allowed(dest.ip()).is_some() && !udp {
            prop_assert!(!a.steps[1].allowed);
        }
    }

    /// Names: the proxy's verdict on the normalised name, nothing else.
    #[test]
    fn names_are_the_proxys_verdict(
        allow in proptest::collection::vec(prop_oneof![
            Just("a.test"), Just("*.a.test"), Just("b.test:8443"), Just("*.b.test")], 0..3),
        deny in proptest::collection::vec(prop_oneof![Just("x.a.test"), Just("b.test")], 0..2),
        name in prop_oneof![Just("a.test"), Just("A.TEST."), Just("x.a.test"), Just("y.a.test"),
            Just("b.test"), Just("c.b.test"), Just("evil.test")],
        port in prop_oneof![Just(80u16), Just(443), Just(8443)],
    ) {
        let p = plan_of(vec![], vec![], allow, vec![], deny);
        let a = explain(&p, &Question::Net { dest: NetDest::Name(name.into(), port), udp: false }, false);
        let expected = p.proxy.as_ref().is_some_and(|c| {
            c.policy.check_target(&Target::parse(name).unwrap(), port).is_ok()
        });
        prop_assert_eq!(a.allowed, expected);
    }
}
