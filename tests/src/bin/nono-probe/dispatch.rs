//! Runs the attempt a `Vector` names: the network vectors through the
//! agent's library (`nono_agent::selftest::probe::run`, an exhaustive
//! `match` there: a vector added to the shared list without a decision does
//! not compile), the process and channel modes here.

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
    if let Some(a) = nono_agent::selftest::probe::run(vector, &args.net(), steps, extra) {
        return a;
    }
    match vector {
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
        // Every network vector is run by the library above.
        _ => usage(&format!("vector {vector}: no implementation")),
    }
}
