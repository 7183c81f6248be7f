//! Channel 1: Inbound TCP and UDP: listeners and receivers in the sandbox.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nono_tests::channels::connect_and_read;
use nono_tests::netns::{in_netns, CLIENT_V4, CLIENT_V6};
use nono_tests::runner::{Enforcement, Harness, SandboxGuard};
use nono_tests::sys;

use super::running::{run_cleanup, sandbox_opts, sandbox_user, sargs, what, Background, Where};
use super::{assert_outside_ok, exclusive, sandboxed, NOTHING_WAIT, PROBE};

fn listen_args(bind: &str, port: u16, secret: &str) -> Vec<String> {
    sargs(&[
        "listen-serve",
        "--bind",
        bind,
        "--port",
        &port.to_string(),
        "--secret",
        secret,
        "--secs",
        "30",
    ])
}

/// The test host connects to `targets` on `port` and reads; returns what
/// each got (for messages).
fn connect_all(
    h: &Harness,
    targets: &[IpAddr],
    port: u16,
    wait: Duration,
) -> Vec<(IpAddr, Vec<u8>, String)> {
    targets
        .iter()
        .map(|t| {
            let got = connect_and_read(&h.fx.server, SocketAddr::new(*t, port), wait);
            let how = format!("connected={} end={}", got.connected, got.end);
            (*t, got.bytes, how)
        })
        .collect()
}

/// A listener (`bind`: an address, or `unbound4` / `unbound6`) that writes
/// a secret to every connection: outside the sandbox the test host,
/// connecting to each of `targets`, receives the secret; inside it
/// receives nothing (its connect times out or is refused, or the
/// connection carries no data).
fn inbound_case(e: Enforcement, profile: bool, bind: &str, targets: &[IpAddr]) {
    let h = Harness::new(PROBE);
    let opts = sandbox_opts(&h, e, profile, &[PROFILE_LOOPBACK_PORT]);
    let label = format!("inbound {bind}, {}", what(e, &opts));
    let secret = format!("SECRET-{}", h.fx.tag());
    let port = if bind.starts_with("unbound") {
        0
    } else {
        h.fx.port()
    };

    let mut out = Background::start(
        &h,
        &Where::Outside(sandbox_user(&opts)),
        &listen_args(bind, port, &secret),
    );
    let local = out.ready_local();
    for (t, got, how) in connect_all(&h, targets, local.port(), Duration::from_secs(3)) {
        assert_eq!(
            got,
            secret.as_bytes(),
            "[{label}] OUTSIDE the sandbox the test host connecting to {t}:{} did not get the \
             secret ({how}): the test could not detect a leak\n{}",
            local.port(),
            out.output()
        );
    }
    out.stop();

    let port = if bind.starts_with("unbound") {
        0
    } else {
        h.fx.port()
    };
    let mut inside = Background::start(
        &h,
        &Where::Inside(opts.clone()),
        &listen_args(bind, port, &secret),
    );
    let ready = inside.ready();
    assert!(
        ready["ok"] == true,
        "[{label}] a listener on {bind} must be allowed (loopback clients may use it): {ready}\n{}",
        inside.output()
    );
    let local: SocketAddr = ready["local"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{label}] no local address: {ready}"));
    let got = connect_all(&h, targets, local.port(), NOTHING_WAIT);
    let r = inside.stop();
    let accepted = r.as_ref().map(|r| r.raw["accepted"].clone());
    eprintln!(
        "[{label}] inside: listener at {local}; test host: {:?}; probe accepted {accepted:?}",
        got.iter()
            .map(|(t, b, how)| format!("{t}: {} bytes, {how}", b.len()))
            .collect::<Vec<_>>()
    );
    for (t, bytes, how) in got {
        assert!(
            bytes.is_empty(),
            "[{label}] LEAK: the test host connected to {t}:{} and received {:?} from the \
             sandbox's listener ({how}); probe accepted {accepted:?}\n{}",
            local.port(),
            String::from_utf8_lossy(&bytes),
            inside.output()
        );
    }
}

/// Datagrams from the test host to a UDP socket on [::] (dual stack) in
/// the sandbox: outside, the probe receives them (v4 and v6); inside, none
/// may be delivered. The receiver is the sandboxed probe itself here (what
/// arrives is a way in, not out); its report is cross-checked outside.
pub(super) fn inbound_udp_datagrams(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = h.opts(e);
    let label = format!("inbound UDP, {}", what(e, &opts));
    let send = |to: SocketAddr, tag: &str| {
        let tag = tag.to_string();
        in_netns(&h.fx.server, move || {
            let any: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().expect("addr")
            } else {
                "[::]:0".parse().expect("addr")
            };
            let s = std::net::UdpSocket::bind(any).expect("udp socket on the test host");
            s.send_to(tag.as_bytes(), to).expect("send to the client");
        });
    };
    for inside in [false, true] {
        let at = if inside {
            Where::Inside(opts.clone())
        } else {
            Where::Outside(opts.user)
        };
        let port = h.fx.port();
        let mut bg = Background::start(
            &h,
            &at,
            &sargs(&["udp-serve", "--bind", "::", "--port", &port.to_string()]),
        );
        let local = bg.ready_local();
        for ip in [IpAddr::from(CLIENT_V4), IpAddr::from(CLIENT_V6)] {
            send(SocketAddr::new(ip, local.port()), &format!("to {ip}"));
        }
        std::thread::sleep(Duration::from_millis(300));
        let r = bg
            .stop()
            .unwrap_or_else(|| panic!("[{label}] no result\n{}", bg.output()));
        let got = r.raw["received"].as_array().cloned().unwrap_or_default();
        if inside {
            assert!(
                got.is_empty(),
                "[{label}] datagrams from the test host reached the sandbox's socket on \
                 {local}: {got:?}"
            );
        } else {
            assert_eq!(
                got.len(),
                2,
                "[{label}] OUTSIDE the socket on {local} should receive both datagrams: {got:?}\n{}",
                bg.output()
            );
        }
    }
}

pub(super) fn inbound_tcp4_wildcard(e: Enforcement) {
    inbound_case(e, false, "0.0.0.0", &[CLIENT_V4.into()]);
}

pub(super) fn inbound_tcp6_dual_stack(e: Enforcement) {
    inbound_case(e, false, "::", &[CLIENT_V6.into(), CLIENT_V4.into()]);
}

/// `listen()` without `bind()`: the kernel autobinds to the wildcard
/// address (v4, and v6 dual stack).
pub(super) fn inbound_tcp_unbound_listen(e: Enforcement) {
    inbound_case(e, false, "unbound4", &[CLIENT_V4.into()]);
    inbound_case(e, false, "unbound6", &[CLIENT_V6.into(), CLIENT_V4.into()]);
}

pub(super) fn inbound_tcp_dual_stack_profile(e: Enforcement) {
    inbound_case(e, true, "::", &[CLIENT_V6.into(), CLIENT_V4.into()]);
}

/// A loopback port the profile variants narrow loopback to (as in the
/// issue's reproduction, `--profile default --loopback-port 5432`).
pub(super) const PROFILE_LOOPBACK_PORT: u16 = 5432;

/// Binds to the client's own interface addresses are refused with EPERM
/// inside (they work outside); loopback and wildcard binds stay allowed.
pub(super) fn inbound_bind_to_interface_address_refused(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = h.opts(e);
    let label = format!("bind-check, {}", what(e, &opts));
    let iface = sargs(&["bind-check", "--addrs", "198.51.100.1,2001:db8:100::1"]);
    let allowed = sargs(&["bind-check", "--addrs", "127.0.0.1,::1,0.0.0.0,::"]);
    for args in [&iface, &allowed] {
        assert_outside_ok(&h, opts.user, args, &label);
    }
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &iface, &mut guard);
    for (name, ok, errno, detail) in r.steps() {
        assert!(
            !ok && errno == Some(libc::EPERM),
            "[{label}] {name} must be refused with EPERM inside, got ok={ok} errno={errno:?} \
             {detail}\n{}",
            out.describe()
        );
    }
    assert_eq!(r.steps().len(), 4, "[{label}] {}", r.raw);
    let (r, out) = sandboxed(&h, &opts, &allowed, &mut guard);
    assert!(
        r.ok,
        "[{label}] binds to loopback and the wildcard must stay allowed: {:?}\n{}",
        r.steps(),
        out.describe()
    );
}

/// A dual-stack listener whose agent is SIGKILLed: the test host still
/// receives nothing; under bpf the sandbox outlives the agent (pinned
/// programs) until `nono-agent cleanup`, which must leave no process.
pub(super) fn inbound_after_agent_killed(e: Enforcement) {
    let _x = exclusive();
    let h = Harness::new(PROBE);
    let opts = h.opts(e);
    let label = format!("inbound after the agent is killed, {}", what(e, &opts));
    let secret = format!("SECRET-{}", h.fx.tag());
    let targets: [IpAddr; 2] = [CLIENT_V6.into(), CLIENT_V4.into()];

    let mut out = Background::start(
        &h,
        &Where::Outside(opts.user),
        &listen_args("::", h.fx.port(), &secret),
    );
    let local = out.ready_local();
    for (t, got, how) in connect_all(&h, &targets, local.port(), Duration::from_secs(3)) {
        assert_eq!(
            got,
            secret.as_bytes(),
            "[{label}] OUTSIDE: {t}:{} gave no secret ({how})",
            local.port()
        );
    }
    out.stop();

    let mut inside = Background::start(
        &h,
        &Where::Inside(opts.clone()),
        &listen_args("::", h.fx.port(), &secret),
    );
    let local = inside.ready_local();
    inside.kill_agent();
    std::thread::sleep(Duration::from_millis(300));
    let survivors = inside.others();
    let got = connect_all(&h, &targets, local.port(), NOTHING_WAIT);
    eprintln!(
        "[{label}] after the kill: sandbox processes alive {survivors:?}; test host: {:?}",
        got.iter()
            .map(|(t, b, how)| format!("{t}: {} bytes, {how}", b.len()))
            .collect::<Vec<_>>()
    );
    for (t, bytes, how) in got {
        assert!(
            bytes.is_empty(),
            "[{label}] LEAK: after the agent was killed the test host received {:?} from \
             {t}:{} ({how}); sandbox processes alive: {survivors:?}\n{}",
            String::from_utf8_lossy(&bytes),
            local.port(),
            inside.output()
        );
    }
    if e.has_cgroup() {
        assert!(
            !survivors.is_empty(),
            "[{label}] under bpf the sandbox should outlive its agent (pinned programs keep \
             enforcing until cleanup)"
        );
        let c = run_cleanup(&h, true);
        let gone = sys::wait_until(Duration::from_secs(3), || inside.others().is_empty());
        assert!(
            gone,
            "[{label}] `nono-agent cleanup` left the sandbox's processes {:?}\n{}",
            inside.others(),
            c.describe()
        );
    }
}
