//! The single list of escape vectors, and the generic check for network
//! vectors. Every check takes the [`Enforcement`] (BPF as root, seccomp as
//! root, seccomp unprivileged), so one list runs under every enforcer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::netns::{SERVER_MAC, SERVER_V4, SERVER_V6};
use crate::oracle::{ArpResponder, Proto};
use crate::runner::{
    Enforcement, ExecOpts, Harness, ProbeResult, RunAs, SandboxGuard, DENIED_ERRNOS,
};
use crate::sys::CmdOutput;

pub use nono_agent::selftest::vectors::{
    Mode, NetVector, Observe, Target, NETWORK_VECTORS, PROCESS_VECTORS,
};

use Mode::*;
use Observe::*;
use Target::*;

pub fn find(name: &str) -> NetVector {
    nono_agent::selftest::vectors::find_network(name)
        .unwrap_or_else(|| panic!("unknown network vector {name}"))
}

/// A prepared attempt: fresh port / id / tag, with listeners set up.
#[derive(Debug)]
pub struct Attempt {
    pub vector: NetVector,
    pub port: u16,
    pub id: u16,
    pub tag: String,
    /// Proxy endpoint allowed for the sandboxed run (also given to the probe).
    pub proxy: SocketAddr,
    pub args: Vec<String>,
    /// Where a rerouted packet really goes (the server address).
    pub target: IpAddr,
    /// Oracle frame-log position when the attempt was prepared.
    pub mark: usize,
    /// For [`Observe::WireLoopbackUdp`]: answers ARP for 127.0.0.1 on the
    /// server side of the veth while the attempt lives.
    pub arp: Option<ArpResponder>,
}

impl Attempt {
    pub fn new(h: &Harness, vector: NetVector) -> Attempt {
        let port = h.fx.port();
        let id = h.fx.echo_id();
        let tag = h.fx.tag();
        let proxy = h.proxy_endpoint();
        if matches!(vector.observe, Tcp | RoutedTcp) {
            h.oracle.listen_tcp(port);
        }
        let target: IpAddr = match vector.target {
            ServerV4 => SERVER_V4.into(),
            ServerV6 => SERVER_V6.into(),
        };
        let arp = (vector.observe == WireLoopbackUdp).then(|| {
            ArpResponder::start(
                &h.fx.server,
                &h.fx.veth_server,
                Ipv4Addr::LOCALHOST,
                mac(SERVER_MAC),
            )
        });
        let mark = h.oracle.mark();
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
            target,
            mark,
            arp,
        }
    }

    /// Proof that the vector's mechanism worked (for the outside run): for
    /// routed vectors, packets to target:P carrying the routing option; for
    /// [`Observe::WireLoopbackUdp`], UDP to 127.0.0.1:P on the wire. Other
    /// vectors: what [`Attempt::observed`] counts.
    pub fn proof(&self, h: &Harness) -> (usize, String) {
        let o = &h.oracle;
        match self.vector.observe {
            RoutedTcp | RoutedUdp => {
                let proto = if self.vector.observe == RoutedTcp {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                let n = o.routed_packets_to(proto, self.target, self.port);
                (
                    n,
                    format!(
                        "{n} {proto:?} packets to {}:{} carrying a routing option",
                        self.target, self.port
                    ),
                )
            }
            WireLoopbackUdp => {
                let n = o.packets_to_addr(Proto::Udp, Ipv4Addr::LOCALHOST.into(), self.port);
                (
                    n,
                    format!(
                        "{n} UDP packets to 127.0.0.1:{} on the wire ({} ARP answers for \
                         127.0.0.1)",
                        self.port,
                        self.arp.as_ref().map_or(0, ArpResponder::answered)
                    ),
                )
            }
            _ => self.observed(h),
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
            RoutedTcp | RoutedUdp | WireLoopbackUdp => {
                // Any packet to port P, whatever its address or options,
                // plus any source-routed packet since the attempt began.
                let (proto, c) = if self.vector.observe == RoutedTcp {
                    (Proto::Tcp, o.tcp_connections(self.port))
                } else {
                    (Proto::Udp, 0)
                };
                let p = o.packets_to(proto, self.port);
                let routed = o.routed_since(self.mark);
                (
                    p + c + routed.len(),
                    format!(
                        "{p} {proto:?} packets to port {} ({:?}), {c} accepted connections, \
                         {} source-routed packets since the attempt began ({routed:?})",
                        self.port,
                        o.frames_to_port(self.port),
                        routed.len()
                    ),
                )
            }
        }
    }
}

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    m
}

/// What the outside run established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// The packet reached the server (the test can detect a leak).
    Reached,
    /// The kernel itself refuses the vector (errno, detail): nothing can leak
    /// through it on this kernel, inside or out.
    KernelRefused(Option<i32>, String),
}

fn context(r: &ProbeResult, out: &CmdOutput) -> String {
    format!("probe result: {}\nagent: {}", r.raw, out.describe())
}

/// Proves the vector reaches the server when not sandboxed (so the sandboxed
/// check can fail). A [`Mode::ReroutedMayBeRefused`] vector may instead be
/// refused by the kernel: then the refusal itself is asserted.
pub fn assert_reachable_outside(h: &Harness, v: NetVector) -> Baseline {
    let a = Attempt::new(h, v);
    let (r, out) = h.probe_outside(&a.args);
    h.oracle.settle();
    let (n, what) = a.observed(h);
    if v.mode == Direct {
        assert!(
            r.ok && n > 0,
            "[{}] reachability check OUTSIDE the sandbox failed (the test could not detect a \
             leak): probe ok={} errno={:?} detail={:?}; server saw {what}\n{}",
            v.name,
            r.ok,
            r.errno,
            r.detail,
            context(&r, &out)
        );
        return Baseline::Reached;
    }
    // Rerouted: a TCP connect times out (the server drops source-routed
    // packets), so the probe's outcome does not matter, only the proof.
    let (proof, proof_what) = a.proof(h);
    if proof > 0 {
        return Baseline::Reached;
    }
    let refused_step = r.raw["refused_at"].as_str().map(str::to_string);
    assert!(
        v.mode == ReroutedMayBeRefused && !r.ok && r.errno.is_some() && refused_step.is_some(),
        "[{}] OUTSIDE the sandbox the rerouted packet did not reach {} and the kernel did not \
         refuse the option (the test could not detect a leak): probe ok={} errno={:?} \
         detail={:?} refused_at={refused_step:?}; server saw {proof_what}; {what}\n{}",
        v.name,
        a.target,
        r.ok,
        r.errno,
        r.detail,
        context(&r, &out)
    );
    assert_eq!(
        n,
        0,
        "[{}] the kernel refused the option outside, yet the server saw {what}\n{}",
        v.name,
        context(&r, &out)
    );
    eprintln!(
        "[{}] baseline: the kernel refuses this vector outside a sandbox too \
         ({:?} at {}: {})",
        v.name,
        r.errno,
        refused_step.as_deref().unwrap_or("?"),
        r.detail
    );
    Baseline::KernelRefused(r.errno, r.detail.clone())
}

/// Runs the vector inside a sandbox and asserts it was denied and nothing
/// reached the server (for rerouted vectors: only that nothing reached the
/// server; what the probe saw is reported). Returns the probe's result.
pub fn assert_blocked_inside(h: &Harness, e: Enforcement, v: NetVector) -> ProbeResult {
    if let (Enforcement::SeccompUser, Direct) = (e, v.mode) {
        report_unprivileged_baseline(h, v);
    }
    assert_blocked_inside_with(h, ExecOpts::for_enforcement(e), Some(e), v)
}

/// For information: whether the kernel itself already refuses the vector
/// to an unprivileged user outside any sandbox (raw sockets, AF_PACKET...).
fn report_unprivileged_baseline(h: &Harness, v: NetVector) {
    let a = Attempt::new(h, v);
    let (r, _) = h.probe_outside_as(RunAs::fresh(), &a.args);
    h.oracle.settle();
    let (n, what) = a.observed(h);
    if !(r.ok && n > 0) {
        eprintln!(
            "[{}] note: an unprivileged user is refused this vector even outside a sandbox              (ok={} errno={:?} {:?}; server saw {what})",
            v.name, r.ok, r.errno, r.detail
        );
    }
}

/// [`assert_blocked_inside`] with explicit options (e.g. `--enforcer auto`);
/// `expect` is the enforcer that must end up applied (NONO_ENFORCER), if known.
pub fn assert_blocked_inside_with(
    h: &Harness,
    opts: ExecOpts,
    expect: Option<Enforcement>,
    v: NetVector,
) -> ProbeResult {
    let a = Attempt::new(h, v);
    let mut guard = SandboxGuard::new();
    let opts = ExecOpts {
        proxy_endpoints: vec![a.proxy],
        ..opts
    };
    let label = format!(
        "--enforcer {} as {}",
        opts.enforcer.as_deref().unwrap_or("(default)"),
        opts.user
            .map_or("root".to_string(), |u| format!("uid {}", u.uid))
    );
    let (r, out) = h.probe_sandboxed_with(&opts, &a.args);
    guard.track(&r);
    h.oracle.settle();
    let (n, what) = a.observed(h);
    assert_eq!(
        n,
        0,
        "[{}] LEAK with {label}: server saw {what}\n{}",
        v.name,
        context(&r, &out)
    );
    assert!(
        r.sandbox.is_some(),
        "[{}] probe did not see NONO_SANDBOX_ID: not running under nono-agent?\n{}",
        v.name,
        context(&r, &out)
    );
    if let Some(e) = expect {
        assert_eq!(
            r.raw["enforcer"].as_str(),
            Some(e.flag()),
            "[{}] NONO_ENFORCER in the sandbox is not {} ({label})\n{}",
            v.name,
            e.flag(),
            context(&r, &out)
        );
    }
    let redirected = expect.is_some_and(Enforcement::transparent) && redirected_when_transparent(v);
    if redirected {
        // The connect reached the sandbox's proxy (nothing on the wire:
        // asserted above), which found no name and closed it.
        eprintln!(
            "[{}] inside {label}: redirected to the proxy, nothing arrived; the probe saw \
             ok={} errno={:?} detail={:?}",
            v.name, r.ok, r.errno, r.detail
        );
        // Not EPERM: the redirect path itself is what this run checks.
        assert!(
            r.ok || r.errno.is_some_and(|e| REDIRECTED_ERRNOS.contains(&e)),
            "[{}] {label}: a redirected connect ends connected (to the proxy) or closed by \
             it, got ok={} errno={:?} detail={:?}\n{}",
            v.name,
            r.ok,
            r.errno,
            r.detail,
            context(&r, &out)
        );
    } else if v.mode == Direct {
        assert!(
            r.denied(),
            "[{}] {label}: expected the attempt to fail with one of {DENIED_ERRNOS:?} \
             (EPERM/EACCES), got ok={} errno={:?} detail={:?}\n{}",
            v.name,
            r.ok,
            r.errno,
            r.detail,
            context(&r, &out)
        );
    } else {
        eprintln!(
            "[{}] inside {label}: nothing arrived; the probe saw ok={} errno={:?} \
             detail={:?} refused_at={:?}",
            v.name, r.ok, r.errno, r.detail, r.raw["refused_at"]
        );
    }
    assert_eq!(
        out.code(),
        0,
        "[{}] {label}: agent exit code should be the probe's (0)\n{}",
        v.name,
        context(&r, &out)
    );
    let left = guard.leftovers();
    assert!(
        left.is_empty(),
        "[{}] {label}: processes of the sandbox still alive after the agent exited: {left:?}",
        v.name
    );
    r
}

/// Errnos a connect the proxy accepted and then closed may end with.
const REDIRECTED_ERRNOS: &[i32] = &[libc::ECONNRESET, libc::EPIPE, libc::ECONNREFUSED];

/// The vectors transparent mode turns from a refusal into a redirect to
/// the sandbox's proxy: a plain TCP connect (blocking, non-blocking, v6,
/// v4-mapped, TCP Fast Open's sendto) to an address the policy does not
/// allow. The connect succeeds (the proxy accepted it, found no name and
/// closed it) and the server sees nothing. Every other vector keeps its
/// refusal (EPERM): UDP other than DNS, raw, ping and packet sockets,
/// MPTCP, io_uring (refused at setup), i386 system calls (refused by the
/// seccomp filter before any hook) and routing options.
pub const REDIRECTED_WHEN_TRANSPARENT: &[&str] = &[
    "tcp4",
    "tcp6",
    "tcp-v4mapped",
    "tcp-nonblock",
    "tcp-fastopen",
];

/// Whether `v` is in [`REDIRECTED_WHEN_TRANSPARENT`].
pub fn redirected_when_transparent(v: NetVector) -> bool {
    REDIRECTED_WHEN_TRANSPARENT.contains(&v.name)
}

/// The full check for one network vector under `e`.
pub fn check_network_vector(e: Enforcement, probe_bin: &str, name: &str) {
    let v = find(name);
    let h = Harness::new(probe_bin);
    assert_reachable_outside(&h, v);
    assert_blocked_inside(&h, e, v);
}
