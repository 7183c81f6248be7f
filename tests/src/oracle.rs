//! The server-side oracle: what actually arrived in the server namespace.
//!
//! A leak is seen here even if the probe lies. Sockets are created on threads
//! that `setns()` into the server namespace; the loops then run on ordinary
//! threads (a socket stays in the namespace it was created in).
//!
//! * [`TcpCounter`]: a TCP listener that accepts, counts and drains connections
//!   ([`AcceptCounter`]: only counts, for many short connections).
//! * The sniffer: an `AF_PACKET`/`ETH_P_ALL` socket bound to the server veth,
//!   recording every incoming frame in parsed form.
//! * [`Oracle::settle`]: sends a fence datagram from the client namespace and
//!   waits until the sniffer saw it, proving the sniffer is alive and that
//!   earlier frames had time to arrive.

use std::collections::HashMap;
use std::io::Read;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::{in_netns, NetFixture, SERVER_V4};
use crate::sys::wait_until;

pub const ETHERTYPE_TAG: u16 = 0x88B5;

/// Transport protocol for [`Oracle::packets_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One parsed frame seen on the server veth (incoming only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Ip {
        v6: bool,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dst_port: Option<u16>,
        /// Identifier of an ICMP/ICMPv6 echo request.
        echo_id: Option<u16>,
        /// IPv4 options present (IHL > 5) or IPv6 extension headers before
        /// the upper-layer header.
        options: bool,
        /// Type of the IPv6 routing header (next header 43), if one is present.
        rthdr: Option<u8>,
        /// Source routed: an IPv4 LSRR/SSRR option or an IPv6 routing
        /// header (router alerts in MLD/IGMP do not count).
        routed: bool,
        /// TCP/UDP source port.
        src_port: Option<u16>,
        /// TCP segments: the flags byte and the MSS option (SYN segments
        /// carry it), so SYN-ACKs and the value they leak can be told.
        tcp: Option<TcpInfo>,
        /// IGMP (v1/v2/v3) and MLD (v1/v2) reports and leaves: the group
        /// addresses they name (kernel-generated packets no socket owns).
        groups: Vec<IpAddr>,
    },
    Tagged(Vec<u8>),
    Other(u16),
}

/// Walks the IPv6 extension headers (hop-by-hop 0, routing 43, destination
/// options 60, fragment 44) after the fixed header `p[..40]`. Returns the
/// upper-layer protocol, its offset in `p` (None for a non-first fragment or
/// a truncated chain), whether any extension header was present and the
/// routing header type.
fn ipv6_upper_layer(p: &[u8]) -> (u8, Option<usize>, bool, Option<u8>) {
    let mut next = p[6];
    let mut off = 40usize;
    let mut ext = false;
    let mut rthdr = None;
    // A bound on the chain length; real packets have a handful at most.
    for _ in 0..16 {
        match next {
            0 | 43 | 60 => {
                let (Some(&nh), Some(&len)) = (p.get(off), p.get(off + 1)) else {
                    return (next, None, true, rthdr);
                };
                if next == 43 {
                    rthdr = p.get(off + 2).copied();
                }
                ext = true;
                next = nh;
                off += (len as usize + 1) * 8;
            }
            44 => {
                let Some(h) = p.get(off..off + 8) else {
                    return (next, None, true, rthdr);
                };
                ext = true;
                next = h[0];
                off += 8;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    // Not the first fragment: no upper-layer header here.
                    return (next, None, ext, rthdr);
                }
            }
            _ => return (next, Some(off), ext, rthdr),
        }
    }
    (next, None, ext, rthdr)
}

/// True if the IPv4 options `opts` contain a loose (131) or strict (137)
/// source route.
fn ipv4_source_routed(opts: &[u8]) -> bool {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return false,
            1 => i += 1,
            131 | 137 => return true,
            _ => match opts.get(i + 1) {
                Some(&len) if len >= 2 => i += len as usize,
                _ => return false,
            },
        }
    }
    false
}

/// What a TCP header says beyond the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub flags: u8,
    pub mss: Option<u16>,
}

impl TcpInfo {
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// SYN and ACK set (and no RST).
    pub fn is_syn_ack(&self) -> bool {
        self.flags & (Self::SYN | Self::ACK | Self::RST) == Self::SYN | Self::ACK
    }
}

/// Flags and MSS option of the TCP header `t` (None if truncated).
fn tcp_info(t: &[u8]) -> Option<TcpInfo> {
    let hlen = ((*t.get(12)? >> 4) as usize) * 4;
    let flags = *t.get(13)?;
    let opts = t.get(20..hlen.max(20)).unwrap_or(&[]);
    let mut mss = None;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = opts.get(i + 1) else { break };
                if len < 2 {
                    break;
                }
                if kind == 2 && len == 4 {
                    mss = opts
                        .get(i + 2..i + 4)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]));
                }
                i += len as usize;
            }
        }
    }
    Some(TcpInfo { flags, mss })
}

/// Group addresses named by an IGMP message (`v6` false) or an MLD message
/// (ICMPv6, `v6` true): v1/v2 reports and leaves carry one, v3 / MLDv2
/// reports a list of group records.
fn membership_groups(v6: bool, m: &[u8]) -> Vec<IpAddr> {
    let addr = |b: &[u8]| -> Option<IpAddr> {
        if v6 {
            let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(Ipv6Addr::from(a).into())
        } else {
            let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some(Ipv4Addr::from(a).into())
        }
    };
    let (alen, single_at, v3) = match (v6, m.first()) {
        // IGMPv1/v2 report, v2 leave: group at offset 4.
        (false, Some(0x12 | 0x16 | 0x17)) => (4, 4, false),
        (false, Some(0x22)) => (4, 0, true),
        // MLDv1 report / done: address at offset 8.
        (true, Some(131 | 132)) => (16, 8, false),
        (true, Some(143)) => (16, 0, true),
        _ => return Vec::new(),
    };
    if !v3 {
        return m.get(single_at..).and_then(addr).into_iter().collect();
    }
    let Some(n) = m.get(6..8).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut off = 8;
    for _ in 0..n {
        let Some(rec) = m.get(off..off + 4 + alen) else {
            break;
        };
        let (aux, nsrc) = (
            rec[1] as usize,
            u16::from_be_bytes([rec[2], rec[3]]) as usize,
        );
        out.extend(addr(&rec[4..]));
        off += 4 + alen + nsrc * alen + aux * 4;
    }
    out
}

fn parse_frame(buf: &[u8]) -> Frame {
    if buf.len() < 14 {
        return Frame::Other(0);
    }
    let ethertype = u16::from_be_bytes([buf[12], buf[13]]);
    let p = &buf[14..];
    let l4 = |proto: u8, l4: &[u8], v6: bool| -> (Option<u16>, Option<u16>) {
        match proto {
            6 | 17 if l4.len() >= 4 => (Some(u16::from_be_bytes([l4[2], l4[3]])), None),
            1 if !v6 && l4.len() >= 8 && l4[0] == 8 => {
                (None, Some(u16::from_be_bytes([l4[4], l4[5]])))
            }
            58 if v6 && l4.len() >= 8 && l4[0] == 128 => {
                (None, Some(u16::from_be_bytes([l4[4], l4[5]])))
            }
            _ => (None, None),
        }
    };
    let src_port = |proto: u8, l4: &[u8]| match proto {
        6 | 17 if l4.len() >= 2 => Some(u16::from_be_bytes([l4[0], l4[1]])),
        _ => None,
    };
    match ethertype {
        0x0800 if p.len() >= 20 => {
            // The header length (IHL) covers any options: source-routed
            // packets carry LSRR/SSRR there.
            let ihl = ((p[0] & 0x0f) as usize) * 4;
            let proto = p[9];
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]).into();
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]).into();
            let first_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
            let upper = if ihl >= 20 && first_fragment {
                p.get(ihl..).unwrap_or(&[])
            } else {
                &[]
            };
            let (dst_port, echo_id) = l4(proto, upper, false);
            Frame::Ip {
                src_port: src_port(proto, upper),
                tcp: (proto == 6).then(|| tcp_info(upper)).flatten(),
                groups: if proto == 2 {
                    membership_groups(false, upper)
                } else {
                    Vec::new()
                },
                v6: false,
                src,
                dst,
                proto,
                dst_port,
                echo_id,
                options: ihl > 20,
                rthdr: None,
                routed: ihl > 20 && ipv4_source_routed(p.get(20..ihl).unwrap_or(&[])),
            }
        }
        0x86DD if p.len() >= 40 => {
            let mut s = [0u8; 16];
            s.copy_from_slice(&p[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&p[24..40]);
            let (proto, off, ext, rthdr) = ipv6_upper_layer(p);
            let upper = off.and_then(|o| p.get(o..)).unwrap_or(&[]);
            let (dst_port, echo_id) = l4(proto, upper, true);
            Frame::Ip {
                src_port: src_port(proto, upper),
                tcp: (proto == 6).then(|| tcp_info(upper)).flatten(),
                groups: if proto == 58 {
                    membership_groups(true, upper)
                } else {
                    Vec::new()
                },
                v6: true,
                src: Ipv6Addr::from(s).into(),
                dst: Ipv6Addr::from(d).into(),
                proto,
                dst_port,
                echo_id,
                options: ext,
                rthdr,
                routed: rthdr.is_some(),
            }
        }
        ETHERTYPE_TAG => Frame::Tagged(p.to_vec()),
        other => Frame::Other(other),
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

fn cvt(rc: libc::c_int, what: &str) -> libc::c_int {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
    rc
}

pub(crate) fn set_rcvtimeo(fd: libc::c_int, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid pointer and length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

pub(crate) fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) {
    // SAFETY: valid pointer and length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(rc, "setsockopt");
}

/// Creates a listening TCP socket (`v6only` applies to IPv6 binds). Must be
/// called on a thread in the desired namespace.
pub(crate) fn tcp_listen_socket(addr: SocketAddr, v6only: bool) -> TcpListener {
    let dom = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = cvt(
        unsafe { libc::socket(dom, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    );
    // SAFETY: fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, 16);
    // SAFETY: zeroed sockaddr storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: storage is large enough and aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only as i32);
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: valid sockaddr.
    let rc = unsafe {
        libc::bind(
            fd,
            &ss as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    cvt(rc, &format!("bind {addr}"));
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(fd, 128) }, "listen");
    let l = TcpListener::from(owned);
    l.set_nonblocking(true).expect("nonblocking listener");
    l
}

#[derive(Default)]
struct CounterState {
    peers: Vec<SocketAddr>,
    received: Vec<u8>,
}

/// A TCP listener in some namespace that accepts, counts and drains connections.
pub struct TcpCounter {
    pub addr: SocketAddr,
    state: Arc<Mutex<CounterState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpCounter {
    /// Binds `addr` in namespace `ns` (`v6only` only matters for IPv6 binds).
    pub fn bind(ns: &str, addr: SocketAddr, v6only: bool) -> TcpCounter {
        let listener = in_netns(ns, move || tcp_listen_socket(addr, v6only));
        let state = Arc::new(Mutex::new(CounterState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        st.lock().unwrap().peers.push(peer);
                        let st2 = st.clone();
                        thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                st2.lock().unwrap().received.extend_from_slice(&buf[..n]);
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpCounter {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Number of accepted connections so far.
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().peers.len()
    }

    /// Peer addresses of accepted connections.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.state.lock().unwrap().peers.clone()
    }

    /// Bytes received on all connections.
    pub fn received(&self) -> Vec<u8> {
        self.state.lock().unwrap().received.clone()
    }
}

impl Drop for TcpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP listener that accepts and immediately closes connections, only
/// counting them: for tens of thousands of short connections (one thread,
/// no per-connection work).
pub struct AcceptCounter {
    pub addr: SocketAddr,
    count: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptCounter {
    /// Binds `addr` in namespace `ns` (backlog 4096).
    pub fn bind(ns: &str, addr: SocketAddr) -> AcceptCounter {
        let listener = in_netns(ns, move || {
            let l = tcp_listen_socket(addr, true);
            // SAFETY: plain syscall on our listening socket.
            cvt(unsafe { libc::listen(l.as_raw_fd(), 4096) }, "listen");
            l
        });
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, sp) = (count.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        drop(conn);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        AcceptCounter {
            addr,
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for AcceptCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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
        let iface = fx.veth_server.clone();
        let sock = in_netns(&fx.server, move || {
            let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            // SAFETY: plain syscall.
            let fd = cvt(
                unsafe {
                    libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
                },
                "socket(AF_PACKET)",
            );
            // SAFETY: fresh descriptor we own.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let cname = std::ffi::CString::new(iface.clone()).unwrap();
            // SAFETY: valid C string.
            let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            assert!(
                ifindex != 0,
                "if_nametoindex({iface}) in server netns failed"
            );
            // SAFETY: zeroed sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: valid sockaddr_ll.
            let rc = unsafe {
                libc::bind(
                    fd,
                    &sll as *const _ as *const libc::sockaddr,
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            cvt(rc, "bind(AF_PACKET)");
            set_rcvtimeo(fd, Duration::from_millis(50));
            owned
        });
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (fr, sp) = (frames.clone(), stop.clone());
        let sniffer = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !sp.load(Ordering::Relaxed) {
                // SAFETY: zeroed sockaddr_ll is valid.
                let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
                let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: valid buffers.
                let n = unsafe {
                    libc::recvfrom(
                        sock.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut sll as *mut _ as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n <= 0 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                fr.lock().unwrap().push(parse_frame(&buf[..n as usize]));
            }
        });
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

/// One datagram received by a [`UdpReceiver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub payload: Vec<u8>,
    /// IPv4 TOS / IPv6 traffic class of the packet (IP_RECVTOS /
    /// IPV6_RECVTCLASS), when the kernel reported it.
    pub tos: Option<u8>,
}

/// A UDP socket in some namespace that records every datagram (with its
/// TOS / traffic class).
pub struct UdpReceiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpReceiver {
    /// Binds `addr` in namespace `ns`.
    pub fn bind(ns: &str, addr: SocketAddr) -> UdpReceiver {
        let sock = in_netns(ns, move || {
            let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
            let fd = s.as_raw_fd();
            if addr.is_ipv4() {
                setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
            } else {
                setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1);
            }
            set_rcvtimeo(fd, Duration::from_millis(50));
            s
        });
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, sp) = (got.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut cbuf = [0u64; 16];
            while !sp.load(Ordering::Relaxed) {
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                };
                // SAFETY: all-zero msghdr is valid; fields set below.
                let mut msg: libc::msghdr = unsafe { mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = mem::size_of_val(&cbuf) as _;
                // SAFETY: msg points to live buffers for the call.
                let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
                if n < 0 {
                    continue;
                }
                let mut tos = None;
                // SAFETY: walking the control buffer the kernel filled in.
                unsafe {
                    let mut c = libc::CMSG_FIRSTHDR(&msg);
                    while !c.is_null() {
                        let (lvl, ty) = ((*c).cmsg_level, (*c).cmsg_type);
                        let data = libc::CMSG_DATA(c);
                        if lvl == libc::IPPROTO_IP && ty == libc::IP_TOS {
                            tos = Some(*data);
                        } else if lvl == libc::IPPROTO_IPV6 && ty == libc::IPV6_TCLASS {
                            tos = Some(std::ptr::read_unaligned(data as *const i32) as u8);
                        }
                        c = libc::CMSG_NXTHDR(&msg, c);
                    }
                }
                g.lock().unwrap().push(Datagram {
                    payload: buf[..n as usize].to_vec(),
                    tos,
                });
            }
        });
        UdpReceiver {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams received so far.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn datagrams(&self) -> Vec<Datagram> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for UdpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct EchoState {
    connections: usize,
    bytes_in: usize,
    bytes_out: usize,
}

/// A TCP echo server in some namespace: every connection gets back what it
/// sends; the write side is shut down after the peer's.
pub struct TcpEcho {
    pub addr: SocketAddr,
    state: Arc<Mutex<EchoState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEcho {
    pub fn bind(ns: &str, addr: SocketAddr) -> TcpEcho {
        let listener = in_netns(ns, move || tcp_listen_socket(addr, true));
        let state = Arc::new(Mutex::new(EchoState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        st.lock().unwrap().connections += 1;
                        let st2 = st.clone();
                        thread::spawn(move || {
                            use std::io::Write;
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
                            let _ = conn.set_write_timeout(Some(Duration::from_secs(20)));
                            let mut buf = vec![0u8; 65536];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                st2.lock().unwrap().bytes_in += n;
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                                st2.lock().unwrap().bytes_out += n;
                            }
                            let _ = conn.shutdown(std::net::Shutdown::Write);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpEcho {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// (connections, bytes received, bytes echoed back).
    pub fn stats(&self) -> (usize, usize, usize) {
        let s = self.state.lock().unwrap();
        (s.connections, s.bytes_in, s.bytes_out)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers ARP requests for one IPv4 address on one interface with the
/// interface's MAC, like a cooperating host on the link would. Used to show
/// that packets addressed to 127.0.0.1 can be put on the wire.
pub struct ArpResponder {
    answered: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ArpResponder {
    pub fn start(ns: &str, iface: &str, ip: Ipv4Addr, mac: [u8; 6]) -> ArpResponder {
        const ETH_P_ARP: u16 = 0x0806;
        let iface = iface.to_string();
        let sock = in_netns(ns, move || {
            // SAFETY: plain syscall.
            let fd = cvt(
                unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        (ETH_P_ARP.to_be()) as libc::c_int,
                    )
                },
                "socket(AF_PACKET, ARP)",
            );
            // SAFETY: fresh descriptor we own.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let cname = std::ffi::CString::new(iface.clone()).unwrap();
            // SAFETY: valid C string.
            let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            assert!(ifindex != 0, "if_nametoindex({iface}) failed");
            // SAFETY: zeroed sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ARP.to_be();
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: valid sockaddr_ll.
            let rc = unsafe {
                libc::bind(
                    fd,
                    &sll as *const _ as *const libc::sockaddr,
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            cvt(rc, "bind(AF_PACKET, ARP)");
            set_rcvtimeo(fd, Duration::from_millis(50));
            owned
        });
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (an, sp) = (answered.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !sp.load(Ordering::Relaxed) {
                // SAFETY: valid buffer.
                let n = unsafe {
                    libc::recv(
                        sock.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n < 42 {
                    continue;
                }
                let f = &buf[..n as usize];
                // Ethernet/IPv4 ARP request for `ip`.
                if f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] || f[38..42] != ip.octets() {
                    continue;
                }
                let (sha, spa) = (&f[22..28], &f[28..32]);
                let mut r = Vec::with_capacity(42);
                r.extend_from_slice(sha);
                r.extend_from_slice(&mac);
                r.extend_from_slice(&ETH_P_ARP.to_be_bytes());
                r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
                r.extend_from_slice(&mac);
                r.extend_from_slice(&ip.octets());
                r.extend_from_slice(sha);
                r.extend_from_slice(spa);
                // SAFETY: valid buffer.
                let sent = unsafe {
                    libc::send(
                        sock.as_raw_fd(),
                        r.as_ptr() as *const libc::c_void,
                        r.len(),
                        0,
                    )
                };
                if sent > 0 {
                    an.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        ArpResponder {
            answered,
            stop,
            thread: Some(thread),
        }
    }

    /// ARP requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ArpResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArpResponder")
            .field("answered", &self.answered())
            .finish()
    }
}

impl Drop for ArpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 198, 51, 100, 2]);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn parses_tcp_and_udp_ports() {
        let f = parse_frame(&eth(0x0800, &ipv4(6, &[0x80, 0, 0x4e, 0x20, 0, 0, 0, 0])));
        assert!(matches!(
            f,
            Frame::Ip {
                v6: false,
                proto: 6,
                dst_port: Some(20000),
                ..
            }
        ));
        let f = parse_frame(&eth(0x0800, &ipv4(17, &[0x80, 0, 0x4e, 0x21])));
        assert!(matches!(
            f,
            Frame::Ip {
                proto: 17,
                dst_port: Some(20001),
                ..
            }
        ));
    }

    #[test]
    fn parses_icmp_echo_id_and_ignores_replies() {
        let f = parse_frame(&eth(0x0800, &ipv4(1, &[8, 0, 0, 0, 0x12, 0x34, 0, 1])));
        assert!(matches!(
            f,
            Frame::Ip {
                echo_id: Some(0x1234),
                ..
            }
        ));
        let f = parse_frame(&eth(0x0800, &ipv4(1, &[0, 0, 0, 0, 0x12, 0x34, 0, 1])));
        assert!(matches!(f, Frame::Ip { echo_id: None, .. }));
    }

    #[test]
    fn parses_icmpv6_echo_and_tagged_frames() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 58, 64];
        p.extend_from_slice(&SERVER_V4.to_ipv6_mapped().octets());
        p.extend_from_slice(&SERVER_V4.to_ipv6_mapped().octets());
        p.extend_from_slice(&[128, 0, 0, 0, 0xab, 0xcd, 0, 1]);
        let f = parse_frame(&eth(0x86DD, &p));
        assert!(matches!(
            f,
            Frame::Ip {
                v6: true,
                echo_id: Some(0xabcd),
                ..
            }
        ));
        assert_eq!(
            parse_frame(&eth(ETHERTYPE_TAG, b"TAG-1")),
            Frame::Tagged(b"TAG-1".to_vec())
        );
        assert_eq!(parse_frame(&[1, 2, 3]), Frame::Other(0));
    }

    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, rest.len() as u8, next, 64];
        p.extend_from_slice(&[0u8; 15]);
        p.push(1);
        p.extend_from_slice(&crate::netns::SERVER_V6.octets());
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn walks_ipv6_extension_headers_to_the_port() {
        // Segment routing header (type 4, two segments), then UDP.
        let mut rest = vec![17, 4, 4, 1, 1, 0, 0, 0];
        rest.extend_from_slice(&[0u8; 32]);
        rest.extend_from_slice(&[0x80, 0, 0x4e, 0x22, 0, 8, 0, 0]);
        let f = parse_frame(&eth(0x86DD, &ipv6(43, &rest)));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    v6: true,
                    proto: 17,
                    dst_port: Some(20002),
                    options: true,
                    rthdr: Some(4),
                    routed: true,
                    ..
                }
            ),
            "{f:?}"
        );
        // Hop-by-hop (8 bytes) + destination options (16 bytes) + TCP.
        let mut rest = vec![60, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&[6, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[0x80, 0, 0x4e, 0x23, 0, 0, 0, 0]);
        let f = parse_frame(&eth(0x86DD, &ipv6(0, &rest)));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    proto: 6,
                    dst_port: Some(20003),
                    options: true,
                    rthdr: None,
                    routed: false,
                    ..
                }
            ),
            "{f:?}"
        );
        // First fragment has the port, a later one does not.
        let first = [17, 0, 0, 1, 0, 0, 0, 7, 0x80, 0, 0x4e, 0x24];
        let f = parse_frame(&eth(0x86DD, &ipv6(44, &first)));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    proto: 17,
                    dst_port: Some(20004),
                    ..
                }
            ),
            "{f:?}"
        );
        let later = [17, 0, 0, 0x10, 0, 0, 0, 7, 0x80, 0, 0x4e, 0x24];
        let f = parse_frame(&eth(0x86DD, &ipv6(44, &later)));
        assert!(matches!(f, Frame::Ip { dst_port: None, .. }), "{f:?}");
        // Plain UDP: no options.
        let f = parse_frame(&eth(0x86DD, &ipv6(17, &[0x80, 0, 0x4e, 0x25])));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    dst_port: Some(20005),
                    options: false,
                    ..
                }
            ),
            "{f:?}"
        );
    }

    #[test]
    fn parses_syn_ack_flags_and_mss() {
        // Ports 20000 -> 40000, data offset 6 (MSS 1234), SYN+ACK.
        let mut t = vec![
            0x4e, 0x20, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0x60, 0x12, 0xff, 0xff,
        ];
        t.extend_from_slice(&[0, 0, 0, 0, 2, 4, 0x04, 0xd2]);
        let f = parse_frame(&eth(0x0800, &ipv4(6, &t)));
        let Frame::Ip {
            src_port: Some(20000),
            dst_port: Some(40000),
            tcp: Some(info),
            ..
        } = f
        else {
            panic!("{f:?}")
        };
        assert!(info.is_syn_ack());
        assert_eq!(info.mss, Some(1234));
        // A reset (RST+ACK, no options) is no SYN-ACK.
        let rst = [
            0x4e, 0x20, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x14, 0, 0, 0, 0, 0, 0,
        ];
        let f = parse_frame(&eth(0x0800, &ipv4(6, &rst)));
        assert!(
            matches!(f, Frame::Ip { tcp: Some(i), .. } if !i.is_syn_ack() && i.mss.is_none()),
            "{f:?}"
        );
    }

    #[test]
    fn parses_igmp_and_mld_groups() {
        // IGMPv3 report, two records (the first with one source).
        let mut m = vec![0x22, 0, 0, 0, 0, 0, 0, 2];
        m.extend_from_slice(&[1, 0, 0, 1, 239, 1, 2, 3, 198, 51, 100, 2]);
        m.extend_from_slice(&[4, 0, 0, 0, 239, 1, 2, 4]);
        let mut p = vec![0x46, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 224, 0, 0, 22]);
        p.extend_from_slice(&[148, 4, 0, 0]);
        p.extend_from_slice(&m);
        let f = parse_frame(&eth(0x0800, &p));
        let g: Vec<IpAddr> = vec![
            Ipv4Addr::new(239, 1, 2, 3).into(),
            Ipv4Addr::new(239, 1, 2, 4).into(),
        ];
        assert!(
            matches!(&f, Frame::Ip { groups, .. } if *groups == g),
            "{f:?}"
        );
        // IGMPv2 leave.
        let f = parse_frame(&eth(0x0800, &ipv4(2, &[0x17, 0, 0, 0, 239, 9, 9, 9])));
        assert!(
            matches!(&f, Frame::Ip { groups, .. } if *groups == vec![IpAddr::from(Ipv4Addr::new(239, 9, 9, 9))]),
            "{f:?}"
        );
        // MLDv2 report after a hop-by-hop header (router alert).
        let group = Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0, 0x1234);
        let mut rest = vec![58, 0, 5, 2, 0, 0, 1, 0];
        rest.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0]);
        rest.extend_from_slice(&group.octets());
        let f = parse_frame(&eth(0x86DD, &ipv6(0, &rest)));
        assert!(
            matches!(&f, Frame::Ip { groups, .. } if *groups == vec![IpAddr::from(group)]),
            "{f:?}"
        );
        // An echo request names no group.
        let f = parse_frame(&eth(0x0800, &ipv4(1, &[8, 0, 0, 0, 0, 1, 0, 1])));
        assert!(matches!(&f, Frame::Ip { groups, .. } if groups.is_empty()));
    }

    #[test]
    fn honours_ipv4_header_length() {
        // IHL 7: LSRR option (7 bytes) + 1 byte padding, then UDP.
        let mut p = vec![0x47, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 198, 51, 100, 2]);
        p.extend_from_slice(&[131, 7, 4, 127, 0, 0, 1, 0]);
        p.extend_from_slice(&[0x80, 0, 0x4e, 0x26, 0, 8, 0, 0]);
        let f = parse_frame(&eth(0x0800, &p));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    v6: false,
                    proto: 17,
                    dst_port: Some(20006),
                    options: true,
                    routed: true,
                    ..
                }
            ),
            "{f:?}"
        );
        // IHL 6: router alert (IGMP-style) is an option but no source route.
        let mut p = vec![0x46, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 224, 0, 0, 22]);
        p.extend_from_slice(&[148, 4, 0, 0, 0x22, 0, 0, 0]);
        let f = parse_frame(&eth(0x0800, &p));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    options: true,
                    routed: false,
                    ..
                }
            ),
            "{f:?}"
        );
        let f = parse_frame(&eth(0x0800, &ipv4(17, &[0x80, 0, 0x4e, 0x27])));
        assert!(matches!(f, Frame::Ip { options: false, .. }), "{f:?}");
    }
}
