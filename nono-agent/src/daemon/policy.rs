//! Requested policies: checked, converted to the kernel's form, and
//! narrowed to the caller's own sandbox.

use nono_common::{
    Dest, Endpoint, Policy, Redirects, AUDIT_ON, LOOPBACK_ANY, MAX_LOOPBACK_PORTS,
    MAX_PROXY_ENDPOINTS,
};

use super::protocol::WirePolicy;

/// A policy a client may not ask for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Too many loopback ports.
    #[error("{0} loopback ports requested; at most {MAX_LOOPBACK_PORTS}")]
    TooManyPorts(usize),
    /// Too many proxy endpoints.
    #[error("{0} proxy endpoints requested; at most {MAX_PROXY_ENDPOINTS}")]
    TooManyProxies(usize),
}

/// Checks a requested policy's size.
pub fn check(w: &WirePolicy) -> Result<(), PolicyError> {
    if w.loopback_ports.len() > MAX_LOOPBACK_PORTS {
        return Err(PolicyError::TooManyPorts(w.loopback_ports.len()));
    }
    if w.proxies.len() > MAX_PROXY_ENDPOINTS {
        return Err(PolicyError::TooManyProxies(w.proxies.len()));
    }
    Ok(())
}

/// The kernel form of a checked policy (entries beyond the limits are cut,
/// which [`check`] has refused already).
pub fn to_kernel(w: &WirePolicy) -> Policy {
    let mut p = Policy::DENY_ALL;
    if w.loopback_any {
        p.loopback_any = LOOPBACK_ANY;
    }
    if w.audit {
        p.audit = AUDIT_ON;
    }
    for (i, port) in w.loopback_ports.iter().take(MAX_LOOPBACK_PORTS).enumerate() {
        p.loopback_ports[i] = *port;
        p.n_loopback_ports = i as u32 + 1;
    }
    for (i, (addr, port)) in w.proxies.iter().take(MAX_PROXY_ENDPOINTS).enumerate() {
        // Canonical form: a v4-mapped spelling stays v4-mapped.
        p.proxies[i] = Endpoint::from_dest(Dest::v6(*addr, *port));
        p.n_proxies = i as u32 + 1;
    }
    let [tcp4, tcp6, dns4, dns6] = w.redirects;
    p.redirects = Redirects {
        tcp4,
        tcp6,
        dns4,
        dns6,
    };
    p
}

/// The wire form of a kernel policy.
pub fn to_wire(p: &Policy) -> WirePolicy {
    WirePolicy {
        loopback_any: p.loopback_any == LOOPBACK_ANY,
        loopback_ports: p.loopback_ports[..(p.n_loopback_ports as usize).min(MAX_LOOPBACK_PORTS)]
            .to_vec(),
        proxies: p.proxies[..(p.n_proxies as usize).min(MAX_PROXY_ENDPOINTS)]
            .iter()
            .map(|e| (e.addr, e.port))
            .collect(),
        audit: p.audit == AUDIT_ON,
        redirects: [
            p.redirects.tcp4,
            p.redirects.tcp6,
            p.redirects.dns4,
            p.redirects.dns6,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_oversized_requests() {
        let w = WirePolicy {
            loopback_any: false,
            loopback_ports: vec![1, 2],
            proxies: vec![(nono_common::canonical_v4([127, 0, 0, 1]), 3128)],
            audit: true,
            redirects: [4001, 0, 5301, 5302],
        };
        assert_eq!(to_wire(&to_kernel(&w)), w);
        let big = WirePolicy {
            loopback_any: true,
            loopback_ports: vec![1; MAX_LOOPBACK_PORTS + 1],
            proxies: vec![],
            audit: false,
            redirects: [0; 4],
        };
        assert_eq!(
            check(&big),
            Err(PolicyError::TooManyPorts(MAX_LOOPBACK_PORTS + 1))
        );
    }
}
