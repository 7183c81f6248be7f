//! The escape vectors, declared once for `nono-agent selftest`, the hidden
//! `__probe` subcommand, the tests' `nono-probe` and the tests' tables.
//!
//! [`Vector`] names every attempt and mode the probes know (the tests'
//! probe dispatches on it with an exhaustive `match`, so a name without an
//! implementation does not compile); [`NETWORK_VECTORS`] says, for each
//! network escape, where it is aimed, what the receiving side must watch
//! for and how the outcome is judged. Pure data: no system calls here.

use std::fmt;
use std::str::FromStr;

/// Declares [`Vector`] with one variant per `Variant => "name"` row, in the
/// order `--list` prints them.
macro_rules! probe_vectors {
    ($($variant:ident => $name:literal,)*) => {
        /// One `nono-probe` attempt or mode, named on its command line.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Vector {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl Vector {
            /// Every vector, in `--list` order.
            pub const ALL: &'static [Vector] = &[$(Vector::$variant,)*];

            /// The command-line name (`const`, so tables of names can be
            /// built at compile time).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Vector::$variant => $name,)*
                }
            }
        }
    };
}

probe_vectors! {
    Tcp4 => "tcp4",
    Tcp6 => "tcp6",
    TcpV4mapped => "tcp-v4mapped",
    TcpNonblock => "tcp-nonblock",
    UdpSendto => "udp-sendto",
    UdpSendmsg => "udp-sendmsg",
    UdpSendmmsg => "udp-sendmmsg",
    UdpConnectSend => "udp-connect-send",
    UdpConnectedSendto => "udp-connected-sendto",
    Udp6Sendto => "udp6-sendto",
    V4mappedUdpSendto => "v4mapped-udp-sendto",
    TcpFastopen => "tcp-fastopen",
    IoUringConnect => "io-uring-connect",
    IoUringSendmsg => "io-uring-sendmsg",
    RawSocket => "raw-socket",
    Raw6Socket => "raw6-socket",
    AfPacket => "af-packet",
    PingSocket => "ping-socket",
    Ping6Socket => "ping6-socket",
    Mptcp => "mptcp",
    Daemonize => "daemonize",
    SubCgroup => "sub-cgroup",
    ParentCgroup => "parent-cgroup",
    DetachBpf => "detach-bpf",
    KillAgent => "kill-agent",
    Loopback4 => "loopback4",
    Loopback6 => "loopback6",
    LoopbackV4mapped => "loopback-v4mapped",
    Loopback127002 => "loopback-127-0-0-2",
    Proxy => "proxy",
    Srh6UdpSockopt => "srh6-udp-sockopt",
    Srh6TcpSockopt => "srh6-tcp-sockopt",
    Srh6UdpConnectSend => "srh6-udp-connect-send",
    Srh6UdpCmsg => "srh6-udp-cmsg",
    Srh6UdpPktoptions => "srh6-udp-pktoptions",
    Rh2UdpSockopt => "rh2-udp-sockopt",
    Lsrr4TcpSockopt => "lsrr4-tcp-sockopt",
    Lsrr4UdpSockopt => "lsrr4-udp-sockopt",
    Ssrr4UdpSockopt => "ssrr4-udp-sockopt",
    Lsrr4UdpCmsg => "lsrr4-udp-cmsg",
    Lsrr4UdpConnectedCmsg => "lsrr4-udp-connected-cmsg",
    UnicastIfLoopback4 => "unicast-if-loopback4",
    PktinfoLoopback4 => "pktinfo-loopback4",
    UdpConnectedCmsgTos => "udp-connected-cmsg-tos",
    Udp6ConnectedCmsgTclass => "udp6-connected-cmsg-tclass",
    UdpProxySend => "udp-proxy-send",
    TcpProxyBulk => "tcp-proxy-bulk",
    ProcRootCgroup => "proc-root-cgroup",
    Int80Socketcall => "int80-socketcall",
    Int80Socket => "int80-socket",
    UdpSendmsgCmsgTos => "udp-sendmsg-cmsg-tos",
    Udp6SendmsgCmsgTclass => "udp6-sendmsg-cmsg-tclass",
    ConnectLoop => "connect-loop",
    RaceSockaddr => "race-sockaddr",
    ParallelConnect => "parallel-connect",
    SignalStorm => "signal-storm",
    ScmRights => "scm-rights",
    StealFds => "steal-fds",
    HoldNocaps => "hold-nocaps",
    ListenServe => "listen-serve",
    BindCheck => "bind-check",
    BulkHold => "bulk-hold",
    BindtodeviceLoopback4 => "bindtodevice-loopback4",
    BindtodeviceLo => "bindtodevice-lo",
    McastJoin => "mcast-join",
    UnixDgramSend => "unix-dgram-send",
    UnixStreamCreds => "unix-stream-creds",
    UdpCapCmsg => "udp-cap-cmsg",
    LoopbackSelftest => "loopback-selftest",
    UdpServe => "udp-serve",
}

/// A name no [`Vector`] has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVector(pub String);

impl fmt::Display for UnknownVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown vector {:?}", self.0)
    }
}

impl std::error::Error for UnknownVector {}

impl FromStr for Vector {
    type Err = UnknownVector;

    fn from_str(s: &str) -> Result<Vector, UnknownVector> {
        Vector::ALL
            .iter()
            .copied()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownVector(s.to_string()))
    }
}

impl fmt::Display for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// The network vectors and how each is judged

/// Which destination the probe is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The test host's IPv4 address (198.51.100.2 in the tests' fixture;
    /// the probe maps it to ::ffff:198.51.100.2 itself for the v4-mapped
    /// vectors).
    ServerV4,
    /// The test host's IPv6 address (2001:db8:100::2 in the tests' fixture).
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
    /// Source-routed TCP: the probe connects to loopback port P with a
    /// routing option naming the target; every TCP packet to port P (and
    /// every accepted connection) counts. Proof of the route outside: TCP to
    /// target:P carrying IPv4 options / an IPv6 routing header.
    RoutedTcp,
    /// Source-routed UDP, as [`Observe::RoutedTcp`].
    RoutedUdp,
    /// UDP sent to 127.0.0.1:P but forced out of the client veth (the
    /// fixture answers ARP for 127.0.0.1 like a cooperating host on the link
    /// would); every UDP packet to port P counts.
    WireLoopbackUdp,
}

/// What the check expects, beyond "the oracle sees nothing inside".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The socket hooks see the real destination: outside the packet must
    /// arrive; inside the attempt must fail with EPERM/EACCES.
    Direct,
    /// The address the program names is allowed (loopback) and something
    /// else (a routing option, the outgoing interface) decides where the
    /// packet really goes. Outside the packet must arrive at the target;
    /// inside only the oracle decides (EPERM from setsockopt, a timed-out
    /// connect or a "successful" local send are all fine, as long as nothing
    /// arrives). The probe's outcome is reported.
    Rerouted,
    /// Like [`Mode::Rerouted`], but the kernel may refuse the option even
    /// outside a sandbox (e.g. a type 2 routing header without
    /// CONFIG_IPV6_MIP6, a segment routing header as ancillary data). Then
    /// the outside run must show that refusal (an errno at the step that
    /// applies the option, nothing on the wire) rather than pass silently.
    ReroutedMayBeRefused,
}

/// A network escape vector: one `nono-probe` attempt plus what to observe.
#[derive(Debug, Clone, Copy)]
pub struct NetVector {
    pub name: &'static str,
    pub target: Target,
    pub observe: Observe,
    pub mode: Mode,
}

const fn nv(v: Vector, target: Target, observe: Observe) -> NetVector {
    NetVector {
        name: v.name(),
        target,
        observe,
        mode: Mode::Direct,
    }
}

const fn rv(v: Vector, target: Target, observe: Observe, mode: Mode) -> NetVector {
    NetVector {
        name: v.name(),
        target,
        observe,
        mode,
    }
}

use Mode::*;
use Observe::*;
use Target::*;

/// Every network vector. Each must be blocked inside a sandbox and reachable
/// outside it.
pub const NETWORK_VECTORS: &[NetVector] = &[
    nv(Vector::Tcp4, ServerV4, Tcp),
    nv(Vector::Tcp6, ServerV6, Tcp),
    nv(Vector::TcpV4mapped, ServerV4, Tcp),
    nv(Vector::TcpNonblock, ServerV4, Tcp),
    nv(Vector::TcpFastopen, ServerV4, Tcp),
    nv(Vector::UdpSendto, ServerV4, Udp),
    nv(Vector::UdpSendmsg, ServerV4, Udp),
    nv(Vector::UdpSendmmsg, ServerV4, Udp),
    nv(Vector::UdpConnectSend, ServerV4, Udp),
    nv(Vector::UdpConnectedSendto, ServerV4, Udp),
    nv(Vector::Udp6Sendto, ServerV6, Udp),
    nv(Vector::V4mappedUdpSendto, ServerV4, Udp),
    nv(Vector::IoUringConnect, ServerV4, Tcp),
    nv(Vector::IoUringSendmsg, ServerV4, Udp),
    nv(Vector::RawSocket, ServerV4, Icmp4Echo),
    nv(Vector::Raw6Socket, ServerV6, Icmp6Echo),
    nv(Vector::PingSocket, ServerV4, Icmp4Echo),
    nv(Vector::Ping6Socket, ServerV6, Icmp6Echo),
    nv(Vector::AfPacket, ServerV4, EtherTag),
    nv(Vector::Mptcp, ServerV4, Tcp),
    // i386 system calls from a 64-bit process (`int 0x80`): socketcall
    // (102) with SYS_CONNECT, and the direct i386 socket + connect.
    nv(Vector::Int80Socketcall, ServerV4, Tcp),
    nv(Vector::Int80Socket, ServerV4, Tcp),
    // Routing options: the hooks see ::1 / 127.0.0.1, the kernel sends to
    // the first segment / first hop (the server).
    rv(Vector::Srh6UdpSockopt, ServerV6, RoutedUdp, Rerouted),
    rv(Vector::Srh6TcpSockopt, ServerV6, RoutedTcp, Rerouted),
    rv(Vector::Srh6UdpConnectSend, ServerV6, RoutedUdp, Rerouted),
    rv(
        Vector::Srh6UdpCmsg,
        ServerV6,
        RoutedUdp,
        ReroutedMayBeRefused,
    ),
    rv(
        Vector::Srh6UdpPktoptions,
        ServerV6,
        RoutedUdp,
        ReroutedMayBeRefused,
    ),
    rv(
        Vector::Rh2UdpSockopt,
        ServerV6,
        RoutedUdp,
        ReroutedMayBeRefused,
    ),
    rv(Vector::Lsrr4TcpSockopt, ServerV4, RoutedTcp, Rerouted),
    rv(Vector::Lsrr4UdpSockopt, ServerV4, RoutedUdp, Rerouted),
    rv(Vector::Ssrr4UdpSockopt, ServerV4, RoutedUdp, Rerouted),
    rv(Vector::Lsrr4UdpCmsg, ServerV4, RoutedUdp, Rerouted),
    rv(Vector::Lsrr4UdpConnectedCmsg, ServerV4, RoutedUdp, Rerouted),
    // 127.0.0.1 sent out of the veth (outgoing interface chosen without
    // CAP_NET_RAW); leaves the host when an on-link host answers ARP.
    rv(
        Vector::UnicastIfLoopback4,
        ServerV4,
        WireLoopbackUdp,
        Rerouted,
    ),
    rv(
        Vector::PktinfoLoopback4,
        ServerV4,
        WireLoopbackUdp,
        Rerouted,
    ),
];

/// Process vectors (each has its own test with specific assertions); the
/// follow-up connect is always tcp4 to the server.
pub const PROCESS_VECTORS: &[&str] = &[
    Vector::Daemonize.name(),
    Vector::SubCgroup.name(),
    Vector::ParentCgroup.name(),
    Vector::DetachBpf.name(),
    Vector::KillAgent.name(),
    Vector::ProcRootCgroup.name(),
    Vector::StealFds.name(),
];

/// The network vector called `name`.
pub fn find_network(name: &str) -> Option<NetVector> {
    NETWORK_VECTORS.iter().find(|v| v.name == name).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for (i, v) in Vector::ALL.iter().enumerate() {
            assert_eq!(v.name().parse::<Vector>(), Ok(*v));
            assert!(
                !Vector::ALL[..i].iter().any(|w| w.name() == v.name()),
                "duplicate name {v}"
            );
        }
        assert!("no-such-vector".parse::<Vector>().is_err());
    }

    #[test]
    fn every_network_vector_is_a_probe_vector_once() {
        for (i, v) in NETWORK_VECTORS.iter().enumerate() {
            assert!(v.name.parse::<Vector>().is_ok(), "{}", v.name);
            assert!(find_network(v.name).is_some());
            assert!(
                !NETWORK_VECTORS[..i].iter().any(|w| w.name == v.name),
                "duplicate {}",
                v.name
            );
        }
    }
}
