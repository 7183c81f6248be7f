//! Channel 2: SYN-cookie SYN-ACKs from a full listen queue.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nono_tests::channels::{netstat, raw_syns};
use nono_tests::netns::{in_netns, sysctl_in, CLIENT_V4, CLIENT_V6, SERVER_MAC};
use nono_tests::runner::{Enforcement, Harness};

use super::inbound::PROFILE_LOOPBACK_PORT;
use super::running::{sandbox_opts, sargs, what, Background, Where};
use super::PROBE;

const MSS: u16 = 1234;

/// Makes sure net.ipv4.tcp_syncookies is 1 in the client netns (restoring
/// any other value on drop).
struct SyncookiesOn {
    ns: String,
    old: String,
}

impl SyncookiesOn {
    fn new(ns: &str) -> SyncookiesOn {
        let old = in_netns(ns, || {
            fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies")
        })
        .unwrap_or_else(|e| panic!("read net.ipv4.tcp_syncookies in {ns}: {e}"))
        .trim()
        .to_string();
        if old != "1" {
            sysctl_in(ns, "net.ipv4.tcp_syncookies", "1", true);
        }
        SyncookiesOn {
            ns: ns.to_string(),
            old,
        }
    }
}

impl Drop for SyncookiesOn {
    fn drop(&mut self) {
        if self.old != "1" {
            sysctl_in(&self.ns, "net.ipv4.tcp_syncookies", &self.old, false);
        }
    }
}

fn backlog0_args(bind: &str, port: u16) -> Vec<String> {
    sargs(&[
        "listen-serve",
        "--bind",
        bind,
        "--port",
        &port.to_string(),
        "--mss",
        &MSS.to_string(),
        "--backlog",
        "0",
        "--accept",
        "0",
        "--secs",
        "30",
    ])
}

/// SYNs the test host sends per listener.
const SYNS: u16 = 8;

/// The SYNs' source: an address on the link that no host owns (the test
/// host sends from it with IP_TRANSPARENT), so no reset answers a SYN-ACK.
const SYN_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const SYN_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 3);

/// A listener with `TCP_MAXSEG` 1234 and `listen(fd, 0)` that never
/// accepts; the test host sends 8 raw SYNs (from distinct ports and an
/// address nobody owns, so no handshake completes and none is reset). Outside, SYN-ACKs carrying MSS 1234 arrive and
/// the client netns counts SYN cookies sent (the queue is full after the
/// first); inside, no SYN-ACK from that port at all.
fn syn_cookie_case(e: Enforcement, v6: bool, profile: bool) {
    let h = Harness::new(PROBE);
    let _cookies = SyncookiesOn::new(&h.fx.client);
    let opts = sandbox_opts(&h, e, profile, &[PROFILE_LOOPBACK_PORT]);
    let label = format!(
        "syn-cookie {}, {}",
        if v6 { "v6" } else { "v4" },
        what(e, &opts)
    );
    let (bind, src, dst): (&str, IpAddr, IpAddr) = if v6 {
        ("::", SYN_SOURCE_V6.into(), CLIENT_V6.into())
    } else {
        ("0.0.0.0", SYN_SOURCE_V4.into(), CLIENT_V4.into())
    };
    // The client reaches the SYNs' source through the test host's MAC,
    // where the sniffer sees the answers and no socket resets them.
    h.fx.run_in_client(&[
        "ip",
        "neigh",
        "replace",
        &src.to_string(),
        "lladdr",
        SERVER_MAC,
        "dev",
        &h.fx.veth_client,
        "nud",
        "permanent",
    ]);
    let cookies = || netstat(&h.fx.client, "TcpExt", "SyncookiesSent").unwrap_or(0);

    let port = h.fx.port();
    let mut out = Background::start(&h, &Where::Outside(opts.user), &backlog0_args(bind, port));
    out.ready_local();
    let before = cookies();
    raw_syns(&h.fx.server, src, SocketAddr::new(dst, port), SYNS);
    h.oracle.settle();
    let acks = h.oracle.syn_acks_from(port);
    let sent = cookies() - before;
    out.stop();
    assert!(
        acks.iter().filter(|m| **m == Some(MSS)).count() > 1 && sent > 0,
        "[{label}] OUTSIDE the sandbox the SYN-cookie channel did not show: SYN-ACK MSS options \
         from port {port}: {acks:?} (want several with {MSS}), {sent} SYN cookies sent: the \
         test could not detect a leak"
    );
    eprintln!(
        "[{label}] outside: {} SYN-ACKs from port {port} (MSS {acks:?}), {sent} SYN cookies sent",
        acks.len()
    );

    let port = h.fx.port();
    let mut inside =
        Background::start(&h, &Where::Inside(opts.clone()), &backlog0_args(bind, port));
    let ready = inside.ready();
    assert!(
        ready["ok"] == true,
        "[{label}] the listener itself must be allowed: {ready}\n{}",
        inside.output()
    );
    let before = cookies();
    raw_syns(&h.fx.server, src, SocketAddr::new(dst, port), SYNS);
    h.oracle.settle();
    let acks = h.oracle.syn_acks_from(port);
    let seen = h.oracle.tcp_from_port(port);
    inside.stop();
    assert!(
        acks.is_empty(),
        "[{label}] LEAK: {} SYN-ACKs from the sandbox's listener on port {port} reached the test \
         host, MSS options {acks:?} ({} SYN cookies sent)\n{}",
        acks.len(),
        cookies() - before,
        inside.output()
    );
    eprintln!(
        "[{label}] inside: no SYN-ACK; {} TCP segments from port {port} ({:?})",
        seen.len(),
        &seen[..seen.len().min(3)]
    );
}

pub(super) fn syn_cookie_synack_v4(e: Enforcement) {
    syn_cookie_case(e, false, false);
}

pub(super) fn syn_cookie_synack_v6(e: Enforcement) {
    syn_cookie_case(e, true, false);
}

pub(super) fn syn_cookie_synack_v4_profile(e: Enforcement) {
    syn_cookie_case(e, false, true);
}
