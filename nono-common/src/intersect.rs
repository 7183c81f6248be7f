//! The policy of a sandbox nested in another: never more than either.
//!
//! The BPF programs judge a socket by the policy entry of its own (leaf)
//! cgroup only, so a sandbox asked for from inside another sandbox gets one
//! entry that is the intersection of both, computed here once. Everything it
//! allows, both policies allow, for every hook (a property test checks each
//! decision function); it may allow less than both (a destination the outer
//! policy allows only as its own proxy endpoint is not re-allowed as a
//! loopback port), which only ever refuses more.

use crate::audit::AUDIT_ON;
use crate::decision::{is_loopback, PolicyView};
use crate::types::{Endpoint, Policy, LOOPBACK_ANY, MAX_LOOPBACK_PORTS, MAX_PROXY_ENDPOINTS};

impl Policy {
    /// The policy for a sandbox that asked for `self` from inside a sandbox
    /// whose policy is `outer`.
    pub fn intersect(&self, outer: &Policy) -> Policy {
        let mut r = Policy::DENY_ALL;
        // Audit lets through what the policy refuses: only when both ask
        // for it, or the inner sandbox could audit its way past the outer
        // one's refusals.
        if self.audit == AUDIT_ON && outer.audit == AUDIT_ON {
            r.audit = AUDIT_ON;
        }
        if self.loopback_any() && outer.loopback_any() {
            r.loopback_any = LOOPBACK_ANY;
        } else {
            // The listed ports of whichever side lists them, kept when the
            // other side allows them too.
            let (listing, other) = if self.loopback_any() {
                (outer, self)
            } else {
                (self, outer)
            };
            let n = (listing.n_loopback_ports as usize).min(MAX_LOOPBACK_PORTS);
            for &port in &listing.loopback_ports[..n] {
                let both = other.loopback_any() || other.loopback_port_allowed(port);
                if both && !r.loopback_port_allowed(port) {
                    r.loopback_ports[r.n_loopback_ports as usize] = port;
                    r.n_loopback_ports += 1;
                }
            }
        }
        let n = (self.n_proxies as usize).min(MAX_PROXY_ENDPOINTS);
        for e in &self.proxies[..n] {
            if outer_reaches(outer, e) && !r.is_proxy(e) {
                r.proxies[r.n_proxies as usize] = *e;
                r.n_proxies += 1;
            }
        }
        // Transparent mode's listeners run in the inner sandbox's agent,
        // inside the outer sandbox, on loopback: kept where the outer policy
        // lets a socket reach them, so a redirect never lands where the
        // outer sandbox could not connect itself.
        let keep = |v4: bool, port: u16| {
            let addr = if v4 {
                crate::canonical_v4([127, 0, 0, 1])
            } else {
                LOOPBACK6
            };
            let e = Endpoint {
                addr,
                port,
                _pad: [0; 2],
            };
            if port != 0 && outer_reaches(outer, &e) {
                port
            } else {
                0
            }
        };
        let mine = self.redirects;
        r.redirects = crate::Redirects {
            tcp4: keep(true, mine.tcp4),
            tcp6: keep(false, mine.tcp6),
            dns4: keep(true, mine.dns4),
            dns6: keep(false, mine.dns6),
        };
        r
    }
}

const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Whether the outer policy lets a socket reach `e` by itself: as one of
/// its proxy endpoints, or as a loopback address on an allowed port (the
/// usual case: the inner sandbox's proxy runs inside the outer sandbox,
/// on loopback).
fn outer_reaches(outer: &Policy, e: &Endpoint) -> bool {
    outer.is_proxy(e)
        || (is_loopback(&e.addr) && (outer.loopback_any() || outer.loopback_port_allowed(e.port)))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{
        audit_verdict, canonical_v4, decide_connect, decide_egress, decide_ingress, decide_sendmsg,
        Dest, Verdict,
    };
    use proptest::prelude::*;

    const LO4: [u8; 16] = canonical_v4([127, 0, 0, 1]);
    const LO6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const OTHER: [u8; 16] = canonical_v4([198, 51, 100, 7]);
    const OTHER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

    /// Few addresses and ports, so policies and destinations collide often.
    fn addr() -> impl Strategy<Value = [u8; 16]> {
        prop_oneof![Just(LO4), Just(LO6), Just(OTHER), Just(OTHER6)]
    }
    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![Just(0u16), 1u16..6]
    }
    fn policy() -> impl Strategy<Value = Policy> {
        (
            any::<bool>(),
            proptest::collection::vec(port(), 0..6),
            proptest::collection::vec((addr(), port()), 0..6),
            any::<bool>(),
        )
            .prop_map(|(any_lo, ports, proxies, audit)| {
                let mut p = Policy::DENY_ALL;
                if audit {
                    p.audit = AUDIT_ON;
                }
                if any_lo {
                    p.loopback_any = LOOPBACK_ANY;
                }
                for (i, port) in ports.iter().enumerate() {
                    p.loopback_ports[i] = *port;
                }
                p.n_loopback_ports = ports.len() as u32;
                for (i, (a, port)) in proxies.iter().enumerate() {
                    p.proxies[i] = Endpoint::from_dest(Dest {
                        addr: *a,
                        port: *port,
                    });
                }
                p.n_proxies = proxies.len() as u32;
                p
            })
    }

    /// A sandbox asking for audit from inside an enforcing one enforces.
    #[test]
    fn audit_needs_both_sides() {
        let mut audit = Policy::DENY_ALL;
        audit.audit = AUDIT_ON;
        let enforce = Policy::DENY_ALL;
        assert_eq!(audit.intersect(&enforce).audit, 0);
        assert_eq!(enforce.intersect(&audit).audit, 0);
        assert_eq!(audit.intersect(&audit).audit, AUDIT_ON);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn the_intersection_allows_nothing_either_side_refuses(
            inner in policy(), outer in policy(), a in addr(), p in port(), on_lo in any::<bool>(),
        ) {
            let r = inner.intersect(&outer);
            let d = Dest { addr: a, port: p };
            type Check = fn(&Policy, &Dest, bool) -> bool;
            // Let through: allowed, or refused but audited (`audit_verdict`).
            fn through(p: &Policy, d: &Dest, dec: crate::Decision) -> bool {
                audit_verdict(dec, &d.addr, p.audit == AUDIT_ON) != Verdict::Deny
            }
            let checks: [(&str, Check); 4] = [
                ("connect", |p, d, _| through(p, d, decide_connect(p, d))),
                ("sendmsg", |p, d, _| through(p, d, decide_sendmsg(p, d))),
                ("egress", |p, d, lo| through(p, d, decide_egress(p, d, lo))),
                ("ingress", |p, d, lo| through(p, d, decide_ingress(p, d, lo))),
            ];
            for (hook, f) in checks {
                if f(&r, &d, on_lo) {
                    prop_assert!(f(&inner, &d, on_lo), "{hook}: inner refuses {d:?}");
                    prop_assert!(f(&outer, &d, on_lo), "{hook}: outer refuses {d:?}");
                }
            }
        }

        #[test]
        fn intersecting_with_an_allow_everything_loopback_keeps_the_inner_policy(
            inner in policy(), a in addr(), p in port(),
        ) {
            let mut outer = Policy::DENY_ALL;
            outer.loopback_any = LOOPBACK_ANY;
            let r = inner.intersect(&outer);
            let d = Dest { addr: a, port: p };
            // Loopback destinations (where nested proxies live) keep every
            // answer of the inner policy.
            if is_loopback(&a) {
                prop_assert_eq!(decide_connect(&r, &d).allow, decide_connect(&inner, &d).allow);
            }
        }
    }

    #[test]
    fn a_nested_proxy_on_loopback_stays_reachable_and_nothing_else_is_added() {
        let mut outer = Policy::DENY_ALL;
        outer.loopback_any = LOOPBACK_ANY;
        outer.proxies[0] = Endpoint::from_dest(Dest {
            addr: LO4,
            port: 3128,
        });
        outer.n_proxies = 1;
        let mut inner = Policy::DENY_ALL;
        inner.proxies[0] = Endpoint::from_dest(Dest {
            addr: LO4,
            port: 4000,
        });
        inner.n_proxies = 1;
        inner.loopback_ports[0] = 8080;
        inner.n_loopback_ports = 1;
        let r = inner.intersect(&outer);
        assert!(
            decide_connect(
                &r,
                &Dest {
                    addr: LO4,
                    port: 4000
                }
            )
            .allow
        );
        assert!(
            decide_connect(
                &r,
                &Dest {
                    addr: LO4,
                    port: 8080
                }
            )
            .allow
        );
        assert!(
            !decide_connect(
                &r,
                &Dest {
                    addr: LO4,
                    port: 3128
                }
            )
            .allow
        );
        assert!(!decide_connect(&r, &Dest { addr: LO4, port: 9 }).allow);
        assert!(
            !decide_connect(
                &r,
                &Dest {
                    addr: OTHER,
                    port: 4000
                }
            )
            .allow
        );
    }

    #[test]
    fn an_outer_policy_without_loopback_removes_the_inner_proxy() {
        let outer = Policy::DENY_ALL;
        let mut inner = Policy::DENY_ALL;
        inner.loopback_any = LOOPBACK_ANY;
        inner.proxies[0] = Endpoint::from_dest(Dest {
            addr: LO4,
            port: 4000,
        });
        inner.n_proxies = 1;
        let r = inner.intersect(&outer);
        assert_eq!(r, Policy::DENY_ALL);
    }
}
