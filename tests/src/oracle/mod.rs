//! The server-side oracle: what actually arrived in the server namespace.
//!
//! A leak is seen here even if the probe lies. Sockets are created on threads
//! that `setns()` into the server namespace; the loops then run on ordinary
//! threads (a socket stays in the namespace it was created in).
//!
//! * [`TcpCounter`]: a TCP listener that accepts, counts and drains connections
//!   ([`AcceptCounter`]: only counts, for many short connections).
//! * `sniffer`: an `AF_PACKET`/`ETH_P_ALL` socket bound to the server veth,
//!   recording every incoming frame in parsed form.
//! * [`Oracle::settle`]: sends a fence datagram from the client namespace and
//!   waits until the sniffer saw it, proving the sniffer is alive and that
//!   earlier frames had time to arrive.
//!
//! Split by job: `frames` (in the agent's library, shared with `nono-agent
//! selftest`) parses what the sniffer captured (IP/TCP/UDP,
//! SYN-ACK MSS, ICMP echo, IGMP/MLD), `sniffer` captures, `servers`
//! holds the listeners and receivers, `arp` the ARP responder and
//! `sockets` the raw socket helpers they share. Everything is re-exported
//! here, so `crate::oracle::X` paths are unchanged.

mod arp;
mod servers;
mod sniffer;
mod sockets;

pub use arp::ArpResponder;
pub use nono_agent::selftest::frames::{Frame, Proto, TcpInfo, ETHERTYPE_TAG};
pub use servers::{AcceptCounter, Datagram, TcpCounter, TcpEcho, UdpReceiver};
pub(crate) use sockets::{set_rcvtimeo, setsockopt_int, tcp_listen_socket};

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::{in_netns, NetFixture, SERVER_V4};
use crate::sys::wait_until;

use nono_agent::selftest::frames::proto_number;

/// The server oracle for one [`NetFixture`].
pub struct Oracle {
    server_ns: String,
    client_ns: String,
    frames: Arc<Mutex<Vec<Frame>>>,
    listeners: Mutex<HashMap<u16, Vec<TcpCounter>>>,
    stop: Arc<AtomicBool>,
    sniffer: Option<JoinHandle<()>>,
    fence_port: std::sync::atomic::AtomicU16,
}

impl Oracle {
    /// Starts the sniffer on the fixture's server veth.
    pub fn start(fx: &NetFixture) -> Oracle {
        let sock = sniffer::open(&fx.server, fx.veth_server.clone());
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sniffer = sniffer::spawn(sock, frames.clone(), stop.clone());
        Oracle {
            server_ns: fx.server.clone(),
            client_ns: fx.client.clone(),
            frames,
            listeners: Mutex::new(HashMap::new()),
            stop,
            sniffer: Some(sniffer),
            fence_port: std::sync::atomic::AtomicU16::new(60000),
        }
    }

    /// Listens on TCP `port` in the server namespace, IPv4 (0.0.0.0, which
    /// includes the proxy address on lo) and IPv6 ([::], v6only).
    pub fn listen_tcp(&self, port: u16) {
        let v4 = TcpCounter::bind(
            &self.server_ns,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            true,
        );
        let v6 = TcpCounter::bind(
            &self.server_ns,
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
            true,
        );
        self.listeners.lock().unwrap().insert(port, vec![v4, v6]);
    }

    /// Connections accepted on `port` (both families).
    pub fn tcp_connections(&self, port: u16) -> usize {
        self.listeners
            .lock()
            .unwrap()
            .get(&port)
            .map(|ls| ls.iter().map(TcpCounter::count).sum())
            .unwrap_or(0)
    }

    /// Peers of connections accepted on `port`.
    pub fn tcp_peers(&self, port: u16) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .unwrap()
            .get(&port)
            .map(|ls| ls.iter().flat_map(TcpCounter::peers).collect())
            .unwrap_or_default()
    }

    /// Incoming IPv4/IPv6 packets of `proto` to destination port `port`.
    pub fn packets_to(&self, proto: Proto, port: u16) -> usize {
        let want = proto_number(proto);
        self.count(|f| {
            matches!(f, Frame::Ip { proto: p, dst_port: Some(dp), .. } if *p == want && *dp == port)
        })
    }

    /// Incoming ICMP (v6=false) or ICMPv6 (v6=true) echo requests with `id`.
    pub fn echo_requests(&self, v6: bool, id: u16) -> usize {
        self.count(
            |f| matches!(f, Frame::Ip { v6: fv6, echo_id: Some(e), .. } if *fv6 == v6 && *e == id),
        )
    }

    /// Incoming frames of ethertype 0x88B5 whose payload starts with `tag`.
    pub fn tagged_frames(&self, tag: &str) -> usize {
        self.count(|f| matches!(f, Frame::Tagged(p) if p.starts_with(tag.as_bytes())))
    }

    /// Total incoming frames recorded.
    pub fn frame_count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    /// Frames that are IP packets to `dst` (for diagnostics).
    pub fn frames_to(&self, dst: IpAddr) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| matches!(f, Frame::Ip { dst: d, .. } if *d == dst))
            .cloned()
            .collect()
    }

    /// Position in the frame log; pass to the `*_since` methods to look only
    /// at frames recorded afterwards.
    pub fn mark(&self) -> usize {
        self.frame_count()
    }

    /// Every frame recorded since `mark`.
    pub fn frames_since(&self, mark: usize) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .skip(mark)
            .cloned()
            .collect()
    }

    /// Incoming source-routed IP packets (IPv4 LSRR/SSRR, IPv6 routing
    /// header) recorded since `mark`, whatever their port.
    pub fn routed_since(&self, mark: usize) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .skip(mark)
            .filter(|f| matches!(f, Frame::Ip { routed: true, .. }))
            .cloned()
            .collect()
    }

    /// Incoming packets of `proto` to `dst`:`port` that carry an IPv4 source
    /// route or an IPv6 routing header: proof that a routing option took
    /// effect.
    pub fn routed_packets_to(&self, proto: Proto, dst: IpAddr, port: u16) -> usize {
        let want = proto_number(proto);
        self.count(|f| {
            matches!(f, Frame::Ip { proto: p, dst: d, dst_port: Some(dp), routed: true, .. }
                if *p == want && *d == dst && *dp == port)
        })
    }

    /// Incoming packets of `proto` to exactly `dst`:`port`.
    pub fn packets_to_addr(&self, proto: Proto, dst: IpAddr, port: u16) -> usize {
        let want = proto_number(proto);
        self.count(|f| {
            matches!(f, Frame::Ip { proto: p, dst: d, dst_port: Some(dp), .. }
                if *p == want && *d == dst && *dp == port)
        })
    }

    /// Incoming IP packets to destination port `port` (any protocol with
    /// ports, any address), for diagnostics.
    pub fn frames_to_port(&self, port: u16) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| matches!(f, Frame::Ip { dst_port: Some(p), .. } if *p == port))
            .cloned()
            .collect()
    }

    /// Incoming TCP segments from source port `port` (any address) with
    /// SYN and ACK set, as their MSS option (None: no MSS option): the
    /// answers a listener on that port gave, cookie SYN-ACKs included.
    pub fn syn_acks_from(&self, port: u16) -> Vec<Option<u16>> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter_map(|f| match f {
                Frame::Ip {
                    src_port: Some(sp),
                    tcp: Some(t),
                    ..
                } if *sp == port && t.is_syn_ack() => Some(t.mss),
                _ => None,
            })
            .collect()
    }

    /// Incoming TCP segments from source port `port` carrying data or SYN
    /// (any flags but a bare ACK/RST), for diagnostics.
    pub fn tcp_from_port(&self, port: u16) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(
                |f| matches!(f, Frame::Ip { src_port: Some(sp), tcp: Some(_), .. } if *sp == port),
            )
            .cloned()
            .collect()
    }

    /// Incoming IGMP / MLD reports and leaves that name `group`.
    pub fn membership_reports(&self, group: IpAddr) -> usize {
        self.count(|f| matches!(f, Frame::Ip { groups, .. } if groups.contains(&group)))
    }

    /// Every group named by incoming IGMP / MLD messages since `mark`, for
    /// diagnostics.
    pub fn membership_groups_since(&self, mark: usize) -> Vec<IpAddr> {
        self.frames_since(mark)
            .into_iter()
            .flat_map(|f| match f {
                Frame::Ip { groups, .. } => groups,
                _ => Vec::new(),
            })
            .collect()
    }

    fn count(&self, pred: impl Fn(&Frame) -> bool) -> usize {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| pred(f))
            .count()
    }

    /// Barrier: sends a UDP fence datagram from the client namespace (from this
    /// test process, not from a sandbox) and waits until the sniffer saw it,
    /// then waits a little more. Panics if the sniffer is not seeing traffic.
    pub fn settle(&self) {
        let port = self.fence_port.fetch_add(1, Ordering::Relaxed);
        in_netns(&self.client_ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("fence socket");
            s.send_to(b"fence", SocketAddr::new(SERVER_V4.into(), port))
                .expect("fence send");
        });
        let seen = wait_until(Duration::from_secs(5), || {
            self.packets_to(Proto::Udp, port) > 0
        });
        assert!(
            seen,
            "oracle is not live: the sniffer did not see the fence datagram to port {port}"
        );
        thread::sleep(Duration::from_millis(150));
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sniffer.take() {
            let _ = t.join();
        }
        self.listeners.lock().unwrap().clear();
    }
}
