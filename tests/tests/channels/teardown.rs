//! Channel 3: Data queued at teardown (BPF only).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nono_tests::channels::{tcp_sockets_with, HeldReceiver};
use nono_tests::netns::PROXY_V4;
use nono_tests::runner::{Enforcement, ExecOpts, Harness, ProbeResult, RunAs, SandboxGuard};
use nono_tests::sys;

use super::running::{add_profile, probe_outside, run_cleanup, sargs, what, Background, Where};
use super::{exclusive, sandboxed, PROBE};

const BULK: usize = 1 << 20;

fn bulk_args(to: SocketAddr) -> Vec<String> {
    sargs(&[
        "bulk-hold",
        "--target",
        &to.ip().to_string(),
        "--port",
        &to.port().to_string(),
        "--bytes",
        &BULK.to_string(),
    ])
}

fn written_and_local(r: &ProbeResult, label: &str) -> (usize, SocketAddr) {
    let written = r.raw["written"].as_u64().unwrap_or(0) as usize;
    let local = r.raw["local"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{label}] no local address: {}", r.raw));
    (written, local)
}

/// Outside the sandbox: the probe writes ~1 MiB to `rx` (which does not
/// read) and exits; its orphaned socket is still there (`ss`) and, once
/// `rx` reads, delivers every byte.
fn teardown_baseline(h: &Harness, user: Option<RunAs>, rx: &HeldReceiver, label: &str) {
    let (r, out) = probe_outside(h, user, &bulk_args(rx.addr));
    assert!(r.ok, "[{label}] outside: {}\n{}", r.raw, out.describe());
    let (written, local) = written_and_local(&r, label);
    let orphan = tcp_sockets_with(&h.fx, local);
    let d = rx.drain(Duration::from_secs(2), Duration::from_secs(20));
    assert!(
        written > 256 << 10 && d.bytes == written && !orphan.is_empty(),
        "[{label}] OUTSIDE the sandbox the orphaned connection should deliver everything: \
         written {written} (queued {}), received {} ({}); sockets of {local} after exit: \
         {orphan:?}",
        r.raw["queued"],
        d.bytes,
        d.end
    );
    eprintln!(
        "[{label}] outside: wrote {written} ({} queued at exit), orphan {orphan:?}, receiver got \
         {} ({})",
        r.raw["queued"], d.bytes, d.end
    );
}

/// After the sandbox is gone: no socket of `local` is left in the client
/// netns, and the receiver gets a reset or EOF with far fewer bytes than
/// were written.
fn assert_destroyed(
    h: &Harness,
    rx: &HeldReceiver,
    written: usize,
    local: SocketAddr,
    label: &str,
    more: &str,
) {
    let left = tcp_sockets_with(&h.fx, local);
    let d = rx.drain(Duration::from_secs(2), Duration::from_secs(20));
    eprintln!(
        "[{label}] inside: wrote {written}; sockets of {local} afterwards {left:?}; receiver got \
         {} ({})",
        d.bytes, d.end
    );
    assert!(
        d.bytes < written / 2,
        "[{label}] LEAK: the sandbox's queued data went out after it ended: written {written}, \
         the receiver got {} ({}); sockets of {local}: {left:?}\n{more}",
        d.bytes,
        d.end
    );
    assert!(
        left.is_empty(),
        "[{label}] a socket of the sandbox ({local}) outlived it: {left:?}\n{more}"
    );
    assert!(
        d.end == "reset" || d.end == "eof",
        "[{label}] the receiver should see the connection reset or closed, got {} after {} \
         bytes\n{more}",
        d.end,
        d.bytes
    );
}

/// `to_loopback`: the receiver listens on 127.0.0.1 in the client netns
/// (the sandbox runs under `--profile default --loopback-port P`);
/// otherwise it is the proxy endpoint on the test host.
fn teardown_case(e: Enforcement, to_loopback: bool) {
    let h = Harness::new(PROBE);
    let rx = |h: &Harness| {
        let port = h.fx.port();
        if to_loopback {
            HeldReceiver::bind(
                &h.fx.client,
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            )
        } else {
            HeldReceiver::bind(&h.fx.server, SocketAddr::new(PROXY_V4.into(), port))
        }
    };
    let rx1 = rx(&h);
    let rx2 = rx(&h);
    let mut opts = ExecOpts::for_enforcement(e);
    if to_loopback {
        opts.proxy_endpoints = vec![h.proxy_endpoint()];
        add_profile(&h, &mut opts, &[rx2.addr.port()]);
    } else {
        opts.proxy_endpoints = vec![rx2.addr];
    }
    let label = format!("teardown to {}, {}", rx2.addr, what(e, &opts));
    teardown_baseline(&h, opts.user, &rx1, &label);

    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &bulk_args(rx2.addr), &mut guard);
    assert!(
        r.ok && rx2.peer().is_some(),
        "[{label}] the connection to the allowed {} must work: {}\n{}",
        rx2.addr,
        r.raw,
        out.describe()
    );
    let (written, local) = written_and_local(&r, &label);
    assert_destroyed(&h, &rx2, written, local, &label, &out.describe());
}

pub(super) fn teardown_queued_data_to_proxy(e: Enforcement) {
    teardown_case(e, false);
}

pub(super) fn teardown_queued_data_to_loopback_profile(e: Enforcement) {
    teardown_case(e, true);
}

/// The probe writes to the proxy endpoint and holds; the agent is
/// SIGKILLed (the probe lives on, confined by pinned programs); `nono-agent
/// cleanup` must kill it and destroy its socket before unpinning.
pub(super) fn teardown_after_agent_killed(e: Enforcement, cleanup_in_client_netns: bool) {
    let _x = exclusive();
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let rx1 = HeldReceiver::bind(&h.fx.server, SocketAddr::new(PROXY_V4.into(), port));
    let rx2 = HeldReceiver::bind(&h.fx.server, SocketAddr::new(PROXY_V4.into(), h.fx.port()));
    let opts = ExecOpts {
        proxy_endpoints: vec![rx2.addr],
        ..ExecOpts::for_enforcement(e)
    };
    let label = format!(
        "teardown via cleanup (in the {} netns) after kill, {}",
        if cleanup_in_client_netns {
            "sandbox's"
        } else {
            "test's"
        },
        what(e, &opts)
    );
    teardown_baseline(&h, opts.user, &rx1, &label);

    let mut bg = Background::start(&h, &Where::Inside(opts.clone()), &bulk_args(rx2.addr));
    let ready = bg.ready();
    let written = ready["written"].as_u64().unwrap_or(0) as usize;
    let local: SocketAddr = ready["local"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{label}] no local address: {ready}\n{}", bg.output()));
    bg.kill_agent();
    let survivors = bg.others();
    assert!(
        !survivors.is_empty(),
        "[{label}] the probe should outlive its SIGKILLed agent under bpf\n{}",
        bg.output()
    );
    let c = run_cleanup(&h, cleanup_in_client_netns);
    let gone = sys::wait_until(Duration::from_secs(3), || bg.others().is_empty());
    assert!(
        gone,
        "[{label}] cleanup left processes {:?}\n{}",
        bg.others(),
        c.describe()
    );
    assert_destroyed(&h, &rx2, written, local, &label, &c.describe());
}
