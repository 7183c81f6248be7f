//! An ARP responder on a test link.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::netns::in_netns;

use nono_agent::selftest::oracle::{answer_arp, packet_socket, ETH_P_ARP};

/// Answers ARP requests for one IPv4 address on one interface with the
/// interface's MAC, like a cooperating host on the link would (the socket
/// and the reply are the agent library's, shared with selftest). Used to show
/// that packets addressed to 127.0.0.1 can be put on the wire.
pub struct ArpResponder {
    answered: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ArpResponder {
    pub fn start(ns: &str, iface: &str, ip: Ipv4Addr, mac: [u8; 6]) -> ArpResponder {
        let iface = iface.to_string();
        let sock = in_netns(ns, move || {
            packet_socket(&iface, ETH_P_ARP)
                .unwrap_or_else(|e| panic!("ARP socket on {iface}: {e}"))
        });
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (an, sp) = (answered.clone(), stop.clone());
        let thread = thread::spawn(move || {
            answer_arp(&sock, ip, mac, &sp, || {
                an.fetch_add(1, Ordering::Relaxed);
            });
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
