//! Receivers for the channel battery (`tests/tests/channels/`): the
//! test-host side of an inbound connection, a TCP receiver that holds a
//! connection without reading (so the sender's data stays queued), raw
//! SYNs, unix receivers that record the sender's credentials, and small
//! readers of per-namespace kernel state (`/proc/net/netstat`, `ss`).
//!
//! Each is created by the test outside any sandbox; what it records is the
//! oracle, whatever the sandboxed probe claims.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::{in_netns, NetFixture};
use crate::oracle::{set_rcvtimeo, setsockopt_int, tcp_listen_socket};
use crate::sockaddr;
use crate::sys;

/// What the test host got from connecting to a sandbox's listener.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// The three-way handshake completed.
    pub connected: bool,
    /// Bytes read before EOF / reset / the deadline.
    pub bytes: Vec<u8>,
    /// How the attempt ended (connect error, read error, "eof", "timeout").
    pub end: String,
}

/// Connects from namespace `ns` to `to` (short timeouts) and reads what the
/// listener sends until EOF, an error or `wait`.
pub fn connect_and_read(ns: &str, to: SocketAddr, wait: Duration) -> Inbound {
    in_netns(ns, move || {
        let mut s = match TcpStream::connect_timeout(&to, wait) {
            Ok(s) => s,
            Err(e) => {
                return Inbound {
                    end: format!("connect {to}: {e}"),
                    ..Default::default()
                }
            }
        };
        let mut got = Inbound {
            connected: true,
            ..Default::default()
        };
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                got.end = "timeout".into();
                break;
            }
            let _ = s.set_read_timeout(Some(left));
            match s.read(&mut buf) {
                Ok(0) => {
                    got.end = "eof".into();
                    break;
                }
                Ok(n) => got.bytes.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    got.end = "timeout".into();
                    break;
                }
                Err(e) => {
                    got.end = format!("read: {e}");
                    break;
                }
            }
        }
        got
    })
}

/// The one's-complement sum of `data` (16-bit big-endian words), folded.
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// A TCP SYN from `src_port` to `dst` with an MSS option of 1460 and a
/// checksum over the IPv4 / IPv6 pseudo-header.
fn syn_segment(src: IpAddr, src_port: u16, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let mut t = Vec::with_capacity(24);
    t.extend_from_slice(&src_port.to_be_bytes());
    t.extend_from_slice(&dst.port().to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    // Data offset 6 words (MSS option), SYN, window 64240.
    t.extend_from_slice(&[0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    t.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = Vec::new();
    match (src, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(t.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        }
        _ => panic!("SYN from {src} to {dst}: mixed families"),
    }
    let sum = !(csum_add(csum_add(0, &pseudo), &t) as u16);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

/// Sends `n` TCP SYNs (raw socket, distinct source ports from 40000)
/// from `src` in namespace `ns` to `dst`, 20 ms apart. `src` need not be
/// an address of that namespace (IP_TRANSPARENT): with a source nobody
/// owns, no reset ever answers the SYN-ACK, so the listener's request
/// queue stays full and, with `listen(fd, 0)`, every later SYN gets a
/// SYN-cookie SYN-ACK.
pub fn raw_syns(ns: &str, src: IpAddr, dst: SocketAddr, n: u16) {
    let name = ns.to_string();
    let fd = in_netns(ns, move || {
        let dom = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain syscall.
        let fd =
            unsafe { libc::socket(dom, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP) };
        assert!(
            fd >= 0,
            "raw TCP socket in {name}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let (level, transparent) = if dst.is_ipv4() {
            (libc::SOL_IP, libc::IP_TRANSPARENT)
        } else {
            (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
        };
        setsockopt_int(fd, level, transparent, 1);
        let (ss, len) = sockaddr::storage(&SocketAddr::new(src, 0));
        // SAFETY: valid sockaddr.
        let rc = unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) };
        assert!(
            rc == 0,
            "bind raw socket to {src} in {name}: {}",
            std::io::Error::last_os_error()
        );
        owned
    });
    // The kernel's port field of a raw socket's destination must be 0.
    let (ss, len) = sockaddr::storage(&SocketAddr::new(dst.ip(), 0));
    for i in 0..n {
        let seg = syn_segment(src, 40000 + i, dst, 0x1000_0000 + u32::from(i));
        // SAFETY: valid buffer and sockaddr.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                seg.as_ptr() as *const libc::c_void,
                seg.len(),
                0,
                &ss as *const _ as *const libc::sockaddr,
                len,
            )
        };
        assert!(
            rc == seg.len() as isize,
            "raw SYN to {dst}: {}",
            std::io::Error::last_os_error()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// How a [`HeldReceiver`]'s connection ended once it was read.
#[derive(Debug, Clone, Default)]
pub struct Drained {
    pub peer: Option<SocketAddr>,
    pub bytes: usize,
    /// "eof", "reset" (ECONNRESET), "timeout" or another error.
    pub end: String,
}

/// A TCP listener (in some namespace) with a tiny receive buffer that
/// accepts one connection and does not read from it until
/// [`HeldReceiver::drain`]: the sender's data stays in the sender's send
/// queue, as with a slow peer.
pub struct HeldReceiver {
    pub addr: SocketAddr,
    conn: Arc<Mutex<Option<(TcpStream, SocketAddr)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HeldReceiver {
    pub fn bind(ns: &str, addr: SocketAddr) -> HeldReceiver {
        let listener = in_netns(ns, move || {
            let l = tcp_listen_socket(addr, true);
            // Inherited by the accepted socket: a small window from the start.
            setsockopt_int(l.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
            l
        });
        let conn = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, sp) = (conn.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let mut slot = c.lock().unwrap();
                        if slot.is_none() {
                            *slot = Some((s, peer));
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HeldReceiver {
            addr,
            conn,
            stop,
            thread: Some(thread),
        }
    }

    /// The peer of the held connection, once accepted.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.conn.lock().unwrap().as_ref().map(|(_, p)| *p)
    }

    /// Reads the held connection until EOF, reset, or `idle` without data
    /// (at most `limit` in all).
    pub fn drain(&self, idle: Duration, limit: Duration) -> Drained {
        let Some((mut s, peer)) = self.conn.lock().unwrap().take() else {
            return Drained {
                end: "no connection was accepted".into(),
                ..Default::default()
            };
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(idle));
        let deadline = Instant::now() + limit;
        let mut d = Drained {
            peer: Some(peer),
            ..Default::default()
        };
        let mut buf = vec![0u8; 65536];
        loop {
            if Instant::now() >= deadline {
                d.end = "limit".into();
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => {
                    d.end = "eof".into();
                    break;
                }
                Ok(n) => d.bytes += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    d.end = "reset".into();
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    d.end = "timeout".into();
                    break;
                }
                Err(e) => {
                    d.end = format!("read: {e}");
                    break;
                }
            }
        }
        d
    }
}

impl Drop for HeldReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sender's credentials as the kernel reported them, and the `comm`
/// of that pid when they were received (the process may be gone later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub comm: Option<String>,
}

impl From<libc::ucred> for Cred {
    fn from(c: libc::ucred) -> Self {
        Cred {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
            comm: sys::comm(c.pid),
        }
    }
}

/// One unix message: payload and SCM_CREDENTIALS (SO_PASSCRED is set).
#[derive(Debug, Clone)]
pub struct UnixMsg {
    pub payload: Vec<u8>,
    pub cred: Option<Cred>,
    /// SO_PEERCRED of the connection it came on (stream sockets).
    pub peer: Option<Cred>,
}

/// recvmsg() of one message with its SCM_CREDENTIALS.
fn recv_with_cred(fd: libc::c_int) -> Option<(Vec<u8>, Option<Cred>)> {
    let mut buf = vec![0u8; 4096];
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n <= 0 {
        return None;
    }
    let mut cred = None;
    // SAFETY: walking the control buffer the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let u: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const _);
                cred = Some(u.into());
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    buf.truncate(n as usize);
    Some((buf, cred))
}

fn peer_cred(fd: libc::c_int) -> Option<Cred> {
    // SAFETY: all-zero ucred is valid.
    let mut u: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut u as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then(|| u.into())
}

/// A unix receiver (datagram or stream listener) at a path, with
/// SO_PASSCRED, recording every message and the sender's credentials.
pub struct UnixReceiver {
    pub path: PathBuf,
    got: Arc<Mutex<Vec<UnixMsg>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UnixReceiver {
    /// A datagram socket bound at `path` (mode `mode`).
    pub fn datagram(path: &Path, mode: u32) -> UnixReceiver {
        let s = UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        chmod(path, mode);
        setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1);
        set_rcvtimeo(s.as_raw_fd(), Duration::from_millis(50));
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, sp) = (got.clone(), stop.clone());
        let t = thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                if let Some((payload, cred)) = recv_with_cred(s.as_raw_fd()) {
                    g.lock().unwrap().push(UnixMsg {
                        payload,
                        cred,
                        peer: None,
                    });
                }
            }
        });
        UnixReceiver {
            path: path.to_path_buf(),
            got,
            stop,
            threads: vec![t],
        }
    }

    /// A stream listener at `path` (mode `mode`): every accepted
    /// connection's messages are recorded with SO_PEERCRED and
    /// SCM_CREDENTIALS.
    pub fn stream(path: &Path, mode: u32) -> UnixReceiver {
        let l = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        chmod(path, mode);
        // Accepted sockets inherit SO_PASSCRED from the listener.
        setsockopt_int(l.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1);
        l.set_nonblocking(true).expect("nonblocking unix listener");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, sp) = (got.clone(), stop.clone());
        let t = thread::spawn(move || {
            let mut conns = Vec::new();
            while !sp.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        setsockopt_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1);
                        set_rcvtimeo(c.as_raw_fd(), Duration::from_millis(50));
                        let peer = peer_cred(c.as_raw_fd());
                        let (g2, sp2) = (g.clone(), sp.clone());
                        conns.push(thread::spawn(move || {
                            while !sp2.load(Ordering::Relaxed) {
                                if let Some((payload, cred)) = recv_with_cred(c.as_raw_fd()) {
                                    g2.lock().unwrap().push(UnixMsg {
                                        payload,
                                        cred,
                                        peer: peer.clone(),
                                    });
                                }
                            }
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            conns.into_iter().for_each(|c| {
                let _ = c.join();
            });
        });
        UnixReceiver {
            path: path.to_path_buf(),
            got,
            stop,
            threads: vec![t],
        }
    }

    pub fn messages(&self) -> Vec<UnixMsg> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for UnixReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A counter of `/proc/net/netstat` (e.g. "TcpExt", "SyncookiesSent") in
/// namespace `ns` (read through `/proc/thread-self`: `/proc/self/net` is
/// the main thread's namespace).
pub fn netstat(ns: &str, group: &str, key: &str) -> Option<u64> {
    let text = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat").ok()
    })?;
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Lines of `ss -tanH` in the fixture's client namespace whose local
/// address is `addr`: the kernel's view of that end of a connection,
/// orphans and TIME_WAIT included.
pub fn tcp_sockets_with(fx: &NetFixture, addr: SocketAddr) -> Vec<String> {
    let ss = sys::require_tool("ss", "lists the client namespace's TCP sockets");
    let out = fx.run_in_client(&[ss.to_str().expect("utf-8 path"), "-tanH"]);
    assert!(out.status.success(), "ss -tanH: {}", out.describe());
    let want = match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    out.stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some(want.as_str()))
        .map(str::to_string)
        .collect()
}

/// Multicast groups no other run (or test) uses: an IPv4 group in
/// 239.0.0.0/8 (administratively scoped) and an IPv6 one in ff15::/16
/// (site-local, transient), both derived from the process id and a counter.
pub fn fresh_groups() -> (IpAddr, IpAddr) {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let v4 = Ipv4Addr::new(239, (pid >> 8) as u8, pid as u8, n as u8);
    let v6 = Ipv6Addr::new(0xff15, 0, 0, 0, 0, (pid >> 16) as u16, pid as u16, n as u16);
    (v4.into(), v6.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_groups_are_multicast_and_unique() {
        let (a4, a6) = fresh_groups();
        let (b4, b6) = fresh_groups();
        assert!(a4.is_multicast() && a6.is_multicast());
        assert_ne!(a4, b4);
        assert_ne!(a6, b6);
    }
}
