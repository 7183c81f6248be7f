//! Runs the attempt a `Vector` names: the network vectors through the
//! agent's library (`nono_agent::selftest::probe::run`, an exhaustive
//! `match` there: a vector added to the shared list without a decision does
//! not compile), the process and channel modes here.

use nono_tests::probe_vectors::Vector as V;
use serde_json::{json, Value};

use crate::args::{usage, Args};
use crate::attempt::{Attempt, Steps};
use crate::cgroup::{parent_cgroup, proc_root_cgroup, sub_cgroup};
use crate::detach::detach_bpf;
use crate::device::{bindtodevice_lo, bindtodevice_loopback, udp_cap_cmsg};
use crate::fds::{scm_rights, steal_fds};
use crate::inbound::{bind_check, bulk_hold, listen_serve, udp_serve};
use crate::loops::{connect_loop, parallel_connect, race_sockaddr};
use crate::multicast::mcast_join;
use crate::nocaps::hold_nocaps;
use crate::process::{daemonize, kill_agent};
use crate::selftest::loopback_selftest;
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
