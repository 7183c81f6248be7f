//! What arrived at the test host for one attempt: the oracle's counts,
//! attributed by the attempt's port, ICMP id or frame tag.

use super::frames::Proto;
use super::oracle::{Oracle, OracleError, Side};
use super::plan::{target_of, Item, Phase};
use super::report::Seen;
use super::testhost::Addressing;
use super::vectors::{NetVector, Observe, Vector};

/// Listeners for every TCP attempt, control and endpoint of every phase.
pub fn listen_all(
    o: &Oracle,
    items: &[Item],
    phases: &[Phase],
    a: &Addressing,
) -> Result<(), String> {
    let err = |e: OracleError| format!("oracle listeners: {}", crate::util::chain(&e));
    for &phase in phases {
        o.listen_tcp(Side::Server, phase.endpoint(a).port())
            .map_err(err)?;
        for (i, item) in items.iter().enumerate() {
            match item {
                Item::Escape(v) if matches!(v.observe, Observe::Tcp | Observe::RoutedTcp) => {
                    o.listen_tcp(Side::Server, phase.port(i)).map_err(err)?
                }
                Item::Control(Vector::Loopback4 | Vector::Loopback6) => o
                    .listen_tcp(Side::ClientLoopback, phase.port(i))
                    .map_err(err)?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// Proof that the mechanism worked outside (see `report::judge_baseline`).
pub fn proof(o: &Oracle, v: &NetVector, phase: Phase, i: usize, a: &Addressing) -> Seen {
    let port = phase.port(i);
    match v.observe {
        Observe::RoutedTcp | Observe::RoutedUdp => {
            let proto = if v.observe == Observe::RoutedTcp {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            let target = target_of(v, a);
            let n = o.routed_packets_to(proto, target, port);
            Seen {
                count: n,
                what: format!("{n} {proto:?} packets to {target}:{port} carrying a routing option"),
            }
        }
        Observe::WireLoopbackUdp => {
            let n = o.packets_to_addr(Proto::Udp, std::net::Ipv4Addr::LOCALHOST.into(), port);
            Seen {
                count: n,
                what: format!(
                    "{n} UDP packets to 127.0.0.1:{port} on the wire ({} ARP answers for 127.0.0.1)",
                    o.arp_answers()
                ),
            }
        }
        _ => observed(o, v, phase, i),
    }
}

/// What arrived for attempt `i` of `phase`: packets and connections to its
/// port (any address, any options), echo requests with its id, frames
/// with its tag.
pub fn observed(o: &Oracle, v: &NetVector, phase: Phase, i: usize) -> Seen {
    let port = phase.port(i);
    let (count, what) = match v.observe {
        Observe::Tcp | Observe::RoutedTcp => {
            let p = o.packets_to(Proto::Tcp, port);
            let c = o.accepted(Side::Server, port);
            (
                p + c,
                format!("{p} TCP packets to port {port}, {c} accepted connections"),
            )
        }
        Observe::Udp | Observe::RoutedUdp | Observe::WireLoopbackUdp => {
            let p = o.packets_to(Proto::Udp, port);
            (p, format!("{p} UDP packets to port {port}"))
        }
        Observe::Icmp4Echo | Observe::Icmp6Echo => {
            let v6 = v.observe == Observe::Icmp6Echo;
            let id = phase.id(i);
            let p = o.echo_requests(v6, id);
            (
                p,
                format!(
                    "{p} ICMP{} echo requests with id {id}",
                    if v6 { "v6" } else { "" }
                ),
            )
        }
        Observe::EtherTag => {
            let tag = phase.tag(i);
            let p = o.tagged_frames(&tag);
            (p, format!("{p} 0x88b5 frames tagged {tag}"))
        }
    };
    Seen { count, what }
}

/// What a control reached: connections accepted on the client's loopback
/// (loopback4/6) or at the allowed endpoint (proxy).
pub fn control_seen(o: &Oracle, c: Vector, phase: Phase, i: usize) -> Seen {
    match c {
        Vector::Proxy => {
            let port = 20000 + phase.index() * 100 + 99;
            let n = o.accepted(Side::Server, port);
            Seen {
                count: n,
                what: format!("{n} connections accepted at the allowed endpoint (port {port})"),
            }
        }
        _ => {
            let port = phase.port(i);
            let n = o.accepted(Side::ClientLoopback, port);
            Seen {
                count: n,
                what: format!("{n} connections accepted on loopback port {port}"),
            }
        }
    }
}
