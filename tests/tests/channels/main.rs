//! Channel battery (issue 8): the ways data left a sandbox that the escape
//! battery did not look at, because the sandbox does not *send* the
//! packets itself, or sends them after it is gone, or has someone else send
//! them:
//!
//! 1. **Inbound TCP** (v4, v6, dual stack, `listen()` on an unbound
//!    socket): the test host connects to a listener in the sandbox and
//!    must receive nothing; binds to a real interface's address are
//!    refused; a listener whose agent was SIGKILLed hands out nothing
//!    either (then `nono-agent cleanup` removes the BPF sandbox).
//! 2. **SYN-cookie SYN-ACKs**: a listener with a full accept queue
//!    (`listen(fd, 0)`) makes the kernel answer SYNs with cookie SYN-ACKs
//!    whose MSS option is the sandbox's `TCP_MAXSEG`; none may reach the
//!    test host.
//! 3. **Data queued at teardown**: a connection to an allowed peer that does
//!    not read keeps ~1 MiB queued when the sandbox exits; outside a
//!    sandbox the orphaned socket delivers it all, inside the sandbox's
//!    sockets are destroyed (the peer gets a reset, far fewer bytes, and no
//!    socket with that 4-tuple is left), also through `nono-agent cleanup`
//!    after a SIGKILLed agent.
//! 4. **Device-bound loopback sends**: `SO_BINDTODEVICE` /
//!    `SO_BINDTOIFINDEX` to the veth, then a datagram to 127.0.0.1, which
//!    leaves through the veth once the test host answers ARP for 127.0.0.1.
//! 5. **Multicast membership reports**: every join option (IPv4, IPv6,
//!    `MCAST_*`, source-specific, and a drop after a join) makes the kernel
//!    send IGMP / MLD reports naming the group; the options must be refused
//!    and no report naming the group may arrive.
//! 6. **The supervisor's rights**: a root agent's sandbox running as
//!    `--user nobody` must not reach a root-only unix socket, peers must see
//!    the sandbox's uid/gid (never 0, never the agent's pid) in
//!    `SO_PEERCRED` / `SCM_CREDENTIALS`, and capability-gated control
//!    messages (`SO_MARK`, IPv6 hop-by-hop options) are refused as the
//!    kernel refuses them to that user.
//!
//! Every security test first shows the channel working outside the
//! sandbox (same probe, same user, the receiver on the test host, or on
//! loopback, records the data), then runs it under `nono-agent exec` and
//! asserts the receiver recorded nothing; the probe's own outcome is
//! recorded too, but the receiver decides. Over-blocking tests check that
//! loopback servers and clients in one sandbox (0.0.0.0, [::] dual stack,
//! 127.0.0.1, ::1, unbound `listen()`; TCP and UDP), binding to `lo`, and
//! the proxy endpoint keep working.
//!
//! One module per enforcement (`bpf::`, `seccomp::`, `seccomp_user::`),
//! one test per channel; `*_profile` tests repeat a channel under
//! `--profile default` (with `--loopback-port` where a loopback port is
//! involved). Tests that SIGKILL an agent and run `nono-agent cleanup`
//! (which acts on every orphaned sandbox) hold a lock so they do not clean
//! up each other's sandboxes mid-test.
//!
//! Needs root and a real kernel. Run with
//! `cargo test -p nono-tests --test channels`.
//!
//! One module per channel: `inbound`, `syn_cookie`, `teardown`, `device`,
//! `multicast`, `rights` (the supervisor's rights), `keep_working`
//! (over-blocking), on the helpers in `running`. Every test is declared
//! here, so test names do not depend on that split.

mod device;
mod inbound;
mod keep_working;
mod multicast;
mod rights;
mod running;
mod syn_cookie;
mod teardown;

use std::cell::Cell;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use nono_tests::runner::{Enforcement, ExecOpts, Harness, ProbeResult, RunAs, SandboxGuard};
use nono_tests::sys::CmdOutput;

use device::{
    device_binding_to_lo, device_bound_loopback_by_index, device_bound_loopback_by_name,
    device_bound_loopback_profile,
};
use inbound::{
    inbound_after_agent_killed, inbound_bind_to_interface_address_refused, inbound_tcp4_wildcard,
    inbound_tcp6_dual_stack, inbound_tcp_dual_stack_profile, inbound_tcp_unbound_listen,
    inbound_udp_datagrams,
};
use keep_working::{
    loopback_servers_and_proxy_keep_working, loopback_servers_keep_working_profile,
};
use multicast::{multicast_membership_reports, multicast_membership_reports_profile};
use rights::{
    capability_gated_cmsgs_capless_root, supervisor_capability_gated_cmsgs,
    supervisor_rights_profile, supervisor_unix_peer_credentials,
    supervisor_unix_send_to_root_only_socket,
};
use running::probe_outside;
use syn_cookie::{syn_cookie_synack_v4, syn_cookie_synack_v4_profile, syn_cookie_synack_v6};
use teardown::{
    teardown_after_agent_killed, teardown_queued_data_to_loopback_profile,
    teardown_queued_data_to_proxy,
};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

/// How long the test host waits for a connection or data that must not
/// come (and for a refused connect to time out).
const NOTHING_WAIT: Duration = Duration::from_millis(1200);

/// `nobody`: the user a root agent runs the sandbox as (`--user nobody`)
/// for the supervisor-rights checks.
const NOBODY: RunAs = RunAs {
    uid: 65534,
    gid: 65534,
};

/// Every `nono-agent exec` first sweeps orphaned sandboxes (like
/// `nono-agent cleanup`), and so would remove the sandbox a test has just
/// orphaned by SIGKILLing its agent, from another network namespace, before
/// the test looks at it. Sandboxed runs hold this shared; the tests that
/// kill an agent hold it exclusively ([`exclusive`]) for their whole run.
static EXECS: RwLock<()> = RwLock::new(());

thread_local! {
    /// This test thread holds [`EXECS`] exclusively.
    static EXCLUSIVE: Cell<bool> = const { Cell::new(false) };
}

/// Held by a test that orphans a sandbox: no other sandbox starts meanwhile.
struct Exclusive {
    _execs: RwLockWriteGuard<'static, ()>,
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        EXCLUSIVE.with(|x| x.set(false));
    }
}

fn exclusive() -> Exclusive {
    let g = EXECS.write().unwrap_or_else(|e| e.into_inner());
    EXCLUSIVE.with(|x| x.set(true));
    Exclusive { _execs: g }
}

/// Shared hold on [`EXECS`] for one sandboxed run (None on the thread that
/// holds it exclusively).
fn shared() -> Option<RwLockReadGuard<'static, ()>> {
    (!EXCLUSIVE.with(Cell::get)).then(|| EXECS.read().unwrap_or_else(|e| e.into_inner()))
}

/// [`Harness::probe_sandboxed_with`] under a shared hold of [`EXECS`]; the
/// run's processes are tracked by `guard`.
fn sandboxed(
    h: &Harness,
    opts: &ExecOpts,
    args: &[String],
    guard: &mut SandboxGuard,
) -> (ProbeResult, CmdOutput) {
    let _g = shared();
    let (r, out) = h.probe_sandboxed_with(opts, args);
    guard.track(&r);
    (r, out)
}

/// Runs the probe outside the sandbox (as `user`) and asserts it
/// succeeded: the baseline of a check that must keep working inside.
fn assert_outside_ok(h: &Harness, user: Option<RunAs>, args: &[String], label: &str) {
    let (r, out) = probe_outside(h, user, args);
    assert!(
        r.ok,
        "[{label}] outside the sandbox: {:?}\n{}",
        r.steps(),
        out.describe()
    );
}

/// One module per enforcement (`bpf`, `seccomp`, `seccomp_user`), each with
/// one test per listed function.
macro_rules! channel_tests {
    ($($f:ident),* $(,)?) => {
        nono_tests::per_enforcement!(bpf, super::Enforcement::Bpf, [$($f),*]);
        nono_tests::per_enforcement!(seccomp, super::Enforcement::Seccomp, [$($f),*]);
        nono_tests::per_enforcement!(
            seccomp_user,
            super::Enforcement::SeccompUser,
            [$($f),*]
        );
    };
}

channel_tests![
    inbound_udp_datagrams,
    inbound_tcp4_wildcard,
    inbound_tcp6_dual_stack,
    inbound_tcp_unbound_listen,
    inbound_tcp_dual_stack_profile,
    inbound_bind_to_interface_address_refused,
    inbound_after_agent_killed,
    syn_cookie_synack_v4,
    syn_cookie_synack_v6,
    syn_cookie_synack_v4_profile,
    device_bound_loopback_by_name,
    device_bound_loopback_by_index,
    device_bound_loopback_profile,
    device_binding_to_lo,
    multicast_membership_reports,
    multicast_membership_reports_profile,
    supervisor_unix_send_to_root_only_socket,
    supervisor_unix_peer_credentials,
    supervisor_capability_gated_cmsgs,
    supervisor_rights_profile,
    loopback_servers_and_proxy_keep_working,
    loopback_servers_keep_working_profile,
];

/// Queued data on a connection the sandbox leaves behind never goes out
/// unjudged: BPF only, because only there do the judges (the programs) go
/// away at teardown. Under seccomp every byte on a connected socket goes to
/// the destination the supervisor approved at `connect`, before and after
/// the sandbox ends, and nothing is removed (README, "Sockets that outlive
/// the sandbox").
#[test]
fn bpf_teardown_queued_data_to_proxy() {
    teardown_queued_data_to_proxy(Enforcement::Bpf);
}

#[test]
fn bpf_teardown_queued_data_to_loopback_profile() {
    teardown_queued_data_to_loopback_profile(Enforcement::Bpf);
}

/// `nono-agent cleanup` after a SIGKILLed agent destroys the sandbox's
/// sockets (BPF only: the other enforcers have no cgroup to find them by).
#[test]
fn bpf_teardown_queued_data_after_agent_killed_and_cleanup() {
    teardown_after_agent_killed(Enforcement::Bpf, true);
}

/// The same with `nono-agent cleanup` run from the test's own network
/// namespace, not the one the sandbox ran in (as an administrator would
/// run it): the sandbox's sockets are still its sockets and must not be
/// left transmitting once the programs are unpinned.
#[test]
fn bpf_teardown_queued_data_after_agent_killed_and_cleanup_from_other_netns() {
    teardown_after_agent_killed(Enforcement::Bpf, false);
}

#[test]
fn bpf_capability_gated_cmsgs_capless_root() {
    capability_gated_cmsgs_capless_root(Enforcement::Bpf);
}

#[test]
fn seccomp_capability_gated_cmsgs_capless_root() {
    capability_gated_cmsgs_capless_root(Enforcement::Seccomp);
}
