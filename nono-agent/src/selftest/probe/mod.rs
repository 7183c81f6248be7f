//! The probe side of the network vectors: the attempts themselves, run in
//! the sandbox by `nono-agent __probe` (selftest) and by the tests'
//! `nono-probe`. Each attempt reports what the *client* saw; nobody trusts
//! that report to decide a leak (the receiving side does), it only explains.
//!
//! One module per family: `connect` (TCP, UDP, io_uring), `raw` (raw IP,
//! ping, AF_PACKET), `int80` (i386 system calls), `reroute` (routing
//! options, loopback forced out of an interface), on the helpers in
//! `attempt` and `sock`. [`run`] maps a [`Vector`] to its attempt.

pub mod attempt;
pub mod connect;
pub mod int80;
pub mod raw;
pub mod reroute;
pub mod sock;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::selftest::vectors::Vector as V;
use attempt::{Attempt, Steps};

/// What one network attempt is aimed at (the probe's `--target`, `--port`,
/// ... options). Missing values make the attempt fail with EINVAL.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetArgs {
    pub target: Option<IpAddr>,
    pub port: Option<u16>,
    /// ICMP echo identifier.
    pub id: Option<u16>,
    /// The interface AF_PACKET frames and loopback-on-interface datagrams
    /// go out of.
    pub iface: Option<String>,
    /// Tag carried by AF_PACKET frames.
    pub tag: Option<String>,
    pub count: Option<usize>,
    /// An address the sandbox may reach (connected-socket vectors connect
    /// there first).
    pub proxy_endpoint: Option<SocketAddr>,
    pub bytes: Option<usize>,
}

/// Returns the value or makes the attempt fail with "needs --KEY".
macro_rules! need {
    ($v:expr, $opt:expr, $key:literal) => {
        match $opt {
            Some(x) => x,
            None => return Some(Attempt::invalid(&format!("vector {} needs --{}", $v, $key))),
        }
    };
}

/// Returns the Ok value or the attempt in the Err.
macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(x) => x,
            Err(a) => return Some(a),
        }
    };
}

/// Performs `vector` if it is a network attempt this module implements
/// (every [`crate::selftest::vectors::NETWORK_VECTORS`] row, and the
/// loopback and proxy traffic that must keep working); `None` for the
/// process and channel modes, which only the tests' probe has.
pub fn run(
    vector: V,
    a: &NetArgs,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Option<Attempt> {
    use connect::*;
    use reroute::*;
    let target = || a.target.ok_or_else(|| Attempt::invalid("needs --target"));
    let port = || a.port.ok_or_else(|| Attempt::invalid("needs --port"));
    let sa = || Ok::<_, Attempt>(SocketAddr::new(target()?, port()?));
    let lo4 = || port().map(|p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p));
    let lo6 = || port().map(|p| SocketAddr::new(Ipv6Addr::LOCALHOST.into(), p));
    let mapped = || Ok::<_, Attempt>(SocketAddr::new(sock::map_v4(target()?), port()?));
    let count = |d: usize| a.count.unwrap_or(d);
    Some(match vector {
        V::Tcp4 | V::Tcp6 => tcp_connect(attempt!(sa()), 0),
        V::TcpV4mapped => tcp_connect(attempt!(mapped()), 0),
        V::TcpNonblock => tcp_nonblock(attempt!(sa())),
        V::TcpFastopen => tcp_fastopen(attempt!(sa())),
        V::UdpSendto | V::Udp6Sendto => udp_sendto(attempt!(sa())),
        V::V4mappedUdpSendto => udp_sendto(attempt!(mapped())),
        V::UdpSendmsg => udp_sendmsg(attempt!(sa())),
        V::UdpSendmmsg => udp_sendmmsg(attempt!(sa()), count(4)),
        V::UdpConnectSend => udp_connect_send(attempt!(sa())),
        V::UdpConnectedSendto => udp_connected_sendto(attempt!(sa()), a.proxy_endpoint),
        V::IoUringConnect => io_uring_connect(attempt!(sa())),
        V::IoUringSendmsg => io_uring_sendmsg(attempt!(sa())),
        V::RawSocket | V::Raw6Socket => {
            raw::icmp_echo(attempt!(target()), need!(vector, a.id, "id"), true)
        }
        V::PingSocket | V::Ping6Socket => {
            raw::icmp_echo(attempt!(target()), need!(vector, a.id, "id"), false)
        }
        V::AfPacket => raw::af_packet(
            need!(vector, a.iface.as_deref(), "iface"),
            need!(vector, a.tag.as_deref(), "tag"),
        ),
        V::Mptcp => tcp_connect(attempt!(sa()), sock::IPPROTO_MPTCP),
        V::Loopback4 => tcp_connect(attempt!(lo4()), 0),
        V::Loopback6 => tcp_connect(attempt!(lo6()), 0),
        V::LoopbackV4mapped => tcp_connect(
            SocketAddr::new(sock::map_v4(Ipv4Addr::LOCALHOST.into()), attempt!(port())),
            0,
        ),
        V::Loopback127002 => tcp_connect(
            SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), attempt!(port())),
            0,
        ),
        V::Proxy => tcp_connect(need!(vector, a.proxy_endpoint, "proxy-endpoint"), 0),
        V::UdpProxySend => udp_connect_send(need!(vector, a.proxy_endpoint, "proxy-endpoint")),
        V::TcpProxyBulk => tcp_bulk(
            need!(vector, a.proxy_endpoint, "proxy-endpoint"),
            a.bytes.unwrap_or(1 << 20),
        ),
        V::Srh6UdpSockopt => routed_udp_sockopt(
            attempt!(lo6()),
            &attempt!(srh_opt(attempt!(target()))),
            steps,
            extra,
        ),
        V::Rh2UdpSockopt => {
            let segment = attempt!(v6_target(attempt!(target())));
            let o = RouteOpt {
                level: libc::IPPROTO_IPV6,
                name: libc::IPV6_RTHDR,
                bytes: rh2(segment),
                label: "IPV6_RTHDR (type 2)",
            };
            routed_udp_sockopt(attempt!(lo6()), &o, steps, extra)
        }
        V::Srh6TcpSockopt => routed_tcp_sockopt(
            attempt!(lo6()),
            &attempt!(srh_opt(attempt!(target()))),
            steps,
            extra,
        ),
        V::Srh6UdpConnectSend => routed_udp_connect_sockopt(
            attempt!(lo6()),
            &attempt!(srh_opt(attempt!(target()))),
            steps,
            extra,
        ),
        V::Srh6UdpCmsg => routed_udp_cmsg(
            None,
            attempt!(lo6()),
            &attempt!(srh_opt(attempt!(target()))),
            steps,
            extra,
        ),
        V::Srh6UdpPktoptions => {
            routed_udp_pktoptions(attempt!(lo6()), attempt!(target()), steps, extra)
        }
        V::Lsrr4TcpSockopt => routed_tcp_sockopt(
            attempt!(lo4()),
            &attempt!(srr4_opt(131, attempt!(target()), libc::IP_OPTIONS)),
            steps,
            extra,
        ),
        V::Lsrr4UdpSockopt | V::Ssrr4UdpSockopt => {
            let kind = if vector == V::Lsrr4UdpSockopt {
                131
            } else {
                137
            };
            routed_udp_sockopt(
                attempt!(lo4()),
                &attempt!(srr4_opt(kind, attempt!(target()), libc::IP_OPTIONS)),
                steps,
                extra,
            )
        }
        V::Lsrr4UdpCmsg => routed_udp_cmsg(
            None,
            attempt!(lo4()),
            &attempt!(srr4_opt(131, attempt!(target()), libc::IP_RETOPTS)),
            steps,
            extra,
        ),
        V::Lsrr4UdpConnectedCmsg => {
            let iface = need!(vector, a.iface.as_deref(), "iface");
            let lo = attempt!(lo4());
            routed_udp_cmsg(
                Some((lo, sock::iface_addr4(iface).map(IpAddr::V4))),
                lo,
                &attempt!(srr4_opt(131, attempt!(target()), libc::IP_RETOPTS)),
                steps,
                extra,
            )
        }
        V::UnicastIfLoopback4 | V::PktinfoLoopback4 => loopback_on_iface(
            attempt!(port()),
            need!(vector, a.iface.as_deref(), "iface"),
            vector == V::PktinfoLoopback4,
            count(3),
            steps,
        ),
        V::UdpConnectedCmsgTos | V::Udp6ConnectedCmsgTclass => {
            udp_connected_cmsg(attempt!(sa()), count(1))
        }
        V::UdpSendmsgCmsgTos | V::Udp6SendmsgCmsgTclass => {
            udp_sendmsg_cmsg(attempt!(sa()), count(1))
        }
        V::Int80Socketcall => int80::int80_connect(attempt!(sa()), true, steps),
        V::Int80Socket => int80::int80_connect(attempt!(sa()), false, steps),
        // Process, host-protection and channel modes: the tests' probe.
        V::Daemonize
        | V::SubCgroup
        | V::ParentCgroup
        | V::DetachBpf
        | V::KillAgent
        | V::ProcRootCgroup
        | V::ConnectLoop
        | V::RaceSockaddr
        | V::ParallelConnect
        | V::SignalStorm
        | V::ScmRights
        | V::StealFds
        | V::HoldNocaps
        | V::ListenServe
        | V::BindCheck
        | V::BulkHold
        | V::BindtodeviceLoopback4
        | V::BindtodeviceLo
        | V::McastJoin
        | V::UnixDgramSend
        | V::UnixStreamCreds
        | V::UdpCapCmsg
        | V::LoopbackSelftest
        | V::UdpServe => return None,
    })
}

/// One attempt of a batch (`nono-agent __probe --plan JSON`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanItem {
    pub vector: String,
    pub args: NetArgs,
}

/// Runs every item at once, one thread each (a blocked or timed-out attempt
/// does not delay the others), and returns one JSON object per item, in
/// order: `vector`, `ok`, `errno`, `detail`, `refused_at`, `steps`, and what
/// the probe sees of its sandbox (`sandbox` = NONO_SANDBOX_ID, `enforcer` =
/// NONO_ENFORCER, `uid`).
pub fn run_batch(items: &[PlanItem]) -> Vec<Value> {
    let handles: Vec<_> = items
        .iter()
        .cloned()
        .map(|item| {
            std::thread::spawn(move || {
                let mut steps = Steps(Vec::new());
                let mut extra = serde_json::Map::new();
                let attempt = match item.vector.parse::<V>() {
                    Ok(v) => run(v, &item.args, &mut steps, &mut extra).unwrap_or_else(|| {
                        Attempt::invalid(&format!("{v} is not a network vector"))
                    }),
                    Err(e) => Attempt::invalid(&e.to_string()),
                };
                (item.vector, attempt, steps, extra)
            })
        })
        .collect();
    let env = |k: &str| std::env::var(k).ok();
    handles
        .into_iter()
        .zip(items)
        .map(|(h, item)| {
            let (vector, a, steps, extra) = h.join().unwrap_or_else(|_| {
                (
                    item.vector.clone(),
                    Attempt::invalid("the attempt's thread panicked"),
                    Steps(Vec::new()),
                    serde_json::Map::new(),
                )
            });
            let mut out = serde_json::Map::new();
            out.insert("vector".into(), Value::from(vector));
            out.insert("ok".into(), Value::from(a.ok));
            out.insert("errno".into(), serde_json::json!(a.errno));
            out.insert("detail".into(), Value::from(a.detail));
            out.insert("refused_at".into(), Value::Null);
            out.insert("steps".into(), Value::Array(steps.0));
            out.extend(extra);
            out.insert("sandbox".into(), serde_json::json!(env("NONO_SANDBOX_ID")));
            out.insert("enforcer".into(), serde_json::json!(env("NONO_ENFORCER")));
            // SAFETY: geteuid never fails.
            out.insert("uid".into(), Value::from(unsafe { libc::geteuid() }));
            Value::Object(out)
        })
        .collect()
}
