//! The sniffer: an `AF_PACKET`/`ETH_P_ALL` socket bound to the server veth
//! that records every incoming frame in parsed form, so the oracle sees a
//! leak whatever the probe reports.

use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::in_netns;

use super::sockets::{cvt, set_rcvtimeo};
use nono_agent::selftest::frames::{parse_frame, Frame};

/// Opens the capture socket for `iface` inside namespace `ns` (a socket
/// stays in the namespace it was created in; the capture loop can then run
/// on any thread).
pub(super) fn open(ns: &str, iface: String) -> OwnedFd {
    in_netns(ns, move || {
        let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        // SAFETY: plain syscall.
        let fd = cvt(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) },
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
    })
}

/// Records every incoming (not `PACKET_OUTGOING`) frame read from `sock`
/// into `frames` until `stop` is set (the socket's receive timeout bounds
/// how long that takes).
pub(super) fn spawn(
    sock: OwnedFd,
    frames: Arc<Mutex<Vec<Frame>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
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
            frames.lock().unwrap().push(parse_frame(&buf[..n as usize]));
        }
    })
}
