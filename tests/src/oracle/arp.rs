//! An ARP responder on a test link.

use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::in_netns;

use super::sockets::{cvt, set_rcvtimeo};

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
