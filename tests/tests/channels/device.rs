//! Channel 4: Device-bound loopback sends.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nono_tests::oracle::UdpReceiver;
use nono_tests::runner::{Enforcement, ExecOpts, Harness, SandboxGuard};
use nono_tests::sys;
use nono_tests::vectors::{Attempt, Mode, NetVector, Observe, Target};

use super::running::{add_profile, probe_outside, sargs, what};
use super::{sandboxed, PROBE};

/// A datagram to 127.0.0.1 from a UDP socket bound to the client veth
/// (`how`: "name" for SO_BINDTODEVICE, "index" for SO_BINDTOIFINDEX); the
/// test host answers ARP for 127.0.0.1. Outside (as the sandbox's user)
/// the datagram reaches the test host; inside the setsockopt fails with
/// EPERM and nothing arrives.
fn device_bound_case(e: Enforcement, how: &str, profile: bool) {
    const V: NetVector = NetVector {
        name: "bindtodevice-loopback4",
        target: Target::ServerV4,
        observe: Observe::WireLoopbackUdp,
        mode: Mode::Rerouted,
    };
    let h = Harness::new(PROBE);
    let mut a = Attempt::new(&h, V);
    a.args.extend(sargs(&["--how", how]));
    let mut opts = ExecOpts {
        proxy_endpoints: vec![a.proxy],
        ..ExecOpts::for_enforcement(e)
    };
    if profile {
        add_profile(&h, &mut opts, &[a.port]);
    }
    let label = format!(
        "SO_BINDTO{} {}, {}",
        if how == "name" { "DEVICE" } else { "IFINDEX" },
        h.fx.veth_client,
        what(e, &opts)
    );
    let (r, out) = probe_outside(&h, opts.user, &a.args);
    h.oracle.settle();
    let (n, proof) = a.proof(&h);
    assert!(
        n > 0,
        "[{label}] OUTSIDE the sandbox the device-bound datagram did not reach the test host \
         ({proof}): probe {}\n{}",
        r.raw,
        out.describe()
    );

    let mut a = Attempt::new(&h, V);
    a.args.extend(sargs(&["--how", how]));
    opts.proxy_endpoints = vec![a.proxy];
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &a.args, &mut guard);
    h.oracle.settle();
    let (n, seen) = a.observed(&h);
    assert_eq!(
        n,
        0,
        "[{label}] LEAK: {seen}\nprobe {}\n{}",
        r.raw,
        out.describe()
    );
    assert!(
        r.errno == Some(libc::EPERM) && r.raw["refused_at"] == "setsockopt",
        "[{label}] the device binding must be refused with EPERM, got ok={} errno={:?} {} \
         (refused_at {})",
        r.ok,
        r.errno,
        r.detail,
        r.raw["refused_at"]
    );
}

pub(super) fn device_bound_loopback_by_name(e: Enforcement) {
    device_bound_case(e, "name", false);
}

pub(super) fn device_bound_loopback_by_index(e: Enforcement) {
    device_bound_case(e, "index", false);
}

pub(super) fn device_bound_loopback_profile(e: Enforcement) {
    device_bound_case(e, "name", true);
}

/// Binding to `lo` (by name and by index) and unbinding (empty name,
/// index 0), each followed by a datagram to a 127.0.0.1 receiver. Under
/// bpf all of it keeps working. Under seccomp every SO_BINDTODEVICE /
/// SO_BINDTOIFINDEX is refused with EPERM: the filter cannot read the
/// device name, so it refuses the option outright (plain loopback sends
/// are unaffected; see `loopback_servers_and_proxy_keep_working`).
pub(super) fn device_binding_to_lo(e: Enforcement) {
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let rx = UdpReceiver::bind(
        &h.fx.client,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
    );
    let args = sargs(&["bindtodevice-lo", "--port", &port.to_string()]);
    let opts = h.opts(e);
    let label = format!("bind to lo, {}", what(e, &opts));
    let (r, out) = probe_outside(&h, opts.user, &args);
    assert!(
        r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 4),
        "[{label}] outside: {:?}, receiver got {}\n{}",
        r.steps(),
        rx.count(),
        out.describe()
    );
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &args, &mut guard);
    if e == Enforcement::Bpf {
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 8),
            "[{label}] binding to lo, unbinding and the sends after them must keep working: \
             {:?}; receiver got {} of 8\n{}",
            r.steps(),
            rx.count(),
            out.describe()
        );
    } else {
        let binds: Vec<_> = r
            .steps()
            .into_iter()
            .filter(|s| s.0.contains("setsockopt"))
            .collect();
        assert!(
            !binds.is_empty() && binds.iter().all(|s| !s.1 && s.2 == Some(libc::EPERM)),
            "[{label}] under seccomp every SO_BINDTODEVICE / SO_BINDTOIFINDEX is refused with \
             EPERM: {binds:?}\n{}",
            out.describe()
        );
    }
}
