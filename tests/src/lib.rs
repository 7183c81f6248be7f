//! Integration test harness for `nono-agent`.
//!
//! * [`channels`]: receivers for the channel battery (inbound connector,
//!   held TCP receiver, SYN burst, unix receivers with credentials).
//! * [`daemon`]: a private `nono-agent daemon` per test or per test binary,
//!   removed completely on drop.
//! * [`netns`]: client/server network namespaces joined by a veth pair.
//! * [`oracle`]: the server side "truth": TCP listeners and an AF_PACKET sniffer
//!   in the server namespace that count what actually arrived.
//! * [`proxylab`]: the filtering-proxy fixture: HTTP/HTTPS/git/echo servers in
//!   the server namespace, a logging DNS server, a test CA, and helpers that
//!   run curl, Python and raw-socket clients inside `nono-agent exec`.
//! * [`probe_vectors`]: the names of every `nono-probe` attempt and mode,
//!   declared once for the probe and the tests.
//! * [`runner`]: runs `nono-probe` outside and inside a sandbox, parses results,
//!   and guards against leftovers.
//! * [`sockaddr`]: `SocketAddr` <-> `sockaddr_storage` for raw socket calls.
//! * [`vectors`]: the single list of escape vectors, reusable per enforcer.
//! * [`sys`]: prerequisites, binary discovery, mount discovery, commands with
//!   timeouts.
//!
//! Every test needs root and a real kernel; a missing prerequisite panics with
//! a clear message rather than skipping.

pub mod channels;
pub mod daemon;
pub mod netns;
pub mod oracle;
pub mod probe_vectors;
pub mod profilelab;
pub mod proxylab;
pub mod runner;
pub mod sockaddr;
pub mod sys;
pub mod tlshost;
pub mod vectors;

pub use netns::NetFixture;
pub use oracle::Oracle;
pub use runner::{Harness, ProbeResult};

/// Calls the macro `$m` with every network vector as `test_name =>
/// "vector-name"` pairs: the escape and daemon targets each declare one test
/// per vector from this one list (and check it against
/// `NETWORK_VECTORS`, so a vector added there without a test fails).
#[macro_export]
macro_rules! with_network_vectors {
    ($m:ident) => {
        $m! {
        vector_tcp4 => "tcp4",
        vector_tcp6 => "tcp6",
        vector_tcp_v4mapped => "tcp-v4mapped",
        vector_tcp_nonblock => "tcp-nonblock",
        vector_tcp_fastopen => "tcp-fastopen",
        vector_udp_sendto => "udp-sendto",
        vector_udp_sendmsg => "udp-sendmsg",
        vector_udp_sendmmsg => "udp-sendmmsg",
        vector_udp_connect_send => "udp-connect-send",
        vector_udp_connected_sendto => "udp-connected-sendto",
        vector_udp6_sendto => "udp6-sendto",
        vector_v4mapped_udp_sendto => "v4mapped-udp-sendto",
        vector_io_uring_connect => "io-uring-connect",
        vector_io_uring_sendmsg => "io-uring-sendmsg",
        vector_raw_socket => "raw-socket",
        vector_raw6_socket => "raw6-socket",
        vector_ping_socket => "ping-socket",
        vector_ping6_socket => "ping6-socket",
        vector_af_packet => "af-packet",
        vector_mptcp => "mptcp",
        vector_int80_socketcall => "int80-socketcall",
        vector_int80_socket => "int80-socket",
        vector_srh6_udp_sockopt => "srh6-udp-sockopt",
        vector_srh6_tcp_sockopt => "srh6-tcp-sockopt",
        vector_srh6_udp_connect_send => "srh6-udp-connect-send",
        vector_srh6_udp_cmsg => "srh6-udp-cmsg",
        vector_srh6_udp_pktoptions => "srh6-udp-pktoptions",
        vector_rh2_udp_sockopt => "rh2-udp-sockopt",
        vector_lsrr4_tcp_sockopt => "lsrr4-tcp-sockopt",
        vector_lsrr4_udp_sockopt => "lsrr4-udp-sockopt",
        vector_ssrr4_udp_sockopt => "ssrr4-udp-sockopt",
        vector_lsrr4_udp_cmsg => "lsrr4-udp-cmsg",
        vector_lsrr4_udp_connected_cmsg => "lsrr4-udp-connected-cmsg",
        vector_unicast_if_loopback4 => "unicast-if-loopback4",
        vector_pktinfo_loopback4 => "pktinfo-loopback4",
            }
    };
}

/// Defines, in module `$module`, one `#[test]` per listed function calling
/// `super::f($e)` (e.g. `$e` an [`runner::Enforcement`]), so a failure
/// names both the check and the enforcement.
#[macro_export]
macro_rules! per_enforcement {
    ($module:ident, $e:expr, [$($f:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $f() {
                    super::$f($e);
                }
            )*
        }
    };
}
