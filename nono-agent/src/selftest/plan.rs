//! What each phase attempts, and where: pure. Every attempt gets a port,
//! ICMP id and frame tag of its own per phase, so what arrives at the test
//! host names its attempt and phase exactly.

use std::net::{IpAddr, SocketAddr};

use super::probe::NetArgs;
use super::report::EnforcerKind;
use super::testhost::Addressing;
use super::vectors::{NetVector, Target, Vector, NETWORK_VECTORS};

/// The controls: what a sandbox must still reach.
pub const CONTROLS: [Vector; 3] = [Vector::Loopback4, Vector::Loopback6, Vector::Proxy];

/// A phase: the baseline (index 0) or one enforcer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Outside,
    Inside(EnforcerKind),
}

impl Phase {
    pub fn index(self) -> u16 {
        match self {
            Phase::Outside => 0,
            Phase::Inside(EnforcerKind::Daemon) => 1,
            Phase::Inside(EnforcerKind::Bpf) => 2,
            Phase::Inside(EnforcerKind::Seccomp) => 3,
        }
    }

    /// Port of attempt `i` in this phase (ports only need to be unique in
    /// the run: the namespaces are selftest's own).
    pub fn port(self, i: usize) -> u16 {
        20000 + self.index() * 100 + i as u16
    }

    /// The endpoint sandboxes of this phase may reach (`--proxy-endpoint`).
    pub fn endpoint(self, a: &Addressing) -> SocketAddr {
        SocketAddr::new(a.server_v4.into(), 20000 + self.index() * 100 + 99)
    }

    pub fn id(self, i: usize) -> u16 {
        0x5e00 + self.index() * 100 + i as u16
    }

    pub fn tag(self, i: usize) -> String {
        format!(
            "NONO-SELFTEST-{:010}-{:02}-{i:03}",
            std::process::id(),
            self.index()
        )
    }
}

/// One row: an escape vector or a control.
#[derive(Debug, Clone, Copy)]
pub enum Item {
    Escape(NetVector),
    Control(Vector),
}

impl Item {
    pub fn name(&self) -> &'static str {
        match self {
            Item::Escape(v) => v.name,
            Item::Control(v) => v.name(),
        }
    }
}

pub fn items() -> Vec<Item> {
    NETWORK_VECTORS
        .iter()
        .copied()
        .map(Item::Escape)
        .chain(CONTROLS.iter().copied().map(Item::Control))
        .collect()
}

pub fn target_of(v: &NetVector, a: &Addressing) -> IpAddr {
    match v.target {
        Target::ServerV4 => a.server_v4.into(),
        Target::ServerV6 => a.server_v6.into(),
    }
}

/// The probe's arguments for attempt `i` of `phase`.
pub fn net_args(item: &Item, i: usize, phase: Phase, a: &Addressing) -> NetArgs {
    NetArgs {
        target: match item {
            Item::Escape(v) => Some(target_of(v, a)),
            Item::Control(_) => None,
        },
        port: Some(phase.port(i)),
        id: Some(phase.id(i)),
        iface: Some(a.veth_client.clone()),
        tag: Some(phase.tag(i)),
        count: None,
        proxy_endpoint: Some(phase.endpoint(a)),
        bytes: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_never_share_a_port_id_or_tag() {
        let a = Addressing::for_run(7);
        let phases = [
            Phase::Outside,
            Phase::Inside(EnforcerKind::Daemon),
            Phase::Inside(EnforcerKind::Bpf),
            Phase::Inside(EnforcerKind::Seccomp),
        ];
        let n = items().len();
        assert!(n < 99, "ports of a phase would reach its endpoint port");
        let mut ports = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        let mut tags = Vec::new();
        for p in phases {
            assert!(ports.insert(p.endpoint(&a).port()));
            for i in 0..n {
                assert!(ports.insert(p.port(i)), "{p:?} {i}");
                assert!(ids.insert(p.id(i)));
                tags.push(p.tag(i));
            }
        }
        // The oracle matches a tag as a prefix: none may be a prefix of another.
        for (i, t) in tags.iter().enumerate() {
            for (j, u) in tags.iter().enumerate() {
                assert!(i == j || !u.starts_with(t.as_str()), "{t} / {u}");
            }
        }
        // Escapes are aimed at the test host; controls at loopback/endpoint.
        for (i, item) in items().iter().enumerate() {
            let args = net_args(item, i, Phase::Outside, &a);
            match item {
                Item::Escape(_) => assert!(args.target.is_some()),
                Item::Control(_) => assert!(args.target.is_none()),
            }
            assert_eq!(args.proxy_endpoint, Some(Phase::Outside.endpoint(&a)));
        }
    }
}
