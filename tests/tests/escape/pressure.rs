//! Enforcement under pressure: io_uring, a sockaddr flipped under connect,
//! heavy signals, parallel connects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nono_tests::netns::SERVER_V4;
use nono_tests::oracle::{AcceptCounter, Frame, Proto, TcpEcho};
use nono_tests::runner::{Enforcement, Harness, SandboxGuard};
use nono_tests::sys;
use nono_tests::vectors;

use super::PROBE;

/// io_uring would perform connects and sends in kernel workers that no
/// syscall filter sees: it must be refused at io_uring_setup (EPERM) under
/// every enforcer, and nothing may reach the server.
pub(super) fn io_uring_is_refused_at_setup(e: Enforcement) {
    let h = Harness::new(PROBE);
    for name in ["io-uring-connect", "io-uring-sendmsg"] {
        let v = vectors::find(name);
        let r = vectors::assert_blocked_inside(&h, e, v);
        assert!(
            r.errno == Some(libc::EPERM) && r.detail.starts_with("io_uring_setup"),
            "[{name}] {}: io_uring must be refused at io_uring_setup with EPERM, got errno={:?} \
             {:?}",
            e.label(),
            r.errno,
            r.detail
        );
    }
}

/// TOCTOU on the sockaddr: one thread flips a buffer between 127.0.0.1:P
/// (allowed, a listener in the client netns) and 198.51.100.2:Q (denied, a
/// listener on the server) as fast as it can while two threads connect in a
/// loop with that buffer for 5 s. The server must see no TCP packet at all;
/// some loopback connects must have succeeded (the loop really ran).
pub(super) fn sockaddr_flipped_during_connect_never_leaks(e: Enforcement) {
    const SECS: &str = "5";
    let h = Harness::new(PROBE);
    vectors::assert_reachable_outside(&h, vectors::find("tcp4"));
    let lo_port = h.fx.port();
    let lo = AcceptCounter::bind(
        &h.fx.client,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), lo_port),
    );
    let deny_port = h.fx.port();
    h.oracle.listen_tcp(deny_port);
    let mark = h.oracle.mark();
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed(
        e,
        &[
            "race-sockaddr".into(),
            "--port".into(),
            lo_port.to_string(),
            "--target".into(),
            SERVER_V4.to_string(),
            "--deny-port".into(),
            deny_port.to_string(),
            "--secs".into(),
            SECS.into(),
            "--threads".into(),
            "2".into(),
        ],
    );
    guard.track(&r);
    h.oracle.settle();
    let tcp_to_server: Vec<Frame> = h
        .oracle
        .frames_since(mark)
        .into_iter()
        .filter(|f| matches!(f, Frame::Ip { proto: 6, dst, .. } if *dst == IpAddr::from(SERVER_V4)))
        .collect();
    let conns = h.oracle.tcp_connections(deny_port);
    assert!(
        tcp_to_server.is_empty() && conns == 0,
        "{}: LEAK: a connect with the flipped sockaddr reached the server: {conns} connections \
         to port {deny_port}, TCP frames {:?}\nprobe: {}\n{}",
        e.label(),
        &tcp_to_server[..tcp_to_server.len().min(10)],
        r.raw,
        out.describe()
    );
    let ok_lo = r.raw["ok_loopback"].as_u64().unwrap_or(0);
    assert!(
        r.ok && ok_lo > 0 && lo.count() > 0,
        "{}: the race loop did not run properly (loopback connects ok: {ok_lo}, accepted: {}): \
         {}\n{}",
        e.label(),
        lo.count(),
        r.raw,
        out.describe()
    );
    eprintln!(
        "[race-sockaddr] {}: {} flips, {}; loopback listener accepted {}",
        e.label(),
        r.raw["flips"],
        r.raw["counts"],
        lo.count()
    );
}

/// 200 threads connect to a loopback listener at the same moment: all must
/// succeed (the supervisor must not serialize, drop or fail notifications
/// under load).
pub(super) fn parallel_loopback_connects_all_succeed(e: Enforcement) {
    const N: usize = 200;
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let lo = AcceptCounter::bind(
        &h.fx.client,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
    );
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed(
        e,
        &[
            "parallel-connect".into(),
            "--port".into(),
            port.to_string(),
            "--count".into(),
            N.to_string(),
        ],
    );
    guard.track(&r);
    assert!(
        r.ok && r.raw["succeeded"] == N,
        "{}: {N} parallel loopback connects must all succeed: {}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
    assert!(
        sys::wait_until(Duration::from_secs(5), || lo.count() == N),
        "{}: the loopback listener accepted {} connections, expected {N}",
        e.label(),
        lo.count()
    );
}

/// A Go-like program: SIGURG (handler, SA_RESTART) is sent to the working
/// threads about every 50 µs while they, for 3 s, make echo round trips to
/// a loopback server (blocking and non-blocking sockets; send, sendmsg and
/// sendto), send UDP datagrams to themselves, and try a denied destination.
/// Every operation must succeed with the right data (no EINTR, EISCONN or
/// EALREADY surprises from an operation performed twice, no lost bytes);
/// the denied destination must fail with EPERM every time and nothing may
/// reach the server.
pub(super) fn heavy_signals_do_not_break_or_open_connections(e: Enforcement) {
    let h = Harness::new(PROBE);
    vectors::assert_reachable_outside(&h, vectors::find("tcp4"));
    let port = h.fx.port();
    let echo = TcpEcho::bind(
        &h.fx.client,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
    );
    let deny_port = h.fx.port();
    h.oracle.listen_tcp(deny_port);
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed(
        e,
        &[
            "signal-storm".into(),
            "--port".into(),
            port.to_string(),
            "--target".into(),
            SERVER_V4.to_string(),
            "--deny-port".into(),
            deny_port.to_string(),
            "--secs".into(),
            "3".into(),
            "--threads".into(),
            "4".into(),
            "--signal-us".into(),
            "50".into(),
        ],
    );
    guard.track(&r);
    h.oracle.settle();
    let leaked = h.oracle.packets_to(Proto::Tcp, deny_port) + h.oracle.tcp_connections(deny_port);
    assert_eq!(
        leaked,
        0,
        "{}: LEAK under signals: the denied destination {SERVER_V4}:{deny_port} was reached\n\
         probe: {}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
    let counts = &r.raw["counts"];
    let iters = counts["iterations"].as_u64().unwrap_or(0);
    let handled = r.raw["signals_handled"].as_u64().unwrap_or(0);
    assert!(
        r.ok && iters > 0,
        "{}: operations failed or returned wrong results under heavy signals: surprises {}\n\
         counts {counts}\n{}",
        e.label(),
        r.raw["surprises"],
        out.describe()
    );
    assert!(
        counts["echo-ok"] == iters && counts["udp-ok"] == iters && counts["denied-eperm"] == iters,
        "{}: every iteration must complete its echo, its UDP round trip and its denied \
         connect: {counts}",
        e.label()
    );
    assert!(
        handled >= 1000,
        "{}: only {handled} SIGURG handled: the storm did not happen ({})",
        e.label(),
        r.raw
    );
    eprintln!(
        "[signal-storm] {}: {iters} iterations, {} signals sent, {handled} handled; echo server \
         {:?}",
        e.label(),
        r.raw["signals_sent"],
        echo.stats()
    );
}
