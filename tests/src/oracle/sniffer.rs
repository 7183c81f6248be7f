//! The sniffer: an `AF_PACKET`/`ETH_P_ALL` socket bound to the server veth
//! that records every incoming frame in parsed form, so the oracle sees a
//! leak whatever the probe reports.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::netns::in_netns;

use nono_agent::selftest::frames::{parse_frame, Frame};
use nono_agent::selftest::oracle::{packet_socket, recv_incoming};

/// Opens the capture socket for `iface` inside namespace `ns` (a socket
/// stays in the namespace it was created in; the capture loop can then run
/// on any thread). The socket is the agent library's (shared with
/// `nono-agent selftest`'s oracle).
pub(super) fn open(ns: &str, iface: String) -> OwnedFd {
    in_netns(ns, move || {
        packet_socket(&iface, libc::ETH_P_ALL as u16)
            .unwrap_or_else(|e| panic!("AF_PACKET socket on {iface} in the server netns: {e}"))
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
            if let Some(f) = recv_incoming(&sock, &mut buf) {
                let parsed = parse_frame(f);
                frames.lock().unwrap().push(parsed);
            }
        }
    })
}
