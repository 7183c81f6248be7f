//! Every attempt and mode `nono-probe` knows, declared once.
//!
//! The probe dispatches on [`Vector`] (an exhaustive `match`, so a name
//! without an implementation does not compile), prints [`Vector::ALL`] for
//! `--list`, and [`crate::vectors`] builds its network and process tables
//! from [`Vector::name`]: the tests and the probe cannot disagree on a
//! spelling.

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
}
