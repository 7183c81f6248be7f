//! Servers in a test namespace that count what reached them: TCP listeners
//! ([`TcpCounter`], [`AcceptCounter`]), a UDP receiver and a TCP echo
//! server.

use std::io::Read;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::in_netns;

use super::sockets::{cvt, set_rcvtimeo, setsockopt_int, tcp_listen_socket};

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
