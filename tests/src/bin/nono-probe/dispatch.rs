//! Runs the attempt a `Vector` names: an exhaustive `match`, so a vector
//! added to the shared list without an implementation does not compile.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nono_tests::probe_vectors::Vector as V;
use serde_json::{json, Value};

use crate::args::{lo4, lo6, proxy_arg, usage, Args};
use crate::attempt::{Attempt, Steps};
use crate::cgroup::{parent_cgroup, proc_root_cgroup, sub_cgroup};
use crate::connect::{
    io_uring_connect, io_uring_sendmsg, tcp_bulk, tcp_connect, tcp_fastopen, tcp_nonblock,
    udp_connect_send, udp_connected_cmsg, udp_connected_sendto, udp_sendmmsg, udp_sendmsg,
    udp_sendmsg_cmsg, udp_sendto,
};
use crate::detach::detach_bpf;
use crate::device::{bindtodevice_lo, bindtodevice_loopback, udp_cap_cmsg};
use crate::fds::{scm_rights, steal_fds};
use crate::inbound::{bind_check, bulk_hold, listen_serve, udp_serve};
use crate::int80::int80_connect;
use crate::loops::{connect_loop, parallel_connect, race_sockaddr};
use crate::multicast::mcast_join;
use crate::nocaps::hold_nocaps;
use crate::process::{daemonize, kill_agent};
use crate::raw::{af_packet, icmp_echo};
use crate::reroute::{
    loopback_on_iface, rh2, routed_tcp_sockopt, routed_udp_cmsg, routed_udp_connect_sockopt,
    routed_udp_pktoptions, routed_udp_sockopt, srh_opt, srr4_opt, v6_target, RouteOpt,
};
use crate::selftest::loopback_selftest;
use crate::sock::{iface_addr4, map_v4, IPPROTO_MPTCP};
use crate::storm::signal_storm;
use crate::unix::{unix_dgram_send, unix_stream_creds};

/// Performs `vector` with `args`, recording steps and extra result keys.
/// Modes that never return (`hold-nocaps`, `connect-loop`) exit from here.
pub(crate) fn run(
    vector: V,
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    match vector {
        V::Tcp4 | V::Tcp6 => tcp_connect(args.target_sa(), 0),
        V::TcpV4mapped => tcp_connect(SocketAddr::new(map_v4(args.target()), args.port()), 0),
        V::TcpNonblock => tcp_nonblock(args.target_sa()),
        V::TcpFastopen => tcp_fastopen(args.target_sa()),
        V::UdpSendto | V::Udp6Sendto => udp_sendto(args.target_sa()),
        V::V4mappedUdpSendto => udp_sendto(SocketAddr::new(map_v4(args.target()), args.port())),
        V::UdpSendmsg => udp_sendmsg(args.target_sa()),
        V::UdpSendmmsg => udp_sendmmsg(args.target_sa(), args.num("count", Some(4))),
        V::UdpConnectSend => udp_connect_send(args.target_sa()),
        V::UdpConnectedSendto => {
            let allowed = args.get("proxy-endpoint").map(|pe| {
                pe.parse::<SocketAddr>()
                    .unwrap_or_else(|_| usage(&format!("--proxy-endpoint: bad ADDR:PORT {pe:?}")))
            });
            udp_connected_sendto(args.target_sa(), allowed)
        }
        V::IoUringConnect => io_uring_connect(args.target_sa()),
        V::IoUringSendmsg => io_uring_sendmsg(args.target_sa()),
        V::RawSocket | V::Raw6Socket => icmp_echo(args.target(), args.num("id", None), true),
        V::PingSocket | V::Ping6Socket => icmp_echo(args.target(), args.num("id", None), false),
        V::AfPacket => af_packet(args.req("iface"), args.req("tag")),
        V::Mptcp => tcp_connect(args.target_sa(), IPPROTO_MPTCP),
        V::Loopback4 => tcp_connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port()), 0),
        V::Loopback6 => tcp_connect(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), args.port()), 0),
        V::LoopbackV4mapped => tcp_connect(
            SocketAddr::new(map_v4(Ipv4Addr::LOCALHOST.into()), args.port()),
            0,
        ),
        V::Loopback127002 => tcp_connect(
            SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), args.port()),
            0,
        ),
        V::Proxy => {
            let pe = args.req("proxy-endpoint");
            match pe.parse::<SocketAddr>() {
                Ok(sa) => tcp_connect(sa, 0),
                Err(_) => usage(&format!("--proxy-endpoint: bad ADDR:PORT {pe:?}")),
            }
        }
        V::Srh6UdpSockopt => routed_udp_sockopt(lo6(args), &srh_opt(args.target()), steps, extra),
        V::Rh2UdpSockopt => routed_udp_sockopt(
            lo6(args),
            &RouteOpt {
                level: libc::IPPROTO_IPV6,
                name: libc::IPV6_RTHDR,
                bytes: rh2(v6_target(args.target())),
                label: "IPV6_RTHDR (type 2)",
            },
            steps,
            extra,
        ),
        V::Srh6TcpSockopt => routed_tcp_sockopt(lo6(args), &srh_opt(args.target()), steps, extra),
        V::Srh6UdpConnectSend => {
            routed_udp_connect_sockopt(lo6(args), &srh_opt(args.target()), steps, extra)
        }
        V::Srh6UdpCmsg => routed_udp_cmsg(None, lo6(args), &srh_opt(args.target()), steps, extra),
        V::Srh6UdpPktoptions => routed_udp_pktoptions(lo6(args), args.target(), steps, extra),
        V::Lsrr4TcpSockopt => routed_tcp_sockopt(
            lo4(args),
            &srr4_opt(131, args.target(), libc::IP_OPTIONS),
            steps,
            extra,
        ),
        V::Lsrr4UdpSockopt | V::Ssrr4UdpSockopt => routed_udp_sockopt(
            lo4(args),
            &srr4_opt(
                if vector == V::Lsrr4UdpSockopt {
                    131
                } else {
                    137
                },
                args.target(),
                libc::IP_OPTIONS,
            ),
            steps,
            extra,
        ),
        V::Lsrr4UdpCmsg => routed_udp_cmsg(
            None,
            lo4(args),
            &srr4_opt(131, args.target(), libc::IP_RETOPTS),
            steps,
            extra,
        ),
        V::Lsrr4UdpConnectedCmsg => routed_udp_cmsg(
            Some((lo4(args), iface_addr4(args.req("iface")).map(IpAddr::V4))),
            lo4(args),
            &srr4_opt(131, args.target(), libc::IP_RETOPTS),
            steps,
            extra,
        ),
        V::UnicastIfLoopback4 | V::PktinfoLoopback4 => loopback_on_iface(
            args.port(),
            args.req("iface"),
            vector == V::PktinfoLoopback4,
            args.num("count", Some(3)),
            steps,
        ),
        V::UdpConnectedCmsgTos | V::Udp6ConnectedCmsgTclass => {
            udp_connected_cmsg(args.target_sa(), args.num("count", Some(1)))
        }
        V::UdpProxySend => udp_connect_send(proxy_arg(args)),
        V::TcpProxyBulk => tcp_bulk(proxy_arg(args), args.num("bytes", Some(1 << 20))),
        V::ProcRootCgroup => proc_root_cgroup(steps, extra, args.target_sa()),
        V::HoldNocaps => hold_nocaps(args),
        V::SubCgroup => sub_cgroup(steps, args.target_sa()),
        V::ParentCgroup => parent_cgroup(steps, args.target_sa()),
        V::DetachBpf => detach_bpf(steps, args.target_sa()),
        V::Daemonize => {
            let sa = args.target_sa();
            let (a, reports, gpid) = daemonize(args, sa);
            steps.0.extend(reports);
            extra.insert("grandchild_pid".into(), json!(gpid));
            a
        }
        V::KillAgent => kill_agent(args, steps, extra),
        V::Int80Socketcall => int80_connect(args.target_sa(), true, steps),
        V::Int80Socket => int80_connect(args.target_sa(), false, steps),
        V::UdpSendmsgCmsgTos | V::Udp6SendmsgCmsgTclass => {
            udp_sendmsg_cmsg(args.target_sa(), args.num("count", Some(1)))
        }
        V::ConnectLoop => connect_loop(args),
        V::RaceSockaddr => race_sockaddr(args, extra),
        V::ParallelConnect => parallel_connect(args, extra),
        V::SignalStorm => signal_storm(args, extra),
        V::ScmRights => scm_rights(steps),
        V::StealFds => steal_fds(args, steps, extra),
        V::ListenServe => listen_serve(args, steps, extra),
        V::BindCheck => bind_check(args, steps),
        V::BulkHold => bulk_hold(args, extra),
        V::BindtodeviceLoopback4 => bindtodevice_loopback(args, steps, extra),
        V::BindtodeviceLo => bindtodevice_lo(args, steps),
        V::McastJoin => mcast_join(args, steps),
        V::UnixDgramSend => unix_dgram_send(args),
        V::UnixStreamCreds => unix_stream_creds(args, steps),
        V::UdpCapCmsg => udp_cap_cmsg(args),
        V::LoopbackSelftest => loopback_selftest(steps),
        V::UdpServe => udp_serve(args, extra),
    }
}
