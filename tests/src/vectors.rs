//! The single list of escape vectors, and the generic check for network
//! vectors. Every function takes the enforcer name so another enforcer (e.g. a
//! later seccomp one) can reuse the battery unchanged.

use std::net::{IpAddr, SocketAddr};

use crate::netns::{SERVER_V4, SERVER_V6};
use crate::oracle::Proto;
use crate::runner::{ExecOpts, Harness, ProbeResult, SandboxGuard, DENIED_ERRNOS};
use crate::sys::CmdOutput;

/// Which destination the probe is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// 198.51.100.2 (the probe maps it to ::ffff:198.51.100.2 itself for the
    /// v4-mapped vectors).
    ServerV4,
    /// 2001:db8:100::2.
    ServerV6,
}

/// What the server oracle must observe for the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// TCP packets to the port (and a listener on it counts connections).
    Tcp,
    /// UDP packets to the port.
    Udp,
    /// ICMP echo requests with the id.
    Icmp4Echo,
    /// ICMPv6 echo requests with the id.
    Icmp6Echo,
    /// Ethertype 0x88B5 frames carrying the tag.
    EtherTag,
}

/// A network escape vector: one `nono-probe` attempt plus what to observe.
#[derive(Debug, Clone, Copy)]
pub struct NetVector {
    pub name: &'static str,
    pub target: Target,
    pub observe: Observe,
}

const fn nv(name: &'static str, target: Target, observe: Observe) -> NetVector {
    NetVector {
        name,
        target,
        observe,
    }
}

use Observe::*;
use Target::*;

/// Every network vector. Each must be blocked inside a sandbox and reachable
/// outside it.
pub const NETWORK_VECTORS: &[NetVector] = &[
    nv("tcp4", ServerV4, Tcp),
    nv("tcp6", ServerV6, Tcp),
    nv("tcp-v4mapped", ServerV4, Tcp),
    nv("tcp-nonblock", ServerV4, Tcp),
    nv("tcp-fastopen", ServerV4, Tcp),
    nv("udp-sendto", ServerV4, Udp),
    nv("udp-sendmsg", ServerV4, Udp),
    nv("udp-sendmmsg", ServerV4, Udp),
    nv("udp-connect-send", ServerV4, Udp),
    nv("udp-connected-sendto", ServerV4, Udp),
    nv("udp6-sendto", ServerV6, Udp),
    nv("v4mapped-udp-sendto", ServerV4, Udp),
    nv("io-uring-connect", ServerV4, Tcp),
    nv("io-uring-sendmsg", ServerV4, Udp),
    nv("raw-socket", ServerV4, Icmp4Echo),
    nv("raw6-socket", ServerV6, Icmp6Echo),
    nv("ping-socket", ServerV4, Icmp4Echo),
    nv("ping6-socket", ServerV6, Icmp6Echo),
    nv("af-packet", ServerV4, EtherTag),
    nv("mptcp", ServerV4, Tcp),
];

/// Process vectors (each has its own test with specific assertions); the
/// follow-up connect is always tcp4 to the server.
pub const PROCESS_VECTORS: &[&str] = &[
    "daemonize",
    "sub-cgroup",
    "parent-cgroup",
    "detach-bpf",
    "kill-agent",
];

pub fn find(name: &str) -> NetVector {
    *NETWORK_VECTORS
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("unknown network vector {name}"))
}

/// A prepared attempt: fresh port / id / tag, with listeners set up.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub vector: NetVector,
    pub port: u16,
    pub id: u16,
    pub tag: String,
    /// Proxy endpoint allowed for the sandboxed run (also given to the probe).
    pub proxy: SocketAddr,
    pub args: Vec<String>,
}

impl Attempt {
    pub fn new(h: &Harness, vector: NetVector) -> Attempt {
        let port = h.fx.port();
        let id = h.fx.echo_id();
        let tag = h.fx.tag();
        let proxy = h.proxy_endpoint();
        if vector.observe == Tcp {
            h.oracle.listen_tcp(port);
        }
        let target: IpAddr = match vector.target {
            ServerV4 => SERVER_V4.into(),
            ServerV6 => SERVER_V6.into(),
        };
        let args = vec![
            vector.name.to_string(),
            "--target".into(),
            target.to_string(),
            "--port".into(),
            port.to_string(),
            "--id".into(),
            id.to_string(),
            "--iface".into(),
            h.fx.veth_client.clone(),
            "--tag".into(),
            tag.clone(),
            "--proxy-endpoint".into(),
            proxy.to_string(),
        ];
        Attempt {
            vector,
            port,
            id,
            tag,
            proxy,
            args,
        }
    }

    /// What the server saw for this attempt (packets/frames, and accepted
    /// connections for TCP), as (count, description).
    pub fn observed(&self, h: &Harness) -> (usize, String) {
        let o = &h.oracle;
        match self.vector.observe {
            Tcp => {
                let p = o.packets_to(Proto::Tcp, self.port);
                let c = o.tcp_connections(self.port);
                (
                    p + c,
                    format!(
                        "{p} TCP packets to port {}, {c} accepted connections (peers {:?})",
                        self.port,
                        o.tcp_peers(self.port)
                    ),
                )
            }
            Udp => {
                let p = o.packets_to(Proto::Udp, self.port);
                (p, format!("{p} UDP packets to port {}", self.port))
            }
            Icmp4Echo => {
                let p = o.echo_requests(false, self.id);
                (p, format!("{p} ICMP echo requests with id {}", self.id))
            }
            Icmp6Echo => {
                let p = o.echo_requests(true, self.id);
                (p, format!("{p} ICMPv6 echo requests with id {}", self.id))
            }
            EtherTag => {
                let p = o.tagged_frames(&self.tag);
                (p, format!("{p} 0x88b5 frames with tag {:?}", self.tag))
            }
        }
    }
}

fn context(r: &ProbeResult, out: &CmdOutput) -> String {
    format!("probe result: {}\nagent: {}", r.raw, out.describe())
}

/// Proves the vector reaches the server when not sandboxed (so the sandboxed
/// check can fail).
pub fn assert_reachable_outside(h: &Harness, v: NetVector) {
    let a = Attempt::new(h, v);
    let (r, out) = h.probe_outside(&a.args);
    h.oracle.settle();
    let (n, what) = a.observed(h);
    assert!(
        r.ok && n > 0,
        "[{}] reachability check OUTSIDE the sandbox failed (the test could not detect a leak): \
         probe ok={} errno={:?} detail={:?}; server saw {what}\n{}",
        v.name,
        r.ok,
        r.errno,
        r.detail,
        context(&r, &out)
    );
}

/// Runs the vector inside a sandbox and asserts it was denied and nothing
/// reached the server.
pub fn assert_blocked_inside(h: &Harness, enforcer: &str, v: NetVector) {
    let a = Attempt::new(h, v);
    let mut guard = SandboxGuard::new();
    let opts = ExecOpts {
        enforcer: Some(enforcer.to_string()),
        proxy_endpoints: vec![a.proxy],
        in_client_netns: true,
        ..Default::default()
    };
    let (r, out) = h.probe_sandboxed_with(&opts, &a.args);
    guard.track(&r);
    h.oracle.settle();
    let (n, what) = a.observed(h);
    assert_eq!(
        n,
        0,
        "[{}] LEAK with --enforcer {enforcer}: server saw {what}\n{}",
        v.name,
        context(&r, &out)
    );
    assert!(
        r.sandbox.is_some(),
        "[{}] probe did not see NONO_SANDBOX_ID: not running under nono-agent?\n{}",
        v.name,
        context(&r, &out)
    );
    assert!(
        r.denied(),
        "[{}] expected the attempt to fail with one of {DENIED_ERRNOS:?} (EPERM/EACCES), \
         got ok={} errno={:?} detail={:?}\n{}",
        v.name,
        r.ok,
        r.errno,
        r.detail,
        context(&r, &out)
    );
    assert_eq!(
        out.code(),
        0,
        "[{}] agent exit code should be the probe's (0)\n{}",
        v.name,
        context(&r, &out)
    );
}

/// The full check for one network vector under `enforcer`.
pub fn check_network_vector(enforcer: &str, probe_bin: &str, name: &str) {
    let v = find(name);
    let h = Harness::new(probe_bin);
    assert_reachable_outside(&h, v);
    assert_blocked_inside(&h, enforcer, v);
}
