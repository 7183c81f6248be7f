//! What must keep working under every enforcement: loopback, UDP with
//! ancillary data, fd passing, the proxy endpoint.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use nono_tests::netns::{PROXY_V4, SERVER_V4};
use nono_tests::oracle::{TcpCounter, TcpEcho, UdpReceiver};
use nono_tests::runner::{Enforcement, ExecOpts, Harness, SandboxGuard};
use nono_tests::sys;

use super::PROBE;

/// A UDP socket connected to loopback sends with `sendmsg` carrying an
/// IP_TOS (v4) / IPV6_TCLASS (v6) control message and no destination
/// (msg_name NULL): the datagrams reach a receiver on loopback in the
/// client netns, outside and inside the sandbox.
pub(super) fn connected_udp_with_ancillary_data_reaches_loopback(e: Enforcement) {
    udp_with_ancillary_data(
        e,
        &[
            ("udp-connected-cmsg-tos", false),
            ("udp6-connected-cmsg-tclass", true),
        ],
    );
}

/// The same with an unconnected socket: sendmsg names 127.0.0.1 / ::1 and
/// carries the TOS / traffic class control message.
pub(super) fn unconnected_udp_with_ancillary_data_reaches_loopback(e: Enforcement) {
    udp_with_ancillary_data(
        e,
        &[
            ("udp-sendmsg-cmsg-tos", false),
            ("udp6-sendmsg-cmsg-tclass", true),
        ],
    );
}

fn udp_with_ancillary_data(e: Enforcement, cases: &[(&str, bool)]) {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    for &(vector, v6) in cases {
        let ip: IpAddr = if v6 {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        let port = h.fx.port();
        let rx = UdpReceiver::bind(&h.fx.client, SocketAddr::new(ip, port));
        let args = vec![
            vector.to_string(),
            "--target".into(),
            ip.to_string(),
            "--port".into(),
            port.to_string(),
        ];
        let (r, out) = h.probe_outside(&args);
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 1),
            "[{vector}] outside the sandbox the loopback receiver got {:?}: {}\n{}",
            rx.datagrams(),
            r.raw,
            out.describe()
        );
        assert_eq!(
            rx.datagrams()[0].tos,
            Some(0x28),
            "[{vector}] the TOS/traffic class control message was not applied outside"
        );
        let (r, out) = h.probe_sandboxed(e, &args);
        guard.track(&r);
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 2),
            "[{vector}] {}: UDP with ancillary data to loopback must keep working in the \
             sandbox: receiver got {:?}; probe {}\n{}",
            e.label(),
            rx.datagrams(),
            r.raw,
            out.describe()
        );
        assert_eq!(
            rx.datagrams()[1].tos,
            Some(0x28),
            "[{vector}] {}: datagram from the sandbox arrived without its TOS/traffic class",
            e.label()
        );
    }
}

/// Plain `send()` on a UDP socket connected to the proxy endpoint arrives
/// at a receiver behind the proxy address.
pub(super) fn udp_send_to_proxy_endpoint_arrives(e: Enforcement) {
    let h = Harness::new(PROBE);
    let proxy = SocketAddr::new(PROXY_V4.into(), h.fx.port());
    let rx = UdpReceiver::bind(&h.fx.server, proxy);
    let args = vec![
        "udp-proxy-send".to_string(),
        "--proxy-endpoint".into(),
        proxy.to_string(),
    ];
    let (r, out) = h.probe_outside(&args);
    assert!(
        r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 1),
        "outside the sandbox the UDP receiver at {proxy} got {} datagrams: {}\n{}",
        rx.count(),
        r.raw,
        out.describe()
    );
    let opts = ExecOpts {
        proxy_endpoints: vec![proxy],
        ..ExecOpts::for_enforcement(e)
    };
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed_with(&opts, &args);
    guard.track(&r);
    assert!(
        r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 2),
        "{}: UDP send() to the proxy endpoint {proxy} must arrive from the sandbox: receiver \
         got {} datagrams in all; probe {}\n{}",
        e.label(),
        rx.count(),
        r.raw,
        out.describe()
    );
}

/// A TCP connection to the proxy endpoint carries 1 MiB each way (the
/// client sends 1 MiB, an echo server returns it): enforcement must not
/// disturb bulk traffic.
pub(super) fn tcp_bulk_to_proxy_endpoint_both_ways(e: Enforcement) {
    const BYTES: usize = 1 << 20;
    let h = Harness::new(PROBE);
    let proxy = SocketAddr::new(PROXY_V4.into(), h.fx.port());
    let echo = TcpEcho::bind(&h.fx.server, proxy);
    let opts = ExecOpts {
        proxy_endpoints: vec![proxy],
        ..ExecOpts::for_enforcement(e)
    };
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed_with(
        &opts,
        &[
            "tcp-proxy-bulk".into(),
            "--proxy-endpoint".into(),
            proxy.to_string(),
            "--bytes".into(),
            BYTES.to_string(),
        ],
    );
    guard.track(&r);
    let stats = echo.stats();
    assert!(
        r.ok,
        "{}: 1 MiB each way through the proxy endpoint {proxy} must work in the sandbox: {}; \
         echo server (connections, bytes in, bytes out) = {stats:?}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
    assert!(
        sys::wait_until(Duration::from_secs(2), || echo.stats() == (1, BYTES, BYTES)),
        "echo server saw (connections, bytes in, bytes out) = {:?}, expected (1, {BYTES}, \
         {BYTES})",
        echo.stats()
    );
}

/// Loopback (127.0.0.1, ::1, ::ffff:127.0.0.1) works in the sandbox, 127.0.0.2
/// does not. Uses a dual-stack listener on [::] in the CLIENT netns, so
/// 127.0.0.2 would be reachable if not denied (checked outside first).
pub(super) fn loopback_allowed_but_not_127_0_0_2(e: Enforcement) {
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let lst = TcpCounter::bind(
        &h.fx.client,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        false,
    );
    let args = |v: &str| vec![v.to_string(), "--port".into(), port.to_string()];
    // Outside: all four reach the listener.
    for v in [
        "loopback4",
        "loopback6",
        "loopback-v4mapped",
        "loopback-127-0-0-2",
    ] {
        let before = lst.count();
        let (r, out) = h.probe_outside(&args(v));
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || lst.count() > before),
            "[{v}] outside the sandbox the loopback listener was not reached: {}\n{}",
            r.raw,
            out.describe()
        );
    }
    let mut guard = SandboxGuard::new();
    for v in ["loopback4", "loopback6", "loopback-v4mapped"] {
        let before = lst.count();
        let (r, out) = h.probe_sandboxed(e, &args(v));
        guard.track(&r);
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || lst.count() > before),
            "[{v}] {}: loopback must be allowed in the sandbox: {}\n{}",
            e.label(),
            r.raw,
            out.describe()
        );
    }
    let before = lst.count();
    let (r, out) = h.probe_sandboxed(e, &args("loopback-127-0-0-2"));
    guard.track(&r);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lst.count(),
        before,
        "[loopback-127-0-0-2] {}: LEAK: 127.0.0.2 reached the listener from the sandbox: {}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
    assert!(
        r.denied(),
        "[loopback-127-0-0-2] {}: expected EPERM: {}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
}

/// The proxy endpoint is reachable from the sandbox; the same address on
/// another port, and the server's address on the proxy port, are not.
pub(super) fn proxy_endpoint_allowed_exactly(e: Enforcement) {
    let h = Harness::new(PROBE);
    let proxy = h.proxy_endpoint();
    let other = h.proxy_endpoint(); // listener, but not allowed
    let opts = ExecOpts {
        proxy_endpoints: vec![proxy],
        ..ExecOpts::for_enforcement(e)
    };
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed_with(
        &opts,
        &["proxy".into(), "--proxy-endpoint".into(), proxy.to_string()],
    );
    guard.track(&r);
    assert!(
        r.ok,
        "{}: proxy endpoint {proxy} must be reachable: {}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
    h.oracle.settle();
    assert_eq!(
        h.oracle.tcp_connections(proxy.port()),
        1,
        "server did not see the proxy connection"
    );
    let deny = [
        other,
        SocketAddr::new(SERVER_V4.into(), proxy.port()),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3)), proxy.port()),
    ];
    for sa in deny {
        let (r, out) = h.probe_sandboxed_with(
            &opts,
            &["proxy".into(), "--proxy-endpoint".into(), sa.to_string()],
        );
        guard.track(&r);
        assert!(
            r.denied(),
            "{}: {sa} must be denied when only {proxy} is allowed: {}\n{}",
            e.label(),
            r.raw,
            out.describe()
        );
    }
    h.oracle.settle();
    assert_eq!(h.oracle.tcp_connections(other.port()), 0, "LEAK to {other}");
    assert_eq!(
        h.oracle.tcp_connections(proxy.port()),
        1,
        "LEAK: {} reached the proxy port",
        SERVER_V4
    );
    // No leftovers for this sandbox.
    if let Some(cg) = &r.cgroup {
        assert!(!Path::new(cg).exists(), "cgroup {cg} left after exit");
    }
    if let Some(p) = &r.pin_dir {
        assert!(fs::metadata(p).is_err(), "pin dir {p} left after exit");
    }
}

/// File descriptors still pass over a unix socketpair (SCM_RIGHTS, stream
/// and datagram): the seccomp supervisor performs sendmsg itself and must
/// carry the descriptors across.
pub(super) fn fd_passing_over_unix_socketpair_works(e: Enforcement) {
    let h = Harness::new(PROBE);
    let (r, out) = h.probe_outside(&["scm-rights".to_string()]);
    assert!(r.ok, "scm-rights outside: {}\n{}", r.raw, out.describe());
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed(e, &["scm-rights".to_string()]);
    guard.track(&r);
    assert!(
        r.ok,
        "{}: SCM_RIGHTS over a unix socketpair must keep working: {}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
}
