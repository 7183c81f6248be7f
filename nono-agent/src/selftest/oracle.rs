//! The receiving side: what actually arrived at the test host. A leak is
//! decided here, never by what the probe reports.
//!
//! * a sniffer: an `AF_PACKET`/`ETH_P_ALL` socket on the server's veth end
//!   recording every incoming frame, parsed ([`super::frames`]);
//! * TCP listeners in the server namespace (and on the client namespace's
//!   loopback, for the controls that must keep working) that accept and
//!   count connections;
//! * an ARP responder answering for 127.0.0.1 on the server's veth end, as
//!   a cooperating host on a link would (without it, a datagram to
//!   127.0.0.1 forced out of an interface would never be sent);
//! * [`Oracle::settle`]: a fence datagram from the client namespace that the
//!   sniffer must see, proving it is alive and that earlier frames arrived.
//!
//! Sockets are created on threads that joined a namespace (a socket stays
//! in the namespace it was made in); one thread polls them all.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::frames::{parse_frame, proto_number, Frame, Proto};
use super::testhost::{in_netns, TestHost, TestHostError, SERVER_MAC};

/// The ARP ethertype.
pub const ETH_P_ARP: u16 = 0x0806;

/// What could not be set up or observed.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    #[error(transparent)]
    Ns(#[from] TestHostError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the oracle is not live: the sniffer did not see the fence datagram to port {0}")]
    NotLive(u16),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> OracleError {
    let what = what.into();
    move |source| OracleError::Io { what, source }
}

/// Which namespace a listener lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The server namespace, all addresses.
    Server,
    /// The client namespace's loopback (what a sandbox may reach).
    ClientLoopback,
}

#[derive(Default)]
struct Shared {
    frames: Mutex<Vec<Frame>>,
    /// Accepted connections per (side, port).
    accepted: Mutex<HashMap<(Side, u16), usize>>,
    listeners: Mutex<Vec<(Side, u16, TcpListener)>>,
    arp_answers: Mutex<usize>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The oracle of one test host.
pub struct Oracle {
    shared: Arc<Shared>,
    client: OwnedFd,
    server: OwnedFd,
    server_v4: Ipv4Addr,
    fence_port: AtomicU16,
    threads: Vec<JoinHandle<()>>,
}

impl Oracle {
    /// Starts the sniffer and the ARP responder on the server's veth end.
    pub fn start(host: &TestHost) -> Result<Oracle, OracleError> {
        let dev = host.addrs.veth_server.clone();
        let d = dev.clone();
        let sniff = in_netns(host.server(), move || {
            packet_socket(&d, libc::ETH_P_ALL as u16)
        })?
        .map_err(io_err(format!("AF_PACKET socket on {dev}")))?;
        let d = dev.clone();
        let arp = in_netns(host.server(), move || packet_socket(&d, ETH_P_ARP))?
            .map_err(io_err(format!("ARP socket on {dev}")))?;
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(thread::spawn(move || sniff_loop(&sniff, &s)));
        let s = shared.clone();
        threads.push(thread::spawn(move || arp_loop(&arp, &s)));
        let s = shared.clone();
        threads.push(thread::spawn(move || accept_loop(&s)));
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(io_err("dup netns fd"));
        Ok(Oracle {
            shared,
            client: dup(host.client())?,
            server: dup(host.server())?,
            server_v4: host.addrs.server_v4,
            fence_port: AtomicU16::new(60000),
            threads,
        })
    }

    /// Listens on TCP `port`: in the server namespace on every address
    /// (IPv4 and IPv6), or on the client namespace's 127.0.0.1 and ::1.
    pub fn listen_tcp(&self, side: Side, port: u16) -> Result<(), OracleError> {
        let (ns, addrs): (BorrowedFd<'_>, [IpAddr; 2]) = match side {
            Side::Server => (
                self.server.as_fd_borrowed(),
                [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
            ),
            Side::ClientLoopback => (
                self.client.as_fd_borrowed(),
                [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
            ),
        };
        for ip in addrs {
            let sa = SocketAddr::new(ip, port);
            let l = in_netns(ns, move || listen(sa))?.map_err(io_err(format!("listen on {sa}")))?;
            lock(&self.shared.listeners).push((side, port, l));
        }
        Ok(())
    }

    /// Connections accepted on `port` of `side` so far.
    pub fn accepted(&self, side: Side, port: u16) -> usize {
        lock(&self.shared.accepted)
            .get(&(side, port))
            .copied()
            .unwrap_or(0)
    }

    /// Incoming packets of `proto` to port `port` (any address, any
    /// options).
    pub fn packets_to(&self, proto: Proto, port: u16) -> usize {
        let want = proto_number(proto);
        self.count(|f| {
            matches!(f, Frame::Ip { proto: p, dst_port: Some(dp), .. } if *p == want && *dp == port)
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

    /// Incoming packets of `proto` to `dst`:`port` carrying an IPv4 source
    /// route or an IPv6 routing header.
    pub fn routed_packets_to(&self, proto: Proto, dst: IpAddr, port: u16) -> usize {
        let want = proto_number(proto);
        self.count(|f| {
            matches!(f, Frame::Ip { proto: p, dst: d, dst_port: Some(dp), routed: true, .. }
                if *p == want && *d == dst && *dp == port)
        })
    }

    /// Incoming ICMP (v6 false) or ICMPv6 echo requests with `id`.
    pub fn echo_requests(&self, v6: bool, id: u16) -> usize {
        self.count(
            |f| matches!(f, Frame::Ip { v6: fv6, echo_id: Some(e), .. } if *fv6 == v6 && *e == id),
        )
    }

    /// Incoming 0x88B5 frames whose payload starts with `tag`.
    pub fn tagged_frames(&self, tag: &str) -> usize {
        self.count(|f| matches!(f, Frame::Tagged(p) if p.starts_with(tag.as_bytes())))
    }

    /// ARP requests for 127.0.0.1 answered.
    pub fn arp_answers(&self) -> usize {
        *lock(&self.shared.arp_answers)
    }

    fn count(&self, pred: impl Fn(&Frame) -> bool) -> usize {
        lock(&self.shared.frames).iter().filter(|f| pred(f)).count()
    }

    /// Sends a fence datagram from the client namespace (from selftest, not
    /// a sandbox) and waits until the sniffer saw it, then a little more.
    pub fn settle(&self) -> Result<(), OracleError> {
        let port = self.fence_port.fetch_add(1, Ordering::Relaxed);
        let dst = SocketAddr::new(self.server_v4.into(), port);
        in_netns(self.client.as_fd_borrowed(), move || {
            UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"fence", dst))
        })?
        .map_err(io_err("fence datagram"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.packets_to(Proto::Udp, port) == 0 {
            if Instant::now() > deadline {
                return Err(OracleError::NotLive(port));
            }
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(150));
        Ok(())
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        lock(&self.shared.listeners).clear();
    }
}

/// Borrowing an `OwnedFd` as a `BorrowedFd` (named for readability).
trait AsFdBorrowed {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_>;
}

impl AsFdBorrowed for OwnedFd {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A raw packet socket for ethertype `proto` (host order) bound to `dev` in
/// the calling thread's namespace, with a 50 ms receive timeout (so the
/// loops notice `stop`). Shared with the tests' oracle.
pub fn packet_socket(dev: &str, proto: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned right after.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto.to_be()),
        )
    })?;
    // SAFETY: fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname =
        std::ffi::CString::new(dev).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: valid sockaddr_ll of the given size.
    cvt(unsafe {
        libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    set_rcvtimeo(fd, Duration::from_millis(50))?;
    Ok(owned)
}

fn set_rcvtimeo(fd: RawFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    };
    // SAFETY: valid pointer and length for a timeval option.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A non-blocking listener on `sa` (IPv6 ones v6-only, so both families
/// can listen on one port).
fn listen(sa: SocketAddr) -> io::Result<TcpListener> {
    let (ss, len) = super::sockaddr::storage(&sa);
    let domain = if sa.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the descriptor is owned right after.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fresh descriptor we own.
    let l = unsafe { TcpListener::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let opts: &[(libc::c_int, libc::c_int)] = if sa.is_ipv6() {
        &[
            (libc::SOL_SOCKET, libc::SO_REUSEADDR),
            (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        ]
    } else {
        &[(libc::SOL_SOCKET, libc::SO_REUSEADDR)]
    };
    for &(level, name) in opts {
        // SAFETY: valid pointer and length for an int option.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &one as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    // SAFETY: ss/len describe a valid sockaddr.
    cvt(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: plain syscall on our socket.
    cvt(unsafe { libc::listen(fd, 64) })?;
    Ok(l)
}

/// Reads one frame that arrived on `sock` (outgoing copies skipped) into
/// `buf`; `None` on timeout or error. Shared with the tests' sniffer.
pub fn recv_incoming<'a>(sock: &OwnedFd, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: valid buffers of the given sizes.
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
        return None;
    }
    buf.get(..n as usize)
}

fn sniff_loop(sock: &OwnedFd, s: &Shared) {
    let mut buf = vec![0u8; 65536];
    while !s.stop.load(Ordering::Relaxed) {
        if let Some(frame) = recv_incoming(sock, &mut buf) {
            let f = parse_frame(frame);
            lock(&s.frames).push(f);
        }
    }
}

/// The ARP reply a host owning `ip` at `mac` sends to `frame`, if `frame`
/// is an Ethernet/IPv4 ARP request for `ip`. Pure; shared with the tests'
/// ARP responder.
pub fn arp_reply(frame: &[u8], ip: Ipv4Addr, mac: [u8; 6]) -> Option<Vec<u8>> {
    let f = frame.get(..42)?;
    if f[12..14] != ETH_P_ARP.to_be_bytes()
        || f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1]
        || f[38..42] != ip.octets()
    {
        return None;
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
    Some(r)
}

/// Sends one frame on a bound packet socket; whether it went out.
pub fn send_frame(sock: &OwnedFd, frame: &[u8]) -> bool {
    // SAFETY: valid buffer.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
        )
    };
    sent > 0
}

/// Answers ARP requests for 127.0.0.1 with the server's MAC.
fn arp_loop(sock: &OwnedFd, s: &Shared) {
    answer_arp(sock, Ipv4Addr::LOCALHOST, SERVER_MAC, &s.stop, || {
        *lock(&s.arp_answers) += 1;
    });
}

/// Answers the ARP requests for `ip` that arrive on `sock` (a packet
/// socket with a receive timeout, from [`packet_socket`]) with `mac`, as a
/// cooperating host on the link would, until `stop` is set; `answered` is
/// called for each reply sent. Shared by selftest's oracle and the test
/// suite's responder.
pub fn answer_arp(
    sock: &OwnedFd,
    ip: Ipv4Addr,
    mac: [u8; 6],
    stop: &AtomicBool,
    mut answered: impl FnMut(),
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid buffer.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        let Some(frame) = usize::try_from(n).ok().and_then(|n| buf.get(..n)) else {
            continue;
        };
        if let Some(r) = arp_reply(frame, ip, mac) {
            if send_frame(sock, &r) {
                answered();
            }
        }
    }
}

/// Accepts on every listener, counts, and closes the connections.
fn accept_loop(s: &Shared) {
    while !s.stop.load(Ordering::Relaxed) {
        let mut got = Vec::new();
        for (side, port, l) in lock(&s.listeners).iter() {
            while let Ok((conn, _)) = l.accept() {
                drop(conn);
                got.push((*side, *port));
            }
        }
        let mut acc = lock(&s.accepted);
        for k in got {
            *acc.entry(k).or_insert(0) += 1;
        }
        drop(acc);
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 198, 51, 100, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    #[test]
    fn answers_only_arp_requests_for_its_address() {
        let mac = [2, 0, 0, 0, 0, 2];
        let r = arp_reply(&request([127, 0, 0, 1]), Ipv4Addr::LOCALHOST, mac).expect("reply");
        assert_eq!(&r[..6], &[2, 0, 0, 0, 0, 1], "to the asker");
        assert_eq!(&r[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&r[22..28], &mac);
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
        assert_eq!(&r[38..42], &[198, 51, 100, 1]);
        assert!(arp_reply(&request([127, 0, 0, 2]), Ipv4Addr::LOCALHOST, mac).is_none());
        assert!(arp_reply(&request([127, 0, 0, 1])[..30], Ipv4Addr::LOCALHOST, mac).is_none());
    }
}
